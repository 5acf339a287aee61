//! Watches TargetGroupBindings, Services, Pods and Namespaces and keeps the `Index` current.
//!
//! A thin shell, one room per concern: `watch` drives kube-runtime watchers (and asks discovery
//! before a 404 may drop the bindings), `feed` folds their events into the index (re-lists in
//! place), `kinds` strips each API kind to its domain type, `pod_view` decodes pods through a
//! slim type so 10,000 pods cost little memory.

mod feed;
mod kinds;
mod pod_view;
mod watch;

use watch::{drive, drive_bindings};

pub use feed::Feed;
pub use kinds::Cached;
pub(crate) use pod_view::pod_resource;
pub use pod_view::{
    WatchedCondition, WatchedContainer, WatchedGate, WatchedPod, WatchedPodIp, WatchedPodSpec,
    WatchedPodStatus, WatchedPort, pod_view,
};

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::{Api, Client};
use tokio::sync::Notify;

use crate::index::Index;
use crate::metrics::Metrics;

/// The index and a signal that it changed, shared by the webhook and the controller.
#[derive(Default)]
pub struct Cache {
    index: RwLock<Index>,
    changed: Notify,
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
}

/// How long the TargetGroupBinding CRD must be confirmed absent before its bindings are dropped.
pub const DEFAULT_CRD_MISSING_GRACE: Duration = Duration::from_secs(120);

/// Starts the four watchers; they run until the process ends. `crd_missing_grace`: see
/// `crd_presence`.
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
    tokio::spawn(drive::<Service>(Api::all(client.clone()), cache.clone()));
    tokio::spawn(drive::<WatchedPod>(Api::all(client.clone()), cache.clone()));
    tokio::spawn(drive::<Namespace>(Api::all(client), cache));
}

#[cfg(test)]
mod tests;
