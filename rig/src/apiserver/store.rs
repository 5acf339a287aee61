//! The in-memory object store behind the API server: one global resourceVersion counter,
//! the write semantics of the real API server (status subresource isolation, uid and
//! resourceVersion preconditions, graceful pod deletion, no-op writes skipped), and a change
//! feed that watches replay from a resourceVersion.

use super::patch;
use super::resources::{self, ResourceType};
use super::selector::{FieldSelector, LabelSelector, labels_of};
use super::status::ApiError;
use crate::time::{now_time, time_in, uuid};
use futures::future::BoxFuture;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::broadcast;

/// How many past changes a watch can resume from before it gets 410 Gone.
const LOG_CAPACITY: usize = 50_000;
/// The name the rig's scheduler binds every pod to.
pub const NODE_NAME: &str = "rig-node";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One committed change, as the watch cache sees it.
#[derive(Debug, Clone)]
pub struct Change {
    /// When the store made the change (timelines stamp milestones with it, not with the
    /// moment a subscriber got round to reading it).
    pub at: std::time::Instant,
    pub rv: u64,
    pub resource: &'static ResourceType,
    pub namespace: String,
    pub name: String,
    pub event: EventType,
    pub object: Value,
    pub old: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    Main,
    Status,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Json,
    Merge,
    Strategic,
    Apply,
}

#[derive(Debug, Clone, Default)]
pub struct WriteOpts {
    pub dry_run: bool,
    pub field_manager: Option<String>,
    pub force: bool,
}

/// Mutating admission of pods on CREATE, called before the object is named and stored.
pub trait PodAdmission: Send + Sync {
    fn admit<'a>(
        &'a self,
        store: &'a Store,
        namespace: &'a str,
        pod: Value,
        dry_run: bool,
    ) -> BoxFuture<'a, Result<Value, ApiError>>;
}

type Key = (usize, String, String);

struct Inner {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    log: VecDeque<Arc<Change>>,
    /// Field ownership (leaf path -> manager), used to detect server-side apply conflicts.
    owners: HashMap<Key, BTreeMap<String, String>>,
}

pub struct Store {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Arc<Change>>,
    admission: RwLock<Option<Arc<dyn PodAdmission>>>,
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WatchFrom {
    /// Synthetic ADDED events for every current object, then live changes.
    Now,
    /// Every change after this resourceVersion, then live changes.
    After(u64),
}

/// A started watch: the changes to replay, then the live feed.
pub struct WatchStart {
    pub replay: Vec<Arc<Change>>,
    pub start_rv: u64,
    pub live: broadcast::Receiver<Arc<Change>>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(1 << 16);
        Self {
            inner: Mutex::new(Inner {
                rv: 1,
                objects: BTreeMap::new(),
                log: VecDeque::new(),
                owners: HashMap::new(),
            }),
            tx,
            admission: RwLock::new(None),
        }
    }

    pub fn set_admission(&self, admission: Option<Arc<dyn PodAdmission>>) {
        *self.admission.write().expect("admission lock") = admission;
    }

    pub fn resource_version(&self) -> u64 {
        self.inner.lock().expect("store lock").rv
    }

