//! The rig's node agent: a kubelet for the real API server, without a container runtime. It
//! registers its Node (Ready, capacity, a heartbeat Lease in `kube-node-lease`), runs every pod
//! the scheduler binds to it as a real HTTP server on the pod's own IP, and reports pod status as
//! the kubelet does: `podIP`/`podIPs`, container statuses, `ContainersReady` from the readiness
//! probe, `Ready` = ContainersReady AND every readiness gate's condition True, recomputed
//! whenever a condition changes. Deletion: the preStop hook (`sleep`), then SIGTERM semantics
//! (the listener closes, requests in flight finish), the kill at the end of the grace period,
//! the terminal status, then the final delete.
//!
//! A pod whose image the rig's container runtime knows (`readygate`: the binary of this build)
//! runs as a real container process instead ([`crate::k8s::containers`]): its own network
//! namespace, mount namespace, volumes, environment and user, liveness probes and restarts.
//!
//! A pod annotated [`EXTERNAL_ANNOTATION`] with an IP is a process the rig runs itself (a
//! readygate replica): the agent starts nothing, reports that IP and probes it like any pod.

use crate::kubelet::{PodPlan, reqwest_like, serve_app};
use crate::netns::{NODE_IP, pod_ips};
use crate::str_at;
use crate::time::{now_micro, now_time};
use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher;
use kube::{Api, Client};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

pub use crate::kubelet::{
    LB_HEALTH_ANNOTATION, LB_HEALTH_PATH, PROBE_PERIOD_ANNOTATION, START_DELAY_ANNOTATION,
};

/// The rig's node (one node: the scheduler binds every pod to it).
pub const NODE_NAME: &str = "rig-node";
/// Pod annotation: the pod is a process the rig runs itself, listening on this IP.
pub const EXTERNAL_ANNOTATION: &str = "rig.readygate.io/external-ip";
/// Pod annotation: that process's PID, which the agent signals as the kubelet signals a
/// container (SIGTERM after the preStop hook, SIGKILL at the end of the grace period).
pub const EXTERNAL_PID_ANNOTATION: &str = "rig.readygate.io/external-pid";
/// How often the node's Lease is renewed (the kubelet's default).
const LEASE_RENEW: Duration = Duration::from_secs(10);
const FIELD_MANAGER: &str = "rig-node";

/// When a node agent of this process first saw each pod's deletion, by (namespace, name): the
/// moment its termination started (timelines take it from here, as another watch may deliver
/// the same deletion a little later).
pub fn terminations() -> &'static Mutex<HashMap<(String, String), std::time::Instant>> {
    static T: std::sync::OnceLock<Mutex<HashMap<(String, String), std::time::Instant>>> =
        std::sync::OnceLock::new();
    T.get_or_init(Mutex::default)
}

/// How the node agent runs container processes.
#[derive(Debug, Clone)]
pub struct NodeOpts {
    /// The run's directory: pods' volumes and image roots under `pods/UID/`, container logs
    /// under `logs/NAMESPACE_NAME_UID/CONTAINER/RESTARTS.log` (the kubelet's
    /// `/var/lib/kubelet/pods` and `/var/log/pods`). None: a temporary directory of the agent's.
    pub dir: Option<PathBuf>,
    /// The binary image `readygate` stands for (default: [`crate::readygate::find_binary`]).
    pub readygate_bin: Option<PathBuf>,
    /// Where containers reach the API server: the `kubernetes` Service's endpoint, i.e. the API
    /// server's advertise address and secure port.
    pub api_endpoint: SocketAddr,
    /// How often Secret, ConfigMap and projected volumes are refreshed (the kubelet's sync
    /// period, 1 min, compressed).
    pub volume_sync: Duration,
}

impl Default for NodeOpts {
    fn default() -> Self {
        Self {
            dir: None,
            readygate_bin: crate::readygate::find_binary(None),
            api_endpoint: SocketAddr::new(IpAddr::V4(NODE_IP), crate::cluster::API_PORT),
            volume_sync: Duration::from_secs(2),
        }
    }
}

