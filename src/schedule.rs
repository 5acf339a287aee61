//! When to poll a target group: pure arithmetic over what is pending.
//!
//! A target can be healthy no sooner than `interval × healthy threshold` after it is
//! registered, which happens once its pod's containers are ready: the first poll waits until
//! then. After that the group is polled every `poll_interval` until its gates are True, and
//! faster (`fast_interval`) inside the windows where a target is likely to turn healthy, so the
//! gate follows the load balancer closely without polling fast all the time:
//!
//! - right after the earliest possible moment (registration was immediate), for one
//!   health-check interval plus a second (pod timestamps have one-second resolution);
//! - once a poll has seen the target's health checks start (`Elb.InitialHealthChecking`): they
//!   began between that poll and the one before, so `healthy threshold − 1` intervals later,
//!   give or take that gap and one interval.
//!
//! Outside those windows, a group whose answers stay the same backs off: each poll that changed
//! nothing doubles the regular interval, up to `max_poll_interval`; a changed answer or a new
//! pending target brings it back to `poll_interval`.
//!
//! A group with nothing pending is not polled at all. Times are milliseconds on one clock.

/// A target waiting on its gate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// When its containers became ready (so registration could start), if they are.
    pub ready_since_ms: Option<i64>,
    /// Health checks were seen running at `.1` and not yet at `.0` (the poll before).
    pub checks_began_between: Option<(i64, i64)>,
}

/// A group's health-check settings and our polling intervals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub check_interval_ms: i64,
    pub healthy_threshold: i64,
    pub poll_interval_ms: i64,
    pub fast_interval_ms: i64,
    /// Cap of the regular interval while a group's answers stay the same.
    pub max_poll_interval_ms: i64,
}

impl Timing {
    /// The regular interval after `idle_polls` polls in a row that changed nothing.
    pub fn regular_interval_ms(&self, idle_polls: u32) -> i64 {
        let cap = self.max_poll_interval_ms.max(self.poll_interval_ms);
        self.poll_interval_ms
            .saturating_mul(1i64 << idle_polls.min(20))
            .min(cap)
    }

    /// The shortest time from registration to healthy.
    pub fn healthy_after_ms(&self) -> i64 {
        self.check_interval_ms * self.healthy_threshold
    }

    /// The windows in which `p` is likely to turn healthy.
    fn windows(&self, p: &Pending) -> impl Iterator<Item = (i64, i64)> {
        let earliest = p.ready_since_ms.map(|r| {
            let start = r + self.healthy_after_ms();
            (start, start + self.check_interval_ms + 1_000)
        });
        let from_checks = p.checks_began_between.map(|(before, seen)| {
            let to_healthy = (self.healthy_threshold - 1).max(0) * self.check_interval_ms;
            (
                before + to_healthy,
                seen + to_healthy + self.check_interval_ms,
            )
        });
        earliest.into_iter().chain(from_checks)
    }
}

/// A group's polling history.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupTimes {
    pub last_poll_ms: Option<i64>,
    /// Backoff after an error: no poll before this.
    pub not_before_ms: Option<i64>,
    /// Polls in a row whose answer changed nothing.
    pub idle_polls: u32,
}

