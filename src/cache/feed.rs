//! Folds one kind's watch events into the index: a re-list applied in place, objects it did
//! not see dropped at its end.

use std::sync::Arc;
use std::time::Duration;

use std::collections::HashSet;

use kube::ResourceExt;
use kube::runtime::watcher::Event;

use super::{Cache, Cached, DEFAULT_CRD_MISSING_GRACE};
use crate::crd_presence::{CrdPresence, Discovery, Verdict};
use crate::index::Kind;

/// Folds one kind's watch events into the cache.
///
/// A re-list is applied in place, object by object, and what it did not see is dropped at the
/// end: one copy of the objects at any time, never an old and a new list side by side. Objects
/// the index does not keep (`Cached::keep`: pods without our gates outside opted-in
/// namespaces) are neither stored nor remembered as seen.
pub struct Feed<K> {
    cache: Arc<Cache>,
    seen: HashSet<(String, String)>,
    /// The 404 history (binding feed only).
    presence: CrdPresence,
    kind: std::marker::PhantomData<K>,
}

impl<K: Cached> Feed<K> {
    pub fn new(cache: Arc<Cache>) -> Self {
        Self {
            cache,
            seen: HashSet::new(),
            presence: CrdPresence::new(DEFAULT_CRD_MISSING_GRACE),
            kind: std::marker::PhantomData,
        }
    }

    /// How long the CRD must be confirmed absent before the known bindings are dropped.
    pub fn crd_missing_grace(mut self, grace: Duration) -> Self {
        self.presence = CrdPresence::new(grace);
        self
    }

    /// One watch event.
    pub fn event(&mut self, e: Event<K>) {
        match e {
            Event::Init => self.init(),
            Event::InitApply(o) => self.init_apply(&o),
            Event::InitDone => self.init_done(),
            Event::Apply(o) => self.apply(&o),
            Event::Delete(o) => self.delete(&o),
        }
    }

    /// A (re-)list starts.
    pub fn init(&mut self) {
        self.seen.clear();
    }

    /// One object of the list.
    pub fn init_apply(&mut self, o: &K) {
        let (ns, name) = (o.namespace().unwrap_or_default(), o.name_any());
        if upsert(&self.cache, &ns, &name, o) {
            self.seen.insert((ns, name));
        }
    }

    /// The list is complete: drop what it did not have.
    pub fn init_done(&mut self) {
        let kind = K::KIND;
        let mut ix = self.cache.write();
        ix.retain(kind, |ns, name| {
            self.seen.contains(&(ns.to_string(), name.to_string()))
        });
        ix.mark_synced(kind);
        if kind == Kind::Binding {
            self.presence.listed();
            if ix.bindings_warning.take().is_some() {
                tracing::info!("TargetGroupBinding list answers again; bindings are current");
            }
            if ix.bindings_crd_missing {
                ix.bindings_crd_missing = false;
                tracing::info!("TargetGroupBinding CRD found; injecting readiness gates again");
            }
        }
        ix.compact();
        drop(ix);
        tracing::info!(?kind, objects = self.seen.len(), "cache synced");
        self.seen = HashSet::new();
        release_free_memory();
        self.notify();
    }

    pub fn apply(&mut self, o: &K) {
        upsert(
            &self.cache,
            &o.namespace().unwrap_or_default(),
            &o.name_any(),
            o,
        );
        self.notify();
    }

    pub fn delete(&mut self, o: &K) {
        K::delete(
            &mut self.cache.write(),
            &o.namespace().unwrap_or_default(),
            &o.name_any(),
        );
        self.notify();
    }

    fn notify(&self) {
        self.cache.notify();
        if K::KIND == Kind::Namespace {
            self.cache.notify_namespaces();
        }
    }

    /// The list or watch answered 404 at `now_ms`, and discovery then said `discovery`. The
    /// known bindings stay until the absence is confirmed and sustained (`crd_presence`).
    pub fn not_found(&mut self, now_ms: i64, discovery: &Discovery) {
        let ever_listed = self.cache.read().synced().bindings;
        match self.presence.not_found(now_ms, ever_listed, discovery) {
            Verdict::Missing => self.crd_missing(),
            Verdict::Keep => {
                let mut ix = self.cache.write();
                if ix.bindings_crd_missing {
                    return;
                }
                let since = self.presence.not_found_since().unwrap_or(now_ms);
                let confirmed = match (discovery, self.presence.absent_since()) {
                    (Discovery::Absent, Some(t)) => format!(
                        "discovery has not listed targetgroupbindings.elbv2.k8s.aws for {}s",
                        (now_ms - t) / 1000
                    ),
                    (Discovery::Present, _) => "discovery still lists the CRD".to_string(),
                    (_, _) => "discovery unavailable".to_string(),
                };
                let note = format!(
                    "the TargetGroupBinding list/watch has answered 404 for {}s ({confirmed}); keeping the {} known bindings until the CRD is confirmed missing for {}s",
                    (now_ms - since) / 1000,
                    ix.counts().0,
                    self.presence.grace().as_secs()
                );
                tracing::warn!("{note}");
                ix.bindings_warning = Some(note);
                drop(ix);
                self.cache.notify();
            }
        }
    }

    /// The kind's CRD is confirmed gone: there are none, and that is a complete answer.
    pub fn crd_missing(&mut self) {
        let mut ix = self.cache.write();
        ix.bindings_warning = None;
        if !ix.bindings_crd_missing {
            tracing::error!(
                "the TargetGroupBinding CRD (targetgroupbindings.elbv2.k8s.aws/v1beta1) is not installed: \
                 no readiness gates will be injected until it is (install the AWS Load Balancer Controller)"
            );
        }
        ix.bindings_crd_missing = true;
        ix.retain(K::KIND, |_, _| false);
        ix.mark_synced(K::KIND);
        drop(ix);
        self.cache.notify();
    }
}

/// Stores the stripped copy of `o` and returns true, or drops the entry when `o` is unusable or
/// not kept (`Cached::keep`).
fn upsert<K: Cached>(cache: &Cache, ns: &str, name: &str, o: &K) -> bool {
    let item = o.convert();
    let mut ix = cache.write();
    match item {
        Some(item) if K::keep(&ix, ns, &item) => {
            K::apply(&mut ix, ns, name, item);
            true
        }
        _ => {
            K::delete(&mut ix, ns, name);
            false
        }
    }
}

/// Hands memory freed by a re-list back to the system (glibc keeps it otherwise, and the
/// list's transient JSON leaves the heap fragmented).
pub(super) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own heap; it takes no pointers of ours.
    unsafe {
        libc::malloc_trim(0);
    }
}
