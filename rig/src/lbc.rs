//! A model of the AWS Load Balancer Controller v3.5.0's TargetGroupBinding reconciler in IP mode,
//! for CI, where the real controller cannot be built. It follows the real one's source
//! (`controllers/elbv2/targetgroupbinding_controller.go`, `controllers/elbv2/eventhandlers/`,
//! `pkg/targetgroupbinding/resource_manager.go`, `targets_manager.go`,
//! `pkg/backend/endpoint_resolver.go`, `pkg/aws/throttle/defaults.go`), step for step:
//!
//! - **Queue.** A binding is reconciled at once on a change of itself, of its Service's
//!   EndpointSlices (ports or endpoints), and of any pod that carries
//!   `target-health.elbv2.k8s.aws/<binding>` (or the legacy `target-health.alb.ingress.k8s.aws/`)
//!   in `spec.readinessGates`; again [`LbcConfig::requeue`] after a reconcile that left a gate
//!   not True; after a failure with the workqueue's per-item exponential back-off (5 ms doubling
//!   to [`LbcConfig::max_backoff`]). Service and Node changes re-queue only instance-mode
//!   bindings.
//! - **Finalizer.** `elbv2.k8s.aws/resources` is added to every binding it reconciles (a merge
//!   patch with the resourceVersion as precondition) and removed after the clean-up once the
//!   binding is being deleted.
//! - **Registration.** Endpoints come from the Service's EndpointSlices: every ready endpoint
//!   (`ready` true or unset), and every not-ready one whose pod is ContainersReady on a Node whose
//!   Ready is True and that is not terminating — gated or not (on a Node whose Ready is Unknown,
//!   only when nothing else is ready: the `EndpointsFailOpen` feature, on by default). Endpoints
//!   without a target that is not draining are registered (RegisterTargets); targets without an
//!   endpoint are deregistered (DeregisterTargets) — the model deregisters them
//!   [`LbcConfig::reaction`] after it first saw them go, standing for the real one's latency on a
//!   busy cluster. RegisterTargets and DeregisterTargets share a client-side token bucket
//!   (4/s, burst 20), Describe* another (50/s, burst 200).
//! - **Target health.** DescribeTargetHealth of the whole group on the first look, then, for
//!   [`LbcConfig::targets_cache_ttl`], only of the targets not `healthy` in its cache: a healthy
//!   target stays healthy in its eyes until the cache entry expires.
//! - **Conditions.** On every endpoint's pod that carries the binding's gate: a target `healthy` →
//!   True with empty reason and message; an endpoint not registered yet (or whose target is
//!   draining) → False `Elb.RegistrationInProgress` / "Target registration is in progress"; any
//!   other state → False with ELB's reason and description. Skipped when status, reason and
//!   message all equal the pod's condition in its cache; `lastTransitionTime` kept while the
//!   status holds; a strategic-merge patch of `pods/status` with `metadata.uid` as precondition.
//!   When the binding is deleted or its Service (or Service port) is gone: True with empty reason
//!   and message "Target Group Binding is deleted" on every gated pod of the namespace, after
//!   deregistering every target of the group.
//! - **Checkpoint.** After a reconcile that changed nothing and left no gate pending it writes
//!   `elbv2.k8s.aws/checkpoint` (a hash of the endpoints and the spec) on the binding; the next
//!   reconcile with the same endpoints and spec, and no gate condition on an endpoint's pod that
//!   is not True, stops there. It resets the checkpoint to "" before registering or
//!   deregistering. Then `status.observedGeneration`.
//!
//! What the real controller does that the model leaves out is listed in rig/README.md.
//! It calls the rig's load balancer in-process, counted under [`CALLER`]
//! ([`crate::elb::Elb::calls_by`]), and the API server with the client it is given (the AWS
//! controller's own ServiceAccount in the rig: [`crate::k8s::aws_lbc`]).

use crate::elb::{Elb, ElbError, TargetHealth, TargetState};
use crate::str_at;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The finalizer the AWS controller puts on every binding it reconciles
/// (`targetGroupBindingFinalizer` in `targetgroupbinding_controller.go`).
pub const FINALIZER: &str = "elbv2.k8s.aws/resources";
/// The reconcile checkpoint annotation and its timestamp (`pkg/annotations/constants.go`).
pub const CHECKPOINT: &str = "elbv2.k8s.aws/checkpoint";
pub const CHECKPOINT_TIMESTAMP: &str = "elbv2.k8s.aws/checkpoint-timestamp";
/// The prefix of a binding's gate: `target-health.elbv2.k8s.aws/<binding>`.
pub const GATE_PREFIX: &str = "target-health.elbv2.k8s.aws";
/// The aws-alb-ingress-controller v1 prefix; its pod handler re-queues on these too.
const LEGACY_GATE_PREFIX: &str = "target-health.alb.ingress.k8s.aws";
/// The name the load balancer counts the model's ELBv2 calls under.
pub const CALLER: &str = "aws-load-balancer-controller";

