//! Target registration as the AWS Load Balancer Controller does it for IP-mode
//! TargetGroupBindings, driven by the real EndpointSlice controller's EndpointSlices: a ready
//! endpoint is registered as `podIP:targetPort`, and so is a not-ready one whose pod has
//! ContainersReady, runs on a Ready Node and carries the binding's readiness gate (the gate holds
//! it NotReady until the target is healthy); a terminating or vanished endpoint is deregistered
//! after the controller's reaction delay (the real one notices the endpoint change, reconciles
//! and calls DeregisterTargets: a second or more, longer on a busy cluster). It calls the rig's
//! load balancer in-process, not through the ELBv2 API.

use crate::elb::Elb;
use crate::str_at;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher;
use kube::{Api, Client};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

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

type Targets = BTreeMap<String, BTreeSet<(String, u16)>>;
/// Objects of one kind by (namespace, name), as JSON.
type Objects = Arc<Mutex<BTreeMap<(String, String), Value>>>;

/// What the controller watches.
#[derive(Default, Clone)]
struct World {
    bindings: Objects,
    services: Objects,
    slices: Objects,
    pods: Objects,
    nodes: Objects,
}

/// Keeps `objects` equal to what a watch of `api` delivers, and pokes `changed` on each event.
fn follow<K>(api: Api<K>, objects: Objects, changed: Arc<Notify>) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
    K: Send + Sync + 'static,
{
    tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default()).boxed();
        let mut relist: Option<BTreeMap<(String, String), Value>> = None;
        let key = |v: &Value| {
            (
                str_at(v, "/metadata/namespace"),
                str_at(v, "/metadata/name"),
            )
        };
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, "load balancer controller: watch error (it retries)");
                    continue;
                }
            };
            {
                let mut objects = objects.lock().expect("lbc lock");
                match event {
                    watcher::Event::Init => relist = Some(BTreeMap::new()),
                    watcher::Event::InitApply(o) => {
                        if let (Some(r), Ok(v)) = (relist.as_mut(), serde_json::to_value(&o)) {
                            r.insert(key(&v), v);
                        }
                    }
                    watcher::Event::InitDone => {
                        if let Some(r) = relist.take() {
                            *objects = r;
                        }
                    }
                    watcher::Event::Apply(o) => {
                        if let Ok(v) = serde_json::to_value(&o) {
                            objects.insert(key(&v), v);
                        }
                    }
                    watcher::Event::Delete(o) => {
                        if let Ok(v) = serde_json::to_value(&o) {
                            objects.remove(&key(&v));
                        }
                    }
                }
            }
            changed.notify_one();
        }
    })
}

/// The TargetGroupBinding API (`elbv2.k8s.aws/v1beta1`).
pub fn target_group_bindings() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("elbv2.k8s.aws", "v1beta1", "TargetGroupBinding"),
        "targetgroupbindings",
    )
}