/// What the agent shares with each pod's task.
pub(crate) struct NodeCtx {
    pub(crate) opts: NodeOpts,
    pub(crate) dir: PathBuf,
    pub(crate) containers: Arc<Mutex<HashMap<(String, String), ContainerInfo>>>,
}

/// A container process the agent runs, as tests and tools may inspect it.
#[derive(Debug, Clone)]
pub struct ContainerInfo {
    pub pid: u32,
    pub restart_count: u32,
    /// Its stdout and stderr.
    pub log: PathBuf,
    pub pod_ip: Ipv4Addr,
}

pub struct NodeAgent {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pods: Arc<Mutex<HashMap<String, PodHandle>>>,
    ctx: Arc<NodeCtx>,
    _dir: Option<tempfile::TempDir>,
}

struct PodHandle {
    /// The latest object the watch delivered: the pod's task recomputes Ready from it.
    latest: watch::Sender<Value>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for (_, p) in self.pods.lock().expect("pods lock").drain() {
            p.task.abort();
        }
    }
}

impl NodeAgent {
    /// Registers node `node` and starts running the pods bound to it. `client` must
    /// authenticate as `system:node:NODE` in `system:nodes` (the Node authorizer and
    /// NodeRestriction then judge it as they judge a kubelet): see [`NodeAgent::client`].
    pub async fn start(client: Client, node: &str) -> anyhow::Result<Self> {
        Self::start_with(client, node, NodeOpts::default()).await
    }

