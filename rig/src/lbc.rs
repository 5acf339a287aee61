//! Target registration as the AWS Load Balancer Controller does it for IP-mode
//! TargetGroupBindings: a pod whose containers are ready is registered as `podIP:targetPort`
//! (even while its readiness gate is still False); a terminating pod is deregistered.

use crate::apiserver::resources;
use crate::apiserver::selector::{FieldSelector, LabelSelector, labels_of};
use crate::apiserver::store::{Store, str_at};
use crate::elb::Elb;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

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
    pub fn start(store: Arc<Store>, elb: Arc<Elb>) -> Self {
        let mut feed = store.subscribe();
        let task = tokio::spawn(async move {
            let mut registered: Targets = BTreeMap::new();
            loop {
                match feed.recv().await {
                    Ok(c) => {
                        let r = c.resource;
                        if !(std::ptr::eq(r, resources::pods())
                            || std::ptr::eq(r, resources::services())
                            || std::ptr::eq(r, resources::target_group_bindings()))
                        {
                            continue;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                }
                // Coalesce a burst of changes into one reconcile.
                while feed.try_recv().is_ok() {}
                reconcile(&store, &elb, &mut registered);
            }
        });
        Self { task }
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

fn reconcile(store: &Store, elb: &Arc<Elb>, registered: &mut Targets) {
    let desired = desired_targets(store);
    for (arn, want) in &desired {
        let have = registered.entry(arn.clone()).or_default();
        let add: Vec<(String, Option<u16>)> = want
            .difference(have)
            .map(|(ip, p)| (ip.clone(), Some(*p)))
            .collect();
        let remove: Vec<(String, Option<u16>)> = have
            .difference(want)
            .map(|(ip, p)| (ip.clone(), Some(*p)))
            .collect();
        if !add.is_empty() && elb.register(arn, &add).is_ok() {
            have.extend(add.into_iter().map(|(ip, p)| (ip, p.unwrap_or(0))));
        }
        if !remove.is_empty() && elb.deregister(arn, &remove).is_ok() {
            for (ip, p) in remove {
                have.remove(&(ip, p.unwrap_or(0)));
            }
        }
    }
    for (arn, have) in registered.iter_mut() {
        if !desired.contains_key(arn) && !have.is_empty() {
            let remove: Vec<(String, Option<u16>)> =
                have.iter().map(|(ip, p)| (ip.clone(), Some(*p))).collect();
            let _ = elb.deregister(arn, &remove);
            have.clear();
        }
    }
}
