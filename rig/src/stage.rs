//! readygate on the real control plane: installed from the project's manifests (CRD, namespace,
//! ServiceAccount, RBAC, Services, PodDisruptionBudget, the MutatingWebhookConfiguration with
//! its caBundle), its replicas run by the rig as processes on pod IPs, each represented by a Pod
//! made from the manifests' Deployment template and bound to the rig's node. The node agent
//! probes and signals them as a kubelet does; the real EndpointSlice controller puts the Ready
//! ones behind the webhook Service; the API server calls them through that Service
//! (`--enable-aggregator-routing`) and verifies TLS against `SERVICE.NAMESPACE.svc`. readygate
//! authenticates with its ServiceAccount's token (TokenRequest), so RBAC judges every call.

use crate::certs::Certs;
use crate::fault_proxy::FaultProxy;
use crate::k8s::install::{self, Installed};
use crate::k8s::node::{EXTERNAL_ANNOTATION, EXTERNAL_PID_ANNOTATION, NODE_NAME};
use crate::readygate::{Readygate, ReadygateOpts};
use crate::rig::{Rig, RigConfig};
use anyhow::{Context, bail};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// The lease readygate's replicas compete for (its `--lease-name` default).
pub const LEASE_NAME: &str = "readygate";
const WEBHOOK_PORT: u16 = 9443;
const ADMIN_PORT: u16 = 8080;

/// Stages of one process get distinct replica names.
static STAGES: AtomicUsize = AtomicUsize::new(0);

pub struct Stage {
    pub rig: Rig,
    pub client: Client,
    /// Between readygate and the API server, when started so.
    pub proxy: Option<FaultProxy>,
    /// The running replicas, oldest first.
    pub replicas: Arc<Mutex<Vec<Readygate>>>,
    /// The webhook Service: name and namespace (readygate's namespace, holding its Lease).
    pub service: (String, String),
    pub installed: Installed,
    template: ReadygateOpts,
    prefix: String,
    started: AtomicUsize,
}

impl Stage {
    /// The rig with one readygate replica.
    pub async fn start(
        bin: &Path,
        manifests: &Path,
        readygate_args: &[String],
    ) -> anyhow::Result<Self> {
        Self::start_replicas(bin, manifests, readygate_args, 1).await
    }

    /// The rig with readygate installed from `manifests` and `replicas` replicas behind the
    /// webhook Service.
    pub async fn start_replicas(
        bin: &Path,
        manifests: &Path,
        readygate_args: &[String],
        replicas: usize,
    ) -> anyhow::Result<Self> {
        Self::start_with(bin, manifests, readygate_args, replicas, false).await
    }

    /// As [`Stage::start_replicas`]; with `behind_proxy`, readygate reaches the API server
    /// through a [`FaultProxy`] (kept in [`Stage::proxy`]) that can play outages and cut
    /// watches.
    pub async fn start_with(
        bin: &Path,
        manifests: &Path,
        readygate_args: &[String],
        replicas: usize,
        behind_proxy: bool,
    ) -> anyhow::Result<Self> {
        let rig = Rig::start(RigConfig::default()).await?;
        let plane = rig.plane;
        let dir = rig.dir.path().to_path_buf();
        let dir = dir.as_path();
        let elb_url = rig.elb_api.url();
        let client = plane.client().await?;
        let (service, service_ns) = crate::rig::webhook_service(manifests)?;
        let certs = Certs::for_service(&service, &service_ns)?;
        let paths = certs.write(&dir.join("certs"))?;
        let installed = install::readygate(&client, manifests, &certs.ca_pem).await?;
        let token =
            install::service_account_token(&client, &installed.namespace, "readygate", 86_400)
                .await?;
        let kubeconfig = dir.join("readygate.kubeconfig");
        let proxy = if behind_proxy {
            Some(FaultProxy::start(plane).await?)
        } else {
            None
        };
        std::fs::write(
            &kubeconfig,
            match &proxy {
                Some(p) => p.kubeconfig_for_token(&token),
                None => plane.pki.token_kubeconfig(&plane.url, "readygate", &token),
            },
        )?;
        let n = STAGES.fetch_add(1, Ordering::Relaxed);
        let prefix = if n == 0 {
            "readygate".to_string()
        } else {
            format!("readygate-s{n}")
        };
        let placeholder: SocketAddr = "127.0.0.1:0".parse()?;
        let template = ReadygateOpts {
            bin: bin.to_path_buf(),
            kubeconfig,
            cert: paths.cert,
            key: paths.key,
            elb_url,
            lease_namespace: service_ns.clone(),
            identity: String::new(),
            webhook_addr: placeholder,
            admin_addr: placeholder,
            log: dir.join("readygate.log"),
            extra_args: readygate_args.to_vec(),
        };
        let stage = Self {
            rig,
            client,
            proxy,
            replicas: Arc::new(Mutex::new(Vec::new())),
            service: (service, service_ns),
            installed,
            template,
            prefix,
            started: AtomicUsize::new(0),
        };
        for _ in 0..replicas {
            stage.add_replica().await?;
        }
        Ok(stage)
    }

