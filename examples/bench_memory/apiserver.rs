//! The real API server for the real-binary measurements: the rig's kube-apiserver and etcd
//! (no controller-manager or scheduler: nothing may schedule, evict or garbage-collect the
//! bench's pods, which are bound to Nodes that do not exist), the bench's objects loaded into
//! them, the Lease held by the bench, and what readygate asked for read back from the API
//! server's audit log.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::http::{Method, Request, header};
use futures::StreamExt;
use rig::cluster::{ControlPlane, ControlPlaneOpts};
use serde_json::{Value, json};

use super::real::{HOLDER, LEASE_SECS};
use super::{Kind, Shape};

/// The user readygate's kubeconfig authenticates as (a client certificate in
/// `system:masters`): its requests are told apart from the bench's own in the audit log.
const READYGATE_USER: &str = "readygate-bench";
const LEASE_NS: &str = "readygate-system";
const LEASE_NAME: &str = "readygate";
/// A namespace with no pods: opting it in makes the leader list the pods again.
const RELIST_NS: &str = "bench-relist";
/// A long load reports its progress every so many objects.
const PROGRESS_EVERY: usize = 10_000;
/// Requests in flight while loading.
pub const CONCURRENCY: usize = 32;
const OPT_IN: &str = "elbv2.k8s.aws/pod-readiness-gate-inject";

/// The pods whose status the load writes (the status subresource; a create drops `status`).
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum StatusOf {
    /// Every pod: the lists readygate decodes are as large as in the fake server's.
    All,
    /// The pods that carry readygate's gate (their IPs and conditions are what the leader keeps).
    Gated,
}

/// etcd's backend quota for objects of `bytes` of JSON in all: every pod is written twice
/// (create, then status) and the server adds managedFields, and freed pages are reused only
/// after the API server's compaction (every 5 minutes), so four times the objects' size, and
/// never below the rig's 8 GiB.
pub fn etcd_quota(bytes: u64) -> u64 {
    (bytes.saturating_mul(4)).max(8 << 30)
}

/// (VmRSS, VmHWM) in KiB of a component.
pub type Memory = (u64, u64);

pub struct Cluster {
    pub plane: ControlPlane,
    client: kube::Client,
    /// readygate's kubeconfig (user [`READYGATE_USER`]).
    pub kubeconfig: PathBuf,
    audit: AuditTail,
    holder: Arc<Holder>,
    /// The Lease's holder when it last changed, and when the bench's watch saw that.
    holder_seen: Arc<Mutex<Option<(String, Instant)>>>,
    namespaces: usize,
    relists: usize,
    /// etcd's `--quota-backend-bytes`.
    pub etcd_quota_bytes: u64,
}

/// The bench's stand-in for another replica: renews the Lease every 5 s while `alive`.
#[derive(Default)]
struct Holder {
    alive: AtomicBool,
    renewed: Mutex<Option<Instant>>,
}