    /// The live change feed, for the rig's own controllers.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.tx.subscribe()
    }

    fn key(res: &'static ResourceType, ns: &str, name: &str) -> Key {
        (
            resources::index_of(res),
            if res.namespaced {
                ns.to_string()
            } else {
                String::new()
            },
            name.to_string(),
        )
    }

    /// The stored object and its key, or the API server's 404.
    fn existing(
        inner: &Inner,
        res: &'static ResourceType,
        ns: &str,
        name: &str,
    ) -> Result<(Key, Value), ApiError> {
        let key = Self::key(res, ns, name);
        let obj = inner
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(res.plural, res.group, name))?;
        Ok((key, obj))
    }

    pub fn get(&self, res: &'static ResourceType, ns: &str, name: &str) -> Result<Value, ApiError> {
        let inner = self.inner.lock().expect("store lock");
        Ok(Self::existing(&inner, res, ns, name)?.1)
    }

    /// Objects of `res` in `ns` (all namespaces for `None`) matching the selectors, and the
    /// resourceVersion of the snapshot.
    pub fn list(
        &self,
        res: &'static ResourceType,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
    ) -> (Vec<Value>, u64) {
        let inner = self.inner.lock().expect("store lock");
        let idx = resources::index_of(res);
        let items = inner
            .objects
            .iter()
            .filter(|((i, n, _), _)| *i == idx && ns.is_none_or(|ns| !res.namespaced || n == ns))
            .filter(|(_, o)| labels.matches(&labels_of(o)) && fields.matches(o))
            .map(|(_, o)| o.clone())
            .collect();
        (items, inner.rv)
    }

    pub fn watch(&self, from: WatchFrom) -> Result<WatchStart, ApiError> {
        let inner = self.inner.lock().expect("store lock");
        let live = self.tx.subscribe();
        match from {
            WatchFrom::Now => {
                let replay = inner
                    .objects
                    .iter()
                    .map(|((i, ns, name), o)| {
                        Arc::new(Change {
                            at: std::time::Instant::now(),
                            rv: inner.rv,
                            resource: &resources::RESOURCES[*i],
                            namespace: ns.clone(),
                            name: name.clone(),
                            event: EventType::Added,
                            object: o.clone(),
                            old: None,
                        })
                    })
                    .collect();
                Ok(WatchStart {
                    replay,
                    start_rv: inner.rv,
                    live,
                })
            }
            WatchFrom::After(rv) => {
                let oldest = inner.log.front().map(|c| c.rv);
                if let Some(oldest) = oldest
                    && rv + 1 < oldest
                    && inner.log.len() >= LOG_CAPACITY
                {
                    return Err(ApiError::gone(format!(
                        "too old resource version: {rv} ({})",
                        oldest - 1
                    )));
                }
                let replay = inner.log.iter().filter(|c| c.rv > rv).cloned().collect();
                Ok(WatchStart {
                    replay,
                    start_rv: rv.max(inner.rv),
                    live,
                })
            }
        }
    }

    fn commit(&self, inner: &mut Inner, change: Change) {
        let change = Arc::new(change);
        inner.log.push_back(change.clone());
        while inner.log.len() > LOG_CAPACITY {
            inner.log.pop_front();
        }
        // No receiver is not an error: nobody watches yet.
        let _ = self.tx.send(change);
    }

    pub async fn create(
        &self,
        res: &'static ResourceType,
        ns: &str,
        obj: Value,
        opts: &WriteOpts,
    ) -> Result<Value, ApiError> {
        let mut obj = self.prepare_create(res, ns, obj)?;
        if res.kind == "Pod" && res.group.is_empty() {
            let admission = self.admission.read().expect("admission lock").clone();
            if let Some(admission) = admission {
                obj = admission.admit(self, ns, obj, opts.dry_run).await?;
            }
            // The rig's scheduler binds at once to its one node.
            obj["spec"]["nodeName"] = json!(NODE_NAME);
        }
        self.insert(res, ns, obj, opts)
    }

    /// Validation and defaulting of a new object, before admission.
    fn prepare_create(
        &self,
        res: &'static ResourceType,
        ns: &str,
        mut obj: Value,
    ) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request was in an unknown format",
            ));
        }
        check_type_meta(res, &obj)?;
        obj["apiVersion"] = json!(res.api_version());
        obj["kind"] = json!(res.kind);
        if !obj.get("metadata").is_some_and(Value::is_object) {
            obj["metadata"] = json!({});
        }
        if res.namespaced {
            if let Some(given) = obj.pointer("/metadata/namespace").and_then(Value::as_str)
                && !given.is_empty()
                && given != ns
            {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            obj["metadata"]["namespace"] = json!(ns);
            self.get(resources::namespaces(), "", ns)?;
        }
        if str_at(&obj, "/metadata/name").is_empty()
            && str_at(&obj, "/metadata/generateName").is_empty()
        {
            return Err(ApiError::invalid(
                res.kind,
                res.group,
                "",
                "metadata.name",
                "Required value: name or generateName is required",
            ));
        }
        if res.status_subresource {
            // Status is not settable on create: the API server resets it.
            match res.kind {
                "Pod" => obj["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"}),
                "Namespace" => obj["status"] = json!({"phase": "Active"}),
                _ => {
                    obj.as_object_mut().expect("object").remove("status");
                }
            }
        }
        if res.kind == "Pod" && res.group.is_empty() {
            default_pod(&mut obj);
        }
        Ok(obj)
    }

    /// Names (from generateName), stamps and stores a new object.
    fn insert(
        &self,
        res: &'static ResourceType,
        ns: &str,
        mut obj: Value,
        opts: &WriteOpts,
    ) -> Result<Value, ApiError> {
        let name = str_at(&obj, "/metadata/name");
        let generate = str_at(&obj, "/metadata/generateName");
        let mut inner = self.inner.lock().expect("store lock");
        let name = if name.is_empty() {
            format!("{generate}{}", random_suffix())
        } else {
            name
        };
        let key = Self::key(res, ns, &name);
        if inner.objects.contains_key(&key) {
            return Err(ApiError::already_exists(res.plural, res.group, &name));
        }
        let meta = obj["metadata"].as_object_mut().expect("metadata");
        meta.insert("name".into(), json!(name));
        meta.insert("uid".into(), json!(uuid()));
        meta.insert("creationTimestamp".into(), json!(now_time()));
        meta.remove("deletionTimestamp");
        meta.remove("managedFields");
        if obj.get("spec").is_some() {
            obj["metadata"]["generation"] = json!(1);
        }
        if opts.dry_run {
            obj["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
            return Ok(obj);
        }
        inner.rv += 1;
        let rv = inner.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        inner.objects.insert(key.clone(), obj.clone());
        record_owners(&mut inner, &key, None, &obj, opts.field_manager.as_deref());
        self.commit(
            &mut inner,
            Change {
                at: std::time::Instant::now(),
                rv,
                resource: res,
                namespace: key.1.clone(),
                name,
                event: EventType::Added,
                object: obj.clone(),
                old: None,
            },
        );
        Ok(obj)
    }

    /// PUT: replace the object (or its status).
    pub fn update(
        &self,
        res: &'static ResourceType,
        ns: &str,
        name: &str,
        obj: Value,
        sub: Subresource,
        opts: &WriteOpts,
    ) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request was in an unknown format",
            ));
        }
        check_type_meta(res, &obj)?;
        let given = str_at(&obj, "/metadata/name");
        if given != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({given}) does not match the name on the URL ({name})"
            )));
        }
        let mut inner = self.inner.lock().expect("store lock");
        let (key, old) = Self::existing(&inner, res, ns, name)?;
        self.write(&mut inner, res, key, old, obj, sub, opts)
    }

    #[allow(clippy::too_many_arguments)] // the PATCH verb's own parameters
    pub fn patch(
        &self,
        res: &'static ResourceType,
        ns: &str,
        name: &str,
        kind: PatchKind,
        body: &Value,
        sub: Subresource,
        opts: &WriteOpts,
    ) -> Result<Value, ApiError> {
        if kind == PatchKind::Strategic && !res.builtin {
            return Err(ApiError::unsupported_media_type(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
            ));
        }
        let mut inner = self.inner.lock().expect("store lock");
        let key = Self::key(res, ns, name);
        let Some(old) = inner.objects.get(&key).cloned() else {
            if kind == PatchKind::Apply && sub == Subresource::Main {
                drop(inner);
                return self.apply_create(res, ns, name, body, opts);
            }
            return Err(ApiError::not_found(res.plural, res.group, name));
        };
        let mut doc = old.clone();
        let patch_err = |e: patch::PatchError| {
            ApiError::invalid(res.kind, res.group, name, "patch", &e.to_string())
        };
        match kind {
            PatchKind::Json => patch::json_patch(&mut doc, body).map_err(|e| {
                let mut err = ApiError::internal(e.to_string());
                err.code = 422;
                err.reason = "Invalid";
                err
            })?,
            PatchKind::Merge => {
                if !body.is_object() {
                    return Err(ApiError::bad_request("merge patch must be a JSON object"));
                }
                patch::merge_patch(&mut doc, body)
            }
            PatchKind::Strategic => {
                patch::strategic_merge(res.plural, &mut doc, body).map_err(patch_err)?
            }
            PatchKind::Apply => {
                let manager = opts
                    .field_manager
                    .clone()
                    .ok_or_else(|| ApiError::bad_request("PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"))?;
                check_type_meta(res, body)?;
                if !opts.force {
                    let conflicts = apply_conflicts(inner.owners.get(&key), &old, body, &manager);
                    if !conflicts.is_empty() {
                        return Err(ApiError::apply_conflict(
                            res.plural, res.group, name, conflicts,
                        ));
                    }
                }
                if res.builtin {
                    patch::strategic_merge(res.plural, &mut doc, body).map_err(patch_err)?;
                } else {
                    patch::merge_patch(&mut doc, body);
                }
            }
        }
        // A patch that does not name the resourceVersion is not a precondition on it.
        if str_at(body, "/metadata/resourceVersion").is_empty() {
            doc["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        }
        // kube-apiserver's patch handler passes no uid precondition to storage (it builds the
        // update from `DefaultUpdatedObjectInfo(nil, ...)`): a patched uid that differs from the
        // stored one fails `rest.BeforeUpdate`'s metadata validation as a change of an
        // immutable field, 422 Invalid — after the resourceVersion check, which is storage's.
        let (patched_uid, old_uid) = (str_at(&doc, "/metadata/uid"), str_at(&old, "/metadata/uid"));
        let rv = str_at(&doc, "/metadata/resourceVersion");
        if !patched_uid.is_empty()
            && patched_uid != old_uid
            && (rv.is_empty() || rv == str_at(&old, "/metadata/resourceVersion"))
        {
            return Err(ApiError::invalid(
                res.kind,
                res.group,
                name,
                "metadata.uid",
                &format!("Invalid value: \"{patched_uid}\": field is immutable"),
            ));
        }
        self.write(&mut inner, res, key, old, doc, sub, opts)
    }

    fn apply_create(
        &self,
        res: &'static ResourceType,
        ns: &str,
        name: &str,
        body: &Value,
        opts: &WriteOpts,
    ) -> Result<Value, ApiError> {
        let mut obj = body.clone();
        if !obj.get("metadata").is_some_and(Value::is_object) {
            obj["metadata"] = json!({});
        }
        obj["metadata"]["name"] = json!(name);
        if res.kind == "Pod" {
            return Err(ApiError::method_not_allowed(
                "the rig creates pods through POST only",
            ));
        }
        let obj = self.prepare_create(res, ns, obj)?;
        self.insert(res, ns, obj, opts)
    }

    /// The common update path for PUT and PATCH.
    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        inner: &mut Inner,
        res: &'static ResourceType,
        key: Key,
        old: Value,
        candidate: Value,
        sub: Subresource,
        opts: &WriteOpts,
    ) -> Result<Value, ApiError> {
        let name = key.2.clone();
        let cand_uid = str_at(&candidate, "/metadata/uid");
        let old_uid = str_at(&old, "/metadata/uid");
        if !cand_uid.is_empty() && cand_uid != old_uid {
            return Err(ApiError::conflict(
                res.plural,
                res.group,
                &name,
                &format!(
                    "Precondition failed: UID in precondition: {cand_uid}, UID in object meta: {old_uid}"
                ),
            ));
        }
        let cand_rv = str_at(&candidate, "/metadata/resourceVersion");
        if !cand_rv.is_empty() && cand_rv != str_at(&old, "/metadata/resourceVersion") {
            return Err(ApiError::conflict(
                res.plural,
                res.group,
                &name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        let mut new = match sub {
            Subresource::Status => {
                let mut new = old.clone();
                match candidate.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        new.as_object_mut().expect("object").remove("status");
                    }
                }
                new
            }
            Subresource::Main => {
                let mut new = candidate;
                if !new.get("metadata").is_some_and(Value::is_object) {
                    new["metadata"] = json!({});
                }
                for field in [
                    "name",
                    "namespace",
                    "uid",
                    "creationTimestamp",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "generation",
                ] {
                    match old["metadata"].get(field) {
                        Some(v) => new["metadata"][field] = v.clone(),
                        None => {
                            new["metadata"]
                                .as_object_mut()
                                .expect("metadata")
                                .remove(field);
                        }
                    }
                }
                new["metadata"]
                    .as_object_mut()
                    .expect("metadata")
                    .remove("managedFields");
                if res.status_subresource {
                    match old.get("status") {
                        Some(s) => new["status"] = s.clone(),
                        None => {
                            new.as_object_mut().expect("object").remove("status");
                        }
                    }
                }
                if res.kind == "Pod" && res.group.is_empty() {
                    check_pod_spec_update(&old, &new, &name)?;
                }
                new
            }
        };
        new["apiVersion"] = json!(res.api_version());
        new["kind"] = json!(res.kind);
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        if res.kind == "Pod" && res.group.is_empty() && new.get("status") != old.get("status") {
            apply_ready_rule(&mut new);
        }
        if new == old {
            return Ok(old); // no-op writes do not bump the resourceVersion
        }
        if new.get("spec") != old.get("spec") && sub == Subresource::Main {
            let generation = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            new["metadata"]["generation"] = json!(generation + 1);
        }
        if opts.dry_run {
            return Ok(new);
        }
        inner.rv += 1;
        let rv = inner.rv;
        new["metadata"]["resourceVersion"] = json!(rv.to_string());
        inner.objects.insert(key.clone(), new.clone());
        record_owners(inner, &key, Some(&old), &new, opts.field_manager.as_deref());
        self.commit(
            inner,
            Change {
                at: std::time::Instant::now(),
                rv,
                resource: res,
                namespace: key.1.clone(),
                name,
                event: EventType::Modified,
                object: new.clone(),
                old: Some(old),
            },
        );
        Ok(new)
    }

    /// DELETE. Pods on a node terminate gracefully: they get a deletionTimestamp and the rig's
    /// kubelet removes them (a delete with grace 0) once their containers stopped.
    pub fn delete(
        &self,
        res: &'static ResourceType,
        ns: &str,
        name: &str,
        grace: Option<i64>,
        uid_precondition: Option<&str>,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let mut inner = self.inner.lock().expect("store lock");
        let (key, old) = Self::existing(&inner, res, ns, name)?;
        if let Some(uid) = uid_precondition
            && uid != str_at(&old, "/metadata/uid")
        {
            return Err(ApiError::conflict(
                res.plural,
                res.group,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    str_at(&old, "/metadata/uid")
                ),
            ));
        }
        if res.kind == "Pod" && res.group.is_empty() {
            let grace = grace
                .or_else(|| {
                    old.pointer("/spec/terminationGracePeriodSeconds")
                        .and_then(Value::as_i64)
                })
                .unwrap_or(30)
                .max(0);
            let current = old
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64);
            if grace > 0 && current.is_none_or(|c| grace < c) {
                let mut new = old.clone();
                new["metadata"]["deletionTimestamp"] = json!(time_in(grace));
                new["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                if dry_run {
                    return Ok(new);
                }
                inner.rv += 1;
                let rv = inner.rv;
                new["metadata"]["resourceVersion"] = json!(rv.to_string());
                inner.objects.insert(key.clone(), new.clone());
                self.commit(
                    &mut inner,
                    Change {
                        at: std::time::Instant::now(),
                        rv,
                        resource: res,
                        namespace: key.1.clone(),
                        name: name.into(),
                        event: EventType::Modified,
                        object: new.clone(),
                        old: Some(old),
                    },
                );
                return Ok(new);
            }
            if grace > 0 {
                return Ok(old); // already terminating with a shorter grace period
            }
        }
        if dry_run {
            return Ok(old);
        }
        let removed = self.remove(&mut inner, res, key);
        if res.kind == "Namespace" {
            // The namespace controller deletes everything inside it.
            let inside: Vec<Key> = inner
                .objects
                .keys()
                .filter(|(i, n, _)| resources::RESOURCES[*i].namespaced && n == name)
                .cloned()
                .collect();
            for k in inside {
                let r = &resources::RESOURCES[k.0];
                self.remove(&mut inner, r, k);
            }
        }
        Ok(removed)
    }

    fn remove(&self, inner: &mut Inner, res: &'static ResourceType, key: Key) -> Value {
        let mut obj = inner.objects.remove(&key).expect("present");
        inner.owners.remove(&key);
        inner.rv += 1;
        let rv = inner.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.commit(
            inner,
            Change {
                at: std::time::Instant::now(),
                rv,
                resource: res,
                namespace: key.1.clone(),
                name: key.2.clone(),
                event: EventType::Deleted,
                object: obj.clone(),
                old: None,
            },
        );
        obj
    }
}

