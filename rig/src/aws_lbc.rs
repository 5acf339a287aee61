//! The real AWS Load Balancer Controller (v3.5.0, built by hand outside the repository; the rig
//! takes only its binary's path, `RIG_AWS_LBC_BIN`) as a process of the rig, in the rig's
//! network namespace: its own kubeconfig, `--cluster-name`, leader election off, its webhook
//! server on every address of the namespace (the API server reaches it on the node address
//! through a selector-less Service and an EndpointSlice, as it reaches readygate), metrics and
//! health ports on loopback ports of their own, ELBv2 and EC2 at the rig's Query API with an
//! access key of its own, and its binding webhooks registered from the controller's own
//! configuration (`../shared/aws-lbc-v3.5.0/webhook/manifests.yaml`, read at run time).
//!
//! It is started from a thread of its own that lives as long as the process, so its
//! parent-death signal (SIGKILL) fires only when the rig dies; [`AwsLbc::stop`] (and `Drop`)
//! stop it by PID. When it exits on its own, [`AwsLbc::check`] names it and its log.

use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use crate::k8s::aws_lbc::{NAMESPACE, USER};

/// The variable naming the controller's binary.
pub const BIN_ENV: &str = "RIG_AWS_LBC_BIN";
/// The controller's access key on the rig's AWS APIs (the load balancer counts calls by it):
/// the model's caller name, so that [`crate::elb::Elb::calls_by`] counts whichever plays it.
pub const ACCESS_KEY: &str = crate::lbc::CALLER;
/// The webhook Service its Helm chart makes, in its namespace.
pub const WEBHOOK_SERVICE: &str = "aws-load-balancer-webhook-service";
/// The webhook configurations' names (the Helm chart's).
pub const WEBHOOK_CONFIGURATION: &str = "aws-load-balancer-webhook";
/// The binding webhooks (`mtargetgroupbinding` defaults, `vtargetgroupbinding` validates).
pub const BINDING_WEBHOOKS: [&str; 2] = [
    "mtargetgroupbinding.elbv2.k8s.aws",
    "vtargetgroupbinding.elbv2.k8s.aws",
];
/// Its pod webhook (gate injection), registered only when asked for.
pub const POD_WEBHOOK: &str = "mpod.elbv2.k8s.aws";
/// The version whose data files (CRDs, webhook configuration, RBAC role) sit beside the
/// repository.
pub const VERSION: &str = "v3.5.0";

/// `../shared/aws-lbc-v3.5.0` from the repository root: the controller's data files, beside
/// the repository, never in it; the real controller needs them (its webhook configuration).
pub fn data_dir() -> anyhow::Result<PathBuf> {
    crate::k8s::aws_lbc::shared_dir().with_context(|| {
        format!(
            "the AWS Load Balancer Controller {VERSION}'s data files (CRDs, webhook configuration, RBAC role) are not beside the repository (../shared/aws-lbc-{VERSION}): the real controller cannot be installed without them"
        )
    })
}

/// The binary `RIG_AWS_LBC_BIN` names: None when unset or empty, an error when it names no
/// executable file (a bad path is never quietly replaced by the model).
pub fn binary_from_env() -> anyhow::Result<Option<PathBuf>> {
    match std::env::var_os(BIN_ENV) {
        Some(v) if !v.is_empty() => check_binary(Path::new(&v)).map(Some),
        _ => Ok(None),
    }
}

/// `path` when it is an executable file; otherwise an error naming it.
pub fn check_binary(path: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).with_context(|| {
        format!(
            "{BIN_ENV} / --aws-lbc: {} is not there (the AWS Load Balancer Controller's binary)",
            path.display()
        )
    })?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        bail!(
            "{BIN_ENV} / --aws-lbc: {} is not an executable file",
            path.display()
        );
    }
    Ok(path.to_path_buf())
}