fn micro_time(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn to_instant(anchor: (Instant, SystemTime), t: SystemTime) -> Instant {
    match t.duration_since(anchor.1) {
        Ok(d) => anchor.0 + d,
        Err(e) => anchor.0.checked_sub(e.duration()).unwrap_or(anchor.0),
    }
}

async fn hold(client: kube::Client, holder: Arc<Holder>) {
    let start = Instant::now();
    let path = format!("/apis/coordination.k8s.io/v1/namespaces/{LEASE_NS}/leases/{LEASE_NAME}");
    while start.elapsed() < Duration::from_secs(3600) {
        let due = holder
            .renewed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(5));
        if holder.alive.load(Ordering::Relaxed) && due {
            let at = Instant::now();
            let now = micro_time(jiff::Timestamp::now());
            let spec = json!({ "holderIdentity": HOLDER, "acquireTime": now, "renewTime": now,
                               "leaseDurationSeconds": LEASE_SECS });
            let patch = serde_json::to_vec(&json!({ "spec": spec })).expect("serialise");
            let ok = match send(&client, Method::PATCH, &path, MERGE, patch).await {
                Ok(()) => true,
                Err(e) if e.contains("(404)") => {
                    let lease = json!({ "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": { "name": LEASE_NAME, "namespace": LEASE_NS }, "spec": spec });
                    let create =
                        format!("/apis/coordination.k8s.io/v1/namespaces/{LEASE_NS}/leases");
                    let body = serde_json::to_vec(&lease).expect("serialise");
                    send(&client, Method::POST, &create, JSON, body)
                        .await
                        .is_ok()
                }
                Err(e) => {
                    eprintln!("  bench holder: renewing the lease failed: {e}");
                    false
                }
            };
            if ok {
                *holder.renewed.lock().unwrap_or_else(|e| e.into_inner()) = Some(at);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Watches the Lease (for at most an hour): each change of its holder, and when it was seen.
async fn watch_holder(client: kube::Client, seen: Arc<Mutex<Option<(String, Instant)>>>) {
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::runtime::WatchStreamExt;
    use kube::runtime::watcher::{self, Event};
    let api: kube::Api<Lease> = kube::Api::namespaced(client, LEASE_NS);
    let config = watcher::Config::default().fields(&format!("metadata.name={LEASE_NAME}"));
    let mut stream = std::pin::pin!(watcher::watcher(api, config).default_backoff());
    let mut last: Option<String> = None;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3600) {
        let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(60), stream.next()).await
        else {
            continue;
        };
        let lease = match event {
            Ok(Event::Apply(l) | Event::InitApply(l)) => l,
            Ok(Event::Delete(_)) => {
                last = None;
                continue;
            }
            _ => continue,
        };
        let holder = lease.spec.and_then(|s| s.holder_identity);
        if holder != last {
            if let Some(h) = &holder {
                *seen.lock().unwrap_or_else(|e| e.into_inner()) = Some((h.clone(), Instant::now()));
            }
            last = holder;
        }
    }
}

const JSON: &str = "application/json";
const MERGE: &str = "application/merge-patch+json";

/// One request, retried (at most 5 times) on a timeout, 429 or 5xx. A create that finds its
/// object there already (a retry of one that went through) is done.
async fn send(
    client: &kube::Client,
    method: Method,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Result<(), String> {
    let mut last = String::new();
    for attempt in 0..5u32 {
        let req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(header::CONTENT_TYPE, content_type)
            .body(body.clone())
            .map_err(|e| e.to_string())?;
        match tokio::time::timeout(Duration::from_secs(30), client.request_text(req)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(kube::Error::Api(s))) if s.code == 409 && method == Method::POST => {
                return Ok(());
            }
            Ok(Err(kube::Error::Api(s))) if s.code != 429 && s.code < 500 => {
                return Err(format!("{method} {path}: {} ({})", s.message, s.code));
            }
            Ok(Err(e)) => last = format!("{method} {path}: {e}"),
            Err(_) => last = format!("{method} {path}: no answer within 30 s"),
        }
        tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
    }
    Err(last)
}

/// What the API server would set itself: the bench's objects are written as a client writes
/// them. `status` goes separately (a create ignores it).
fn strip(mut v: Value) -> (Value, Option<Value>) {
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "managedFields",
            "generation",
            "selfLink",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            meta.remove(field);
        }
    }
    let status = v.as_object_mut().and_then(|o| o.remove("status"));
    (v, status)
}

fn pods_path(ns: &str) -> String {
    format!("/api/v1/namespaces/{ns}/pods")
}

/// A kind's objects loaded: how many, in how long, and the failures.
pub struct Loaded {
    pub what: String,
    pub objects: usize,
    pub seconds: f64,
    pub failed: usize,
}

impl Loaded {
    pub fn line(&self) -> String {
        format!(
            "{:<44} {:>7} in {:>6.1} s ({:>5.0}/s){}",
            self.what,
            self.objects,
            self.seconds,
            self.objects as f64 / self.seconds.max(1e-3),
            if self.failed > 0 {
                format!(", {} FAILED", self.failed)
            } else {
                String::new()
            }
        )
    }
}