    /// Options of the next replica: its own identity (also its Pod's name), pod IP and log.
    fn next_opts(&self) -> anyhow::Result<ReadygateOpts> {
        let i = self.started.fetch_add(1, Ordering::Relaxed);
        let ip = crate::netns::pod_ips().allocate()?;
        let mut o = self.template.clone();
        o.identity = format!("{}-{i}", self.prefix);
        o.webhook_addr = SocketAddr::new(ip.into(), WEBHOOK_PORT);
        o.admin_addr = SocketAddr::new(ip.into(), ADMIN_PORT);
        if i > 0 {
            o.log = self
                .template
                .log
                .with_file_name(format!("readygate-{i}.log"));
        }
        Ok(o)
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.service.1)
    }

    /// The replica's Pod: the manifests' Deployment template, bound to the rig's node, its
    /// process's IP and PID annotated for the node agent.
    fn pod_object(&self, rg: &Readygate) -> anyhow::Result<Pod> {
        let t = &self.installed.pod_template;
        let mut metadata = t["metadata"].clone();
        metadata["name"] = json!(rg.opts.identity);
        metadata["annotations"][EXTERNAL_ANNOTATION] = json!(rg.opts.webhook_addr.ip().to_string());
        metadata["annotations"][EXTERNAL_PID_ANNOTATION] =
            json!(rg.pid().context("readygate has no PID")?.to_string());
        let mut spec = t["spec"].clone();
        spec["nodeName"] = json!(NODE_NAME);
        Ok(serde_json::from_value(
            json!({"metadata": metadata, "spec": spec}),
        )?)
    }

    /// Waits until the webhook Service has a ready endpoint at `addr` (or, with `present`
    /// false, none).
    async fn wait_endpoint(&self, addr: SocketAddr, present: bool) -> anyhow::Result<()> {
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &self.service.1);
        let lp =
            ListParams::default().labels(&format!("kubernetes.io/service-name={}", self.service.0));
        let ip = addr.ip().to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = slices
                .list(&lp)
                .await?
                .items
                .iter()
                .flat_map(|s| s.endpoints.iter())
                .any(|e| {
                    e.addresses.contains(&ip)
                        && e.conditions.as_ref().and_then(|c| c.ready) == Some(true)
                });
            if ready == present {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "readygate's endpoint {ip} {} the webhook Service within 30 s",
                    if present {
                        "did not join"
                    } else {
                        "did not leave"
                    }
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts one more replica and waits until the webhook Service sends it requests.
    pub async fn add_replica(&self) -> anyhow::Result<()> {
        let opts = self.next_opts()?;
        let rg = Readygate::start(opts).await?;
        self.pods()
            .create(&PostParams::default(), &self.pod_object(&rg)?)
            .await
            .context("creating readygate's Pod")?;
        let addr = rg.opts.webhook_addr;
        self.replicas.lock().await.push(rg);
        self.wait_endpoint(addr, true).await
    }

    /// Deletes replica `index`'s Pod as a Deployment's rollout does: the node agent runs its
    /// preStop sleep, then SIGTERMs it; waits until the process and its Pod are gone.
    async fn terminate(&self, index: usize) -> anyhow::Result<()> {
        let rg = self.replicas.lock().await.remove(index);
        let name = rg.opts.identity.clone();
        self.pods()
            .delete(&name, &DeleteParams::default())
            .await
            .with_context(|| format!("deleting readygate's Pod {name}"))?;
        rg.wait_or_kill(Duration::from_secs(60)).await?;
        self.wait_pod_gone(&name).await
    }

    async fn wait_pod_gone(&self, name: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.pods().get_opt(name).await?.is_some() {
            if Instant::now() > deadline {
                bail!("readygate's Pod {name} was not removed within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Rolls replica `index` as the Deployment (maxSurge 1, maxUnavailable 0) does: a new
    /// replica first, then the old one terminated and waited for.
    pub async fn replace(&self, index: usize) -> anyhow::Result<()> {
        self.add_replica().await?;
        self.terminate(index).await
    }

    /// Terminates replica `index` and starts it again with the same name and address.
    pub async fn restart(&self, index: usize) -> anyhow::Result<()> {
        let opts = self.replicas.lock().await[index].opts.clone();
        self.terminate(index).await?;
        let rg = Readygate::start(opts).await?;
        self.pods()
            .create(&PostParams::default(), &self.pod_object(&rg)?)
            .await?;
        let addr = rg.opts.webhook_addr;
        self.replicas.lock().await.insert(index, rg);
        self.wait_endpoint(addr, true).await
    }

    /// The identity holding readygate's Lease, if any.
    pub async fn leader(&self) -> Option<String> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), &self.service.1);
        let lease = leases.get_opt(LEASE_NAME).await.ok()??;
        lease.spec?.holder_identity.filter(|h| !h.is_empty())
    }

    /// SIGKILLs the replica that holds the Lease (as a crashing process): the node agent sees it
    /// die and the endpoint goes; then its Pod is deleted. Returns its identity.
    pub async fn kill_leader(&self) -> anyhow::Result<String> {
        let leader = self
            .leader()
            .await
            .ok_or_else(|| anyhow::anyhow!("no replica holds the lease"))?;
        let index = self
            .replicas
            .lock()
            .await
            .iter()
            .position(|r| r.opts.identity == leader)
            .ok_or_else(|| anyhow::anyhow!("the leader {leader} is not a running replica"))?;
        let rg = self.replicas.lock().await.remove(index);
        rg.signal("KILL");
        let addr = rg.opts.webhook_addr;
        rg.wait_or_kill(Duration::from_secs(5)).await?;
        self.wait_endpoint(addr, false).await?;
        self.pods()
            .delete(&leader, &DeleteParams::default())
            .await?;
        self.wait_pod_gone(&leader).await?;
        Ok(leader)
    }

    /// PIDs of the running replicas.
    pub async fn pids(&self) -> Vec<Option<u32>> {
        self.replicas.lock().await.iter().map(|r| r.pid()).collect()
    }

    pub fn log_path(&self) -> PathBuf {
        self.template.log.clone()
    }

    /// Terminates every replica at once (their Pods deleted) and waits for each.
    pub async fn stop(&self) -> anyhow::Result<()> {
        let n = self.replicas.lock().await.len();
        let names: Vec<String> = self
            .replicas
            .lock()
            .await
            .iter()
            .map(|r| r.opts.identity.clone())
            .collect();
        for name in &names {
            let _ = self.pods().delete(name, &DeleteParams::default()).await;
        }
        let replicas: Vec<Readygate> = self.replicas.lock().await.drain(..n).collect();
        for r in futures::future::join_all(
            replicas
                .into_iter()
                .map(|rg| rg.wait_or_kill(Duration::from_secs(60))),
        )
        .await
        {
            r?;
        }
        for name in &names {
            self.wait_pod_gone(name).await?;
        }
        Ok(())
    }

    /// The last lines of every replica's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let dir = self
            .template
            .log
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut logs: Vec<PathBuf> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("readygate") && n.ends_with(".log"))
            })
            .collect();
        logs.sort();
        tail_of(&logs, lines)
    }
}

