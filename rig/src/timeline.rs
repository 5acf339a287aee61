//! Per-pod timelines: when each pod was created, had its containers ready, was registered,
//! turned healthy in the load balancer, had its gate set True, became Ready, started
//! terminating, was deregistered and was removed.

use crate::apiserver::resources;
use crate::apiserver::store::{EventType, Store, str_at};
use crate::elb::{Elb, TargetEventKind};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Milestone {
    Created,
    ContainersReady,
    Registered,
    ElbHealthy,
    GateTrue,
    Ready,
    Terminating,
    Deregistered,
    Removed,
}

impl Milestone {
    pub const ALL: [Milestone; 9] = [
        Milestone::Created,
        Milestone::ContainersReady,
        Milestone::Registered,
        Milestone::ElbHealthy,
        Milestone::GateTrue,
        Milestone::Ready,
        Milestone::Terminating,
        Milestone::Deregistered,
        Milestone::Removed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Milestone::Created => "created",
            Milestone::ContainersReady => "containers",
            Milestone::Registered => "registered",
            Milestone::ElbHealthy => "elb-healthy",
            Milestone::GateTrue => "gate-true",
            Milestone::Ready => "ready",
            Milestone::Terminating => "terminating",
            Milestone::Deregistered => "deregistered",
            Milestone::Removed => "removed",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct PodTimeline {
    pub namespace: String,
    pub name: String,
    pub revision: String,
    pub ip: String,
    pub gates: Vec<String>,
    pub at: BTreeMap<Milestone, Instant>,
}

type Pods = Arc<Mutex<BTreeMap<(String, String), PodTimeline>>>;

pub struct Timeline {
    pods: Pods,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Timeline {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn condition_true(pod: &Value, pred: impl Fn(&str) -> bool) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["status"] == "True" && c["type"].as_str().is_some_and(&pred))
        })
}

impl Timeline {
    pub fn start(store: &Store, elb: &Elb) -> Self {
        let pods: Pods = Arc::default();
        let mut feed = store.subscribe();
        let p = pods.clone();
        let watch_pods = tokio::spawn(async move {
            loop {
                let c = match feed.recv().await {
                    Ok(c) => c,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return,
                };
                if !std::ptr::eq(c.resource, resources::pods()) {
                    continue;
                }
                let now = c.at;
                let mut pods = p.lock().expect("timeline lock");
                let t = pods
                    .entry((c.namespace.clone(), c.name.clone()))
                    .or_default();
                let o = &c.object;
                t.namespace.clone_from(&c.namespace);
                t.name.clone_from(&c.name);
                t.revision = str_at(o, "/metadata/labels/pod-template-hash");
                t.gates = o
                    .pointer("/spec/readinessGates")
                    .and_then(Value::as_array)
                    .map(|g| g.iter().map(|g| str_at(g, "/conditionType")).collect())
                    .unwrap_or_default();
                let ip = str_at(o, "/status/podIP");
                if !ip.is_empty() {
                    t.ip = ip;
                }
                let mut mark = |m: Milestone| {
                    t.at.entry(m).or_insert(now);
                };
                match c.event {
                    EventType::Added => mark(Milestone::Created),
                    EventType::Deleted => mark(Milestone::Removed),
                    EventType::Modified => {}
                }
                if condition_true(o, |t| t == "ContainersReady") {
                    mark(Milestone::ContainersReady);
                }
                if condition_true(o, |t| t.starts_with("target-health.elbv2.k8s.aws/")) {
                    mark(Milestone::GateTrue);
                }
                if condition_true(o, |t| t == "Ready") {
                    mark(Milestone::Ready);
                }
                if o.pointer("/metadata/deletionTimestamp").is_some() {
                    mark(Milestone::Terminating);
                }
            }
        });
        let mut events = elb.events();
        let p = pods.clone();
        let watch_targets = tokio::spawn(async move {
            loop {
                let e = match events.recv().await {
                    Ok(e) => e,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return,
                };
                let m = match e.kind {
                    TargetEventKind::Registered => Milestone::Registered,
                    TargetEventKind::Healthy => Milestone::ElbHealthy,
                    TargetEventKind::Deregistered => Milestone::Deregistered,
                    _ => continue,
                };
                let mut pods = p.lock().expect("timeline lock");
                if let Some(t) = pods.values_mut().find(|t| t.ip == e.id) {
                    t.at.entry(m).or_insert(e.at);
                }
            }
        });
        Self {
            pods,
            tasks: vec![watch_pods, watch_targets],
        }
    }

    pub fn pods(&self, namespace: &str) -> Vec<PodTimeline> {
        self.pods
            .lock()
            .expect("timeline lock")
            .values()
            .filter(|t| t.namespace == namespace)
            .cloned()
            .collect()
    }
}
