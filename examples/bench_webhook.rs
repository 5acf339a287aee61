//! Admission benchmark: server-side latency of the readiness-gate webhook under a fixed open-loop
//! load over TLS keep-alive, against a bare TLS+HTTP baseline measured in the same run.
//!
//! ```text
//! cargo run --release --example bench_webhook            # 2,000 req/s, 2 s warm-up + 10 s, 3 reps
//! cargo run --release --example bench_webhook -- --help  # rate, duration, connections, cache size
//! scripts/bench-admission   # saturation under wrk against nginx, using --serve-for below
//! ```
//!
//! `--serve-for SECS --out DIR` only serves the webhook (same path, same cache) for an outside
//! load generator, and writes its certificate, one review and the checked answer to it.
//!
//! Both servers are the real path: `server::serve_https` with a `tls::ReloadingResolver` on rcgen
//! certificates from `certs`, on 127.0.0.1. One serves `webhook::router` over a cache holding
//! 1,000 TargetGroupBindings and 1,000 Services in 50 namespaces; the baseline serves a handler
//! that reads the body and returns a constant allowed AdmissionReview, so the ratio shows what the
//! decision and the patch cost beyond TLS and HTTP. A middleware layer times each request inside
//! the server (from the router call to the response, body read and JSON encoding included; TLS
//! encryption and socket writes are not, they are in the client-side figures).
//!
//! The load generator runs in this process on its own single-threaded runtime, so on a small
//! machine it shares the CPUs with the server; every request is scheduled at a fixed time
//! (open loop), and a sample of the answers is checked for the exact expected patch.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use readygate::cache::Cache;
use readygate::domain::{Binding, NamespaceSettings, PortRef, Service, ServicePort, TargetType};
use readygate::metrics::Metrics;
use readygate::server::{HttpsLimits, serve_https};
use readygate::termination::PrestopSleep;
use readygate::tls::{KeyPairPaths, ReloadingResolver};
use readygate::webhook::{self, WebhookState};

// Written out rather than taken from `domain`, so the check does not share the code it checks.
const GATE: &str = "target-health.elbv2.k8s.aws/";
const LEGACY_GATE: &str = "target-health.alb.ingress.k8s.aws/";
const SERVICE: &str = "readygate-webhook";
const NAMESPACE: &str = "readygate-system";
const TARGET_P99_MICROS: f64 = 1000.0;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Parser)]
#[command(
    about = "readygate admission benchmark: webhook vs bare TLS+HTTP baseline, open loop over TLS keep-alive"
)]
struct Args {
    /// Requests per second, spread evenly over the connections.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=50_000))]
    rate: u32,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=120))]
    secs: u64,
    /// Warm-up seconds before each measured run (new connections, answers not counted).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=30))]
    warmup_secs: u64,
    /// TLS keep-alive connections.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    connections: u32,
    /// Repetitions (figures are medians over them); the two servers alternate order.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=15))]
    reps: u32,
    /// Namespaces the bindings and services are spread over.
    #[arg(long, default_value_t = 50)]
    namespaces: usize,
    /// TargetGroupBindings in the cache (and as many Services); a multiple of --namespaces.
    #[arg(long, default_value_t = 1000)]
    bindings: usize,
    /// Distinct pod CREATE reviews, sent round-robin.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=20_000))]
    pods: u64,
    /// Check every Nth measured answer of the webhook for its exact patch (all are pre-checked once).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    verify_every: u64,
    /// Log filter for the server (production's by default; "off" shows the cost of logging).
    #[arg(long, default_value = "info,kube=warn,aws=warn,hyper=warn")]
    log: String,
    /// Serve only, for an outside load generator (scripts/bench-admission): the webhook on
    /// 127.0.0.1 for this many seconds, its certificate, one review and the answer to it
    /// written to --out.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=3600), requires = "out")]
    serve_for: Option<u64>,
    /// Where --serve-for writes tls.crt, tls.key, ca.crt, review.json, answer.json and port.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// Only the router, in process and without TLS: the same review through a cache of 10 and
    /// one of --bindings bindings in one namespace, alternating, this many requests per run.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    handler_only: Option<u64>,
}

// ---------------------------------------------------------------------------------------------
// The cluster: bindings, services and the pods to admit.

struct Cluster {
    namespaces: Vec<String>,
    bindings: Vec<(String, Binding)>,
    services: Vec<(String, String, Service)>,
}

fn app(j: usize) -> String {
    format!("app-{j:02}")
}

/// Per namespace: services `app-00`..; the third-last selects `tier: frontend` (several apps),
/// the second-last has no binding; bindings target each service by `ip`, except a second
/// binding on `app-00` and an `instance` binding on the last service.
fn cluster(namespaces: usize, per_ns: usize) -> Cluster {
    let mut c = Cluster {
        namespaces: Vec::new(),
        bindings: Vec::new(),
        services: Vec::new(),
    };
    for i in 0..namespaces {
        let ns = format!("team-{i:02}");
        for j in 0..per_ns {
            let selector: BTreeMap<String, String> = if j == per_ns - 3 {
                [("tier".into(), "frontend".into())].into()
            } else {
                [
                    ("app".into(), app(j)),
                    ("app.kubernetes.io/part-of".into(), ns.clone()),
                ]
                .into()
            };
            let ports = vec![
                ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    target_port: Some(PortRef::Name("http".into())),
                },
                ServicePort {
                    name: Some("metrics".into()),
                    port: 9090,
                    target_port: Some(PortRef::Number(9090)),
                },
            ];
            c.services
                .push((ns.clone(), app(j), Service { selector, ports }));

            let (service, target_type) = match j {
                j if j == per_ns - 1 => (app(j), TargetType::Instance),
                j if j == per_ns - 2 => (app(0), TargetType::Ip),
                j => (app(j), TargetType::Ip),
            };
            let name = format!(
                "k8s-{ns}-{service}-{:010x}",
                mix((i * per_ns + j) as u64) >> 24
            );
            c.bindings.push((
                ns.clone(),
                Binding {
                    target_group_arn: format!(
                        "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/{}/{:016x}",
                        &name[..name.len().min(32)],
                        mix(j as u64)
                    ),
                    name,
                    target_type,
                    service_name: service,
                    service_port: PortRef::Number(80),
                    ip_family: Default::default(),
                    aws_controller: false,
                },
            ));
        }
        c.namespaces.push(ns);
    }
    c
}

