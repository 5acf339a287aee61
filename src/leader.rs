//! Leader election over a coordination.k8s.io Lease: only the leader writes pod status.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kube::Client;
use kube_lease_manager::{LeaseCreateMode, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;

/// Lease duration and the margin before expiry at which the holder renews, in seconds.
const LEASE_SECONDS: u64 = 15;
const GRACE_SECONDS: u64 = 5;

/// This replica's place in the election.
pub struct Leadership {
    /// Whether this replica leads right now.
    pub leading: watch::Receiver<bool>,
    manager:
        JoinHandle<Result<kube_lease_manager::LeaseManager, kube_lease_manager::LeaseManagerError>>,
    reporter: JoinHandle<()>,
}

impl Leadership {
    /// Gives the lease up so another replica takes over at once rather than after it expires.
    /// Every other clone of `leading` must be dropped first.
    pub async fn release(self, within: Duration) {
        self.reporter.abort();
        let _ = self.reporter.await;
        drop(self.leading);
        match tokio::time::timeout(within, self.manager).await {
            Ok(Ok(Ok(_))) => tracing::info!("leader lease released"),
            Ok(Ok(Err(e))) => {
                tracing::warn!(error = %e, "leader lease not released; it will expire")
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "lease manager failed"),
            Err(_) => tracing::warn!("leader lease not released in time; it will expire"),
        }
    }
}

/// Joins the election. The lease is released when every receiver of `leading` is dropped.
pub async fn elect(
    client: Client,
    lease: &str,
    namespace: &str,
    identity: &str,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Leadership> {
    let manager = LeaseManagerBuilder::new(client, lease)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_create_mode(LeaseCreateMode::AutoCreate)
        .with_duration(LEASE_SECONDS)
        .with_grace(GRACE_SECONDS)
        .build()
        .await
        .with_context(|| format!("setting up leader election on Lease {namespace}/{lease}"))?;
    let (rx, manager) = manager.watch().await;
    let mut observer = rx.clone();
    let identity = identity.to_string();
    let reporter = tokio::spawn(async move {
        loop {
            let leading = *observer.borrow_and_update();
            metrics.is_leader.set(i64::from(leading));
            tracing::info!(identity = %identity, leading, "leadership changed");
            if observer.changed().await.is_err() {
                return;
            }
        }
    });
    Ok(Leadership {
        leading: rx,
        manager,
        reporter,
    })
}
