//! The leader's view of its pending gates, as served on the admin port at `GET /debug/gates`
//! and read by `readygate status`: per gate, the target it waits on, what ELB last said about
//! it and when, and when its target group is polled next. Plain serde data, no I/O.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{Notify, watch};

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

/// Where the admin server asks the controller loop for its view and the loop answers. The view
/// is built only when asked (a pass over 10,000 pending gates need not serialise them all), and
/// the last one is kept for when the loop is busy.
#[derive(Clone, Debug)]
pub struct GatesBoard(Arc<Board>);

#[derive(Debug)]
struct Board {
    view: RwLock<GatesView>,
    /// A controller loop answers requests (none on a `--controller false` replica).
    attached: AtomicBool,
    requested: Notify,
    published: watch::Sender<u64>,
}

impl Default for GatesBoard {
    fn default() -> Self {
        Self(Arc::new(Board {
            view: RwLock::default(),
            attached: AtomicBool::new(false),
            requested: Notify::new(),
            published: watch::channel(0).0,
        }))
    }
}

impl GatesBoard {
    /// A controller loop will answer `fresh`.
    pub fn attach(&self) {
        self.0.attached.store(true, Ordering::SeqCst);
    }

    pub fn publish(&self, view: GatesView) {
        *self.0.view.write().unwrap_or_else(|e| e.into_inner()) = view;
        self.0.published.send_modify(|v| *v += 1);
    }

    /// The last view published.
    pub fn get(&self) -> GatesView {
        self.0
            .view
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Resolves when someone asks for a fresh view.
    pub async fn requested(&self) {
        self.0.requested.notified().await
    }

    /// A view the loop publishes for this request, or the last one if it does not within
    /// `within`.
    pub async fn fresh(&self, within: Duration) -> GatesView {
        if self.0.attached.load(Ordering::SeqCst) {
            let mut rx = self.0.published.subscribe();
            rx.borrow_and_update();
            self.0.requested.notify_one();
            let _ = tokio::time::timeout(within, rx.changed()).await;
        }
        self.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_gets_the_view_published_for_it() {
        let board = GatesBoard::default();
        // No loop attached: the last view at once.
        assert!(!board.fresh(Duration::from_secs(60)).await.controller);
        board.attach();
        let loop_side = board.clone();
        tokio::spawn(async move {
            loop {
                loop_side.requested().await;
                loop_side.publish(GatesView {
                    controller: true,
                    leader: true,
                    ..GatesView::default()
                });
            }
        });
        let view =
            tokio::time::timeout(Duration::from_secs(5), board.fresh(Duration::from_secs(60)))
                .await
                .expect("answered before the fallback");
        assert!(view.leader);
    }
}
