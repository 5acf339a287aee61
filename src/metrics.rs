//! Prometheus metrics of the process, in one registry served on the admin port.
//!
//! Every label value is defined once, here, by [`label_values!`]: the enum the code counts with
//! and the text exported. Registration creates every series of a labelled family at 0 from
//! those enums, so the first scrape shows each family (prometheus-client prints nothing of a
//! family without series, not even `# TYPE`) and rate() sees the first event of each. No label
//! is unbounded (no binding, pod or namespace names), so every combination is created.

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::termination::Source;

/// A label's values: the enum, `ALL` (every value, in order) and `label()` (the text exported).
macro_rules! label_values {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $label:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            /// Every value: the series created at registration.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)+];

            pub const fn label(self) -> &'static str {
                match self {
                    $(Self::$variant => $label,)+
                }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                encoder.write_str(self.label())
            }
        }
    };
}

label_values! {
    /// How an admission request was answered.
    Admission {
        /// Gates (and maybe a preStop sleep) added.
        Patched => "patched",
        /// A pod CREATE that needed nothing.
        Allowed => "allowed",
        /// Not a pod CREATE: let through untouched.
        Skipped => "skipped",
        /// Not answered with a review (HTTP 4xx/5xx): unreadable, or the caches not synced.
        Error => "error",
    }
}

label_values! {
    /// A changed serving key pair: swapped in, or rejected (the previous one still served).
    TlsReload {
        Ok => "ok",
        Error => "error",
    }
}

label_values! {
    /// The ELBv2 calls readygate makes.
    ElbOperation {
        DescribeTargetHealth => "DescribeTargetHealth",
        DescribeTargetGroups => "DescribeTargetGroups",
    }
}

label_values! {
    /// A release readygate would make and leaves out on a binding the AWS Load Balancer
    /// Controller reconciles: that controller writes the condition too, False in these cases,
    /// so a True of readygate's would flip the pod Ready and back.
    Deferral {
        /// `unused` / `Target.NotInUse` in a target group attached to no load balancer.
        Unused => "unused",
        /// `unavailable` / `Target.HealthCheckDisabled`.
        Unavailable => "unavailable",
        /// `--failsafe-timeout` passed.
        Failsafe => "failsafe",
    }
}

label_values! {
    /// How an ELBv2 call ended.
    ElbOutcome {
        Ok => "ok",
        Throttled => "throttled",
        NotFound => "not_found",
        ServerError => "server_error",
        Timeout => "timeout",
        Error => "error",
    }
}

label_values! {
    /// What became of a pod status condition write.
    StatusWrite {
        Written => "written",
        /// The pod no longer exists: nothing to do.
        Gone => "gone",
        /// The pod of that name now has another uid: the write was meant for a pod that no
        /// longer exists, so it is dropped (the replacement is a pod of its own, decided on its
        /// own).
        Replaced => "replaced",
        /// The pod changed under us: the next pass decides again.
        Conflict => "conflict",
        NotLeader => "not_leader",
        Timeout => "timeout",
        Failed => "failed",
    }
}

