//! The webhook over a real TLS connection on 127.0.0.1, with rcgen certificates.

mod support;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use readygate::cache::Cache;
use readygate::certs::{self, Bundle};
use readygate::cli::{Cli, Command};
use readygate::domain::NamespaceSettings;
use readygate::metrics::Metrics;
use readygate::server::{self, AdminState, HttpsLimits};
use readygate::termination::{PRESTOP_SLEEP_ANNOTATION, PrestopSleep};
use readygate::tls::{self, KeyPairPaths, ReloadingResolver};
use readygate::webhook::{self, WebhookState};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

fn bundle() -> Bundle {
    certs::generate(vec!["localhost".into(), "127.0.0.1".into()], 30).unwrap()
}

/// Lays the key pair out as a Secret volume does: files behind a `..data` symlink that an
/// update swaps atomically.
fn publish(dir: &Path, b: &Bundle, generation: u32) {
    let gen_dir = dir.join(format!("..gen_{generation}"));
    std::fs::create_dir_all(&gen_dir).unwrap();
    std::fs::write(gen_dir.join("tls.crt"), &b.cert_pem).unwrap();
    std::fs::write(gen_dir.join("tls.key"), &b.key_pem).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..gen_{generation}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for f in ["tls.crt", "tls.key"] {
        if std::fs::symlink_metadata(dir.join(f)).is_err() {
            std::os::unix::fs::symlink(format!("..data/{f}"), dir.join(f)).unwrap();
        }
    }
}

struct Server {
    addr: std::net::SocketAddr,
    metrics: Arc<Metrics>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// Serves `router` over TLS on 127.0.0.1 with the key pair in `dir`, reloaded every 100 ms.
async fn serve(
    dir: &Path,
    router: axum::Router,
    limits: HttpsLimits,
    metrics: Arc<Metrics>,
) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve_on(listener, dir, router, limits, metrics)
}

/// `serve` on a given listener.
fn serve_on(
    listener: TcpListener,
    dir: &Path,
    router: axum::Router,
    limits: HttpsLimits,
    metrics: Arc<Metrics>,
) -> Server {
    readygate::install_crypto_provider();
    let resolver = Arc::new(
        ReloadingResolver::load(KeyPairPaths {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        })
        .unwrap(),
    );
    tokio::spawn(
        resolver
            .clone()
            .watch(Duration::from_millis(100), metrics.clone()),
    );
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls::server_config(resolver).unwrap()));
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server::serve_https(
        listener,
        acceptor,
        router,
        limits,
        async {
            let _ = stopped.await;
        },
    ));
    Server {
        addr,
        metrics,
        stop,
        task,
    }
}

fn shop() -> Arc<Cache> {
    support::shop("arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web/1")
}

/// The webhook itself, with the `shop` namespace's binding cached.
async fn start(dir: &Path, header_read_timeout: Duration) -> Server {
    start_with(dir, header_read_timeout, shop(), PrestopSleep::Off).await
}

/// The webhook over `cache`, with `--prestop-sleep` at `prestop_sleep`.
async fn start_with(
    dir: &Path,
    header_read_timeout: Duration,
    cache: Arc<Cache>,
    prestop_sleep: PrestopSleep,
) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    start_on(listener, dir, header_read_timeout, cache, prestop_sleep)
}

fn start_on(
    listener: TcpListener,
    dir: &Path,
    header_read_timeout: Duration,
    cache: Arc<Cache>,
    prestop_sleep: PrestopSleep,
) -> Server {
    let metrics = Arc::new(Metrics::new());
    let router = webhook::router(
        WebhookState {
            cache,
            metrics: metrics.clone(),
            prestop_sleep,
        },
        256 * 1024,
    );
    let limits = HttpsLimits {
        handshake_timeout: Duration::from_secs(5),
        header_read_timeout,
        drain_timeout: Duration::from_secs(2),
    };
    serve_on(listener, dir, router, limits, metrics)
}