/// Sends every request of `requests` with at most [`CONCURRENCY`] in flight; prints the first
/// failures.
async fn load_all<I>(
    client: &kube::Client,
    what: &str,
    requests: I,
    plane: Option<&ControlPlane>,
) -> Loaded
where
    I: Iterator<Item = Vec<(Method, String, &'static str, Vec<u8>)>>,
{
    let start = Instant::now();
    let mut objects = 0;
    let mut failed = 0;
    let mut results = futures::stream::iter(requests)
        .map(|steps| async move {
            for (method, path, ct, body) in steps {
                send(client, method, &path, ct, body).await?;
            }
            Ok::<(), String>(())
        })
        .buffer_unordered(CONCURRENCY);
    while let Some(r) = results.next().await {
        objects += 1;
        if let Err(e) = r {
            failed += 1;
            if failed <= 3 {
                eprintln!("  loading {what}: {e}");
            }
        }
        // Progress of a long load, with the control plane's memory.
        if let Some(plane) = plane.filter(|_| objects % PROGRESS_EVERY == 0) {
            let t = start.elapsed().as_secs_f64();
            let (api, etcd) = (
                memory(plane.pid("kube-apiserver")),
                memory(plane.pid("etcd")),
            );
            eprintln!(
                "  loading {what}: {objects} in {t:.0} s ({:.0}/s), {failed} failed; kube-apiserver RSS {:.0} MiB, etcd RSS {:.0} MiB",
                objects as f64 / t.max(1e-3),
                super::mib(api.0),
                super::mib(etcd.0)
            );
        }
    }
    Loaded {
        what: what.to_string(),
        objects,
        seconds: start.elapsed().as_secs_f64(),
        failed,
    }
}

fn lines(dir: &Path, kind: Kind) -> impl Iterator<Item = Value> {
    let f = std::fs::File::open(dir.join(kind.file())).expect("open objects");
    BufReader::new(f)
        .lines()
        .map(|l| serde_json::from_str(&l.expect("read")).expect("an object"))
}

fn ns_of(v: &Value) -> String {
    v["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string()
}

fn name_of(v: &Value) -> String {
    v["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// (VmRSS, VmHWM) in KiB of process `pid`.
pub fn memory(pid: Option<u32>) -> Memory {
    pid.map_or((0, 0), super::real::status)
}

impl Cluster {
    /// Starts etcd and kube-apiserver in `dir` (call it inside the rig's network namespace),
    /// installs the TargetGroupBinding CRD and makes the namespaces: `team-NN` opted in,
    /// `jobs-NN` not, the Lease's and the re-list's.
    pub async fn start(dir: &Path, shape: &Shape, dir_bytes: u64) -> anyhow::Result<Self> {
        let opts = ControlPlaneOpts {
            controllers: false,
            etcd_quota_bytes: etcd_quota(dir_bytes),
            ..ControlPlaneOpts::build()?
        };
        let plane = ControlPlane::start(&opts, dir).await?;
        let client = plane.client().await?;
        rig::k8s::install::target_group_binding_crd(&client).await?;
        let cert = plane.pki.client(READYGATE_USER, &["system:masters"])?;
        let kubeconfig = dir.join("readygate-bench.kubeconfig");
        std::fs::write(
            &kubeconfig,
            plane.pki.kubeconfig(&plane.url, READYGATE_USER, &cert),
        )?;
        let mut names: Vec<(String, bool)> = (0..shape.namespaces)
            .flat_map(|i| {
                [
                    (format!("team-{i:02}"), true),
                    (format!("jobs-{i:02}"), false),
                ]
            })
            .collect();
        names.push((LEASE_NS.into(), false));
        names.push((RELIST_NS.into(), false));
        let requests = names.into_iter().map(|(name, opted_in)| {
            let mut labels = serde_json::Map::new();
            if opted_in {
                labels.insert(OPT_IN.into(), json!("enabled"));
            }
            let ns = json!({ "apiVersion": "v1", "kind": "Namespace",
                             "metadata": { "name": name, "labels": labels } });
            let body = serde_json::to_vec(&ns).expect("serialise");
            vec![(Method::POST, "/api/v1/namespaces".to_string(), JSON, body)]
        });
        let loaded = load_all(&client, "namespaces", requests, None).await;
        anyhow::ensure!(loaded.failed == 0, "creating the namespaces failed");
        let holder = Arc::new(Holder::default());
        tokio::spawn(hold(client.clone(), holder.clone()));
        let holder_seen = Arc::new(Mutex::new(None));
        tokio::spawn(watch_holder(client.clone(), holder_seen.clone()));
        let audit = AuditTail::new(&plane.audit_log, READYGATE_USER);
        Ok(Self {
            plane,
            client,
            kubeconfig,
            audit,
            holder,
            holder_seen,
            namespaces: shape.namespaces,
            relists: 0,
            etcd_quota_bytes: etcd_quota(dir_bytes),
        })
    }

    pub fn apiserver(&self) -> Memory {
        memory(self.plane.pid("kube-apiserver"))
    }

    pub fn etcd(&self) -> Memory {
        memory(self.plane.pid("etcd"))
    }

    /// Loads the bench's objects: the pods' ServiceAccounts (the API server admits no pod
    /// whose ServiceAccount does not exist), Services, TargetGroupBindings and pods, each
    /// kind with [`CONCURRENCY`] requests in flight; the pods' status through the status
    /// subresource for the pods `status_of` says.
    pub async fn load(&self, dir: &Path, shape: &Shape, status_of: StatusOf) -> Vec<Loaded> {
        let c = &self.client;
        let mut out = Vec::new();
        let accounts: BTreeSet<(String, String)> = (0..shape.pods)
            .map(|p| {
                let s = shape.service_of_pod(p);
                match shape.is_gated(p) {
                    true => (shape.ns_of_service(s), shape.app(s)),
                    false => (shape.ns_of_other(s), format!("batch-{s:04}")),
                }
            })
            .collect();
        let requests = accounts.into_iter().map(|(ns, name)| {
            let sa = json!({ "apiVersion": "v1", "kind": "ServiceAccount",
                             "metadata": { "name": name, "namespace": ns } });
            let body = serde_json::to_vec(&sa).expect("serialise");
            let path = format!("/api/v1/namespaces/{ns}/serviceaccounts");
            vec![(Method::POST, path, JSON, body)]
        });
        out.push(
            load_all(
                c,
                "ServiceAccounts (the pods')",
                requests,
                Some(&self.plane),
            )
            .await,
        );
        let requests = lines(dir, Kind::Service).map(|v| {
            let (mut v, _) = strip(v);
            // Allocated by the API server from its own range.
            if let Some(spec) = v["spec"].as_object_mut() {
                spec.remove("clusterIP");
                spec.remove("clusterIPs");
            }
            let path = format!("/api/v1/namespaces/{}/services", ns_of(&v));
            vec![(
                Method::POST,
                path,
                JSON,
                serde_json::to_vec(&v).expect("json"),
            )]
        });
        out.push(load_all(c, "Services", requests, Some(&self.plane)).await);
        let requests = lines(dir, Kind::Binding).map(|v| {
            let (v, _) = strip(v);
            let path = format!(
                "/apis/elbv2.k8s.aws/v1beta1/namespaces/{}/targetgroupbindings",
                ns_of(&v)
            );
            vec![(
                Method::POST,
                path,
                JSON,
                serde_json::to_vec(&v).expect("json"),
            )]
        });
        out.push(load_all(c, "TargetGroupBindings", requests, Some(&self.plane)).await);
        let what = match status_of {
            StatusOf::All => "pods (create, then status)",
            StatusOf::Gated => "pods (create; status of the gated ones)",
        };
        let requests = lines(dir, Kind::Pod).map(|v| {
            let (v, status) = strip(v);
            let (ns, name) = (ns_of(&v), name_of(&v));
            let gated = v["spec"]["readinessGates"].is_array();
            let mut steps = vec![(
                Method::POST,
                pods_path(&ns),
                JSON,
                serde_json::to_vec(&v).expect("json"),
            )];
            if let Some(status) = status.filter(|_| gated || status_of == StatusOf::All) {
                let patch = serde_json::to_vec(&json!({ "status": status })).expect("json");
                let path = format!("{}/{name}/status", pods_path(&ns));
                steps.push((Method::PATCH, path, MERGE, patch));
            }
            steps
        });
        out.push(load_all(c, what, requests, Some(&self.plane)).await);
        out
    }

    /// Skips what the audit log holds so far (the load's requests, the bench's own) without
    /// reading it: readygate's requests before now are not counted.
    pub fn skip_audit(&mut self) {
        self.audit.skip();
    }

    /// The bench's own page of pods as the API server serves it (first page, `limit` 500):
    /// JSON bytes per pod and managedFields entries per pod, with their managers.
    pub async fn served_pods(&self) -> Option<Served> {
        let req = Request::get("/api/v1/pods?limit=500")
            .body(Vec::new())
            .ok()?;
        let text = self.client.request_text(req).await.ok()?;
        let list: Value = serde_json::from_str(&text).ok()?;
        let items = list["items"].as_array()?;
        let mut bytes = 0;
        let mut entries = 0;
        let mut field_bytes = 0;
        let mut managers = BTreeSet::new();
        for item in items {
            bytes += serde_json::to_vec(item).map_or(0, |v| v.len());
            if let Some(m) = item["metadata"]["managedFields"].as_array() {
                entries += m.len();
                field_bytes += serde_json::to_vec(m).map_or(0, |v| v.len());
                for e in m {
                    managers.insert(format!(
                        "{}{}",
                        e["manager"].as_str().unwrap_or("?"),
                        e["subresource"]
                            .as_str()
                            .map_or(String::new(), |s| format!("/{s}"))
                    ));
                }
            }
        }
        let n = items.len().max(1);
        Some(Served {
            pods: items.len(),
            bytes_per_pod: bytes / n,
            managed_fields_per_pod: entries as f64 / n as f64,
            managed_fields_bytes_per_pod: field_bytes / n,
            managers: managers.into_iter().collect(),
        })
    }

    /// etcd's database file (bytes): what the load took of its quota.
    pub fn etcd_db_bytes(&self) -> u64 {
        std::fs::metadata(self.plane.dir.join("etcd/member/snap/db")).map_or(0, |m| m.len())
    }

    pub async fn pod_list_starts(&mut self) -> usize {
        self.audit.poll();
        self.audit.list_starts
    }

    pub async fn pod_lists(&mut self) -> usize {
        self.audit.poll();
        self.audit.lists.len()
    }

    /// Waits (at most `within`) for a complete pod list by readygate after `lists` of them:
    /// when its last page was answered.
    pub async fn pods_listed(&mut self, lists: usize, within: Duration) -> Option<Instant> {
        let start = Instant::now();
        while start.elapsed() < within {
            self.audit.poll();
            if let Some(l) = self.audit.lists.get(lists) {
                return Some(to_instant(self.audit.anchor, l.last_page_done));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// The pod lists since the `from`th: pages, median and slowest page (seconds).
    pub fn list_pages(&self, from: usize) -> Vec<ListSpan> {
        self.audit.lists.iter().skip(from).cloned().collect()
    }

    /// The bench's holder takes the Lease (at once) and renews it.
    pub async fn take_lease(&self) {
        *self
            .holder
            .renewed
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        self.holder.alive.store(true, Ordering::Relaxed);
        let start = Instant::now();
        while self
            .holder
            .renewed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
            && start.elapsed() < Duration::from_secs(30)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The holder stops renewing: when it last renewed.
    pub fn release_lease(&self) -> Option<Instant> {
        self.holder.alive.store(false, Ordering::Relaxed);
        *self
            .holder
            .renewed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The last change of the Lease's holder, when it came after `after`: who, and when the
    /// bench's watch saw it. (readygate's first write after the expiry only clears the
    /// holder; it takes the lease with a second one, as the fake server sees too.)
    pub async fn acquired(&mut self, after: Instant) -> Option<(String, Instant)> {
        self.holder_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .filter(|(_, t)| *t >= after)
    }

    /// Deletes the Lease (the baseline starts with nobody holding it).
    pub async fn clear_lease(&self) {
        self.release_lease();
        let path =
            format!("/apis/coordination.k8s.io/v1/namespaces/{LEASE_NS}/leases/{LEASE_NAME}");
        let _ = send(&self.client, Method::DELETE, &path, JSON, Vec::new()).await;
    }

    /// Makes the leader list the pods again: a namespace opts in (readygate starts its pod
    /// watch over, applied in place, as after `410 Gone`); a real API server cannot be told to
    /// expire a watch.
    pub async fn relist(&mut self) {
        self.relists += 1;
        let value = if self.relists % 2 == 1 {
            json!("enabled")
        } else {
            Value::Null
        };
        let patch = json!({ "metadata": { "labels": { OPT_IN: value } } });
        let path = format!("/api/v1/namespaces/{RELIST_NS}");
        let body = serde_json::to_vec(&patch).expect("json");
        if let Err(e) = send(&self.client, Method::PATCH, &path, MERGE, body).await {
            eprintln!("  opting {RELIST_NS} in: {e}");
        }
    }

    /// Opts every `jobs-NN` namespace in (or out again).
    pub async fn opt_in_all(&self, on: bool) {
        let value = if on { json!("enabled") } else { Value::Null };
        let body = serde_json::to_vec(&json!({ "metadata": { "labels": { OPT_IN: value } } }))
            .expect("json");
        let requests = (0..self.namespaces).map(|i| {
            let path = format!("/api/v1/namespaces/jobs-{i:02}");
            vec![(Method::PATCH, path, MERGE, body.clone())]
        });
        let loaded = load_all(&self.client, "namespace labels", requests, None).await;
        if loaded.failed > 0 {
            eprintln!("  opting the jobs namespaces in: {} failed", loaded.failed);
        }
    }

    /// readygate's successful writes of the Lease.
    pub async fn lease_writes(&mut self) -> usize {
        self.audit.poll();
        self.audit.lease_writes
    }

    /// readygate's status PATCHes and Event creates.
    pub async fn writes(&mut self) -> usize {
        self.audit.poll();
        self.audit.writes
    }

    /// The `limit` readygate asked each list path with.
    pub async fn limits(&mut self) -> BTreeMap<String, BTreeSet<String>> {
        self.audit.poll();
        self.audit.limits.clone()
    }
}

/// Pods as the real API server serves them (one page, read by the bench).
pub struct Served {
    pub pods: usize,
    pub bytes_per_pod: usize,
    pub managed_fields_per_pod: f64,
    pub managed_fields_bytes_per_pod: usize,
    pub managers: Vec<String>,
}

/// One complete pod list by readygate, as the audit log shows it.
#[derive(Clone)]
pub struct ListSpan {
    pub pages: usize,
    pub first_page_received: SystemTime,
    pub last_page_done: SystemTime,
    /// Each page's time from received to answered, seconds.
    pub page_seconds: Vec<f64>,
}

/// readygate's requests, read from the API server's audit log as it grows.
struct AuditTail {
    path: PathBuf,
    offset: u64,
    user: &'static str,
    anchor: (Instant, SystemTime),
    partial: Vec<u8>,
    list_starts: usize,
    lists: Vec<ListSpan>,
    /// The pod list under way (pages answered so far), complete when a pod watch starts.
    current: Option<ListSpan>,
    /// readygate's successful writes of the Lease.
    lease_writes: usize,
    writes: usize,
    limits: BTreeMap<String, BTreeSet<String>>,
}

fn timestamp(v: &Value, key: &str) -> Option<SystemTime> {
    let t: jiff::Timestamp = v.get(key)?.as_str()?.parse().ok()?;
    Some(SystemTime::from(t))
}

impl AuditTail {
    fn new(path: &Path, user: &'static str) -> Self {
        let offset = std::fs::metadata(path).map_or(0, |m| m.len());
        Self {
            path: path.to_path_buf(),
            offset,
            user,
            anchor: (Instant::now(), SystemTime::now()),
            partial: Vec::new(),
            list_starts: 0,
            lists: Vec::new(),
            current: None,
            lease_writes: 0,
            writes: 0,
            limits: BTreeMap::new(),
        }
    }

    /// Moves past the log's current end without reading it.
    fn skip(&mut self) {
        self.offset = std::fs::metadata(&self.path).map_or(self.offset, |m| m.len());
        self.partial.clear();
        // A line cut at the end is skipped too: the next poll starts mid-line, and a line
        // that does not parse is ignored.
    }

    fn poll(&mut self) {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        let Ok(n) = f.read_to_end(&mut buf) else {
            return;
        };
        self.offset += n as u64;
        self.partial.extend_from_slice(&buf);
        let Some(end) = self.partial.iter().rposition(|b| *b == b'\n') else {
            return;
        };
        let complete: Vec<u8> = self.partial.drain(..=end).collect();
        for line in complete.split(|b| *b == b'\n') {
            // Cheap test first: most lines are the bench's own requests.
            if line.is_empty() || !contains(line, self.user.as_bytes()) {
                continue;
            }
            if let Ok(v) = serde_json::from_slice::<Value>(line) {
                self.event(&v);
            }
        }
    }

    fn event(&mut self, v: &Value) {
        if v["user"]["username"].as_str() != Some(self.user) {
            return;
        }
        let s = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or_default();
        let (verb, stage, uri) = (s("/verb"), s("/stage"), s("/requestURI"));
        let (resource, sub, name) = (
            s("/objectRef/resource"),
            s("/objectRef/subresource"),
            s("/objectRef/name"),
        );
        let code = v["responseStatus"]["code"].as_u64().unwrap_or(0);
        if verb == "list" && stage == "ResponseComplete" {
            let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
            let limit = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("limit="))
                .unwrap_or("-");
            self.limits
                .entry(path.to_string())
                .or_default()
                .insert(limit.to_string());
        }
        match (resource, sub, verb, stage) {
            ("pods", "", "list", "ResponseComplete") => {
                let (Some(received), Some(done)) = (
                    timestamp(v, "requestReceivedTimestamp"),
                    timestamp(v, "stageTimestamp"),
                ) else {
                    return;
                };
                let first = !uri.contains("continue=");
                if first {
                    self.list_starts += 1;
                }
                let secs = done
                    .duration_since(received)
                    .map_or(0.0, |d| d.as_secs_f64());
                match (&mut self.current, first) {
                    (Some(span), false) => {
                        span.pages += 1;
                        span.last_page_done = done;
                        span.page_seconds.push(secs);
                    }
                    _ => {
                        self.current = Some(ListSpan {
                            pages: 1,
                            first_page_received: received,
                            last_page_done: done,
                            page_seconds: vec![secs],
                        })
                    }
                }
            }
            ("pods", "", "watch", "ResponseStarted") => {
                if let Some(span) = self.current.take() {
                    self.lists.push(span);
                }
            }
            ("pods", "status", "patch", "ResponseComplete")
            | ("events", "", "create", "ResponseComplete") => self.writes += 1,
            ("leases", "", "patch" | "update" | "create", "ResponseComplete")
                if name == LEASE_NAME && (200..300).contains(&code) =>
            {
                self.lease_writes += 1
            }
            _ => {}
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