fn check_type_meta(res: &ResourceType, obj: &Value) -> Result<(), ApiError> {
    let api_version = str_at(obj, "/apiVersion");
    if !api_version.is_empty() && api_version != res.api_version() {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({})",
            res.api_version()
        )));
    }
    let kind = str_at(obj, "/kind");
    if !kind.is_empty() && kind != res.kind {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({kind}) does not match the expected kind ({})",
            res.kind
        )));
    }
    Ok(())
}

pub fn str_at(v: &Value, pointer: &str) -> String {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn random_suffix() -> String {
    // The API server's alphabet for generated names: no vowels, no confusable digits.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn default_pod(pod: &mut Value) {
    if !pod.get("spec").is_some_and(Value::is_object) {
        pod["spec"] = json!({});
    }
    let spec = pod["spec"].as_object_mut().expect("spec");
    spec.entry("terminationGracePeriodSeconds")
        .or_insert(json!(30));
    spec.entry("restartPolicy").or_insert(json!("Always"));
    spec.entry("dnsPolicy").or_insert(json!("ClusterFirst"));
    spec.entry("schedulerName")
        .or_insert(json!("default-scheduler"));
    spec.entry("enableServiceLinks").or_insert(json!(true));
    spec.entry("containers").or_insert(json!([]));
}

/// Pod updates may only change container images and a few scheduling fields; everything else,
/// including `spec.readinessGates`, is fixed at creation.
fn check_pod_spec_update(old: &Value, new: &Value, name: &str) -> Result<(), ApiError> {
    let strip = |v: &Value| {
        let mut spec = v.get("spec").cloned().unwrap_or(Value::Null);
        for list in ["containers", "initContainers"] {
            if let Some(Value::Array(cs)) = spec.get_mut(list) {
                for c in cs {
                    if let Some(m) = c.as_object_mut() {
                        m.remove("image");
                    }
                }
            }
        }
        if let Some(m) = spec.as_object_mut() {
            m.remove("activeDeadlineSeconds");
            m.remove("tolerations");
            m.remove("terminationGracePeriodSeconds");
        }
        spec
    };
    if strip(old) != strip(new) {
        return Err(ApiError::invalid(
            "Pod",
            "",
            name,
            "spec",
            "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
        ));
    }
    Ok(())
}

/// The kubelet's rule: a pod is Ready when its containers are ready and the condition of every
/// readiness gate is True. Applied on every pod status change once the kubelet reported
/// `ContainersReady`.
pub fn apply_ready_rule(pod: &mut Value) {
    let conditions = pod
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let cond = |t: &str| {
        conditions
            .iter()
            .find(|c| c.get("type").and_then(Value::as_str) == Some(t))
    };
    let Some(containers) = cond("ContainersReady") else {
        return;
    };
    let containers_ready = containers.get("status").and_then(Value::as_str) == Some("True");
    let gates: Vec<String> = pod
        .pointer("/spec/readinessGates")
        .and_then(Value::as_array)
        .map(|g| {
            g.iter()
                .filter_map(|g| {
                    g.get("conditionType")
                        .and_then(Value::as_str)
                        .map(String::from)
                })
                .collect()
        })
        .unwrap_or_default();
    let mut gate_problems = Vec::new();
    for gate in &gates {
        match cond(gate)
            .and_then(|c| c.get("status"))
            .and_then(Value::as_str)
        {
            Some("True") => {}
            Some(other) => gate_problems.push(format!(
                "the status of pod readiness gate \"{gate}\" is not \"True\", but {other}"
            )),
            None => gate_problems.push(format!(
                "corresponding condition of pod readiness gate \"{gate}\" does not exist."
            )),
        }
    }
    let (status, reason, message) = if !containers_ready {
        (
            "False",
            Some("ContainersNotReady"),
            containers
                .get("message")
                .and_then(Value::as_str)
                .map(String::from),
        )
    } else if !gate_problems.is_empty() {
        (
            "False",
            Some("ReadinessGatesNotReady"),
            Some(gate_problems.join(", ")),
        )
    } else {
        ("True", None, None)
    };
    let previous = cond("Ready").cloned();
    let transition = match &previous {
        Some(p) if p.get("status").and_then(Value::as_str) == Some(status) => p
            .get("lastTransitionTime")
            .cloned()
            .unwrap_or(json!(now_time())),
        _ => json!(now_time()),
    };
    let mut ready = Map::new();
    ready.insert("type".into(), json!("Ready"));
    ready.insert("status".into(), json!(status));
    ready.insert("lastProbeTime".into(), Value::Null);
    ready.insert("lastTransitionTime".into(), transition);
    if let Some(r) = reason {
        ready.insert("reason".into(), json!(r));
    }
    if let Some(m) = message {
        ready.insert("message".into(), json!(m));
    }
    let list = pod["status"]["conditions"]
        .as_array_mut()
        .expect("conditions");
    match list
        .iter_mut()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
    {
        Some(c) => *c = Value::Object(ready),
        None => list.push(Value::Object(ready)),
    }
}

fn leaves(v: &Value, prefix: &str, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                leaves(x, &format!("{prefix}.{k}"), out);
            }
        }
        other => out.push((prefix.to_string(), other.clone())),
    }
}