/// The controller's timings and limits. [`Default`] is the rig's: every timing compressed
/// tenfold like the load balancer's ([`crate::rig::RigConfig`]); the API rate limits at their real
/// figures, like the load balancer's Describe* bucket.
#[derive(Debug, Clone)]
pub struct LbcConfig {
    /// From an endpoint's leaving (pod deleted, Node not Ready) to DeregisterTargets: the real
    /// controller's watch, queue and reconcile on a busy cluster (`RigConfig::lbc_reaction`).
    pub reaction: Duration,
    /// `--targetgroupbinding-requeue-duration`: how soon a binding is reconciled again while a
    /// gate on one of its pods is not True. Real default 15 s; the rig's 1.5 s stands for it.
    pub requeue: Duration,
    /// How long a target group's DescribeTargetHealth answer is cached, healthy targets never
    /// re-described meanwhile (`defaultTargetsCacheTTL`). Real 5 min; the rig's 30 s stands
    /// for it.
    pub targets_cache_ttl: Duration,
    /// The workqueue's longest back-off after failed reconciles
    /// (`--targetgroupbinding-max-exponential-backoff-delay`). Real 1000 s; the rig's 100 s
    /// stands for it.
    pub max_backoff: Duration,
    /// RegisterTargets and DeregisterTargets together: (burst, per second). Real: 20, 4/s.
    pub register_limit: (f64, f64),
    /// Describe*: (burst, per second). Real: 200, 50/s.
    pub describe_limit: (f64, f64),
    /// `--watch-namespace`: the one namespace whose bindings, Services, EndpointSlices and pods
    /// it watches (None: all, the default).
    pub watch_namespace: Option<String>,
}

impl Default for LbcConfig {
    fn default() -> Self {
        Self {
            reaction: Duration::from_millis(500),
            requeue: Duration::from_millis(1500),
            targets_cache_ttl: Duration::from_secs(30),
            max_backoff: Duration::from_secs(100),
            register_limit: (20.0, 4.0),
            describe_limit: (200.0, 50.0),
            watch_namespace: None,
        }
    }
}

/// The running model; its tasks stop when it is dropped.
pub struct Lbc {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Lbc {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The TargetGroupBinding API (`elbv2.k8s.aws/v1beta1`).
pub fn target_group_bindings() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("elbv2.k8s.aws", "v1beta1", "TargetGroupBinding"),
        "targetgroupbindings",
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Binding,
    Service,
    Slice,
    Pod,
    Node,
}

/// (namespace, name).
type Key = (String, String);

/// One informer event: the object before and after (None: absent).
struct Change {
    kind: Kind,
    old: Option<Value>,
    new: Option<Value>,
}

fn key_of(v: &Value) -> Key {
    (
        str_at(v, "/metadata/namespace"),
        str_at(v, "/metadata/name"),
    )
}

/// Watches `api` and sends every change with the object's previous version (a relist sends the
/// differences).
fn follow<K>(
    api: Api<K>,
    kind: Kind,
    tx: mpsc::UnboundedSender<Change>,
) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
    K: Send + Sync + 'static,
{
    tokio::spawn(async move {
        let mut known: BTreeMap<Key, Value> = BTreeMap::new();
        let mut relist: Option<BTreeMap<Key, Value>> = None;
        let mut stream = watcher(api, watcher::Config::default()).boxed();
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, "load balancer controller model: watch error (it retries)");
                    continue;
                }
            };
            let send = |old: Option<Value>, new: Option<Value>| {
                let _ = tx.send(Change { kind, old, new });
            };
            match event {
                watcher::Event::Init => relist = Some(BTreeMap::new()),
                watcher::Event::InitApply(o) => {
                    if let (Some(r), Ok(v)) = (relist.as_mut(), serde_json::to_value(&o)) {
                        r.insert(key_of(&v), v);
                    }
                }
                watcher::Event::InitDone => {
                    let Some(r) = relist.take() else { continue };
                    for (k, old) in &known {
                        if !r.contains_key(k) {
                            send(Some(old.clone()), None);
                        }
                    }
                    for (k, new) in &r {
                        if known.get(k) != Some(new) {
                            send(known.get(k).cloned(), Some(new.clone()));
                        }
                    }
                    known = r;
                }
                watcher::Event::Apply(o) => {
                    if let Ok(v) = serde_json::to_value(&o) {
                        let old = known.insert(key_of(&v), v.clone());
                        send(old, Some(v));
                    }
                }
                watcher::Event::Delete(o) => {
                    if let Ok(v) = serde_json::to_value(&o) {
                        let old = known.remove(&key_of(&v));
                        send(old.or(Some(v)), None);
                    }
                }
            }
        }
    })
}

