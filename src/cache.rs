//! Watches TargetGroupBindings, Services, Pods and Namespaces and keeps the `Index` current.
//!
//! A thin shell: each watcher strips API objects to the domain types (so 10,000 pods cost
//! little memory) and applies them to the index; a re-list replaces the kind wholesale.

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use futures::StreamExt;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::crd::TargetGroupBinding;
use crate::crd_presence::{CrdPresence, Discovery, Verdict};
use crate::domain::{
    self, ConditionStatus, INJECT_LABEL, INJECT_LABEL_VALUE, NamespaceSettings, PortRef, TargetType,
};
use crate::index::{Index, Kind};
use crate::metrics::Metrics;
use crate::termination::PRESTOP_SLEEP_ANNOTATION;

/// The index and a signal that it changed, shared by the webhook and the controller.
#[derive(Default)]
pub struct Cache {
    index: RwLock<Index>,
    changed: Notify,
}

impl Cache {
    pub fn read(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }
    pub fn write(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }
    /// Resolves after the index changed (at most one wake-up is remembered).
    pub async fn changed(&self) {
        self.changed.notified().await
    }
    pub fn notify(&self) {
        self.changed.notify_one();
    }
}

/// How long the TargetGroupBinding CRD must be confirmed absent before its bindings are dropped.
pub const DEFAULT_CRD_MISSING_GRACE: Duration = Duration::from_secs(120);

/// Starts the four watchers; they run until the process ends. `crd_missing_grace`: see
/// `crd_presence`.
pub fn spawn_watchers(
    client: Client,
    cache: Arc<Cache>,
    metrics: Arc<Metrics>,
    crd_missing_grace: Duration,
) {
    tokio::spawn(drive_bindings(
        client.clone(),
        cache.clone(),
        metrics,
        crd_missing_grace,
    ));
    tokio::spawn(drive::<Service>(Api::all(client.clone()), cache.clone()));
    tokio::spawn(drive::<WatchedPod>(Api::all(client.clone()), cache.clone()));
    tokio::spawn(drive::<Namespace>(Api::all(client), cache));
}

/// An API kind the index holds a stripped copy of.
pub trait Cached:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static
{
    const KIND: Kind;
    /// Objects per list page: small pages keep the transient JSON of a re-list small.
    const PAGE_SIZE: u32 = 500;
    type Item: Send;
    /// The stripped copy, or `None` when the object is unusable (it is then dropped).
    fn convert(&self) -> Option<Self::Item>;
    fn apply(ix: &mut Index, ns: &str, name: &str, item: Self::Item);
    fn delete(ix: &mut Index, ns: &str, name: &str);
}

async fn drive<K: Cached>(api: Api<K>, cache: Arc<Cache>) {
    let mut feed = Feed::<K>::new(cache);
    let config = watcher::Config::default().page_size(K::PAGE_SIZE);
    let mut stream = std::pin::pin!(watcher::watcher(api, config).default_backoff());
    while let Some(event) = stream.next().await {
        match event {
            Ok(e) => feed.event(e),
            Err(e) => {
                tracing::warn!(kind = ?K::KIND, error = %e, "watch failed; retrying with backoff")
            }
        }
    }
}

/// The binding watcher: like `drive`, but a 404 is checked against discovery before anything
/// is dropped (see `crd_presence`).
async fn drive_bindings(client: Client, cache: Arc<Cache>, metrics: Arc<Metrics>, grace: Duration) {
    let mut feed = Feed::<TargetGroupBinding>::new(cache.clone()).crd_missing_grace(grace);
    let clock = Clock::new();
    let config = watcher::Config::default().page_size(TargetGroupBinding::PAGE_SIZE);
    let api = Api::<TargetGroupBinding>::all(client.clone());
    let mut stream = std::pin::pin!(watcher::watcher(api, config).default_backoff());
    while let Some(event) = stream.next().await {
        match event {
            Ok(e) => feed.event(e),
            Err(e) if is_not_found(&e) => {
                metrics.binding_watch_not_found.inc();
                let discovery = discover_bindings(&client).await;
                feed.not_found(clock.now_ms(), &discovery);
            }
            Err(e) => {
                tracing::warn!(kind = ?Kind::Binding, error = %e, "watch failed; retrying with backoff")
            }
        }
        let ix = cache.read();
        metrics
            .bindings_crd_state
            .set(match (ix.bindings_crd_missing, &ix.bindings_warning) {
                (true, _) => 2,
                (false, Some(_)) => 1,
                (false, None) => 0,
            });
    }
}