fn value_at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.trim_start_matches('.')
        .split('.')
        .try_fold(v, |v, seg| v.get(seg))
}

fn owned_leaves(obj: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for top in ["spec", "status", "data"] {
        if let Some(v) = obj.get(top) {
            leaves(v, &format!(".{top}"), &mut out);
        }
    }
    for meta in ["labels", "annotations"] {
        if let Some(v) = obj.pointer(&format!("/metadata/{meta}")) {
            leaves(v, &format!(".metadata.{meta}"), &mut out);
        }
    }
    out
}

fn record_owners(
    inner: &mut Inner,
    key: &Key,
    old: Option<&Value>,
    new: &Value,
    manager: Option<&str>,
) {
    let manager = manager.unwrap_or("unknown").to_string();
    let owners = inner.owners.entry(key.clone()).or_default();
    let new_leaves = owned_leaves(new);
    owners.retain(|path, _| new_leaves.iter().any(|(p, _)| p == path));
    for (path, value) in new_leaves {
        let changed = old.and_then(|o| value_at(o, &path)) != Some(&value);
        if changed || !owners.contains_key(&path) {
            owners.insert(path, manager.clone());
        }
    }
}

/// Server-side apply conflicts: fields the applied configuration sets to a different value
/// than the stored one while another manager owns them.
fn apply_conflicts(
    owners: Option<&BTreeMap<String, String>>,
    stored: &Value,
    applied: &Value,
    manager: &str,
) -> Vec<(String, String)> {
    let Some(owners) = owners else {
        return Vec::new();
    };
    owned_leaves(applied)
        .into_iter()
        .filter(|(path, value)| {
            !value.is_null() && value_at(stored, path).is_some_and(|s| s != value)
        })
        .filter_map(|(path, _)| {
            owners
                .get(&path)
                .filter(|m| m.as_str() != manager)
                .map(|m| (m.clone(), path))
        })
        .collect()
}
