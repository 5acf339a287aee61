//! The real binary (`readygate serve`) as webhook-only replica, follower, leader and baseline,
//! against either API server (`--api`): the bench's own in-process one (`Server`: the lists
//! paged by the client's `limit` and `continue`, watches held open without events or ended
//! with `410 Gone`, the Lease, status PATCHes and Events), or the rig's kube-apiserver and etcd
//! with the objects loaded into them (`super::apiserver`). [`sequence`] is the same
//! measurement for both, through [`Backend`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::apiserver::{Cluster, Memory, StatusOf};
use super::{KINDS, Kind, Shape, list_body, mib, mib_b};

type Lists = HashMap<&'static str, ((&'static str, &'static str), Vec<String>)>;

const PODS: &str = "/api/v1/pods";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/readygate-system/leases";
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/readygate-system/leases/readygate";
/// The lease duration readygate writes; the bench's own holder uses it too.
pub const LEASE_SECS: u64 = 15;
/// The bench's stand-in for another replica holding the lease.
pub const HOLDER: &str = "bench-holder";

struct Server {
    lists: Lists,
    /// The Namespace list: only the gated pods' namespaces opted in, and every one opted in.
    namespaces: [Vec<String>; 2],
    every_namespace_opted_in: AtomicBool,
    /// Serve empty lists (the process without objects).
    empty: AtomicBool,
    /// The `limit` each list path was asked with ("-" for none).
    limits: Mutex<BTreeMap<String, BTreeSet<String>>>,
    /// Bumped to end the open pod watches with `410 Gone`, which makes the watcher re-list.
    expire_pods: AtomicUsize,
    /// Pod lists started (first pages asked for) and complete (last pages served), and when
    /// the last one completed.
    pod_list_starts: AtomicUsize,
    pod_lists: AtomicUsize,
    last_pod_list: Mutex<Option<Instant>>,
    /// The Lease's spec, when it exists.
    lease: Mutex<Option<serde_json::Map<String, Value>>>,
    /// The bench's holder renews the lease (every 5 s) while set; when it last did.
    holder_alive: AtomicBool,
    holder_renewed: Mutex<Option<Instant>>,
    /// The last time a readygate replica took the lease, and who.
    acquired: Mutex<Option<(String, Instant)>>,
    /// Status PATCHes and Event POSTs answered.
    writes: AtomicUsize,
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn not_found() -> Response {
    let status =
        r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#;
    json_response(StatusCode::NOT_FOUND, status.as_bytes().to_vec())
}

fn lease_json(spec: &serde_json::Map<String, Value>) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": { "name": "readygate", "namespace": "readygate-system", "uid": "lease-1", "resourceVersion": "1" },
        "spec": spec
    }))
    .expect("serialise")
}

/// The Lease, as kube-lease-manager uses it: get, create, and patches (apply or strategic
/// merge) of `spec` whose nulls remove a field.
fn lease(server: &Server, method: &Method, path: &str, body: &[u8]) -> Response {
    let mut lease = server.lease.lock().unwrap_or_else(|e| e.into_inner());
    match (method, path) {
        (&Method::GET, LEASE) => match lease.as_ref() {
            Some(spec) => json_response(StatusCode::OK, lease_json(spec)),
            None => not_found(),
        },
        (&Method::POST, LEASES) => {
            let spec = lease.get_or_insert_with(Default::default);
            json_response(StatusCode::CREATED, lease_json(spec))
        }
        (&Method::PATCH, LEASE) => {
            let Some(spec) = lease.as_mut() else {
                return not_found();
            };
            let patch: Value = serde_json::from_slice(body).unwrap_or_default();
            let before = spec.get("holderIdentity").cloned();
            if let Some(fields) = patch.get("spec").and_then(Value::as_object) {
                for (k, v) in fields {
                    match v {
                        Value::Null => spec.remove(k),
                        v => spec.insert(k.clone(), v.clone()),
                    };
                }
            }
            if let Some(Value::String(holder)) = spec.get("holderIdentity")
                && before.as_ref() != spec.get("holderIdentity")
            {
                *server.acquired.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((holder.clone(), Instant::now()));
            }
            json_response(StatusCode::OK, lease_json(spec))
        }
        _ => not_found(),
    }
}

