//! TLS for the webhook: a certificate resolver that reloads the key pair from disk.
//!
//! The files are re-read on an interval and compared by content, which also catches a
//! Kubernetes Secret volume's symlink swap (a file watch on the old inode would miss it). A new
//! pair is validated before it replaces the old one; a bad pair keeps the old one serving.
//! The served certificate's expiry and whether the last pair looked at was taken are published
//! as gauges, from start-up on.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    #[error("unreadable certificate: {0}")]
    Certificate(String),
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

/// notAfter of a DER certificate, unix seconds.
fn not_after(cert: &CertificateDer<'_>) -> Result<i64, TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    Ok(parsed.validity().not_after.timestamp())
}

fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
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

/// The key pair being served.
#[derive(Debug)]
struct Served {
    key: Arc<CertifiedKey>,
    /// notAfter of its certificate (the first of the chain: ours), unix seconds.
    not_after: i64,
    loaded_at: SystemTime,
}

impl Served {
    fn parse(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        let key = certified_key(cert_pem, key_pem)?;
        let not_after = not_after(key.end_entity_cert().map_err(|_| TlsError::NoCertificate)?)?;
        Ok(Self {
            key: Arc::new(key),
            not_after,
            loaded_at: SystemTime::now(),
        })
    }
}

/// Serves the current key pair to every new handshake.
#[derive(Debug)]
pub struct ReloadingResolver {
    paths: KeyPairPaths,
    current: RwLock<Served>,
    /// The file contents last read, good or bad, so each change is handled once.
    seen: std::sync::Mutex<Seen>,
}

#[derive(Debug)]
struct Seen {
    cert: Vec<u8>,
    key: Vec<u8>,
    /// Whether they are the pair being served (else they were rejected).
    taken: bool,
}

impl ReloadingResolver {
    /// Loads the pair; fails when it is missing or invalid (checked at bind, before serving).
    pub fn load(paths: KeyPairPaths) -> Result<Self, TlsError> {
        let (cert, key) = paths.read()?;
        let served = Served::parse(&cert, &key)?;
        Ok(Self {
            paths,
            current: RwLock::new(served),
            seen: std::sync::Mutex::new(Seen {
                cert,
                key,
                taken: true,
            }),
        })
    }

    /// notAfter of the certificate being served, unix seconds.
    pub fn not_after(&self) -> i64 {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .not_after
    }

    /// Whether the files, as last read, hold the pair being served (not a rejected one).
    fn files_served(&self) -> bool {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).taken
    }

    /// The gauges of the pair being served; `readable`: whether the files could be read.
    fn publish(&self, metrics: &Metrics, readable: bool) {
        // `seen` before `current`, the order reload takes them in.
        let successful = readable && self.files_served();
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        metrics.tls_certificate_expiry.set(current.not_after);
        metrics
            .tls_last_reload_success_time
            .set(unix_seconds(current.loaded_at));
        metrics
            .tls_last_reload_successful
            .set(i64::from(successful));
    }

    /// Re-reads the files; swaps in a changed, valid pair. Returns whether it swapped.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (cert, key) = self.paths.read()?;
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.cert == cert && seen.key == key {
            return Ok(false);
        }
        let parsed = Served::parse(&cert, &key);
        *seen = Seen {
            cert,
            key,
            taken: parsed.is_ok(),
        };
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = parsed?;
        Ok(true)
    }

    /// Publishes the pair loaded at start at once (so the first scrape has it), then reloads
    /// every `interval` for as long as the returned future runs. While the files cannot be
    /// read or hold a rejected pair, `readygate_tls_last_reload_successful` is 0.
    pub fn watch(
        self: Arc<Self>,
        interval: Duration,
        metrics: Arc<Metrics>,
    ) -> impl Future<Output = ()> + Send + 'static {
        self.publish(&metrics, true);
        async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let result = self.reload();
                // The gauges before the count: a scrape that sees the count sees them.
                self.publish(&metrics, result.is_ok());
                match result {
                    Ok(false) => {}
                    Ok(true) => {
                        tracing::info!(cert = %self.paths.cert.display(), not_after = self.not_after(), "serving certificate reloaded");
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
}

impl ResolvesServerCert for ReloadingResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .key
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