/// The gates a pod should get, worked out by brute force over the whole cluster.
fn expected_gates(c: &Cluster, ns: &str, labels: &BTreeMap<String, String>) -> Vec<String> {
    let selects = |svc: &str| {
        c.services.iter().any(|(sns, name, s)| {
            sns == ns
                && name == svc
                && !s.selector.is_empty()
                && s.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
    };
    let mut gates: Vec<String> = c
        .bindings
        .iter()
        .filter(|(bns, b)| bns == ns && b.target_type == TargetType::Ip && selects(&b.service_name))
        .map(|(_, b)| format!("{GATE}{}", b.name))
        .collect();
    gates.sort();
    gates.dedup();
    gates
}

/// A cheap deterministic hash, for names and uids.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn uuid(x: u64) -> String {
    let (a, b) = (mix(x), mix(x ^ 0x5555));
    format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        b >> 52,
        b & 0xffff_ffff_ffff
    )
}

/// One pod CREATE review to send, with the answer it must get.
struct Sample {
    body: Bytes,
    uid: String,
    pod: Value,
    /// The pod's readinessGates condition types after the patch; `None`: no patch expected.
    gates_after: Option<Vec<String>>,
}

/// A Deployment's pod as the API server hands it to a webhook (about 4 KB of JSON).
fn pod_json(p: u64, ns: &str, app: &str, frontend: bool) -> (Value, BTreeMap<String, String>) {
    let hash = format!("{:010x}", mix(p) >> 24).replace('0', "b");
    let rs = format!("{app}-{hash}");
    let mut labels: BTreeMap<String, String> = [
        ("app".to_string(), app.to_string()),
        ("app.kubernetes.io/part-of".into(), ns.into()),
        (
            "app.kubernetes.io/version".into(),
            format!("1.{}.0", p % 40),
        ),
        ("pod-template-hash".into(), hash.clone()),
    ]
    .into();
    if frontend {
        labels.insert("tier".into(), "frontend".into());
    }
    let image = format!(
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/{ns}/{app}:1.{}.0",
        p % 40
    );
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": format!("{rs}-"),
            "namespace": ns,
            "labels": labels,
            "annotations": {
                "kubectl.kubernetes.io/restartedAt": "2026-11-20T09:14:03Z",
                "prometheus.io/scrape": "true",
                "prometheus.io/port": "9090",
                "checksum/config": format!("{:016x}{:016x}{:016x}{:016x}", mix(p), mix(p + 1), mix(p + 2), mix(p + 3)),
                "cluster-autoscaler.kubernetes.io/safe-to-evict": "true"
            },
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs, "uid": uuid(p ^ 0xabc),
                "controller": true, "blockOwnerDeletion": true
            }]
        },
        "spec": {
            "volumes": [
                { "name": "config", "configMap": { "name": format!("{app}-config"), "defaultMode": 420 } },
                { "name": "tmp", "emptyDir": { "sizeLimit": "64Mi" } },
                { "name": "kube-api-access-x7k2p", "projected": { "defaultMode": 420, "sources": [
                    { "serviceAccountToken": { "expirationSeconds": 3607, "path": "token" } },
                    { "configMap": { "name": "kube-root-ca.crt", "items": [{ "key": "ca.crt", "path": "ca.crt" }] } },
                    { "downwardAPI": { "items": [{ "path": "namespace", "fieldRef": { "apiVersion": "v1", "fieldPath": "metadata.namespace" } }] } }
                ] } }
            ],
            "containers": [
                {
                    "name": "app",
                    "image": image,
                    "args": ["--config=/etc/app/config.yaml", "--listen=:8080", "--metrics=:9090"],
                    "ports": [
                        { "name": "http", "containerPort": 8080, "protocol": "TCP" },
                        { "name": "metrics", "containerPort": 9090, "protocol": "TCP" }
                    ],
                    "env": [
                        { "name": "POD_NAME", "valueFrom": { "fieldRef": { "apiVersion": "v1", "fieldPath": "metadata.name" } } },
                        { "name": "POD_IP", "valueFrom": { "fieldRef": { "apiVersion": "v1", "fieldPath": "status.podIP" } } },
                        { "name": "LOG_LEVEL", "value": "info" },
                        { "name": "DATABASE_URL", "valueFrom": { "secretKeyRef": { "name": format!("{app}-db"), "key": "url" } } },
                        { "name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://otel-collector.observability.svc:4317" }
                    ],
                    "resources": { "requests": { "cpu": "250m", "memory": "256Mi" }, "limits": { "memory": "512Mi" } },
                    "volumeMounts": [
                        { "name": "config", "mountPath": "/etc/app", "readOnly": true },
                        { "name": "tmp", "mountPath": "/tmp" },
                        { "name": "kube-api-access-x7k2p", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true }
                    ],
                    "livenessProbe": { "httpGet": { "path": "/livez", "port": "http", "scheme": "HTTP" }, "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3 },
                    "readinessProbe": { "httpGet": { "path": "/readyz", "port": "http", "scheme": "HTTP" }, "periodSeconds": 5, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3 },
                    "lifecycle": { "preStop": { "sleep": { "seconds": 10 } } },
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File",
                    "imagePullPolicy": "IfNotPresent",
                    "securityContext": { "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": { "drop": ["ALL"] } }
                },
                {
                    "name": "envoy",
                    "image": "public.ecr.aws/appmesh/aws-appmesh-envoy:v1.29.6.0-prod",
                    "ports": [{ "name": "envoy-admin", "containerPort": 9901, "protocol": "TCP" }],
                    "resources": { "requests": { "cpu": "50m", "memory": "64Mi" } },
                    "volumeMounts": [{ "name": "kube-api-access-x7k2p", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true }],
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File",
                    "imagePullPolicy": "IfNotPresent"
                }
            ],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": app,
            "serviceAccount": app,
            "securityContext": { "runAsNonRoot": true, "runAsUser": 10001, "fsGroup": 10001, "seccompProfile": { "type": "RuntimeDefault" } },
            "schedulerName": "default-scheduler",
            "tolerations": [
                { "key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300 },
                { "key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300 }
            ],
            "topologySpreadConstraints": [{
                "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": { "matchLabels": { "app": app } }
            }],
            "priority": 0,
            "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority"
        },
        "status": {}
    });
    // Existing gates: a legacy one (dropped when ours are added) and a foreign one (kept).
    match p % 10 {
        3 => {
            pod["spec"]["readinessGates"] =
                json!([{ "conditionType": format!("{LEGACY_GATE}{ns}_{app}_http") }])
        }
        7 => {
            pod["spec"]["readinessGates"] =
                json!([{ "conditionType": "www.example.com/feature-1" }])
        }
        _ => {}
    }
    (pod, labels)
}