/// readygate as a user runs it: `manifests/base` applied whole, its Deployment included, with an
/// overlay-style patch adding the rig's ELBv2 endpoint and credentials (`AWS_ENDPOINT_URL`,
/// `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_EC2_METADATA_DISABLED`) to
/// the container's `env` and any extra `args`; the Secret of its TLS volume made from a rig CA
/// for `SERVICE.NAMESPACE.svc` (the webhook configuration's caBundle). The real Deployment
/// controller makes the pods, the node agent runs each as the readygate binary in a container
/// ([`crate::k8s::containers`]): in-cluster configuration from the projected ServiceAccount
/// token, the certificate from the mounted Secret, Ready by its own probes.
pub struct Deployed {
    pub rig: Rig,
    pub client: Client,
    pub installed: Installed,
    /// The certificate the Secret holds now.
    pub certs: Certs,
    pub namespace: String,
    /// The webhook Service's name.
    pub service: String,
    pub deployment: String,
    pub replicas: usize,
    /// The pod template's labels as a selector.
    pub selector: String,
}

/// The overlay the rig applies to readygate's Deployment: JSON patch operations adding `env`
/// entries and `args` to its `readygate` container.
pub fn deployment_patch(
    env: &[(&str, &str)],
    args: &[String],
) -> anyhow::Result<json_patch::Patch> {
    let c = "/spec/template/spec/containers/0";
    let mut ops = vec![json!({"op": "test", "path": format!("{c}/name"), "value": "readygate"})];
    for (k, v) in env {
        ops.push(
            json!({"op": "add", "path": format!("{c}/env/-"), "value": {"name": k, "value": v}}),
        );
    }
    for a in args {
        ops.push(json!({"op": "add", "path": format!("{c}/args/-"), "value": a}));
    }
    Ok(serde_json::from_value(serde_json::Value::Array(ops))?)
}

