//! Memory of readygate's caches with 10,000 pods, 1,000 Services and 1,000 TargetGroupBindings,
//! against kube-runtime reflector stores of the same objects, measured in the same run.
//!
//!     cargo build --bin readygate && cargo run --example bench_memory
//!     (options: --pods 10000 --gated 10000 --services 1000 --bindings 1000 --namespaces 50
//!      --only real --keep DIR)
//!
//! (dev profile; the heap figures are the same in release, only the time and the binary's own
//! pages differ.) The parent generates realistic objects once — labels, annotations, owner
//! references, managedFields as an API server returns them, 2–3 containers with ports, probes,
//! env and mounts, a readiness gate and its condition, container statuses — as JSON lines.
//! Each variant then runs in a child process of its own (this example re-executing itself) so
//! that allocator state does not carry over, and reads them as list-response pages (the body of
//! one `GET …?limit=N` call at a time):
//!
//! - readygate: the product's watcher path (`cache::drive`): pages of `Cached::PAGE_SIZE` (100
//!   for pods, 500 for the other kinds), each page decoded as `ObjectList<K>` with `K` the type
//!   the watcher decodes (`cache::WatchedPod` for pods), each object fed through `cache::Feed`
//!   (converted with `Cached::convert` and applied in place; at the list's end what it did not
//!   see is dropped and free memory is trimmed);
//! - reflector: `kube::runtime::reflector::store::Writer`, fed k8s-openapi objects kept whole,
//!   in pages of kube-runtime's default `watcher::Config::page_size`;
//! - stripped: the same with managedFields dropped before storing (a common `modify`).
//!
//! A child reports VmRSS / VmHWM from /proc/self/status and the live heap bytes counted by a
//! global-allocator wrapper after each kind, after the load, after glibc's `malloc_trim(0)` and,
//! for readygate, with a tokio runtime and the kube / AWS / metrics clients added, then through a
//! re-list of the pods (what the watcher does after `410 Gone`).
//!
//! Last, the real binary (`$READYGATE_BIN`, else `target/release/readygate`, else
//! `target/debug/readygate`) runs against an in-process API server on 127.0.0.1 that serves the
//! same objects as lists paged by the `limit` the client asks for, holds watches open, and
//! answers the Lease (get, create, patch), status PATCHes and Events; ELBv2 points at a closed
//! port. One process at a time, VmRSS / VmHWM from /proc/PID/status:
//!
//! - webhook-only (`--controller false`), first with empty lists, then with the objects: it must
//!   list no pods;
//! - a follower (`--controller true` while the bench's own holder renews the Lease): no pods
//!   either; then the holder stops renewing and the follower takes over once the lease has
//!   expired: the takeover time runs from that expiry to the last page of the new leader's pod
//!   list; then the leader's RSS, and a pod re-list after `410 Gone`;
//! - the baseline, same run: the same objects with every namespace opted in, so the leader keeps
//!   every pod, as every replica did before pods were the leader's alone.
//!
//! The issue's shape (100,000 pods of which 10,000 gated, 10,000 Services and bindings):
//!
//!     cargo build --release --bin readygate && cargo run --example bench_memory -- \
//!         --pods 100000 --gated 10000 --services 10000 --bindings 10000 --only real
//!
//! (`--gated N`: only the first N pods belong to the Services, in opted-in namespaces; the
//! others are other workloads in namespaces that are not opted in, without our gate.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Resource;
use kube::core::ObjectList;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::{self, Event};
use readygate::cache::{Cache, Cached, Feed, WatchedBinding, WatchedPod, WatchedService};
use readygate::crd::TargetGroupBinding;
use serde_json::{Value, json};
// ---------------------------------------------------------------------------------------------
// Heap accounting: bytes requested and not yet freed (malloc's own overhead not included).

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new_size) };
        if !q.is_null() {
            LIVE.fetch_sub(l.size(), Ordering::Relaxed);
            grew(new_size);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

unsafe extern "C" {
    /// glibc: return free heap memory to the OS.
    fn malloc_trim(pad: usize) -> i32;
}

fn trim() {
    // SAFETY: glibc's malloc_trim has no preconditions.
    unsafe {
        malloc_trim(0);
    }
}

/// (VmRSS, VmHWM) in KiB.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn stage(name: &str) {
    let (rss, hwm) = rss();
    println!(
        "STAGE {name} {rss} {hwm} {} {}",
        LIVE.load(Ordering::Relaxed),
        PEAK.load(Ordering::Relaxed)
    );
}

// ---------------------------------------------------------------------------------------------
// Realistic objects. Everything derives from the index, so runs are reproducible.

fn mix(mut x: u64) -> u64 {
    // splitmix64
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn hex(seed: u64, len: usize) -> String {
    let mut s = String::with_capacity(len);
    let mut i = 0u64;
    while s.len() < len {
        s.push_str(&format!(
            "{:016x}",
            mix(seed.wrapping_mul(31).wrapping_add(i))
        ));
        i += 1;
    }
    s.truncate(len);
    s
}

fn alnum(seed: u64, len: usize) -> String {
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..len)
        .map(|i| CHARS[(mix(seed ^ ((i as u64) << 40)) % CHARS.len() as u64) as usize] as char)
        .collect()
}

