//! The whole rig: the real control plane, the rig's node agent, load balancer controller,
//! ELBv2 endpoint, listeners and timelines, all in the rig's network namespace; and the demo
//! application's objects. The load balancer controller is the real AWS Load Balancer
//! Controller when its binary is given (`RIG_AWS_LBC_BIN`, [`LbcChoice::Real`]), its model
//! ([`crate::lbc`]) otherwise, said in one line.

use crate::aws_lbc::{AwsLbc, AwsLbcOpts};
use crate::cluster::ControlPlane;
use crate::deploy::Deployment;
use crate::elb::listener::Listener;
use crate::elb::query::QueryServer;
use crate::elb::{Elb, ElbConfig, GroupSpec};
use crate::k8s::node::{NODE_NAME, NodeAgent, NodeOpts};
use crate::kubelet::{LB_HEALTH_PATH, PROBE_PERIOD_ANNOTATION, START_DELAY_ANNOTATION};
use crate::lbc::{Lbc, LbcConfig};
use crate::timeline::Timeline;
use anyhow::Context;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub const GATE_LABEL: &str = "elbv2.k8s.aws/pod-readiness-gate-inject";
pub const APP_PORT: u16 = 8080;

#[derive(Debug, Clone)]
pub struct RigConfig {
    /// Target group health checks: interval and thresholds.
    pub interval: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub deregistration_delay: Duration,
    /// From a pod's deletion to the load balancer controller's DeregisterTargets.
    pub lbc_reaction: Duration,
    /// The load balancer controller's `--targetgroupbinding-requeue-duration`: how soon it looks
    /// at a binding again while one of its gates is not True. 1.5 s stands for the real
    /// default, 15 s.
    pub lbc_requeue: Duration,
    pub elb: ElbConfig,
    /// The binary the node agent runs for image `readygate` (None: [`crate::readygate::find_binary`]).
    pub readygate_bin: Option<std::path::PathBuf>,
    /// Which load balancer controller runs.
    pub lbc: LbcChoice,
    /// With the real controller: its pod webhook on (`--enable-pod-readiness-gate-inject`)
    /// for namespaces with the gate label. Off by default: readygate injects the gates.
    pub aws_lbc_pod_webhook: bool,
}

/// Which load balancer controller a rig runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum LbcChoice {
    /// The real one when `RIG_AWS_LBC_BIN` names its binary (an error when it names no
    /// executable), the model otherwise.
    #[default]
    FromEnv,
    /// The model ([`crate::lbc`]) whatever the environment says.
    Model,
    /// The real controller, this binary.
    Real(PathBuf),
}

impl LbcChoice {
    /// The binary to run, or None for the model; says once per process, in one line, when the
    /// model stands in because `RIG_AWS_LBC_BIN` is unset.
    pub fn resolve(&self) -> anyhow::Result<Option<PathBuf>> {
        match self {
            LbcChoice::Model => Ok(None),
            LbcChoice::Real(bin) => crate::aws_lbc::check_binary(bin).map(Some),
            LbcChoice::FromEnv => {
                let bin = crate::aws_lbc::binary_from_env()?;
                if bin.is_none() {
                    static SAID: std::sync::Once = std::sync::Once::new();
                    SAID.call_once(|| eprintln!("{}", model_line()));
                }
                Ok(bin)
            }
        }
    }
}

/// The one line that says the model runs, naming the variable that would run the real one.
pub fn model_line() -> String {
    format!(
        "rig: load balancer controller: the model (rig/src/lbc.rs), not the real AWS Load Balancer Controller: set {} to its binary to run it",
        crate::aws_lbc::BIN_ENV
    )
}

/// The load balancer controller a rig runs.
pub enum LoadBalancerController {
    Model(Lbc),
    Real(Box<AwsLbc>),
}