/// How to run the controller.
#[derive(Debug, Clone)]
pub struct AwsLbcOpts {
    pub bin: PathBuf,
    /// The kubeconfig it runs with (its ServiceAccount's identity).
    pub kubeconfig: PathBuf,
    /// The rig's Query API (ELBv2 and EC2), e.g. `http://10.244.0.1:PORT`.
    pub aws_url: String,
    /// Where its log, certificates and files go.
    pub dir: PathBuf,
    /// `--enable-pod-readiness-gate-inject` (false: readygate injects the gates) and, when true,
    /// its pod webhook registered for namespaces labelled `elbv2.k8s.aws/pod-readiness-gate-inject:
    /// enabled`.
    pub pod_webhook: bool,
    /// `--targetgroupbinding-requeue-duration` (None: its default, 15 s).
    pub requeue: Option<Duration>,
    /// More flags, last (they win).
    pub extra_args: Vec<String>,
}

impl AwsLbcOpts {
    pub fn new(bin: PathBuf, kubeconfig: PathBuf, aws_url: String, dir: PathBuf) -> Self {
        Self {
            bin,
            kubeconfig,
            aws_url,
            dir,
            pod_webhook: false,
            requeue: None,
            extra_args: Vec::new(),
        }
    }
}

/// The process, by PID; its exit observed (not reaped) by its own thread, so that a signal by
/// PID never reaches a reused PID.
struct Process {
    pid: u32,
    /// Set, under this lock, when the process has been reaped.
    exited: Arc<Mutex<Option<ExitStatus>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Process {
    fn spawn(mut cmd: Command, log: &Path) -> anyhow::Result<Self> {
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        // SAFETY: prctl in the child before exec: the controller dies with the thread that
        // started it, which lives until the controller has exited.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let exited = Arc::new(Mutex::new(None));
        let (tx, rx) = std::sync::mpsc::channel();
        let status = exited.clone();
        let thread = std::thread::Builder::new()
            .name("rig-aws-lbc".into())
            .spawn(move || {
                // In the rig's network namespace whatever thread asked for the start.
                if let Err(e) = crate::netns::enter() {
                    let _ = tx.send(Err(e));
                    return;
                }
                let mut child = match cmd.spawn() {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.send(Err(e.into()));
                        return;
                    }
                };
                let pid = child.id();
                let _ = tx.send(Ok(pid));
                wait_exit_unreaped(pid);
                let mut exited = status.lock().expect("exit lock");
                *exited = Some(child.wait().unwrap_or_else(|_| {
                    use std::os::unix::process::ExitStatusExt;
                    ExitStatus::from_raw(0)
                }));
            })?;
        let pid = rx
            .recv()
            .context("the controller's spawning thread died")?
            .context("starting the AWS Load Balancer Controller")?;
        Ok(Self {
            pid,
            exited,
            thread: Some(thread),
        })
    }

    fn exit_status(&self) -> Option<ExitStatus> {
        *self.exited.lock().expect("exit lock")
    }

