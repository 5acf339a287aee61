//! Domain types: the slices of TargetGroupBindings, Services and Pods that readygate decides on.
//!
//! Plain data with no Kubernetes client imports. The caches strip API objects down to these
//! types, so the decision core can be tested without an API server and memory stays small.

use std::collections::BTreeMap;

/// Prefix of every readiness gate readygate owns (shared with the AWS Load Balancer Controller).
pub const GATE_PREFIX: &str = "target-health.elbv2.k8s.aws/";
/// Gates of the old aws-alb-ingress-controller v1, removed when new gates are injected.
pub const LEGACY_GATE_PREFIX: &str = "target-health.alb.ingress.k8s.aws/";
/// Namespace label that opts pods into injection.
pub const INJECT_LABEL: &str = "elbv2.k8s.aws/pod-readiness-gate-inject";
pub const INJECT_LABEL_VALUE: &str = "enabled";
/// The finalizer the AWS Load Balancer Controller adds to every TargetGroupBinding it
/// reconciles (v3.5.0: `targetGroupBindingFinalizer`). Such a binding's gates have a second
/// writer: the AWS controller writes their conditions too, whatever its
/// `--enable-pod-readiness-gate-inject` says.
pub const AWS_CONTROLLER_FINALIZER: &str = "elbv2.k8s.aws/resources";

/// The condition type of the gate for binding `binding`.
pub fn gate_type(binding: &str) -> String {
    format!("{GATE_PREFIX}{binding}")
}

/// The binding a condition type names, if it is one of ours.
pub fn gate_binding(condition_type: &str) -> Option<&str> {
    condition_type.strip_prefix(GATE_PREFIX)
}

/// A port given by number or by name (Kubernetes IntOrString).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortRef {
    Number(i32),
    Name(String),
}

/// How a TargetGroupBinding registers targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetType {
    Ip,
    Instance,
    /// The field is absent; the AWS controller's webhook normally defaults it.
    Unspecified,
}

/// Which of a pod's addresses a target group holds (`spec.ipAddressType`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IpFamily {
    #[default]
    V4,
    V6,
}

impl IpFamily {
    pub fn of(ip: &std::net::IpAddr) -> Self {
        match ip {
            std::net::IpAddr::V4(_) => Self::V4,
            std::net::IpAddr::V6(_) => Self::V6,
        }
    }
}

/// What readygate needs of a TargetGroupBinding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub name: String,
    pub target_group_arn: String,
    pub target_type: TargetType,
    pub service_name: String,
    pub service_port: PortRef,
    pub ip_family: IpFamily,
    /// The AWS Load Balancer Controller reconciles it (it carries [`AWS_CONTROLLER_FINALIZER`]),
    /// so it also writes its gates' conditions: readygate writes only what it would write.
    pub aws_controller: bool,
}

/// One port of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: i32,
    /// Absent means "same as `port`" (the API server defaults it so).
    pub target_port: Option<PortRef>,
}

/// What readygate needs of a Service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Service {
    pub selector: BTreeMap<String, String>,
    pub ports: Vec<ServicePort>,
}

impl Service {
    /// A Service selects a pod when its selector is non-empty and every pair is in the labels.
    pub fn selects<L: Labels + ?Sized>(&self, labels: &L) -> bool {
        !self.selector.is_empty()
            && self
                .selector
                .iter()
                .all(|(k, v)| labels.label(k) == Some(v.as_str()))
    }
}

/// What readygate needs of a Namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceSettings {
    /// Labelled `INJECT_LABEL=enabled`.
    pub opted_in: bool,
    /// The raw `readygate.io/prestop-sleep` annotation, when present. Parsed at admission, so a
    /// bad value is reported with the pod it affects.
    pub prestop_sleep: Option<String>,
}

impl NamespaceSettings {
    /// Opted in, with no annotation of ours.
    pub fn opted_in() -> Self {
        Self {
            opted_in: true,
            prestop_sleep: None,
        }
    }
}

/// Label lookup over the shapes labels come in: a map from the API, or the sorted pairs the
/// cache keeps (half the memory of a map for the handful of labels a pod has).
pub trait Labels {
    fn label(&self, key: &str) -> Option<&str>;
    /// Every pair (the index looks up Services by them).
    fn pairs(&self) -> impl Iterator<Item = (&str, &str)>;
}

impl Labels for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
    fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Pairs sorted by key.
impl Labels for [(String, String)] {
    fn label(&self, key: &str) -> Option<&str> {
        self.binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| self[i].1.as_str())
    }
    fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// A named container port of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerPort {
    pub name: String,
    pub port: i32,
}

/// The state of one of our gate conditions on a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    pub status: ConditionStatus,
    pub reason: String,
    pub message: String,
    /// RFC 3339, kept as the API server wrote it.
    pub last_transition_time: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub fn parse(s: &str) -> Self {
        match s {
            "True" => Self::True,
            "False" => Self::False,
            _ => Self::Unknown,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

/// What the controller needs of a pod. Times are Unix seconds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Pod {
    pub uid: String,
    /// Labels as pairs sorted by key.
    pub labels: Vec<(String, String)>,
    pub created: Option<i64>,
    /// Terminating, Succeeded or Failed: no longer a candidate for traffic.
    pub finished: bool,
    /// The pod's addresses (`status.podIPs`; one per family on a dual-stack cluster).
    pub ips: Vec<std::net::IpAddr>,
    pub container_ports: Vec<ContainerPort>,
    /// Binding names of our readiness gates, in spec order.
    pub gates: Vec<String>,
    /// Our gate conditions, by binding name (a short list: one per gate).
    pub conditions: Vec<(String, Condition)>,
    /// When ContainersReady last turned True, if it is True.
    pub containers_ready_since: Option<i64>,
}

impl Pod {
    pub fn condition(&self, binding: &str) -> Option<&Condition> {
        self.conditions
            .iter()
            .find(|(b, _)| b == binding)
            .map(|(_, c)| c)
    }

    /// Sets the condition of `binding`, replacing the one it had.
    pub fn set_condition(&mut self, binding: &str, condition: Condition) {
        match self.conditions.iter_mut().find(|(b, _)| b == binding) {
            Some((_, c)) => *c = condition,
            None => self.conditions.push((binding.to_string(), condition)),
        }
    }

    pub fn gate_is_true(&self, binding: &str) -> bool {
        self.condition(binding)
            .is_some_and(|c| c.status == ConditionStatus::True)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_pairs_and_maps_select_alike() {
        let map: BTreeMap<String, String> = [("app", "web"), ("tier", "front"), ("zone", "a")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let pairs: Vec<(String, String)> = map.clone().into_iter().collect();
        for key in ["app", "tier", "zone", "missing", ""] {
            assert_eq!(map.label(key), pairs.as_slice().label(key), "{key}");
        }
        let svc = |sel: &[(&str, &str)]| Service {
            selector: sel
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ports: vec![],
        };
        for sel in [&[("app", "web")][..], &[("app", "web"), ("zone", "b")], &[]] {
            assert_eq!(svc(sel).selects(&map), svc(sel).selects(pairs.as_slice()));
        }
        assert!(svc(&[("app", "web"), ("zone", "a")]).selects(pairs.as_slice()));
        assert!(
            !svc(&[]).selects(pairs.as_slice()),
            "an empty selector selects nothing"
        );
    }
}