    /// As [`NodeAgent::start`], with these options for container processes.
    pub async fn start_with(client: Client, node: &str, opts: NodeOpts) -> anyhow::Result<Self> {
        let (dir, tmp) = match &opts.dir {
            Some(d) => (d.clone(), None),
            None => {
                let t = tempfile::Builder::new().prefix("rig-node-").tempdir()?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let ctx = Arc::new(NodeCtx {
            opts,
            dir,
            containers: Arc::default(),
        });
        let c2 = ctx.clone();
        register_node(&client, node).await?;
        let lease = tokio::spawn(renew_lease(client.clone(), node.to_string()));
        let heartbeat = tokio::spawn(node_heartbeat(client.clone(), node.to_string()));
        let pods: Arc<Mutex<HashMap<String, PodHandle>>> = Arc::default();
        let p = pods.clone();
        let api: Api<Pod> = Api::all(client.clone());
        let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let feed = tokio::spawn(async move {
            let mut stream = watcher(api, cfg).boxed();
            while let Some(event) = stream.next().await {
                let event = match event {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::warn!(error = %e, "node agent: pod watch error (it retries)");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                let mut pods = p.lock().expect("pods lock");
                match event {
                    watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => {
                        let uid = pod.metadata.uid.clone().unwrap_or_default();
                        let Ok(v) = serde_json::to_value(&pod) else {
                            continue;
                        };
                        match pods.get(&uid) {
                            Some(h) => {
                                h.latest.send_replace(v);
                            }
                            None => {
                                let (tx, rx) = watch::channel(v);
                                let task = tokio::spawn(run_pod(c2.clone(), client.clone(), rx));
                                pods.insert(uid, PodHandle { latest: tx, task });
                            }
                        }
                    }
                    watcher::Event::Delete(pod) => {
                        let uid = pod.metadata.uid.clone().unwrap_or_default();
                        if let Some(h) = pods.remove(&uid) {
                            // Removed (by us after it stopped, or by force): stop now.
                            h.task.abort();
                        }
                    }
                    watcher::Event::Init | watcher::Event::InitDone => {}
                }
                pods.retain(|_, h| !h.task.is_finished());
            }
        });
        Ok(Self {
            tasks: vec![lease, heartbeat, feed],
            pods,
            ctx,
            _dir: tmp,
        })
    }

    /// The container process of pod `namespace/name`, while it runs.
    pub fn container(&self, namespace: &str, name: &str) -> Option<ContainerInfo> {
        self.ctx
            .containers
            .lock()
            .expect("containers lock")
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// The directory container logs go to (`NAMESPACE_NAME_UID/CONTAINER/N.log`).
    pub fn logs_dir(&self) -> PathBuf {
        self.ctx.dir.join("logs")
    }

    /// A client with node `node`'s identity, as its kubelet has.
    pub async fn client(
        plane: &crate::cluster::ControlPlane,
        node: &str,
    ) -> anyhow::Result<Client> {
        plane
            .user_client(&format!("system:node:{node}"), &["system:nodes"])
            .await
    }

    /// Pods whose task is still running.
    pub fn running(&self) -> usize {
        self.pods
            .lock()
            .expect("pods lock")
            .values()
            .filter(|p| !p.task.is_finished())
            .count()
    }
}

fn node_conditions() -> Value {
    let now = now_time();
    let c = |t: &str, s: &str, reason: &str, message: &str| {
        json!({"type": t, "status": s, "reason": reason, "message": message,
            "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    json!([
        c(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available"
        ),
        c(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure"
        ),
        c(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available"
        ),
        c(
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status"
        ),
    ])
}

async fn register_node(client: &Client, node: &str) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let object: Node = serde_json::from_value(json!({
        "metadata": {"name": node, "labels": {
            "kubernetes.io/hostname": node, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
            "topology.kubernetes.io/zone": "rig-a"}},
        "spec": {"podCIDR": crate::netns::POD_CIDR, "podCIDRs": [crate::netns::POD_CIDR]},
    }))?;
    match nodes.create(&PostParams::default(), &object).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e).context("registering the rig's Node"),
    }
    let capacity =
        json!({"cpu": "64", "memory": "256Gi", "pods": "1000", "ephemeral-storage": "100Gi"});
    let status = json!({"status": {
        "capacity": capacity, "allocatable": capacity,
        "conditions": node_conditions(),
        "addresses": [{"type": "InternalIP", "address": NODE_IP.to_string()}, {"type": "Hostname", "address": node}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {"machineID": "rig", "systemUUID": "rig", "bootID": "rig", "kernelVersion": "rig",
            "osImage": "rig", "containerRuntimeVersion": "rig://1", "kubeletVersion": "v1.37.2",
            "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"},
    }});
    nodes
        .patch_status(node, &PatchParams::default(), &Patch::Strategic(status))
        .await
        .context("reporting the rig Node's status")?;
    Ok(())
}

/// The node's heartbeat: its Lease in `kube-node-lease`, renewed every 10 s.
async fn renew_lease(client: Client, node: String) {
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    loop {
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": node, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": now_micro()},
        });
        let r = leases
            .patch(
                &node,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(lease),
            )
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "node agent: renewing the node Lease");
        }
        tokio::time::sleep(LEASE_RENEW).await;
    }
}

/// The node's Ready condition, posted again every minute (the Lease is the fast heartbeat).
async fn node_heartbeat(client: Client, node: String) {
    let nodes: Api<Node> = Api::all(client);
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
        let status = json!({"status": {"conditions": node_conditions()}});
        if let Err(e) = nodes
            .patch_status(&node, &PatchParams::default(), &Patch::Strategic(status))
            .await
        {
            tracing::warn!(error = %e, "node agent: posting the Node's status");
        }
    }
}

/// What the agent knows of one pod's containers.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub(crate) struct Containers {
    pub(crate) ready: bool,
    pub(crate) running: bool,
    /// Exit code once stopped (0: stopped by SIGTERM in time; 137: killed).
    pub(crate) exit_code: i32,
    /// The sandbox exists (`PodReadyToStartContainers`).
    pub(crate) sandbox: bool,
    pub(crate) restart_count: u32,
    /// Not running and not (finally) terminated: reason and message (`ContainerCreating`,
    /// `CrashLoopBackOff`, `CreateContainerConfigError`, …).
    pub(crate) waiting: Option<(String, String)>,
    /// `lastState.terminated` of a restarted container.
    pub(crate) last_state: Option<Value>,
    pub(crate) container_id: String,
    pub(crate) started_at: String,
}