/// The bench's holder: renews the lease every 5 s while `holder_alive` (for at most an hour).
async fn hold(server: Arc<Server>) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3600) {
        let due = server
            .holder_renewed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(5));
        if server.holder_alive.load(Ordering::Relaxed) && due {
            let mut spec = serde_json::Map::new();
            let now = jiff::Timestamp::now().to_string();
            spec.insert("holderIdentity".into(), json!(HOLDER));
            spec.insert("acquireTime".into(), json!(now));
            spec.insert("renewTime".into(), json!(now));
            spec.insert("leaseDurationSeconds".into(), json!(LEASE_SECS));
            *server.lease.lock().unwrap_or_else(|e| e.into_inner()) = Some(spec);
            *server
                .holder_renewed
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn handle(
    State(server): State<Arc<Server>>,
    method: Method,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let path = uri.path();
    if path.starts_with(LEASES) {
        return lease(&server, &method, path, &body);
    }
    // The leader's writes: pod conditions and Events.
    if method == Method::PATCH && path.ends_with("/status") {
        server.writes.fetch_add(1, Ordering::Relaxed);
        let name = path.rsplit('/').nth(1).unwrap_or("pod");
        let pod = json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": name } });
        return json_response(StatusCode::OK, serde_json::to_vec(&pod).expect("serialise"));
    }
    if method == Method::POST && path.ends_with("/events") {
        server.writes.fetch_add(1, Ordering::Relaxed);
        return json_response(StatusCode::CREATED, body.to_vec());
    }
    let namespaces;
    let (kind, items) = match path {
        "/api/v1/namespaces" => {
            let every = server.every_namespace_opted_in.load(Ordering::Relaxed);
            namespaces = (
                ("v1", "NamespaceList"),
                &server.namespaces[usize::from(every)],
            );
            (&namespaces.0, namespaces.1)
        }
        _ => match server.lists.get(path) {
            Some((kind, items)) => (kind, items),
            None => return not_found(),
        },
    };
    if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
        // A watch that sees no change and ends at its timeout, or (pods) with 410 Gone.
        let secs = q
            .get("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .unwrap_or(290u64)
            .min(600);
        let pods = path == PODS;
        let generation = server.expire_pods.load(Ordering::Relaxed);
        let server = server.clone();
        let stream = futures::stream::once(async move {
            let end = Instant::now() + Duration::from_secs(secs);
            while Instant::now() < end {
                if pods && server.expire_pods.load(Ordering::Relaxed) != generation {
                    let gone = r#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","status":"Failure","message":"too old resource version","reason":"Expired","code":410}}"#;
                    return Ok::<Bytes, std::io::Error>(Bytes::from(format!("{gone}\n")));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(Bytes::new())
        });
        return (
            [(header::CONTENT_TYPE, "application/json")],
            Body::from_stream(stream),
        )
            .into_response();
    }
    server
        .limits
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(path.to_string())
        .or_default()
        .insert(q.get("limit").cloned().unwrap_or_else(|| "-".into()));
    let limit = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let page = q
        .get("continue")
        .and_then(|c| c.strip_prefix("page-"))
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    let items: &[String] = if server.empty.load(Ordering::Relaxed) {
        &[]
    } else {
        items
    };
    let start = page.saturating_mul(limit).min(items.len());
    let end = start.saturating_add(limit).min(items.len());
    let next = (end < items.len()).then_some(page + 1);
    if path == PODS && page == 0 {
        server.pod_list_starts.fetch_add(1, Ordering::Relaxed);
    }
    let body = list_body(*kind, &items[start..end], next);
    if next.is_none() && path == PODS {
        server.pod_lists.fetch_add(1, Ordering::Relaxed);
        *server
            .last_pod_list
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }
    json_response(StatusCode::OK, body)
}

pub fn status(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// (anonymous, file-backed) resident KiB from /proc/PID/smaps_rollup: the heap and stacks,
/// and the binary's own pages.
fn rollup(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let anon = field("Anonymous:");
    (anon, field("Rss:").saturating_sub(anon))
}

/// Resets VmHWM to the current RSS (`clear_refs` 5); whether it worked.
fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok() && {
        let (r, h) = status(pid);
        h <= r + 1024
    }
}

/// GET `path` on the admin port: (HTTP status line ok, body).
async fn admin_get(admin: std::net::SocketAddr, path: &str) -> Option<(bool, String)> {
    let mut conn = tokio::net::TcpStream::connect(admin).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    conn.write_all(req.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    Some((text.starts_with("HTTP/1.1 200"), text))
}

async fn ready(admin: std::net::SocketAddr) -> bool {
    admin_get(admin, "/readyz").await.is_some_and(|(ok, _)| ok)
}

/// `readygate_cached_pods` from /metrics.
async fn cached_pods(admin: std::net::SocketAddr) -> Option<u64> {
    let (_, text) = admin_get(admin, "/metrics").await?;
    text.lines()
        .find_map(|l| l.strip_prefix("readygate_cached_pods "))
        .and_then(|v| v.trim().parse().ok())
}

fn binary() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    [
        std::env::var_os("READYGATE_BIN").map(PathBuf::from),
        Some(target.join("release/readygate")),
        Some(target.join("debug/readygate")),
    ]
    .into_iter()
    .flatten()
    .find(|p| p.is_file())
}

/// Newest modification time under `src/`, to tell a stale binary.
fn newest_source() -> Option<SystemTime> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut newest = None;
    let mut dirs = vec![dir];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).ok()?.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                dirs.push(e.path());
            } else if let Ok(t) = m.modified() {
                newest = newest.max(Some(t));
            }
        }
    }
    newest
}

/// One readygate process.
struct Replica {
    child: Child,
    admin: std::net::SocketAddr,
    started: Instant,
}