    /// Sends `signal` unless the process has been reaped (the lock keeps it from being reaped
    /// meanwhile).
    fn signal(&self, signal: i32) {
        let exited = self.exited.lock().expect("exit lock");
        if exited.is_none() {
            // SAFETY: kill(2) on our own, not yet reaped, child.
            unsafe { libc::kill(self.pid as i32, signal) };
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; returns once reaped.
    fn stop(&mut self, grace: Duration) {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while self.exit_status().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.signal(libc::SIGKILL);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Blocks until process `pid` (a child) has exited, leaving it to be reaped.
fn wait_exit_unreaped(pid: u32) {
    loop {
        // SAFETY: waitid on our own child with a zeroed siginfo it fills in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

/// A port free right now on every address of the rig's network namespace.
fn free_port(ip: Ipv4Addr) -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind((ip, 0)).context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// The last `lines` lines of a log, for an error.
fn tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n  ")
}

/// The running controller.
pub struct AwsLbc {
    process: Mutex<Process>,
    pub opts: AwsLbcOpts,
    pub log: PathBuf,
    /// Its webhook server's port (on every address; the API server uses the node address).
    pub webhook_port: u16,
    pub health_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// From the spawn to its `/readyz` answering (its webhook server up).
    pub ready_in: Duration,
    /// From the spawn to its webhook registered and answering the API server.
    pub started_in: Duration,
    /// Its `version` log line (GitVersion), when it printed one.
    pub version: String,
}

impl AwsLbc {
    /// Starts the controller, waits for its readiness (`/readyz`: its webhook server is up),
    /// registers its webhooks with the API server and waits until the API server reaches them.
    pub async fn start(client: &kube::Client, opts: AwsLbcOpts) -> anyhow::Result<Self> {
        let started = Instant::now();
        std::fs::create_dir_all(&opts.dir)
            .with_context(|| format!("creating {}", opts.dir.display()))?;
        let certs = crate::certs::Certs::for_service(WEBHOOK_SERVICE, NAMESPACE)?;
        let cert_dir = opts.dir.join("webhook-certs");
        certs.write(&cert_dir)?;
        let webhook_port = free_port(Ipv4Addr::UNSPECIFIED)?;
        let health_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port(Ipv4Addr::LOCALHOST)?));
        let metrics_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port(Ipv4Addr::LOCALHOST)?));
        let log = opts.dir.join("aws-load-balancer-controller.log");
        let endpoints = format!(
            "EC2={url},Elastic Load Balancing v2={url}",
            url = opts.aws_url
        );
        let mut args = vec![
            format!("--kubeconfig={}", opts.kubeconfig.display()),
            format!("--cluster-name={}", crate::elb::ec2::CLUSTER_NAME),
            "--enable-leader-election=false".into(),
            format!("--webhook-bind-port={webhook_port}"),
            format!("--webhook-cert-dir={}", cert_dir.display()),
            "--webhook-cert-file=tls.crt".into(),
            "--webhook-key-file=tls.key".into(),
            format!("--metrics-bind-addr={metrics_addr}"),
            format!("--health-probe-bind-addr={health_addr}"),
            format!("--aws-region={}", crate::elb::REGION),
            format!("--aws-vpc-id={}", crate::elb::VPC_ID),
            format!("--aws-api-endpoints={endpoints}"),
            // What the rig has none of: Gateway API CRDs, Services of type LoadBalancer (no
            // CreateLoadBalancer here), WAF, Shield.
            "--feature-gates=NLBGatewayAPI=false,ALBGatewayAPI=false,GatewayListenerSet=false,EnableServiceController=false".into(),
            "--enable-waf=false".into(),
            "--enable-wafv2=false".into(),
            "--enable-shield=false".into(),
            format!("--enable-pod-readiness-gate-inject={}", opts.pod_webhook),
        ];
        if let Some(d) = opts.requeue {
            args.push(format!(
                "--targetgroupbinding-requeue-duration={}ms",
                d.as_millis()
            ));
        }
        args.extend(opts.extra_args.iter().cloned());
        let mut cmd = Command::new(&opts.bin);
        cmd.args(&args)
            .current_dir(&opts.dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", ACCESS_KEY)
            .env("AWS_REGION", crate::elb::REGION)
            .env("AWS_EC2_METADATA_DISABLED", "true");
        let process = Process::spawn(cmd, &log)
            .with_context(|| format!("starting {}", opts.bin.display()))?;
        let mut lbc = Self {
            process: Mutex::new(process),
            opts,
            log,
            webhook_port,
            health_addr,
            metrics_addr,
            ready_in: Duration::ZERO,
            started_in: Duration::ZERO,
            version: String::new(),
        };
        lbc.wait_ready(Duration::from_secs(60)).await?;
        lbc.ready_in = started.elapsed();
        lbc.register_webhooks(client, &certs.ca_pem).await?;
        lbc.wait_webhook_reachable(client, Duration::from_secs(30))
            .await?;
        lbc.started_in = started.elapsed();
        lbc.version = version_line(&std::fs::read_to_string(&lbc.log).unwrap_or_default());
        tracing::info!(
            ready = lbc.ready_in.as_secs_f64(),
            seconds = lbc.started_in.as_secs_f64(),
            version = %lbc.version,
            log = %lbc.log.display(),
            "AWS Load Balancer Controller ready"
        );
        Ok(lbc)
    }

    pub fn pid(&self) -> u32 {
        self.process.lock().expect("process lock").pid
    }

    /// Fails with the controller's name, exit status and log when it has exited.
    pub fn check(&self) -> anyhow::Result<()> {
        if let Some(status) = self.process.lock().expect("process lock").exit_status() {
            bail!(
                "the AWS Load Balancer Controller ({}) exited ({status}) while the rig needed it; its log: {}\n  …\n  {}",
                self.opts.bin.display(),
                self.log.display(),
                tail(&self.log, 15)
            );
        }
        Ok(())
    }

    async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let client = crate::kubelet::reqwest_like::Client;
        loop {
            self.check()?;
            if client
                .get_ok(self.health_addr, "/readyz", Duration::from_millis(500))
                .await
                .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the AWS Load Balancer Controller was not ready within {timeout:?} (http://{}/readyz); its log: {}\n  …\n  {}",
                    self.health_addr,
                    self.log.display(),
                    tail(&self.log, 15)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The Service the webhook configurations name, without a selector, and an EndpointSlice
    /// putting the node address and the webhook port behind it; the mutating and validating
    /// configurations of `manifests.yaml` with only the binding webhooks (and the pod webhook
    /// when asked for, with the Helm chart's selectors from `pod_mutator_patch.yaml`), their
    /// service reference pointed at that Service and the rig's CA as caBundle.
    async fn register_webhooks(&self, client: &kube::Client, ca_pem: &str) -> anyhow::Result<()> {
        use crate::k8s::install::apply;
        apply(
            client,
            &json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": WEBHOOK_SERVICE, "namespace": NAMESPACE},
                "spec": {"ports": [{"port": 443, "targetPort": self.webhook_port, "protocol": "TCP"}]}}),
            NAMESPACE,
        )
        .await?;
        apply(
            client,
            &json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": WEBHOOK_SERVICE, "namespace": NAMESPACE,
                    "labels": {"kubernetes.io/service-name": WEBHOOK_SERVICE,
                        "endpointslice.kubernetes.io/managed-by": "rig"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [crate::netns::NODE_IP.to_string()],
                    "conditions": {"ready": true}}],
                "ports": [{"port": self.webhook_port, "protocol": "TCP"}]}),
            NAMESPACE,
        )
        .await?;
        for config in webhook_configurations(&data_dir()?, ca_pem, self.opts.pod_webhook)? {
            apply(client, &config, "").await?;
        }
        Ok(())
    }

    /// Waits until the API server calls the binding webhook: a dry-run create of a binding
    /// with neither ARN nor name, which the controller's mutator refuses without calling AWS.
    async fn wait_webhook_reachable(
        &self,
        client: &kube::Client,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let api: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(
            client.clone(),
            NAMESPACE,
            &crate::lbc::target_group_bindings(),
        );
        let probe: kube::api::DynamicObject = serde_json::from_value(json!({
            "apiVersion": "elbv2.k8s.aws/v1beta1", "kind": "TargetGroupBinding",
            "metadata": {"name": "rig-webhook-probe"},
            "spec": {"targetType": "ip", "serviceRef": {"name": "none", "port": 80}}
        }))?;
        let pp = kube::api::PostParams {
            dry_run: true,
            ..Default::default()
        };
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            self.check()?;
            match api.create(&pp, &probe).await {
                Err(kube::Error::Api(s))
                    if s.message.contains(BINDING_WEBHOOKS[0])
                        && s.message.contains("must provide either TargetGroupARN") =>
                {
                    return Ok(());
                }
                Err(e) => last = e.to_string(),
                Ok(_) => last = "the probe binding was admitted".into(),
            }
            if Instant::now() > deadline {
                bail!(
                    "the API server did not reach the AWS Load Balancer Controller's webhook within {timeout:?} ({last}); its log: {}",
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops it by PID (SIGTERM, SIGKILL after 10 s) and removes its webhook configurations,
    /// Service and EndpointSlice (a webhook with `failurePolicy: Fail` and no server would
    /// refuse every binding).
    pub async fn stop(&self, client: &kube::Client) -> anyhow::Result<()> {
        self.process
            .lock()
            .expect("process lock")
            .stop(Duration::from_secs(10));
        unregister_webhooks(client).await
    }
}

impl Drop for AwsLbc {
    fn drop(&mut self) {
        if let Ok(mut p) = self.process.lock() {
            p.stop(Duration::from_secs(10));
        }
    }
}

/// Deletes the controller's webhook configurations, Service and EndpointSlice (absent ones
/// are fine).
pub async fn unregister_webhooks(client: &kube::Client) -> anyhow::Result<()> {
    use k8s_openapi::api::admissionregistration::v1::{
        MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
    };
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::Api;
    let dp = kube::api::DeleteParams::default();
    let gone = |r: Result<(), kube::Error>| match r {
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        other => other,
    };
    let m: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    gone(m.delete(WEBHOOK_CONFIGURATION, &dp).await.map(|_| ()))?;
    let v: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    gone(v.delete(WEBHOOK_CONFIGURATION, &dp).await.map(|_| ()))?;
    let s: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    gone(s.delete(WEBHOOK_SERVICE, &dp).await.map(|_| ()))?;
    let e: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    gone(e.delete(WEBHOOK_SERVICE, &dp).await.map(|_| ()))?;
    Ok(())
}

/// The controller's webhook configurations from `DIR/webhook/manifests.yaml`: the binding
/// webhooks (and its pod webhook when `pod_webhook`, with the selectors of
/// `pod_mutator_patch.yaml`), named as the Helm chart names them, their service reference
/// pointed at [`WEBHOOK_SERVICE`] in [`NAMESPACE`] and `ca_pem` as caBundle.
pub fn webhook_configurations(
    dir: &Path,
    ca_pem: &str,
    pod_webhook: bool,
) -> anyhow::Result<Vec<Value>> {
    use base64::Engine;
    let read = |name: &str| -> anyhow::Result<Vec<Value>> {
        let path = dir.join("webhook").join(name);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (the AWS Load Balancer Controller {VERSION}'s data files belong beside the repository)",
                path.display()
            )
        })?;
        crate::k8s::install::documents(&text)
    };
    let patches = read("pod_mutator_patch.yaml")?;
    let patch_for = |name: &str| {
        patches
            .iter()
            .flat_map(|d| d["webhooks"].as_array().cloned().unwrap_or_default())
            .find(|w| w["name"] == name)
    };
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let mut wanted: Vec<&str> = BINDING_WEBHOOKS.to_vec();
    if pod_webhook {
        wanted.push(POD_WEBHOOK);
    }
    let mut out = Vec::new();
    for mut doc in read("manifests.yaml")? {
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        if kind != "MutatingWebhookConfiguration" && kind != "ValidatingWebhookConfiguration" {
            continue;
        }
        let webhooks: Vec<Value> = doc["webhooks"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|w| wanted.iter().any(|n| w["name"] == *n))
            .map(|mut w| {
                if let Some(p) = patch_for(w["name"].as_str().unwrap_or_default()) {
                    for key in ["namespaceSelector", "objectSelector", "failurePolicy"] {
                        if !p[key].is_null() {
                            w[key] = p[key].clone();
                        }
                    }
                }
                w["clientConfig"]["service"]["name"] = json!(WEBHOOK_SERVICE);
                w["clientConfig"]["service"]["namespace"] = json!(NAMESPACE);
                w["clientConfig"]["caBundle"] = json!(ca);
                w
            })
            .collect();
        if webhooks.is_empty() {
            continue;
        }
        doc["metadata"] = json!({"name": WEBHOOK_CONFIGURATION});
        doc["webhooks"] = Value::Array(webhooks);
        out.push(doc);
    }
    let found: Vec<&str> = out
        .iter()
        .flat_map(|d| d["webhooks"].as_array().into_iter().flatten())
        .filter_map(|w| w["name"].as_str())
        .collect();
    if let Some(missing) = wanted.iter().find(|n| !found.contains(n)) {
        bail!(
            "{} has no webhook {missing}",
            dir.join("webhook/manifests.yaml").display()
        );
    }
    Ok(out)
}