impl LoadBalancerController {
    /// One line for a report: which controller, and for the real one its version, PID, log and
    /// start-up time.
    pub fn describe(&self) -> String {
        match self {
            LoadBalancerController::Model(_) => {
                "the model of the AWS Load Balancer Controller (rig/src/lbc.rs)".into()
            }
            LoadBalancerController::Real(c) => format!(
                "the AWS Load Balancer Controller {} ({}, --targetgroupbinding-requeue-duration {:?}), pid {}, ready in {:.2} s, its webhooks reached by the API server after {:.2} s, log {}",
                if c.version.is_empty() {
                    "(its log names no version)"
                } else {
                    &c.version
                },
                c.opts.bin.display(),
                c.opts.requeue.unwrap_or(Duration::from_secs(15)),
                c.pid(),
                c.ready_in.as_secs_f64(),
                c.started_in.as_secs_f64(),
                c.log.display()
            ),
        }
    }

    /// The real controller, when it is the one running.
    pub fn real(&self) -> Option<&AwsLbc> {
        match self {
            LoadBalancerController::Real(c) => Some(c),
            LoadBalancerController::Model(_) => None,
        }
    }

    /// Fails, naming the real controller and its log, when it has exited.
    pub fn check(&self) -> anyhow::Result<()> {
        match self {
            LoadBalancerController::Real(c) => c.check(),
            LoadBalancerController::Model(_) => Ok(()),
        }
    }
}

impl Default for RigConfig {
    /// Time compressed tenfold against an NLB as the AWS Load Balancer Controller sets it up:
    /// health checks every 1 s (10 s), healthy after 3 (3). The termination side keeps the
    /// same proportions: the controller deregisters a deleted pod's target 0.5 s after the
    /// deletion (~5 s: its endpoint watch, reconcile and DeregisterTargets call on a busy
    /// cluster; ~1 s at best) and the load balancer keeps routing new requests to it for 1.5 s
    /// more (15 s: an NLB commonly takes 10–30 s to propagate a deregistration, an ALB a few
    /// seconds).
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            healthy_threshold: 3,
            unhealthy_threshold: 2,
            deregistration_delay: Duration::from_secs(5),
            lbc_reaction: Duration::from_millis(500),
            lbc_requeue: Duration::from_millis(1500),
            elb: ElbConfig {
                deregistration_lag: Duration::from_millis(1500),
                ..ElbConfig::default()
            },
            readygate_bin: None,
            lbc: LbcChoice::FromEnv,
            aws_lbc_pod_webhook: false,
        }
    }
}

impl RigConfig {
    /// How long a deleted pod keeps receiving new requests at most: the controller's
    /// reaction plus the load balancer's propagation. A preStop sleep must outlast it.
    pub fn termination_window(&self) -> Duration {
        self.lbc_reaction + self.elb.deregistration_lag
    }
}

pub struct Rig {
    pub config: RigConfig,
    /// The real control plane this process runs on.
    pub plane: &'static ControlPlane,
    /// A cluster-admin client (the rig's own controllers and set-up).
    pub client: kube::Client,
    pub elb: Arc<Elb>,
    pub elb_api: QueryServer,
    pub timeline: Timeline,
    node: NodeAgent,
    /// The load balancer controller: the real one or its model.
    pub lbc: LoadBalancerController,
    pub dir: tempfile::TempDir,
    /// Which rig of this process this is (0 for the first): later rigs on the same control
    /// plane suffix their namespaces with it.
    index: usize,
}

static RIGS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One application behind the load balancer: Service, target group, TargetGroupBinding, listener.
pub struct App {
    pub namespace: String,
    pub name: String,
    pub arn: String,
    pub listener: Listener,
}