impl Deployed {
    /// The rig, readygate's Deployment applied with `readygate_args` added, and its pods Ready
    /// and behind the webhook Service.
    pub async fn start(
        bin: &Path,
        manifests: &Path,
        readygate_args: &[String],
    ) -> anyhow::Result<Self> {
        let rig = Rig::start(RigConfig {
            readygate_bin: Some(bin.to_path_buf()),
            ..RigConfig::default()
        })
        .await?;
        let client = rig.client.clone();
        let (service, namespace) = crate::rig::webhook_service(manifests)?;
        let certs = Certs::for_service(&service, &namespace)?;
        let elb_url = rig.elb_api.url();
        let patch = deployment_patch(
            &[
                ("AWS_ENDPOINT_URL", elb_url.as_str()),
                ("AWS_REGION", crate::elb::REGION),
                ("AWS_ACCESS_KEY_ID", crate::readygate::ACCESS_KEY),
                ("AWS_SECRET_ACCESS_KEY", "rig"),
                ("AWS_EC2_METADATA_DISABLED", "true"),
            ],
            readygate_args,
        )?;
        let installed = install::readygate_deployed(&client, manifests, &certs, &patch).await?;
        let d = installed
            .deployment
            .clone()
            .context("the Deployment was not applied")?;
        let selector = d["spec"]["selector"]["matchLabels"]
            .as_object()
            .context("readygate's Deployment has no matchLabels")?
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(",");
        let stage = Self {
            rig,
            client,
            certs,
            namespace,
            service,
            deployment: crate::str_at(&d, "/metadata/name"),
            replicas: d["spec"]["replicas"].as_u64().unwrap_or(1) as usize,
            selector,
            installed,
        };
        stage.wait_ready(Duration::from_secs(120)).await?;
        Ok(stage)
    }

