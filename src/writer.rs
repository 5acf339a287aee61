//! The one writer of pod status: gate conditions through `pods/status`, and pod Events.
//!
//! Every write passes through here. Writes are dropped while this replica is not the leader,
//! each PATCH is bounded by a timeout, and every outcome is counted.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::domain::{Condition, gate_type};
use crate::metrics::Metrics;

/// One gate condition to write on one pod.
#[derive(Clone, Debug, PartialEq)]
pub struct ConditionWrite {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub binding: String,
    pub condition: Condition,
}

/// A pod Event to publish.
#[derive(Clone, Debug, PartialEq)]
pub struct PodEvent {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

/// What became of a write: defined with its label in `metrics`, which counts every one.
pub use crate::metrics::StatusWrite as Outcome;

/// The strategic-merge patch of `pods/status` for one condition. `metadata.uid` makes the API
/// server refuse a write meant for an earlier pod of the same name: a PATCH carries no uid
/// precondition, so kube-apiserver answers 422 Invalid "metadata.uid: ... field is immutable".
pub fn status_patch(w: &ConditionWrite) -> Value {
    json!({
        "metadata": { "uid": w.uid },
        "status": {
            "conditions": [{
                "type": gate_type(&w.binding),
                "status": w.condition.status.as_str(),
                "reason": w.condition.reason,
                "message": w.condition.message,
                "lastProbeTime": null,
                "lastTransitionTime": w.condition.last_transition_time,
            }]
        }
    })
}

/// Whether the API server refused the patch because the pod of that name has another uid.
fn uid_changed(s: &kube::core::Status) -> bool {
    s.code == 422
        && s.details
            .as_ref()
            .is_some_and(|d| d.causes.iter().any(|c| c.field == "metadata.uid"))
}

pub struct Writer {
    client: Client,
    leader: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    timeout: Duration,
    recorder: Recorder,
}

impl Writer {
    pub fn new(
        client: Client,
        leader: watch::Receiver<bool>,
        metrics: Arc<Metrics>,
        timeout: Duration,
        identity: String,
    ) -> Self {
        let reporter = Reporter {
            controller: "readygate".into(),
            instance: Some(identity),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            leader,
            metrics,
            timeout,
        }
    }

    fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    pub async fn write(&self, w: &ConditionWrite) -> Outcome {
        let outcome = if !self.is_leader() {
            Outcome::NotLeader
        } else {
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &w.namespace);
            let patch = status_patch(w);
            match tokio::time::timeout(
                self.timeout,
                api.patch_status(&w.pod, &PatchParams::default(), &Patch::Strategic(&patch)),
            )
            .await
            {
                Err(_) => Outcome::Timeout,
                Ok(Ok(_)) => Outcome::Written,
                Ok(Err(kube::Error::Api(s))) if s.code == 404 => Outcome::Gone,
                Ok(Err(kube::Error::Api(s))) if uid_changed(&s) => Outcome::Replaced,
                Ok(Err(kube::Error::Api(s))) if s.code == 409 => Outcome::Conflict,
                Ok(Err(e)) => {
                    tracing::warn!(namespace = %w.namespace, pod = %w.pod, error = %e, "status write failed");
                    Outcome::Failed
                }
            }
        };
        self.metrics.status_write(outcome);
        if outcome == Outcome::Written {
            tracing::info!(
                namespace = %w.namespace, pod = %w.pod, gate = %gate_type(&w.binding),
                status = w.condition.status.as_str(), reason = %w.condition.reason, "condition written"
            );
        }
        outcome
    }

    pub async fn event(&self, e: &PodEvent) {
        if !self.is_leader() {
            return;
        }
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(e.pod.clone()),
            namespace: Some(e.namespace.clone()),
            uid: Some(e.uid.clone()),
            ..Default::default()
        };
        let event = Event {
            type_: if e.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: e.reason.into(),
            note: Some(e.note.clone()),
            action: "ReadinessGate".into(),
            secondary: None,
        };
        if let Err(err) =
            tokio::time::timeout(self.timeout, self.recorder.publish(&event, &reference))
                .await
                .unwrap_or_else(|_| Err(kube::Error::Service("event publish timed out".into())))
        {
            tracing::warn!(namespace = %e.namespace, pod = %e.pod, error = %err, "event not published");
        }
    }
}

/// Work for the writer task.
#[derive(Debug)]
pub enum Job {
    /// A condition, and the event to publish once it is written.
    Condition(ConditionWrite, Option<PodEvent>),
    Event(PodEvent),
}

/// What became of a condition write.
#[derive(Debug)]
pub struct Done {
    pub write: ConditionWrite,
    pub outcome: Outcome,
}

/// Runs `writer` over `jobs`, at most `concurrency` at a time, reporting condition outcomes.
pub async fn run(
    writer: Arc<Writer>,
    mut jobs: mpsc::Receiver<Job>,
    done: mpsc::Sender<Done>,
    concurrency: usize,
) {
    let permits = Arc::new(Semaphore::new(concurrency));
    while let Some(job) = jobs.recv().await {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (writer, done) = (writer.clone(), done.clone());
        tokio::spawn(async move {
            match job {
                Job::Condition(w, event) => {
                    let outcome = writer.write(&w).await;
                    if let (Outcome::Written, Some(e)) = (outcome, event) {
                        writer.event(&e).await;
                    }
                    let _ = done.send(Done { write: w, outcome }).await;
                }
                Job::Event(e) => writer.event(&e).await,
            }
            drop(permit);
        });
    }
}
