//! What a gate's condition should say: (target health, policy) → condition.

use crate::domain::{Condition, ConditionStatus};

/// ELB's view of one target, as DescribeTargetHealth reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// `initial`, `healthy`, `unhealthy`, `unhealthy.draining`, `unused`, `draining`, `unavailable`.
    pub state: String,
    pub reason: Option<String>,
    pub description: Option<String>,
}

/// Which non-healthy states still release the gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// `unused` + `Target.NotInUse`: the group is attached to no load balancer, so no traffic
    /// waits on the target.
    pub unused_is_ready: bool,
    /// `unavailable` + `Target.HealthCheckDisabled`: ELB will never report `healthy`.
    pub unavailable_is_ready: bool,
}

impl Policy {
    /// What the AWS Load Balancer Controller releases: nothing but `healthy`.
    pub const AS_AWS_CONTROLLER: Self = Self {
        unused_is_ready: false,
        unavailable_is_ready: false,
    };
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            unused_is_ready: true,
            unavailable_is_ready: true,
        }
    }
}

/// The condition we want written (status, reason, message), before the transition time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub status: ConditionStatus,
    pub reason: String,
    pub message: String,
}

impl Desired {
    pub fn new(status: ConditionStatus, reason: &str, message: &str) -> Self {
        Self {
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// True with a reason of our own, for gates released without a healthy target.
    pub fn released(reason: &str, message: &str) -> Self {
        Self::new(ConditionStatus::True, reason, message)
    }
}

pub const REASON_REGISTRATION: &str = "Elb.RegistrationInProgress";
pub const MESSAGE_REGISTRATION: &str = "Target registration is in progress";
pub const REASON_BINDING_DELETED: &str = "Readygate.BindingNotFound";
pub const REASON_SERVICE_DELETED: &str = "Readygate.ServiceNotFound";
pub const REASON_NOT_SELECTED: &str = "Readygate.NotSelected";
pub const REASON_NOT_IP: &str = "Readygate.NotIpTarget";
pub const REASON_FAILSAFE: &str = "Readygate.FailsafeTimeout";
pub const REASON_NO_TARGET: &str = "Readygate.TargetUnresolved";

/// The condition for a target that is not registered in the group (yet).
pub fn not_registered() -> Desired {
    Desired::new(
        ConditionStatus::False,
        REASON_REGISTRATION,
        MESSAGE_REGISTRATION,
    )
}

/// The condition for a target ELB reports on.
pub fn from_health(health: &Health, policy: Policy) -> Desired {
    let reason = health.reason.as_deref().unwrap_or("");
    let message = health.description.as_deref().unwrap_or("");
    let ready = match (health.state.as_str(), reason) {
        ("healthy", _) => true,
        ("unused", "Target.NotInUse") => policy.unused_is_ready,
        ("unavailable", "Target.HealthCheckDisabled") => policy.unavailable_is_ready,
        _ => false,
    };
    // AWS says `unused`, some emulators `unavailable`: either way it is not registered yet. A
    // draining target of a pod still waiting on its gate is one the AWS controller registers
    // again, and it says so (v3.5.0 matches only targets that are not draining).
    if reason == "Target.NotRegistered"
        || matches!(health.state.as_str(), "draining" | "unhealthy.draining")
    {
        return not_registered();
    }
    // ELB's reason and description as they are — none for `healthy` — exactly as the AWS Load
    // Balancer Controller writes them from the same answer: it writes this condition too, and
    // rewrites any other wording (one more write per gate, and a re-queue of its binding).
    let status = if ready {
        ConditionStatus::True
    } else {
        ConditionStatus::False
    };
    Desired::new(status, reason, message)
}

/// The condition for a target ELB reports on, in a group DescribeTargetGroups described
/// (`attached`: it has `LoadBalancerArns`; `None`: not known yet). `unused` / `Target.NotInUse`
/// releases the gate (policy permitting) only in a group attached to no load balancer: in an
/// attached one it means the target's Availability Zone is not enabled on the load balancer, so
/// the target gets no traffic while the pod would count as ready.
pub fn from_health_in_group(health: &Health, policy: Policy, attached: Option<bool>) -> Desired {
    let policy = Policy {
        unused_is_ready: policy.unused_is_ready && attached == Some(false),
        ..policy
    };
    from_health(health, policy)
}

/// `unused` / `Target.NotInUse` in a group attached to a load balancer: worth a Warning Event.
pub fn not_in_use_while_attached(health: &Health, attached: Option<bool>) -> bool {
    health.state == "unused"
        && health.reason.as_deref() == Some("Target.NotInUse")
        && attached == Some(true)
}

/// What to write given the pod's current condition, or `None` when the write would change
/// nothing. A True gate stays True (a container restart reopens it: `recheck`); the transition time is kept while the status is unchanged.
pub fn next(
    current: Option<&Condition>,
    desired: &Desired,
    now_rfc3339: &str,
) -> Option<Condition> {
    if let Some(c) = current {
        if c.status == ConditionStatus::True {
            return None;
        }
        if c.status == desired.status && c.reason == desired.reason && c.message == desired.message
        {
            return None;
        }
    }
    let last_transition_time = match current {
        Some(c) if c.status == desired.status => c.last_transition_time.clone(),
        _ => None,
    }
    .or_else(|| Some(now_rfc3339.to_string()));
    Some(Condition {
        status: desired.status,
        reason: desired.reason.clone(),
        message: desired.message.clone(),
        last_transition_time,
    })
}

/// What to write on a gate that was True before its containers restarted: the condition with a
/// fresh transition time, whatever it says, so the gate reads as checked after the restart
/// (and a True from a healthy answer settles it instead of leaving it pending).
pub fn recheck(desired: &Desired, now_rfc3339: &str) -> Condition {
    Condition {
        status: desired.status,
        reason: desired.reason.clone(),
        message: desired.message.clone(),
        last_transition_time: Some(now_rfc3339.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(state: &str, reason: Option<&str>, desc: Option<&str>) -> Health {
        Health {
            state: state.into(),
            reason: reason.map(Into::into),
            description: desc.map(Into::into),
        }
    }

    #[test]
    fn healthy_is_true() {
        let d = from_health(&h("healthy", None, None), Policy::default());
        // What the AWS Load Balancer Controller writes for a healthy target: True, with no
        // reason and no message.
        assert_eq!(d, Desired::new(ConditionStatus::True, "", ""));
    }

    #[test]
    fn a_state_without_a_reason_is_written_as_elb_gives_it() {
        let d = from_health(
            &h("unhealthy", None, Some("Health checks failed")),
            Policy::default(),
        );
        assert_eq!(
            d,
            Desired::new(ConditionStatus::False, "", "Health checks failed")
        );
    }

    #[test]
    fn every_other_state_is_false_with_elb_reason() {
        let cases = [
            (
                "initial",
                "Elb.InitialHealthChecking",
                "Initial health checks in progress",
            ),
            (
                "initial",
                "Elb.RegistrationInProgress",
                "Target registration is in progress",
            ),
            (
                "unhealthy",
                "Target.ResponseCodeMismatch",
                "Health checks failed with these codes: [503]",
            ),
            ("unhealthy", "Target.Timeout", "Request timed out"),
            (
                "unhealthy",
                "Target.FailedHealthChecks",
                "Health checks failed",
            ),
            (
                "unavailable",
                "Elb.InternalError",
                "Health checks failed due to an internal error",
            ),
            (
                "unused",
                "Target.InvalidState",
                "Target is in the stopped state",
            ),
            (
                "unused",
                "Target.IpUnusable",
                "The target IP address is reserved",
            ),
        ];
        for (state, reason, desc) in cases {
            for policy in [
                Policy::default(),
                Policy {
                    unused_is_ready: false,
                    unavailable_is_ready: false,
                },
            ] {
                let d = from_health(&h(state, Some(reason), Some(desc)), policy);
                assert_eq!(
                    d,
                    Desired::new(ConditionStatus::False, reason, desc),
                    "{state} {reason}"
                );
            }
        }
    }

    #[test]
    fn a_draining_target_reads_as_registration_in_progress_as_the_aws_controller_writes_it() {
        for (state, reason, desc) in [
            (
                "draining",
                "Target.DeregistrationInProgress",
                "Target deregistration is in progress",
            ),
            (
                "unhealthy.draining",
                "Target.FailedHealthChecks",
                "Health checks failed",
            ),
        ] {
            let d = from_health(&h(state, Some(reason), Some(desc)), Policy::default());
            assert_eq!(d, not_registered(), "{state}");
        }
    }

    #[test]
    fn not_registered_reads_as_registration_in_progress() {
        let d = from_health(
            &h(
                "unused",
                Some("Target.NotRegistered"),
                Some("Target is not registered"),
            ),
            Policy::default(),
        );
        assert_eq!(d, not_registered());
        let d = from_health(
            &h(
                "unavailable",
                Some("Target.NotRegistered"),
                Some("Target is not registered"),
            ),
            Policy::default(),
        );
        assert_eq!(d, not_registered());
        assert_eq!(d.status, ConditionStatus::False);
    }

    #[test]
    fn unused_not_in_use_follows_policy() {
        let health = h(
            "unused",
            Some("Target.NotInUse"),
            Some("Target group is not configured to receive traffic from the load balancer"),
        );
        assert_eq!(
            from_health(&health, Policy::default()).status,
            ConditionStatus::True
        );
        let strict = Policy {
            unused_is_ready: false,
            unavailable_is_ready: true,
        };
        assert_eq!(from_health(&health, strict).status, ConditionStatus::False);
        assert_eq!(from_health(&health, strict).reason, "Target.NotInUse");
    }

    #[test]
    fn not_in_use_releases_only_in_a_group_attached_to_no_load_balancer() {
        let health = h(
            "unused",
            Some("Target.NotInUse"),
            Some("Target is in an Availability Zone that is not enabled for the load balancer"),
        );
        let detached = from_health_in_group(&health, Policy::default(), Some(false));
        assert_eq!(detached.status, ConditionStatus::True);
        assert!(!not_in_use_while_attached(&health, Some(false)));
        // Attached (or not known yet): the target gets no traffic, so the gate stays False.
        for attached in [Some(true), None] {
            let d = from_health_in_group(&health, Policy::default(), attached);
            assert_eq!(
                d,
                Desired::new(
                    ConditionStatus::False,
                    "Target.NotInUse",
                    health.description.as_deref().unwrap()
                )
            );
        }
        assert!(not_in_use_while_attached(&health, Some(true)));
        // Other states are untouched by the attachment.
        let healthy = h("healthy", None, None);
        assert_eq!(
            from_health_in_group(&healthy, Policy::default(), Some(true)).status,
            ConditionStatus::True
        );
        assert!(!not_in_use_while_attached(&healthy, Some(true)));
    }

    #[test]
    fn unavailable_health_check_disabled_follows_policy() {
        let health = h(
            "unavailable",
            Some("Target.HealthCheckDisabled"),
            Some("Health checks are disabled"),
        );
        assert_eq!(
            from_health(&health, Policy::default()).status,
            ConditionStatus::True
        );
        let strict = Policy {
            unused_is_ready: true,
            unavailable_is_ready: false,
        };
        assert_eq!(from_health(&health, strict).status, ConditionStatus::False);
    }

    fn cond(status: ConditionStatus, reason: &str, msg: &str, ltt: &str) -> Condition {
        Condition {
            status,
            reason: reason.into(),
            message: msg.into(),
            last_transition_time: Some(ltt.into()),
        }
    }

    #[test]
    fn transition_time_kept_while_status_unchanged() {
        let now = "2026-11-21T10:00:05Z";
        let cur = cond(
            ConditionStatus::False,
            REASON_REGISTRATION,
            MESSAGE_REGISTRATION,
            "2026-11-21T10:00:00Z",
        );
        let initial = Desired::new(
            ConditionStatus::False,
            "Elb.InitialHealthChecking",
            "Initial health checks in progress",
        );
        let w = next(Some(&cur), &initial, now).unwrap();
        assert_eq!(
            w.last_transition_time.as_deref(),
            Some("2026-11-21T10:00:00Z")
        );
        assert_eq!(w.reason, "Elb.InitialHealthChecking");
        let healthy = from_health(&h("healthy", None, None), Policy::default());
        let w = next(Some(&cur), &healthy, now).unwrap();
        assert_eq!(w.last_transition_time.as_deref(), Some(now));
        assert_eq!(
            next(None, &initial, now)
                .unwrap()
                .last_transition_time
                .as_deref(),
            Some(now)
        );
    }

    #[test]
    fn a_recheck_after_a_restart_can_turn_true_false_and_always_moves_the_transition_time() {
        let now = "2026-11-21T10:05:00Z";
        let w = recheck(&not_registered(), now);
        assert_eq!(w.status, ConditionStatus::False);
        assert_eq!(w.reason, REASON_REGISTRATION);
        assert_eq!(w.last_transition_time.as_deref(), Some(now));
        let healthy = from_health(&h("healthy", None, None), Policy::default());
        assert_eq!(
            recheck(&healthy, now).last_transition_time.as_deref(),
            Some(now)
        );
    }

    #[test]
    fn no_op_writes_are_skipped_and_true_stays_true() {
        let cur = cond(
            ConditionStatus::False,
            REASON_REGISTRATION,
            MESSAGE_REGISTRATION,
            "2026-11-21T10:00:00Z",
        );
        assert_eq!(
            next(Some(&cur), &not_registered(), "2026-11-21T10:00:09Z"),
            None
        );
        let t = cond(
            ConditionStatus::True,
            "Elb.Healthy",
            "Target is healthy",
            "2026-11-21T10:00:00Z",
        );
        assert_eq!(
            next(Some(&t), &not_registered(), "2026-11-21T10:00:09Z"),
            None
        );
    }
}