/// Wall-clock milliseconds that advance with tokio's clock (so paused-time tests can pass the
/// grace period).
struct Clock {
    start: tokio::time::Instant,
    start_ms: i64,
}

impl Clock {
    fn new() -> Self {
        Self {
            start: tokio::time::Instant::now(),
            start_ms: jiff::Timestamp::now().as_millisecond(),
        }
    }
    fn now_ms(&self) -> i64 {
        self.start_ms + self.start.elapsed().as_millis() as i64
    }
}

/// Whether the API server's discovery serves elbv2.k8s.aws/v1beta1 targetgroupbindings.
async fn discover_bindings(client: &Client) -> Discovery {
    let version = format!(
        "{}/{}",
        TargetGroupBinding::group(&()),
        TargetGroupBinding::version(&())
    );
    let plural = TargetGroupBinding::plural(&());
    match client.list_api_group_resources(&version).await {
        Ok(list) if list.resources.iter().any(|r| r.name == plural) => Discovery::Present,
        Ok(_) => Discovery::Absent,
        Err(kube::Error::Api(s)) if s.code == 404 => Discovery::Absent,
        Err(e) => Discovery::Unknown(e.to_string()),
    }
}

/// Folds one kind's watch events into the cache.
///
/// A re-list is applied in place, object by object, and what it did not see is dropped at the
/// end: one copy of the objects at any time, never an old and a new list side by side.
pub struct Feed<K> {
    cache: Arc<Cache>,
    seen: HashSet<(String, String)>,
    /// The 404 history (binding feed only).
    presence: CrdPresence,
    kind: std::marker::PhantomData<K>,
}

impl<K: Cached> Feed<K> {
    pub fn new(cache: Arc<Cache>) -> Self {
        Self {
            cache,
            seen: HashSet::new(),
            presence: CrdPresence::new(DEFAULT_CRD_MISSING_GRACE),
            kind: std::marker::PhantomData,
        }
    }

    /// How long the CRD must be confirmed absent before the known bindings are dropped.
    pub fn crd_missing_grace(mut self, grace: Duration) -> Self {
        self.presence = CrdPresence::new(grace);
        self
    }

    /// One watch event.
    pub fn event(&mut self, e: Event<K>) {
        match e {
            Event::Init => self.init(),
            Event::InitApply(o) => self.init_apply(&o),
            Event::InitDone => self.init_done(),
            Event::Apply(o) => self.apply(&o),
            Event::Delete(o) => self.delete(&o),
        }
    }

    /// A (re-)list starts.
    pub fn init(&mut self) {
        self.seen.clear();
    }

    /// One object of the list.
    pub fn init_apply(&mut self, o: &K) {
        let (ns, name) = (o.namespace().unwrap_or_default(), o.name_any());
        upsert(&self.cache, &ns, &name, o);
        self.seen.insert((ns, name));
    }

    /// The list is complete: drop what it did not have.
    pub fn init_done(&mut self) {
        let kind = K::KIND;
        let mut ix = self.cache.write();
        ix.retain(kind, |ns, name| {
            self.seen.contains(&(ns.to_string(), name.to_string()))
        });
        ix.mark_synced(kind);
        if kind == Kind::Binding {
            self.presence.listed();
            if ix.bindings_warning.take().is_some() {
                tracing::info!("TargetGroupBinding list answers again; bindings are current");
            }
            if ix.bindings_crd_missing {
                ix.bindings_crd_missing = false;
                tracing::info!("TargetGroupBinding CRD found; injecting readiness gates again");
            }
        }
        ix.compact();
        drop(ix);
        tracing::info!(?kind, objects = self.seen.len(), "cache synced");
        self.seen = HashSet::new();
        release_free_memory();
        self.cache.notify();
    }

    pub fn apply(&mut self, o: &K) {
        upsert(
            &self.cache,
            &o.namespace().unwrap_or_default(),
            &o.name_any(),
            o,
        );
        self.cache.notify();
    }

    pub fn delete(&mut self, o: &K) {
        K::delete(
            &mut self.cache.write(),
            &o.namespace().unwrap_or_default(),
            &o.name_any(),
        );
        self.cache.notify();
    }

