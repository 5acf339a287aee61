//! When to poll a target group: pure arithmetic over what is pending.
//!
//! A target can be healthy no sooner than `interval × healthy threshold` after it is
//! registered, which happens once its pod's containers are ready. So the first poll waits
//! until then, later polls come every `poll_interval` until the gate is True, and a group
//! with nothing pending is not polled at all. Times are milliseconds on one clock.

/// A target waiting on its gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending {
    /// When its containers became ready (so registration could start), if they are.
    pub ready_since_ms: Option<i64>,
}

/// A group's polling history.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupTimes {
    pub last_poll_ms: Option<i64>,
    /// Backoff after an error: no poll before this.
    pub not_before_ms: Option<i64>,
}

/// When the group should be polled next, or `None` when no pending target can be healthy
/// (nothing pending, or no pod's containers ready yet).
pub fn next_poll(
    pending: &[Pending],
    healthy_after_ms: i64,
    poll_interval_ms: i64,
    times: GroupTimes,
) -> Option<i64> {
    let earliest = pending
        .iter()
        .filter_map(|p| p.ready_since_ms)
        .map(|t| t + healthy_after_ms)
        .min()?;
    let after_last = times
        .last_poll_ms
        .map_or(i64::MIN, |t| t + poll_interval_ms);
    Some(
        earliest
            .max(after_last)
            .max(times.not_before_ms.unwrap_or(i64::MIN)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEALTHY_AFTER: i64 = 30_000; // 10 s × 3
    const SHORT: i64 = 2_000;

    fn ready(at: i64) -> Pending {
        Pending {
            ready_since_ms: Some(at),
        }
    }

    #[test]
    fn nothing_pending_means_no_poll() {
        assert_eq!(
            next_poll(&[], HEALTHY_AFTER, SHORT, GroupTimes::default()),
            None
        );
        let not_ready = Pending {
            ready_since_ms: None,
        };
        assert_eq!(
            next_poll(&[not_ready], HEALTHY_AFTER, SHORT, GroupTimes::default()),
            None
        );
    }

    #[test]
    fn first_poll_when_the_target_can_first_be_healthy() {
        assert_eq!(
            next_poll(&[ready(1_000)], HEALTHY_AFTER, SHORT, GroupTimes::default()),
            Some(31_000)
        );
        // The earliest pending target decides.
        let p = [
            ready(5_000),
            ready(1_000),
            Pending {
                ready_since_ms: None,
            },
        ];
        assert_eq!(
            next_poll(&p, HEALTHY_AFTER, SHORT, GroupTimes::default()),
            Some(31_000)
        );
    }

    #[test]
    fn then_short_polls_until_healthy() {
        let times = GroupTimes {
            last_poll_ms: Some(31_000),
            not_before_ms: None,
        };
        assert_eq!(
            next_poll(&[ready(1_000)], HEALTHY_AFTER, SHORT, times),
            Some(33_000)
        );
    }

    #[test]
    fn a_new_pod_does_not_pull_polls_forward_past_the_interval() {
        // Polled at 31 s for an old target; a target ready long ago appears: still 2 s apart.
        let times = GroupTimes {
            last_poll_ms: Some(31_000),
            not_before_ms: None,
        };
        assert_eq!(
            next_poll(&[ready(-100_000)], HEALTHY_AFTER, SHORT, times),
            Some(33_000)
        );
        // A fresh target after an old poll waits for its own earliest time.
        let times = GroupTimes {
            last_poll_ms: Some(0),
            not_before_ms: None,
        };
        assert_eq!(
            next_poll(&[ready(50_000)], HEALTHY_AFTER, SHORT, times),
            Some(80_000)
        );
    }

    #[test]
    fn backoff_delays_the_poll() {
        let times = GroupTimes {
            last_poll_ms: Some(31_000),
            not_before_ms: Some(47_000),
        };
        assert_eq!(
            next_poll(&[ready(1_000)], HEALTHY_AFTER, SHORT, times),
            Some(47_000)
        );
    }
}