fn uuid(seed: u64) -> String {
    let h = hex(seed, 32);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn ts(seed: u64) -> String {
    let s = 1_763_600_000 + (mix(seed) % 2_000_000) as i64;
    jiff::Timestamp::from_second(s).unwrap().to_string()
}

const APPS: &[&str] = &[
    "checkout",
    "orders",
    "payments",
    "catalog",
    "search",
    "cart",
    "users",
    "inventory",
    "shipping",
    "reviews",
];

#[derive(Debug)]
struct Shape {
    namespaces: usize,
    services: usize,
    bindings: usize,
    pods: usize,
    /// The first `gated` pods belong to the Services (in opted-in namespaces, with a gate when
    /// their Service has a binding); the others are other workloads: in namespaces that are not
    /// opted in, selected by no Service, without our gate.
    gated: usize,
}

impl Shape {
    fn is_gated(&self, p: usize) -> bool {
        p < self.gated
    }
    /// The namespace of an ungated pod (`jobs-NN`, never opted in).
    fn ns_of_other(&self, s: usize) -> String {
        format!("jobs-{:02}", s % self.namespaces)
    }
    fn ns_of_service(&self, s: usize) -> String {
        format!("team-{:02}", s % self.namespaces)
    }
    fn app(&self, s: usize) -> String {
        format!("{}-{:04}", APPS[s % APPS.len()], s)
    }
    /// Pods are spread evenly over the Services.
    fn service_of_pod(&self, p: usize) -> usize {
        p % self.services
    }
    fn has_binding(&self, s: usize) -> bool {
        s < self.bindings
    }
}

fn managed_field(
    manager: &str,
    op: &str,
    subresource: Option<&str>,
    api: &str,
    time: &str,
    fields: Value,
) -> Value {
    let mut m = json!({
        "manager": manager, "operation": op, "apiVersion": api, "time": time,
        "fieldsType": "FieldsV1", "fieldsV1": fields
    });
    if let Some(s) = subresource {
        m["subresource"] = json!(s);
    }
    m
}

fn container(name: &str, image: &str, ports: &[(&str, i32)], api_vol: &str) -> Value {
    let mut c = json!({
        "name": name,
        "image": image,
        "env": [
            { "name": "LOG_LEVEL", "value": "info" },
            { "name": "POD_NAME", "valueFrom": { "fieldRef": { "apiVersion": "v1", "fieldPath": "metadata.name" } } },
            { "name": "POD_IP", "valueFrom": { "fieldRef": { "apiVersion": "v1", "fieldPath": "status.podIP" } } },
            { "name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://otel-collector.observability.svc:4317" }
        ],
        "resources": { "limits": { "memory": "512Mi" }, "requests": { "cpu": "250m", "memory": "256Mi" } },
        "volumeMounts": [
            { "name": "config", "readOnly": true, "mountPath": format!("/etc/{name}") },
            { "name": api_vol, "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount" }
        ],
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
        "securityContext": {
            "capabilities": { "drop": ["ALL"] }, "runAsNonRoot": true, "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false
        }
    });
    if !ports.is_empty() {
        c["ports"] = ports
            .iter()
            .map(|(n, p)| json!({ "name": n, "containerPort": p, "protocol": "TCP" }))
            .collect();
        let probe_port = ports[0].0;
        c["readinessProbe"] = json!({ "httpGet": { "path": "/ready", "port": probe_port, "scheme": "HTTP" },
            "timeoutSeconds": 1, "periodSeconds": 5, "successThreshold": 1, "failureThreshold": 3 });
        c["livenessProbe"] = json!({ "httpGet": { "path": "/healthz", "port": probe_port, "scheme": "HTTP" },
            "initialDelaySeconds": 10, "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3 });
    }
    c
}

fn container_fields(name: &str, ports: &[(&str, i32)]) -> (String, Value) {
    let mut f = json!({
        ".": {}, "f:env": {
            ".": {},
            "k:{\"name\":\"LOG_LEVEL\"}": { ".": {}, "f:name": {}, "f:value": {} },
            "k:{\"name\":\"POD_NAME\"}": { ".": {}, "f:name": {}, "f:valueFrom": { ".": {}, "f:fieldRef": {} } },
            "k:{\"name\":\"POD_IP\"}": { ".": {}, "f:name": {}, "f:valueFrom": { ".": {}, "f:fieldRef": {} } },
            "k:{\"name\":\"OTEL_EXPORTER_OTLP_ENDPOINT\"}": { ".": {}, "f:name": {}, "f:value": {} }
        },
        "f:image": {}, "f:imagePullPolicy": {}, "f:name": {},
        "f:resources": { ".": {}, "f:limits": { ".": {}, "f:memory": {} }, "f:requests": { ".": {}, "f:cpu": {}, "f:memory": {} } },
        "f:securityContext": { ".": {}, "f:allowPrivilegeEscalation": {}, "f:capabilities": { ".": {}, "f:drop": {} },
                               "f:readOnlyRootFilesystem": {}, "f:runAsNonRoot": {} },
        "f:terminationMessagePath": {}, "f:terminationMessagePolicy": {},
        "f:volumeMounts": { ".": {}, format!("k:{{\"mountPath\":\"/etc/{name}\"}}"): { ".": {}, "f:mountPath": {}, "f:name": {}, "f:readOnly": {} } }
    });
    if !ports.is_empty() {
        let mut pf = serde_json::Map::new();
        pf.insert(".".into(), json!({}));
        for (_, p) in ports {
            pf.insert(
                format!("k:{{\"containerPort\":{p},\"protocol\":\"TCP\"}}"),
                json!({ ".": {}, "f:containerPort": {}, "f:name": {}, "f:protocol": {} }),
            );
        }
        f["f:ports"] = Value::Object(pf);
        let probe = json!({ ".": {}, "f:failureThreshold": {}, "f:httpGet": { ".": {}, "f:path": {}, "f:port": {}, "f:scheme": {} },
                            "f:periodSeconds": {}, "f:successThreshold": {}, "f:timeoutSeconds": {} });
        f["f:readinessProbe"] = probe.clone();
        f["f:livenessProbe"] = probe;
    }
    (format!("k:{{\"name\":\"{name}\"}}"), f)
}

fn pod_json(l: &Shape, p: usize) -> Value {
    let s = l.service_of_pod(p);
    let (ns, app) = match l.is_gated(p) {
        true => (l.ns_of_service(s), l.app(s)),
        false => (l.ns_of_other(s), format!("batch-{:04}", s)),
    };
    let seed = p as u64 * 1_000_003;
    let rs_hash = alnum(s as u64 + 7, 10);
    let rs_uid = uuid(s as u64 + 99);
    let name = format!("{app}-{rs_hash}-{}", alnum(seed, 5));
    let created = ts(seed);
    let started = ts(seed + 1);
    let node_ip = format!("10.0.{}.{}", mix(seed + 2) % 64, 1 + mix(seed + 3) % 254);
    let pod_ip = format!("10.{}.{}.{}", 1 + p / 65_000, (p / 254) % 256, 1 + p % 254);
    let node = format!(
        "ip-{}.us-west-2.compute.internal",
        node_ip.replace('.', "-")
    );
    let api_vol = format!("kube-api-access-{}", alnum(seed + 4, 5));
    let image = format!(
        "123456789012.dkr.ecr.us-west-2.amazonaws.com/{app}:1.{}.{}",
        s % 7,
        p % 13
    );
    let sidecar = "public.ecr.aws/appmesh/aws-appmesh-envoy:v1.29.6.0-prod";
    let shipper = "public.ecr.aws/aws-observability/aws-for-fluent-bit:2.32.2";
    let third = p.is_multiple_of(3);

    let mut containers = vec![
        container(
            "app",
            &image,
            &[("http", 8080), ("metrics", 9090)],
            &api_vol,
        ),
        container("envoy", sidecar, &[("envoy-admin", 9901)], &api_vol),
    ];
    let mut names = vec![
        (
            "app",
            image.clone(),
            vec![("http", 8080), ("metrics", 9090)],
        ),
        ("envoy", sidecar.to_string(), vec![("envoy-admin", 9901)]),
    ];
    if third {
        containers.push(container("log-shipper", shipper, &[], &api_vol));
        names.push(("log-shipper", shipper.to_string(), vec![]));
    }

    let gate = (l.is_gated(p) && l.has_binding(s))
        .then(|| format!("target-health.elbv2.k8s.aws/{app}-tgb"));
    let mut conditions = vec![
        json!({ "type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": started }),
        json!({ "type": "Initialized", "status": "True", "lastTransitionTime": created }),
        json!({ "type": "Ready", "status": "True", "lastTransitionTime": started }),
        json!({ "type": "ContainersReady", "status": "True", "lastTransitionTime": started }),
        json!({ "type": "PodScheduled", "status": "True", "lastTransitionTime": created }),
    ];
    if let Some(g) = &gate {
        conditions.push(json!({ "type": g, "status": "True", "reason": "Elb.Healthy", "message": "Target is healthy", "lastTransitionTime": started }));
    }
    let statuses: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(i, (n, img, _))| {
            json!({
                "name": n, "state": { "running": { "startedAt": started } }, "lastState": {}, "ready": true,
                "restartCount": 0, "image": img, "imageID": format!("{}@sha256:{}", img.split(':').next().unwrap_or(img), hex(seed + 10 + i as u64, 64)),
                "containerID": format!("containerd://{}", hex(seed + 20 + i as u64, 64)), "started": true,
                "user": { "linux": { "uid": 1000, "gid": 1000, "supplementalGroups": [1000, 2000] } },
                "volumeMounts": [
                    { "name": "config", "mountPath": format!("/etc/{n}"), "readOnly": true, "recursiveReadOnly": "Disabled" },
                    { "name": api_vol, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true, "recursiveReadOnly": "Disabled" }
                ]
            })
        })
        .collect();

    // managedFields as the API server returns them: the ReplicaSet controller's create, the
    // kubelet's status updates, and the gate condition's writer.
    let mut cfields = serde_json::Map::new();
    cfields.insert(".".into(), json!({}));
    for (n, _, ports) in &names {
        let (k, v) = container_fields(n, ports);
        cfields.insert(k, v);
    }
    let mut spec_fields = json!({
        "f:containers": Value::Object(cfields),
        "f:dnsPolicy": {}, "f:enableServiceLinks": {}, "f:restartPolicy": {}, "f:schedulerName": {},
        "f:securityContext": { ".": {}, "f:fsGroup": {} }, "f:serviceAccount": {}, "f:serviceAccountName": {},
        "f:terminationGracePeriodSeconds": {},
        "f:volumes": { ".": {}, "k:{\"name\":\"config\"}": { ".": {}, "f:configMap": { ".": {}, "f:defaultMode": {}, "f:name": {} }, "f:name": {} } }
    });
    if let Some(g) = &gate {
        spec_fields["f:readinessGates"] = json!({ ".": {}, format!("k:{{\"conditionType\":\"{g}\"}}"): { ".": {}, "f:conditionType": {} } });
    }
    let cond_fields = |t: &str| {
        (
            format!("k:{{\"type\":\"{t}\"}}"),
            json!({ ".": {}, "f:lastProbeTime": {}, "f:lastTransitionTime": {}, "f:status": {}, "f:type": {} }),
        )
    };
    let mut kubelet_conds = serde_json::Map::new();
    for t in [
        "ContainersReady",
        "Initialized",
        "PodReadyToStartContainers",
        "Ready",
    ] {
        let (k, v) = cond_fields(t);
        kubelet_conds.insert(k, v);
    }
    let mut managed = vec![
        managed_field(
            "kube-controller-manager",
            "Update",
            None,
            "v1",
            &created,
            json!({
                "f:metadata": {
                    "f:generateName": {},
                    "f:labels": { ".": {}, "f:app": {}, "f:app.kubernetes.io/instance": {}, "f:app.kubernetes.io/name": {}, "f:app.kubernetes.io/version": {}, "f:pod-template-hash": {} },
                    "f:annotations": { ".": {}, "f:kubectl.kubernetes.io/restartedAt": {}, "f:prometheus.io/port": {}, "f:prometheus.io/scrape": {} },
                    "f:ownerReferences": { ".": {}, format!("k:{{\"uid\":\"{rs_uid}\"}}"): {} }
                },
                "f:spec": spec_fields
            }),
        ),
        managed_field(
            "kubelet",
            "Update",
            Some("status"),
            "v1",
            &started,
            json!({ "f:status": {
                "f:conditions": Value::Object(kubelet_conds),
                "f:containerStatuses": {}, "f:hostIP": {}, "f:hostIPs": {}, "f:phase": {}, "f:podIP": {},
                "f:podIPs": { ".": {}, format!("k:{{\"ip\":\"{pod_ip}\"}}"): { ".": {}, "f:ip": {} } }, "f:startTime": {}
            } }),
        ),
    ];
    if let Some(g) = &gate {
        let (k, v) = cond_fields(g);
        let mut m = serde_json::Map::new();
        m.insert(k, v);
        managed.push(managed_field(
            "readygate",
            "Update",
            Some("status"),
            "v1",
            &started,
            json!({ "f:status": { "f:conditions": Value::Object(m) } }),
        ));
    }

    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name, "generateName": format!("{app}-{rs_hash}-"), "namespace": ns, "uid": uuid(seed),
            "resourceVersion": format!("{}", 480_000_000 + p), "creationTimestamp": created,
            "labels": {
                "app": app, "app.kubernetes.io/name": app, "app.kubernetes.io/instance": app,
                "app.kubernetes.io/version": format!("1.{}.0", s % 7), "pod-template-hash": rs_hash
            },
            "annotations": {
                "kubectl.kubernetes.io/restartedAt": ts(s as u64), "prometheus.io/scrape": "true", "prometheus.io/port": "9090"
            },
            "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{app}-{rs_hash}"), "uid": rs_uid,
                                  "controller": true, "blockOwnerDeletion": true }],
            "managedFields": managed
        },
        "spec": {
            "volumes": [
                { "name": "config", "configMap": { "name": format!("{app}-config"), "defaultMode": 420 } },
                { "name": api_vol, "projected": { "sources": [
                    { "serviceAccountToken": { "expirationSeconds": 3607, "path": "token" } },
                    { "configMap": { "name": "kube-root-ca.crt", "items": [{ "key": "ca.crt", "path": "ca.crt" }] } },
                    { "downwardAPI": { "items": [{ "path": "namespace", "fieldRef": { "apiVersion": "v1", "fieldPath": "metadata.namespace" } }] } }
                ], "defaultMode": 420 } }
            ],
            "containers": containers,
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
            "serviceAccountName": app, "serviceAccount": app, "nodeName": node,
            "securityContext": { "fsGroup": 2000 }, "schedulerName": "default-scheduler",
            "tolerations": [
                { "key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300 },
                { "key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300 }
            ],
            "priority": 0, "enableServiceLinks": true, "preemptionPolicy": "PreemptLowerPriority"
        },
        "status": {
            "phase": "Running", "conditions": conditions, "hostIP": node_ip, "hostIPs": [{ "ip": node_ip }],
            "podIP": pod_ip, "podIPs": [{ "ip": pod_ip }], "startTime": created,
            "containerStatuses": statuses, "qosClass": "Burstable"
        }
    });
    if let Some(g) = gate {
        pod["spec"]["readinessGates"] = json!([{ "conditionType": g }]);
    }
    pod
}