/// `GitVersion` of the controller's first log line (`"msg":"version","GitVersion":"v3.5.0"`).
fn version_line(log: &str) -> String {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["msg"] == "version")
        .map(|v| crate::str_at(&v, "/GitVersion"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_path_that_is_no_executable_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("controller");
        let e = check_binary(&missing).unwrap_err().to_string();
        assert!(e.contains(BIN_ENV) && e.contains("is not there"), "{e}");
        std::fs::write(&missing, "").unwrap();
        let e = check_binary(&missing).unwrap_err().to_string();
        assert!(e.contains("not an executable file"), "{e}");
    }

    #[test]
    fn webhook_configurations_keep_the_binding_webhooks_pointed_at_the_rig() {
        let Ok(dir) = data_dir() else {
            println!(
                "SKIPPED: ../shared/aws-lbc-{VERSION} is not beside the repository (the controller's data files)"
            );
            return;
        };
        let configs = webhook_configurations(&dir, "CA", false).unwrap();
        let names: Vec<(String, String)> = configs
            .iter()
            .flat_map(|d| {
                let kind = d["kind"].as_str().unwrap().to_string();
                d["webhooks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(move |w| (kind.clone(), w["name"].as_str().unwrap().to_string()))
            })
            .collect();
        assert_eq!(
            names,
            [
                (
                    "MutatingWebhookConfiguration".to_string(),
                    BINDING_WEBHOOKS[0].to_string()
                ),
                (
                    "ValidatingWebhookConfiguration".to_string(),
                    BINDING_WEBHOOKS[1].to_string()
                )
            ]
        );
        for d in &configs {
            assert_eq!(d["metadata"]["name"], WEBHOOK_CONFIGURATION);
            let w = &d["webhooks"][0];
            assert_eq!(w["clientConfig"]["service"]["name"], WEBHOOK_SERVICE);
            assert_eq!(w["clientConfig"]["service"]["namespace"], NAMESPACE);
            assert_eq!(w["clientConfig"]["caBundle"], "Q0E=");
            assert_eq!(w["failurePolicy"], "Fail");
        }
        let with_pods = webhook_configurations(&dir, "CA", true).unwrap();
        let pod = with_pods[0]["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == POD_WEBHOOK)
            .expect("the pod webhook when asked for");
        assert_eq!(
            pod["namespaceSelector"]["matchExpressions"][0]["key"],
            crate::rig::GATE_LABEL
        );
        assert_eq!(pod["failurePolicy"], "Ignore");
    }

    #[test]
    fn the_version_comes_from_the_first_log_line() {
        let log = "{\"level\":\"info\",\"ts\":\"2026-12-08T00:00:00Z\",\"msg\":\"version\",\"GitVersion\":\"v3.5.0\",\"GitCommit\":\"x\"}\nnot json\n";
        assert_eq!(version_line(log), "v3.5.0");
    }
}
