//! Memory of readygate's caches with 10,000 pods, 1,000 Services and 1,000 TargetGroupBindings,
//! against kube-runtime reflector stores of the same objects, measured in the same run.
//!
//!     cargo build --bin readygate && cargo run --example bench_memory
//!     (options: --pods 10000 --gated 10000 --services 1000 --bindings 1000 --namespaces 50
//!      --only real --keep DIR --api fake|real|both --takeovers 3 --status all|gated)
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
//! `target/debug/readygate`) runs as separate processes, one at a time, against an API server
//! chosen with `--api` (ELBv2 at a closed port; VmRSS / VmHWM from /proc/PID/status):
//!
//! - `--api fake` (the default): an in-process API server on 127.0.0.1 that serves the same
//!   objects, byte for byte, as lists paged by the `limit` the client asks for, holds watches
//!   open, and answers the Lease (get, create, patch), status PATCHes and Events. It measures
//!   readygate's own cost apart from an API server's speed.
//! - `--api real`: the rig's kube-apiserver and etcd (`rig::cluster`, in the rig's private
//!   network namespace; no controller-manager or scheduler, which would garbage-collect or
//!   bind the bench's pods; `$RIG_K8S_BIN_DIR` names prebuilt binaries), etcd's quota raised to
//!   four times the objects' JSON when that is above the rig's 8 GiB. The bench loads the
//!   objects first (32 requests in flight: the pods' ServiceAccounts, Services, bindings, then
//!   each pod created and its status written through the status subresource; `--status gated`
//!   writes only the gated pods' status), as a client writes them: the server sets uid,
//!   resourceVersion, clusterIP and its own managedFields (two entries per pod, the bench's
//!   create and status write, where the generated pods carry two or three). readygate
//!   authenticates as a user of its own, and what it asked for (its pod lists page by page, its
//!   Lease writes, status PATCHes, Events, the `limit` of each list) is read back from the API
//!   server's audit log; the Lease is held by the bench through the API server, and a watch
//!   of it tells when readygate took it (its first write after the expiry only clears the
//!   holder, as the fake server sees too). The load's rate, kube-apiserver's and etcd's
//!   memory and etcd's database size are printed too. kube-apiserver keeps about 120 MiB per
//!   1,000 of these pods (decoded in its watch cache, with their events), so the bench starts
//!   the control plane with `GOMEMLIMIT=10GiB` unless one is set: at 100,000 pods its heap
//!   sits at that limit, which slows the lists it serves.
//! - `--api both`: the two one after the other in the same run, then side by side with the
//!   ratio real / fake.
//!
//! Each runs the same sequence:
//!
//! - webhook-only (`--controller false`), first with no objects, then with the objects: it must
//!   list no pods;
//! - a follower (`--controller true` while the bench's own holder renews the Lease): no pods
//!   either; then the holder stops renewing and the follower takes over once the lease has
//!   expired: the takeover time runs from that expiry to the last page of the new leader's pod
//!   list (`--takeovers N` times, 3 by default, the median printed); then the leader's RSS, and
//!   a pod re-list on the leader. The fake server forces it by ending the pod watch with
//!   `410 Gone`; a real API server cannot be told to expire a watch, so there the bench opts an
//!   empty namespace in (or out again), on which readygate lists the pods again the same way
//!   (a new watcher, its list applied in place over the pods it holds);
//! - the baseline, same run: the same objects with every namespace opted in, so the leader keeps
//!   every pod, as every replica did before pods were the leader's alone.
//!
//! The issue's shape (100,000 pods of which 10,000 gated, 10,000 Services and bindings):
//!
//!     cargo build --release --bin readygate && cargo run --release --example bench_memory -- \
//!         --pods 100000 --gated 10000 --services 10000 --bindings 10000 --only real --api real
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
        conditions.push(json!({ "type": g, "status": "True", "reason": "", "message": "", "lastTransitionTime": started }));
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
            "labels": { "ingress.k8s.aws/stack-name": app, "ingress.k8s.aws/stack-namespace": ns, "ingress.k8s.aws/resource": format!("{ns}.{app}-http-80") }, // a label value: no '/' or ':'
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

mod apiserver;
mod real;

/// `GOMEMLIMIT` for the real control plane's Go processes.
const GO_MEM_LIMIT: &str = "10GiB";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let (Some(variant), Some(dir)) = (arg(&args, "--child"), arg(&args, "--dir")) {
        child(variant, Path::new(dir));
        return;
    }
    let api = match arg(&args, "--api").unwrap_or("fake") {
        "fake" => real::Api::Fake,
        "real" => real::Api::Real,
        "both" => real::Api::Both,
        other => panic!("--api {other}: fake, real or both"),
    };
    let status_of = match arg(&args, "--status").unwrap_or("all") {
        "all" => apiserver::StatusOf::All,
        "gated" => apiserver::StatusOf::Gated,
        other => panic!("--status {other}: all or gated"),
    };
    let takeovers = num(&args, "--takeovers", 3).max(1);
    if api != real::Api::Fake {
        // The rig's control plane lives in a private network namespace: enter it before any
        // thread starts, so that the runtime's threads and every process started inherit it.
        rig::netns::enter().expect("entering the rig's network namespace");
        // kube-apiserver's heap grows by about 120 MiB per 1,000 of the bench's pods (its watch
        // cache keeps them decoded, and their events): a soft limit on the Go heap of the
        // control plane it starts keeps it from taking the shared machine's memory at 100,000
        // pods (unless the caller set one).
        if std::env::var_os("GOMEMLIMIT").is_none() {
            // SAFETY: no other thread has started yet.
            unsafe { std::env::set_var("GOMEMLIMIT", GO_MEM_LIMIT) };
        }
        readygate::install_crypto_provider();
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
        real::measure(dir, &shape, api, takeovers, status_of);
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
    real::measure(dir, &shape, api, takeovers, status_of);
}