fn service_json(l: &Shape, s: usize) -> Value {
    let (ns, app) = (l.ns_of_service(s), l.app(s));
    let seed = 7_000_000 + s as u64;
    let ip = format!("172.20.{}.{}", (s / 250) % 256, 1 + s % 250);
    let created = ts(seed);
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {
            "name": app, "namespace": ns, "uid": uuid(seed), "resourceVersion": format!("{}", 470_000_000 + s),
            "creationTimestamp": created,
            "labels": { "app.kubernetes.io/name": app, "app.kubernetes.io/instance": app, "app.kubernetes.io/managed-by": "Helm", "helm.sh/chart": "service-1.4.2" },
            "annotations": { "meta.helm.sh/release-name": app, "meta.helm.sh/release-namespace": ns },
            "managedFields": [managed_field("helm", "Update", None, "v1", &created, json!({
                "f:metadata": {
                    "f:annotations": { ".": {}, "f:meta.helm.sh/release-name": {}, "f:meta.helm.sh/release-namespace": {} },
                    "f:labels": { ".": {}, "f:app.kubernetes.io/instance": {}, "f:app.kubernetes.io/managed-by": {}, "f:app.kubernetes.io/name": {}, "f:helm.sh/chart": {} }
                },
                "f:spec": {
                    "f:internalTrafficPolicy": {},
                    "f:ports": { ".": {},
                        "k:{\"port\":80,\"protocol\":\"TCP\"}": { ".": {}, "f:name": {}, "f:port": {}, "f:protocol": {}, "f:targetPort": {} },
                        "k:{\"port\":9090,\"protocol\":\"TCP\"}": { ".": {}, "f:name": {}, "f:port": {}, "f:protocol": {}, "f:targetPort": {} } },
                    "f:selector": {}, "f:sessionAffinity": {}, "f:type": {}
                }
            }))]
        },
        "spec": {
            "ports": [
                { "name": "http", "protocol": "TCP", "port": 80, "targetPort": "http" },
                { "name": "metrics", "protocol": "TCP", "port": 9090, "targetPort": "metrics" }
            ],
            "selector": { "app.kubernetes.io/name": app, "app.kubernetes.io/instance": app },
            "clusterIP": ip, "clusterIPs": [ip], "type": "ClusterIP", "sessionAffinity": "None",
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "internalTrafficPolicy": "Cluster"
        },
        "status": { "loadBalancer": {} }
    })
}

