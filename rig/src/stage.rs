//! A rig with the real readygate running against it: certificates for the webhook service the
//! project's manifests name, the webhook configuration installed, readygate started with the
//! rig's kubeconfig and ELBv2 endpoint.

use crate::certs::Certs;
use crate::readygate::{Readygate, ReadygateOpts, free_addr};
use crate::rig::{Rig, RigConfig, webhook_service};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::Mutex;

pub struct Stage {
    pub rig: Rig,
    /// Shared so that a scenario can restart it mid-rollout.
    pub readygate: Arc<Mutex<Option<Readygate>>>,
    pub admission: Arc<crate::apiserver::admission::Admission>,
}

impl Stage {
    pub async fn start(
        bin: &Path,
        manifests: &Path,
        readygate_args: &[String],
    ) -> anyhow::Result<Self> {
        let rig = Rig::start(RigConfig::default()).await?;
        let (service, service_ns) = webhook_service(manifests)?;
        let certs = Certs::for_service(&service, &service_ns)?;
        let paths = certs.write(&rig.dir.path().join("certs"))?;
        let webhook_addr = free_addr();
        let admission = rig.install_webhook(manifests, webhook_addr, &certs.ca_pem)?;
        // readygate's own namespace holds its Lease.
        rig.namespace(&service_ns, false).await?;
        let opts = ReadygateOpts {
            bin: bin.to_path_buf(),
            kubeconfig: rig.kubeconfig_path(),
            cert: paths.cert,
            key: paths.key,
            elb_url: rig.elb_api.url(),
            lease_namespace: service_ns,
            identity: "rig-readygate".into(),
            webhook_addr,
            admin_addr: free_addr(),
            log: rig.dir.path().join("readygate.log"),
            extra_args: readygate_args.to_vec(),
        };
        let readygate = Readygate::start(opts).await?;
        Ok(Self {
            rig,
            readygate: Arc::new(Mutex::new(Some(readygate))),
            admission,
        })
    }

    pub fn log_path(&self) -> PathBuf {
        self.rig.dir.path().join("readygate.log")
    }

    pub async fn stop(&self) -> anyhow::Result<()> {
        if let Some(rg) = self.readygate.lock().await.take() {
            rg.stop().await?;
        }
        Ok(())
    }

    /// The last lines of readygate's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}