fn samples(c: &Cluster, per_ns: usize, count: u64) -> Vec<Sample> {
    // Apps beyond the services' range match nothing; with the service without a binding and the
    // instance binding, about 3 pods in 10 need no gate.
    let apps = (per_ns + 5) as u64;
    (0..count)
        .map(|p| {
            let ns = &c.namespaces[(p % c.namespaces.len() as u64) as usize];
            let k = (p * 7) % apps;
            let (pod, labels) = pod_json(p, ns, &app(k as usize), k < 4);
            let wanted = expected_gates(c, ns, &labels);
            let gates_after = (!wanted.is_empty()).then(|| {
                let mut after: Vec<String> = condition_types(&pod).into_iter().filter(|t| !t.starts_with(LEGACY_GATE)).collect();
                after.extend(wanted);
                after.sort();
                after
            });
            let uid = uuid(p);
            let review = json!({
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "request": {
                    "uid": uid,
                    "kind": { "group": "", "version": "v1", "kind": "Pod" },
                    "resource": { "group": "", "version": "v1", "resource": "pods" },
                    "requestKind": { "group": "", "version": "v1", "kind": "Pod" },
                    "requestResource": { "group": "", "version": "v1", "resource": "pods" },
                    "namespace": ns,
                    "operation": "CREATE",
                    "userInfo": {
                        "username": "system:serviceaccount:kube-system:replicaset-controller",
                        "uid": uuid(7),
                        "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]
                    },
                    "object": pod,
                    "oldObject": null,
                    "dryRun": false,
                    "options": { "apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions" }
                }
            });
            Sample { body: Bytes::from(review.to_string()), uid, pod, gates_after }
        })
        .collect()
}

