//! Whether the TargetGroupBinding CRD is really gone: a decision over the binding watch's 404s
//! and discovery's answers, with time as an input so it is tested without a cluster.
//!
//! A 404 on the list or watch is no proof: the API server answers so while it restarts or while
//! the CRD is re-applied, and wiping the bindings then would release every pending gate. So the
//! known bindings stay until discovery has said "absent" at every check for the whole grace
//! period. Only at start-up, with no binding list ever received, does a confirmed absence count
//! at once, so the webhook is not kept waiting for a list that cannot come.

use std::time::Duration;

/// What discovery says about group `elbv2.k8s.aws`, resource `targetgroupbindings`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Discovery {
    Absent,
    Present,
    /// Discovery itself failed: no evidence either way.
    Unknown(String),
}

/// What to do with the known bindings after a 404.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Keep them: a blip, or an absence not yet sustained for the grace period.
    Keep,
    /// The CRD is gone: there are no bindings.
    Missing,
}

/// The binding watch's 404 history.
#[derive(Clone, Debug)]
pub struct CrdPresence {
    grace_ms: i64,
    /// First 404 since the last successful list.
    not_found_since: Option<i64>,
    /// First of the unbroken run of "absent" answers from discovery.
    absent_since: Option<i64>,
}

impl CrdPresence {
    pub fn new(grace: Duration) -> Self {
        Self {
            grace_ms: grace.as_millis() as i64,
            not_found_since: None,
            absent_since: None,
        }
    }

    /// The list or watch answered 404 at `now_ms`, and discovery then said `discovery`.
    /// `ever_listed`: a binding list has been received since start (there is something to lose).
    pub fn not_found(&mut self, now_ms: i64, ever_listed: bool, discovery: &Discovery) -> Verdict {
        self.not_found_since.get_or_insert(now_ms);
        match discovery {
            Discovery::Absent => {
                let since = *self.absent_since.get_or_insert(now_ms);
                if !ever_listed || now_ms - since >= self.grace_ms {
                    Verdict::Missing
                } else {
                    Verdict::Keep
                }
            }
            // Any other answer breaks the run: the absence must be sustained, not sampled.
            Discovery::Present | Discovery::Unknown(_) => {
                self.absent_since = None;
                Verdict::Keep
            }
        }
    }

    /// A list succeeded: the CRD is there.
    pub fn listed(&mut self) {
        self.not_found_since = None;
        self.absent_since = None;
    }

    /// Since when the watch has been answering 404, if it is.
    pub fn not_found_since(&self) -> Option<i64> {
        self.not_found_since
    }

    /// Since when discovery has said "absent" without a break, if it does.
    pub fn absent_since(&self) -> Option<i64> {
        self.absent_since
    }

    pub fn grace(&self) -> Duration {
        Duration::from_millis(self.grace_ms.max(0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    #[test]
    fn a_blip_keeps_the_bindings_whatever_discovery_says_meanwhile() {
        let mut p = CrdPresence::new(Duration::from_secs(120));
        // API server restarting: 404s, discovery failing or still listing the group.
        assert_eq!(
            p.not_found(0, true, &Discovery::Unknown("connection refused".into())),
            Verdict::Keep
        );
        assert_eq!(p.not_found(MIN, true, &Discovery::Present), Verdict::Keep);
        assert_eq!(
            p.not_found(10 * MIN, true, &Discovery::Present),
            Verdict::Keep
        );
        assert_eq!(p.not_found_since(), Some(0));
        p.listed();
        assert_eq!(p.not_found_since(), None);
    }

    #[test]
    fn a_confirmed_absence_counts_only_once_sustained_for_the_grace() {
        let mut p = CrdPresence::new(Duration::from_secs(120));
        assert_eq!(p.not_found(0, true, &Discovery::Absent), Verdict::Keep);
        assert_eq!(p.not_found(MIN, true, &Discovery::Absent), Verdict::Keep);
        // CRD re-applied: discovery lists it again, so the run starts over.
        assert_eq!(
            p.not_found(MIN + 1, true, &Discovery::Present),
            Verdict::Keep
        );
        assert_eq!(
            p.not_found(2 * MIN, true, &Discovery::Absent),
            Verdict::Keep
        );
        assert_eq!(
            p.not_found(3 * MIN, true, &Discovery::Absent),
            Verdict::Keep
        );
        assert_eq!(p.absent_since(), Some(2 * MIN));
        assert_eq!(
            p.not_found(4 * MIN, true, &Discovery::Absent),
            Verdict::Missing
        );
    }

    #[test]
    fn at_start_up_a_confirmed_absence_counts_at_once_an_unconfirmed_one_never() {
        let mut p = CrdPresence::new(Duration::from_secs(120));
        assert_eq!(
            p.not_found(0, false, &Discovery::Unknown("timeout".into())),
            Verdict::Keep
        );
        assert_eq!(p.not_found(1, false, &Discovery::Present), Verdict::Keep);
        assert_eq!(p.not_found(2, false, &Discovery::Absent), Verdict::Missing);
    }
}