    /// The list or watch answered 404 at `now_ms`, and discovery then said `discovery`. The
    /// known bindings stay until the absence is confirmed and sustained (`crd_presence`).
    pub fn not_found(&mut self, now_ms: i64, discovery: &Discovery) {
        let ever_listed = self.cache.read().synced().bindings;
        match self.presence.not_found(now_ms, ever_listed, discovery) {
            Verdict::Missing => self.crd_missing(),
            Verdict::Keep => {
                let mut ix = self.cache.write();
                if ix.bindings_crd_missing {
                    return;
                }
                let since = self.presence.not_found_since().unwrap_or(now_ms);
                let confirmed = match (discovery, self.presence.absent_since()) {
                    (Discovery::Absent, Some(t)) => format!(
                        "discovery has not listed targetgroupbindings.elbv2.k8s.aws for {}s",
                        (now_ms - t) / 1000
                    ),
                    (Discovery::Present, _) => "discovery still lists the CRD".to_string(),
                    (_, _) => "discovery unavailable".to_string(),
                };
                let note = format!(
                    "the TargetGroupBinding list/watch has answered 404 for {}s ({confirmed}); keeping the {} known bindings until the CRD is confirmed missing for {}s",
                    (now_ms - since) / 1000,
                    ix.counts().0,
                    self.presence.grace().as_secs()
                );
                tracing::warn!("{note}");
                ix.bindings_warning = Some(note);
                drop(ix);
                self.cache.notify();
            }
        }
    }

    /// The kind's CRD is confirmed gone: there are none, and that is a complete answer.
    pub fn crd_missing(&mut self) {
        let mut ix = self.cache.write();
        ix.bindings_warning = None;
        if !ix.bindings_crd_missing {
            tracing::error!(
                "the TargetGroupBinding CRD (targetgroupbindings.elbv2.k8s.aws/v1beta1) is not installed: \
                 no readiness gates will be injected until it is (install the AWS Load Balancer Controller)"
            );
        }
        ix.bindings_crd_missing = true;
        ix.retain(K::KIND, |_, _| false);
        ix.mark_synced(K::KIND);
        drop(ix);
        self.cache.notify();
    }
}

/// Stores the stripped copy of `o`, or drops the entry when `o` is unusable.
fn upsert<K: Cached>(cache: &Cache, ns: &str, name: &str, o: &K) {
    let item = o.convert();
    let mut ix = cache.write();
    match item {
        Some(item) => K::apply(&mut ix, ns, name, item),
        None => K::delete(&mut ix, ns, name),
    }
}

/// Hands memory freed by a re-list back to the system (glibc keeps it otherwise, and the
/// list's transient JSON leaves the heap fragmented).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own heap; it takes no pointers of ours.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn is_not_found(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s.code == 404,
        _ => false,
    }
}

fn port_ref(p: &IntOrString) -> PortRef {
    match p {
        IntOrString::Int(n) => PortRef::Number(*n),
        IntOrString::String(s) => match s.parse::<i32>() {
            Ok(n) => PortRef::Number(n),
            Err(_) => PortRef::Name(s.clone()),
        },
    }
}

impl Cached for TargetGroupBinding {
    const KIND: Kind = Kind::Binding;
    type Item = domain::Binding;
    fn convert(&self) -> Option<domain::Binding> {
        let Some(svc) = self
            .spec
            .service_ref
            .as_ref()
            .filter(|s| !s.name.is_empty())
        else {
            tracing::warn!(binding = %self.name_any(), namespace = ?self.namespace(), "TargetGroupBinding has no serviceRef; ignored");
            return None;
        };
        let Some(port) = svc.port.as_ref() else {
            tracing::warn!(binding = %self.name_any(), namespace = ?self.namespace(), "TargetGroupBinding has no serviceRef.port; ignored");
            return None;
        };
        Some(domain::Binding {
            name: self.name_any(),
            target_group_arn: self.spec.target_group_arn.clone().unwrap_or_default(),
            target_type: match self.spec.target_type.as_deref() {
                Some("ip") => TargetType::Ip,
                Some(_) => TargetType::Instance,
                None => TargetType::Unspecified,
            },
            service_name: svc.name.clone(),
            service_port: port_ref(port),
            ip_family: match self.spec.ip_address_type.as_deref() {
                Some("ipv6") => domain::IpFamily::V6,
                _ => domain::IpFamily::V4,
            },
        })
    }
    fn apply(ix: &mut Index, ns: &str, _name: &str, item: domain::Binding) {
        ix.apply_binding(ns, item)
    }
    fn delete(ix: &mut Index, ns: &str, name: &str) {
        ix.delete_binding(ns, name)
    }
}