/// A TargetGroupBinding as the API server returns it, with the fields readygate does not read.
fn binding_json(l: &Shape, b: usize) -> Value {
    let (ns, app) = (l.ns_of_service(b), l.app(b));
    let seed = 9_000_000 + b as u64;
    let created = ts(seed);
    json!({
        "apiVersion": "elbv2.k8s.aws/v1beta1", "kind": "TargetGroupBinding",
        "metadata": {
            "name": format!("{app}-tgb"), "namespace": ns, "uid": uuid(seed), "resourceVersion": format!("{}", 460_000_000 + b),
            "generation": 1, "creationTimestamp": created, "finalizers": ["elbv2.k8s.aws/resources"],
            "labels": { "ingress.k8s.aws/stack-name": app, "ingress.k8s.aws/stack-namespace": ns, "ingress.k8s.aws/resource": format!("{ns}/{app}-http:80") },
            "managedFields": [
                managed_field("controller", "Update", None, "elbv2.k8s.aws/v1beta1", &created, json!({
                    "f:metadata": { "f:finalizers": { ".": {}, "v:\"elbv2.k8s.aws/resources\"": {} },
                                    "f:labels": { ".": {}, "f:ingress.k8s.aws/resource": {}, "f:ingress.k8s.aws/stack-name": {}, "f:ingress.k8s.aws/stack-namespace": {} } },
                    "f:spec": { ".": {}, "f:ipAddressType": {}, "f:networking": { ".": {}, "f:ingress": {} },
                                "f:serviceRef": { ".": {}, "f:name": {}, "f:port": {} }, "f:targetGroupARN": {}, "f:targetType": {}, "f:vpcID": {} }
                })),
                managed_field("controller", "Update", Some("status"), "elbv2.k8s.aws/v1beta1", &created, json!({
                    "f:status": { ".": {}, "f:observedGeneration": {} }
                }))
            ]
        },
        "spec": {
            "targetGroupARN": format!("arn:aws:elasticloadbalancing:us-west-2:123456789012:targetgroup/k8s-{}-{}/{}", &ns[..7.min(ns.len())], alnum(seed, 10), hex(seed, 16)),
            "targetType": "ip",
            "serviceRef": { "name": app, "port": 80 },
            "ipAddressType": "ipv4",
            "vpcID": format!("vpc-{}", hex(1, 17)),
            "networking": { "ingress": [{
                "from": [{ "securityGroup": { "groupID": format!("sg-{}", hex(seed + 1, 17)) } }],
                "ports": [{ "port": 8080, "protocol": "TCP" }]
            }] }
        },
        "status": { "observedGeneration": 1 }
    })
}

fn through<K: serde::de::DeserializeOwned + serde::Serialize>(v: Value) -> Value {
    let typed: K = serde_json::from_value(v).expect("object matches its API type");
    serde_json::to_value(&typed).expect("serialise")
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Binding,
    Service,
    Pod,
}

const KINDS: [Kind; 3] = [Kind::Binding, Kind::Service, Kind::Pod];

impl Kind {
    fn file(self) -> &'static str {
        match self {
            Kind::Binding => "bindings.jsonl",
            Kind::Service => "services.jsonl",
            Kind::Pod => "pods.jsonl",
        }
    }
    fn list_kind(self) -> (&'static str, &'static str) {
        match self {
            Kind::Binding => ("elbv2.k8s.aws/v1beta1", "TargetGroupBindingList"),
            Kind::Service => ("v1", "ServiceList"),
            Kind::Pod => ("v1", "PodList"),
        }
    }
}

/// Writes every object as one JSON line per kind (core kinds serialised from their k8s-openapi
/// type, so the JSON holds exactly what the type keeps; bindings verbatim, with the fields
/// readygate does not type). Returns (objects, bytes) per kind.
fn generate(shape: &Shape, dir: &Path) -> Vec<(Kind, usize, usize)> {
    KINDS
        .iter()
        .map(|&kind| {
            let mut out = BufWriter::new(File::create(dir.join(kind.file())).expect("create"));
            let n = match kind {
                Kind::Binding => shape.bindings,
                Kind::Service => shape.services,
                Kind::Pod => shape.pods,
            };
            let mut bytes = 0;
            for i in 0..n {
                let v = match kind {
                    Kind::Binding => binding_json(shape, i),
                    Kind::Service => through::<Service>(service_json(shape, i)),
                    Kind::Pod => through::<Pod>(pod_json(shape, i)),
                };
                let line = serde_json::to_string(&v).expect("serialise");
                bytes += line.len();
                writeln!(out, "{line}").expect("write");
            }
            out.flush().expect("flush");
            (kind, n, bytes)
        })
        .collect()
}

/// A list response: `items` (JSON objects) with a continue token when more pages follow.
fn list_body(
    (api_version, list_kind): (&str, &str),
    items: &[String],
    next: Option<usize>,
) -> Vec<u8> {
    let mut body = Vec::with_capacity(items.iter().map(|i| i.len() + 1).sum::<usize>() + 256);
    let cont = next.map_or(String::new(), |n| format!(r#","continue":"page-{n}""#));
    write!(
        body,
        r#"{{"apiVersion":"{api_version}","kind":"{list_kind}","metadata":{{"resourceVersion":"490000000"{cont}}},"items":["#
    )
    .expect("write");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item.as_bytes());
    }
    body.extend_from_slice(b"]}");
    body
}

/// The list-response pages of one kind, as the API server sends them with `limit` = `page`.
struct Pages {
    kind: Kind,
    lines: std::iter::Peekable<std::io::Lines<BufReader<File>>>,
    page: usize,
    index: usize,
}

impl Pages {
    fn open(dir: &Path, kind: Kind, page: usize) -> Self {
        let f = File::open(dir.join(kind.file())).expect("open");
        Self {
            kind,
            lines: BufReader::new(f).lines().peekable(),
            page,
            index: 0,
        }
    }
}