impl Lbc {
    /// Starts the controller; a target that should go is deregistered `reaction` after the
    /// change that made it go (registration is immediate: a gate holds the pod meanwhile).
    pub async fn start(client: Client, elb: Arc<Elb>, reaction: Duration) -> anyhow::Result<Self> {
        let world = World::default();
        let changed = Arc::new(Notify::new());
        let tgb = target_group_bindings();
        let mut tasks = vec![
            follow(
                Api::<DynamicObject>::all_with(client.clone(), &tgb),
                world.bindings.clone(),
                changed.clone(),
            ),
            follow(
                Api::<Service>::all(client.clone()),
                world.services.clone(),
                changed.clone(),
            ),
            follow(
                Api::<EndpointSlice>::all(client.clone()),
                world.slices.clone(),
                changed.clone(),
            ),
            follow(
                Api::<Pod>::all(client.clone()),
                world.pods.clone(),
                changed.clone(),
            ),
            follow(
                Api::<Node>::all(client),
                world.nodes.clone(),
                changed.clone(),
            ),
        ];
        tasks.push(tokio::spawn(async move {
            let mut state = State {
                registered: BTreeMap::new(),
                leaving: BTreeMap::new(),
                reaction,
            };
            loop {
                let due = state.next_due();
                tokio::select! {
                    _ = changed.notified() => {
                        // Coalesce a burst of changes into one reconcile.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    _ = sleep_until_opt(due) => {}
                }
                let desired = desired_targets(&world);
                state.reconcile(desired, &elb, Instant::now());
            }
        }));
        Ok(Self { tasks })
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn condition_true(o: &Value, t: &str) -> bool {
    o.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == t && c["status"] == "True"))
}

/// The targets each binding's target group should hold right now, from the EndpointSlices of
/// its Service: ready endpoints, and not-ready ones (not terminating) whose pod has
/// ContainersReady, runs on a Ready Node and carries this binding's readiness gate.
fn desired_targets(world: &World) -> Targets {
    let bindings = world.bindings.lock().expect("lbc lock").clone();
    let services = world.services.lock().expect("lbc lock");
    let slices = world.slices.lock().expect("lbc lock");
    let pods = world.pods.lock().expect("lbc lock");
    let nodes = world.nodes.lock().expect("lbc lock");
    let mut out: Targets = BTreeMap::new();
    for ((ns, name), tgb) in &bindings {
        if str_at(tgb, "/spec/targetType") != "ip" {
            continue;
        }
        let entry = out.entry(str_at(tgb, "/spec/targetGroupARN")).or_default();
        let svc_name = str_at(tgb, "/spec/serviceRef/name");
        let Some(svc) = services.get(&(ns.clone(), svc_name.clone())) else {
            continue;
        };
        let Some(port_name) = service_port_name(svc, tgb.pointer("/spec/serviceRef/port")) else {
            continue;
        };
        let gate = format!("target-health.elbv2.k8s.aws/{name}");
        for slice in slices.iter().filter(|((sns, _), s)| {
            sns == ns && str_at(s, "/metadata/labels/kubernetes.io~1service-name") == svc_name
        }) {
            let slice = slice.1;
            let Some(port) = slice
                .pointer("/ports")
                .and_then(Value::as_array)
                .and_then(|ps| {
                    ps.iter()
                        .find(|p| str_at(p, "/name") == port_name)
                        .and_then(|p| p.get("port")?.as_u64())
                })
            else {
                continue;
            };
            for ep in slice
                .pointer("/endpoints")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let c = &ep["conditions"];
                if c["terminating"] == true {
                    continue;
                }
                let wanted = c["ready"] == true || {
                    let pod = pods.get(&(
                        str_at(ep, "/targetRef/namespace"),
                        str_at(ep, "/targetRef/name"),
                    ));
                    pod.is_some_and(|pod| {
                        let node = nodes.get(&(String::new(), str_at(pod, "/spec/nodeName")));
                        condition_true(pod, "ContainersReady")
                            && node.is_some_and(|n| condition_true(n, "Ready"))
                            && pod
                                .pointer("/spec/readinessGates")
                                .and_then(Value::as_array)
                                .is_some_and(|gs| {
                                    gs.iter().any(|g| g["conditionType"] == gate.as_str())
                                })
                    })
                };
                if wanted && let Some(ip) = ep.pointer("/addresses/0").and_then(Value::as_str) {
                    entry.insert((ip.to_string(), port as u16));
                }
            }
        }
    }
    out
}

/// The name of the Service port a binding's `serviceRef.port` (a number or a name) picks
/// (EndpointSlice ports carry it, with the resolved target port).
fn service_port_name(svc: &Value, wanted: Option<&Value>) -> Option<String> {
    let ports = svc.pointer("/spec/ports")?.as_array()?;
    ports
        .iter()
        .find(|p| match wanted {
            Some(Value::Number(n)) => p.get("port") == Some(&Value::Number(n.clone())),
            Some(Value::String(s)) => {
                p.get("name").and_then(Value::as_str) == Some(s)
                    || p.get("port").map(|x| x.to_string()) == Some(s.clone())
            }
            _ => false,
        })
        .map(|p| str_at(p, "/name"))
}

/// What the controller has registered, and the targets on their way out with the moment it
/// first saw that they should go.
struct State {
    registered: Targets,
    leaving: BTreeMap<(String, String, u16), Instant>,
    reaction: Duration,
}

impl State {
    fn next_due(&self) -> Option<Instant> {
        self.leaving
            .values()
            .min()
            .map(|since| *since + self.reaction)
    }

    fn reconcile(&mut self, desired: Targets, elb: &Arc<Elb>, now: Instant) {
        let empty = BTreeSet::new();
        let arns: BTreeSet<String> = desired
            .keys()
            .chain(self.registered.keys())
            .cloned()
            .collect();
        for arn in arns {
            let want = desired.get(&arn).unwrap_or(&empty);
            let have = self.registered.entry(arn.clone()).or_default();
            let add: Vec<(String, Option<u16>)> = want
                .difference(have)
                .map(|(ip, p)| (ip.clone(), Some(*p)))
                .collect();
            if !add.is_empty() && elb.register(&arn, &add).is_ok() {
                have.extend(add.into_iter().map(|(ip, p)| (ip, p.unwrap_or(0))));
            }
            // A target wanted again before its deregistration went out stays.
            self.leaving
                .retain(|(a, ip, p), _| a != &arn || !want.contains(&(ip.clone(), *p)));
            let mut remove: Vec<(String, Option<u16>)> = Vec::new();
            for (ip, p) in have.difference(want) {
                let since = *self
                    .leaving
                    .entry((arn.clone(), ip.clone(), *p))
                    .or_insert(now);
                if now >= since + self.reaction {
                    remove.push((ip.clone(), Some(*p)));
                }
            }
            if !remove.is_empty() {
                // Gone either way: a group that no longer exists holds nothing (and a retry
                // would spin on a due time in the past).
                let _ = elb.deregister(&arn, &remove);
                for (ip, p) in remove {
                    let p = p.unwrap_or(0);
                    have.remove(&(ip.clone(), p));
                    self.leaving.remove(&(arn.clone(), ip, p));
                }
            }
        }
    }
}
