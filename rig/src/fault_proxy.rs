//! A fault-injecting HTTPS reverse proxy between a client (readygate) and the real API server,
//! which has no fault hooks of its own. It serves a certificate signed by the cluster CA on
//! 127.0.0.1, forwards every request over TLS to the API server with the client's own
//! `Authorization` header (it adds no credentials), and streams responses as they arrive, so
//! watches stay live. On demand it plays an outage of some API paths — their open watches are cut
//! and every request for them gets kube-apiserver's 404 for an unknown resource, as around an
//! API server restart or a CRD being re-applied — or cuts every open watch.
//!
//! HTTP/1.1 only (ALPN offers `http/1.1`): connection upgrades (exec, port-forward) are not
//! proxied.

use anyhow::Context;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use tokio::task::{JoinHandle, JoinSet};

use crate::cluster::ControlPlane;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = UnsyncBoxBody<Bytes, BoxError>;

/// The body kube-apiserver sends for a resource it does not serve.
pub const NOT_FOUND_BODY: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"the server could not find the requested resource","reason":"NotFound","details":{},"code":404}"#;

// ---- Decisions: plain data, no I/O ----

/// Which open watches a cut ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cut {
    All,
    Prefixes(Vec<String>),
}

impl Cut {
    pub fn hits(&self, path: &str) -> bool {
        match self {
            Cut::All => true,
            Cut::Prefixes(prefixes) => prefixes.iter().any(|p| path.starts_with(p.as_str())),
        }
    }
}

/// Path prefixes not served until a deadline.
#[derive(Debug, Default)]
pub struct Outages {
    until: Vec<(String, Instant)>,
}

impl Outages {
    pub fn start(&mut self, prefixes: &[String], until: Instant) {
        for p in prefixes {
            self.until.retain(|(q, _)| q != p);
            self.until.push((p.clone(), until));
        }
    }

    /// Whether a request for `path` at `now` falls in an outage.
    pub fn blocks(&self, path: &str, now: Instant) -> bool {
        self.until
            .iter()
            .any(|(p, until)| now < *until && path.starts_with(p.as_str()))
    }

    pub fn forget_ended(&mut self, now: Instant) {
        self.until.retain(|(_, until)| now < *until);
    }
}

/// Whether a request opens a watch: `?watch=true` (or `1`), or a legacy `/watch/` path.
pub fn is_watch(path: &str, query: Option<&str>) -> bool {
    let by_query = query.is_some_and(|q| {
        form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "watch" && (v == "true" || v == "1"))
    });
    by_query || path.split('/').any(|segment| segment == "watch")
}

/// Headers of one hop only (RFC 9110 §7.6.1), which a proxy does not forward.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    for name in named {
        headers.remove(name.as_str());
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

// ---- The proxy ----

/// One request the proxy answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub status: u16,
}

struct Faults {
    outages: Mutex<Outages>,
    /// Ends open watches (each watch response holds a receiver).
    cuts: broadcast::Sender<Cut>,
    seen: Mutex<Vec<Seen>>,
}

/// Where and how to reach the API server.
struct Upstream {
    addr: String,
    host: HeaderValue,
    name: rustls::pki_types::ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
}