/// One plain-HTTP GET on a fresh connection: (status, body).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let tcp = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = sender
        .send_request(req)
        .await
        .map_err(std::io::Error::other)?;
    let status = res.status().as_u16();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn connector(ca_pem: &str) -> TlsConnector {
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = tokio_rustls::rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// One connection that may carry several requests (keep-alive).
struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Client {
    async fn connect(addr: std::net::SocketAddr, ca_pem: &str) -> std::io::Result<Client> {
        let tcp = TcpStream::connect(addr).await?;
        let tls = connector(ca_pem)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok(Client { sender })
    }

    async fn try_post(&mut self, body: Vec<u8>) -> hyper::Result<(u16, Vec<u8>)> {
        let req = Request::post(webhook::PATH)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let res = self.sender.send_request(req).await?;
        let status = res.status().as_u16();
        Ok((status, res.into_body().collect().await?.to_bytes().to_vec()))
    }

    async fn post(&mut self, body: Vec<u8>) -> (u16, Vec<u8>) {
        self.try_post(body).await.unwrap()
    }
}

fn review(kind: &str, pod: &Value) -> Vec<u8> {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "e911857d-c318-11e8-bbad-025000000001",
            "kind": { "group": "", "version": "v1", "kind": kind },
            "resource": { "group": "", "version": "v1", "resource": "pods" },
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": { "username": "system:serviceaccount:kube-system:replicaset-controller" },
            "object": pod,
            "dryRun": false
        }
    })
    .to_string()
    .into_bytes()
}

fn pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "generateName": "web-6d9f-", "namespace": "shop", "labels": { "app": "web" },
                      "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-6d9f", "uid": "1", "controller": true }] },
        "spec": {
            "containers": [{ "name": "web", "image": "nginx:1.27", "ports": [{ "containerPort": 8080, "name": "http" }] }],
            "initContainers": [{ "name": "mesh", "image": "envoy", "restartPolicy": "Always" }],
            "futureField": { "kept": true }
        }
    })
}

fn apply_patch(response: &Value, pod: &Value) -> Value {
    let bytes: Vec<u8> = match &response["response"]["patch"] {
        Value::Array(a) => a.iter().map(|b| b.as_u64().unwrap() as u8).collect(),
        Value::String(s) => {
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, s).unwrap()
        }
        other => panic!("no patch: {other}"),
    };
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    let mut out = pod.clone();
    json_patch::patch(&mut out, &patch).unwrap();
    out
}

fn tempdir() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().to_path_buf();
    (d, p)
}

/// A directory with a fresh key pair published in it; keep the guard alive.
fn keyed_dir() -> (tempfile::TempDir, PathBuf, Bundle) {
    let (guard, dir) = tempdir();
    let b = bundle();
    publish(&dir, &b, 1);
    (guard, dir, b)
}

