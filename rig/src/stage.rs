//! A rig with the real readygate running against it: certificates for the webhook service the
//! project's manifests name, the webhook configuration installed, one or more readygate
//! replicas started with the rig's kubeconfig and ELBv2 endpoint and put behind the webhook
//! Service as the endpoints controller would: in when ready, out a moment after they start
//! terminating.

use crate::apiserver::admission::{Admission, find_webhook_configuration};
use crate::apiserver::resources;
use crate::apiserver::selector::{FieldSelector, LabelSelector};
use crate::apiserver::store::{PatchKind, Subresource, WriteOpts, str_at};
use crate::certs::Certs;
use crate::readygate::{Readygate, ReadygateOpts, free_addr};
use crate::rig::{Rig, RigConfig, webhook_service};
use base64::Engine;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Mutex;

/// How long a terminating replica stays an endpoint of the webhook Service (the endpoints
/// controller and the API server's endpoint view lag behind a pod's deletion by about that).
pub const ENDPOINT_LAG: Duration = Duration::from_secs(1);

/// The lease readygate's replicas compete for (its `--lease-name` default).
pub const LEASE_NAME: &str = "readygate";

pub struct Stage {
    pub rig: Rig,
    /// The running replicas, oldest first. Shared so that a scenario can restart, replace or
    /// kill one mid-rollout.
    pub replicas: Arc<Mutex<Vec<Readygate>>>,
    pub admission: Arc<Admission>,
    /// The webhook Service: name and namespace (readygate's namespace, holding its Lease).
    pub service: (String, String),
    template: ReadygateOpts,
    started: AtomicUsize,
    /// readygate's MutatingWebhookConfiguration as the manifests have it, with the rig's CA.
    webhook_configuration: Value,
    /// `install_objects` was called: replica changes also update their Pods and EndpointSlices.
    objects: AtomicBool,
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

    /// The rig with `replicas` readygate replicas behind the webhook Service.
    pub async fn start_replicas(
        bin: &Path,
        manifests: &Path,
        readygate_args: &[String],
        replicas: usize,
    ) -> anyhow::Result<Self> {
        let rig = Rig::start(RigConfig::default()).await?;
        let (service, service_ns) = webhook_service(manifests)?;
        let certs = Certs::for_service(&service, &service_ns)?;
        let paths = certs.write(&rig.dir.path().join("certs"))?;
        let template = ReadygateOpts {
            bin: bin.to_path_buf(),
            kubeconfig: rig.kubeconfig_path(),
            cert: paths.cert,
            key: paths.key,
            elb_url: rig.elb_api.url(),
            lease_namespace: service_ns.clone(),
            identity: String::new(),
            webhook_addr: free_addr(),
            admin_addr: free_addr(),
            log: rig.dir.path().join("readygate.log"),
            extra_args: readygate_args.to_vec(),
        };
        let admission = rig.install_webhook(manifests, template.webhook_addr, &certs.ca_pem)?;
        let mut webhook_configuration = find_webhook_configuration(manifests)?;
        let ca_bundle = base64::engine::general_purpose::STANDARD.encode(&certs.ca_pem);
        for w in webhook_configuration["webhooks"]
            .as_array_mut()
            .into_iter()
            .flatten()
        {
            w["clientConfig"]["caBundle"] = json!(ca_bundle);
        }
        admission.set_endpoints(&service_ns, &service, vec![]);
        // readygate's own namespace holds its Lease.
        rig.namespace(&service_ns, false).await?;
        let stage = Self {
            rig,
            replicas: Arc::new(Mutex::new(Vec::new())),
            admission,
            service: (service, service_ns),
            template,
            started: AtomicUsize::new(0),
            webhook_configuration,
            objects: AtomicBool::new(false),
        };
        for _ in 0..replicas {
            stage.add_replica().await?;
        }
        Ok(stage)
    }

    /// Options of the next replica: its own identity, ports and log (the first keeps the
    /// names a single-replica stage always had).
    fn next_opts(&self) -> ReadygateOpts {
        let i = self.started.fetch_add(1, Ordering::Relaxed);
        let mut o = self.template.clone();
        if i == 0 {
            o.identity = "rig-readygate".into();
        } else {
            o.identity = format!("rig-readygate-{i}");
            o.webhook_addr = free_addr();
            o.admin_addr = free_addr();
            o.log = self.rig.dir.path().join(format!("readygate-{i}.log"));
        }
        o
    }

    async fn publish_endpoints(&self, replicas: &[Readygate]) {
        let (name, ns) = &self.service;
        self.admission.set_endpoints(
            ns,
            name,
            replicas.iter().map(|r| r.opts.webhook_addr).collect(),
        );
        if self.objects.load(Ordering::SeqCst)
            && let Err(e) = self.sync_replica_objects(Some(replicas), replicas).await
        {
            tracing::error!(error = %e, "the rig could not update readygate's Pods and EndpointSlices");
        }
    }