impl Containers {
    /// A container running since now (as the in-process servers start).
    pub(crate) fn running_now() -> Self {
        Self {
            ready: false,
            running: true,
            exit_code: 0,
            sandbox: true,
            restart_count: 0,
            waiting: None,
            last_state: None,
            container_id: format!("rig://{}", crate::time::uuid()),
            started_at: now_time(),
        }
    }

    /// The `terminated` state of the container as it stopped, at `finished`.
    pub(crate) fn terminated(&self, finished: &str) -> Value {
        let reason = if self.exit_code == 0 {
            "Completed"
        } else {
            "Error"
        };
        json!({"terminated": {"exitCode": self.exit_code, "reason": reason,
            "startedAt": self.started_at, "finishedAt": finished, "containerID": self.container_id}})
    }
}

/// The kubelet-owned part of a pod's status, and what was last written of it.
pub(crate) struct StatusWriter {
    pub(crate) api: Api<Pod>,
    pub(crate) name: String,
    pub(crate) uid: String,
    pub(crate) container: String,
    pub(crate) image: String,
    pub(crate) ip: Ipv4Addr,
    /// The pod's start (`startTime`).
    pub(crate) started_at: String,
    /// (status, lastTransitionTime) of each condition type the agent owns, as last written.
    pub(crate) written: BTreeMap<&'static str, (bool, String)>,
    pub(crate) last: Option<Value>,
}

impl StatusWriter {
    /// A writer for the pod `name` (`uid`) running `plan` on `ip`, started now, nothing written.
    pub(crate) fn new(api: Api<Pod>, name: &str, uid: &str, plan: &PodPlan, ip: Ipv4Addr) -> Self {
        Self {
            api,
            name: name.to_string(),
            uid: uid.to_string(),
            container: plan.container.clone(),
            image: plan.image.clone(),
            ip,
            started_at: now_time(),
            written: BTreeMap::new(),
            last: None,
        }
    }

