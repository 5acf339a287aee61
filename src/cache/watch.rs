//! The watchers: one kube-runtime watcher per kind, feeding the index; the binding watcher asks
//! discovery before a 404 may drop what it knows; the pod watcher runs only while this replica
//! leads.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use kube::{Api, Client, Resource};

use super::{Cache, Cached, Feed, WatchedBinding, WatchedPod};
use crate::crd::TargetGroupBinding;
use crate::crd_presence::Discovery;
use crate::index::Kind;
use crate::metrics::Metrics;

pub(super) async fn drive<K: Cached>(api: Api<K>, cache: Arc<Cache>) {
    let mut feed = Feed::<K>::new(cache);
    let config = watcher::Config::default().page_size(K::PAGE_SIZE);
    let mut stream = std::pin::pin!(watcher::watcher(api, config).default_backoff());
    while let Some(event) = stream.next().await {
        match event {
            Ok(e) => feed.event(e),
            Err(e) => {
                tracing::warn!(kind = ?K::KIND, error = %e, "watch failed; retrying with backoff")
            }
        }
    }
}

/// The binding watcher: like `drive`, but a 404 is checked against discovery before anything
/// is dropped (see `crd_presence`).
pub(super) async fn drive_bindings(
    client: Client,
    cache: Arc<Cache>,
    metrics: Arc<Metrics>,
    grace: Duration,
) {
    let mut feed = Feed::<WatchedBinding>::new(cache.clone()).crd_missing_grace(grace);
    let clock = Clock::new();
    let config = watcher::Config::default().page_size(WatchedBinding::PAGE_SIZE);
    let api = Api::<WatchedBinding>::all(client.clone());
    let mut stream = std::pin::pin!(watcher::watcher(api, config).default_backoff());
    while let Some(event) = stream.next().await {
        match event {
            Ok(e) => feed.event(e),
            Err(e) if is_not_found(&e) => {
                metrics.binding_watch_not_found.inc();
                let discovery = discover_bindings(&client).await;
                feed.not_found(clock.now_ms(), &discovery);
            }
            Err(e) => {
                tracing::warn!(kind = ?Kind::Binding, error = %e, "watch failed; retrying with backoff")
            }
        }
        let ix = cache.read();
        metrics
            .bindings_crd_state
            .set(match (ix.bindings_crd_missing, &ix.bindings_warning) {
                (true, _) => 2,
                (false, Some(_)) => 1,
                (false, None) => 0,
            });
    }
}

/// Wall-clock milliseconds that advance with tokio's clock (so paused-time tests can pass the
/// grace period).
struct Clock {
    start: tokio::time::Instant,
    start_ms: i64,
}

impl Clock {
    fn new() -> Self {
        Self {
            start: tokio::time::Instant::now(),
            start_ms: jiff::Timestamp::now().as_millisecond(),
        }
    }
    fn now_ms(&self) -> i64 {
        self.start_ms + self.start.elapsed().as_millis() as i64
    }
}

/// Whether the API server's discovery serves elbv2.k8s.aws/v1beta1 targetgroupbindings.
async fn discover_bindings(client: &Client) -> Discovery {
    let version = format!(
        "{}/{}",
        TargetGroupBinding::group(&()),
        TargetGroupBinding::version(&())
    );
    let plural = TargetGroupBinding::plural(&());
    match client.list_api_group_resources(&version).await {
        Ok(list) if list.resources.iter().any(|r| r.name == plural) => Discovery::Present,
        Ok(_) => Discovery::Absent,
        Err(kube::Error::Api(s)) if s.code == 404 => Discovery::Absent,
        Err(e) => Discovery::Unknown(e.to_string()),
    }
}

fn is_not_found(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s.code == 404,
        _ => false,
    }
}

/// How long pods stay watched after leadership is lost: a renewal blip (the API server
/// unreachable past the renew deadline) hands leadership back within a lease or two, and
/// forgetting every pod then would cost a list of every pod in the cluster at the moment the API
/// server recovers.
pub const KEEP_PODS_AFTER_LEADING: Duration = Duration::from_secs(30);

/// The leader's pod watcher (`watch_pods_while_leading`): runs while `leading` holds, and
/// forgets every pod once it has not held for `KEEP_PODS_AFTER_LEADING`.
pub(super) async fn drive_pods_while_leading(
    api: Api<WatchedPod>,
    cache: Arc<Cache>,
    mut leading: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        if leading.wait_for(|l| *l).await.is_err() {
            return;
        }
        let watch = drive_pods(api.clone(), &cache);
        let mut watch = std::pin::pin!(watch);
        loop {
            // Leading: watch until that ends.
            let open = tokio::select! {
                () = &mut watch => unreachable!("the pod watch never ends"),
                r = leading.wait_for(|l| !*l) => r.is_ok(),
            };
            if !open {
                cache.forget_pods();
                return;
            }
            // Not leading: go on watching a while, in case leadership comes back.
            let back = tokio::time::timeout(KEEP_PODS_AFTER_LEADING, async {
                tokio::select! {
                    () = &mut watch => unreachable!("the pod watch never ends"),
                    r = leading.wait_for(|l| *l) => r.is_ok(),
                }
            })
            .await;
            match back {
                Ok(true) => {
                    tracing::info!(
                        "leading again within the grace: the pods watched meanwhile are current"
                    );
                    continue;
                }
                Ok(false) => {
                    cache.forget_pods();
                    return;
                }
                Err(_) => {
                    cache.forget_pods();
                    break;
                }
            }
        }
    }
}

/// Watches pods once the Namespaces are listed, and starts over (a re-list, applied in place)
/// when a namespace opts in: its pods were not kept until then. Never returns.
async fn drive_pods(api: Api<WatchedPod>, cache: &Arc<Cache>) {
    loop {
        // Namespaces first: the pods of an opted-in namespace not known yet would be dropped.
        let opt_ins = loop {
            if let Some(n) = {
                let ix = cache.read();
                ix.synced().namespaces.then(|| ix.opt_ins())
            } {
                break n;
            }
            cache.namespaces_changed().await;
        };
        let mut feed = Feed::<WatchedPod>::new(cache.clone());
        let config = watcher::Config::default().page_size(WatchedPod::PAGE_SIZE);
        let mut stream = std::pin::pin!(watcher::watcher(api.clone(), config).default_backoff());
        loop {
            tokio::select! {
                event = stream.next() => match event {
                    Some(Ok(e)) => feed.event(e),
                    Some(Err(e)) => {
                        tracing::warn!(kind = ?Kind::Pod, error = %e, "watch failed; retrying with backoff")
                    }
                    None => break,
                },
                () = cache.namespaces_changed() => {
                    let now = cache.read().opt_ins();
                    if now != opt_ins {
                        tracing::info!("a namespace opted in: listing the pods again to take in its pods");
                        break;
                    }
                }
            }
        }
    }
}
