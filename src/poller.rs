//! Per-target-group poller state: what ELB last said, how long its answers have stayed the same
//! (the idle backoff of `schedule`), and whether the group's health-check settings need reading
//! again. Pure: every time is an input, so it is tested without ELB or a clock.

use std::collections::{HashMap, HashSet};

use crate::budget::Backoff;
use crate::condition::Health;
use crate::elbv2::GroupSettings;
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
        // A pending target still in its initial checks is about to change: ELB decides within
        // its thresholds, so waiting longer would only add lag. Backing off is for targets that
        // stay unhealthy, unregistered or unused.
        let checking = targets
            .iter()
            .any(|(t, h)| h.state == "initial" && self.pending.contains(t));
        self.times.idle_polls = if same && !checking {
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

/// How soon after a read an unexpected answer may trigger another (a target that is slow for
/// other reasons must not cost a DescribeTargetGroups call every pass).
pub const MIN_REREAD_GAP_MS: i64 = 30_000;

/// A group's health-check settings and how fresh they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub value: GroupSettings,
    pub read_at_ms: i64,
    /// An answer the settings cannot explain was seen: read them again.
    pub doubted: bool,
    /// A refresh failed: not again before this.
    pub retry_at_ms: Option<i64>,
}

impl Settings {
    pub fn new(value: GroupSettings, read_at_ms: i64) -> Self {
        Self {
            value,
            read_at_ms,
            doubted: false,
            retry_at_ms: None,
        }
    }

    /// When to read them again: `ttl_ms` after the last read, or `MIN_REREAD_GAP_MS` after it
    /// when doubted, and not before a failed refresh's backoff ends.
    pub fn refresh_at(&self, ttl_ms: i64) -> i64 {
        let gap = if self.doubted {
            MIN_REREAD_GAP_MS.min(ttl_ms)
        } else {
            ttl_ms
        };
        (self.read_at_ms + gap).max(self.retry_at_ms.unwrap_or(i64::MIN))
    }

    pub fn refresh_due(&self, now_ms: i64, ttl_ms: i64) -> bool {
        now_ms >= self.refresh_at(ttl_ms)
    }
}

/// Whether ELB's answer `h` at `at_ms` about a pending target contradicts the settings: healthy
/// sooner than `interval × threshold` after its containers were ready (the checks got faster),
/// or still in its initial checks a full interval after they should have passed (slower).
pub fn contradicts(
    s: GroupSettings,
    ready_since_ms: Option<i64>,
    checks_seen_ms: Option<i64>,
    h: &Health,
    at_ms: i64,
) -> bool {
    let interval = i64::from(s.interval_seconds.max(0)) * 1000;
    let healthy_after = interval * i64::from(s.healthy_threshold.max(0));
    // Pod timestamps have one-second resolution.
    const SLACK_MS: i64 = 1_000;
    match (h.state.as_str(), h.reason.as_deref()) {
        ("healthy", _) => ready_since_ms.is_some_and(|r| at_ms + SLACK_MS < r + healthy_after),
        ("initial", Some("Elb.InitialHealthChecking")) => {
            checks_seen_ms.is_some_and(|c| at_ms > c + healthy_after + interval + SLACK_MS)
        }
        _ => false,
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
            ip: ip.parse().unwrap(),
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

    #[test]
    fn a_target_in_its_initial_checks_is_never_idle() {
        let mut g = Group::default();
        g.set_pending([t("10.0.0.1")].into());
        let checking: HashMap<_, _> = [(
            t("10.0.0.1"),
            h("initial", Some("Elb.InitialHealthChecking")),
        )]
        .into();
        for at in [10_000, 12_000, 14_000, 16_000] {
            g.answered(checking.clone(), at, 2_000);
        }
        assert_eq!(
            g.times.idle_polls, 0,
            "ELB decides within its thresholds: polls stay on the regular schedule"
        );
        // The same answer for a target no longer pending (its gate is released) is idle.
        g.set_pending(HashSet::new());
        g.answered(checking.clone(), 18_000, 2_000);
        g.answered(checking, 20_000, 2_000);
        assert_eq!(g.times.idle_polls, 2);
    }

    const NLB: GroupSettings = GroupSettings {
        interval_seconds: 10,
        healthy_threshold: 3,
        attached: true,
    };

    #[test]
    fn settings_are_read_again_after_the_ttl_or_when_doubted() {
        let ttl = 300_000;
        let mut s = Settings::new(NLB, 0);
        assert!(!s.refresh_due(299_999, ttl));
        assert!(s.refresh_due(300_000, ttl));
        s.doubted = true;
        assert!(!s.refresh_due(MIN_REREAD_GAP_MS - 1, ttl), "just read");
        assert!(s.refresh_due(MIN_REREAD_GAP_MS, ttl));
        s.retry_at_ms = Some(40_000);
        assert!(
            !s.refresh_due(35_000, ttl),
            "backing off after a failed refresh"
        );
        assert!(s.refresh_due(40_000, ttl));
    }

    #[test]
    fn answers_the_settings_cannot_explain_are_contradictions() {
        let ready = Some(100_000);
        // 10 s × 3: healthy no sooner than 130 s.
        let healthy = h("healthy", None);
        assert!(contradicts(NLB, ready, None, &healthy, 120_000));
        assert!(!contradicts(NLB, ready, None, &healthy, 129_500));
        assert!(!contradicts(NLB, ready, None, &healthy, 140_000));
        // Checks seen at 105 s: healthy by 135 s at the latest, plus an interval of slack.
        let checking = h("initial", Some("Elb.InitialHealthChecking"));
        assert!(!contradicts(NLB, ready, Some(105_000), &checking, 140_000));
        assert!(contradicts(NLB, ready, Some(105_000), &checking, 150_000));
        // Failing checks say nothing about the settings.
        let failing = h("unhealthy", Some("Target.Timeout"));
        assert!(!contradicts(NLB, ready, Some(105_000), &failing, 900_000));
    }
}