impl Cached for Service {
    const KIND: Kind = Kind::Service;
    type Item = domain::Service;
    fn convert(&self) -> Option<domain::Service> {
        let spec = self.spec.as_ref()?;
        Some(domain::Service {
            selector: spec.selector.clone().unwrap_or_default(),
            ports: spec
                .ports
                .iter()
                .flatten()
                .map(|p| domain::ServicePort {
                    name: p.name.clone(),
                    port: p.port,
                    target_port: p.target_port.as_ref().map(port_ref),
                })
                .collect(),
        })
    }
    fn apply(ix: &mut Index, ns: &str, name: &str, item: domain::Service) {
        ix.apply_service(ns, name, item)
    }
    fn delete(ix: &mut Index, ns: &str, name: &str) {
        ix.delete_service(ns, name)
    }
}

impl Cached for WatchedPod {
    const KIND: Kind = Kind::Pod;
    const PAGE_SIZE: u32 = 100;
    type Item = domain::Pod;
    fn convert(&self) -> Option<domain::Pod> {
        Some(pod_view(self))
    }
    fn apply(ix: &mut Index, ns: &str, name: &str, item: domain::Pod) {
        ix.apply_pod(ns, name, item)
    }
    fn delete(ix: &mut Index, ns: &str, name: &str) {
        ix.delete_pod(ns, name)
    }
}

impl Cached for Namespace {
    const KIND: Kind = Kind::Namespace;
    type Item = NamespaceSettings;
    fn convert(&self) -> Option<NamespaceSettings> {
        Some(NamespaceSettings {
            opted_in: self.labels().get(INJECT_LABEL).map(String::as_str)
                == Some(INJECT_LABEL_VALUE),
            prestop_sleep: self.annotations().get(PRESTOP_SLEEP_ANNOTATION).cloned(),
        })
    }
    fn apply(ix: &mut Index, _ns: &str, name: &str, settings: NamespaceSettings) {
        ix.apply_namespace(name, settings)
    }
    fn delete(ix: &mut Index, _ns: &str, name: &str) {
        ix.delete_namespace(name)
    }
}