impl Rig {
    /// The rig on this process's control plane ([`crate::cluster::shared`], started on first
    /// use inside the rig's network namespace): its node agent, the TargetGroupBinding CRD, the
    /// load balancer and its controller, the timelines.
    pub async fn start(config: RigConfig) -> anyhow::Result<Self> {
        let plane = crate::cluster::shared()?;
        let client = plane.client().await?;
        let dir = tempfile::Builder::new().prefix("rig-").tempdir()?;
        let mut opts = NodeOpts {
            dir: Some(dir.path().to_path_buf()),
            ..NodeOpts::default()
        };
        if let Some(bin) = &config.readygate_bin {
            opts.readygate_bin = Some(bin.clone());
        }
        let node =
            NodeAgent::start_with(NodeAgent::client(plane, NODE_NAME).await?, NODE_NAME, opts)
                .await?;
        let crds = crate::k8s::aws_lbc::install_crds(&client).await?;
        println!("TargetGroupBinding CRD: {crds}");
        let elb = Elb::new(config.elb.clone());
        // On the node address, which pods reach from their own network namespaces.
        let elb_api = QueryServer::start(
            elb.clone(),
            std::net::SocketAddr::new(crate::netns::NODE_IP.into(), 0),
        )
        .await?;
        let timeline = Timeline::start(client.clone(), &elb).await?;
        let identity =
            crate::k8s::aws_lbc::install_aws_lbc_identity(plane, &client, dir.path()).await?;
        let lbc = match config.lbc.resolve()? {
            None => {
                // A real controller an earlier rig of this process ran leaves webhooks that
                // would refuse every binding without it.
                crate::aws_lbc::unregister_webhooks(&client).await?;
                LoadBalancerController::Model(
                    Lbc::start(
                        identity.client,
                        elb.clone(),
                        LbcConfig {
                            reaction: config.lbc_reaction,
                            requeue: config.lbc_requeue,
                            ..LbcConfig::default()
                        },
                    )
                    .await?,
                )
            }
            Some(bin) => {
                // Beside the control plane's logs, which outlive the rig.
                let lbc_dir = plane.dir.join(format!(
                    "aws-load-balancer-controller-{}",
                    RIGS.load(std::sync::atomic::Ordering::Relaxed)
                ));
                let mut opts = AwsLbcOpts::new(
                    bin,
                    identity.kubeconfig_path.clone(),
                    elb_api.url(),
                    lbc_dir,
                );
                opts.pod_webhook = config.aws_lbc_pod_webhook;
                // The rig's clock, whichever controller plays the part.
                opts.requeue = Some(config.lbc_requeue);
                LoadBalancerController::Real(Box::new(AwsLbc::start(&client, opts).await?))
            }
        };
        Ok(Self {
            config,
            plane,
            client,
            elb,
            elb_api,
            timeline,
            node,
            lbc,
            dir,
            index: RIGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// The rig's node agent (the kubelet of node [`NODE_NAME`]).
    pub fn node(&self) -> &NodeAgent {
        &self.node
    }

    /// This rig's name for namespace `base`: `base` itself for the first rig of the process,
    /// `base-N` for later ones (they share the control plane; a namespace takes a while to go).
    pub fn ns(&self, base: &str) -> String {
        if self.index == 0 {
            base.to_string()
        } else {
            format!("{base}-{}", self.index)
        }
    }

    /// Creates `obj` (a kind the API server knows) in namespace `ns` (ignored for cluster-scoped
    /// kinds).
    pub async fn create(&self, obj: Value, ns: &str) -> anyhow::Result<()> {
        crate::k8s::install::create(&self.client, &obj, ns).await
    }

    pub async fn namespace(&self, name: &str, gated: bool) -> anyhow::Result<()> {
        self.annotated_namespace(name, gated, json!({})).await
    }

    /// A namespace with the gate label (when `gated`) and these annotations; returns once its
    /// `default` ServiceAccount exists (pods cannot be created before).
    pub async fn annotated_namespace(
        &self,
        name: &str,
        gated: bool,
        annotations: Value,
    ) -> anyhow::Result<()> {
        let labels = if gated {
            json!({GATE_LABEL: "enabled"})
        } else {
            json!({})
        };
        self.create(
            json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "labels": labels, "annotations": annotations}}),
            "",
        )
        .await?;
        crate::k8s::install::wait_default_service_account(&self.client, name).await
    }

