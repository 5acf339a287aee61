//! TLS for the webhook: a certificate resolver that reloads the key pair from disk.
//!
//! The files are re-read on an interval and compared by content, which also catches a
//! Kubernetes Secret volume's symlink swap (a file watch on the old inode would miss it). A new
//! pair is validated before it replaces the old one; a bad pair keeps the old one serving.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::metrics::{Metrics, TlsReload};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no certificate found in the PEM")]
    NoCertificate,
    #[error("invalid certificate PEM: {0}")]
    CertPem(rustls::pki_types::pem::Error),
    #[error("invalid private key PEM: {0}")]
    KeyPem(rustls::pki_types::pem::Error),
    #[error("unusable key: {0}")]
    Key(rustls::Error),
    #[error("the private key does not match the certificate: {0}")]
    Mismatch(rustls::Error),
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// Parses and checks a PEM certificate chain and key.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, TlsError> {
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(TlsError::CertPem)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(TlsError::KeyPem)?;
    let ck = CertifiedKey::from_der(certs, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::Mismatch(e),
        e => TlsError::Key(e),
    })?;
    Ok(ck)
}

/// Where the serving key pair lives.
#[derive(Clone, Debug)]
pub struct KeyPairPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl KeyPairPaths {
    fn read(&self) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|source| TlsError::Read {
                path: p.clone(),
                source,
            })
        };
        Ok((read(&self.cert)?, read(&self.key)?))
    }
}

/// Serves the current key pair to every new handshake.
#[derive(Debug)]
pub struct ReloadingResolver {
    paths: KeyPairPaths,
    current: RwLock<Arc<CertifiedKey>>,
    /// The file contents last looked at, good or bad, so each change is handled once.
    seen: std::sync::Mutex<(Vec<u8>, Vec<u8>)>,
}

impl ReloadingResolver {
    /// Loads the pair; fails when it is missing or invalid (checked at bind, before serving).
    pub fn load(paths: KeyPairPaths) -> Result<Self, TlsError> {
        let (cert, key) = paths.read()?;
        let ck = certified_key(&cert, &key)?;
        Ok(Self {
            paths,
            current: RwLock::new(Arc::new(ck)),
            seen: std::sync::Mutex::new((cert, key)),
        })
    }

    /// Re-reads the files; swaps in a changed, valid pair. Returns whether it swapped.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (cert, key) = self.paths.read()?;
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if seen.0 == cert && seen.1 == key {
                return Ok(false);
            }
            *seen = (cert.clone(), key.clone());
        }
        let ck = certified_key(&cert, &key)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ck);
        Ok(true)
    }

    /// Reloads every `interval` for as long as the process runs.
    pub async fn watch(self: Arc<Self>, interval: Duration, metrics: Arc<Metrics>) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.reload() {
                Ok(false) => {}
                Ok(true) => {
                    tracing::info!(cert = %self.paths.cert.display(), "serving certificate reloaded");
                    metrics.tls_reload(TlsReload::Ok);
                }
                Err(e) => {
                    tracing::error!(error = %e, cert = %self.paths.cert.display(), "new serving certificate rejected; still serving the previous one");
                    metrics.tls_reload(TlsReload::Error);
                }
            }
        }
    }
}

impl ResolvesServerCert for ReloadingResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// TLS 1.2 and 1.3 only, HTTP/1.1, certificates from `resolver`.
pub fn server_config(resolver: Arc<ReloadingResolver>) -> Result<rustls::ServerConfig, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
