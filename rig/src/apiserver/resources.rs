//! The resource types the rig's API server serves, with what discovery says about them.

#[derive(Debug, PartialEq, Eq)]
pub struct ResourceType {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    /// Has an isolated `/status` subresource.
    pub status_subresource: bool,
    /// Built into Kubernetes (strategic merge patch allowed, list items carry no type meta);
    /// false for custom resources.
    pub builtin: bool,
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    pub fn group_version(&self) -> (&'static str, &'static str) {
        (self.group, self.version)
    }
}

#[allow(clippy::too_many_arguments)] // a row of the table below
const fn rt(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
    status_subresource: bool,
    builtin: bool,
) -> ResourceType {
    ResourceType {
        group,
        version,
        plural,
        singular,
        kind,
        namespaced,
        status_subresource,
        builtin,
    }
}

pub static RESOURCES: &[ResourceType] = &[
    rt(
        "",
        "v1",
        "namespaces",
        "namespace",
        "Namespace",
        false,
        true,
        true,
    ),
    rt("", "v1", "pods", "pod", "Pod", true, true, true),
    rt("", "v1", "services", "service", "Service", true, true, true),
    rt("", "v1", "events", "event", "Event", true, false, true),
    rt(
        "events.k8s.io",
        "v1",
        "events",
        "event",
        "Event",
        true,
        false,
        true,
    ),
    rt(
        "coordination.k8s.io",
        "v1",
        "leases",
        "lease",
        "Lease",
        true,
        false,
        true,
    ),
    rt(
        "elbv2.k8s.aws",
        "v1beta1",
        "targetgroupbindings",
        "targetgroupbinding",
        "TargetGroupBinding",
        true,
        true,
        false,
    ),
    // What `readygate doctor` reads of an installation.
    rt(
        "admissionregistration.k8s.io",
        "v1",
        "mutatingwebhookconfigurations",
        "mutatingwebhookconfiguration",
        "MutatingWebhookConfiguration",
        false,
        false,
        true,
    ),
    rt(
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        "endpointslice",
        "EndpointSlice",
        true,
        false,
        true,
    ),
    rt(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "customresourcedefinition",
        "CustomResourceDefinition",
        false,
        true,
        true,
    ),
];

pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

pub fn index_of(r: &ResourceType) -> usize {
    RESOURCES
        .iter()
        .position(|x| std::ptr::eq(x, r))
        .expect("a resource of RESOURCES")
}

pub fn pods() -> &'static ResourceType {
    find("", "v1", "pods").expect("pods")
}
pub fn namespaces() -> &'static ResourceType {
    find("", "v1", "namespaces").expect("namespaces")
}
pub fn services() -> &'static ResourceType {
    find("", "v1", "services").expect("services")
}
pub fn mutating_webhook_configurations() -> &'static ResourceType {
    find(
        "admissionregistration.k8s.io",
        "v1",
        "mutatingwebhookconfigurations",
    )
    .expect("mutatingwebhookconfigurations")
}
pub fn endpoint_slices() -> &'static ResourceType {
    find("discovery.k8s.io", "v1", "endpointslices").expect("endpointslices")
}
pub fn custom_resource_definitions() -> &'static ResourceType {
    find("apiextensions.k8s.io", "v1", "customresourcedefinitions").expect("crds")
}
pub fn target_group_bindings() -> &'static ResourceType {
    find("elbv2.k8s.aws", "v1beta1", "targetgroupbindings").expect("tgb")
}
