//! Per-pod timelines: when each pod was created, had its containers ready, was registered,
//! turned healthy in the load balancer, had its gate set True, became Ready, started
//! terminating, was deregistered and was removed.

use crate::elb::{Elb, TargetEventKind};
use crate::str_at;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;
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
    /// Follows every pod through a watch of the real API server (each event stamped when it
    /// arrives) and every target through the load balancer's events.
    pub async fn start(client: kube::Client, elb: &Elb) -> anyhow::Result<Self> {
        let pods: Pods = Arc::default();
        let p = pods.clone();
        let api: kube::Api<Pod> = kube::Api::all(client);
        let watch_pods = tokio::spawn(async move {
            let mut stream = watcher(api, watcher::Config::default()).boxed();
            while let Some(event) = stream.next().await {
                let now = Instant::now();
                let (pod, removed) = match event {
                    Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => (pod, false),
                    Ok(watcher::Event::Delete(pod)) => (pod, true),
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "timeline: pod watch error (it retries)");
                        continue;
                    }
                };
                let Ok(o) = serde_json::to_value(&pod) else {
                    continue;
                };
                let namespace = str_at(&o, "/metadata/namespace");
                let name = str_at(&o, "/metadata/name");
                let mut pods = p.lock().expect("timeline lock");
                let t = pods.entry((namespace.clone(), name.clone())).or_default();
                t.namespace = namespace;
                t.name = name;
                t.revision = str_at(
                    &o,
                    &format!(
                        "/metadata/labels/{}",
                        crate::deploy::REVISION_LABEL.replace('/', "~1")
                    ),
                );
                t.gates = o
                    .pointer("/spec/readinessGates")
                    .and_then(Value::as_array)
                    .map(|g| g.iter().map(|g| str_at(g, "/conditionType")).collect())
                    .unwrap_or_default();
                let ip = str_at(&o, "/status/podIP");
                if !ip.is_empty() {
                    t.ip = ip;
                }
                let mut mark = |m: Milestone| {
                    t.at.entry(m).or_insert(now);
                };
                mark(Milestone::Created);
                if removed {
                    mark(Milestone::Removed);
                }
                if condition_true(&o, |t| t == "ContainersReady") {
                    mark(Milestone::ContainersReady);
                }
                if condition_true(&o, |t| t.starts_with("target-health.elbv2.k8s.aws/")) {
                    mark(Milestone::GateTrue);
                }
                if condition_true(&o, |t| t == "Ready") {
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
        Ok(Self {
            pods,
            tasks: vec![watch_pods, watch_targets],
        })
    }

    pub fn pods(&self, namespace: &str) -> Vec<PodTimeline> {
        let terminations = crate::k8s::node::terminations()
            .lock()
            .expect("terminations lock")
            .clone();
        self.pods
            .lock()
            .expect("timeline lock")
            .values()
            .filter(|t| t.namespace == namespace)
            .cloned()
            .map(|mut t| {
                // The node agent may have seen the deletion (and stopped the pod) before this
                // timeline's own watch delivered it.
                if let Some(at) = terminations.get(&(t.namespace.clone(), t.name.clone())) {
                    let e = t.at.entry(Milestone::Terminating).or_insert(*at);
                    *e = (*e).min(*at);
                }
                t
            })
            .collect()
    }
}
