//! Each watched API kind stripped to the domain type the index keeps.

use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::{WatchedBinding, WatchedPod, WatchedService, pod_view};
use crate::crd::{TargetGroupBinding, TargetGroupBindingSpec};
use crate::domain::{
    self, INJECT_LABEL, INJECT_LABEL_VALUE, NamespaceSettings, PortRef, TargetType,
};
use crate::index::{Index, Kind};
use crate::termination::PRESTOP_SLEEP_ANNOTATION;

/// An API kind the index holds a stripped copy of.
pub trait Cached:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static
{
    const KIND: Kind;
    /// Objects per list page: small pages keep the transient JSON of a re-list small.
    const PAGE_SIZE: u32 = 500;
    type Item: Send;
    /// The stripped copy, or `None` when the object is unusable (it is then dropped).
    fn convert(&self) -> Option<Self::Item>;
    /// Whether the index keeps `item` of namespace `ns` at all (it is dropped otherwise).
    fn keep(_ix: &Index, _ns: &str, _item: &Self::Item) -> bool {
        true
    }
    fn apply(ix: &mut Index, ns: &str, name: &str, item: Self::Item);
    fn delete(ix: &mut Index, ns: &str, name: &str);
}

fn port_ref(p: &IntOrString) -> PortRef {
    match p {
        IntOrString::Int(n) => PortRef::Number(*n),
        IntOrString::String(s) => match s.parse::<i32>() {
            Ok(n) => PortRef::Number(n),
            Err(_) => PortRef::Name(s.clone()),
        },
    }
}

/// The domain binding of a TargetGroupBinding's spec, or `None` when it names no Service port.
fn binding<K: Resource>(o: &K, spec: &TargetGroupBindingSpec) -> Option<domain::Binding> {
    let name = o.name_any();
    let Some(svc) = spec.service_ref.as_ref().filter(|s| !s.name.is_empty()) else {
        tracing::warn!(binding = %name, namespace = ?o.namespace(), "TargetGroupBinding has no serviceRef; ignored");
        return None;
    };
    let Some(port) = svc.port.as_ref() else {
        tracing::warn!(binding = %name, namespace = ?o.namespace(), "TargetGroupBinding has no serviceRef.port; ignored");
        return None;
    };
    Some(domain::Binding {
        name,
        target_group_arn: spec.target_group_arn.clone().unwrap_or_default(),
        target_type: match spec.target_type.as_deref() {
            Some("ip") => TargetType::Ip,
            Some(_) => TargetType::Instance,
            None => TargetType::Unspecified,
        },
        service_name: svc.name.clone(),
        service_port: port_ref(port),
        ip_family: match spec.ip_address_type.as_deref() {
            Some("ipv6") => domain::IpFamily::V6,
            _ => domain::IpFamily::V4,
        },
        aws_controller: o
            .meta()
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == domain::AWS_CONTROLLER_FINALIZER),
    })
}

/// `Cached` for a TargetGroupBinding type: the full one, and the slim one the watcher decodes.
macro_rules! binding_kind {
    ($t:ty) => {
        impl Cached for $t {
            const KIND: Kind = Kind::Binding;
            type Item = domain::Binding;
            fn convert(&self) -> Option<domain::Binding> {
                binding(self, &self.spec)
            }
            fn apply(ix: &mut Index, ns: &str, _name: &str, item: domain::Binding) {
                ix.apply_binding(ns, item)
            }
            fn delete(ix: &mut Index, ns: &str, name: &str) {
                ix.delete_binding(ns, name)
            }
        }
    };
}
binding_kind!(TargetGroupBinding);
binding_kind!(WatchedBinding);

/// `Cached` for a Service type: the full one, and the slim one the watcher decodes (the same
/// field names and shapes).
macro_rules! service_kind {
    ($t:ty) => {
        impl Cached for $t {
            const KIND: Kind = Kind::Service;
            type Item = domain::Service;
            fn convert(&self) -> Option<domain::Service> {
                let spec = self.spec.as_ref()?;
                Some(domain::Service {
                    selector: spec.selector.clone().unwrap_or_default(),
                    ports: spec
                        .ports
                        .iter()
                        .flatten()
                        .map(|p| domain::ServicePort {
                            name: p.name.clone(),
                            port: p.port,
                            target_port: p.target_port.as_ref().map(port_ref),
                        })
                        .collect(),
                })
            }
            fn apply(ix: &mut Index, ns: &str, name: &str, item: domain::Service) {
                ix.apply_service(ns, name, item)
            }
            fn delete(ix: &mut Index, ns: &str, name: &str) {
                ix.delete_service(ns, name)
            }
        }
    };
}
service_kind!(Service);
service_kind!(WatchedService);

/// The pods the leader keeps: those that carry one of our gates (the controller follows them)
/// and those of opted-in namespaces (it looks there for pods lacking gates they should have).
/// A pod's readinessGates are immutable, so whether it carries one of ours never changes.
fn keep_pod(ix: &Index, ns: &str, pod: &domain::Pod) -> bool {
    // A pod of a namespace not seen yet (the Namespace's watch event may come after its first
    // pods') is kept until the namespace says whether it is opted in.
    !pod.gates.is_empty() || ix.is_opted_in(ns) || !ix.knows_namespace(ns)
}

impl Cached for WatchedPod {
    const KIND: Kind = Kind::Pod;
    const PAGE_SIZE: u32 = 100;
    type Item = domain::Pod;
    fn convert(&self) -> Option<domain::Pod> {
        Some(pod_view(self))
    }
    fn keep(ix: &Index, ns: &str, pod: &domain::Pod) -> bool {
        keep_pod(ix, ns, pod)
    }
    fn apply(ix: &mut Index, ns: &str, name: &str, item: domain::Pod) {
        ix.apply_pod(ns, name, item)
    }
    fn delete(ix: &mut Index, ns: &str, name: &str) {
        ix.delete_pod(ns, name)
    }
}

impl Cached for Namespace {
    const KIND: Kind = Kind::Namespace;
    type Item = NamespaceSettings;
    fn convert(&self) -> Option<NamespaceSettings> {
        Some(NamespaceSettings {
            opted_in: self.labels().get(INJECT_LABEL).map(String::as_str)
                == Some(INJECT_LABEL_VALUE),
            prestop_sleep: self.annotations().get(PRESTOP_SLEEP_ANNOTATION).cloned(),
        })
    }
    fn apply(ix: &mut Index, _ns: &str, name: &str, settings: NamespaceSettings) {
        // Opted out, or seen for the first time without the label.
        let opted_out = !settings.opted_in && (ix.is_opted_in(name) || !ix.knows_namespace(name));
        ix.apply_namespace(name, settings);
        if opted_out {
            // Out of an opted-in namespace, only the pods that carry one of our gates are kept.
            ix.retain_pods_in(name, |pod| !pod.gates.is_empty());
        }
    }
    fn delete(ix: &mut Index, _ns: &str, name: &str) {
        ix.delete_namespace(name)
    }
}
