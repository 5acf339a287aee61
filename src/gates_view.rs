//! The leader's view of its pending gates, as served on the admin port at `GET /debug/gates`
//! and read by `readygate status`: per gate, the target it waits on, what ELB last said about
//! it and when, and when its target group is polled next. Plain serde data, no I/O.

use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

/// What one replica's controller knows, at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatesView {
    /// This replica runs the status controller (`--controller true`).
    pub controller: bool,
    /// This replica holds the Lease; only the leader's gates are filled in.
    pub leader: bool,
    /// When this view was computed (RFC 3339), empty before the first pass.
    pub generated_at: String,
    /// The release policy in force.
    pub policy: PolicyView,
    pub gates: Vec<PendingGate>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyView {
    pub unused_is_ready: bool,
    pub unavailable_is_ready: bool,
    /// `--failsafe-timeout` in seconds, when set.
    pub failsafe_timeout_seconds: Option<u64>,
}

/// A gate that is not True yet (or was reopened by a container restart).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingGate {
    pub namespace: String,
    pub pod: String,
    pub binding: String,
    /// `waiting` (on ELB), `release` (about to be set True without ELB), `hold` (False for a
    /// reason of readygate's own, e.g. no target yet).
    pub decision: String,
    /// For `release` and `hold`: the condition readygate writes.
    pub reason: Option<String>,
    pub message: Option<String>,
    /// `ip:port`, when the gate waits on ELB.
    pub target: Option<String>,
    pub target_group_arn: Option<String>,
    /// ELB's last answer about the target, when one speaks for this pod.
    pub elb: Option<ElbAnswer>,
    /// When the target group is polled next (RFC 3339); absent while no poll is scheduled
    /// (containers not ready, settings not read yet) or one is in flight.
    pub next_poll_at: Option<String>,
    pub poll_in_flight: bool,
    /// After a failed ELBv2 call: no poll before this.
    pub backing_off_until: Option<String>,
    /// When `--failsafe-timeout` releases the gate.
    pub failsafe_at: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ElbAnswer {
    /// `initial`, `healthy`, …, or `notRegistered` when the group's answer lacks the target.
    pub state: String,
    pub reason: Option<String>,
    pub description: Option<String>,
    /// When ELB answered (RFC 3339).
    pub at: String,
}

/// Where the controller publishes its view and the admin server reads it.
#[derive(Clone, Debug, Default)]
pub struct GatesBoard(Arc<RwLock<GatesView>>);

impl GatesBoard {
    pub fn publish(&self, view: GatesView) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = view;
    }

    pub fn get(&self) -> GatesView {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