    /// The Ready condition: containers ready and every readiness gate True (a missing
    /// condition counts as False), with the kubelet's reasons and messages.
    fn ready(pod: &Value, c: &Containers, container: &str) -> (bool, Option<(String, String)>) {
        if !c.ready {
            return (
                false,
                Some((
                    "ContainersNotReady".into(),
                    format!("containers with unready status: [{container}]"),
                )),
            );
        }
        let conditions = pod
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for gate in pod
            .pointer("/spec/readinessGates")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let t = str_at(gate, "/conditionType");
            match conditions.iter().find(|c| c["type"] == t.as_str()) {
                None => {
                    return (
                        false,
                        Some((
                            "ReadinessGatesNotReady".into(),
                            format!(
                                "corresponding condition of pod readiness gate \"{t}\" does not exist."
                            ),
                        )),
                    );
                }
                Some(c) if c["status"] != "True" => {
                    return (
                        false,
                        Some((
                            "ReadinessGatesNotReady".into(),
                            format!(
                                "the status of pod readiness gate \"{t}\" is not \"True\", but {}",
                                c["status"].as_str().unwrap_or("Unknown")
                            ),
                        )),
                    );
                }
                Some(_) => {}
            }
        }
        (true, None)
    }

    fn condition(
        &mut self,
        t: &'static str,
        status: bool,
        why: Option<(String, String)>,
        now: &str,
    ) -> Value {
        let ltt = match self.written.get(t) {
            Some((s, ltt)) if *s == status => ltt.clone(),
            _ => now.to_string(),
        };
        self.written.insert(t, (status, ltt.clone()));
        // A strategic-merge patch keeps fields it does not name: null removes a reason and
        // message that no longer apply (as the kubelet's patch, a diff of the old status, does).
        let (reason, message) = why.unzip();
        json!({"type": t, "status": if status { "True" } else { "False" },
            "lastProbeTime": null, "lastTransitionTime": ltt, "reason": reason, "message": message})
    }

    /// Writes the status for `pod` as it is now and `c`, unless it is what was last written.
    /// False when the pod is gone.
    pub(crate) async fn write(&mut self, pod: &Value, c: &Containers, phase: &str) -> bool {
        let now = now_time();
        let (ready, why) = Self::ready(pod, c, &self.container);
        let containers_why = (!c.ready).then(|| {
            (
                "ContainersNotReady".to_string(),
                format!("containers with unready status: [{}]", self.container),
            )
        });
        // One of the three states, the other two removed from the merged status.
        let mut state = json!({"running": null, "waiting": null, "terminated": null});
        if c.running {
            state["running"] = json!({"startedAt": c.started_at});
        } else if let Some((reason, message)) = &c.waiting {
            state["waiting"] = json!({"reason": reason, "message": message});
        } else {
            let mut t = c.terminated(&now);
            state["terminated"] = t["terminated"].take();
        }
        let conditions = vec![
            self.condition("PodReadyToStartContainers", c.sandbox, None, &now),
            self.condition("Initialized", true, None, &now),
            self.condition("ContainersReady", c.ready, containers_why, &now),
            self.condition("Ready", ready, why, &now),
        ];
        let ip = self.ip.to_string();
        let status = json!({
            "phase": phase, "hostIP": NODE_IP.to_string(), "hostIPs": [{"ip": NODE_IP.to_string()}],
            "podIP": ip, "podIPs": [{"ip": ip}], "startTime": self.started_at,
            "conditions": conditions,
            "containerStatuses": [{
                "name": self.container, "image": self.image, "imageID": format!("rig://{}", self.image),
                "containerID": c.container_id, "ready": c.ready, "started": c.running,
                "restartCount": c.restart_count, "state": state,
                "lastState": c.last_state.clone().unwrap_or(json!({})),
            }],
        });
        // Timestamps aside, the same status as last time: nothing to write.
        let key = json!([ready, c, phase]);
        if self.last.as_ref() == Some(&key) {
            return true;
        }
        let patch = json!({"metadata": {"uid": self.uid}, "status": status});
        match self
            .api
            .patch_status(
                &self.name,
                &PatchParams::default(),
                &Patch::Strategic(patch),
            )
            .await
        {
            Ok(_) => {
                self.last = Some(key);
                true
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 || s.code == 422 => false,
            Err(e) => {
                tracing::warn!(pod = %self.name, error = %e, "node agent: writing pod status");
                true
            }
        }
    }
}

pub(crate) fn terminating(pod: &Value) -> bool {
    pod.pointer("/metadata/deletionTimestamp").is_some()
}

/// The grace period of a pod being deleted: the deletion's, else the spec's.
pub(crate) fn grace_of(pod: &Value, plan: &PodPlan) -> Duration {
    pod.pointer("/metadata/deletionGracePeriodSeconds")
        .and_then(Value::as_u64)
        .map(Duration::from_secs)
        .unwrap_or(plan.grace)
}

