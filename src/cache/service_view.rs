//! Services and TargetGroupBindings as the watchers decode them: only the fields readygate
//! reads are ever allocated.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;

use crate::crd::{TargetGroupBinding, TargetGroupBindingSpec};

/// A Service as the watcher decodes it: name, namespace, resourceVersion, selector and ports.
/// The rest — managedFields, annotations, labels, status — is skipped by the parser and never
/// allocated, so a list of 10,000 Services leaves little garbage between the entries the index
/// keeps (that garbage is what the heap cannot hand back).
#[derive(Clone, Debug, Deserialize)]
pub struct WatchedService {
    #[serde(deserialize_with = "name_meta")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<WatchedServiceSpec>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct WatchedServiceSpec {
    #[serde(default)]
    pub selector: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub ports: Option<Vec<WatchedServicePort>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchedServicePort {
    #[serde(default)]
    pub name: Option<String>,
    pub port: i32,
    #[serde(default)]
    pub target_port: Option<IntOrString>,
}

/// The metadata fields the watcher and the index use of a Service or a binding.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NameMeta {
    name: Option<String>,
    namespace: Option<String>,
    resource_version: Option<String>,
    /// A binding's tell whether the AWS Load Balancer Controller reconciles it.
    #[serde(default)]
    finalizers: Option<Vec<String>>,
}

pub(super) fn name_meta<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let m = NameMeta::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        resource_version: m.resource_version,
        finalizers: m.finalizers,
        ..ObjectMeta::default()
    })
}

super::view_resource!(WatchedService, "Service", "services");

/// A TargetGroupBinding as the watcher decodes it: name, namespace, resourceVersion and the
/// spec readygate reads, and its finalizers; managedFields, labels and annotations are skipped.
#[derive(Clone, Debug, Deserialize)]
pub struct WatchedBinding {
    #[serde(deserialize_with = "name_meta")]
    pub metadata: ObjectMeta,
    pub spec: TargetGroupBindingSpec,
}

impl kube::Resource for WatchedBinding {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;
    fn kind(dt: &()) -> std::borrow::Cow<'_, str> {
        TargetGroupBinding::kind(dt)
    }
    fn group(dt: &()) -> std::borrow::Cow<'_, str> {
        TargetGroupBinding::group(dt)
    }
    fn version(dt: &()) -> std::borrow::Cow<'_, str> {
        TargetGroupBinding::version(dt)
    }
    fn plural(dt: &()) -> std::borrow::Cow<'_, str> {
        TargetGroupBinding::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}