/// A running proxy; the listener and every connection stop when it is dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    ca_pem: String,
    faults: Arc<Faults>,
    task: JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// Listens on 127.0.0.1 (a free port) in front of `plane`'s API server.
    pub async fn start(plane: &ControlPlane) -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let serving = plane.pki.serving(
            "rig-fault-proxy",
            &["127.0.0.1".to_string(), "localhost".to_string()],
        )?;
        let certs = rustls_pemfile::certs(&mut serving.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()?;
        let key = rustls_pemfile::private_key(&mut serving.key_pem.as_bytes())?
            .context("the proxy's serving key")?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];

        let mut roots = rustls::RootCertStore::empty();
        for ca in rustls_pemfile::certs(&mut plane.pki.ca_pem.as_bytes()) {
            roots.add(ca?)?;
        }
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        let uri: http::Uri = plane.url.parse()?;
        let authority = uri
            .authority()
            .context("the API server URL has no host")?
            .clone();
        let upstream = Arc::new(Upstream {
            addr: format!(
                "{}:{}",
                authority.host(),
                authority.port_u16().unwrap_or(443)
            ),
            host: HeaderValue::from_str(authority.as_str())?,
            name: rustls::pki_types::ServerName::try_from(authority.host().to_string())?,
            tls: tokio_rustls::TlsConnector::from(Arc::new(client)),
        });

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let faults = Arc::new(Faults {
            outages: Mutex::new(Outages::default()),
            cuts: broadcast::channel(64).0,
            seen: Mutex::new(Vec::new()),
        });
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let task = tokio::spawn(accept(listener, acceptor, upstream, faults.clone()));
        Ok(Self {
            addr,
            ca_pem: plane.pki.ca_pem.clone(),
            faults,
            task,
        })
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// A kubeconfig pointing at the proxy (verified with the cluster CA) that sends `token`.
    pub fn kubeconfig_for_token(&self, token: &str) -> String {
        crate::cluster::token_kubeconfig(&self.url(), &self.ca_pem, "via-fault-proxy", token)
    }

    /// For `duration`, requests whose path starts with one of `path_prefixes` (e.g.
    /// `/apis/elbv2.k8s.aws/`) get kube-apiserver's 404 for an unknown resource, and every watch
    /// already open on them is cut now.
    pub fn outage(&self, path_prefixes: Vec<String>, duration: Duration) {
        let now = Instant::now();
        {
            let mut outages = self.faults.outages.lock().expect("outages lock");
            outages.forget_ended(now);
            outages.start(&path_prefixes, now + duration);
        }
        tracing::info!(prefixes = ?path_prefixes, ?duration, "fault proxy: outage");
        let _ = self.faults.cuts.send(Cut::Prefixes(path_prefixes));
    }

    /// Cuts every open watch now (their connections close mid-stream).
    pub fn cut_watches(&self) {
        tracing::info!("fault proxy: cutting every watch");
        let _ = self.faults.cuts.send(Cut::All);
    }

    /// Every request answered so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.faults.seen.lock().expect("seen lock").clone()
    }

    /// How many `method` requests for paths starting with `prefix` were answered with `status`
    /// (any status when `None`).
    pub fn count(&self, method: &Method, prefix: &str, status: Option<u16>) -> usize {
        self.faults
            .seen
            .lock()
            .expect("seen lock")
            .iter()
            .filter(|s| {
                s.method == method
                    && s.path.starts_with(prefix)
                    && status.is_none_or(|c| c == s.status)
            })
            .count()
    }
}

async fn accept(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    upstream: Arc<Upstream>,
    faults: Arc<Faults>,
) {
    // Owned here so that aborting this task aborts every connection.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                connections.spawn(serve(tcp, acceptor.clone(), upstream.clone(), faults.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One client connection, with one upstream connection opened on demand and reused, as the
/// client's requests on it are serial.
async fn serve(
    tcp: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    upstream: Arc<Upstream>,
    faults: Arc<Faults>,
) {
    let Ok(tls) = acceptor.accept(tcp).await else {
        return;
    };
    let sender: Arc<tokio::sync::Mutex<Option<SendRequest<Incoming>>>> = Arc::default();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (upstream, faults, sender) = (upstream.clone(), faults.clone(), sender.clone());
        async move {
            let (method, path) = (req.method().clone(), req.uri().path().to_string());
            let resp = handle(req, &upstream, &faults, &sender).await;
            faults.seen.lock().expect("seen lock").push(Seen {
                method,
                path,
                status: resp.status().as_u16(),
            });
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tls), service)
        .await
    {
        tracing::debug!(error = %e, "fault proxy: client connection ended");
    }
}

async fn handle(
    req: Request<Incoming>,
    upstream: &Upstream,
    faults: &Faults,
    sender: &tokio::sync::Mutex<Option<SendRequest<Incoming>>>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    // Subscribed before the outage check, so an outage that starts while this watch is on its
    // way to the API server still cuts it.
    let cuts = is_watch(&path, req.uri().query()).then(|| faults.cuts.subscribe());
    if faults
        .outages
        .lock()
        .expect("outages lock")
        .blocks(&path, Instant::now())
    {
        return status_response(StatusCode::NOT_FOUND, NOT_FOUND_BODY.to_string());
    }

    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.insert(header::HOST, upstream.host.clone());
    parts.uri = match parts.uri.path_and_query() {
        Some(pq) => pq.as_str().parse().expect("an origin-form URI"),
        None => "/".parse().expect("an origin-form URI"),
    };
    let forwarded = Request::from_parts(parts, body);

    let sent = {
        let mut sender = sender.lock().await;
        match ready(&mut sender, upstream).await {
            Ok(s) => s.send_request(forwarded),
            Err(e) => return bad_gateway(&e),
        }
    };
    let resp = match sent.await {
        Ok(resp) => resp,
        Err(e) => return bad_gateway(&anyhow::Error::new(e).context("the API server's reply")),
    };
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let body = match cuts {
        Some(cuts) => cuttable(body, path, cuts),
        None => body.map_err(BoxError::from).boxed_unsync(),
    };
    Response::from_parts(parts, body)
}