    /// Creates the objects of a real installation that the rig does not need to run readygate,
    /// so that `readygate doctor` and `readygate status` find them: the TargetGroupBinding CRD,
    /// the MutatingWebhookConfiguration (caBundle: the rig's CA), the webhook Service, and per
    /// running replica a Pod (IP 127.0.0.1 with its webhook and admin ports; the kubelet leaves
    /// it alone, and the pod proxy reaches its admin port) and an EndpointSlice. From then on
    /// they follow the replicas. The rig's admission keeps calling the configuration it loaded
    /// at start: editing the stored copy changes what doctor reads, not admission.
    pub async fn install_objects(&self) -> anyhow::Result<()> {
        let store = &self.rig.store;
        let opts = WriteOpts::default();
        let tgb = resources::target_group_bindings();
        store
            .create(
                resources::custom_resource_definitions(),
                "",
                json!({"metadata": {"name": format!("{}.{}", tgb.plural, tgb.group)},
                    "spec": {"group": tgb.group, "scope": "Namespaced",
                        "names": {"kind": tgb.kind, "listKind": tgb.list_kind(), "plural": tgb.plural, "singular": tgb.singular},
                        "versions": [{"name": tgb.version, "served": true, "storage": true, "subresources": {"status": {}},
                            "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}}),
                &opts,
            )
            .await?;
        store
            .create(
                resources::mutating_webhook_configurations(),
                "",
                self.webhook_configuration.clone(),
                &opts,
            )
            .await?;
        let (name, ns) = &self.service;
        store
            .create(
                resources::services(),
                ns,
                json!({"metadata": {"name": name, "labels": {"app.kubernetes.io/name": "readygate"}},
                    "spec": {"type": "ClusterIP", "selector": {"app.kubernetes.io/name": "readygate"},
                        "ports": [{"name": "https", "port": 443, "targetPort": "webhook", "protocol": "TCP"}]}}),
                &opts,
            )
            .await?;
        self.objects.store(true, Ordering::SeqCst);
        let replicas = self.replicas.lock().await;
        self.sync_replica_objects(Some(&replicas), &replicas).await
    }

    /// One Pod per running replica (when `running` is known; those of replicas gone are
    /// deleted) and one EndpointSlice per replica in `endpoints`.
    async fn sync_replica_objects(
        &self,
        running: Option<&[Readygate]>,
        endpoints: &[Readygate],
    ) -> anyhow::Result<()> {
        let store = &self.rig.store;
        let opts = WriteOpts::default();
        let (service, ns) = &self.service;
        let selector = LabelSelector::parse(&format!("kubernetes.io/service-name={service}"))
            .map_err(anyhow::Error::msg)?;
        let (slices, _) = store.list(
            resources::endpoint_slices(),
            Some(ns),
            &selector,
            &FieldSelector::default(),
        );
        for s in slices {
            store.delete(
                resources::endpoint_slices(),
                ns,
                &str_at(&s, "/metadata/name"),
                None,
                None,
                false,
            )?;
        }
        if let Some(replicas) = running {
            self.sync_replica_pods(replicas).await?;
        }
        for r in endpoints {
            let o = &r.opts;
            store
                .create(
                    resources::endpoint_slices(),
                    ns,
                    json!({"metadata": {"name": format!("{service}-{}", o.identity),
                            "labels": {"kubernetes.io/service-name": service,
                                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
                        "addressType": "IPv4",
                        "endpoints": [{"addresses": [o.webhook_addr.ip().to_string()],
                            "conditions": {"ready": true, "serving": true, "terminating": false},
                            "targetRef": {"kind": "Pod", "namespace": ns, "name": o.identity}}],
                        "ports": [{"name": "https", "port": o.webhook_addr.port(), "protocol": "TCP"}]}),
                    &opts,
                )
                .await?;
        }
        Ok(())
    }

    async fn sync_replica_pods(&self, replicas: &[Readygate]) -> anyhow::Result<()> {
        let store = &self.rig.store;
        let opts = WriteOpts::default();
        let ns = &self.service.1;
        let (pods, _) = store.list(
            resources::pods(),
            Some(ns),
            &LabelSelector::default(),
            &FieldSelector::default(),
        );
        for p in pods {
            let pod = str_at(&p, "/metadata/name");
            let external = p
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(crate::kubelet::EXTERNAL_ANNOTATION))
                .is_some();
            if external && !replicas.iter().any(|r| r.opts.identity == pod) {
                store.delete(resources::pods(), ns, &pod, Some(0), None, false)?;
            }
        }
        for r in replicas {
            let o = &r.opts;
            if store.get(resources::pods(), ns, &o.identity).is_err() {
                store
                    .create(
                        resources::pods(),
                        ns,
                        json!({"metadata": {"name": o.identity, "labels": {"app.kubernetes.io/name": "readygate"},
                                "annotations": {crate::kubelet::EXTERNAL_ANNOTATION: "true"}},
                            "spec": {"containers": [{"name": "readygate", "image": "readygate:latest", "ports": [
                                {"name": "webhook", "containerPort": o.webhook_addr.port()},
                                {"name": "admin", "containerPort": o.admin_addr.port()}]}]}}),
                        &opts,
                    )
                    .await?;
                let ip = o.webhook_addr.ip().to_string();
                store.patch(
                    resources::pods(),
                    ns,
                    &o.identity,
                    PatchKind::Merge,
                    &json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                        "conditions": [{"type": "Ready", "status": "True"}]}}),
                    Subresource::Status,
                    &opts,
                )?;
            }
        }
        Ok(())
    }

    /// Takes every replica out of the webhook Service's endpoints (they keep running), as when
    /// their readiness fails.
    pub async fn drop_endpoints(&self) -> anyhow::Result<()> {
        let (name, ns) = &self.service;
        self.admission.set_endpoints(ns, name, vec![]);
        if self.objects.load(Ordering::SeqCst) {
            self.sync_replica_objects(None, &[]).await?;
        }
        Ok(())
    }

    /// Puts the running replicas back behind the webhook Service.
    pub async fn restore_endpoints(&self) -> anyhow::Result<()> {
        let replicas = self.replicas.lock().await;
        self.publish_endpoints(&replicas).await;
        Ok(())
    }

    /// Starts one more replica and adds it to the webhook Service once it is ready.
    pub async fn add_replica(&self) -> anyhow::Result<()> {
        let rg = Readygate::start(self.next_opts()).await?;
        let mut replicas = self.replicas.lock().await;
        replicas.push(rg);
        self.publish_endpoints(&replicas).await;
        Ok(())
    }

    /// Takes replica `index` out of the Service: signals it (`TERM`, or `KILL` as a crashed
    /// node would), drops its endpoint `ENDPOINT_LAG` later, and returns it (still running if
    /// it took SIGTERM).
    async fn take_out(&self, index: usize, signal: &str) -> Readygate {
        let rg = self.replicas.lock().await.remove(index);
        rg.signal(signal);
        tokio::time::sleep(ENDPOINT_LAG).await;
        let replicas = self.replicas.lock().await;
        self.publish_endpoints(&replicas).await;
        rg
    }

    /// Rolls replica `index` as a Deployment with maxSurge 1 would: a new replica first, then
    /// the old one is terminated (SIGTERM; its endpoint goes `ENDPOINT_LAG` later) and waited
    /// for.
    pub async fn replace(&self, index: usize) -> anyhow::Result<()> {
        self.add_replica().await?;
        let old = self.take_out(index, "TERM").await;
        old.wait_or_kill(Duration::from_secs(30)).await
    }

    /// Stops replica `index` and starts it again with the same options (and address).
    pub async fn restart(&self, index: usize) -> anyhow::Result<()> {
        let old = self.replicas.lock().await.remove(index);
        let opts = old.opts.clone();
        old.stop().await?;
        let rg = Readygate::start(opts).await?;
        let mut replicas = self.replicas.lock().await;
        replicas.insert(index, rg);
        self.publish_endpoints(&replicas).await;
        Ok(())
    }

    /// The identity holding readygate's Lease, if any.
    pub fn leader(&self) -> Option<String> {
        let lease = self
            .rig
            .store
            .get(
                resources::find("coordination.k8s.io", "v1", "leases")?,
                &self.service.1,
                LEASE_NAME,
            )
            .ok()?;
        Some(str_at(&lease, "/spec/holderIdentity")).filter(|h| !h.is_empty())
    }

    /// SIGKILLs the replica that holds the Lease (as a node that dies); returns its identity.
    pub async fn kill_leader(&self) -> anyhow::Result<String> {
        let leader = self
            .leader()
            .ok_or_else(|| anyhow::anyhow!("no replica holds the lease"))?;
        let index = self
            .replicas
            .lock()
            .await
            .iter()
            .position(|r| r.opts.identity == leader)
            .ok_or_else(|| anyhow::anyhow!("the leader {leader} is not a running replica"))?;
        let rg = self.take_out(index, "KILL").await;
        rg.wait_or_kill(Duration::from_secs(5)).await?;
        Ok(leader)
    }

    /// PIDs of the running replicas.
    pub async fn pids(&self) -> Vec<Option<u32>> {
        self.replicas.lock().await.iter().map(|r| r.pid()).collect()
    }

    pub fn log_path(&self) -> PathBuf {
        self.template.log.clone()
    }

    /// SIGTERM to every replica at once, then waits for each (killed after 30 s).
    pub async fn stop(&self) -> anyhow::Result<()> {
        let replicas: Vec<Readygate> = self.replicas.lock().await.drain(..).collect();
        for rg in &replicas {
            rg.signal("TERM");
        }
        for r in futures::future::join_all(
            replicas
                .into_iter()
                .map(|rg| rg.wait_or_kill(Duration::from_secs(30))),
        )
        .await
        {
            r?;
        }
        Ok(())
    }

    /// The last lines of every replica's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.rig.dir.path())
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
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {}\n", log.display()));
            out.push_str(&all[all.len().saturating_sub(lines)..].join("\n"));
            out.push('\n');
        }
        out
    }
}