#[tokio::test]
async fn admission_over_tls_keep_alive() {
    let (_guard, dir, b) = keyed_dir();
    let server = start(&dir, Duration::from_secs(10)).await;
    let mut client = Client::connect(server.addr, &b.ca_pem).await.unwrap();

    // A real AdmissionReview in, the patch out; the patched pod keeps every other field.
    let (status, body) = client.post(review("Pod", &pod())).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        answer["response"]["uid"],
        "e911857d-c318-11e8-bbad-025000000001"
    );
    assert_eq!(answer["response"]["allowed"], true);
    let patched = apply_patch(&answer, &pod());
    let mut expected = pod();
    expected["spec"]["readinessGates"] =
        json!([{ "conditionType": "target-health.elbv2.k8s.aws/web-tgb" }]);
    assert_eq!(patched, expected);

    // Same connection: malformed JSON gets a 400 with a reason, and the server keeps serving.
    let (status, body) = client.post(b"{\"apiVersion\": ".to_vec()).await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("invalid AdmissionReview"));

    // Wrong kind: allowed, untouched.
    let (status, body) = client
        .post(review("ConfigMap", &json!({"metadata": {"name": "x"}})))
        .await;
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("patch").is_none_or(Value::is_null));

    // Oversized body: 413, never a panic.
    let mut big = pod();
    big["metadata"]["annotations"] = json!({ "blob": "x".repeat(300 * 1024) });
    let (status, _) = Client::connect(server.addr, &b.ca_pem)
        .await
        .unwrap()
        .post(review("Pod", &big))
        .await;
    assert_eq!(status, 413);

    let text = server.metrics.encode();
    assert!(
        text.contains(r#"readygate_admissions_total{outcome="patched"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"readygate_admissions_total{outcome="error"} 2"#),
        "{text}"
    );
    let _ = server.stop.send(());
    tokio::time::timeout(Duration::from_secs(10), server.task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn rotated_certificate_is_served_without_restart() {
    let (_guard, dir) = tempdir();
    let first = bundle();
    publish(&dir, &first, 1);
    let server = start(&dir, Duration::from_secs(10)).await;
    Client::connect(server.addr, &first.ca_pem)
        .await
        .expect("first certificate served");

    // A Secret update: new CA and key pair behind a swapped symlink.
    let second = bundle();
    publish(&dir, &second, 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if Client::connect(server.addr, &second.ca_pem).await.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rotated certificate not served within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        Client::connect(server.addr, &first.ca_pem).await.is_err(),
        "old certificate still served"
    );

    // A broken update keeps the last good pair serving, and is counted.
    let mut broken = bundle();
    broken.key_pem = first.key_pem.clone(); // key of another certificate
    publish(&dir, &broken, 3);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server
        .metrics
        .encode()
        .contains(r#"readygate_tls_reloads_total{outcome="error"} 1"#)
    {
        assert!(Instant::now() < deadline, "bad key pair not reported");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut c = Client::connect(server.addr, &second.ca_pem)
        .await
        .expect("last good certificate still served");
    assert_eq!(c.post(review("Pod", &pod())).await.0, 200);
    let _ = server.stop.send(());
}

/// A sample of an unlabelled metric in `/metrics` text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map(|v| v.parse().expect("a sample value"))
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Waits until the scrape satisfies `ready`, or panics with it after 10 s.
async fn metrics_until(server: &Server, what: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = server.metrics.encode();
        if ready(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not seen within 10 s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const EXPIRY: &str = "readygate_tls_certificate_expiry_timestamp_seconds";
const SUCCESSFUL: &str = "readygate_tls_last_reload_successful";
const SUCCESS_TIME: &str = "readygate_tls_last_reload_success_timestamp_seconds";

#[tokio::test]
async fn certificate_gauges_follow_the_served_certificate() {
    const DAY: f64 = 86_400.0;
    // Within two minutes of `days` from now: the certificates were made a moment ago.
    let expires_in = |text: &str, days: f64| {
        sample(text, EXPIRY).is_some_and(|t| (t - (unix_now() + days * DAY)).abs() < 120.0)
    };
    let (_guard, dir) = tempdir();
    // 30 days for the serving certificate, 60 for its CA: the gauge is the one served.
    let first = bundle();
    publish(&dir, &first, 1);
    let server = start(&dir, Duration::from_secs(10)).await;
    // Set at start-up, before any reload.
    let text = server.metrics.encode();
    assert!(expires_in(&text, 30.0), "{text}");
    assert_eq!(sample(&text, SUCCESSFUL), Some(1.0), "{text}");
    let loaded = sample(&text, SUCCESS_TIME).expect("success time");
    assert!((loaded - unix_now()).abs() < 60.0, "{text}");

    // A renewal with a longer life: the gauge follows the certificate now served.
    let second = certs::generate(vec!["localhost".into(), "127.0.0.1".into()], 90).unwrap();
    publish(&dir, &second, 2);
    let text = metrics_until(&server, "the renewed certificate", |t| expires_in(t, 90.0)).await;
    assert_eq!(sample(&text, SUCCESSFUL), Some(1.0), "{text}");
    Client::connect(server.addr, &second.ca_pem)
        .await
        .expect("renewed certificate served");

    // A rejected pair: 0 for as long as it is on disk, the expiry still the one served.
    let mut broken = bundle();
    broken.key_pem = first.key_pem.clone();
    publish(&dir, &broken, 3);
    let text = metrics_until(&server, "the rejected pair", |t| {
        sample(t, SUCCESSFUL) == Some(0.0)
    })
    .await;
    assert!(expires_in(&text, 90.0), "{text}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let text = server.metrics.encode();
    assert_eq!(
        sample(&text, SUCCESSFUL),
        Some(0.0),
        "still rejected:\n{text}"
    );
    assert!(
        text.contains(r#"readygate_tls_reloads_total{outcome="error"} 1"#),
        "counted once:\n{text}"
    );
    Client::connect(server.addr, &second.ca_pem)
        .await
        .expect("the last good certificate still served");

    // The served pair back on disk: successful again.
    publish(&dir, &second, 4);
    metrics_until(&server, "the good pair back", |t| {
        sample(t, SUCCESSFUL) == Some(1.0) && expires_in(t, 90.0)
    })
    .await;

    // Files that cannot be read are a failure too, and clear once they can be read again, even
    // unchanged.
    std::fs::remove_file(dir.join("..data")).unwrap();
    metrics_until(&server, "unreadable files", |t| {
        sample(t, SUCCESSFUL) == Some(0.0)
    })
    .await;
    std::os::unix::fs::symlink("..gen_4", dir.join("..data")).unwrap();
    let text = metrics_until(&server, "readable files", |t| {
        sample(t, SUCCESSFUL) == Some(1.0)
    })
    .await;
    assert!(expires_in(&text, 90.0), "{text}");
    let _ = server.stop.send(());
}

#[tokio::test]
async fn idle_connections_are_closed_by_the_header_read_timeout() {
    let (_guard, dir, b) = keyed_dir();
    let server = start(&dir, Duration::from_millis(300)).await;
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut tls = connector(&b.ca_pem)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    // Send nothing: the server must hang up on its own.
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await;
    assert!(read.is_ok(), "connection still open after 5 s");
    assert!(started.elapsed() >= Duration::from_millis(250));
    let _ = server.stop.send(());
}

#[tokio::test]
async fn missing_or_bad_key_pair_fails_at_start() {
    let (_guard, dir) = tempdir();
    let paths = KeyPairPaths {
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
    };
    assert!(
        ReloadingResolver::load(paths.clone())
            .unwrap_err()
            .to_string()
            .contains("tls.crt")
    );
    std::fs::write(&paths.cert, "not a certificate").unwrap();
    std::fs::write(&paths.key, "nor a key").unwrap();
    assert!(ReloadingResolver::load(paths).is_err());
}

#[tokio::test]
async fn shutdown_drains_requests_in_flight() {
    let (_guard, dir, b) = keyed_dir();
    // A handler slower than the moment shutdown starts.
    let router = axum::Router::new().route(
        webhook::PATH,
        axum::routing::post(|| async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            "done"
        }),
    );
    let limits = HttpsLimits {
        handshake_timeout: Duration::from_secs(5),
        header_read_timeout: Duration::from_secs(10),
        drain_timeout: Duration::from_secs(5),
    };
    let Server {
        addr,
        stop,
        task: server,
        ..
    } = serve(&dir, router, limits, Arc::new(Metrics::new())).await;
    let mut client = Client::connect(addr, &b.ca_pem).await.unwrap();
    let request = tokio::spawn(async move { client.post(b"{}".to_vec()).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopping = Instant::now();
    stop.send(()).unwrap();
    // The server returns only once the answer in flight is out (about 300 ms later)...
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
    assert!(
        stopping.elapsed() >= Duration::from_millis(200),
        "serve_https returned {:?} after shutdown, before the request in flight was answered",
        stopping.elapsed()
    );
    // ...and the answer arrives whole.
    let (status, body) = tokio::time::timeout(Duration::from_secs(5), request)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((status, body.as_slice()), (200, b"done".as_slice()));
    // And it no longer accepts connections.
    assert!(Client::connect(addr, &b.ca_pem).await.is_err());
}

#[tokio::test]
async fn idle_keep_alive_connections_live_as_long_as_the_header_read_timeout() {
    // hyper applies the header-read timeout to the wait for a keep-alive connection's next
    // request too, which is why its default (120 s) outlasts the API server's idle pool (90 s).
    let (_guard, dir, b) = keyed_dir();
    let server = start(&dir, Duration::from_millis(1500)).await;
    let mut client = Client::connect(server.addr, &b.ca_pem).await.unwrap();
    assert_eq!(client.post(review("Pod", &pod())).await.0, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        client.post(review("Pod", &pod())).await.0,
        200,
        "reused after a short idle gap"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        client.try_post(review("Pod", &pod())).await.is_err(),
        "closed after idling past the timeout"
    );
    let _ = server.stop.send(());
}

#[tokio::test]
async fn prestop_sleep_over_tls_in_an_annotated_namespace() {
    let (_guard, dir, b) = keyed_dir();
    let cache = shop();
    cache.write().apply_namespace(
        "shop",
        NamespaceSettings {
            opted_in: true,
            prestop_sleep: Some("20s".into()),
        },
    );
    // The flag says 5s; the namespace's annotation wins.
    let server = start_with(&dir, Duration::from_secs(10), cache, "5s".parse().unwrap()).await;
    let mut client = Client::connect(server.addr, &b.ca_pem).await.unwrap();

    // A Deployment's pod with an app container, a log shipper whose own preStop flushes, a
    // native sidecar, and the grace period the API server defaulted.
    let mut web = pod();
    web["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "name": "shipper", "image": "fluent-bit",
                      "lifecycle": { "preStop": { "exec": { "command": ["flush"] } } } }));
    web["spec"]["terminationGracePeriodSeconds"] = json!(30);
    let (status, body) = client.post(review("Pod", &web)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], true);
    assert_eq!(answer["response"]["patchType"], "JSONPatch");
    let mut expected = web.clone();
    expected["spec"]["readinessGates"] =
        json!([{ "conditionType": "target-health.elbv2.k8s.aws/web-tgb" }]);
    expected["spec"]["containers"][0]["lifecycle"] =
        json!({ "preStop": { "sleep": { "seconds": 20 } } });
    expected["spec"]["terminationGracePeriodSeconds"] = json!(50);
    assert_eq!(apply_patch(&answer, &web), expected);

    // A typo in the pod's annotation: the gate still, no sleep, and the typo counted.
    let mut typo = pod();
    typo["metadata"]["annotations"] = json!({ PRESTOP_SLEEP_ANNOTATION: "20 secs please" });
    let (status, body) = client.post(review("Pod", &typo)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer: Value = serde_json::from_slice(&body).unwrap();
    let mut expected = typo.clone();
    expected["spec"]["readinessGates"] =
        json!([{ "conditionType": "target-health.elbv2.k8s.aws/web-tgb" }]);
    assert_eq!(apply_patch(&answer, &typo), expected);

    let text = server.metrics.encode();
    assert!(
        text.contains("readygate_prestop_injected_total 1"),
        "{text}"
    );
    assert!(
        text.contains(r#"readygate_prestop_invalid_annotations_total{source="pod"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"readygate_admissions_total{outcome="patched"} 2"#),
        "{text}"
    );
    let _ = server.stop.send(());
}

#[tokio::test]
async fn webhook_and_admin_listen_on_ipv6_and_ipv4_by_default() {
    // The defaults are the IPv6 wildcard, so EKS IPv6 clusters reach the pod without flags.
    let Command::Serve(args) = Cli::try_parse_from(["readygate", "serve"]).unwrap().command else {
        unreachable!()
    };
    for addr in [args.webhook.webhook_addr, args.admin.admin_addr] {
        assert_eq!(addr.ip(), IpAddr::V6(Ipv6Addr::UNSPECIFIED), "{addr}");
        // Dual-stack: the socket for `[::]` takes IPv4 connections too, whatever the host's
        // net.ipv6.bindv6only says (checked unbound: tests never listen beyond loopback).
        let socket = server::listen_socket(addr).unwrap();
        assert!(!socket.only_v6().unwrap(), "IPV6_V6ONLY is on for {addr}");
    }
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        println!("SKIPPED: this machine has no IPv6 loopback");
        return;
    }
    // Tests stay on loopback: the same bind as `serve`, on [::1] instead of [::].
    let on_loopback = |mut addr: SocketAddr| {
        addr.set_ip(IpAddr::V6(Ipv6Addr::LOCALHOST));
        addr.set_port(0);
        server::bind(addr).unwrap()
    };
    let webhook_listener = on_loopback(args.webhook.webhook_addr);
    let admin_listener = on_loopback(args.admin.admin_addr);

    let (_guard, dir, b) = keyed_dir();
    let server = start_on(
        webhook_listener,
        &dir,
        Duration::from_secs(10),
        shop(),
        PrestopSleep::Off,
    );
    assert!(server.addr.is_ipv6());
    let mut client = Client::connect(server.addr, &b.ca_pem).await.unwrap();
    let (status, body) = client.post(review("Pod", &pod())).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        apply_patch(&answer, &pod())["spec"]["readinessGates"],
        json!([{ "conditionType": "target-health.elbv2.k8s.aws/web-tgb" }])
    );

    let admin_addr = admin_listener.local_addr().unwrap();
    let cache =
        support::shop("arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web/1");
    let admin = tokio::spawn(async move {
        axum::serve(
            admin_listener,
            server::admin_router(AdminState {
                cache,
                metrics: Arc::new(Metrics::new()),
                shutting_down: Default::default(),
                gates: Default::default(),
            }),
        )
        .await
    });
    assert_eq!(
        http_get(admin_addr, "/healthz").await.unwrap(),
        (200, "ok\n".to_string())
    );
    let (status, metrics) = http_get(admin_addr, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");
    admin.abort();
    let _ = server.stop.send(());
}

#[tokio::test]
async fn shutdown_fails_readiness_first_and_serves_new_connections_for_the_delay() {
    let (_guard, dir, b) = keyed_dir();
    readygate::install_crypto_provider();
    let resolver = Arc::new(
        ReloadingResolver::load(KeyPairPaths {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        })
        .unwrap(),
    );
    let cache =
        support::shop("arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web/1");
    let metrics = Arc::new(Metrics::new());
    let delay = Duration::from_millis(1500);
    let servers = server::Servers {
        webhook: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(tls::server_config(resolver).unwrap())),
        router: webhook::router(
            WebhookState {
                cache: cache.clone(),
                metrics: metrics.clone(),
                prestop_sleep: PrestopSleep::Off,
            },
            256 * 1024,
        ),
        limits: HttpsLimits {
            handshake_timeout: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(2),
        },
        admin: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        admin_state: AdminState {
            cache,
            metrics,
            shutting_down: Default::default(),
            gates: Default::default(),
        },
        shutdown_delay: delay,
    };
    let (webhook_addr, admin_addr) = (
        servers.webhook.local_addr().unwrap(),
        servers.admin.local_addr().unwrap(),
    );
    let (sigterm, signal) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(servers.run(async {
        let _ = signal.await;
    }));
    assert_eq!(http_get(admin_addr, "/readyz").await.unwrap().0, 200);
    let mut kept_alive = Client::connect(webhook_addr, &b.ca_pem).await.unwrap();
    assert_eq!(kept_alive.post(review("Pod", &pod())).await.0, 200);

    // SIGTERM: /readyz fails at once, so the endpoint removal starts...
    sigterm.send(()).unwrap();
    let signalled = Instant::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (status, body) = http_get(admin_addr, "/readyz").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("shutting down"), "{body}");
    // ...while liveness holds, so the kubelet does not kill the replica meanwhile.
    assert_eq!(http_get(admin_addr, "/healthz").await.unwrap().0, 200);

    // The API server has not heard yet: NEW connections still get their patch, for the delay.
    let mut answered = 0;
    while signalled.elapsed() < delay - Duration::from_millis(300) {
        let mut fresh = Client::connect(webhook_addr, &b.ca_pem)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "new connection refused {:?} after SIGTERM: {e}",
                    signalled.elapsed()
                )
            });
        let (status, body) = fresh.post(review("Pod", &pod())).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let answer: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            apply_patch(&answer, &pod())["spec"]["readinessGates"],
            json!([{ "conditionType": "target-health.elbv2.k8s.aws/web-tgb" }])
        );
        answered += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        answered >= 4,
        "{answered} admissions answered during the delay"
    );
    assert_eq!(kept_alive.post(review("Pod", &pod())).await.0, 200);

    // Then it stops accepting, drains, and returns (admin last).
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("servers stopped after the delay and the drain")
        .unwrap();
    assert!(signalled.elapsed() >= delay);
    assert!(Client::connect(webhook_addr, &b.ca_pem).await.is_err());
    assert!(http_get(admin_addr, "/healthz").await.is_err());
}
