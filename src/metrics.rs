//! Prometheus metrics of the process, in one registry served on the admin port.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub operation: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: &'static str,
}

pub struct Metrics {
    pub registry: Registry,
    /// Admissions by outcome: patched, allowed, skipped, error.
    pub admissions: Family<OutcomeLabels, Counter>,
    pub admission_seconds: Histogram,
    pub gates_injected: Counter,
    /// Pods given the preStop sleep.
    pub prestop_injected: Counter,
    /// `readygate.io/prestop-sleep` annotations that did not parse, by where they were set.
    pub prestop_invalid_annotations: Family<SourceLabels, Counter>,
    pub tls_reloads: Family<OutcomeLabels, Counter>,
    pub pending_pods: Gauge,
    pub pods_missing_gates: Gauge,
    pub gate_ready_seconds: Histogram,
    pub healthy_to_written_seconds: Histogram,
    pub elbv2_calls: Family<CallLabels, Counter>,
    pub elbv2_throttles: Counter,
    pub status_writes: Family<OutcomeLabels, Counter>,
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
        let admissions = Family::<OutcomeLabels, Counter>::default();
        let admission_seconds = Histogram::new([
            0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25,
        ]);
        let gates_injected = Counter::default();
        let prestop_injected = Counter::default();
        let prestop_invalid_annotations = Family::<SourceLabels, Counter>::default();
        let tls_reloads = Family::<OutcomeLabels, Counter>::default();
        let pending_pods = Gauge::default();
        let pods_missing_gates = Gauge::default();
        let gate_ready_seconds =
            Histogram::new([1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0]);
        let healthy_to_written_seconds =
            Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0]);
        let elbv2_calls = Family::<CallLabels, Counter>::default();
        let elbv2_throttles = Counter::default();
        let status_writes = Family::<OutcomeLabels, Counter>::default();
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
            "Serving certificate reloads by outcome",
            tls_reloads.clone(),
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
            pending_pods,
            pods_missing_gates,
            gate_ready_seconds,
            healthy_to_written_seconds,
            elbv2_calls,
            elbv2_throttles,
            status_writes,
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

    pub fn outcome(family: &Family<OutcomeLabels, Counter>, outcome: &'static str) {
        family.get_or_create(&OutcomeLabels { outcome }).inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
