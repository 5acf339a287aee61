//! Fixtures on the real control plane: the TargetGroupBinding CRD, fresh namespaces, a Node that
//! reports Ready, and pods whose status the test writes itself (there is no kubelet yet).
#![allow(dead_code)]

use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// Polls `f` every 50 ms until it returns `Some`, failing with `what` after `timeout`.
pub async fn until<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn from<K: serde::de::DeserializeOwned>(v: Value) -> K {
    serde_json::from_value(v).expect("a valid object")
}

/// Installs the rig's TargetGroupBinding CRD (once per control plane) and waits until it is
/// Established.
pub async fn install_crd(client: &kube::Client) {
    let text = include_str!("../../manifests/targetgroupbinding-crd.yaml");
    let crd: CustomResourceDefinition = serde_yaml::from_str(text).expect("the CRD manifest");
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    match api.create(&PostParams::default(), &crd).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("creating the TargetGroupBinding CRD: {e}"),
    }
    let name = crd.metadata.name.unwrap();
    until("the CRD to be Established", Duration::from_secs(30), || {
        let (api, name) = (api.clone(), name.clone());
        async move {
            let crd = api.get(&name).await.ok()?;
            crd.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        }
    })
    .await;
}

/// A fresh namespace, once the serviceaccount controller has made its `default` ServiceAccount
/// (pods cannot be created before).
pub async fn namespace(client: &kube::Client, prefix: &str) -> String {
    let ns = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &from(json!({"metadata": {"generateName": format!("{prefix}-")}})),
        )
        .await
        .expect("creating a namespace");
    let name = ns.metadata.name.unwrap();
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
    until(
        "the default ServiceAccount",
        Duration::from_secs(30),
        || {
            let sas = sas.clone();
            async move { sas.get_opt("default").await.ok().flatten().map(|_| ()) }
        },
    )
    .await;
    name
}

/// A Node that reports Ready (and room for pods), with no kubelet behind it.
pub async fn ready_node(client: &kube::Client, name: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .create(
            &PostParams::default(),
            &from(json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}})),
        )
        .await
        .expect("creating a node");
    set_node_ready(client, name, true).await;
}

pub async fn set_node_ready(client: &kube::Client, name: &str, ready: bool) {
    let now = jiff::Timestamp::now().to_string();
    let status = if ready { "True" } else { "False" };
    Api::<Node>::all(client.clone())
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "capacity": {"cpu": "8", "memory": "16Gi", "pods": "110"},
                "allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"},
                "addresses": [{"type": "InternalIP", "address": rig::netns::NODE_IP.to_string()}],
                "conditions": [{"type": "Ready", "status": status, "reason": "RigTest",
                                "lastHeartbeatTime": now, "lastTransitionTime": now}],
            }})),
        )
        .await
        .expect("writing the node's status");
}

pub async fn delete_node(client: &kube::Client, name: &str) {
    let _ = Api::<Node>::all(client.clone())
        .delete(name, &Default::default())
        .await;
}

/// Pod IPs inside the rig's network namespace (one allocator per process: addresses are added
/// to the pods' interface).
pub fn pod_ip() -> Ipv4Addr {
    rig::netns::pod_ips().allocate().expect("a pod IP")
}

/// A pod of `app` bound to `node` with one container port `web: 8080` and the given gates.
pub async fn pod(
    client: &kube::Client,
    ns: &str,
    name: &str,
    app: &str,
    node: &str,
    gates: &[&str],
) {
    let gates: Vec<Value> = gates.iter().map(|g| json!({"conditionType": g})).collect();
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &from(json!({
                "metadata": {"name": name, "labels": {"app": app}},
                "spec": {
                    "nodeName": node,
                    "readinessGates": gates,
                    "containers": [{"name": "web", "image": "rig/none",
                                    "ports": [{"name": "web", "containerPort": 8080}]}],
                },
            })),
        )
        .await
        .expect("creating a pod");
}

/// Writes a pod's status as a kubelet would: running at `ip`, with ContainersReady and Ready.
pub async fn set_pod_status(
    client: &kube::Client,
    ns: &str,
    name: &str,
    ip: Ipv4Addr,
    containers_ready: bool,
    ready: bool,
) {
    let now = jiff::Timestamp::now().to_string();
    let b = |v: bool| if v { "True" } else { "False" };
    Api::<Pod>::namespaced(client.clone(), ns)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Strategic(json!({"status": {
                "phase": "Running",
                "hostIP": rig::netns::NODE_IP.to_string(),
                "podIP": ip.to_string(),
                "podIPs": [{"ip": ip.to_string()}],
                "startTime": now,
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                    {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": b(containers_ready), "lastTransitionTime": now},
                    {"type": "Ready", "status": b(ready), "lastTransitionTime": now},
                ],
            }})),
        )
        .await
        .expect("writing the pod's status");
}

/// Aborts its task when dropped.
pub struct Task(tokio::task::JoinHandle<()>);

impl Task {
    pub fn new(task: tokio::task::JoinHandle<()>) -> Self {
        Self(task)
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}