fn condition_types(pod: &Value) -> Vec<String> {
    pod["spec"]["readinessGates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g["conditionType"].as_str().map(str::to_string))
        .collect()
}

/// Checks an answer of the webhook: our uid, allowed, and exactly the expected gates after the patch.
fn verify(sample: &Sample, body: &[u8]) -> Result<(), String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("answer is not JSON: {e}"))?;
    let r = &v["response"];
    if r["uid"] != sample.uid.as_str() || r["allowed"] != true {
        return Err(format!("wrong uid or not allowed: {r}"));
    }
    let patch = match &r["patch"] {
        Value::Null => None,
        Value::String(s) => Some(
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, s)
                .map_err(|e| format!("patch is not base64: {e}"))?,
        ),
        // kube-core serializes the patch bytes as a JSON array of numbers, which the API
        // server's decoder also accepts for a []byte field.
        Value::Array(a) => Some(
            a.iter()
                .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect::<Option<Vec<u8>>>()
                .ok_or("patch array holds a non-byte")?,
        ),
        other => return Err(format!("unexpected patch value {other}")),
    };
    match (&sample.gates_after, patch) {
        (None, None) => Ok(()),
        (None, Some(_)) => Err(format!("a patch for pod {} that needs no gate", sample.uid)),
        (Some(_), None) => Err(format!("no patch for pod {} that needs gates", sample.uid)),
        (Some(want), Some(bytes)) => {
            if r["patchType"] != "JSONPatch" {
                return Err(format!("patchType {}", r["patchType"]));
            }
            let patch: json_patch::Patch = serde_json::from_slice(&bytes)
                .map_err(|e| format!("patch is not a JSON Patch: {e}"))?;
            let mut pod = sample.pod.clone();
            json_patch::patch(&mut pod, &patch)
                .map_err(|e| format!("patch does not apply: {e}"))?;
            let mut got = condition_types(&pod);
            got.sort();
            // Everything but the gates must come through untouched.
            match sample.pod["spec"].get("readinessGates") {
                Some(before) => pod["spec"]["readinessGates"] = before.clone(),
                None => {
                    pod["spec"]
                        .as_object_mut()
                        .map(|spec| spec.remove("readinessGates"));
                }
            }
            if pod != sample.pod {
                return Err("the patch touched more than /spec/readinessGates".into());
            }
            if &got != want {
                Err(format!("gates after patch {got:?}, expected {want:?}"))
            } else {
                Ok(())
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Servers: the real TLS listener, timed by a middleware.

/// Handling durations in nanoseconds, recorded while `on`.
#[derive(Clone, Default)]
struct Recorder {
    on: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<u64>>>,
}

impl Recorder {
    fn start(&self) {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.on.store(true, Ordering::SeqCst);
    }
    fn stop(&self) -> Vec<u64> {
        self.on.store(false, Ordering::SeqCst);
        std::mem::take(&mut *self.samples.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

async fn timed(State(rec): State<Recorder>, req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let res = next.run(req).await;
    let took = started.elapsed().as_nanos() as u64;
    if rec.on.load(Ordering::Relaxed) {
        rec.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(took);
    }
    res
}

const BASELINE_ANSWER: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"705ab4f5-6393-11e8-b7cc-42010a800002","allowed":true}}"#;

/// The bare path: same listener, same body read, a constant answer.
fn baseline_router() -> Router {
    Router::new().route(
        webhook::PATH,
        post(|body: Bytes| async move {
            drop(body);
            (
                [(header::CONTENT_TYPE, "application/json")],
                BASELINE_ANSWER,
            )
                .into_response()
        }),
    )
}

struct Server {
    name: &'static str,
    addr: SocketAddr,
    recorder: Recorder,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

fn start_server(
    rt: &tokio::runtime::Runtime,
    name: &'static str,
    acceptor: TlsAcceptor,
    router: Router,
) -> anyhow::Result<Server> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let listener = {
        let _in_runtime = rt.enter();
        tokio::net::TcpListener::from_std(listener)?
    };
    let recorder = Recorder::default();
    let router = router.layer(middleware::from_fn_with_state(recorder.clone(), timed));
    let limits = HttpsLimits {
        handshake_timeout: Duration::from_secs(10),
        header_read_timeout: Duration::from_secs(10),
        drain_timeout: Duration::from_secs(5),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = rt.spawn(serve_https(
        listener,
        acceptor,
        router,
        limits,
        async move {
            let _ = stopped.await;
        },
    ));
    Ok(Server {
        name,
        addr,
        recorder,
        stop,
        task,
    })
}

/// A CA and a serving certificate for the webhook Service, written to `dir` as `readygate certs`
/// does; the server loads them through the reloading resolver, the client trusts the CA.
fn tls(dir: &Path) -> anyhow::Result<(TlsAcceptor, TlsConnector)> {
    let bundle =
        readygate::certs::generate(readygate::certs::service_dns_names(SERVICE, NAMESPACE), 1)?;
    readygate::certs::write(&bundle, dir)?;
    let resolver = ReloadingResolver::load(KeyPairPaths {
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
    })?;
    let acceptor = TlsAcceptor::from(Arc::new(readygate::tls::server_config(Arc::new(resolver))?));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(dir.join("ca.crt"))? {
        roots.add(cert?)?;
    }
    let mut client = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((acceptor, TlsConnector::from(Arc::new(client))))
}

// ---------------------------------------------------------------------------------------------
// The load generator.

struct Load {
    addr: SocketAddr,
    connector: TlsConnector,
    samples: Arc<Vec<Sample>>,
    /// Check answers against the expected patch (the webhook, not the baseline).
    check: bool,
    verify_every: u64,
}

#[derive(Default)]
struct ConnStats {
    /// Client-side latency of measured requests, nanoseconds.
    latencies: Vec<u64>,
    /// How late each measured request left against its schedule, nanoseconds.
    lags: Vec<u64>,
    sent: u64,
    failed: u64,
    verified: u64,
    errors: Vec<String>,
    last_done: Option<Instant>,
    tls_version: Option<String>,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(load: &Load) -> anyhow::Result<(Sender, String)> {
    tokio::time::timeout(REQUEST_TIMEOUT, async {
        let tcp = TcpStream::connect(load.addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(format!("{SERVICE}.{NAMESPACE}.svc"))?;
        let tls = load.connector.connect(name, tcp).await?;
        let version = format!(
            "{:?}",
            tls.get_ref()
                .1
                .protocol_version()
                .context("no TLS version")?
        );
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        // Drives the connection; ends when the sender is dropped.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok((sender, version))
    })
    .await
    .context("connect timed out")?
}

async fn send(sender: &mut Sender, body: Bytes) -> anyhow::Result<(u16, Bytes)> {
    let request = hyper::Request::post(format!("{}?timeout=10s", webhook::PATH))
        .header(header::HOST, format!("{SERVICE}.{NAMESPACE}.svc:443"))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, */*")
        .body(Full::new(body))?;
    tokio::time::timeout(REQUEST_TIMEOUT, async {
        sender.ready().await?;
        let res = sender.send_request(request).await?;
        let status = res.status().as_u16();
        Ok((status, res.into_body().collect().await?.to_bytes()))
    })
    .await
    .context("request timed out")?
}

/// Connection `idx` sends one request at a time, each when the pacer says it is due; a request
/// due while the previous one is out waits and leaves late (its lag shows it).
async fn drive_connection(
    load: Arc<Load>,
    idx: u64,
    mut due_times: tokio::sync::mpsc::UnboundedReceiver<(u64, Instant)>,
    measure_from: Instant,
) -> ConnStats {
    let mut st = ConnStats::default();
    let mut sender = match connect(&load).await {
        Ok((s, v)) => {
            st.tls_version = Some(v);
            s
        }
        Err(e) => {
            st.failed += 1;
            st.errors.push(format!("connection {idx}: {e:#}"));
            return st;
        }
    };
    let n = load.samples.len() as u64;
    let mut measured_count = 0u64;
    while let Some((seq, due)) = due_times.recv().await {
        let sample = &load.samples[(seq % n) as usize];
        let sent_at = Instant::now();
        st.sent += 1;
        let measured = due >= measure_from;
        match send(&mut sender, sample.body.clone()).await {
            Ok((200, body)) => {
                let done = Instant::now();
                if measured {
                    st.latencies.push((done - sent_at).as_nanos() as u64);
                    st.lags.push((sent_at - due).as_nanos() as u64);
                    st.last_done = Some(done);
                    measured_count += 1;
                    if load.check && measured_count.is_multiple_of(load.verify_every) {
                        st.verified += 1;
                        if let Err(e) = verify(sample, &body) {
                            st.failed += 1;
                            st.errors.push(e);
                        }
                    }
                }
            }
            Ok((status, body)) => {
                st.failed += 1;
                st.errors.push(format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                ));
            }
            Err(e) => {
                st.failed += 1;
                st.errors.push(format!("{e:#}"));
                match connect(&load).await {
                    Ok((s, _)) => sender = s,
                    Err(e) => {
                        st.errors.push(format!(
                            "reconnect failed, connection {idx} gives up: {e:#}"
                        ));
                        break;
                    }
                }
            }
        }
    }
    st
}

/// Quantiles in microseconds.
#[derive(Clone, Copy, Debug, Default)]
struct Quantiles {
    n: usize,
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

fn quantiles(mut ns: Vec<u64>) -> Quantiles {
    ns.sort_unstable();
    let n = ns.len();
    if n == 0 {
        return Quantiles::default();
    }
    let at = |q: f64| ns[((q * n as f64).ceil() as usize).clamp(1, n) - 1] as f64 / 1000.0;
    Quantiles {
        n,
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
        p999: at(0.999),
        max: ns[n - 1] as f64 / 1000.0,
    }
}

struct RunResult {
    server: Quantiles,
    client: Quantiles,
    lag: Quantiles,
    rate: f64,
    sent: u64,
    failed: u64,
    verified: u64,
    errors: Vec<String>,
    tls_version: String,
}

async fn run(server: &Server, load: &Arc<Load>, args: &Args) -> anyhow::Result<RunResult> {
    let conns = u64::from(args.connections);
    let rate = u64::from(args.rate);
    let start = Instant::now() + Duration::from_millis(200);
    let measure_from = start + Duration::from_secs(args.warmup_secs);
    let end = measure_from + Duration::from_secs(args.secs);
    let (senders, tasks): (Vec<_>, Vec<_>) = (0..conns)
        .map(|i| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            (
                tx,
                tokio::spawn(drive_connection(load.clone(), i, rx, measure_from)),
            )
        })
        .unzip();
    // The pacer: request `seq` is due at `start + seq / rate`, on connection `seq % conns`. A
    // thread sleeping in the kernel keeps the spacing even (tokio's timer works in whole
    // milliseconds, which would release the requests in bursts).
    let pacer = std::thread::spawn(move || {
        for seq in 0u64.. {
            let due = start + Duration::from_nanos(seq * 1_000_000_000 / rate);
            if due >= end {
                break;
            }
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            // A connection that gave up has dropped its receiver; its share is simply not sent.
            let _ = senders[(seq % conns) as usize].send((seq, due));
        }
    });
    tokio::time::sleep_until(measure_from.into()).await;
    server.recorder.start();
    let joined = tokio::time::timeout_at(
        (end + REQUEST_TIMEOUT * 3).into(),
        futures::future::join_all(tasks),
    )
    .await;
    let server_ns = server.recorder.stop();
    let _ = pacer.join();
    let Ok(joined) = joined else {
        bail!("{}: the load did not finish in time", server.name)
    };

    let mut all = ConnStats::default();
    for st in joined {
        let st = st.context("load task panicked")?;
        all.latencies.extend(st.latencies);
        all.lags.extend(st.lags);
        all.sent += st.sent;
        all.failed += st.failed;
        all.verified += st.verified;
        all.errors.extend(st.errors);
        all.last_done = all.last_done.max(st.last_done);
        all.tls_version = all.tls_version.or(st.tls_version);
    }
    let window = all
        .last_done
        .map_or(f64::NAN, |t| (t - measure_from).as_secs_f64());
    Ok(RunResult {
        rate: all.latencies.len() as f64 / window,
        server: quantiles(server_ns),
        client: quantiles(all.latencies),
        lag: quantiles(all.lags),
        sent: all.sent,
        failed: all.failed,
        verified: all.verified,
        errors: all.errors,
        tls_version: all.tls_version.unwrap_or_else(|| "?".into()),
    })
}

/// Sends every distinct review once over one connection and checks each answer.
async fn precheck(load: &Load) -> anyhow::Result<usize> {
    let (mut sender, _) = connect(load).await?;
    for sample in load.samples.iter() {
        let (status, body) = send(&mut sender, sample.body.clone()).await?;
        ensure!(
            status == 200,
            "pre-check: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
        verify(sample, &body).map_err(|e| anyhow::anyhow!("pre-check: {e}"))?;
    }
    Ok(load.samples.len())
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn med(results: &[&RunResult], f: impl Fn(&RunResult) -> f64) -> f64 {
    median(results.iter().map(|r| f(r)).collect())
}

// ---------------------------------------------------------------------------------------------

fn main() -> ExitCode {
    readygate::install_crypto_provider();
    let args = Args::parse();
    let outcome = match (args.serve_for, &args.out, args.handler_only) {
        (Some(secs), Some(out), _) => serve_only(&args, secs, out).map(|()| true),
        (_, _, Some(requests)) => handler_only(&args, requests).map(|()| true),
        _ => bench(&args),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("bench_webhook: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The production logger (JSON lines, `--log` filter) writing to /dev/null: each admission logs
/// one line, as in production, without a terminal's cost.
fn log_to_devnull(filter: &str) -> anyhow::Result<()> {
    let devnull = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .context("opening /dev/null")?;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(filter).context("--log")?)
        .json()
        .with_writer(Mutex::new(devnull))
        .init();
    Ok(())
}

/// The cluster's objects listed into a fresh cache, every kind synced.
fn filled_cache(c: &Cluster) -> Arc<Cache> {
    let cache = Arc::new(Cache::default());
    {
        let mut ix = cache.write();
        ix.replace_bindings(c.bindings.clone());
        ix.replace_services(c.services.clone());
        ix.replace_pods(vec![]);
        ix.replace_namespaces(
            c.namespaces
                .iter()
                .map(|ns| (ns.clone(), NamespaceSettings::opted_in()))
                .collect(),
        );
    }
    cache
}

/// `--serve-for`: `readygate serve`'s webhook path (`serve_https` with the reloading resolver
/// and `webhook::router` with its body limit, on a runtime sized like production's) over a
/// prepared cache, for an outside load generator. Writes the first review that needs gates
/// (the same bytes whatever the cache size) and the webhook's checked answer to it.
fn serve_only(args: &Args, secs: u64, out: &Path) -> anyhow::Result<()> {
    ensure!(
        args.namespaces > 0 && args.bindings.is_multiple_of(args.namespaces),
        "--bindings must be a multiple of --namespaces"
    );
    let per_ns = args.bindings / args.namespaces;
    ensure!(per_ns >= 4, "need at least 4 bindings per namespace");
    log_to_devnull(&args.log)?;
    let c = cluster(args.namespaces, per_ns);
    let cache = filled_cache(&c);
    let (bindings, services, _) = cache.read().counts();
    let samples = samples(&c, per_ns, args.pods);
    let sample = samples
        .into_iter()
        .find(|s| s.gates_after.is_some())
        .context("no review needs a gate")?;
    std::fs::create_dir_all(out)?;
    let (acceptor, connector) = tls(out)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("server")
        .build()?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let listener = {
        let _in_runtime = rt.enter();
        tokio::net::TcpListener::from_std(listener)?
    };
    let state = WebhookState {
        cache,
        metrics: Arc::new(Metrics::new()),
        prestop_sleep: PrestopSleep::Off,
    };
    let limits = HttpsLimits {
        handshake_timeout: Duration::from_secs(10),
        header_read_timeout: Duration::from_secs(10),
        drain_timeout: Duration::from_secs(5),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(serve_https(
        listener,
        acceptor,
        webhook::router(state, 3 * 1024 * 1024),
        limits,
        async move {
            let _ = stopped.await;
        },
    ));
    let load = Load {
        addr,
        connector,
        samples: Arc::new(vec![]),
        check: true,
        verify_every: 1,
    };
    let answer = rt.block_on(async {
        let (mut sender, _) = connect(&load).await?;
        let (status, body) = send(&mut sender, sample.body.clone()).await?;
        ensure!(
            status == 200,
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
        verify(&sample, &body).map_err(|e| anyhow::anyhow!("answer: {e}"))?;
        Ok(body)
    })?;
    std::fs::write(out.join("review.json"), &sample.body)?;
    std::fs::write(out.join("answer.json"), &answer)?;
    std::fs::write(out.join("port"), addr.port().to_string())?;
    println!(
        "serving https://{addr}{} for {secs} s: {bindings} bindings and {services} Services in {} namespace(s); review {} B, answer {} B",
        webhook::PATH,
        args.namespaces,
        sample.body.len(),
        answer.len()
    );
    std::thread::sleep(Duration::from_secs(secs));
    let _ = stop.send(());
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), server).await })
        .context("the server did not drain")??;
    Ok(())
}

/// `--handler-only`: what one admission costs the router (body to answer bytes, decision,
/// patch, logging) with 10 bindings and Services in the pod's namespace and with --bindings,
/// run alternately on one thread, without the network and TLS noise of the other modes.
fn handler_only(args: &Args, requests: u64) -> anyhow::Result<()> {
    use tower::ServiceExt;
    ensure!(args.bindings >= 10, "--bindings must be at least 10");
    log_to_devnull(&args.log)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    for n in [10, args.bindings] {
        let c = cluster(1, n);
        let sample = samples(&c, n, args.pods)
            .into_iter()
            .find(|s| s.gates_after.is_some())
            .context("no review needs a gate")?;
        let state = WebhookState {
            cache: filled_cache(&c),
            metrics: Arc::new(Metrics::new()),
            prestop_sleep: PrestopSleep::Off,
        };
        rows.push((n, sample, webhook::router(state, 3 * 1024 * 1024)));
    }
    ensure!(
        rows[0].1.body == rows[1].1.body,
        "the two caches got different reviews"
    );
    println!(
        "router only, one thread, {requests} requests per run, the same {} B review ({} gates after the patch), {} repetitions alternating",
        rows[0].1.body.len(),
        rows[0].1.gates_after.as_ref().map_or(0, Vec::len),
        args.reps
    );
    let mut per_request: Vec<Vec<f64>> = vec![Vec::new(); 2];
    for rep in 0..args.reps {
        let order: [usize; 2] = if rep % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let (n, sample, router) = &rows[i];
            let took = rt.block_on(async {
                let started = Instant::now();
                for k in 0..requests {
                    let request = axum::http::Request::post(webhook::PATH)
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(axum::body::Body::from(sample.body.clone()))?;
                    let res = router.clone().oneshot(request).await?;
                    ensure!(res.status() == 200, "HTTP {}", res.status());
                    let body = res.into_body().collect().await?.to_bytes();
                    if k == 0 {
                        verify(sample, &body).map_err(|e| anyhow::anyhow!("answer: {e}"))?;
                    }
                }
                Ok(started.elapsed())
            })?;
            let us = took.as_secs_f64() * 1e6 / requests as f64;
            per_request[i].push(us);
            println!(
                "  rep {} {:>5} bindings: {us:.2} µs per request",
                rep + 1,
                n
            );
        }
    }
    let (a, b) = (
        median(per_request[0].clone()),
        median(per_request[1].clone()),
    );
    println!(
        "median: {a:.2} µs with 10 bindings, {b:.2} µs with {}; ratio {:.3}",
        args.bindings,
        b / a
    );
    Ok(())
}

/// Runs the benchmark and prints its figures; `Ok(false)` when any request failed.
fn bench(args: &Args) -> anyhow::Result<bool> {
    ensure!(
        args.namespaces > 0 && args.bindings.is_multiple_of(args.namespaces),
        "--bindings must be a multiple of --namespaces"
    );
    let per_ns = args.bindings / args.namespaces;
    ensure!(per_ns >= 4, "need at least 4 bindings per namespace");

    log_to_devnull(&args.log)?;
    let c = cluster(args.namespaces, per_ns);
    let cache = filled_cache(&c);
    let (bindings, services, _) = cache.read().counts();
    let ip = c
        .bindings
        .iter()
        .filter(|(_, b)| b.target_type == TargetType::Ip)
        .count();
    let samples = Arc::new(samples(&c, per_ns, args.pods));
    let sizes: Vec<usize> = samples.iter().map(|s| s.body.len()).collect();
    let patched = samples.iter().filter(|s| s.gates_after.is_some()).count();
    let max_gates = samples
        .iter()
        .filter_map(|s| s.gates_after.as_ref())
        .map(|g| g.iter().filter(|t| t.starts_with(GATE)).count())
        .max()
        .unwrap_or(0);

    let dir = tempfile::tempdir()?;
    let (acceptor, connector) = tls(dir.path())?;
    // Sized like production's runtime (one worker per CPU); the load has its own thread.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("server")
        .build()?;
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let state = WebhookState {
        cache,
        metrics: Arc::new(Metrics::new()),
        prestop_sleep: PrestopSleep::Off,
    };
    let servers = [
        start_server(&server_rt, "baseline", acceptor.clone(), baseline_router())?,
        start_server(
            &server_rt,
            "readygate",
            acceptor,
            webhook::router(state, 3 * 1024 * 1024),
        )?,
    ];
    let loads: Vec<Arc<Load>> = servers
        .iter()
        .map(|s| {
            Arc::new(Load {
                addr: s.addr,
                connector: connector.clone(),
                samples: samples.clone(),
                check: s.name == "readygate",
                verify_every: args.verify_every,
            })
        })
        .collect();

    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("readygate admission benchmark (bench_webhook)");
    println!(
        "  machine   {cpus} CPUs, shared: the server (tokio, {cpus} workers) and this load generator (1 thread) run in one \
         process on the same CPUs, beside anything else running"
    );
    println!(
        "  cache     {bindings} TargetGroupBindings ({ip} ip, {} instance) and {services} Services over {} namespaces; pods and namespaces synced",
        bindings - ip,
        args.namespaces
    );
    println!(
        "  requests  {} distinct pod CREATE AdmissionReviews, {:.1} KB average ({:.1}-{:.1} KB); {} of them ({:.0}%) need 1-{max_gates} gates, the rest none",
        samples.len(),
        sizes.iter().sum::<usize>() as f64 / sizes.len() as f64 / 1024.0,
        *sizes.iter().min().unwrap_or(&0) as f64 / 1024.0,
        *sizes.iter().max().unwrap_or(&0) as f64 / 1024.0,
        patched,
        100.0 * patched as f64 / samples.len() as f64,
    );
    println!(
        "  load      open loop, {} req/s over {} TLS keep-alive connections to 127.0.0.1; {} s warm-up + {} s measured; {} repetitions, order alternating",
        args.rate, args.connections, args.warmup_secs, args.secs, args.reps
    );
    println!(
        "  server    middleware time from router call to response: body read, decision, patch and JSON encoding in; \
         TLS, HTTP parsing and socket I/O out (the baseline's server figure is that floor, its client figure the bare path)"
    );
    println!(
        "  client    from write to full answer; lag: how late a request left against its schedule (a busy connection, \
         or the load generator waiting for a CPU)"
    );
    println!(
        "  logging   production JSON lines, filter \"{}\" (one info line per admission), written to /dev/null",
        args.log
    );

    let checked = client_rt.block_on(precheck(&loads[1]))?;
    println!(
        "  pre-check {checked}/{checked} distinct reviews answered with exactly the expected patch (or none)"
    );
    println!();
    println!(
        "{:<4}{:<10}{:>7} | {:>33} | {:>15} | {:>8} | {:>8} | {:>7}",
        "rep",
        "server",
        "n",
        "server-side µs p50/p90/p99/p99.9/max",
        "client µs p50/p99",
        "lag p99",
        "req/s",
        "failed"
    );

    let mut results: Vec<(usize, RunResult)> = Vec::new();
    for rep in 0..args.reps {
        let order: [usize; 2] = if rep % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let r = client_rt.block_on(run(&servers[i], &loads[i], args))?;
            println!(
                "{:<4}{:<10}{:>7} | {:>6.1} {:>6.1} {:>6.1} {:>6.1} {:>6.0} | {:>7.1} {:>7.1} | {:>8.1} | {:>8.1} | {:>7}",
                rep + 1,
                servers[i].name,
                r.server.n,
                r.server.p50,
                r.server.p90,
                r.server.p99,
                r.server.p999,
                r.server.max,
                r.client.p50,
                r.client.p99,
                r.lag.p99,
                r.rate,
                r.failed
            );
            for e in r.errors.iter().take(5) {
                println!("      error: {e}");
            }
            results.push((i, r));
        }
    }

    let of = |i: usize| {
        results
            .iter()
            .filter(|(s, _)| *s == i)
            .map(|(_, r)| r)
            .collect::<Vec<_>>()
    };
    let (base, ours) = (of(0), of(1));
    println!();
    println!("median over {} repetitions (µs):", args.reps);
    println!(
        "  {:<10} {:>8} {:>8} {:>8} {:>8} {:>8} | {:>8} {:>8} | {:>8}",
        "", "p50", "p90", "p99", "p99.9", "max", "cli p50", "cli p99", "req/s"
    );
    for (name, rs) in [("baseline", &base), ("readygate", &ours)] {
        println!(
            "  {:<10} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.0} | {:>8.1} {:>8.1} | {:>8.1}",
            name,
            med(rs, |r| r.server.p50),
            med(rs, |r| r.server.p90),
            med(rs, |r| r.server.p99),
            med(rs, |r| r.server.p999),
            med(rs, |r| r.server.max),
            med(rs, |r| r.client.p50),
            med(rs, |r| r.client.p99),
            med(rs, |r| r.rate),
        );
    }
    // Ratios pair each webhook run with the baseline run of the same repetition.
    let ratio = |f: &dyn Fn(&RunResult) -> f64| {
        median(base.iter().zip(&ours).map(|(b, o)| f(o) / f(b)).collect())
    };
    println!(
        "ratio readygate/baseline (median of per-repetition ratios): server p50 {:.2}x, p99 {:.2}x; client p50 {:.2}x, p99 {:.2}x",
        ratio(&|r| r.server.p50),
        ratio(&|r| r.server.p99),
        ratio(&|r| r.client.p50),
        ratio(&|r| r.client.p99),
    );
    // And the difference: what the decision and the patch add to each request.
    let added = |f: &dyn Fn(&RunResult) -> f64| {
        median(base.iter().zip(&ours).map(|(b, o)| f(o) - f(b)).collect())
    };
    println!(
        "added by readygate (median of per-repetition differences, µs): server p50 {:+.1}, p99 {:+.1}; client p50 {:+.1}, p99 {:+.1}",
        added(&|r| r.server.p50),
        added(&|r| r.server.p99),
        added(&|r| r.client.p50),
        added(&|r| r.client.p99),
    );
    let p99 = med(&ours, |r| r.server.p99);
    let worst = ours.iter().map(|r| r.server.p99).fold(0.0, f64::max);
    let rate = med(&ours, |r| r.rate);
    println!(
        "target    server-side p99 <= 1 ms at {} req/s: {} (median p99 {:.3} ms, worst repetition {:.3} ms, median achieved {:.0} req/s)",
        args.rate,
        if p99 <= TARGET_P99_MICROS {
            "MET"
        } else {
            "NOT MET"
        },
        p99 / 1000.0,
        worst / 1000.0,
        rate
    );

    let failed: u64 = results.iter().map(|(_, r)| r.failed).sum();
    let sent: u64 = results.iter().map(|(_, r)| r.sent).sum();
    let verified: u64 = results.iter().map(|(_, r)| r.verified).sum();
    let tls_versions: std::collections::BTreeSet<&str> = results
        .iter()
        .map(|(_, r)| r.tls_version.as_str())
        .collect();
    println!(
        "requests  {sent} sent (warm-up included) over {tls_versions:?}, {failed} failed (non-200, transport error or wrong patch); \
         {verified} measured webhook answers checked for their exact patch"
    );

    client_rt.block_on(async {
        for s in servers {
            let _ = s.stop.send(());
            let _ = tokio::time::timeout(Duration::from_secs(10), s.task).await;
        }
    });
    Ok(failed == 0)
}