impl Lbc {
    /// Starts the model: it watches bindings, Services, EndpointSlices, pods and Nodes with
    /// `client` and calls `elb` in-process.
    pub async fn start(client: Client, elb: Arc<Elb>, config: LbcConfig) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let tgb = target_group_bindings();
        let ns = config.watch_namespace.clone();
        let bindings = match &ns {
            Some(ns) => Api::<DynamicObject>::namespaced_with(client.clone(), ns, &tgb),
            None => Api::all_with(client.clone(), &tgb),
        };
        let mut tasks = vec![
            follow(bindings, Kind::Binding, tx.clone()),
            follow(
                namespaced::<Service>(&client, &ns),
                Kind::Service,
                tx.clone(),
            ),
            follow(
                namespaced::<EndpointSlice>(&client, &ns),
                Kind::Slice,
                tx.clone(),
            ),
            follow(namespaced::<Pod>(&client, &ns), Kind::Pod, tx.clone()),
            follow(Api::<Node>::all(client.clone()), Kind::Node, tx),
        ];
        let mut controller = Controller::new(client, elb, config);
        tasks.push(tokio::spawn(async move { controller.run(rx).await }));
        Ok(Self { tasks })
    }
}

/// The API of a namespaced kind in `ns`, or in every namespace.
fn namespaced<K>(client: &Client, ns: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The informers' caches.
#[derive(Default)]
struct World {
    objects: BTreeMap<Kind, BTreeMap<Key, Value>>,
}

impl World {
    fn get(&self, kind: Kind, key: &Key) -> Option<&Value> {
        self.objects.get(&kind)?.get(key)
    }

    fn all(&self, kind: Kind) -> impl Iterator<Item = (&Key, &Value)> {
        self.objects.get(&kind).into_iter().flatten()
    }

    fn apply(&mut self, c: &Change) {
        let m = self.objects.entry(c.kind).or_default();
        match (&c.old, &c.new) {
            (_, Some(new)) => {
                m.insert(key_of(new), new.clone());
            }
            (Some(old), None) => {
                m.remove(&key_of(old));
            }
            (None, None) => {}
        }
    }
}

/// A target as its cache holds it: (id, port) and its last described health (None right after
/// the model registered or deregistered it).
#[derive(Debug, Clone)]
struct TargetInfo {
    id: String,
    port: u16,
    health: Option<TargetHealth>,
}

impl TargetInfo {
    fn state(&self) -> Option<TargetState> {
        self.health.as_ref().map(|h| h.state)
    }
    fn is_healthy(&self) -> bool {
        self.state() == Some(TargetState::Healthy)
    }
    fn is_draining(&self) -> bool {
        self.state() == Some(TargetState::Draining)
    }
    fn is_not_registered(&self) -> bool {
        self.health.as_ref().is_some_and(|h| {
            h.state == TargetState::Unused && h.reason == Some("Target.NotRegistered")
        })
    }
}

struct CacheItem {
    expires: Instant,
    targets: Vec<TargetInfo>,
}

/// A client-side token bucket that waits for its token (`rate.Limiter.Wait`).
struct Limiter {
    burst: f64,
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Limiter {
    fn new((burst, rate): (f64, f64)) -> Self {
        Self {
            burst,
            rate,
            tokens: burst,
            last: Instant::now(),
        }
    }

    async fn wait(&mut self) {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        self.tokens -= 1.0;
        if self.tokens < 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(-self.tokens / self.rate)).await;
        }
    }
}

/// A pod endpoint of a binding: its address and port, and its pod as the cache holds it.
#[derive(Debug, Clone)]
struct Endpoint {
    ip: String,
    port: u16,
    pod: Value,
}

impl Endpoint {
    fn id(&self) -> (String, u16) {
        (self.ip.clone(), self.port)
    }
}

#[derive(Debug)]
enum Outcome {
    /// Nothing more to do.
    Done,
    /// Reconcile again after this long (the requeue, or a deregistration falling due).
    After(Duration),
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("ELBv2: {0}")]
    Elb(#[from] ElbError),
    #[error("API server: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Other(String),
}

struct Controller {
    client: Client,
    elb: Arc<Elb>,
    config: LbcConfig,
    world: World,
    /// The workqueue: bindings to reconcile now…
    queued: VecDeque<Key>,
    /// …and later (`AddAfter`: one entry per binding, the earliest).
    waiting: BTreeMap<Key, Instant>,
    /// Failed reconciles in a row, per binding (the rate limiter's memory).
    failures: BTreeMap<Key, u32>,
    /// Targets by target group ARN.
    cache: BTreeMap<String, CacheItem>,
    /// Targets without an endpoint since when: (ARN, id, port).
    leaving: BTreeMap<(String, String, u16), Instant>,
    register_limit: Limiter,
    describe_limit: Limiter,
}

/// The binding a gate names, when it is one of the controller's (and a valid name).
fn binding_of_gate(gate: &str) -> Option<String> {
    [GATE_PREFIX, LEGACY_GATE_PREFIX].iter().find_map(|p| {
        let name = gate.strip_prefix(p)?.strip_prefix('/')?;
        let valid = !name.is_empty()
            && name.len() <= 253
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name.ends_with(|c: char| c.is_ascii_alphanumeric());
        valid.then(|| name.to_string())
    })
}