/// The connection's upstream sender, ready for a request (connecting when there is none or the
/// API server closed it).
async fn ready<'s>(
    sender: &'s mut Option<SendRequest<Incoming>>,
    upstream: &Upstream,
) -> anyhow::Result<&'s mut SendRequest<Incoming>> {
    if let Some(s) = sender.as_mut()
        && !s.is_closed()
        && s.ready().await.is_ok()
    {
        return Ok(sender.as_mut().expect("a sender"));
    }
    let tcp = tokio::net::TcpStream::connect(&upstream.addr)
        .await
        .with_context(|| format!("connecting to the API server at {}", upstream.addr))?;
    let tls = upstream
        .tls
        .connect(upstream.name.clone(), tcp)
        .await
        .context("TLS with the API server")?;
    let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    // Ends when the sender and every response body of the connection are dropped.
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "fault proxy: API server connection ended");
        }
    });
    Ok(sender.insert(s))
}

#[derive(Debug, thiserror::Error)]
#[error("the fault proxy cut this watch")]
struct WatchCut;

/// A watch body that errs — so the client's connection closes mid-stream, without the final
/// chunk — when a cut hits its path.
fn cuttable(body: Incoming, path: String, cuts: broadcast::Receiver<Cut>) -> Body {
    let frames = futures::stream::unfold(Some((body, cuts, path)), |state| async move {
        let (mut body, mut cuts, path) = state?;
        loop {
            tokio::select! {
                frame = body.frame() => {
                    return match frame {
                        None => None,
                        Some(Ok(f)) => Some((Ok(f), Some((body, cuts, path)))),
                        Some(Err(e)) => Some((Err(BoxError::from(e)), None)),
                    };
                }
                cut = cuts.recv() => match cut {
                    Ok(cut) if !cut.hits(&path) => continue,
                    // A hit, or a missed cut (lagged), or the proxy is stopping.
                    _ => return Some((Err(BoxError::from(WatchCut)), None)),
                },
            }
        }
    });
    StreamBody::new(frames).boxed_unsync()
}

fn status_response(code: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn bad_gateway(e: &anyhow::Error) -> Response<Body> {
    tracing::warn!(error = %format!("{e:#}"), "fault proxy: the API server is unreachable");
    let status = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("fault proxy: {e:#}"), "reason": "ServiceUnavailable", "code": 502,
    });
    status_response(StatusCode::BAD_GATEWAY, status.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_blocks_its_prefixes_until_it_ends() {
        let t0 = Instant::now();
        let mut o = Outages::default();
        o.start(
            &["/apis/elbv2.k8s.aws/".into()],
            t0 + Duration::from_secs(5),
        );
        let tgbs = "/apis/elbv2.k8s.aws/v1beta1/namespaces/a/targetgroupbindings";
        assert!(o.blocks(tgbs, t0));
        assert!(o.blocks(tgbs, t0 + Duration::from_millis(4999)));
        assert!(!o.blocks(tgbs, t0 + Duration::from_secs(5)));
        assert!(!o.blocks("/api/v1/namespaces/a/pods", t0));
        assert!(!o.blocks("/apis/elbv2.k8s.aws.example/v1", t0));
        // A second outage of the same prefix replaces the first.
        o.start(
            &["/apis/elbv2.k8s.aws/".into()],
            t0 + Duration::from_secs(1),
        );
        assert!(!o.blocks(tgbs, t0 + Duration::from_secs(2)));
        o.forget_ended(t0 + Duration::from_secs(2));
        assert!(o.until.is_empty());
    }

    #[test]
    fn a_cut_hits_watches_under_its_prefixes() {
        let cut = Cut::Prefixes(vec!["/apis/elbv2.k8s.aws/".into()]);
        assert!(cut.hits("/apis/elbv2.k8s.aws/v1beta1/targetgroupbindings"));
        assert!(!cut.hits("/api/v1/pods"));
        assert!(Cut::All.hits("/api/v1/pods"));
    }

    #[test]
    fn watches_are_told_by_query_or_legacy_path() {
        assert!(is_watch(
            "/api/v1/pods",
            Some("watch=true&resourceVersion=5")
        ));
        assert!(is_watch("/api/v1/pods", Some("watch=1")));
        assert!(!is_watch("/api/v1/pods", Some("watch=false")));
        assert!(!is_watch("/api/v1/pods", None));
        assert!(is_watch("/api/v1/watch/namespaces/a/pods", None));
        assert!(!is_watch("/api/v1/namespaces/watchers/pods/x", None));
    }

    #[test]
    fn hop_by_hop_headers_stay_behind_and_authorization_goes_on() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-hop"),
        );
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        strip_hop_by_hop(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["accept", "authorization"]);
    }
}
