//! Rolling updates by the real Deployment controller: the rig applies an apps/v1 Deployment
//! (maxSurge, maxUnavailable as given) and changes its template's revision label; the
//! controller creates the new pods up to `replicas + maxSurge` and deletes old ones while at
//! least `replicas - maxUnavailable` are available (Ready: ContainersReady AND every readiness
//! gate True).

use crate::str_at;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// The pod template label the rig rolls (the Deployment controller adds its own
/// `pod-template-hash` beside it).
pub const REVISION_LABEL: &str = "rig.readygate.io/revision";

#[derive(Debug, Clone)]
pub struct Deployment {
    pub name: String,
    pub namespace: String,
    pub replicas: usize,
    pub max_surge: usize,
    pub max_unavailable: usize,
    /// The pod template: `{"metadata": {"labels", "annotations"}, "spec": {...}}`; `app: <name>`
    /// (the Deployment's selector) and the revision label are added.
    pub template: Value,
}

#[derive(Debug, Clone)]
pub struct Rollout {
    pub revision: String,
    pub started: Instant,
    pub finished: Option<Instant>,
    /// Pods seen created, and seen terminating, during the rollout.
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
    /// The apps/v1 Deployment rolled to `revision` (the label [`REVISION_LABEL`] on its pod
    /// template: a new label is a new ReplicaSet).
    fn object(&self, revision: &str) -> Value {
        let mut template = self.template.clone();
        template["metadata"]["labels"]["app"] = json!(self.name);
        template["metadata"]["labels"][REVISION_LABEL] = json!(revision);
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "replicas": self.replicas,
                "selector": {"matchLabels": {"app": self.name}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {
                    "maxSurge": self.max_surge, "maxUnavailable": self.max_unavailable}},
                "template": template,
            }
        })
    }

    /// The deployment's pods, as JSON.
    async fn pods(&self, client: &kube::Client) -> anyhow::Result<Vec<Value>> {
        let api: Api<Pod> = Api::namespaced(client.clone(), &self.namespace);
        let list = api
            .list(&ListParams::default().labels(&format!("app={}", self.name)))
            .await?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|p| serde_json::to_value(p).ok())
            .collect())
    }

    /// Rolls the Deployment to `revision` (the first call creates it) and lets the real
    /// Deployment controller run the rolling update; returns when it is complete — `replicas`
    /// pods of the new revision, all Ready, and no pod of another revision left at all — or when
    /// `timeout` has passed.
    pub async fn roll(&self, client: &kube::Client, revision: &str, timeout: Duration) -> Rollout {
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
        let api: Api<DynamicObject> = Api::namespaced_with(
            client.clone(),
            &self.namespace,
            &ApiResource::erase::<k8s_openapi::api::apps::v1::Deployment>(&()),
        );
        let applied = api
            .patch(
                &self.name,
                &PatchParams::apply("rig").force(),
                &Patch::Apply(self.object(revision)),
            )
            .await;
        if let Err(e) = applied {
            tracing::warn!(error = %e, "applying the Deployment");
            return r;
        }
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let mut first = true;
        loop {
            let pods = match self.pods(client).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "listing the deployment's pods");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let names: BTreeSet<String> =
                pods.iter().map(|p| str_at(p, "/metadata/name")).collect();
            if first {
                seen = names.clone();
                first = false;
            }
            r.created
                .extend(names.difference(&seen).cloned().collect::<Vec<_>>());
            r.deleted.extend(
                pods.iter()
                    .filter(|p| p.pointer("/metadata/deletionTimestamp").is_some())
                    .map(|p| str_at(p, "/metadata/name"))
                    .filter(|n| !r.deleted.contains(n))
                    .collect::<Vec<_>>(),
            );
            seen.extend(names);
            let label = format!("/metadata/labels/{}", REVISION_LABEL.replace('/', "~1"));
            let (new, old): (Vec<&Value>, Vec<&Value>) =
                pods.iter().partition(|p| str_at(p, &label) == revision);
            // Terminating pods of the new revision do not count, as with ReplicaSets.
            let new: Vec<&Value> = new
                .into_iter()
                .filter(|p| p.pointer("/metadata/deletionTimestamp").is_none())
                .collect();
            let new_ready = new.iter().filter(|p| is_ready(p)).count();
            let old_live = old
                .iter()
                .filter(|p| p.pointer("/metadata/deletionTimestamp").is_none())
                .count();
            (r.new_pods, r.new_ready, r.old_pods) = (new.len(), new_ready, old_live);
            if new.len() == self.replicas && new_ready == self.replicas && old_live == 0 {
                r.finished = Some(Instant::now());
                return r;
            }
            if Instant::now() >= deadline {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Deletes the Deployment (its ReplicaSets and pods follow, by the garbage collector).
    pub async fn delete(&self, client: &kube::Client) -> anyhow::Result<()> {
        let api: Api<k8s_openapi::api::apps::v1::Deployment> =
            Api::namespaced(client.clone(), &self.namespace);
        api.delete(
            &self.name,
            &DeleteParams {
                propagation_policy: Some(kube::api::PropagationPolicy::Foreground),
                ..Default::default()
            },
        )
        .await?;
        Ok(())
    }
}
