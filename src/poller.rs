//! Per-target-group poller state: what ELB last said, and how long its answers have stayed the
//! same (the idle backoff of `schedule`). Pure: every time is an input, so it is tested without ELB or a clock.

use std::collections::{HashMap, HashSet};

use crate::budget::Backoff;
use crate::condition::Health;
use crate::schedule::GroupTimes;
use crate::target::Target;

/// One target group's polling state.
#[derive(Debug, Default)]
pub struct Group {
    pub times: GroupTimes,
    pub backoff: Option<Backoff>,
    /// A DescribeTargetHealth call is out.
    pub in_flight: bool,
    /// A DescribeTargetGroups call is out (first read or refresh).
    pub settings_in_flight: bool,
    /// Targets and health from the last successful poll, with its time.
    pub health: Option<(HashMap<Target, Health>, i64)>,
    /// Targets whose health checks were seen to start: (the poll before, the poll that saw it).
    pub checks_began: HashMap<Target, (i64, i64)>,
    pub not_found: Option<String>,
    /// The targets pending at the last pass.
    pending: HashSet<Target>,
}

impl Group {
    /// The targets pending in this pass. One that was not pending before is a change: the
    /// idle backoff starts over, so its fast schedule is not stretched.
    pub fn set_pending(&mut self, targets: HashSet<Target>) {
        if targets.iter().any(|t| !self.pending.contains(t)) {
            self.times.idle_polls = 0;
        }
        self.pending = targets;
    }

    /// A successful poll answered at `at`. An answer equal to the last one counts as idle.
    pub fn answered(&mut self, targets: HashMap<Target, Health>, at: i64, poll_interval_ms: i64) {
        let before = self.times.last_poll_ms.unwrap_or(at - poll_interval_ms);
        for (target, h) in &targets {
            if h.state == "initial" && h.reason.as_deref() == Some("Elb.InitialHealthChecking") {
                self.checks_began
                    .entry(target.clone())
                    .or_insert((before, at));
            }
        }
        let same = self
            .health
            .as_ref()
            .is_some_and(|(last, _)| *last == targets);
        self.times.idle_polls = if same {
            self.times.idle_polls.saturating_add(1)
        } else {
            0
        };
        self.in_flight = false;
        self.times.last_poll_ms = Some(at);
        self.times.not_before_ms = None;
        self.backoff = None;
        self.not_found = None;
        self.health = Some((targets, at));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(state: &str, reason: Option<&str>) -> Health {
        Health {
            state: state.into(),
            reason: reason.map(Into::into),
            description: None,
        }
    }

    fn t(ip: &str) -> Target {
        Target {
            ip: ip.into(),
            port: 8080,
        }
    }

    #[test]
    fn answers_that_change_nothing_count_as_idle_until_something_changes() {
        let mut g = Group::default();
        g.set_pending([t("10.0.0.1")].into());
        let unhealthy: HashMap<_, _> =
            [(t("10.0.0.1"), h("unhealthy", Some("Target.Timeout")))].into();
        g.answered(unhealthy.clone(), 10_000, 2_000);
        assert_eq!(g.times.idle_polls, 0, "a first answer is news");
        g.answered(unhealthy.clone(), 12_000, 2_000);
        g.answered(unhealthy.clone(), 16_000, 2_000);
        assert_eq!(g.times.idle_polls, 2);
        // The same pending targets again: still idle.
        g.set_pending([t("10.0.0.1")].into());
        assert_eq!(g.times.idle_polls, 2);
        // A new pending target: back to the fast schedule.
        g.set_pending([t("10.0.0.1"), t("10.0.0.2")].into());
        assert_eq!(g.times.idle_polls, 0);
        g.answered(unhealthy.clone(), 18_000, 2_000);
        assert_eq!(g.times.idle_polls, 1);
        // A changed answer: back too.
        let mut registered = unhealthy;
        registered.insert(
            t("10.0.0.2"),
            h("initial", Some("Elb.RegistrationInProgress")),
        );
        g.answered(registered, 20_000, 2_000);
        assert_eq!(g.times.idle_polls, 0);
    }
}
