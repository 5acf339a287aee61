//! Leader election over a coordination.k8s.io Lease: only the leader writes pod status.
//!
//! kube-lease-manager holds and renews the lease. Its own watch loop keeps saying "leader"
//! while renewals fail, until the lease is lost to someone else; here a failed renewal stops
//! writes at once (the lease may expire before the API answers again, and another replica
//! take over), and the manager is rebuilt, which re-reads the lease and leads again if it is
//! still ours.

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseCreateMode, LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;

/// Where and as whom to take part.
#[derive(Clone, Debug)]
pub struct Election {
    pub lease: String,
    pub namespace: String,
    pub identity: String,
    /// Lease duration; the holder renews `grace` before it ends.
    pub duration: Duration,
    pub grace: Duration,
}

impl Election {
    pub fn new(lease: &str, namespace: &str, identity: &str) -> Self {
        Self {
            lease: lease.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            grace: Duration::from_secs(5),
        }
    }

    async fn manager(
        &self,
        client: Client,
    ) -> Result<LeaseManager, kube_lease_manager::LeaseManagerError> {
        LeaseManagerBuilder::new(client, &self.lease)
            .with_namespace(&self.namespace)
            .with_identity(&self.identity)
            .with_create_mode(LeaseCreateMode::AutoCreate)
            .with_duration(self.duration.as_secs())
            .with_grace(self.grace.as_secs())
            .build()
            .await
    }
}

/// This replica's place in the election.
pub struct Leadership {
    /// Whether this replica may write right now.
    pub leading: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl Leadership {
    /// Gives the lease up so another replica takes over at once rather than after it expires.
    /// Every other clone of `leading` must be dropped first.
    pub async fn release(self, within: Duration) {
        drop(self.leading);
        if tokio::time::timeout(within, self.task).await.is_err() {
            tracing::warn!("leader lease not released in time; it will expire");
        }
    }
}

/// Joins the election in the background.
pub fn elect(client: Client, election: Election, metrics: Arc<Metrics>) -> Leadership {
    let (tx, leading) = watch::channel(false);
    let task = tokio::spawn(async move {
        let set = |now: bool| {
            if tx.send_replace(now) != now {
                metrics.is_leader.set(i64::from(now));
                tracing::info!(identity = %election.identity, leading = now, "leadership changed");
            }
        };
        let mut retry =
            crate::budget::Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        loop {
            match election.manager(client.clone()).await {
                Ok(manager) => loop {
                    tokio::select! {
                        () = tx.closed() => {
                            if let Err(e) = manager.release().await {
                                tracing::warn!(error = %e, "leader lease not released; it will expire");
                            }
                            return;
                        }
                        changed = manager.changed() => match changed {
                            Ok(now) => {
                                retry.success();
                                set(now);
                            }
                            Err(e) => {
                                set(false);
                                tracing::warn!(error = %e, "lease not renewed: writes stop until it is ours again");
                                break;
                            }
                        }
                    }
                },
                Err(e) => tracing::warn!(error = %e, "leader election cannot start yet"),
            }
            tokio::select! {
                () = tx.closed() => return,
                () = tokio::time::sleep(retry.failure(rand::random())) => {}
            }
        }
    });
    Leadership { leading, task }
}