    /// Creates the application `name` in `namespace`: a Service selecting `app: name` with port
    /// 80 → targetPort `http`, a target group with the rig's health check settings, an IP-mode
    /// TargetGroupBinding, and a listener in front of the group.
    pub async fn app(&self, namespace: &str, name: &str) -> anyhow::Result<App> {
        self.create(
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
                "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}}),
            namespace,
        )
        .await?;
        let mut spec = GroupSpec::new(&format!("{namespace}-{name}"), APP_PORT);
        spec.interval = self.config.interval;
        spec.timeout = self.config.interval.min(Duration::from_secs(5));
        spec.healthy_threshold = self.config.healthy_threshold;
        spec.unhealthy_threshold = self.config.unhealthy_threshold;
        spec.health_check_path = LB_HEALTH_PATH.into();
        spec.deregistration_delay = self.config.deregistration_delay;
        let arn = self
            .elb
            .create_target_group(spec)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        self.create(
            json!({"apiVersion": "elbv2.k8s.aws/v1beta1", "kind": "TargetGroupBinding", "metadata": {"name": name},
                "spec": {"targetGroupARN": arn, "targetType": "ip", "serviceRef": {"name": name, "port": 80}}}),
            namespace,
        )
        .await?;
        let listener = Listener::start(
            self.elb.clone(),
            &format!("{namespace}-{name}"),
            &arn,
            "127.0.0.1:0".parse()?,
        )
        .await?;
        Ok(App {
            namespace: namespace.into(),
            name: name.into(),
            arn,
            listener,
        })
    }

    /// The pods of namespace `ns` matching `labels` (a label selector), as JSON.
    pub async fn pods(&self, ns: &str, labels: &str) -> anyhow::Result<Vec<Value>> {
        let api: kube::Api<k8s_openapi::api::core::v1::Pod> =
            kube::Api::namespaced(self.client.clone(), ns);
        let list = api
            .list(&kube::api::ListParams::default().labels(labels))
            .await?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|p| serde_json::to_value(p).ok())
            .collect())
    }
}

/// The demo workload: `replicas` pods of a server that listens `start_delay` after its start and
/// has a readiness probe (every 100 ms: time compressed like the health checks); rolled one pod
/// at a time (maxSurge 1, maxUnavailable 0: Kubernetes' defaults for 3 replicas). As most
/// applications, it has no preStop hook and the default 30 s grace period, unless the caller
/// gives it a preStop sleep of its own.
pub fn web_deployment(
    app: &App,
    replicas: usize,
    start_delay: Duration,
    pre_stop_secs: Option<u64>,
) -> Deployment {
    let mut container = json!({
        "name": "web", "image": "rig/web:1",
        "ports": [{"name": "http", "containerPort": APP_PORT}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1}
    });
    let mut spec = json!({});
    if let Some(secs) = pre_stop_secs {
        container["lifecycle"] = json!({"preStop": {"sleep": {"seconds": secs}}});
        spec["terminationGracePeriodSeconds"] = json!(secs + 30);
    }
    spec["containers"] = json!([container]);
    Deployment {
        name: app.name.clone(),
        namespace: app.namespace.clone(),
        replicas,
        max_surge: 1,
        max_unavailable: 0,
        template: json!({
            "metadata": {"labels": {"app": app.name}, "annotations": {
                START_DELAY_ANNOTATION: start_delay.as_millis().to_string(),
                PROBE_PERIOD_ANNOTATION: "100"
            }},
            "spec": spec
        }),
    }
}

/// The readygate service the webhook configuration names (`clientConfig.service`).
pub fn webhook_service(manifests: &Path) -> anyhow::Result<(String, String)> {
    let path = manifests.join("base/mutatingwebhookconfiguration.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let doc = crate::k8s::install::documents(&text)?
        .into_iter()
        .find(|d| d["kind"] == "MutatingWebhookConfiguration")
        .with_context(|| format!("{} holds no MutatingWebhookConfiguration", path.display()))?;
    let svc = doc
        .pointer("/webhooks/0/clientConfig/service")
        .context("the webhook has no clientConfig.service")?;
    let s = |k: &str| svc[k].as_str().unwrap_or_default().to_string();
    Ok((s("name"), s("namespace")))
}
