//! A CA and a serving certificate for the webhook, made with rcgen, as `readygate certs` makes
//! them: the certificate names `SERVICE.NAMESPACE.svc` (and `.svc.cluster.local`).

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

pub struct Certs {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// The CA, to sign renewed certificates with ([`Certs::renewed`]).
    ca: std::sync::Arc<CertifiedIssuer<'static, KeyPair>>,
    names: Vec<String>,
}

pub struct CertPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Certs {
    /// A new CA and a certificate for `names` (DNS names or IP addresses) signed by it.
    pub fn generate(names: &[String]) -> anyhow::Result<Self> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "rig webhook CA");
        ca_params.distinguished_name = dn;
        let ca = std::sync::Arc::new(CertifiedIssuer::self_signed(
            ca_params,
            KeyPair::generate()?,
        )?);
        Self::signed(ca, names)
    }

    fn signed(
        ca: std::sync::Arc<CertifiedIssuer<'static, KeyPair>>,
        names: &[String],
    ) -> anyhow::Result<Self> {
        let mut params = CertificateParams::new(names.to_vec())?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.distinguished_name = dn;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &*ca)?;
        Ok(Self {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            ca,
            names: names.to_vec(),
        })
    }

    /// A new key pair and certificate for the same names from the same CA (a rotation: the
    /// webhook configuration's caBundle stays valid).
    pub fn renewed(&self) -> anyhow::Result<Self> {
        Self::signed(self.ca.clone(), &self.names)
    }

    /// The names a service's serving certificate carries.
    pub fn for_service(service: &str, namespace: &str) -> anyhow::Result<Self> {
        Self::generate(&[
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.cluster.local"),
        ])
    }

    pub fn write(&self, dir: &Path) -> anyhow::Result<CertPaths> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let paths = CertPaths {
            ca: dir.join("ca.crt"),
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        };
        std::fs::write(&paths.ca, &self.ca_pem)?;
        std::fs::write(&paths.cert, &self.cert_pem)?;
        std::fs::write(&paths.key, &self.key_pem)?;
        Ok(paths)
    }

    /// A rustls server configuration serving this certificate.
    pub fn server_config(&self) -> anyhow::Result<rustls::ServerConfig> {
        let certs =
            rustls_pemfile::certs(&mut self.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
        let key =
            rustls_pemfile::private_key(&mut self.key_pem.as_bytes())?.context("no private key")?;
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// Serves an axum router over TLS on `addr` until the returned task is aborted.
pub async fn serve_tls(
    router: axum::Router,
    config: rustls::ServerConfig,
    addr: std::net::SocketAddr,
) -> std::io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let router = router.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let router = router.clone();
                        async move {
                            use tower::ServiceExt;
                            router.oneshot(req.map(axum::body::Body::new)).await
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Ok((local, task))
}
