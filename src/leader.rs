//! Leader election over a coordination.k8s.io Lease: only the leader writes pod status.
//!
//! kube-lease-manager holds and renews the lease. Its own watch loop keeps saying "leader"
//! while renewals fail, until the lease is lost to someone else; here a failed renewal stops
//! writes at once (the lease may expire before the API answers again, and another replica
//! take over), and the manager is rebuilt, which re-reads the lease and leads again if it is
//! still ours.
//!
//! A renewal can also hang rather than fail, and the manager reports nothing while it does.
//! So every successful write of the Lease is observed on the way back from the API server, and
//! writes stop when none succeeded within the renew deadline (shorter than the lease), whatever
//! the renewal call is doing; the hung call is dropped with the manager.

use std::sync::Arc;
use std::time::Duration;

use hyper::{Method, Request, Response};
use kube::Client;
use kube::client::Body;
use kube_lease_manager::{LeaseCreateMode, LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

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
    /// Writes stop when no renewal succeeded for this long: shorter than `duration`, so they
    /// stop before the lease can pass to another replica, and longer than `duration - grace`,
    /// so a renewal is tried (twice with the defaults) before it passes.
    pub renew_deadline: Duration,
}

impl Election {
    pub fn new(lease: &str, namespace: &str, identity: &str) -> Self {
        Self {
            lease: lease.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            // As client-go's defaults: a 15 s lease, renewed every 5 s, writes stop after 10 s
            // without a successful renewal.
            duration: Duration::from_secs(15),
            grace: Duration::from_secs(10),
            renew_deadline: Duration::from_secs(10),
        }
    }

    /// The path of the Lease object: a successful PATCH there is a renewal (or the take-over).
    fn lease_path(&self) -> String {
        format!(
            "/apis/coordination.k8s.io/v1/namespaces/{}/leases/{}",
            self.namespace, self.lease
        )
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

/// `client`, telling `renewed` when a PATCH of the Lease at `path` succeeds: the time it was
/// sent, as the renewTime it wrote (and so the lease's expiry) is no later than that.
fn observing_renewals(client: Client, path: String, renewed: watch::Sender<Instant>) -> Client {
    let namespace = client.default_namespace().to_string();
    let renewed = Arc::new(renewed);
    let service = tower::service_fn(move |req: Request<Body>| {
        let (client, renewed) = (client.clone(), renewed.clone());
        let lease_write = req.method() == Method::PATCH && req.uri().path() == path;
        let sent = Instant::now();
        async move {
            let res: Response<Body> = client.send(req).await?;
            if lease_write && res.status().is_success() {
                renewed.send_modify(|last| *last = (*last).max(sent));
            }
            Ok::<_, kube::Error>(res)
        }
    });
    Client::new(service, namespace)
}

/// Resolves once `deadline` has passed since the last successful renewal.
async fn renew_deadline_passed(renewed: &mut watch::Receiver<Instant>, deadline: Duration) {
    loop {
        let last = *renewed.borrow_and_update();
        tokio::select! {
            () = tokio::time::sleep_until(last + deadline) => return,
            r = renewed.changed() => if r.is_err() {
                return std::future::pending().await;
            },
        }
    }
}

/// Joins the election in the background.
pub fn elect(client: Client, election: Election, metrics: Arc<Metrics>) -> Leadership {
    let (tx, leading) = watch::channel(false);
    let (renewed_tx, renewed) = watch::channel(Instant::now());
    let client = observing_renewals(client, election.lease_path(), renewed_tx);
    let task = tokio::spawn(async move {
        let set = |now: bool| {
            if tx.send_replace(now) != now {
                metrics.is_leader.set(i64::from(now));
                tracing::info!(identity = %election.identity, leading = now, "leadership changed");
            }
        };
        let (mut deadline_rx, mut confirm_rx) = (renewed.clone(), renewed);
        let mut retry =
            crate::budget::Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        loop {
            let built = Instant::now();
            match election.manager(client.clone()).await {
                Ok(manager) => {
                    // Kept across turns of the loop: dropping it mid-renewal would lose the
                    // manager's bookkeeping.
                    let mut changed = Box::pin(manager.changed());
                    // The manager says "leader" for a Lease it finds still ours, before it has
                    // renewed it: writes wait for that renewal, so the deadline holds from it.
                    let mut unconfirmed = false;
                    loop {
                        tokio::select! {
                            () = tx.closed() => {
                                drop(changed);
                                if let Err(e) = manager.release().await {
                                    tracing::warn!(error = %e, "leader lease not released; it will expire");
                                }
                                return;
                            }
                            r = &mut changed => {
                                changed = Box::pin(manager.changed());
                                match r {
                                    Ok(now) => {
                                        retry.success();
                                        unconfirmed = now && *confirm_rx.borrow() < built;
                                        set(now && !unconfirmed);
                                    }
                                    Err(e) => {
                                        set(false);
                                        tracing::warn!(error = %e, "lease not renewed: writes stop until it is ours again");
                                        break;
                                    }
                                }
                            }
                            ok = async { confirm_rx.wait_for(|t| *t >= built).await.is_ok() }, if unconfirmed => {
                                unconfirmed = false;
                                set(ok);
                            }
                            // Only while leading: becoming leader was itself a successful write.
                            () = renew_deadline_passed(&mut deadline_rx, election.renew_deadline), if *tx.borrow() => {
                                set(false);
                                tracing::warn!(
                                    deadline = ?election.renew_deadline,
                                    "no lease renewal succeeded within the renew deadline: writes stop until it is ours again"
                                );
                                // Dropping the manager drops the hung call with it.
                                break;
                            }
                        }
                    }
                }
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
