//! Leader election over a coordination.k8s.io Lease: only the leader writes pod status.

use std::sync::Arc;

use anyhow::Context;
use kube::Client;
use kube_lease_manager::{LeaseCreateMode, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;

/// Lease duration and the margin before expiry at which the holder renews, in seconds.
const LEASE_SECONDS: u64 = 15;
const GRACE_SECONDS: u64 = 5;

/// Joins the election; the receiver says whether this replica leads right now. The lease is
/// released when every receiver is dropped.
pub async fn elect(
    client: Client,
    lease: &str,
    namespace: &str,
    identity: &str,
    metrics: Arc<Metrics>,
) -> anyhow::Result<(watch::Receiver<bool>, JoinHandle<()>)> {
    let manager = LeaseManagerBuilder::new(client, lease)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_create_mode(LeaseCreateMode::AutoCreate)
        .with_duration(LEASE_SECONDS)
        .with_grace(GRACE_SECONDS)
        .build()
        .await
        .with_context(|| format!("setting up leader election on Lease {namespace}/{lease}"))?;
    let (rx, _task) = manager.watch().await;
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
    Ok((rx, reporter))
}