/// `pod` or `namespace`: where an annotation that did not parse was set.
impl EncodeLabelValue for Source {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    pub outcome: Admission,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub outcome: TlsReload,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub operation: ElbOperation,
    pub outcome: ElbOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub outcome: StatusWrite,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeferralLabels {
    pub reason: Deferral,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: Source,
}

/// A family of counters with the series of `labels` created, at 0.
fn with_series<L>(labels: impl IntoIterator<Item = L>) -> Family<L, Counter>
where
    L: Clone + std::hash::Hash + Eq,
{
    let family = Family::default();
    for l in labels {
        let _created = family.get_or_create(&l);
    }
    family
}

/// Upper bounds of `readygate_admission_duration_seconds`: fine below a millisecond, where
/// readygate answers (p99 0.05 ms, docs/benchmarks.md), and on to 10 s, past the webhook's
/// timeoutSeconds (5 in the manifests; `readygate doctor` warns above 10), so that the p99 alerts
/// can compare with it.
pub const ADMISSION_BUCKETS: [f64; 17] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

pub struct Metrics {
    pub registry: Registry,
    pub admissions: Family<AdmissionLabels, Counter>,
    pub admission_seconds: Histogram,
    pub gates_injected: Counter,
    /// Pods given the preStop sleep.
    pub prestop_injected: Counter,
    /// `readygate.io/prestop-sleep` annotations that did not parse, by where they were set.
    pub prestop_invalid_annotations: Family<SourceLabels, Counter>,
    pub tls_reloads: Family<ReloadLabels, Counter>,
    /// notAfter of the certificate being served, unix seconds.
    pub tls_certificate_expiry: Gauge,
    /// 1 while the key pair's files hold the pair being served; 0 while they cannot be read or
    /// hold a rejected pair.
    pub tls_last_reload_successful: Gauge,
    /// When the certificate being served was loaded, unix seconds.
    pub tls_last_reload_success_time: Gauge,
    pub pending_pods: Gauge,
    pub pods_missing_gates: Gauge,
    pub gate_ready_seconds: Histogram,
    pub healthy_to_written_seconds: Histogram,
    pub elbv2_calls: Family<CallLabels, Counter>,
    pub elbv2_throttles: Counter,
    pub status_writes: Family<WriteLabels, Counter>,
    /// Gates (once per pod and gate) whose release readygate left to the AWS Load Balancer
    /// Controller, by reason.
    pub releases_deferred: Family<DeferralLabels, Counter>,
    pub is_leader: Gauge,
    /// 0: bindings listed; 1: the binding watch answers 404, last known bindings kept;
    /// 2: the CRD is confirmed missing.
    pub bindings_crd_state: Gauge,
    pub binding_watch_not_found: Counter,
    /// Pods held in the cache: the leader's gated pods and the pods of opted-in namespaces;
    /// none on a webhook-only replica or a follower. Set when scraped.
    pub cached_pods: Gauge,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("readygate");
        let admissions = with_series(
            Admission::ALL
                .iter()
                .map(|&outcome| AdmissionLabels { outcome }),
        );
        let admission_seconds = Histogram::new(ADMISSION_BUCKETS);
        let gates_injected = Counter::default();
        let prestop_injected = Counter::default();
        let prestop_invalid_annotations =
            with_series(Source::ANNOTATIONS.map(|source| SourceLabels { source }));
        let tls_reloads = with_series(
            TlsReload::ALL
                .iter()
                .map(|&outcome| ReloadLabels { outcome }),
        );
        let tls_certificate_expiry = Gauge::default();
        let tls_last_reload_successful = Gauge::default();
        let tls_last_reload_success_time = Gauge::default();
        let pending_pods = Gauge::default();
        let pods_missing_gates = Gauge::default();
        let gate_ready_seconds =
            Histogram::new([1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0]);
        let healthy_to_written_seconds =
            Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0]);
        let elbv2_calls = with_series(ElbOperation::ALL.iter().flat_map(|&operation| {
            ElbOutcome::ALL
                .iter()
                .map(move |&outcome| CallLabels { operation, outcome })
        }));
        let elbv2_throttles = Counter::default();
        let status_writes = with_series(
            StatusWrite::ALL
                .iter()
                .map(|&outcome| WriteLabels { outcome }),
        );
        let releases_deferred = with_series(
            Deferral::ALL
                .iter()
                .map(|&reason| DeferralLabels { reason }),
        );
        let is_leader = Gauge::default();
        let bindings_crd_state = Gauge::default();
        let binding_watch_not_found = Counter::default();
        let cached_pods = Gauge::default();

        registry.register(
            "admissions",
            "Admission requests by outcome",
            admissions.clone(),
        );
        registry.register(
            "admission_duration_seconds",
            "Time to answer an admission request",
            admission_seconds.clone(),
        );
        registry.register(
            "gates_injected",
            "Readiness gates added to pods",
            gates_injected.clone(),
        );
        registry.register(
            "prestop_injected",
            "Pods given a preStop sleep and the grace period extended by it",
            prestop_injected.clone(),
        );
        registry.register(
            "prestop_invalid_annotations",
            "readygate.io/prestop-sleep annotations that did not parse (the pod got no sleep), by source (pod or namespace)",
            prestop_invalid_annotations.clone(),
        );
        registry.register(
            "tls_reloads",
            "Changes of the serving key pair's files by outcome: ok (swapped in), error (rejected, the previous pair still served)",
            tls_reloads.clone(),
        );
        // After tls_reloads, which is counted after these are set: a scrape that sees a reload
        // counted sees its gauges.
        registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "notAfter of the serving certificate the webhook presents, unix seconds",
            tls_certificate_expiry.clone(),
        );
        registry.register(
            "tls_last_reload_successful",
            "1 while the serving key pair's files hold the pair being served (from start-up, and after a change is taken); 0 while they cannot be read or hold a rejected pair",
            tls_last_reload_successful.clone(),
        );
        registry.register(
            "tls_last_reload_success_timestamp_seconds",
            "When the serving certificate the webhook presents was loaded (start-up or its last successful reload), unix seconds",
            tls_last_reload_success_time.clone(),
        );
        registry.register(
            "gated_pods_pending",
            "Gated pods with a gate not yet True",
            pending_pods.clone(),
        );
        registry.register(
            "pods_missing_gates",
            "Pods that should carry a readiness gate but do not (created before their binding or while the webhook was down)",
            pods_missing_gates.clone(),
        );
        registry.register(
            "gate_ready_seconds",
            "Time from pod creation to its gate condition True",
            gate_ready_seconds.clone(),
        );
        registry.register(
            "healthy_to_written_seconds",
            "Time from the first healthy observation of a target to its condition written",
            healthy_to_written_seconds.clone(),
        );
        registry.register(
            "elbv2_calls",
            "ELBv2 API calls by operation and outcome",
            elbv2_calls.clone(),
        );
        registry.register(
            "elbv2_throttles",
            "ELBv2 calls answered with Throttling",
            elbv2_throttles.clone(),
        );
        registry.register(
            "status_writes",
            "Pod status condition writes by outcome",
            status_writes.clone(),
        );
        registry.register(
            "gate_releases_deferred",
            "Gates, once per pod and gate, that readygate would release and leaves False because the AWS Load Balancer Controller reconciles their binding and writes the condition too, by reason (unused: no load balancer; unavailable: health checks disabled; failsafe: --failsafe-timeout)",
            releases_deferred.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            is_leader.clone(),
        );
        registry.register(
            "bindings_crd_state",
            "TargetGroupBinding CRD: 0 listed, 1 list/watch answering 404 (last known bindings kept), 2 confirmed missing",
            bindings_crd_state.clone(),
        );
        registry.register(
            "binding_watch_not_found",
            "404 answers to the TargetGroupBinding list/watch",
            binding_watch_not_found.clone(),
        );
        registry.register(
            "cached_pods",
            "Pods held in the cache (only the leader holds pods: those with our gates or in opted-in namespaces)",
            cached_pods.clone(),
        );

        Self {
            registry,
            admissions,
            admission_seconds,
            gates_injected,
            prestop_injected,
            prestop_invalid_annotations,
            tls_reloads,
            tls_certificate_expiry,
            tls_last_reload_successful,
            tls_last_reload_success_time,
            pending_pods,
            pods_missing_gates,
            gate_ready_seconds,
            healthy_to_written_seconds,
            elbv2_calls,
            elbv2_throttles,
            status_writes,
            releases_deferred,
            is_leader,
            bindings_crd_state,
            binding_watch_not_found,
            cached_pods,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }

    pub fn admission(&self, outcome: Admission) {
        self.admissions
            .get_or_create(&AdmissionLabels { outcome })
            .inc();
    }

    pub fn tls_reload(&self, outcome: TlsReload) {
        self.tls_reloads
            .get_or_create(&ReloadLabels { outcome })
            .inc();
    }

    pub fn elbv2_call(&self, operation: ElbOperation, outcome: ElbOutcome) {
        self.elbv2_calls
            .get_or_create(&CallLabels { operation, outcome })
            .inc();
    }

    pub fn status_write(&self, outcome: StatusWrite) {
        self.status_writes
            .get_or_create(&WriteLabels { outcome })
            .inc();
    }

    pub fn prestop_invalid_annotation(&self, source: Source) {
        self.prestop_invalid_annotations
            .get_or_create(&SourceLabels { source })
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.parse().expect("a sample value"))
    }

    #[test]
    fn every_labelled_series_is_exported_at_zero_before_anything_happens() {
        let text = Metrics::new().encode();
        let mut expected = Vec::new();
        for o in Admission::ALL {
            expected.push(format!(
                "readygate_admissions_total{{outcome=\"{}\"}}",
                o.label()
            ));
        }
        for o in TlsReload::ALL {
            expected.push(format!(
                "readygate_tls_reloads_total{{outcome=\"{}\"}}",
                o.label()
            ));
        }
        for o in StatusWrite::ALL {
            expected.push(format!(
                "readygate_status_writes_total{{outcome=\"{}\"}}",
                o.label()
            ));
        }
        for op in ElbOperation::ALL {
            for o in ElbOutcome::ALL {
                expected.push(format!(
                    "readygate_elbv2_calls_total{{operation=\"{}\",outcome=\"{}\"}}",
                    op.label(),
                    o.label()
                ));
            }
        }
        for s in Source::ANNOTATIONS {
            expected.push(format!(
                "readygate_prestop_invalid_annotations_total{{source=\"{}\"}}",
                s.as_str()
            ));
        }
        assert_eq!(expected.len(), 4 + 2 + 7 + 2 * 6 + 2);
        for series in &expected {
            assert_eq!(sample(&text, series), Some(0.0), "{series} in\n{text}");
        }
        for family in [
            "admissions",
            "tls_reloads",
            "status_writes",
            "elbv2_calls",
            "prestop_invalid_annotations",
        ] {
            assert!(
                text.contains(&format!("# TYPE readygate_{family} counter\n")),
                "{family}"
            );
        }
        // Pod and namespace, never the flag (checked at start, never counted).
        assert!(!text.contains(r#"source="flag""#));
    }

    #[test]
    fn counting_moves_only_its_own_series() {
        let m = Metrics::new();
        m.elbv2_call(ElbOperation::DescribeTargetGroups, ElbOutcome::Throttled);
        m.status_write(StatusWrite::NotLeader);
        let text = m.encode();
        assert_eq!(
            sample(
                &text,
                r#"readygate_elbv2_calls_total{operation="DescribeTargetGroups",outcome="throttled"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"readygate_elbv2_calls_total{operation="DescribeTargetHealth",outcome="throttled"}"#
            ),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"readygate_status_writes_total{outcome="not_leader"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, r#"readygate_status_writes_total{outcome="written"}"#),
            Some(0.0)
        );
    }

    #[test]
    fn label_values_are_distinct_snake_case_or_the_aws_operation_name() {
        fn distinct(labels: &[&str]) {
            let set: std::collections::BTreeSet<_> = labels.iter().collect();
            assert_eq!(set.len(), labels.len(), "{labels:?}");
        }
        distinct(&Admission::ALL.iter().map(|v| v.label()).collect::<Vec<_>>());
        distinct(&TlsReload::ALL.iter().map(|v| v.label()).collect::<Vec<_>>());
        distinct(
            &StatusWrite::ALL
                .iter()
                .map(|v| v.label())
                .collect::<Vec<_>>(),
        );
        distinct(
            &ElbOutcome::ALL
                .iter()
                .map(|v| v.label())
                .collect::<Vec<_>>(),
        );
        distinct(
            &ElbOperation::ALL
                .iter()
                .map(|v| v.label())
                .collect::<Vec<_>>(),
        );
        for op in ElbOperation::ALL {
            assert_eq!(op.label(), format!("{op:?}"), "the API's own name");
        }
    }

    #[test]
    fn admission_buckets_rise_to_past_the_largest_timeout_doctor_accepts() {
        assert!(ADMISSION_BUCKETS.windows(2).all(|w| w[0] < w[1]));
        let largest = ADMISSION_BUCKETS[ADMISSION_BUCKETS.len() - 1];
        assert!(largest >= f64::from(crate::doctor::MAX_TIMEOUT_SECONDS));
    }
}