impl Iterator for Pages {
    type Item = Vec<u8>;
    fn next(&mut self) -> Option<Vec<u8>> {
        let items: Vec<String> = self
            .lines
            .by_ref()
            .take(self.page)
            .map(|l| l.expect("read"))
            .collect();
        if items.is_empty() {
            return None;
        }
        self.index += 1;
        let more = self.lines.peek().is_some();
        Some(list_body(
            self.kind.list_kind(),
            &items,
            more.then_some(self.index),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// The consumers.

/// kube-runtime's default list page size: what a reflector's watcher asks for.
fn default_page() -> usize {
    watcher::Config::default().page_size.unwrap_or(500) as usize
}

/// readygate's watcher path (`cache::drive`): each page's objects fed through `cache::Feed`
/// exactly as the watcher does (applied in place; at the end of a list, what it did not see is
/// dropped). Pods are decoded as `WatchedPod`, as the product's pod watcher does.
struct Readygate {
    cache: Arc<Cache>,
    pods: Feed<WatchedPod>,
    services: Feed<WatchedService>,
    bindings: Feed<WatchedBinding>,
}

impl Default for Readygate {
    fn default() -> Self {
        let cache = Arc::new(Cache::default());
        Readygate {
            pods: Feed::new(cache.clone()),
            services: Feed::new(cache.clone()),
            bindings: Feed::new(cache.clone()),
            cache,
        }
    }
}

fn feed_page<K: Cached>(feed: &mut Feed<K>, body: &[u8]) {
    let list: ObjectList<K> = serde_json::from_slice(body).expect("list page");
    for o in &list.items {
        feed.init_apply(o);
    }
}

impl Readygate {
    /// The page size the product's watcher of this kind asks for.
    fn page(kind: Kind) -> usize {
        (match kind {
            Kind::Pod => <WatchedPod as Cached>::PAGE_SIZE,
            Kind::Service => <Service as Cached>::PAGE_SIZE,
            Kind::Binding => <TargetGroupBinding as Cached>::PAGE_SIZE,
        }) as usize
    }
    fn start(&mut self, kind: Kind) {
        match kind {
            Kind::Pod => self.pods.init(),
            Kind::Service => self.services.init(),
            Kind::Binding => self.bindings.init(),
        }
    }
    fn feed(&mut self, kind: Kind, body: &[u8]) {
        match kind {
            Kind::Pod => feed_page(&mut self.pods, body),
            Kind::Service => feed_page(&mut self.services, body),
            Kind::Binding => feed_page(&mut self.bindings, body),
        }
    }
    fn done(&mut self, kind: Kind) {
        match kind {
            Kind::Pod => self.pods.init_done(),
            Kind::Service => self.services.init_done(),
            Kind::Binding => self.bindings.init_done(),
        }
    }
}

/// A kube-runtime reflector store per kind, fed the same watcher events.
struct Reflector {
    strip_managed_fields: bool,
    pods: Writer<Pod>,
    services: Writer<Service>,
    bindings: Writer<TargetGroupBinding>,
}

fn reflect_page<K>(body: &[u8], w: &mut Writer<K>, strip: bool)
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + 'static,
{
    let list: ObjectList<K> = serde_json::from_slice(body).expect("list page");
    for mut o in list.items {
        if strip {
            // What `WatchStreamExt::modify` is typically used for.
            o.meta_mut().managed_fields = None;
        }
        w.apply_watcher_event(&Event::InitApply(o));
    }
}

impl Reflector {
    fn new(strip_managed_fields: bool) -> Self {
        let mut r = Reflector {
            strip_managed_fields,
            pods: Writer::default(),
            services: Writer::default(),
            bindings: Writer::default(),
        };
        r.pods.apply_watcher_event(&Event::Init);
        r.services.apply_watcher_event(&Event::Init);
        r.bindings.apply_watcher_event(&Event::Init);
        r
    }
    fn feed(&mut self, kind: Kind, body: &[u8]) {
        let s = self.strip_managed_fields;
        match kind {
            Kind::Pod => reflect_page(body, &mut self.pods, s),
            Kind::Service => reflect_page(body, &mut self.services, s),
            Kind::Binding => reflect_page(body, &mut self.bindings, s),
        }
    }
    fn done(&mut self, kind: Kind) {
        match kind {
            Kind::Pod => self.pods.apply_watcher_event(&Event::InitDone),
            Kind::Service => self.services.apply_watcher_event(&Event::InitDone),
            Kind::Binding => self.bindings.apply_watcher_event(&Event::InitDone),
        }
    }
}

enum Consumer {
    Readygate(Box<Readygate>),
    Reflector(Box<Reflector>),
}

impl Consumer {
    fn page(&self, kind: Kind) -> usize {
        match self {
            Consumer::Readygate(_) => Readygate::page(kind),
            Consumer::Reflector(_) => default_page(),
        }
    }
    fn feed(&mut self, kind: Kind, body: &[u8]) {
        match self {
            Consumer::Readygate(r) => r.feed(kind, body),
            Consumer::Reflector(r) => r.feed(kind, body),
        }
    }
    fn done(&mut self, kind: Kind) {
        match self {
            Consumer::Readygate(r) => r.done(kind),
            Consumer::Reflector(r) => r.done(kind),
        }
    }
    fn counts(&self) -> (usize, usize, usize) {
        match self {
            Consumer::Readygate(r) => r.cache.read().counts(),
            Consumer::Reflector(r) => (
                r.bindings.as_reader().len(),
                r.services.as_reader().len(),
                r.pods.as_reader().len(),
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Child: one variant, one process.

/// What else a readygate process holds: a multi-threaded tokio runtime, a kube client, the AWS
/// SDK client and the metrics registry (no connection is made).
fn runtime_and_clients() -> (tokio::runtime::Runtime, Box<dyn std::any::Any>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let held = rt.block_on(async {
        readygate::install_crypto_provider();
        let metrics = Arc::new(readygate::metrics::Metrics::new());
        let budget = Arc::new(readygate::budget::Budget::new(5.0, 10));
        let elb = readygate::elbv2::Elbv2::with_endpoint(
            "http://127.0.0.1:9",
            "us-west-2",
            budget,
            metrics.clone(),
        )
        .await;
        let config = kube::Config::new("https://127.0.0.1:6443".parse().expect("uri"));
        let client = kube::Client::try_from(config).expect("kube client");
        Box::new((metrics, elb, client)) as Box<dyn std::any::Any>
    });
    (rt, held)
}

/// Heap bytes one cached pod's fields take (the first pod in the index), by field.
fn pod_breakdown(cache: &Cache) {
    let ix = cache.read();
    let Some((_, name, p)) = ix.pods().next() else {
        return;
    };
    fn cost<T: Clone>(v: &T) -> usize {
        let before = LIVE.load(Ordering::Relaxed);
        let c = v.clone();
        let n = LIVE.load(Ordering::Relaxed) - before;
        drop(c);
        n
    }
    // The same labels in a sorted Vec (a BTreeMap allocates a leaf of 11 slots).
    let labels_vec: Vec<(String, String)> = p
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    println!(
        "INFO pod_fields name={} uid={} labels({})={} (as a sorted Vec: {}) ips={} container_ports({})={} gates({})={} conditions({})={} total={} inline={}",
        name.len(),
        cost(&p.uid),
        p.labels.len(),
        cost(&p.labels),
        cost(&labels_vec),
        cost(&p.ips),
        p.container_ports.len(),
        cost(&p.container_ports),
        p.gates.len(),
        cost(&p.gates),
        p.conditions.len(),
        cost(&p.conditions),
        cost(&Box::new(p.clone())),
        size_of::<readygate::domain::Pod>()
    );
}

fn child(variant: &str, dir: &Path) {
    stage("start");
    let mut consumer = match variant {
        "readygate" => Consumer::Readygate(Box::default()),
        "reflector" => Consumer::Reflector(Box::new(Reflector::new(false))),
        "stripped" => Consumer::Reflector(Box::new(Reflector::new(true))),
        _ => {
            // The process alone, then with the runtime and clients.
            let _keep = runtime_and_clients();
            trim();
            stage("runtime");
            return;
        }
    };
    let mut pages = Vec::new();
    for kind in KINDS {
        let page = consumer.page(kind);
        pages.push(page.to_string());
        for body in Pages::open(dir, kind, page) {
            consumer.feed(kind, &body);
        }
        consumer.done(kind);
        stage(&format!("{kind:?}").to_lowercase());
    }
    let (b, s, p) = consumer.counts();
    println!("INFO counts {b} {s} {p}");
    println!("INFO pages {}", pages.join("/"));
    trim();
    stage("trimmed");
    if let Consumer::Readygate(r) = &mut consumer {
        pod_breakdown(&r.cache);
        let _keep = runtime_and_clients();
        trim();
        stage("runtime");
        // A pod re-list (the watcher's answer to 410 Gone), applied in place.
        r.start(Kind::Pod);
        for body in Pages::open(dir, Kind::Pod, Readygate::page(Kind::Pod)) {
            r.feed(Kind::Pod, &body);
        }
        stage("relisting");
        r.done(Kind::Pod);
        stage("relisted");
        trim();
        stage("relisted_trimmed");
    }
    drop(consumer);
}

// ---------------------------------------------------------------------------------------------
// Parent: generate the objects once, run every variant in its own process, print the comparison.

#[derive(Default, Clone, Copy)]
struct Stage {
    rss: u64,
    hwm: u64,
    live: u64,
}

#[derive(Default)]
struct Report {
    stages: BTreeMap<String, Stage>,
    info: BTreeMap<String, String>,
}

impl Report {
    fn get(&self, s: &str) -> Option<Stage> {
        self.stages.get(s).copied()
    }
    /// VmHWM at a stage: the peak up to it.
    fn peak(&self, s: &str) -> u64 {
        self.get(s).map_or(0, |x| x.hwm)
    }
    fn live(&self, s: &str) -> u64 {
        self.get(s)
            .map_or(0, |x| x.live)
            .saturating_sub(self.get("start").map_or(0, |x| x.live))
    }
}

fn run_child(variant: &str, dir: &Path) -> Report {
    let exe = std::env::current_exe().expect("own path");
    let out = Command::new(exe)
        .arg("--child")
        .arg(variant)
        .arg("--dir")
        .arg(dir)
        .output()
        .expect("run child");
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        panic!("child {variant} failed: {}", out.status);
    }
    let mut r = Report::default();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["STAGE", name, rss, hwm, live, _peak] => {
                let n = |v: &str| v.parse().unwrap_or(0);
                r.stages.insert(
                    name.to_string(),
                    Stage {
                        rss: n(rss),
                        hwm: n(hwm),
                        live: n(live),
                    },
                );
            }
            ["INFO", key, rest @ ..] => {
                r.info.insert(key.to_string(), rest.join(" "));
            }
            _ => {}
        }
    }
    r
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn mib_b(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn num(args: &[String], name: &str, default: usize) -> usize {
    arg(args, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const VARIANTS: [(&str, &str); 4] = [
    ("empty", "process alone, no objects"),
    ("readygate", "readygate caches (the product's watcher path)"),
    ("reflector", "reflector stores: full k8s-openapi objects"),
    ("stripped", "reflector stores, managedFields stripped"),
];

// ---------------------------------------------------------------------------------------------
// The real binary: `readygate serve --controller false` against an API server that answers
// the four lists (paged by the client's `limit` and `continue`) and holds watches open without
// events.

mod real {
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

    use super::{KINDS, Kind, Shape, list_body, mib};

    type Lists = HashMap<&'static str, ((&'static str, &'static str), Vec<String>)>;

    const PODS: &str = "/api/v1/pods";
    const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/readygate-system/leases";
    const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/readygate-system/leases/readygate";
    /// The lease duration readygate writes; the bench's own holder uses it too.
    const LEASE_SECS: u64 = 15;
    /// The bench's stand-in for another replica holding the lease.
    const HOLDER: &str = "bench-holder";

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
        let status = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#;
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
            if server.holder_alive.load(Ordering::Relaxed) {
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
            tokio::time::sleep(Duration::from_secs(5)).await;
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

    fn status(pid: u32) -> (u64, u64) {
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

    /// Waits (at most `within`) until the API server has served a complete pod list after
    /// `lists` of them; when the last page went out.
    async fn pods_listed(server: &Server, lists: usize, within: Duration) -> Option<Instant> {
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

    fn verdict(kib: u64, peak: u64, target_mib: u64) -> &'static str {
        match (kib <= target_mib * 1024, peak <= target_mib * 1024) {
            (true, true) => "met (peak too)",
            (true, false) => "met (peak above)",
            (false, _) => "NOT met",
        }
    }

    pub fn measure(dir: &Path, shape: &Shape) {
        println!();
        let Some(bin) = binary() else {
            println!(
                "real binary: skipped (no target/release/readygate nor target/debug/readygate; run `cargo build --release --bin readygate` first)"
            );
            return;
        };
        let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
        let stale = matches!((built, newest_source()), (Some(b), Some(s)) if b < s);
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
            return;
        }
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
        let kept = (0..shape.pods)
            .filter(|&p| shape.is_gated(p) && shape.has_binding(shape.service_of_pod(p)))
            .count();

        let server = Arc::new(Server {
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
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let api = listener.local_addr().expect("addr");
            let app = axum::Router::new().fallback(handle).with_state(server.clone());
            tokio::spawn(async move { axum::serve(listener, app).await });
            tokio::spawn(hold(server.clone()));
            let kubeconfig = work.path().join("kubeconfig");
            std::fs::write(
                &kubeconfig,
                format!(
                    "apiVersion: v1\nkind: Config\nclusters:\n- name: bench\n  cluster:\n    server: http://{api}\ncontexts:\n- name: bench\n  context:\n    cluster: bench\n    user: bench\ncurrent-context: bench\nusers:\n- name: bench\n  user: {{}}\n"
                ),
            )
            .expect("kubeconfig");
            println!(
                "real binary {}{}: `readygate serve` against a local API server on 127.0.0.1 (lists, watches, the Lease, status PATCHes and Events)",
                bin.display(),
                if stale { " (OLDER than src/: rebuild it)" } else { "" }
            );
            println!(
                "  cluster: {} pods, of which {kept} carry a gate, in {} opted-in namespaces; the other {} in {} namespaces not opted in, without our gate",
                shape.pods,
                shape.namespaces,
                shape.pods - kept,
                shape.namespaces
            );
            let starts = || server.pod_list_starts.load(Ordering::Relaxed);

            // 1. The process alone: empty lists.
            server.empty.store(true, Ordering::Relaxed);
            let mut r = Replica::start(&bin, work.path(), &kubeconfig, None);
            let synced = r.ready().await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            let alone = status(r.pid());
            r.stop();
            server.empty.store(false, Ordering::Relaxed);
            println!(
                "  {:<44} ready in {:>5}: RSS {:>6.1} MiB, peak {:>6.1} MiB",
                "webhook-only, no objects (empty lists)",
                synced.map_or("never".into(), |t| format!("{:.1} s", t.as_secs_f64())),
                mib(alone.0),
                mib(alone.1)
            );

            // 2. A webhook-only replica.
            let before = starts();
            let mut r = Replica::start(&bin, work.path(), &kubeconfig, None);
            let synced = r.ready().await;
            let at_ready = status(r.pid());
            tokio::time::sleep(Duration::from_secs(5)).await;
            let webhook = status(r.pid());
            let webhook_split = rollup(r.pid());
            let webhook_peak = webhook.1.max(at_ready.1);
            let webhook_pods = cached_pods(r.admin).await;
            r.stop();
            let webhook_lists = starts() - before;
            println!(
                "  {:<44} ready in {:>5}: RSS {:>6.1} MiB (5 s later {:>6.1} MiB), peak {:>6.1} MiB; pod lists {webhook_lists}, cached pods {}; target <= 48 MiB: {}",
                "webhook-only replica (--controller false)",
                synced.map_or("never".into(), |t| format!("{:.1} s", t.as_secs_f64())),
                mib(at_ready.0),
                mib(webhook.0),
                mib(webhook_peak),
                webhook_pods.map_or("?".into(), |n| n.to_string()),
                verdict(webhook.0.max(at_ready.0), webhook_peak, 48)
            );
            println!(
                "  {:<44} of which anonymous (heap, stacks) {:.1} MiB, file-backed (the binary's pages) {:.1} MiB",
                "",
                mib(webhook_split.0),
                mib(webhook_split.1)
            );

            // 3. A follower (another replica holds the lease), then its takeover.
            server.holder_alive.store(true, Ordering::Relaxed);
            while server.holder_renewed.lock().unwrap_or_else(|e| e.into_inner()).is_none() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let before = starts();
            let mut r = Replica::start(&bin, work.path(), &kubeconfig, Some("bench-follower"));
            let synced = r.ready().await;
            tokio::time::sleep(Duration::from_secs(10)).await;
            let follower = status(r.pid());
            let follower_pods = cached_pods(r.admin).await;
            let follower_lists = starts() - before;
            println!(
                "  {:<44} ready in {:>5}: RSS {:>6.1} MiB 10 s later, peak {:>6.1} MiB; pod lists {follower_lists}, cached pods {}",
                "follower (--controller true, lease held)",
                synced.map_or("never".into(), |t| format!("{:.1} s", t.as_secs_f64())),
                mib(follower.0),
                mib(follower.1),
                follower_pods.map_or("?".into(), |n| n.to_string()),
            );
            // The holder goes away: it stops renewing, and the lease is free once it expires.
            let reset = reset_peak(r.pid());
            server.holder_alive.store(false, Ordering::Relaxed);
            let renewed = server
                .holder_renewed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .expect("renewed");
            let free = renewed + Duration::from_secs(LEASE_SECS);
            let lists = server.pod_lists.load(Ordering::Relaxed);
            let listed = pods_listed(&server, lists, Duration::from_secs(LEASE_SECS + 180)).await;
            let acquired = server
                .acquired
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .filter(|(who, t)| who == "bench-follower" && *t >= renewed);
            let mut takeover = None;
            match (acquired, listed) {
                (Some((_, taken)), Some(listed)) => {
                    let secs = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64();
                    takeover = Some(secs(free, listed));
                    println!(
                        "  takeover at {} pods: lease free (expired) -> all pods listed by the new leader {:.1} s (lease taken {:.1} s after it was free, pods listed {:.1} s after that)",
                        shape.pods,
                        secs(free, listed),
                        secs(free, taken),
                        secs(taken, listed)
                    );
                }
                (acquired, listed) => println!(
                    "  takeover: not seen within {} s (lease taken: {}, pods listed: {})",
                    LEASE_SECS + 180,
                    acquired.is_some(),
                    listed.is_some()
                ),
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
            let leader = status(r.pid());
            let leader_pods = cached_pods(r.admin).await;
            println!(
                "  {:<44} RSS {:>6.1} MiB 5 s after the list, peak during the takeover {}; cached pods {}; target <= 128 MiB: {}",
                "leader (the follower, after its takeover)",
                mib(leader.0),
                if reset { format!("{:>6.1} MiB", mib(leader.1)) } else { "n/a (VmHWM not reset)".into() },
                leader_pods.map_or("?".into(), |n| n.to_string()),
                verdict(leader.0, if reset { leader.1 } else { 0 }, 128)
            );
            // A re-list on the leader: the pod watch ends with 410 Gone.
            let reset = reset_peak(r.pid());
            let lists = server.pod_lists.load(Ordering::Relaxed);
            server.expire_pods.fetch_add(1, Ordering::Relaxed);
            let start = Instant::now();
            let relisted = pods_listed(&server, lists, Duration::from_secs(180)).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
            let relist = status(r.pid());
            println!(
                "  {:<44} {}: RSS {:>6.1} MiB 5 s later, peak during the re-list {}; target <= 128 MiB: {}",
                "leader, pod re-list after 410 Gone",
                relisted.map_or("not seen within 180 s".into(), |t| format!("listed in {:.1} s", t.saturating_duration_since(start).as_secs_f64())),
                mib(relist.0),
                if reset { format!("{:>6.1} MiB", mib(relist.1)) } else { "n/a (VmHWM not reset)".into() },
                verdict(relist.0, if reset { relist.1 } else { 0 }, 128)
            );
            r.stop();

            // 4. Baseline: the same objects with every namespace opted in, so the leader keeps
            // every pod, as every replica (webhook-only and followers too) did before.
            *server.lease.lock().unwrap_or_else(|e| e.into_inner()) = None;
            server.every_namespace_opted_in.store(true, Ordering::Relaxed);
            let lists = server.pod_lists.load(Ordering::Relaxed);
            let mut r = Replica::start(&bin, work.path(), &kubeconfig, Some("bench-baseline"));
            let synced = r.ready().await;
            let start = Instant::now();
            let listed = pods_listed(&server, lists, Duration::from_secs(180)).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
            let all = status(r.pid());
            let all_pods = cached_pods(r.admin).await;
            r.stop();
            println!(
                "  {:<44} ready in {:>5}, pods listed {}: RSS {:>6.1} MiB 5 s later, peak {:>6.1} MiB; cached pods {}",
                "baseline: every pod kept (all opted in)",
                synced.map_or("never".into(), |t| format!("{:.1} s", t.as_secs_f64())),
                listed.map_or("never".into(), |t| format!("{:.1} s later", t.saturating_duration_since(start).as_secs_f64())),
                mib(all.0),
                mib(all.1),
                all_pods.map_or("?".into(), |n| n.to_string()),
            );
            server.every_namespace_opted_in.store(false, Ordering::Relaxed);
            let ratio = |a: u64| a as f64 / all.0.max(1) as f64;
            println!(
                "  RSS ratios against that baseline (same run): leader {:.2}, follower {:.2}, webhook-only {:.2}; pods held: leader {} of {}",
                ratio(leader.0),
                ratio(follower.0),
                ratio(webhook.0),
                leader_pods.map_or("?".into(), |n| n.to_string()),
                shape.pods
            );
            println!(
                "  targets: leader <= 128 MiB {}; webhook-only <= 48 MiB {}; no pod list by the webhook-only replica or the follower: {}; takeover {}",
                verdict(leader.0, 0, 128),
                verdict(webhook.0.max(at_ready.0), 0, 48),
                if webhook_lists == 0 && follower_lists == 0 { "met" } else { "NOT met" },
                takeover.map_or("not measured".into(), |t| format!("{t:.1} s"))
            );
            println!(
                "  writes answered (status PATCHes, Events): {}",
                server.writes.load(Ordering::Relaxed)
            );
            let limits = server.limits.lock().unwrap_or_else(|e| e.into_inner());
            let asked: Vec<String> = limits
                .iter()
                .map(|(path, l)| format!("{path} {}", l.iter().cloned().collect::<Vec<_>>().join(",")))
                .collect();
            println!("  list `limit` the binary asked for: {}", asked.join("; "));
        });
        rt.shutdown_timeout(Duration::from_secs(1));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let (Some(variant), Some(dir)) = (arg(&args, "--child"), arg(&args, "--dir")) {
        child(variant, Path::new(dir));
        return;
    }
    let shape = Shape {
        namespaces: num(&args, "--namespaces", 50).max(1),
        services: num(&args, "--services", 1000).max(1),
        bindings: num(&args, "--bindings", 1000),
        pods: num(&args, "--pods", 10_000),
        gated: 0,
    };
    let shape = Shape {
        gated: num(&args, "--gated", shape.pods).min(shape.pods),
        ..shape
    };
    assert!(
        shape.bindings <= shape.services,
        "one binding per Service at most"
    );
    let profile = if cfg!(debug_assertions) {
        "dev (debug)"
    } else {
        "release"
    };
    println!(
        "bench_memory, {profile} build: {} pods, {} Services, {} TargetGroupBindings in {} namespaces",
        shape.pods, shape.services, shape.bindings, shape.namespaces
    );
    let t = Instant::now();
    let temp = tempfile::tempdir().expect("temp dir");
    // `--keep DIR`: generate there once, and reuse what an earlier run left with the same
    // options (the issue's shape takes minutes to generate).
    let dir = match arg(&args, "--keep") {
        Some(d) => Path::new(d).to_path_buf(),
        None => temp.path().to_path_buf(),
    };
    std::fs::create_dir_all(&dir).expect("objects dir");
    let stamp = format!("{shape:?}");
    let sizes = if std::fs::read_to_string(dir.join("shape")).ok() == Some(stamp.clone()) {
        KINDS
            .iter()
            .map(|&k| {
                let text = std::fs::read_to_string(dir.join(k.file())).expect("read objects");
                (k, text.lines().count(), text.len())
            })
            .collect()
    } else {
        let sizes = generate(&shape, &dir);
        std::fs::write(dir.join("shape"), &stamp).expect("write shape");
        sizes
    };
    let dir = dir.as_path();
    for (kind, n, bytes) in &sizes {
        println!(
            "  {kind:?}: {n} objects, {} B of JSON each on average",
            bytes / (*n).max(1)
        );
    }
    eprintln!("  generated in {:.1}s", t.elapsed().as_secs_f64());

    if arg(&args, "--only") == Some("real") {
        real::measure(dir, &shape);
        return;
    }
    let mut reports = BTreeMap::new();
    for (v, _) in VARIANTS {
        let t = Instant::now();
        reports.insert(v, run_child(v, dir));
        eprintln!("  {v}: {:.1}s", t.elapsed().as_secs_f64());
    }
    let r = |v: &str| &reports[v];
    let info = |v: &str, key: &str| r(v).info.get(key).cloned().unwrap_or_default();
    println!();
    println!(
        "RSS in MiB from /proc/self/status: start, peak of the load (VmHWM), after the load, after malloc_trim(0);"
    );
    println!(
        "heap = live bytes the caches hold (counted); pages = list page size for bindings/services/pods."
    );
    println!(
        "{:<58} {:>12} {:>6} {:>6} {:>6} {:>8} {:>9} {:>18}",
        "variant", "pages", "start", "peak", "loaded", "trimmed", "heap MiB", "cached (b s p)"
    );
    for (v, what) in VARIANTS.iter().skip(1) {
        let rep = r(v);
        let opt = |s: Option<Stage>| s.map_or("-".to_string(), |s| format!("{:.1}", mib(s.rss)));
        println!(
            "{:<58} {:>12} {:>6} {:>6.1} {:>6} {:>8} {:>9.2} {:>18}",
            format!("{v}: {what}"),
            info(v, "pages"),
            opt(rep.get("start")),
            mib(rep.peak("trimmed")),
            opt(rep.get("pod")),
            opt(rep.get("trimmed")),
            mib_b(rep.live("trimmed")),
            info(v, "counts"),
        );
    }
    println!();
    let rg = r("readygate");
    let (hb, hs, hp) = (
        rg.live("binding"),
        rg.live("service") - rg.live("binding"),
        rg.live("pod") - rg.live("service"),
    );
    println!(
        "readygate cache heap by kind: bindings {:.2} MiB ({} B each), services {:.2} MiB ({} B each), pods {:.2} MiB ({} B each)",
        mib_b(hb),
        hb / shape.bindings.max(1) as u64,
        mib_b(hs),
        hs / shape.services as u64,
        mib_b(hp),
        hp / shape.pods.max(1) as u64
    );
    println!(
        "one cached pod, heap bytes by field: {}",
        info("readygate", "pod_fields")
    );
    let heap = |v: &str| r(v).live("trimmed").max(1) as f64;
    let rss = |v: &str, s: &str| r(v).get(s).map_or(0, |s| s.rss);
    println!(
        "cache heap ratio: reflector / readygate = {:.1}x; reflector without managedFields / readygate = {:.1}x",
        heap("reflector") / heap("readygate"),
        heap("stripped") / heap("readygate"),
    );
    println!(
        "steady RSS ratio (trimmed): reflector / readygate = {:.1}x",
        rss("reflector", "trimmed") as f64 / rss("readygate", "trimmed").max(1) as f64
    );
    let total = rss("readygate", "runtime");
    println!(
        "readygate with a multi-thread tokio runtime, a kube client, the AWS SDK client and metrics (those alone: {:.1} MiB): RSS {:.1} MiB, peak {:.1} MiB; target <= 64 MiB {}",
        mib(rss("empty", "runtime")),
        mib(total),
        mib(rg.peak("runtime")),
        if total <= 64 * 1024 { "met" } else { "NOT met" }
    );
    let mib_at = |s: &str| mib(rss("readygate", s));
    println!(
        "  then a pod re-list: heap {:.1} MiB before the list's end, peak {:.1} MiB; after it RSS {:.1} MiB (heap {:.1} MiB), after malloc_trim(0) {:.1} MiB",
        mib_b(rg.live("relisting")),
        mib(rg.peak("relisted")),
        mib_at("relisted"),
        mib_b(rg.live("relisted")),
        mib_at("relisted_trimmed"),
    );
    real::measure(dir, &shape);
}