fn gates(pod: &Value) -> Vec<String> {
    pod.pointer("/spec/readinessGates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|g| str_at(g, "/conditionType"))
        .collect()
}

fn has_gate(pod: &Value, gate: &str) -> bool {
    gates(pod).iter().any(|g| g == gate)
}

/// What the real controller keeps of a pod (`k8s.PodInfo`): an update that changes none of it
/// re-queues nothing.
fn pod_info(pod: &Value) -> Value {
    let ports: Vec<&Value> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("ports"))
        .collect();
    json!({
        "uid": pod.pointer("/metadata/uid"),
        "created": pod.pointer("/metadata/creationTimestamp"),
        "ports": ports,
        "gates": pod.pointer("/spec/readinessGates"),
        "conditions": pod.pointer("/status/conditions"),
        "node": pod.pointer("/spec/nodeName"),
        "ip": pod.pointer("/status/podIP"),
    })
}

fn condition<'a>(o: &'a Value, t: &str) -> Option<&'a Value> {
    o.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c["type"] == t)
}

fn condition_status(o: &Value, t: &str) -> Option<String> {
    condition(o, t).map(|c| str_at(c, "/status"))
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Controller {
    fn new(client: Client, elb: Arc<Elb>, config: LbcConfig) -> Self {
        Self {
            client,
            elb,
            register_limit: Limiter::new(config.register_limit),
            describe_limit: Limiter::new(config.describe_limit),
            config,
            world: World::default(),
            queued: VecDeque::new(),
            waiting: BTreeMap::new(),
            failures: BTreeMap::new(),
            cache: BTreeMap::new(),
            leaving: BTreeMap::new(),
        }
    }

    async fn run(&mut self, mut rx: mpsc::UnboundedReceiver<Change>) {
        loop {
            if self.queued.is_empty() {
                let next = self.waiting.values().min().copied();
                tokio::select! {
                    c = rx.recv() => match c {
                        Some(c) => self.observe(c),
                        None => return,
                    },
                    _ = sleep_until_opt(next) => {}
                }
            }
            // The informers' caches are as fresh as the events received so far.
            while let Ok(c) = rx.try_recv() {
                self.observe(c);
            }
            let now = Instant::now();
            let ready: Vec<Key> = self
                .waiting
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(k, _)| k.clone())
                .collect();
            for key in ready {
                self.waiting.remove(&key);
                self.add(key);
            }
            if let Some(key) = self.queued.pop_front() {
                self.process(key).await;
            }
        }
    }

    /// `queue.Add`: due now.
    fn add(&mut self, key: Key) {
        if !self.queued.contains(&key) {
            self.queued.push_back(key);
        }
    }

    /// `queue.AddAfter`: due then, unless it is waiting for an earlier moment already.
    fn add_after(&mut self, key: Key, after: Duration) {
        let at = Instant::now() + after;
        let e = self.waiting.entry(key).or_insert(at);
        *e = (*e).min(at);
    }

    /// Updates the caches with one informer event and queues the bindings its event handler
    /// would.
    fn observe(&mut self, c: Change) {
        self.world.apply(&c);
        let obj = c
            .new
            .as_ref()
            .or(c.old.as_ref())
            .cloned()
            .unwrap_or_default();
        let (ns, name) = key_of(&obj);
        // The bindings of Service `svc` in this namespace with this target type.
        let bindings_of_service = |world: &World, svc: &str, target_type: &str| -> Vec<Key> {
            world
                .all(Kind::Binding)
                .filter(|((bns, _), b)| {
                    *bns == ns
                        && str_at(b, "/spec/serviceRef/name") == svc
                        && str_at(b, "/spec/targetType") == target_type
                })
                .map(|(k, _)| k.clone())
                .collect()
        };
        let keys: Vec<Key> = match c.kind {
            Kind::Binding => vec![(ns.clone(), name)],
            Kind::Service => {
                let ports =
                    |v: &Option<Value>| v.as_ref().map(|v| v.pointer("/spec/ports").cloned());
                if c.old.is_some() && c.new.is_some() && ports(&c.old) == ports(&c.new) {
                    vec![]
                } else {
                    // Its Service handler re-queues instance-mode bindings only: an IP-mode
                    // binding learns of its Service's deletion from the EndpointSlices' (or
                    // its next re-queue).
                    bindings_of_service(&self.world, &name, "instance")
                }
            }
            Kind::Slice => {
                let part = |v: &Option<Value>| {
                    v.as_ref()
                        .map(|v| (v.get("ports").cloned(), v.get("endpoints").cloned()))
                };
                if c.old.is_some() && c.new.is_some() && part(&c.old) == part(&c.new) {
                    vec![]
                } else {
                    let svc = str_at(&obj, "/metadata/labels/kubernetes.io~1service-name");
                    bindings_of_service(&self.world, &svc, "ip")
                }
            }
            Kind::Pod => {
                let changed = match (&c.old, &c.new) {
                    (Some(o), Some(n)) => pod_info(o) != pod_info(n),
                    _ => true,
                };
                if changed {
                    gates(&obj)
                        .iter()
                        .filter_map(|g| binding_of_gate(g))
                        .map(|b| (ns.clone(), b))
                        .collect()
                } else {
                    vec![]
                }
            }
            // Node events re-queue instance-mode bindings only.
            Kind::Node => vec![],
        };
        for k in keys {
            self.add(k);
        }
    }

    async fn process(&mut self, key: Key) {
        match self.reconcile(&key).await {
            Ok(outcome) => {
                self.failures.remove(&key);
                if let Outcome::After(d) = outcome {
                    self.add_after(key, d);
                }
            }
            Err(e) => {
                let n = self.failures.entry(key.clone()).or_default();
                let backoff = Duration::from_millis(5)
                    .saturating_mul(1u32 << (*n).min(30))
                    .min(self.config.max_backoff);
                *n += 1;
                tracing::info!(binding = %format!("{}/{}", key.0, key.1), error = %e, ?backoff,
                    "load balancer controller model: reconcile failed");
                self.add_after(key, backoff);
            }
        }
    }

    fn bindings_api(&self, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), ns, &target_group_bindings())
    }

    async fn reconcile(&mut self, key: &Key) -> Result<Outcome, Error> {
        let Some(tgb) = self.world.get(Kind::Binding, key).cloned() else {
            return Ok(Outcome::Done);
        };
        let finalizers: Vec<String> = tgb
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str().map(String::from))
            .collect();
        if tgb.pointer("/metadata/deletionTimestamp").is_some() {
            if finalizers.iter().any(|f| f == FINALIZER) {
                self.cleanup(&tgb).await?;
                let rest: Vec<&String> = finalizers.iter().filter(|f| *f != FINALIZER).collect();
                self.patch_finalizers(&tgb, json!(rest)).await?;
            }
            return Ok(Outcome::Done);
        }
        if !finalizers.iter().any(|f| f == FINALIZER) {
            let mut all = finalizers.clone();
            all.push(FINALIZER.to_string());
            self.patch_finalizers(&tgb, json!(all)).await?;
        }
        let target_type = tgb.pointer("/spec/targetType").and_then(Value::as_str);
        let Some(target_type) = target_type else {
            return Err(Error::Other(format!(
                "targetType is not specified: {}/{}",
                key.0, key.1
            )));
        };
        if target_type != "ip" {
            // Instance mode (NodePort targets) is not modelled.
            return Ok(Outcome::Done);
        }
        let outcome = self.reconcile_ip(&tgb).await?;
        if let Outcome::Done = outcome {
            self.update_status(&tgb).await?;
        }
        Ok(outcome)
    }

    /// `AddFinalizers`/`RemoveFinalizers`: a merge patch of the list with the resourceVersion
    /// the cache holds as precondition (a conflict fails the reconcile; the next one reads the
    /// cache again).
    async fn patch_finalizers(&self, tgb: &Value, finalizers: Value) -> Result<(), Error> {
        let (ns, name) = key_of(tgb);
        self.bindings_api(&ns)
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {
                    "finalizers": finalizers,
                    "resourceVersion": str_at(tgb, "/metadata/resourceVersion"),
                }})),
            )
            .await?;
        Ok(())
    }

    async fn update_status(&self, tgb: &Value) -> Result<(), Error> {
        let generation = tgb.pointer("/metadata/generation").and_then(Value::as_i64);
        let observed = tgb
            .pointer("/status/observedGeneration")
            .and_then(Value::as_i64);
        if generation.is_none() || generation == observed {
            return Ok(());
        }
        let (ns, name) = key_of(tgb);
        self.bindings_api(&ns)
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"observedGeneration": generation}})),
            )
            .await?;
        Ok(())
    }

    async fn update_checkpoint(&self, tgb: &Value, new: &str, old: &str) -> Result<(), Error> {
        if new == old {
            return Ok(());
        }
        let (ns, name) = key_of(tgb);
        let now = jiff::Timestamp::now().as_second().to_string();
        self.bindings_api(&ns)
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {
                    CHECKPOINT: new, CHECKPOINT_TIMESTAMP: now}}})),
            )
            .await?;
        Ok(())
    }

    /// `ResolvePodEndpoints`: None when the Service or its port is missing (`ErrNotFound`).
    fn resolve(&self, tgb: &Value) -> Option<Vec<Endpoint>> {
        let (ns, _) = key_of(tgb);
        let svc_name = str_at(tgb, "/spec/serviceRef/name");
        let svc = self
            .world
            .get(Kind::Service, &(ns.clone(), svc_name.clone()))?;
        let wanted = tgb.pointer("/spec/serviceRef/port");
        let svc_port = svc
            .pointer("/spec/ports")
            .and_then(Value::as_array)?
            .iter()
            .find(|p| match wanted {
                Some(Value::String(s)) => p.get("name").and_then(Value::as_str) == Some(s),
                Some(Value::Number(n)) => p.get("port") == Some(&Value::Number(n.clone())),
                _ => false,
            })?;
        let port_name = str_at(svc_port, "/name");
        let family = if str_at(tgb, "/spec/ipAddressType") == "ipv6" {
            "IPv6"
        } else {
            "IPv4"
        };
        let mut ready = Vec::new();
        let mut unknown = Vec::new();
        for (_, slice) in self.world.all(Kind::Slice).filter(|((sns, _), s)| {
            *sns == ns
                && str_at(s, "/metadata/labels/kubernetes.io~1service-name") == svc_name
                && str_at(s, "/addressType") == family
        }) {
            for port in slice
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if !port_name.is_empty() && str_at(port, "/name") != port_name {
                    continue;
                }
                let ep_port = port.get("port").and_then(Value::as_u64).unwrap_or(0) as u16;
                for ep in slice
                    .get("endpoints")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if str_at(ep, "/targetRef/kind") != "Pod" {
                        continue;
                    }
                    let Some(addr) = ep.pointer("/addresses/0").and_then(Value::as_str) else {
                        continue;
                    };
                    let mut pod_ns = str_at(ep, "/targetRef/namespace");
                    if pod_ns.is_empty() {
                        pod_ns = ns.clone();
                    }
                    let Some(pod) = self
                        .world
                        .get(Kind::Pod, &(pod_ns, str_at(ep, "/targetRef/name")))
                    else {
                        continue;
                    };
                    let endpoint = Endpoint {
                        ip: addr.to_string(),
                        port: ep_port,
                        pod: pod.clone(),
                    };
                    let c = &ep["conditions"];
                    if c.get("ready").is_none_or(|r| r.is_null() || *r == true) {
                        ready.push(endpoint);
                        continue;
                    }
                    if condition_status(pod, "ContainersReady").as_deref() != Some("True") {
                        continue;
                    }
                    let Some(node) = self
                        .world
                        .get(Kind::Node, &(String::new(), str_at(pod, "/spec/nodeName")))
                    else {
                        continue;
                    };
                    match condition_status(node, "Ready").as_deref() {
                        // A terminating endpoint on a healthy Node is not wanted.
                        Some("True") if c["terminating"] != true => ready.push(endpoint),
                        Some("Unknown") => unknown.push(endpoint),
                        _ => {}
                    }
                }
            }
        }
        // EndpointsFailOpen (on by default).
        Some(if ready.is_empty() { unknown } else { ready })
    }

    /// `calculateTGBReconcileCheckpoint`: the endpoints (address, port, pod creation time) and
    /// the spec, hashed.
    fn checkpoint(endpoints: &[Endpoint], tgb: &Value) -> String {
        let mut ids: Vec<String> = endpoints
            .iter()
            .map(|e| {
                let created = str_at(&e.pod, "/metadata/creationTimestamp")
                    .parse::<jiff::Timestamp>()
                    .map(|t| t.as_millisecond())
                    .unwrap_or(0);
                format!("{}:{}:{created}", e.ip, e.port)
            })
            .collect();
        ids.sort();
        let spec = tgb.get("spec").map(Value::to_string).unwrap_or_default();
        format!("{}/{}", sha256_hex(&ids.join(",")), sha256_hex(&spec))
    }

    async fn reconcile_ip(&mut self, tgb: &Value) -> Result<Outcome, Error> {
        let (ns, name) = key_of(tgb);
        let gate = format!("{GATE_PREFIX}/{name}");
        let arn = str_at(tgb, "/spec/targetGroupARN");
        let old_checkpoint = str_at(tgb, "/metadata/annotations/elbv2.k8s.aws~1checkpoint");
        let Some(endpoints) = self.resolve(tgb) else {
            tracing::info!(binding = %format!("{ns}/{name}"), "load balancer controller model: backend not found, cleaning up");
            self.cleanup(tgb).await?;
            self.update_checkpoint(tgb, "", &old_checkpoint).await?;
            return Ok(Outcome::Done);
        };
        let new_checkpoint = Self::checkpoint(&endpoints, tgb);
        if old_checkpoint == new_checkpoint {
            let flip = endpoints
                .iter()
                .any(|e| condition_status(&e.pod, &gate).is_some_and(|s| s != "True"));
            if !flip {
                return Ok(Outcome::Done);
            }
        }
        let targets = self.list_targets(&arn).await?;
        let not_draining: BTreeMap<(String, u16), TargetInfo> = targets
            .into_iter()
            .filter(|t| !t.is_draining())
            .map(|t| ((t.id.clone(), t.port), t))
            .collect();
        let by_id: BTreeMap<(String, u16), Endpoint> =
            endpoints.iter().map(|e| (e.id(), e.clone())).collect();
        let matched: Vec<(Endpoint, TargetInfo)> = by_id
            .iter()
            .filter_map(|(id, e)| Some((e.clone(), not_draining.get(id)?.clone())))
            .collect();
        let unmatched_endpoints: Vec<Endpoint> = by_id
            .iter()
            .filter(|(id, _)| !not_draining.contains_key(*id))
            .map(|(_, e)| e.clone())
            .collect();
        let unmatched_targets: Vec<(String, u16)> = not_draining
            .keys()
            .filter(|id| !by_id.contains_key(*id))
            .cloned()
            .collect();
        let preflight = matched
            .iter()
            .any(|(e, t)| has_gate(&e.pod, &gate) && !t.is_healthy());
        if !unmatched_endpoints.is_empty() || !unmatched_targets.is_empty() || preflight {
            self.update_checkpoint(tgb, "", &old_checkpoint).await?;
        }

        // The model's reaction delay before a deregistration.
        let now = Instant::now();
        let reaction = self.config.reaction;
        self.leaving
            .retain(|(a, ip, p), _| a != &arn || !by_id.contains_key(&(ip.clone(), *p)));
        let mut deregister = Vec::new();
        let mut later: Option<Duration> = None;
        for (ip, port) in &unmatched_targets {
            let since = *self
                .leaving
                .entry((arn.clone(), ip.clone(), *port))
                .or_insert(now);
            if now >= since + reaction {
                deregister.push((ip.clone(), *port));
            } else {
                let left = since + reaction - now;
                later = Some(later.map_or(left, |l| l.min(left)));
            }
        }
        if !deregister.is_empty() {
            self.deregister(&arn, &deregister).await?;
            for (ip, port) in &deregister {
                self.leaving.remove(&(arn.clone(), ip.clone(), *port));
            }
        }
        if !unmatched_endpoints.is_empty() {
            let ids: Vec<(String, u16)> = unmatched_endpoints.iter().map(Endpoint::id).collect();
            self.register(&arn, &ids).await?;
        }

        let mut pending = false;
        for (e, t) in &matched {
            pending |= self
                .write_condition(&e.pod, &gate, t.health.as_ref())
                .await?;
        }
        let registering = TargetHealth {
            id: String::new(),
            port: 0,
            state: TargetState::Initial,
            reason: Some("Elb.RegistrationInProgress"),
            description: Some("Target registration is in progress".into()),
        };
        for e in &unmatched_endpoints {
            pending |= self
                .write_condition(&e.pod, &gate, Some(&registering))
                .await?;
        }
        if pending {
            // A deregistration still waiting out the reaction delay is due first: the re-queue
            // for a pending gate must not hold it back (it did, by up to the whole re-queue, and
            // a pod with readygate's preStop sleep was deregistered after it stopped serving).
            return Ok(Outcome::After(
                later.map_or(self.config.requeue, |l| l.min(self.config.requeue)),
            ));
        }
        if let Some(l) = later {
            return Ok(Outcome::After(l));
        }
        self.update_checkpoint(tgb, &new_checkpoint, &old_checkpoint)
            .await?;
        Ok(Outcome::Done)
    }

    /// `updateTargetHealthPodConditionForPod`; true when the pod still waits (its condition is
    /// not True).
    async fn write_condition(
        &self,
        pod: &Value,
        gate: &str,
        health: Option<&TargetHealth>,
    ) -> Result<bool, Error> {
        if !has_gate(pod, gate) {
            return Ok(false);
        }
        let reason = health.and_then(|h| h.reason).unwrap_or_default();
        let message = health
            .and_then(|h| h.description.clone())
            .unwrap_or_default();
        let status = match health {
            Some(h) if h.state == TargetState::Healthy => "True",
            Some(_) => "False",
            None => "Unknown",
        };
        let pending = status != "True";
        let existing = condition(pod, gate);
        if let Some(c) = existing
            && str_at(c, "/status") == status
            && str_at(c, "/reason") == reason
            && str_at(c, "/message") == message
        {
            return Ok(pending);
        }
        let transition = match existing {
            Some(c) if str_at(c, "/status") == status => c["lastTransitionTime"].clone(),
            _ => json!(crate::time::now_time()),
        };
        // Empty reason and message are omitted by the Go types: the two-way merge patch deletes
        // what the pod had.
        let or_null = |s: &str| if s.is_empty() { Value::Null } else { json!(s) };
        let patch = json!({
            "metadata": {"uid": str_at(pod, "/metadata/uid")},
            "status": {"conditions": [{
                "type": gate, "status": status, "reason": or_null(reason),
                "message": or_null(&message), "lastTransitionTime": transition,
            }]},
        });
        let (ns, name) = key_of(pod);
        match Api::<Pod>::namespaced(self.client.clone(), &ns)
            .patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch))
            .await
        {
            Ok(_) => Ok(pending),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// `Cleanup`: every target of the group deregistered (a group that is gone or an invalid
    /// ARN is fine), then every gated pod of the namespace True.
    async fn cleanup(&mut self, tgb: &Value) -> Result<(), Error> {
        let arn = str_at(tgb, "/spec/targetGroupARN");
        let gone =
            |e: &ElbError| matches!(e, ElbError::TargetGroupNotFound | ElbError::Validation(_));
        match self.list_targets(&arn).await {
            Ok(targets) => {
                let all: Vec<(String, u16)> =
                    targets.iter().map(|t| (t.id.clone(), t.port)).collect();
                if !all.is_empty() {
                    match self.deregister(&arn, &all).await {
                        Err(Error::Elb(e)) if gone(&e) => {}
                        r => r?,
                    }
                }
            }
            Err(Error::Elb(e)) if gone(&e) => {}
            Err(e) => return Err(e),
        }
        let (ns, name) = key_of(tgb);
        let gate = format!("{GATE_PREFIX}/{name}");
        let deleted = TargetHealth {
            id: String::new(),
            port: 0,
            state: TargetState::Healthy,
            reason: None,
            description: Some("Target Group Binding is deleted".into()),
        };
        let pods: Vec<Value> = self
            .world
            .all(Kind::Pod)
            .filter(|((pns, _), p)| *pns == ns && has_gate(p, &gate))
            .map(|(_, p)| p.clone())
            .collect();
        for pod in pods {
            self.write_condition(&pod, &gate, Some(&deleted)).await?;
        }
        Ok(())
    }

    async fn describe(
        &mut self,
        arn: &str,
        targets: &[(String, u16)],
    ) -> Result<Vec<TargetInfo>, Error> {
        self.describe_limit.wait().await;
        self.elb.count_call_by(CALLER, "DescribeTargetHealth");
        self.elb.take_describe_token()?;
        let asked: Vec<(String, Option<u16>)> =
            targets.iter().map(|(i, p)| (i.clone(), Some(*p))).collect();
        Ok(self
            .elb
            .describe_target_health(arn, &asked)?
            .into_iter()
            .map(|h| TargetInfo {
                id: h.id.clone(),
                port: h.port,
                health: Some(h),
            })
            .collect())
    }

    /// `cachedTargetsManager.ListTargets`.
    async fn list_targets(&mut self, arn: &str) -> Result<Vec<TargetInfo>, Error> {
        let now = Instant::now();
        if let Some(item) = self.cache.get(arn).filter(|i| i.expires > now) {
            let (healthy, unhealthy): (Vec<TargetInfo>, Vec<TargetInfo>) = item
                .targets
                .iter()
                .cloned()
                .partition(TargetInfo::is_healthy);
            if unhealthy.is_empty() {
                return Ok(healthy);
            }
            let ids: Vec<(String, u16)> =
                unhealthy.iter().map(|t| (t.id.clone(), t.port)).collect();
            let refreshed = self.describe(arn, &ids).await?;
            let mut targets = healthy;
            targets.extend(refreshed.into_iter().filter(|t| !t.is_not_registered()));
            if let Some(item) = self.cache.get_mut(arn) {
                item.targets = targets.clone();
            }
            return Ok(targets);
        }
        let targets = self.describe(arn, &[]).await?;
        self.cache.insert(
            arn.to_string(),
            CacheItem {
                expires: now + self.config.targets_cache_ttl,
                targets: targets.clone(),
            },
        );
        Ok(targets)
    }

    /// Forgets the health of `ids` in the cache (adding them when `add`).
    fn record(&mut self, arn: &str, ids: &[(String, u16)], add: bool) {
        let Some(item) = self.cache.get_mut(arn) else {
            return;
        };
        let mut rest: BTreeSet<(String, u16)> = ids.iter().cloned().collect();
        for t in &mut item.targets {
            if rest.remove(&(t.id.clone(), t.port)) {
                t.health = None;
            }
        }
        if add {
            item.targets
                .extend(rest.into_iter().map(|(id, port)| TargetInfo {
                    id,
                    port,
                    health: None,
                }));
        }
    }

    async fn register(&mut self, arn: &str, ids: &[(String, u16)]) -> Result<(), Error> {
        for chunk in ids.chunks(200) {
            self.register_limit.wait().await;
            self.elb.count_call_by(CALLER, "RegisterTargets");
            let targets: Vec<(String, Option<u16>)> =
                chunk.iter().map(|(i, p)| (i.clone(), Some(*p))).collect();
            self.elb.register(arn, &targets)?;
            self.record(arn, chunk, true);
        }
        Ok(())
    }

    async fn deregister(&mut self, arn: &str, ids: &[(String, u16)]) -> Result<(), Error> {
        for chunk in ids.chunks(200) {
            self.register_limit.wait().await;
            self.elb.count_call_by(CALLER, "DeregisterTargets");
            let targets: Vec<(String, Option<u16>)> =
                chunk.iter().map(|(i, p)| (i.clone(), Some(*p))).collect();
            self.elb.deregister(arn, &targets)?;
            self.record(arn, chunk, false);
        }
        Ok(())
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gate_names_its_binding_when_the_name_is_valid() {
        assert_eq!(
            binding_of_gate("target-health.elbv2.k8s.aws/web").as_deref(),
            Some("web")
        );
        assert_eq!(
            binding_of_gate("target-health.alb.ingress.k8s.aws/web-1").as_deref(),
            Some("web-1")
        );
        assert_eq!(binding_of_gate("target-health.elbv2.k8s.aws"), None);
        assert_eq!(binding_of_gate("target-health.elbv2.k8s.aws/Web_1"), None);
        assert_eq!(binding_of_gate("example.com/web"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_register_limit_lets_a_burst_through_then_four_a_second() {
        let mut l = Limiter::new((20.0, 4.0));
        let start = Instant::now();
        for _ in 0..20 {
            l.wait().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        for _ in 0..4 {
            l.wait().await;
        }
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(999) && waited <= Duration::from_millis(1001),
            "{waited:?}"
        );
    }
}
