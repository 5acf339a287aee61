//! Pods as the watcher decodes them: only the fields readygate reads are ever allocated.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::Deserialize;

use crate::domain::{self, ConditionStatus};

/// A Pod as the watcher decodes it: only the fields `pod_view` reads. The rest — managedFields,
/// most of the spec, container statuses — is skipped by the parser and never allocated, which
/// keeps a 10,000-pod list from bloating the heap.
#[derive(Clone, Debug, Deserialize)]
pub struct WatchedPod {
    #[serde(deserialize_with = "slim_meta")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<WatchedPodSpec>,
    #[serde(default)]
    pub status: Option<WatchedPodStatus>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchedPodSpec {
    #[serde(default)]
    pub containers: Option<Vec<WatchedContainer>>,
    #[serde(default)]
    pub init_containers: Option<Vec<WatchedContainer>>,
    #[serde(default)]
    pub readiness_gates: Option<Vec<WatchedGate>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct WatchedContainer {
    #[serde(default)]
    pub ports: Option<Vec<WatchedPort>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchedPort {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub container_port: i32,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchedGate {
    #[serde(default)]
    pub condition_type: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchedPodStatus {
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(default, rename = "podIP")]
    pub pod_ip: Option<String>,
    #[serde(default, rename = "podIPs")]
    pub pod_ips: Option<Vec<WatchedPodIp>>,
    #[serde(default)]
    pub conditions: Option<Vec<WatchedCondition>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct WatchedPodIp {
    #[serde(default)]
    pub ip: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchedCondition {
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub last_transition_time: Option<Time>,
}

/// The metadata fields readygate and the watcher use (the watcher resumes from
/// `resourceVersion`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlimMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    creation_timestamp: Option<Time>,
    deletion_timestamp: Option<Time>,
}

fn slim_meta<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let m = SlimMeta::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
        resource_version: m.resource_version,
        labels: m.labels,
        creation_timestamp: m.creation_timestamp,
        deletion_timestamp: m.deletion_timestamp,
        ..ObjectMeta::default()
    })
}

/// `Resource` for a partial view of a core (`v1`) kind whose `metadata` field is an
/// `ObjectMeta`: what kube's clients and watchers need to treat it as that kind, e.g.
/// `view_resource!(WatchedPod, "Pod", "pods")`.
macro_rules! view_resource {
    ($view:ty, $kind:literal, $plural:literal) => {
        impl kube::Resource for $view {
            type DynamicType = ();
            type Scope = k8s_openapi::NamespaceResourceScope;
            fn kind(_: &()) -> std::borrow::Cow<'_, str> {
                $kind.into()
            }
            fn group(_: &()) -> std::borrow::Cow<'_, str> {
                "".into()
            }
            fn version(_: &()) -> std::borrow::Cow<'_, str> {
                "v1".into()
            }
            fn plural(_: &()) -> std::borrow::Cow<'_, str> {
                $plural.into()
            }
            fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                &self.metadata
            }
            fn meta_mut(
                &mut self,
            ) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                &mut self.metadata
            }
        }
    };
}
pub(crate) use view_resource;

view_resource!(WatchedPod, "Pod", "pods");

/// The pod's addresses, parsed: `status.podIPs` (one per family on a dual-stack cluster), else
/// `status.podIP`. Unparsable entries are dropped.
fn pod_ips(status: Option<&WatchedPodStatus>) -> Vec<std::net::IpAddr> {
    let Some(s) = status else { return Vec::new() };
    let listed = s.pod_ips.iter().flatten().map(|p| p.ip.as_str());
    let mut ips: Vec<std::net::IpAddr> = listed.filter_map(|ip| ip.parse().ok()).collect();
    if ips.is_empty()
        && let Some(ip) = s.pod_ip.as_deref().and_then(|ip| ip.parse().ok())
    {
        ips.push(ip);
    }
    ips
}

/// Strips a pod to what the controller decides on.
pub fn pod_view(pod: &WatchedPod) -> domain::Pod {
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref());
    let conditions = status
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    domain::Pod {
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        // A BTreeMap iterates in key order: the pairs come out sorted.
        labels: pod
            .metadata
            .labels
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        created: pod
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second()),
        finished: pod.metadata.deletion_timestamp.is_some()
            || matches!(phase, Some("Succeeded" | "Failed")),
        ips: pod_ips(status),
        container_ports: spec
            .into_iter()
            .flat_map(|s| {
                s.containers
                    .iter()
                    .flatten()
                    .chain(s.init_containers.iter().flatten())
            })
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                Some(domain::ContainerPort {
                    name: p.name.clone()?,
                    port: p.container_port,
                })
            })
            .collect(),
        gates: spec
            .and_then(|s| s.readiness_gates.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|g| domain::gate_binding(&g.condition_type).map(str::to_string))
            .collect(),
        conditions: conditions
            .iter()
            .filter_map(|c| {
                let binding = domain::gate_binding(&c.type_)?;
                Some((
                    binding.to_string(),
                    domain::Condition {
                        status: ConditionStatus::parse(&c.status),
                        reason: c.reason.clone().unwrap_or_default(),
                        message: c.message.clone().unwrap_or_default(),
                        last_transition_time: c
                            .last_transition_time
                            .as_ref()
                            .map(|t| t.0.to_string()),
                    },
                ))
            })
            .collect(),
        containers_ready_since: conditions
            .iter()
            .find(|c| c.type_ == "ContainersReady" && c.status == "True")
            .map(|c| {
                c.last_transition_time
                    .as_ref()
                    .map_or(0, |t| t.0.as_second())
            }),
    }
}
