//! Target registration as the AWS Load Balancer Controller does it for IP-mode
//! TargetGroupBindings: a pod whose containers are ready is registered as `podIP:targetPort`
//! (even while its readiness gate is still False); a terminating pod is deregistered after the
//! controller's reaction delay (the real one notices the endpoint change, reconciles and calls
//! DeregisterTargets: a second or more, longer on a busy cluster).

use crate::apiserver::resources;
use crate::apiserver::selector::{FieldSelector, LabelSelector, labels_of};
use crate::apiserver::store::{Store, str_at};
use crate::elb::Elb;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

pub struct Lbc {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Lbc {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Targets = BTreeMap<String, BTreeSet<(String, u16)>>;

impl Lbc {
    /// Starts the controller; a target that should go is deregistered `reaction` after the
    /// change that made it go (registration is immediate: a gate holds the pod meanwhile).
    pub fn start(store: Arc<Store>, elb: Arc<Elb>, reaction: Duration) -> Self {
        let mut feed = store.subscribe();
        let task = tokio::spawn(async move {
            let mut state = State {
                registered: BTreeMap::new(),
                leaving: BTreeMap::new(),
                reaction,
            };
            loop {
                let due = state.next_due();
                let woke_by_change = tokio::select! {
                    r = feed.recv() => match r {
                        Ok(c) => {
                            let r = c.resource;
                            if !(std::ptr::eq(r, resources::pods())
                                || std::ptr::eq(r, resources::services())
                                || std::ptr::eq(r, resources::target_group_bindings()))
                            {
                                continue;
                            }
                            true
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                        Err(_) => return,
                    },
                    _ = sleep_until_opt(due) => false,
                };
                if woke_by_change {
                    // Coalesce a burst of changes into one reconcile.
                    while feed.try_recv().is_ok() {}
                }
                state.reconcile(&store, &elb, Instant::now());
            }
        });
        Self { task }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The targets each binding's target group should hold right now.
pub fn desired_targets(store: &Store) -> Targets {
    let (bindings, _) = store.list(
        resources::target_group_bindings(),
        None,
        &LabelSelector::default(),
        &FieldSelector::default(),
    );
    let mut out: Targets = BTreeMap::new();
    for tgb in bindings {
        if str_at(&tgb, "/spec/targetType") != "ip" {
            continue;
        }
        let ns = str_at(&tgb, "/metadata/namespace");
        let arn = str_at(&tgb, "/spec/targetGroupARN");
        let entry = out.entry(arn).or_default();
        let Ok(svc) = store.get(
            resources::services(),
            &ns,
            &str_at(&tgb, "/spec/serviceRef/name"),
        ) else {
            continue;
        };
        let Some(port) = service_port(&svc, tgb.pointer("/spec/serviceRef/port")) else {
            continue;
        };
        let Some(selector) = svc
            .pointer("/spec/selector")
            .and_then(Value::as_object)
            .filter(|s| !s.is_empty())
        else {
            continue;
        };
        let (pods, _) = store.list(
            resources::pods(),
            Some(&ns),
            &LabelSelector::default(),
            &FieldSelector::default(),
        );
        for pod in pods {
            let labels = labels_of(&pod);
            if !selector
                .iter()
                .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str())
            {
                continue;
            }
            let ip = str_at(&pod, "/status/podIP");
            let containers_ready = pod
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "ContainersReady" && c["status"] == "True")
                });
            if ip.is_empty()
                || !containers_ready
                || pod.pointer("/metadata/deletionTimestamp").is_some()
            {
                continue;
            }
            if let Some(target_port) = target_port(&port, &pod) {
                entry.insert((ip, target_port));
            }
        }
    }
    out
}

fn service_port(svc: &Value, wanted: Option<&Value>) -> Option<Value> {
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
        .cloned()
}

fn target_port(port: &Value, pod: &Value) -> Option<u16> {
    match port.get("targetPort").or(port.get("port"))? {
        Value::Number(n) => n.as_u64().map(|n| n as u16),
        Value::String(name) => pod
            .pointer("/spec/containers")?
            .as_array()?
            .iter()
            .flat_map(|c| {
                c.get("ports")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
            })
            .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
            .and_then(|p| p.get("containerPort")?.as_u64())
            .map(|n| n as u16),
        _ => None,
    }
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

    fn reconcile(&mut self, store: &Store, elb: &Arc<Elb>, now: Instant) {
        let desired = desired_targets(store);
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
