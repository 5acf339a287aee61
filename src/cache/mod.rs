//! Watches TargetGroupBindings, Services, Namespaces and (on the leader only) Pods and keeps the
//! `Index` current.
//!
//! A thin shell, one room per concern: `watch` drives kube-runtime watchers (and asks discovery
//! before a 404 may drop the bindings), `feed` folds their events into the index (re-lists in
//! place), `kinds` strips each API kind to its domain type, `pod_view` and `service_view` decode
//! pods, Services and bindings through slim types so 10,000 of them cost little memory.
//!
//! Every replica watches bindings, Services and Namespaces: the webhook needs nothing else.
//! Only the controller reads pods, and only while it leads, so pods are watched only then
//! (`watch_pods_while_leading`), and only the pods the controller can act on are kept: those
//! that carry one of our gates or live in an opted-in namespace. A webhook-only replica and a
//! follower hold no pods at all; memory follows the gated pods, not the cluster.

mod feed;
mod kinds;
mod pod_view;
mod service_view;
mod watch;

use watch::{drive, drive_bindings, drive_pods_while_leading};

pub use watch::KEEP_PODS_AFTER_LEADING;

pub use feed::Feed;
pub use kinds::Cached;
pub(crate) use pod_view::view_resource;
pub use pod_view::{
    WatchedCondition, WatchedContainer, WatchedGate, WatchedPod, WatchedPodIp, WatchedPodSpec,
    WatchedPodStatus, WatchedPort, pod_view,
};
pub use service_view::{WatchedBinding, WatchedService, WatchedServicePort, WatchedServiceSpec};

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, Client};
use tokio::sync::{Notify, watch as signal};
use tokio::task::JoinHandle;

use crate::index::Index;
use crate::metrics::Metrics;

/// The index and a signal that it changed, shared by the webhook and the controller.
#[derive(Default)]
pub struct Cache {
    index: RwLock<Index>,
    changed: Notify,
    /// The namespace settings changed (the leader's pod watch waits on it).
    namespaces_changed: Notify,
}

impl Cache {
    pub fn read(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }
    pub fn write(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }
    /// Resolves after the index changed (at most one wake-up is remembered).
    pub async fn changed(&self) {
        self.changed.notified().await
    }
    pub fn notify(&self) {
        self.changed.notify_one();
    }
    fn notify_namespaces(&self) {
        self.namespaces_changed.notify_one();
    }
    /// Resolves after the namespace settings changed (at most one wake-up is remembered).
    async fn namespaces_changed(&self) {
        self.namespaces_changed.notified().await
    }
    /// Drops every pod, marks pods not listed, and hands the memory back to the system.
    fn forget_pods(&self) {
        let held = {
            let mut ix = self.write();
            let held = ix.counts().2;
            ix.forget_pods();
            held
        };
        feed::release_free_memory();
        tracing::info!(
            pods = held,
            "pods forgotten: this replica no longer watches them"
        );
        self.notify();
    }
}

/// How long the TargetGroupBinding CRD must be confirmed absent before its bindings are dropped.
pub const DEFAULT_CRD_MISSING_GRACE: Duration = Duration::from_secs(120);

/// Starts the watchers of bindings, Services and Namespaces (what the webhook needs; pods are
/// the leader's: `watch_pods_while_leading`); they run until the process ends.
/// `crd_missing_grace`: see `crd_presence`.
pub fn spawn_watchers(
    client: Client,
    cache: Arc<Cache>,
    metrics: Arc<Metrics>,
    crd_missing_grace: Duration,
) {
    tokio::spawn(drive_bindings(
        client.clone(),
        cache.clone(),
        metrics,
        crd_missing_grace,
    ));
    tokio::spawn(drive::<WatchedService>(
        Api::all(client.clone()),
        cache.clone(),
    ));
    tokio::spawn(drive::<Namespace>(Api::all(client), cache));
}

/// Watches pods while `leading` says so, once the Namespaces are listed (a pod of an opted-in
/// namespace not known yet would be dropped); lists them again when a namespace opts in (its
/// pods were not kept); forgets them all when `leading` turns false.
pub fn watch_pods_while_leading(
    client: Client,
    cache: Arc<Cache>,
    leading: signal::Receiver<bool>,
) -> PodWatch {
    let task = tokio::spawn(drive_pods_while_leading(
        Api::all(client),
        cache.clone(),
        leading,
    ));
    PodWatch { task, cache }
}

/// The leader's pod watch, running in the background.
pub struct PodWatch {
    task: JoinHandle<()>,
    cache: Arc<Cache>,
}

impl PodWatch {
    /// Stops watching (which drops its clone of `leading`) and forgets every pod.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
        self.cache.forget_pods();
    }
}

#[cfg(test)]
mod tests;
