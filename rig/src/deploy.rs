//! A Deployment-style rolling update, as the deployment controller runs it: new pods up to
//! `replicas + maxSurge`, old pods down while at least `replicas - maxUnavailable` are
//! available, where available means Ready (ContainersReady AND every readiness gate True).

use crate::apiserver::resources;
use crate::apiserver::selector::{FieldSelector, LabelSelector};
use crate::apiserver::store::{Store, WriteOpts, str_at};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

pub const REVISION_LABEL: &str = "pod-template-hash";

#[derive(Debug, Clone)]
pub struct Deployment {
    pub name: String,
    pub namespace: String,
    pub replicas: usize,
    pub max_surge: usize,
    pub max_unavailable: usize,
    /// The pod template: `{"metadata": {"labels", "annotations"}, "spec": {...}}`. Its labels must
    /// include `app: <name>`, the deployment's selector.
    pub template: Value,
}

#[derive(Debug, Clone)]
pub struct Rollout {
    pub revision: String,
    pub started: Instant,
    pub finished: Option<Instant>,
    pub created: Vec<String>,
    pub deleted: Vec<String>,
    /// At the end (finished or timed out): new pods, new pods Ready, old pods left.
    pub new_pods: usize,
    pub new_ready: usize,
    pub old_pods: usize,
}

impl Rollout {
    pub fn complete(&self) -> bool {
        self.finished.is_some()
    }

    pub fn duration(&self) -> Option<Duration> {
        self.finished.map(|f| f - self.started)
    }
}

pub fn is_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

impl Deployment {
    fn pods(&self, store: &Store) -> Vec<Value> {
        let sel = LabelSelector::parse(&format!("app={}", self.name)).expect("selector");
        let (pods, _) = store.list(
            resources::pods(),
            Some(&self.namespace),
            &sel,
            &FieldSelector::default(),
        );
        // Terminating pods no longer count, as with ReplicaSets.
        pods.into_iter()
            .filter(|p| p.pointer("/metadata/deletionTimestamp").is_none())
            .collect()
    }

    fn new_pod(&self, revision: &str) -> Value {
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": self.template.get("metadata").cloned().unwrap_or(json!({})), "spec": self.template["spec"].clone()});
        pod["metadata"]["generateName"] = json!(format!("{}-{revision}-", self.name));
        pod["metadata"]["labels"][REVISION_LABEL] = json!(revision);
        pod["metadata"]["labels"]["app"] = json!(self.name);
        pod
    }

    /// Rolls the pods to `revision` (the first call deploys from nothing) and returns when
    /// the rollout is complete or `timeout` has passed.
    pub async fn roll(&self, store: &Store, revision: &str, timeout: Duration) -> Rollout {
        let mut r = Rollout {
            revision: revision.into(),
            started: Instant::now(),
            finished: None,
            created: vec![],
            deleted: vec![],
            new_pods: 0,
            new_ready: 0,
            old_pods: 0,
        };
        let deadline = r.started + timeout;
        loop {
            let pods = self.pods(store);
            let (new, old): (Vec<&Value>, Vec<&Value>) = pods.iter().partition(|p| {
                str_at(p, &format!("/metadata/labels/{REVISION_LABEL}")) == revision
            });
            let new_ready = new.iter().filter(|p| is_ready(p)).count();
            (r.new_pods, r.new_ready, r.old_pods) = (new.len(), new_ready, old.len());
            if new.len() == self.replicas && new_ready == self.replicas && old.is_empty() {
                r.finished = Some(Instant::now());
                return r;
            }
            if Instant::now() >= deadline {
                return r;
            }
            // Scale up the new revision within the surge.
            let total = new.len() + old.len();
            let room = (self.replicas + self.max_surge).saturating_sub(total);
            for _ in 0..room.min(self.replicas.saturating_sub(new.len())) {
                match store
                    .create(
                        resources::pods(),
                        &self.namespace,
                        self.new_pod(revision),
                        &WriteOpts::default(),
                    )
                    .await
                {
                    Ok(p) => r.created.push(str_at(&p, "/metadata/name")),
                    Err(e) => tracing::warn!(error = %e, "creating pod"),
                }
            }
            // Scale down old pods: unready ones first, then ready ones while enough stay available.
            let min_available = self.replicas.saturating_sub(self.max_unavailable);
            let new_unavailable = new.len() - new_ready;
            let mut cleanup = total.saturating_sub(min_available + new_unavailable);
            let mut available = pods.iter().filter(|p| is_ready(p)).count();
            let mut old_sorted = old.clone();
            old_sorted.sort_by_key(|p| is_ready(p));
            for p in old_sorted {
                let ready = is_ready(p);
                if !ready && cleanup > 0 {
                    cleanup -= 1;
                } else if ready && available > min_available {
                    available -= 1;
                } else {
                    continue;
                }
                let name = str_at(p, "/metadata/name");
                if store
                    .delete(resources::pods(), &self.namespace, &name, None, None, false)
                    .is_ok()
                {
                    r.deleted.push(name);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