/// When the group should be polled next, or `None` when no pending target can be healthy
/// (nothing pending, or no pod's containers ready yet).
pub fn next_poll(pending: &[Pending], timing: Timing, times: GroupTimes) -> Option<i64> {
    let earliest = pending
        .iter()
        .filter_map(|p| p.ready_since_ms)
        .map(|t| t + timing.healthy_after_ms())
        .min()?;
    let last = times.last_poll_ms.unwrap_or(i64::MIN / 2);
    let regular = last + timing.regular_interval_ms(times.idle_polls);
    // The first moment after the last poll + fast interval that lies in a window.
    let soon = last + timing.fast_interval_ms.min(timing.poll_interval_ms);
    let fast = pending
        .iter()
        .flat_map(|p| timing.windows(p))
        .filter_map(|(from, to)| {
            let t = from.max(soon);
            (t <= to).then_some(t)
        })
        .min();
    let next = fast.map_or(regular, |f| f.min(regular));
    Some(
        next.max(earliest)
            .max(times.not_before_ms.unwrap_or(i64::MIN)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // NLB-like: checks every 10 s, healthy after 3.
    const T: Timing = Timing {
        check_interval_ms: 10_000,
        healthy_threshold: 3,
        poll_interval_ms: 2_000,
        fast_interval_ms: 500,
        max_poll_interval_ms: 30_000,
    };

    fn ready(at: i64) -> Pending {
        Pending {
            ready_since_ms: Some(at),
            checks_began_between: None,
        }
    }

    fn after(last: i64) -> GroupTimes {
        GroupTimes {
            last_poll_ms: Some(last),
            ..GroupTimes::default()
        }
    }

    #[test]
    fn nothing_pending_means_no_poll() {
        assert_eq!(next_poll(&[], T, GroupTimes::default()), None);
        assert_eq!(
            next_poll(&[Pending::default()], T, GroupTimes::default()),
            None
        );
    }

    #[test]
    fn first_poll_when_the_target_can_first_be_healthy() {
        assert_eq!(
            next_poll(&[ready(1_000)], T, GroupTimes::default()),
            Some(31_000)
        );
        // The earliest pending target decides.
        let p = [ready(5_000), ready(1_000), Pending::default()];
        assert_eq!(next_poll(&p, T, GroupTimes::default()), Some(31_000));
    }

    #[test]
    fn fast_polls_right_after_the_earliest_moment_then_short_polls() {
        // Inside [31 s, 42 s]: every 500 ms.
        assert_eq!(next_poll(&[ready(1_000)], T, after(31_000)), Some(31_500));
        assert_eq!(next_poll(&[ready(1_000)], T, after(41_400)), Some(41_900));
        assert_eq!(next_poll(&[ready(1_000)], T, after(41_700)), Some(43_700));
        // Past the window: the regular 2 s.
        assert_eq!(next_poll(&[ready(1_000)], T, after(42_000)), Some(44_000));
    }

    #[test]
    fn fast_polls_where_checks_that_began_would_turn_healthy() {
        // Checks began between the polls at 50 s and 52 s: healthy in [70 s, 82 s].
        let p = Pending {
            ready_since_ms: Some(1_000),
            checks_began_between: Some((50_000, 52_000)),
        };
        assert_eq!(next_poll(&[p], T, after(52_000)), Some(54_000));
        assert_eq!(next_poll(&[p], T, after(68_500)), Some(70_000));
        assert_eq!(next_poll(&[p], T, after(70_000)), Some(70_500));
        assert_eq!(next_poll(&[p], T, after(82_000)), Some(84_000));
    }

    #[test]
    fn a_new_pod_does_not_pull_polls_earlier_than_its_own_windows() {
        // A target ready long ago next to a fresh one: the old one's windows are over.
        assert_eq!(
            next_poll(&[ready(-100_000)], T, after(31_000)),
            Some(33_000)
        );
        // A fresh target after an old poll waits for its own earliest time.
        assert_eq!(next_poll(&[ready(50_000)], T, after(0)), Some(80_000));
    }

    #[test]
    fn backoff_delays_the_poll() {
        let times = GroupTimes {
            last_poll_ms: Some(31_000),
            not_before_ms: Some(47_000),
            idle_polls: 0,
        };
        assert_eq!(next_poll(&[ready(1_000)], T, times), Some(47_000));
    }

    #[test]
    fn a_group_whose_answers_stay_the_same_backs_off_to_the_cap() {
        // Ready long ago, past every window: only the regular interval applies.
        let idle = |n| GroupTimes {
            last_poll_ms: Some(100_000),
            not_before_ms: None,
            idle_polls: n,
        };
        let after: Vec<_> = (0..7)
            .map(|n| next_poll(&[ready(1_000)], T, idle(n)).unwrap() - 100_000)
            .collect();
        assert_eq!(after, [2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000]);
        // A fast window still wins over the backoff: a new target's likely moment is not missed.
        let fresh = ready(80_000);
        assert_eq!(next_poll(&[ready(1_000), fresh], T, idle(6)), Some(110_000));
        assert_eq!(
            next_poll(
                &[ready(1_000), fresh],
                T,
                GroupTimes {
                    last_poll_ms: Some(110_000),
                    ..idle(6)
                }
            ),
            Some(110_500)
        );
    }

    #[test]
    fn fast_interval_never_slows_polling() {
        let slow_fast = Timing {
            fast_interval_ms: 5_000,
            ..T
        };
        assert_eq!(
            next_poll(&[ready(1_000)], slow_fast, after(31_000)),
            Some(33_000)
        );
    }
}
