//! `readygate certs`: a CA and a serving certificate for the webhook Service.

use std::path::Path;

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// PEM-encoded CA certificate, serving certificate and serving key.
pub struct Bundle {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Bundle {
    /// The `caBundle` value for a webhook configuration.
    pub fn ca_bundle(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.ca_pem)
    }
}

/// DNS names the API server uses for `service` in `namespace`.
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// A fresh CA and a serving certificate for `dns_names` (IP literals become IP SANs), valid
/// for `days`.
pub fn generate(dns_names: Vec<String>, days: i64) -> Result<Bundle, rcgen::Error> {
    let now = OffsetDateTime::now_utc();
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "readygate webhook CA");
    ca.distinguished_name = dn;
    ca.not_before = now - Duration::hours(1);
    ca.not_after = now + Duration::days(days.max(1) * 2);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;

    let cn = dns_names
        .first()
        .cloned()
        .unwrap_or_else(|| "readygate".into());
    let mut leaf = CertificateParams::new(dns_names)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    leaf.distinguished_name = dn;
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = now - Duration::hours(1);
    leaf.not_after = now + Duration::days(days.max(1));
    let key = KeyPair::generate()?;
    let cert = leaf.signed_by(&key, &ca)?;
    Ok(Bundle {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Writes `ca.crt`, `tls.crt` and `tls.key` (mode 0600) into `dir`, creating it.
pub fn write(bundle: &Bundle, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("ca.crt"), &bundle.ca_pem)?;
    std::fs::write(dir.join("tls.crt"), &bundle.cert_pem)?;
    let key_path = dir.join("tls.key");
    std::fs::write(&key_path, &bundle.key_pem)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_loads_as_a_serving_key_and_names_the_service() {
        crate::install_crypto_provider();
        let b = generate(
            service_dns_names("readygate-webhook", "readygate-system"),
            365,
        )
        .unwrap();
        let ck = crate::tls::certified_key(b.cert_pem.as_bytes(), b.key_pem.as_bytes()).unwrap();
        assert_eq!(ck.cert.len(), 1);
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b.ca_bundle())
            .unwrap();
        assert_eq!(decoded, b.ca_pem.as_bytes());
        assert_eq!(
            service_dns_names("s", "n"),
            ["s.n.svc".to_string(), "s.n.svc.cluster.local".to_string()]
        );
    }
}