impl Replica {
    fn start(bin: &Path, work: &Path, kubeconfig: &Path, controller: Option<&str>) -> Self {
        let admin = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        // ELBv2 at a closed port: the leader has nothing to ask it here (every gate is
        // True), and its calls would fail and back off.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let log = std::fs::File::create(
            work.join(format!("readygate-{}.log", controller.unwrap_or("webhook"))),
        )
        .expect("log");
        let certs = work.join("certs");
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .args([
                "--webhook-addr",
                "127.0.0.1:0",
                "--admin-addr",
                &admin.to_string(),
            ])
            .args([
                "--log-format",
                "text",
                "--lease-namespace",
                "readygate-system",
            ])
            .arg("--tls-cert")
            .arg(certs.join("tls.crt"))
            .arg("--tls-key")
            .arg(certs.join("tls.key"))
            .env("KUBECONFIG", kubeconfig)
            .env(
                "AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2",
                format!("http://{closed}"),
            )
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "bench")
            .env("AWS_SECRET_ACCESS_KEY", "bench")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("MALLOC_ARENA_MAX")
            .stdout(Stdio::null())
            .stderr(log);
        match controller {
            Some(identity) => cmd.args(["--controller", "true", "--identity", identity]),
            None => cmd.args(["--controller", "false"]),
        };
        let child = cmd.spawn().expect("start readygate serve");
        Self {
            child,
            admin,
            started: Instant::now(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (at most 180 s) for `/readyz`; the time it took.
    async fn ready(&mut self) -> Option<Duration> {
        while self.started.elapsed() < Duration::from_secs(180) {
            if let Ok(Some(exit)) = self.child.try_wait() {
                println!("  readygate serve exited early ({exit})");
                return None;
            }
            if ready(self.admin).await {
                return Some(self.started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        None
    }

    /// Stops the process by its PID.
    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn verdict(kib: u64, peak: u64, target_mib: u64) -> &'static str {
    match (kib <= target_mib * 1024, peak <= target_mib * 1024) {
        (true, true) => "met (peak too)",
        (true, false) => "met (peak above)",
        (false, _) => "NOT met",
    }
}

/// Which API server the real binary runs against (`--api`).
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Api {
    /// The bench's in-process server: readygate's own cost, apart from the API server's speed.
    Fake,
    /// The rig's kube-apiserver and etcd with the objects loaded into them.
    Real,
    /// Both, one after the other in the same run, side by side.
    Both,
}

/// The API server of one measurement.
enum Backend {
    Fake(Arc<Server>),
    Real(Box<Cluster>),
}

impl Backend {
    async fn pod_list_starts(&mut self) -> usize {
        match self {
            Backend::Fake(s) => s.pod_list_starts.load(Ordering::Relaxed),
            Backend::Real(c) => c.pod_list_starts().await,
        }
    }

    async fn pod_lists(&mut self) -> usize {
        match self {
            Backend::Fake(s) => s.pod_lists.load(Ordering::Relaxed),
            Backend::Real(c) => c.pod_lists().await,
        }
    }

    /// Waits (at most `within`) until a complete pod list has been served after `lists` of
    /// them; when the last page went out.
    async fn pods_listed(&mut self, lists: usize, within: Duration) -> Option<Instant> {
        match self {
            Backend::Fake(server) => {
                let start = Instant::now();
                while start.elapsed() < within {
                    if server.pod_lists.load(Ordering::Relaxed) > lists {
                        return *server
                            .last_pod_list
                            .lock()
                            .unwrap_or_else(|e| e.into_inner());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                None
            }
            Backend::Real(c) => c.pods_listed(lists, within).await,
        }
    }

    /// The bench's holder takes the lease now and renews it every 5 s.
    async fn take_lease(&mut self) {
        match self {
            Backend::Fake(server) => {
                *server
                    .holder_renewed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = None;
                server.holder_alive.store(true, Ordering::Relaxed);
                while server
                    .holder_renewed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_none()
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            Backend::Real(c) => c.take_lease().await,
        }
    }

    /// The holder stops renewing; when it last did.
    fn release_lease(&mut self) -> Option<Instant> {
        match self {
            Backend::Fake(server) => {
                server.holder_alive.store(false, Ordering::Relaxed);
                *server
                    .holder_renewed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
            }
            Backend::Real(c) => c.release_lease(),
        }
    }

    /// Who took the lease after `after`, and when.
    async fn acquired(&mut self, after: Instant) -> Option<(String, Instant)> {
        match self {
            Backend::Fake(server) => server
                .acquired
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .filter(|(_, t)| *t >= after),
            Backend::Real(c) => c.acquired(after).await,
        }
    }

    async fn clear_lease(&mut self) {
        match self {
            Backend::Fake(server) => {
                server.holder_alive.store(false, Ordering::Relaxed);
                *server.lease.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
            Backend::Real(c) => c.clear_lease().await,
        }
    }

    /// Makes the leader list the pods again.
    async fn relist(&mut self) {
        match self {
            Backend::Fake(server) => {
                server.expire_pods.fetch_add(1, Ordering::Relaxed);
            }
            Backend::Real(c) => c.relist().await,
        }
    }

    fn relist_how(&self) -> &'static str {
        match self {
            Backend::Fake(_) => "leader, pod re-list after 410 Gone",
            Backend::Real(_) => "leader, pod re-list (a namespace opts in)",
        }
    }

    async fn opt_in_all(&mut self, on: bool) {
        match self {
            Backend::Fake(server) => server.every_namespace_opted_in.store(on, Ordering::Relaxed),
            Backend::Real(c) => c.opt_in_all(on).await,
        }
    }

    async fn writes(&mut self) -> usize {
        match self {
            Backend::Fake(server) => server.writes.load(Ordering::Relaxed),
            Backend::Real(c) => c.writes().await,
        }
    }

    /// readygate's Lease writes, where the API server's audit log tells them.
    async fn lease_writes(&mut self) -> Option<usize> {
        match self {
            Backend::Fake(_) => None,
            Backend::Real(c) => Some(c.lease_writes().await),
        }
    }

    async fn limits(&mut self) -> BTreeMap<String, BTreeSet<String>> {
        match self {
            Backend::Fake(server) => server
                .limits
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            Backend::Real(c) => c.limits().await,
        }
    }
}

/// One takeover: seconds from the lease's expiry to the lease taken, and to the new leader's
/// last pod-list page.
#[derive(Clone, Copy)]
struct Takeover {
    taken: f64,
    listed: f64,
}

/// What one measurement found (KiB, seconds).
#[derive(Default)]
pub struct Figures {
    alone: (u64, u64),
    webhook: (u64, u64),
    webhook_lists: usize,
    follower: (u64, u64),
    follower_lists: usize,
    takeovers: Vec<Takeover>,
    leader: (u64, Option<u64>),
    leader_pods: Option<u64>,
    relist_seconds: Option<f64>,
    relist: (u64, Option<u64>),
    baseline: (u64, u64),
    baseline_list_seconds: Option<f64>,
    baseline_pods: Option<u64>,
}

fn median(v: &mut [f64]) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    (!v.is_empty()).then(|| {
        let m = v.len() / 2;
        if v.len() % 2 == 1 {
            v[m]
        } else {
            (v[m - 1] + v[m]) / 2.0
        }
    })
}

impl Figures {
    fn takeover(&self) -> Option<f64> {
        median(&mut self.takeovers.iter().map(|t| t.listed).collect::<Vec<_>>())
    }
    fn taken(&self) -> Option<f64> {
        median(&mut self.takeovers.iter().map(|t| t.taken).collect::<Vec<_>>())
    }
}

/// Seconds from `a` to `b`, negative when `b` came first.
fn signed_secs(a: Instant, b: Instant) -> f64 {
    match b.checked_duration_since(a) {
        Some(d) => d.as_secs_f64(),
        None => -a.duration_since(b).as_secs_f64(),
    }
}

fn secs(a: Instant, b: Instant) -> f64 {
    b.saturating_duration_since(a).as_secs_f64()
}

/// The readygate binary and what it needs to start.
struct Setup {
    bin: PathBuf,
    work: tempfile::TempDir,
}

impl Setup {
    fn new() -> Option<Self> {
        let Some(bin) = binary() else {
            println!(
                "real binary: skipped (no target/release/readygate nor target/debug/readygate; run `cargo build --release --bin readygate` first)"
            );
            return None;
        };
        let work = tempfile::tempdir().expect("temp dir");
        let ok = Command::new(&bin)
            .args(["certs", "--out"])
            .arg(work.path().join("certs"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            println!("real binary: skipped (`{} certs` failed)", bin.display());
            return None;
        }
        Some(Self { bin, work })
    }

    fn stale(&self) -> &'static str {
        let built = std::fs::metadata(&self.bin).and_then(|m| m.modified()).ok();
        match (built, newest_source()) {
            (Some(b), Some(s)) if b < s => " (OLDER than src/: rebuild it)",
            _ => "",
        }
    }

    fn start(&self, kubeconfig: &Path, controller: Option<&str>) -> Replica {
        Replica::start(&self.bin, self.work.path(), kubeconfig, controller)
    }
}

/// The process with no objects to cache (empty lists, or a cluster not loaded yet).
async fn alone(setup: &Setup, kubeconfig: &Path) -> (u64, u64) {
    let mut r = setup.start(kubeconfig, None);
    let synced = r.ready().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let alone = status(r.pid());
    r.stop();
    println!(
        "  {:<44} ready in {:>5}: RSS {:>6.1} MiB, peak {:>6.1} MiB",
        "webhook-only, no objects",
        synced.map_or("never".into(), |t| format!("{:.1} s", t.as_secs_f64())),
        mib(alone.0),
        mib(alone.1)
    );
    alone
}

/// Webhook-only replica, follower, takeovers, leader, re-list and baseline against `api`.
async fn sequence(
    api: &mut Backend,
    setup: &Setup,
    kubeconfig: &Path,
    shape: &Shape,
    takeovers: usize,
) -> Figures {
    let mut f = Figures::default();

    // A webhook-only replica.
    let before = api.pod_list_starts().await;
    let mut r = setup.start(kubeconfig, None);
    let synced = r.ready().await;
    let at_ready = status(r.pid());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let webhook = status(r.pid());
    let webhook_split = rollup(r.pid());
    f.webhook = (webhook.0, webhook.1.max(at_ready.1));
    let webhook_pods = cached_pods(r.admin).await;
    r.stop();
    f.webhook_lists = api.pod_list_starts().await - before;
    println!(
        "  {:<44} ready in {:>5}: RSS {:>6.1} MiB (5 s later {:>6.1} MiB), peak {:>6.1} MiB; pod lists {}, cached pods {}; target <= 48 MiB: {}",
        "webhook-only replica (--controller false)",
        synced.map_or("never".into(), |t| format!("{:.1} s", t.as_secs_f64())),
        mib(at_ready.0),
        mib(webhook.0),
        mib(f.webhook.1),
        f.webhook_lists,
        webhook_pods.map_or("?".into(), |n| n.to_string()),
        verdict(webhook.0.max(at_ready.0), f.webhook.1, 48)
    );
    println!(
        "  {:<44} of which anonymous (heap, stacks) {:.1} MiB, file-backed (the binary's pages) {:.1} MiB",
        "",
        mib(webhook_split.0),
        mib(webhook_split.1)
    );

    // Takeovers: a follower (another replica holds the lease) takes over once the holder
    // stops renewing and the lease has expired. The first follower's and leader's memory is
    // measured too.
    let mut leader: Option<Replica> = None;
    for round in 0..takeovers.max(1) {
        if let Some(r) = leader.take() {
            r.stop();
        }
        api.take_lease().await;
        let identity = format!("bench-follower-{round}");
        let before = api.pod_list_starts().await;
        let mut r = setup.start(kubeconfig, Some(&identity));
        let synced = r.ready().await;
        if round == 0 {
            tokio::time::sleep(Duration::from_secs(10)).await;
            f.follower = status(r.pid());
            let follower_pods = cached_pods(r.admin).await;
            f.follower_lists = api.pod_list_starts().await - before;
            println!(
                "  {:<44} ready in {:>5}: RSS {:>6.1} MiB 10 s later, peak {:>6.1} MiB; pod lists {}, cached pods {}",
                "follower (--controller true, lease held)",
                synced.map_or("never".into(), |t| format!("{:.1} s", t.as_secs_f64())),
                mib(f.follower.0),
                mib(f.follower.1),
                f.follower_lists,
                follower_pods.map_or("?".into(), |n| n.to_string()),
            );
        } else {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        // The holder goes away: it stops renewing, and the lease is free once it expires.
        let reset = reset_peak(r.pid());
        let renewed = api.release_lease().expect("the holder renewed");
        let free = renewed + Duration::from_secs(LEASE_SECS);
        let lists = api.pod_lists().await;
        let listed = api
            .pods_listed(lists, Duration::from_secs(LEASE_SECS + 180))
            .await;
        let acquired = api
            .acquired(renewed)
            .await
            .filter(|(who, _)| *who == identity);
        match (acquired, listed) {
            (Some((_, taken)), Some(listed)) => {
                // Signed: a lease taken before the bench's own reckoning of its expiry shows
                // as negative rather than 0.
                let t = Takeover {
                    taken: signed_secs(free, taken),
                    listed: signed_secs(free, listed),
                };
                f.takeovers.push(t);
                println!(
                    "  takeover {} at {} pods: lease free (expired) -> all pods listed by the new leader {:.1} s (lease taken {:.1} s after it was free, pods listed {:.1} s after that)",
                    round + 1,
                    shape.pods,
                    t.listed,
                    t.taken,
                    secs(taken, listed)
                );
            }
            (acquired, listed) => println!(
                "  takeover {}: not seen within {} s (lease taken: {}, pods listed: {})",
                round + 1,
                LEASE_SECS + 180,
                acquired.is_some(),
                listed.is_some()
            ),
        }
        if round == 0 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let l = status(r.pid());
            f.leader = (l.0, reset.then_some(l.1));
            f.leader_pods = cached_pods(r.admin).await;
            println!(
                "  {:<44} RSS {:>6.1} MiB 5 s after the list, peak during the takeover {}; cached pods {}; target <= 128 MiB: {}",
                "leader (the follower, after its takeover)",
                mib(l.0),
                if reset {
                    format!("{:>6.1} MiB", mib(l.1))
                } else {
                    "n/a (VmHWM not reset)".into()
                },
                f.leader_pods.map_or("?".into(), |n| n.to_string()),
                verdict(l.0, if reset { l.1 } else { 0 }, 128)
            );
            // A re-list on the leader.
            let reset = reset_peak(r.pid());
            let lists = api.pod_lists().await;
            api.relist().await;
            let start = Instant::now();
            let relisted = api.pods_listed(lists, Duration::from_secs(180)).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
            let l = status(r.pid());
            f.relist = (l.0, reset.then_some(l.1));
            f.relist_seconds = relisted.map(|t| secs(start, t));
            println!(
                "  {:<44} {}: RSS {:>6.1} MiB 5 s later, peak during the re-list {}; target <= 128 MiB: {}",
                api.relist_how(),
                f.relist_seconds
                    .map_or("not seen within 180 s".into(), |t| format!(
                        "listed in {t:.1} s"
                    )),
                mib(l.0),
                if reset {
                    format!("{:>6.1} MiB", mib(l.1))
                } else {
                    "n/a (VmHWM not reset)".into()
                },
                verdict(l.0, if reset { l.1 } else { 0 }, 128)
            );
        }
        leader = Some(r);
    }
    if let Some(r) = leader.take() {
        r.stop();
    }
    if f.takeovers.len() > 1 {
        let all: Vec<String> = f
            .takeovers
            .iter()
            .map(|t| format!("{:.1}", t.listed))
            .collect();
        println!(
            "  takeovers: median {:.1} s from the lease's expiry to all pods listed ({} s); lease taken after a median {:.1} s",
            f.takeover().unwrap_or(0.0),
            all.join(", "),
            f.taken().unwrap_or(0.0)
        );
    }

    // Baseline: the same objects with every namespace opted in, so the leader keeps every
    // pod, as every replica (webhook-only and followers too) did before.
    api.clear_lease().await;
    api.opt_in_all(true).await;
    let lists = api.pod_lists().await;
    let mut r = setup.start(kubeconfig, Some("bench-baseline"));
    let synced = r.ready().await;
    let start = Instant::now();
    let listed = api.pods_listed(lists, Duration::from_secs(180)).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    f.baseline = status(r.pid());
    f.baseline_pods = cached_pods(r.admin).await;
    f.baseline_list_seconds = listed.map(|t| secs(start, t));
    r.stop();
    api.opt_in_all(false).await;
    println!(
        "  {:<44} ready in {:>5}, pods listed {}: RSS {:>6.1} MiB 5 s later, peak {:>6.1} MiB; cached pods {}",
        "baseline: every pod kept (all opted in)",
        synced.map_or("never".into(), |t| format!("{:.1} s", t.as_secs_f64())),
        f.baseline_list_seconds
            .map_or("never".into(), |t| format!("{t:.1} s later")),
        mib(f.baseline.0),
        mib(f.baseline.1),
        f.baseline_pods.map_or("?".into(), |n| n.to_string()),
    );
    let ratio = |a: u64| a as f64 / f.baseline.0.max(1) as f64;
    println!(
        "  RSS ratios against that baseline (same run): leader {:.2}, follower {:.2}, webhook-only {:.2}; pods held: leader {} of {}",
        ratio(f.leader.0),
        ratio(f.follower.0),
        ratio(f.webhook.0),
        f.leader_pods.map_or("?".into(), |n| n.to_string()),
        shape.pods
    );
    println!(
        "  targets: leader <= 128 MiB {}; webhook-only <= 48 MiB {}; no pod list by the webhook-only replica or the follower: {}; takeover {}",
        verdict(f.leader.0, 0, 128),
        verdict(f.webhook.0, 0, 48),
        if f.webhook_lists == 0 && f.follower_lists == 0 {
            "met"
        } else {
            "NOT met"
        },
        f.takeover()
            .map_or("not measured".into(), |t| format!("{t:.1} s (median)"))
    );
    println!("  writes (status PATCHes, Events): {}", api.writes().await);
    if let Some(n) = api.lease_writes().await {
        println!("  readygate's writes of the Lease (audit log): {n}");
    }
    let asked: Vec<String> = api
        .limits()
        .await
        .iter()
        .map(|(path, l)| format!("{path} {}", l.iter().cloned().collect::<Vec<_>>().join(",")))
        .collect();
    println!("  list `limit` the binary asked for: {}", asked.join("; "));
    f
}

/// The fake server's lists and namespaces for `shape`.
fn fake_server(dir: &Path, shape: &Shape) -> Arc<Server> {
    let mut lists: Lists = HashMap::new();
    for kind in KINDS {
        let text = std::fs::read_to_string(dir.join(kind.file())).expect("read objects");
        let path = match kind {
            Kind::Binding => "/apis/elbv2.k8s.aws/v1beta1/targetgroupbindings",
            Kind::Service => "/api/v1/services",
            Kind::Pod => PODS,
        };
        lists.insert(
            path,
            (kind.list_kind(), text.lines().map(str::to_string).collect()),
        );
    }
    let namespace = |name: &str, opted_in: bool| {
        let opt_in = if opted_in {
            r#","elbv2.k8s.aws/pod-readiness-gate-inject":"enabled""#
        } else {
            ""
        };
        format!(
            r#"{{"apiVersion":"v1","kind":"Namespace","metadata":{{"name":"{name}","uid":"ns-{name}","resourceVersion":"1","labels":{{"kubernetes.io/metadata.name":"{name}"{opt_in}}}}},"spec":{{"finalizers":["kubernetes"]}},"status":{{"phase":"Active"}}}}"#
        )
    };
    let namespaces = [false, true].map(|every| {
        (0..shape.namespaces)
            .flat_map(|i| {
                [
                    namespace(&format!("team-{i:02}"), true),
                    namespace(&format!("jobs-{i:02}"), every),
                ]
            })
            .collect()
    });
    Arc::new(Server {
        lists,
        namespaces,
        every_namespace_opted_in: AtomicBool::new(false),
        empty: AtomicBool::new(false),
        limits: Mutex::default(),
        expire_pods: AtomicUsize::new(0),
        pod_list_starts: AtomicUsize::new(0),
        pod_lists: AtomicUsize::new(0),
        last_pod_list: Mutex::default(),
        lease: Mutex::default(),
        holder_alive: AtomicBool::new(false),
        holder_renewed: Mutex::default(),
        acquired: Mutex::default(),
        writes: AtomicUsize::new(0),
    })
}

/// Against the bench's own server: readygate alone.
async fn fake(dir: &Path, shape: &Shape, setup: &Setup, takeovers: usize) -> Figures {
    let server = fake_server(dir, shape);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new()
        .fallback(handle)
        .with_state(server.clone());
    let serving = tokio::spawn(async move { axum::serve(listener, app).await });
    let holding = tokio::spawn(hold(server.clone()));
    let kubeconfig = setup.work.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: bench\n  cluster:\n    server: http://{addr}\ncontexts:\n- name: bench\n  context:\n    cluster: bench\n    user: bench\ncurrent-context: bench\nusers:\n- name: bench\n  user: {{}}\n"
        ),
    )
    .expect("kubeconfig");
    println!(
        "real binary {}{} against the bench's own API server on 127.0.0.1 (lists, watches, the Lease, status PATCHes and Events)",
        setup.bin.display(),
        setup.stale()
    );
    server.empty.store(true, Ordering::Relaxed);
    let alone = alone(setup, &kubeconfig).await;
    server.empty.store(false, Ordering::Relaxed);
    let mut api = Backend::Fake(server);
    let mut f = sequence(&mut api, setup, &kubeconfig, shape, takeovers).await;
    f.alone = alone;
    serving.abort();
    holding.abort();
    f
}

/// Against the rig's kube-apiserver and etcd, the objects loaded into them first.
async fn real(
    dir: &Path,
    shape: &Shape,
    setup: &Setup,
    takeovers: usize,
    status_of: StatusOf,
) -> Option<(Figures, RealExtra)> {
    let started = Instant::now();
    let plane_dir = setup.work.path().join("k8s");
    let bytes: u64 = KINDS
        .iter()
        .map(|k| std::fs::metadata(dir.join(k.file())).map_or(0, |m| m.len()))
        .sum();
    let mut cluster = match Cluster::start(&plane_dir, shape, bytes).await {
        Ok(c) => c,
        Err(e) => {
            println!("real API server: skipped ({e:#})");
            return None;
        }
    };
    let mut x = RealExtra {
        version: format!(
            "kube-apiserver {} (etcd {})",
            cluster.plane.version, cluster.plane.etcd_version
        ),
        empty: (cluster.apiserver(), cluster.etcd()),
        ..RealExtra::default()
    };
    println!(
        "real binary {}{} against the rig's {} (no controller-manager, no scheduler; GOMEMLIMIT {}; up in {:.1} s; logs and audit log in {})",
        setup.bin.display(),
        setup.stale(),
        x.version,
        std::env::var("GOMEMLIMIT").unwrap_or_else(|_| "unset".into()),
        started.elapsed().as_secs_f64(),
        cluster.plane.dir.display()
    );
    let kubeconfig = cluster.kubeconfig.clone();
    let alone = alone(setup, &kubeconfig).await;
    let start = Instant::now();
    for l in cluster.load(dir, shape, status_of).await {
        println!("  load: {}", l.line());
        x.failed += l.failed;
        x.loaded.push(l);
    }
    x.load_seconds = start.elapsed().as_secs_f64();
    x.loaded_memory = (cluster.apiserver(), cluster.etcd());
    println!(
        "  load: {:.1} s in all ({} requests in flight); kube-apiserver RSS {:.1} MiB (peak {:.1}), etcd RSS {:.1} MiB (peak {:.1})",
        x.load_seconds,
        super::apiserver::CONCURRENCY,
        mib(x.loaded_memory.0.0),
        mib(x.loaded_memory.0.1),
        mib(x.loaded_memory.1.0),
        mib(x.loaded_memory.1.1)
    );
    if x.failed > 0 {
        println!(
            "  LOAD INCOMPLETE: {} objects failed to load (the first errors are above); the figures below are of those that did",
            x.failed
        );
    }
    x.etcd_db_bytes = cluster.etcd_db_bytes();
    x.etcd_quota_bytes = cluster.etcd_quota_bytes;
    x.generated_pod_bytes = std::fs::metadata(dir.join(Kind::Pod.file())).map_or(0, |m| m.len())
        / shape.pods.max(1) as u64;
    x.served = cluster.served_pods().await;
    if let Some(s) = &x.served {
        println!("  served: {}", served_line(s));
    }
    println!(
        "  etcd's database after the load: {:.0} MiB (quota {:.0} MiB)",
        mib_b(x.etcd_db_bytes),
        mib_b(cluster.etcd_quota_bytes)
    );
    // readygate's requests are counted from here on: the load's are not read.
    cluster.skip_audit();
    let mut api = Backend::Real(Box::new(cluster));
    // Only the measurements hold the rig's lock (the load may take many minutes).
    let lock = rig::serial::exclusive().await;
    let mut f = sequence(&mut api, setup, &kubeconfig, shape, takeovers).await;
    drop(lock);
    f.alone = alone;
    let Backend::Real(cluster) = api else {
        unreachable!()
    };
    x.end = (cluster.apiserver(), cluster.etcd());
    let spans = cluster.list_pages(0);
    for (i, s) in spans.iter().enumerate() {
        let mut p = s.page_seconds.clone();
        let total = s
            .last_page_done
            .duration_since(s.first_page_received)
            .map_or(0.0, |d| d.as_secs_f64());
        let slowest = p.iter().copied().fold(0.0, f64::max);
        println!(
            "  pod list {} by readygate: {} pages in {:.1} s, page median {:.0} ms, slowest {:.0} ms",
            i + 1,
            s.pages,
            total,
            median(&mut p).unwrap_or(0.0) * 1000.0,
            slowest * 1000.0
        );
    }
    x.lists = spans;
    println!(
        "  at the end: kube-apiserver RSS {:.1} MiB (peak {:.1}), etcd RSS {:.1} MiB (peak {:.1})",
        mib(x.end.0.0),
        mib(x.end.0.1),
        mib(x.end.1.0),
        mib(x.end.1.1)
    );
    cluster.plane.stop();
    Some((f, x))
}

/// What only the real API server has: its version, the load, its and etcd's memory, readygate's
/// pod lists as its audit log shows them.
#[derive(Default)]
struct RealExtra {
    version: String,
    loaded: Vec<super::apiserver::Loaded>,
    failed: usize,
    load_seconds: f64,
    /// (kube-apiserver, etcd) (VmRSS, VmHWM) before the load, after it, at the end.
    empty: (Memory, Memory),
    loaded_memory: (Memory, Memory),
    end: (Memory, Memory),
    lists: Vec<super::apiserver::ListSpan>,
    etcd_db_bytes: u64,
    etcd_quota_bytes: u64,
    generated_pod_bytes: u64,
    served: Option<super::apiserver::Served>,
}

fn served_line(s: &super::apiserver::Served) -> String {
    format!(
        "a page of {} pods as kube-apiserver serves them: {} B of JSON per pod, of which managedFields {} B ({:.1} entries per pod: {})",
        s.pods,
        s.bytes_per_pod,
        s.managed_fields_bytes_per_pod,
        s.managed_fields_per_pod,
        s.managers.join(", ")
    )
}

fn real_summary(x: &RealExtra) {
    println!("\nthe real API server ({}):", x.version);
    for l in &x.loaded {
        println!("  load: {}", l.line());
    }
    println!(
        "  load: {:.1} s in all, {} failed requests",
        x.load_seconds, x.failed
    );
    for (what, (api, etcd)) in [
        ("before the load", x.empty),
        ("after the load", x.loaded_memory),
        ("at the end", x.end),
    ] {
        println!(
            "  {what:<16} kube-apiserver RSS {:>7.1} MiB (peak {:>7.1}), etcd RSS {:>7.1} MiB (peak {:>7.1})",
            mib(api.0),
            mib(api.1),
            mib(etcd.0),
            mib(etcd.1)
        );
    }
    let pages: Vec<String> = x.lists.iter().map(|s| s.pages.to_string()).collect();
    println!("  pages of readygate's pod lists: {}", pages.join(", "));
    if let Some(s) = &x.served {
        println!(
            "  {} (the fake server serves the generated pods: {} B each, managedFields of 2-3 managers included)",
            served_line(s),
            x.generated_pod_bytes
        );
    }
    println!(
        "  etcd's database after the load {:.0} MiB of its {:.0} MiB quota",
        mib_b(x.etcd_db_bytes),
        mib_b(x.etcd_quota_bytes)
    );
}

fn side_by_side(fake: &Figures, real: &Figures) {
    println!(
        "\nside by side, same run (fake: the bench's own API server; real: kube-apiserver + etcd):"
    );
    println!(
        "  {:<52} {:>10} {:>10} {:>11}",
        "", "fake", "real", "real/fake"
    );
    let row = |what: &str, a: Option<f64>, b: Option<f64>, unit: &str| {
        let cell = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}{unit}"));
        let ratio = match (a, b) {
            (Some(a), Some(b)) if a > 0.0 => format!("{:.2}", b / a),
            _ => "-".into(),
        };
        println!("  {what:<52} {:>10} {:>10} {ratio:>11}", cell(a), cell(b));
    };
    let m = |k: u64| Some(mib(k));
    row(
        "webhook-only, no objects: RSS (MiB)",
        m(fake.alone.0),
        m(real.alone.0),
        "",
    );
    row(
        "webhook-only: RSS (MiB)",
        m(fake.webhook.0),
        m(real.webhook.0),
        "",
    );
    row(
        "webhook-only: peak (MiB)",
        m(fake.webhook.1),
        m(real.webhook.1),
        "",
    );
    row(
        "follower: RSS (MiB)",
        m(fake.follower.0),
        m(real.follower.0),
        "",
    );
    row(
        "takeover: expiry -> lease taken, median (s)",
        fake.taken(),
        real.taken(),
        "",
    );
    row(
        "takeover: expiry -> all pods listed, median (s)",
        fake.takeover(),
        real.takeover(),
        "",
    );
    row("leader: RSS (MiB)", m(fake.leader.0), m(real.leader.0), "");
    row(
        "leader: peak during the takeover (MiB)",
        fake.leader.1.and_then(m),
        real.leader.1.and_then(m),
        "",
    );
    row(
        "leader: re-list (s)",
        fake.relist_seconds,
        real.relist_seconds,
        "",
    );
    row(
        "leader: peak during the re-list (MiB)",
        fake.relist.1.and_then(m),
        real.relist.1.and_then(m),
        "",
    );
    row(
        "baseline (every pod kept): RSS (MiB)",
        m(fake.baseline.0),
        m(real.baseline.0),
        "",
    );
    row(
        "baseline: pods listed after ready (s)",
        fake.baseline_list_seconds,
        real.baseline_list_seconds,
        "",
    );
    let pods = |f: &Figures| {
        format!(
            "{}/{}",
            f.leader_pods.map_or("?".into(), |n| n.to_string()),
            f.baseline_pods.map_or("?".into(), |n| n.to_string())
        )
    };
    println!(
        "  {:<52} {:>10} {:>10}",
        "cached pods: leader/baseline",
        pods(fake),
        pods(real)
    );
    println!(
        "  {:<52} {:>10} {:>10}",
        "pod lists by the webhook-only replica, follower",
        format!("{}, {}", fake.webhook_lists, fake.follower_lists),
        format!("{}, {}", real.webhook_lists, real.follower_lists)
    );
}

/// The real binary's measurements against `api`, each under the rig's rollouts lock (for the
/// real API server, once its objects are loaded: the load is not timed against anything).
pub fn measure(dir: &Path, shape: &Shape, api: Api, takeovers: usize, status_of: StatusOf) {
    println!();
    let Some(setup) = Setup::new() else {
        return;
    };
    let kept = (0..shape.pods)
        .filter(|&p| shape.is_gated(p) && shape.has_binding(shape.service_of_pod(p)))
        .count();
    println!(
        "real binary: {} pods, of which {kept} carry a gate, in {} opted-in namespaces; the other {} in {} namespaces not opted in, without our gate",
        shape.pods,
        shape.namespaces,
        shape.pods - kept,
        shape.namespaces
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let fake = match api {
            Api::Fake | Api::Both => {
                let _lock = rig::serial::exclusive().await;
                Some(fake(dir, shape, &setup, takeovers).await)
            }
            Api::Real => None,
        };
        let real = match api {
            Api::Real | Api::Both => real(dir, shape, &setup, takeovers, status_of).await,
            Api::Fake => None,
        };
        if let (Some(fake), Some((real, _))) = (&fake, &real) {
            side_by_side(fake, real);
        }
        if let Some((_, x)) = &real {
            real_summary(x);
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
}