async fn run_pod(ctx: Arc<NodeCtx>, client: Client, mut latest: watch::Receiver<Value>) {
    let pod = latest.borrow_and_update().clone();
    let name = str_at(&pod, "/metadata/name");
    let namespace = str_at(&pod, "/metadata/namespace");
    let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let plan = match PodPlan::from_pod(&pod) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(pod = %name, error = %e, "the rig cannot run this pod");
            return;
        }
    };
    let annotation = |k: &str| {
        pod.pointer("/metadata/annotations")
            .and_then(|a| a.get(k))
            .and_then(Value::as_str)
            .map(String::from)
    };
    let external = match (
        annotation(EXTERNAL_ANNOTATION).and_then(|ip| ip.parse::<Ipv4Addr>().ok()),
        annotation(EXTERNAL_PID_ANNOTATION).and_then(|p| p.parse::<i32>().ok()),
    ) {
        (Some(ip), Some(pid)) => Some((ip, pid)),
        (None, None) => None,
        _ => {
            tracing::warn!(pod = %name, "an external pod needs both {EXTERNAL_ANNOTATION} and {EXTERNAL_PID_ANNOTATION}");
            return;
        }
    };
    if external.is_none()
        && let Some(image) =
            crate::k8s::runtime::image(&plan.image, ctx.opts.readygate_bin.as_deref())
    {
        crate::k8s::containers::run(ctx, client, latest, plan, image).await;
        return;
    }
    let ip = match external {
        Some((ip, _)) => ip,
        None => match pod_ips().allocate() {
            Ok(ip) => ip,
            Err(e) => {
                tracing::error!(pod = %name, error = %e, "no pod IP");
                return;
            }
        },
    };
    let mut writer = StatusWriter::new(
        api.clone(),
        &name,
        &str_at(&pod, "/metadata/uid"),
        &plan,
        ip,
    );
    let mut c = Containers::running_now();
    if !writer.write(&pod, &c, "Running").await {
        return;
    }

    // The container: after the start delay, its server listens on every container port; or
    // the process the rig started.
    let mut workload = match external {
        Some((_, pid)) => Workload::Process(pid),
        None => {
            let (stop_tx, stop_rx) = watch::channel(false);
            let (app_name, app_plan) = (name.clone(), plan.clone());
            let task = tokio::spawn(async move {
                tokio::time::sleep(app_plan.start_delay).await;
                serve_app(app_name, ip, app_plan, stop_rx).await;
            });
            Workload::Server(stop_tx, task)
        }
    };

    // Probes and status until the end of the grace period; the deletion starts the preStop
    // hook, then SIGTERM.
    let mut prober = Prober::new(&plan, ip);
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut sigterm_at: Option<tokio::time::Instant> = None;
    let mut stopped = false;
    loop {
        let pod = latest.borrow_and_update().clone();
        if terminating(&pod) && deadline.is_none() {
            terminations()
                .lock()
                .expect("terminations lock")
                .entry((namespace.clone(), name.clone()))
                .or_insert_with(std::time::Instant::now);
            let now = tokio::time::Instant::now();
            let grace = now + grace_of(&pod, &plan);
            deadline = Some(grace);
            sigterm_at = Some(grace.min(now + plan.pre_stop));
        }
        if let Some(at) = sigterm_at
            && tokio::time::Instant::now() >= at
            && !stopped
        {
            stopped = true;
            workload.sigterm();
        }
        let out_of_time = deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
        if out_of_time && !workload.exited() {
            workload.kill();
            tracing::warn!(pod = %name, "the container did not stop within the grace period; killed");
            c.exit_code = 137;
        }
        if workload.exited() {
            // A process that dies is seen at once, as the kubelet's PLEG sees a container exit.
            c.running = false;
            c.ready = false;
            if stopped || out_of_time {
                break;
            }
        } else if prober.due() {
            c.ready = prober.probe(c.ready).await;
        }
        if !writer.write(&pod, &c, "Running").await {
            workload.kill();
            return;
        }
        let mut wake = prober.next();
        for at in [sigterm_at, deadline].into_iter().flatten() {
            if at > tokio::time::Instant::now() {
                wake = wake.min(at);
            }
        }
        if stopped || matches!(workload, Workload::Process(_)) {
            wake = wake.min(tokio::time::Instant::now() + Duration::from_millis(20));
        }
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            r = latest.changed() => if r.is_err() { workload.kill(); return },
        }
    }
    c.running = false;
    c.ready = false;
    c.sandbox = false;
    let pod = latest.borrow().clone();
    finish(&mut writer, &pod, &c).await;
}