    fn pods_api(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// readygate's pods, as JSON.
    pub async fn pods(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        Ok(self
            .pods_api()
            .list(&ListParams::default().labels(&self.selector))
            .await?
            .items
            .into_iter()
            .filter_map(|p| serde_json::to_value(p).ok())
            .collect())
    }

    /// The addresses of the webhook Service's ready endpoints.
    pub async fn ready_endpoints(&self) -> anyhow::Result<Vec<String>> {
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &self.namespace);
        let lp =
            ListParams::default().labels(&format!("kubernetes.io/service-name={}", self.service));
        let mut out: Vec<String> = slices
            .list(&lp)
            .await?
            .items
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
            .flat_map(|e| e.addresses.clone())
            .collect();
        out.sort();
        Ok(out)
    }

    /// Waits until every replica of the Deployment is Ready (by its probes) and of the current
    /// template, no other pod is left, and the webhook Service has one ready endpoint per
    /// replica.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let pods = self.pods().await?;
            let ready: Vec<String> = pods
                .iter()
                .filter(|p| {
                    crate::deploy::is_ready(p) && p["metadata"]["deletionTimestamp"].is_null()
                })
                .map(|p| crate::str_at(p, "/status/podIP"))
                .collect();
            let endpoints = self.ready_endpoints().await?;
            if ready.len() == self.replicas
                && pods.len() == self.replicas
                && endpoints.len() == self.replicas
                && ready.iter().all(|ip| endpoints.contains(ip))
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                let states: Vec<String> = pods
                    .iter()
                    .map(|p| {
                        format!(
                            "{} {} {}",
                            crate::str_at(p, "/metadata/name"),
                            crate::str_at(p, "/status/phase"),
                            p.pointer("/status/containerStatuses/0/state")
                                .cloned()
                                .unwrap_or_default()
                        )
                    })
                    .collect();
                bail!(
                    "readygate's {} replicas were not Ready behind the webhook Service within {timeout:?} \
                     (pods: {states:?}; ready endpoints: {endpoints:?}); logs:\n{}",
                    self.replicas,
                    self.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Writes a renewed key pair (same CA) into the TLS Secret; returns it.
    pub async fn rotate(&mut self) -> anyhow::Result<&Certs> {
        let renewed = self.certs.renewed()?;
        let name = self
            .installed
            .tls_secret
            .clone()
            .context("no TLS Secret was installed")?;
        install::apply(
            &self.client,
            &install::tls_secret(&name, &self.namespace, &renewed),
            &self.namespace,
        )
        .await?;
        self.certs = renewed;
        Ok(&self.certs)
    }

    /// The container logs of readygate's pods (every restart), newest lines last.
    pub fn logs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let prefix = format!("{}_", self.namespace);
        for pod in std::fs::read_dir(self.rig.node().logs_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            if !pod.file_name().to_string_lossy().starts_with(&prefix) {
                continue;
            }
            for c in std::fs::read_dir(pod.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                for log in std::fs::read_dir(c.path()).into_iter().flatten().flatten() {
                    out.push(log.path());
                }
            }
        }
        out.sort();
        out
    }

    /// The last lines of every container log of readygate's pods.
    pub fn log_tail(&self, lines: usize) -> String {
        tail_of(&self.logs(), lines)
    }

    /// Deletes the Deployment (its ReplicaSet and pods go with it, each terminated by the node
    /// agent as the kubelet does) and waits until no pod of it is left.
    pub async fn stop(&self) -> anyhow::Result<()> {
        let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
            Api::namespaced(self.client.clone(), &self.namespace);
        deployments
            .delete(&self.deployment, &DeleteParams::foreground())
            .await
            .with_context(|| format!("deleting Deployment {}", self.deployment))?;
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let left = self.pods().await?;
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "readygate's pods were not gone 90 s after its Deployment's deletion: {:?}",
                    left.iter()
                        .map(|p| crate::str_at(p, "/metadata/name"))
                        .collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The last `lines` lines of each log, each under a `--- PATH` header.
fn tail_of(logs: &[PathBuf], lines: usize) -> String {
    let mut out = String::new();
    for log in logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        out.push_str(&format!("--- {}\n", log.display()));
        out.push_str(&all[all.len().saturating_sub(lines)..].join("\n"));
        out.push('\n');
    }
    out
}