/// A Pod as the watcher decodes it: only the fields `pod_view` reads. The rest — managedFields,
/// most of the spec, container statuses — is skipped by the parser and never allocated, which
/// keeps a 10,000-pod list from bloating the heap.
#[derive(Clone, Debug, Deserialize)]
pub struct WatchedPod {
    #[serde(deserialize_with = "slim_meta")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<WatchedPodSpec>,
    #[serde(default)]
    pub status: Option<WatchedPodStatus>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchedPodSpec {
    #[serde(default)]
    pub containers: Option<Vec<WatchedContainer>>,
    #[serde(default)]
    pub init_containers: Option<Vec<WatchedContainer>>,
    #[serde(default)]
    pub readiness_gates: Option<Vec<WatchedGate>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct WatchedContainer {
    #[serde(default)]
    pub ports: Option<Vec<WatchedPort>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchedPort {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub container_port: i32,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchedGate {
    #[serde(default)]
    pub condition_type: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchedPodStatus {
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(default, rename = "podIP")]
    pub pod_ip: Option<String>,
    #[serde(default, rename = "podIPs")]
    pub pod_ips: Option<Vec<WatchedPodIp>>,
    #[serde(default)]
    pub conditions: Option<Vec<WatchedCondition>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct WatchedPodIp {
    #[serde(default)]
    pub ip: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchedCondition {
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub last_transition_time: Option<Time>,
}

/// The metadata fields readygate and the watcher use (the watcher resumes from
/// `resourceVersion`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlimMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    creation_timestamp: Option<Time>,
    deletion_timestamp: Option<Time>,
}

fn slim_meta<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let m = SlimMeta::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
        resource_version: m.resource_version,
        labels: m.labels,
        creation_timestamp: m.creation_timestamp,
        deletion_timestamp: m.deletion_timestamp,
        ..ObjectMeta::default()
    })
}

impl Resource for WatchedPod {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;
    fn kind(_: &()) -> Cow<'_, str> {
        "Pod".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "pods".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The pod's addresses, parsed: `status.podIPs` (one per family on a dual-stack cluster), else
/// `status.podIP`. Unparsable entries are dropped.
fn pod_ips(status: Option<&WatchedPodStatus>) -> Vec<std::net::IpAddr> {
    let Some(s) = status else { return Vec::new() };
    let listed = s.pod_ips.iter().flatten().map(|p| p.ip.as_str());
    let mut ips: Vec<std::net::IpAddr> = listed.filter_map(|ip| ip.parse().ok()).collect();
    if ips.is_empty()
        && let Some(ip) = s.pod_ip.as_deref().and_then(|ip| ip.parse().ok())
    {
        ips.push(ip);
    }
    ips
}

/// Strips a pod to what the controller decides on.
pub fn pod_view(pod: &WatchedPod) -> domain::Pod {
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref());
    let conditions = status
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    domain::Pod {
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        // A BTreeMap iterates in key order: the pairs come out sorted.
        labels: pod
            .metadata
            .labels
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        created: pod
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second()),
        finished: pod.metadata.deletion_timestamp.is_some()
            || matches!(phase, Some("Succeeded" | "Failed")),
        ips: pod_ips(status),
        container_ports: spec
            .into_iter()
            .flat_map(|s| {
                s.containers
                    .iter()
                    .flatten()
                    .chain(s.init_containers.iter().flatten())
            })
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                Some(domain::ContainerPort {
                    name: p.name.clone()?,
                    port: p.container_port,
                })
            })
            .collect(),
        gates: spec
            .and_then(|s| s.readiness_gates.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|g| domain::gate_binding(&g.condition_type).map(str::to_string))
            .collect(),
        conditions: conditions
            .iter()
            .filter_map(|c| {
                let binding = domain::gate_binding(&c.type_)?;
                Some((
                    binding.to_string(),
                    domain::Condition {
                        status: ConditionStatus::parse(&c.status),
                        reason: c.reason.clone().unwrap_or_default(),
                        message: c.message.clone().unwrap_or_default(),
                        last_transition_time: c
                            .last_transition_time
                            .as_ref()
                            .map(|t| t.0.to_string()),
                    },
                ))
            })
            .collect(),
        containers_ready_since: conditions
            .iter()
            .find(|c| c.type_ == "ContainersReady" && c.status == "True")
            .map(|c| {
                c.last_transition_time
                    .as_ref()
                    .map_or(0, |t| t.0.as_second())
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn pod_view_keeps_what_the_controller_needs() {
        let pod: WatchedPod = serde_json::from_value(json!({
            "metadata": { "name": "web-1", "namespace": "shop", "uid": "u-1", "labels": {"app": "web"},
                          "resourceVersion": "42", "creationTimestamp": "2026-11-21T10:00:00Z",
                          "managedFields": [{ "manager": "kubelet", "fieldsV1": { "f:status": {} } }] },
            "spec": {
                "containers": [{ "name": "web", "ports": [{ "name": "http", "containerPort": 8080 }, { "containerPort": 9 }] }],
                "initContainers": [{ "name": "side", "restartPolicy": "Always", "ports": [{ "name": "admin", "containerPort": 9901 }] }],
                "readinessGates": [{ "conditionType": "target-health.elbv2.k8s.aws/web-tgb" }, { "conditionType": "other/x" }]
            },
            "status": {
                "podIP": "127.0.1.2",
                "conditions": [
                    { "type": "ContainersReady", "status": "True", "lastTransitionTime": "2026-11-21T10:00:07Z" },
                    { "type": "target-health.elbv2.k8s.aws/web-tgb", "status": "False", "reason": "Elb.InitialHealthChecking",
                      "message": "Initial health checks in progress", "lastTransitionTime": "2026-11-21T10:00:03Z" }
                ]
            }
        }))
        .unwrap();
        // The watcher resumes from the resourceVersion; managedFields are never kept.
        assert_eq!(pod.resource_version().as_deref(), Some("42"));
        assert!(pod.metadata.managed_fields.is_none());
        let v = pod_view(&pod);
        assert_eq!(v.uid, "u-1");
        assert_eq!(v.ips, ["127.0.1.2".parse::<std::net::IpAddr>().unwrap()]);
        assert_eq!(v.gates, ["web-tgb"]);
        assert_eq!(v.container_ports.len(), 2);
        assert_eq!(v.containers_ready_since, Some(1_795_255_207));
        assert_eq!(v.created, Some(1_795_255_200));
        let c = v.condition("web-tgb").unwrap();
        assert_eq!(c.status, ConditionStatus::False);
        assert_eq!(
            c.last_transition_time.as_deref(),
            Some("2026-11-21T10:00:03Z")
        );
        assert!(!v.finished);
    }

    fn service(ns: &str, name: &str, app: &str) -> Service {
        serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": ns, "resourceVersion": "1" },
            "spec": { "selector": { "app": app }, "ports": [{ "port": 80, "targetPort": "http" }] }
        }))
        .unwrap()
    }

    #[test]
    fn a_relist_is_applied_in_place_and_drops_what_it_did_not_see() {
        let cache = Arc::new(Cache::default());
        let mut feed = Feed::<Service>::new(cache.clone());
        feed.init();
        feed.init_apply(&service("shop", "web", "web"));
        feed.init_apply(&service("shop", "old", "old"));
        assert!(
            !cache.read().synced().services,
            "not synced before the list is complete"
        );
        feed.init_done();
        assert!(cache.read().synced().services);
        assert!(cache.read().service("shop", "old").is_some());
        // A watch restart re-lists: "old" is gone, "web" changed, "api" is new.
        feed.init();
        feed.init_apply(&service("shop", "web", "web2"));
        feed.init_apply(&service("shop", "api", "api"));
        feed.init_done();
        let ix = cache.read();
        assert!(ix.service("shop", "old").is_none());
        assert_eq!(ix.service("shop", "web").unwrap().selector["app"], "web2");
        assert!(ix.service("shop", "api").is_some());
        drop(ix);
        feed.delete(&service("shop", "api", "api"));
        assert!(cache.read().service("shop", "api").is_none());
    }

    fn namespace(name: &str, labels: Value, annotations: Value) -> Namespace {
        serde_json::from_value(json!({
            "metadata": { "name": name, "resourceVersion": "1", "labels": labels, "annotations": annotations }
        }))
        .unwrap()
    }

    fn binding(name: &str) -> TargetGroupBinding {
        serde_json::from_value(json!({
            "apiVersion": "elbv2.k8s.aws/v1beta1", "kind": "TargetGroupBinding",
            "metadata": { "name": name, "namespace": "shop", "resourceVersion": "1" },
            "spec": { "targetGroupARN": "arn:x", "targetType": "ip", "serviceRef": { "name": "web", "port": 80 } }
        }))
        .unwrap()
    }

    #[test]
    fn namespaces_keep_the_opt_in_and_the_prestop_annotation() {
        let cache = Arc::new(Cache::default());
        let mut feed = Feed::<Namespace>::new(cache.clone());
        feed.init();
        feed.init_apply(&namespace(
            "shop",
            json!({ INJECT_LABEL: INJECT_LABEL_VALUE }),
            json!({ PRESTOP_SLEEP_ANNOTATION: "15s", "owner": "team-a" }),
        ));
        feed.init_apply(&namespace("quiet", json!({}), json!({})));
        feed.init_done();
        let ix = cache.read();
        assert!(ix.synced().namespaces);
        assert!(ix.is_opted_in("shop") && !ix.is_opted_in("quiet"));
        assert_eq!(ix.namespace_prestop_sleep("shop"), Some("15s"));
        assert_eq!(ix.namespace_prestop_sleep("quiet"), None);
        drop(ix);
        // The annotation removed by an update, then the namespace deleted.
        feed.apply(&namespace(
            "shop",
            json!({ INJECT_LABEL: INJECT_LABEL_VALUE }),
            json!({}),
        ));
        assert_eq!(cache.read().namespace_prestop_sleep("shop"), None);
        assert!(cache.read().is_opted_in("shop"));
        feed.delete(&namespace("shop", json!({}), json!({})));
        assert!(!cache.read().is_opted_in("shop"));
    }

    fn listed_bindings(cache: &Arc<Cache>) -> Feed<TargetGroupBinding> {
        let mut feed = Feed::<TargetGroupBinding>::new(cache.clone())
            .crd_missing_grace(Duration::from_secs(120));
        feed.init();
        feed.init_apply(&binding("web-tgb"));
        feed.init_done();
        feed
    }

    #[test]
    fn a_404_keeps_known_bindings_until_the_absence_is_confirmed_and_sustained() {
        let cache = Arc::new(Cache::default());
        let mut feed = listed_bindings(&cache);
        // API server restart: 404s, discovery down or still serving the CRD.
        feed.not_found(0, &Discovery::Unknown("connection refused".into()));
        feed.not_found(30_000, &Discovery::Present);
        {
            let ix = cache.read();
            assert!(
                ix.binding("shop", "web-tgb").is_some(),
                "a blip wiped the bindings"
            );
            assert!(!ix.bindings_crd_missing);
            let note = ix.bindings_warning.as_deref().unwrap();
            assert!(
                note.contains("404 for 30s") && note.contains("keeping the 1 known bindings"),
                "{note}"
            );
        }
        // The list answers again: back to normal.
        feed.init();
        feed.init_apply(&binding("web-tgb"));
        feed.init_done();
        assert!(cache.read().bindings_warning.is_none());
        // CRD deleted for real: kept for the grace period, dropped after.
        feed.not_found(100_000, &Discovery::Absent);
        feed.not_found(219_000, &Discovery::Absent);
        assert!(cache.read().binding("shop", "web-tgb").is_some());
        feed.not_found(220_000, &Discovery::Absent);
        let ix = cache.read();
        assert!(ix.binding("shop", "web-tgb").is_none() && ix.bindings_crd_missing);
        assert!(ix.bindings_warning.is_none());
    }

    #[test]
    fn at_start_up_a_confirmed_missing_crd_is_an_empty_synced_list_at_once() {
        let cache = Arc::new(Cache::default());
        let mut feed = Feed::<TargetGroupBinding>::new(cache.clone());
        feed.not_found(0, &Discovery::Unknown("timeout".into()));
        assert!(
            !cache.read().synced().bindings,
            "unconfirmed: still waiting for a list"
        );
        feed.not_found(1_000, &Discovery::Absent);
        let ix = cache.read();
        assert!(ix.synced().bindings && ix.bindings_crd_missing);
    }

    /// A scripted API server: the binding list answers 404; discovery answers `discovery`
    /// (`None`: 404 for the group version too).
    async fn serve_404s(
        mut handle: tower_test::mock::Handle<
            hyper::Request<kube::client::Body>,
            hyper::Response<kube::client::Body>,
        >,
        discovery: Option<serde_json::Value>,
    ) {
        let not_found = || {
            let body = json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                               "message": "the server could not find the requested resource", "reason": "NotFound", "code": 404 });
            hyper::Response::builder()
                .status(404)
                .body(kube::client::Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap()
        };
        while let Some((req, send)) = handle.next_request().await {
            let answer = match (req.uri().path(), &discovery) {
                ("/apis/elbv2.k8s.aws/v1beta1", Some(d)) => hyper::Response::builder()
                    .body(kube::client::Body::from(serde_json::to_vec(d).unwrap()))
                    .unwrap(),
                _ => not_found(),
            };
            send.send_response(answer);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_binding_watcher_checks_discovery_before_dropping_anything() {
        let served = json!({ "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "elbv2.k8s.aws/v1beta1",
            "resources": [{ "name": "targetgroupbindings", "singularName": "targetgroupbinding", "namespaced": true,
                            "kind": "TargetGroupBinding", "verbs": ["get", "list", "watch"] }] });
        for (discovery, kept) in [(Some(served), true), (None, false)] {
            let cache = Arc::new(Cache::default());
            listed_bindings(&cache);
            let metrics = Arc::new(Metrics::new());
            let (service, handle) = tower_test::mock::pair();
            let client = Client::new(service, "default");
            tokio::spawn(serve_404s(handle, discovery));
            let watcher = tokio::spawn(drive_bindings(
                client,
                cache.clone(),
                metrics.clone(),
                Duration::from_secs(120),
            ));
            // Well inside the grace: kept either way, and said so.
            tokio::time::sleep(Duration::from_secs(60)).await;
            assert!(cache.read().binding("shop", "web-tgb").is_some());
            assert!(cache.read().bindings_warning.is_some());
            assert!(metrics.encode().contains("readygate_bindings_crd_state 1"));
            // Past it: dropped only when discovery confirmed the absence all along.
            tokio::time::sleep(Duration::from_secs(180)).await;
            assert_eq!(cache.read().binding("shop", "web-tgb").is_some(), kept);
            let state = if kept { 1 } else { 2 };
            assert!(
                metrics
                    .encode()
                    .contains(&format!("readygate_bindings_crd_state {state}")),
                "{}",
                metrics.encode()
            );
            watcher.abort();
        }
    }

    #[test]
    fn a_missing_binding_crd_is_an_empty_synced_list() {
        let cache = Arc::new(Cache::default());
        let mut feed = Feed::<TargetGroupBinding>::new(cache.clone());
        feed.crd_missing();
        let ix = cache.read();
        assert!(ix.synced().bindings && ix.bindings_crd_missing);
        drop(ix);
        feed.init();
        feed.init_done();
        assert!(!cache.read().bindings_crd_missing);
    }

    #[test]
    fn dual_stack_pods_keep_both_addresses_parsed_and_ipv6_bindings_say_so() {
        let pod: WatchedPod = serde_json::from_value(json!({
            "metadata": { "name": "p", "namespace": "ns" },
            "status": { "podIP": "10.0.0.7",
                        "podIPs": [{ "ip": "10.0.0.7" }, { "ip": "2001:0db8:0000:0000:0000:0000:0000:0007" }] }
        }))
        .unwrap();
        let ips: Vec<std::net::IpAddr> = ["10.0.0.7", "2001:db8::7"]
            .iter()
            .map(|ip| ip.parse().unwrap())
            .collect();
        assert_eq!(pod_view(&pod).ips, ips);
        // Only podIP (an older API server, or a single-stack pod): that one.
        let single: WatchedPod = serde_json::from_value(json!({
            "metadata": { "name": "q" }, "status": { "podIP": "2001:db8::9" }
        }))
        .unwrap();
        assert_eq!(
            pod_view(&single).ips,
            ["2001:db8::9".parse::<std::net::IpAddr>().unwrap()]
        );
        let tgb = |family: serde_json::Value| -> TargetGroupBinding {
            serde_json::from_value(json!({
                "apiVersion": "elbv2.k8s.aws/v1beta1", "kind": "TargetGroupBinding",
                "metadata": { "name": "web", "namespace": "shop" },
                "spec": { "targetGroupARN": "arn:x", "targetType": "ip", "ipAddressType": family,
                          "serviceRef": { "name": "web", "port": 80 } }
            }))
            .unwrap()
        };
        assert_eq!(
            tgb(json!("ipv6")).convert().unwrap().ip_family,
            domain::IpFamily::V6
        );
        assert_eq!(
            tgb(json!("ipv4")).convert().unwrap().ip_family,
            domain::IpFamily::V4
        );
        assert_eq!(
            tgb(json!(null)).convert().unwrap().ip_family,
            domain::IpFamily::V4
        );
    }

    #[test]
    fn pods_with_nulls_and_missing_parts_still_decode() {
        let pod: WatchedPod = serde_json::from_value(json!({
            "metadata": { "name": "p", "namespace": "ns", "labels": null },
            "spec": { "containers": [{ "name": "c", "ports": null }], "readinessGates": null },
            "status": { "phase": "Pending", "conditions": null, "podIP": "" }
        }))
        .unwrap();
        let v = pod_view(&pod);
        assert!(v.gates.is_empty() && v.ips.is_empty() && v.labels.is_empty());
        let bare: WatchedPod =
            serde_json::from_value(json!({ "metadata": { "name": "q" } })).unwrap();
        assert_eq!(pod_view(&bare).containers_ready_since, None);
    }

    #[test]
    fn binding_conversion_reads_lbc_fields_and_ignores_the_rest() {
        let tgb: TargetGroupBinding = serde_json::from_value(json!({
            "apiVersion": "elbv2.k8s.aws/v1beta1", "kind": "TargetGroupBinding",
            "metadata": { "name": "web-tgb", "namespace": "shop" },
            "spec": { "targetGroupARN": "arn:x", "targetType": "ip", "serviceRef": { "name": "web", "port": "http" },
                      "networking": { "ingress": [] }, "ipAddressType": "ipv4", "vpcID": "vpc-1" }
        }))
        .unwrap();
        let b = tgb.convert().unwrap();
        assert_eq!(b.target_group_arn, "arn:x");
        assert_eq!(b.target_type, TargetType::Ip);
        assert_eq!(b.service_port, PortRef::Name("http".into()));
        let no_ref: TargetGroupBinding = serde_json::from_value(json!({
            "apiVersion": "elbv2.k8s.aws/v1beta1", "kind": "TargetGroupBinding",
            "metadata": { "name": "x" }, "spec": { "targetGroupName": "tg" }
        }))
        .unwrap();
        assert!(no_ref.convert().is_none());
    }
}