/// The end of a deleted pod: its terminal phase written, then the final delete (grace 0, uid
/// precondition).
pub(crate) async fn finish(writer: &mut StatusWriter, pod: &Value, c: &Containers) {
    let phase = if c.exit_code == 0 {
        "Succeeded"
    } else {
        "Failed"
    };
    writer.write(pod, c, phase).await;
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(writer.uid.clone()),
            resource_version: None,
        }),
        ..Default::default()
    };
    if let Err(e) = writer.api.delete(&writer.name, &dp).await
        && !matches!(&e, kube::Error::Api(s) if s.code == 404 || s.code == 409)
    {
        tracing::warn!(pod = %writer.name, error = %e, "node agent: the final delete failed");
    }
}

/// What runs for a pod: the rig's HTTP server, or a process the rig started.
enum Workload {
    Server(watch::Sender<bool>, tokio::task::JoinHandle<()>),
    Process(i32),
}

impl Workload {
    /// SIGTERM: the server's listener closes, requests in flight finish.
    fn sigterm(&self) {
        match self {
            Workload::Server(stop, _) => {
                stop.send_replace(true);
            }
            // SAFETY: signalling a process by PID.
            Workload::Process(pid) => unsafe {
                libc::kill(*pid, libc::SIGTERM);
            },
        }
    }

    fn kill(&mut self) {
        match self {
            Workload::Server(_, task) => task.abort(),
            // SAFETY: signalling a process by PID.
            Workload::Process(pid) => unsafe {
                libc::kill(*pid, libc::SIGKILL);
            },
        }
    }

    fn exited(&self) -> bool {
        match self {
            Workload::Server(_, task) => task.is_finished(),
            // SAFETY: signal 0 only checks that the process exists.
            Workload::Process(pid) => unsafe { libc::kill(*pid, 0) != 0 },
        }
    }
}

/// Readiness probing as the kubelet does it: httpGet every period, success and failure
/// thresholds; a pod without a probe is ready once its first port accepts connections.
pub(crate) struct Prober {
    probe: Option<crate::kubelet::Probe>,
    addr: SocketAddr,
    next: tokio::time::Instant,
    period: Duration,
    successes: u32,
    failures: u32,
}

impl Prober {
    pub(crate) fn new(plan: &PodPlan, ip: Ipv4Addr) -> Self {
        Self::of(plan.probe.clone(), plan, ip)
    }

    /// A prober of `probe` (None: the first port accepting connections).
    pub(crate) fn of(probe: Option<crate::kubelet::Probe>, plan: &PodPlan, ip: Ipv4Addr) -> Self {
        let (port, period, initial) = match &probe {
            Some(p) => (p.port, p.period, p.initial_delay),
            None => (
                plan.ports.first().copied().unwrap_or(80),
                Duration::from_millis(50),
                Duration::ZERO,
            ),
        };
        Self {
            probe,
            addr: SocketAddr::new(IpAddr::V4(ip), port),
            next: tokio::time::Instant::now() + initial,
            period,
            successes: 0,
            failures: 0,
        }
    }

    pub(crate) fn due(&self) -> bool {
        tokio::time::Instant::now() >= self.next
    }

    pub(crate) fn next(&self) -> tokio::time::Instant {
        self.next
    }

    async fn listening(&self) -> bool {
        tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(self.addr),
        )
        .await
        .is_ok_and(|r| r.is_ok())
    }

    /// One probe; returns whether the container is ready (for a liveness probe: alive) now.
    pub(crate) async fn probe(&mut self, ready: bool) -> bool {
        self.next = tokio::time::Instant::now() + self.period;
        let Some(p) = &self.probe else {
            return ready || self.listening().await;
        };
        let ok = reqwest_like::Client
            .get_ok(self.addr, &p.path, p.timeout)
            .await
            .is_ok();
        if ok {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        if !ready && self.successes >= p.success_threshold {
            true
        } else if ready && self.failures >= p.failure_threshold {
            false
        } else {
            ready
        }
    }
}
