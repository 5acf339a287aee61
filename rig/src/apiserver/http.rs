//! The API server's HTTP face: discovery, list/watch/get/create/update/patch/delete over the
//! store, with the query parameters and content types kube-rs sends.

use super::resources::{self, RESOURCES, ResourceType};
use super::selector::{FieldSelector, LabelSelector, labels_of};
use super::status::ApiError;
use super::store::{
    Change, EventType, PatchKind, Store, Subresource, WatchFrom, WriteOpts, str_at,
};
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

/// How often a watch that asked for bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(5);
/// Requests kept in the request log.
const REQUEST_LOG_CAPACITY: usize = 20_000;

/// One request as the API server received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: String,
    pub status: u16,
}

#[derive(Clone)]
struct AppState {
    store: Arc<Store>,
    log: Arc<Mutex<Vec<RecordedRequest>>>,
    outages: Arc<Outages>,
}

/// Resources the server pretends not to serve for a while, as around a kube-apiserver restart
/// or a CRD being re-applied: their watches end and every request for them gets a 404.
struct Outages {
    until: Mutex<HashMap<&'static str, std::time::Instant>>,
    /// Ends the open watches of a resource (by plural).
    cut: broadcast::Sender<&'static str>,
}

impl Outages {
    fn active(&self, plural: &str) -> bool {
        self.until
            .lock()
            .expect("outages lock")
            .get(plural)
            .is_some_and(|t| *t > std::time::Instant::now())
    }
}

/// A running API server; stops when dropped.
pub struct ApiServer {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<RecordedRequest>>>,
    outages: Arc<Outages>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ApiServer {
    pub async fn start(store: Arc<Store>, addr: SocketAddr) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let outages = Arc::new(Outages {
            until: Mutex::new(HashMap::new()),
            cut: broadcast::channel(16).0,
        });
        let state = AppState {
            store,
            log: log.clone(),
            outages: outages.clone(),
        };
        let app = axum::Router::new().fallback(handle).with_state(state);
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "API server stopped");
            }
        });
        Ok(Self {
            addr,
            log,
            outages,
            task,
        })
    }

    /// For `duration`, `plural` (e.g. `targetgroupbindings`) is not served: open watches of it
    /// end now, and every request for it (list, watch, get) gets kube-apiserver's 404 "the
    /// server could not find the requested resource". Discovery still lists it, as after a
    /// restart that serves discovery before the CRD's handler is back.
    pub fn outage(&self, plural: &str, duration: Duration) {
        let Some(res) = RESOURCES.iter().find(|r| r.plural == plural) else {
            return;
        };
        self.outages
            .until
            .lock()
            .expect("outages lock")
            .insert(res.plural, std::time::Instant::now() + duration);
        let _ = self.outages.cut.send(res.plural);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far (watch requests included, bodies as text).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.log.lock().expect("log lock").clone()
    }

    /// A kubeconfig that points kube clients (kube-rs, kubectl) at this server.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: rig\n  cluster:\n    server: {}\ncontexts:\n- name: rig\n  context:\n    cluster: rig\n    user: rig\n    namespace: default\ncurrent-context: rig\nusers:\n- name: rig\n  user: {{}}\n",
            self.url()
        )
    }
}

fn json_response(code: u16, body: &Value) -> Response {
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn error_response(e: &ApiError) -> Response {
    json_response(e.code, &e.to_status())
}

async fn handle(
    axum::extract::State(state): axum::extract::State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let response = route(&state, &method, &uri, &headers, &content_type, &body).await;
    let mut log = state.log.lock().expect("log lock");
    if log.len() < REQUEST_LOG_CAPACITY {
        log.push(RecordedRequest {
            method: method.to_string(),
            path: uri.path().to_string(),
            query: uri.query().unwrap_or_default().to_string(),
            content_type,
            body: String::from_utf8_lossy(&body).into_owned(),
            status: response.status().as_u16(),
        });
    }
    response
}

struct Target {
    res: &'static ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    sub: Subresource,
}

enum Route {
    Discovery(Response),
    Resource(Target),
    /// `GET /api/v1/namespaces/{ns}/pods/{name}[:{port}]/proxy/{path}`: the pod proxy.
    PodProxy {
        namespace: String,
        pod: String,
        port: Option<String>,
        path: String,
    },
}

fn parse_path(path: &str, headers: &HeaderMap) -> Result<Route, ApiError> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let aggregated = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("apidiscovery.k8s.io") && a.contains("APIGroupDiscoveryList"));
    let not_found = || ApiError {
        code: 404,
        reason: "NotFound",
        message: "the server could not find the requested resource".into(),
        details: Value::Null,
    };
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["version"] => return Ok(Route::Discovery(json_response(200, &version_info()))),
        ["healthz" | "readyz" | "livez"] => {
            return Ok(Route::Discovery((StatusCode::OK, "ok").into_response()));
        }
        ["api"] if aggregated => return Ok(Route::Discovery(aggregated_response(true))),
        ["api"] => {
            return Ok(Route::Discovery(json_response(
                200,
                &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
            )));
        }
        ["apis"] if aggregated => return Ok(Route::Discovery(aggregated_response(false))),
        ["apis"] => return Ok(Route::Discovery(json_response(200, &api_group_list()))),
        ["apis", group] => {
            let g = api_groups()
                .into_iter()
                .find(|g| g["name"] == *group)
                .ok_or_else(not_found)?;
            let mut g = g;
            g["kind"] = json!("APIGroup");
            g["apiVersion"] = json!("v1");
            return Ok(Route::Discovery(json_response(200, &g)));
        }
        [
            "api",
            "v1",
            "namespaces",
            ns,
            "pods",
            name_port,
            "proxy",
            path @ ..,
        ] => {
            let (pod, port) = match name_port.split_once(':') {
                Some((pod, port)) => (pod, Some(port.to_string())),
                None => (*name_port, None),
            };
            return Ok(Route::PodProxy {
                namespace: ns.to_string(),
                pod: pod.to_string(),
                port,
                path: format!("/{}", path.join("/")),
            });
        }
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g, v, rest @ ..] => (g, v, rest),
        _ => return Err(not_found()),
    };
    if rest.is_empty() {
        if !RESOURCES
            .iter()
            .any(|r| r.group == group && r.version == version)
        {
            return Err(not_found());
        }
        return Ok(Route::Discovery(json_response(
            200,
            &resource_list(group, version),
        )));
    }
    let find = |plural: &str| resources::find(group, version, plural).ok_or_else(not_found);
    let (res, namespace, tail) = match rest {
        ["namespaces", ns, plural, tail @ ..] if !matches!(*plural, "status" | "finalize") => {
            let res = find(plural)?;
            if !res.namespaced {
                return Err(not_found());
            }
            (res, Some(ns.to_string()), tail)
        }
        [plural, tail @ ..] => (find(plural)?, None, tail),
        [] => return Err(not_found()),
    };
    let (name, sub) = match tail {
        [] => (None, Subresource::Main),
        [name] => (Some(name.to_string()), Subresource::Main),
        [name, "status"] if res.status_subresource => (Some(name.to_string()), Subresource::Status),
        _ => return Err(not_found()),
    };
    if res.namespaced && namespace.is_none() && name.is_some() {
        return Err(not_found());
    }
    Ok(Route::Resource(Target {
        res,
        namespace,
        name,
        sub,
    }))
}

async fn route(
    state: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    content_type: &str,
    body: &Bytes,
) -> Response {
    let target = match parse_path(uri.path(), headers) {
        Ok(Route::Discovery(r)) => return r,
        Ok(Route::Resource(t)) => t,
        Ok(Route::PodProxy {
            namespace,
            pod,
            port,
            path,
        }) => {
            if method != Method::GET {
                return error_response(&ApiError::method_not_allowed(
                    "the rig's pod proxy forwards GET only",
                ));
            }
            let path = match uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            return match pod_proxy(&state.store, &namespace, &pod, port.as_deref(), &path).await {
                Ok(r) => r,
                Err(e) => error_response(&e),
            };
        }
        Err(e) => return error_response(&e),
    };
    if state.outages.active(target.res.plural) {
        return error_response(&ApiError::resource_not_served());
    }
    let query: HashMap<String, String> =
        form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    match serve_resource(state, method, &target, &query, content_type, body).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

/// Forwards a GET to the pod's IP, as kube-apiserver's pod proxy does: the port is a number, a
/// container port's name, or absent (the first container port).
async fn pod_proxy(
    store: &Store,
    ns: &str,
    name: &str,
    port: Option<&str>,
    path: &str,
) -> Result<Response, ApiError> {
    use http_body_util::BodyExt;
    let pod = store.get(resources::pods(), ns, name)?;
    let ip = super::store::str_at(&pod, "/status/podIP");
    if ip.is_empty() {
        return Err(ApiError::bad_request(format!(
            "address not allowed: pod {name} has no IP yet"
        )));
    }
    let ports: Vec<(String, u64)> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|c| {
            c.get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .filter_map(|p| Some((str_at(p, "/name"), p.get("containerPort")?.as_u64()?)))
        .collect();
    let port = match port {
        Some(p) => match p.parse::<u16>() {
            Ok(n) => n,
            Err(_) => ports
                .iter()
                .find(|(n, _)| n == p)
                .map(|(_, n)| *n as u16)
                .ok_or_else(|| ApiError::bad_request(format!("no such port: {p}")))?,
        },
        None => ports
            .first()
            .map(|(_, n)| *n as u16)
            .ok_or_else(|| ApiError::bad_request("the pod names no container port"))?,
    };
    let authority = if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    };
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(&authority)
            .await
            .map_err(|e| format!("dial tcp {authority}: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .map_err(|e| e.to_string())?;
        let conn = tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header(header::HOST, &authority)
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = res.status();
        let content_type = res.headers().get(header::CONTENT_TYPE).cloned();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        conn.abort();
        Ok::<_, String>((status, content_type, body))
    };
    let (status, content_type, body) = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| ApiError::unreachable(format!("dial tcp {authority}: i/o timeout")))?
        .map_err(ApiError::unreachable)?;
    let mut res = Response::builder().status(status);
    if let Some(ct) = content_type {
        res = res.header(header::CONTENT_TYPE, ct);
    }
    Ok(res.body(Body::from(body)).expect("response"))
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("the body of the request could not be decoded: {e}"))
    })
}

async fn serve_resource(
    state: &AppState,
    method: &Method,
    t: &Target,
    query: &HashMap<String, String>,
    content_type: &str,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let store = &state.store;
    let ns = t.namespace.as_deref().unwrap_or_default();
    let opts = WriteOpts {
        dry_run: query.get("dryRun").is_some_and(|d| d == "All"),
        field_manager: query.get("fieldManager").cloned(),
        force: query.get("force").is_some_and(|f| f == "true"),
    };
    match (method.clone(), &t.name) {
        (Method::GET, None) => {
            let labels = LabelSelector::parse(
                query
                    .get("labelSelector")
                    .map(String::as_str)
                    .unwrap_or_default(),
            )
            .map_err(ApiError::bad_request)?;
            let fields = FieldSelector::parse(
                query
                    .get("fieldSelector")
                    .map(String::as_str)
                    .unwrap_or_default(),
            )
            .map_err(ApiError::bad_request)?;
            if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
                let cut = state.outages.cut.subscribe();
                return watch(store, t, query, labels, fields, cut);
            }
            list(store, t, query, &labels, &fields)
        }
        (Method::POST, None) => {
            if t.res.namespaced && t.namespace.is_none() {
                return Err(ApiError::method_not_allowed(format!(
                    "POST on all-namespaces {} is not allowed",
                    t.res.plural
                )));
            }
            let obj = parse_body(body)?;
            let created = store.create(t.res, ns, obj, &opts).await?;
            Ok(json_response(201, &created))
        }
        (Method::GET, Some(name)) => Ok(json_response(200, &store.get(t.res, ns, name)?)),
        (Method::PUT, Some(name)) => {
            let obj = parse_body(body)?;
            Ok(json_response(
                200,
                &store.update(t.res, ns, name, obj, t.sub, &opts)?,
            ))
        }
        (Method::PATCH, Some(name)) => {
            let kind = match content_type.split(';').next().unwrap_or_default().trim() {
                "application/json-patch+json" => PatchKind::Json,
                "application/merge-patch+json" => PatchKind::Merge,
                "application/strategic-merge-patch+json" => PatchKind::Strategic,
                "application/apply-patch+yaml" | "application/apply-patch+cbor" => PatchKind::Apply,
                other => {
                    return Err(ApiError::unsupported_media_type(format!(
                        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {other:?})"
                    )));
                }
            };
            let patch: Value = if kind == PatchKind::Apply {
                serde_yaml::from_slice(body)
                    .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?
            } else {
                parse_body(body)?
            };
            let existed = store.get(t.res, ns, name).is_ok();
            let obj = store.patch(t.res, ns, name, kind, &patch, t.sub, &opts)?;
            Ok(json_response(if existed { 200 } else { 201 }, &obj))
        }
        (Method::DELETE, Some(name)) => {
            let options: Value = if body.is_empty() {
                json!({})
            } else {
                parse_body(body)?
            };
            let grace = query
                .get("gracePeriodSeconds")
                .and_then(|g| g.parse::<i64>().ok())
                .or_else(|| options.get("gracePeriodSeconds").and_then(Value::as_i64));
            let uid = options
                .pointer("/preconditions/uid")
                .and_then(Value::as_str);
            let dry_run = opts.dry_run
                || options
                    .get("dryRun")
                    .and_then(Value::as_array)
                    .is_some_and(|d| !d.is_empty());
            let obj = store.delete(t.res, ns, name, grace, uid, dry_run)?;
            Ok(json_response(200, &obj))
        }
        (m, _) => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource: {m}"
        ))),
    }
}

fn list(
    store: &Store,
    t: &Target,
    query: &HashMap<String, String>,
    labels: &LabelSelector,
    fields: &FieldSelector,
) -> Result<Response, ApiError> {
    let (mut items, rv) = store.list(t.res, t.namespace.as_deref(), labels, fields);
    let offset = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(token)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| {
                    s.strip_prefix("offset:")
                        .and_then(|o| o.parse::<usize>().ok())
                });
            decoded.ok_or_else(|| {
                ApiError::bad_request("continue key is not valid: illegal base64 data")
            })?
        }
        None => 0,
    };
    let total = items.len();
    items = items.into_iter().skip(offset).collect();
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let Some(limit) = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0)
        && items.len() > limit
    {
        items.truncate(limit);
        let next = offset + limit;
        metadata["continue"] =
            json!(base64::engine::general_purpose::STANDARD.encode(format!("offset:{next}")));
        metadata["remainingItemCount"] = json!(total - next);
    }
    if t.res.builtin {
        // Items of built-in lists carry no type meta, as with the real API server.
        for item in &mut items {
            if let Some(m) = item.as_object_mut() {
                m.remove("apiVersion");
                m.remove("kind");
            }
        }
    }
    Ok(json_response(
        200,
        &json!({"kind": t.res.list_kind(), "apiVersion": t.res.api_version(), "metadata": metadata, "items": items}),
    ))
}

/// Whether a change is visible to a watch with this scope and selectors, before and after.
fn visibility(
    c: &Change,
    t: &Target,
    labels: &LabelSelector,
    fields: &FieldSelector,
) -> Option<(&'static str, Value)> {
    if !std::ptr::eq(c.resource, t.res) {
        return None;
    }
    if let Some(ns) = &t.namespace
        && &c.namespace != ns
    {
        return None;
    }
    let matches = |o: &Value| labels.matches(&labels_of(o)) && fields.matches(o);
    let now = matches(&c.object);
    match c.event {
        EventType::Added | EventType::Deleted => now.then(|| (c.event.as_str(), c.object.clone())),
        EventType::Modified => {
            let before = c.old.as_ref().is_some_and(matches);
            match (before, now) {
                (true, true) => Some(("MODIFIED", c.object.clone())),
                (false, true) => Some(("ADDED", c.object.clone())),
                (true, false) => Some(("DELETED", c.object.clone())),
                (false, false) => None,
            }
        }
    }
}

fn watch(
    store: &Store,
    t: &Target,
    query: &HashMap<String, String>,
    labels: LabelSelector,
    fields: FieldSelector,
    mut cut: broadcast::Receiver<&'static str>,
) -> Result<Response, ApiError> {
    let rv = query
        .get("resourceVersion")
        .map(String::as_str)
        .unwrap_or_default();
    let initial_events = query.get("sendInitialEvents").is_some_and(|s| s == "true");
    let from = if rv.is_empty() || rv == "0" || initial_events {
        WatchFrom::Now
    } else {
        WatchFrom::After(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?,
        )
    };
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true");
    let timeout = Duration::from_secs(
        query
            .get("timeoutSeconds")
            .and_then(|s| s.parse().ok())
            .unwrap_or(1800),
    );
    let (tx, rx) = mpsc::channel::<Bytes>(1024);
    let target = Target {
        res: t.res,
        namespace: t.namespace.clone(),
        name: None,
        sub: Subresource::Main,
    };
    let start = store.watch(from);
    tokio::spawn(async move {
        let line = |v: Value| Bytes::from(format!("{v}\n"));
        let bookmark = |rv: u64, end: bool| {
            let mut meta = json!({"resourceVersion": rv.to_string()});
            if end {
                meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            json!({"type": "BOOKMARK", "object": {"kind": target.res.kind, "apiVersion": target.res.api_version(), "metadata": meta}})
        };
        let start = match start {
            Ok(s) => s,
            Err(e) => {
                let _ = tx
                    .send(line(json!({"type": "ERROR", "object": e.to_status()})))
                    .await;
                return;
            }
        };
        let mut last_rv = start.start_rv;
        for c in &start.replay {
            if let Some((ty, obj)) = visibility(c, &target, &labels, &fields)
                && tx
                    .send(line(json!({"type": ty, "object": obj})))
                    .await
                    .is_err()
            {
                return;
            }
            last_rv = last_rv.max(c.rv);
        }
        if initial_events {
            let _ = tx.send(line(bookmark(last_rv, true))).await;
        }
        let mut live = start.live;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(BOOKMARK_EVERY);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                c = cut.recv() => {
                    if matches!(c, Ok(plural) if plural == target.res.plural) {
                        return;
                    }
                }
                _ = ticker.tick(), if bookmarks => {
                    if tx.send(line(bookmark(last_rv, false))).await.is_err() { return; }
                }
                msg = live.recv() => match msg {
                    Ok(c) => {
                        if c.rv <= last_rv { continue; }
                        last_rv = c.rv;
                        if let Some((ty, obj)) = visibility(&c, &target, &labels, &fields)
                            && tx.send(line(json!({"type": ty, "object": obj}))).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let gone = ApiError::gone("the watch fell behind; relist");
                        let _ = tx.send(line(json!({"type": "ERROR", "object": gone.to_status()}))).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Ok(Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::TRANSFER_ENCODING, "chunked")
        .body(Body::from_stream(stream))
        .expect("response"))
}

fn version_info() -> Value {
    json!({
        "major": "1", "minor": "33", "gitVersion": "v1.33.0-rig", "gitCommit": "rig", "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"
    })
}

fn verbs(r: &ResourceType) -> Value {
    let _ = r;
    json!([
        "create", "delete", "get", "list", "patch", "update", "watch"
    ])
}

fn resource_list(group: &str, version: &str) -> Value {
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    let mut list = Vec::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        list.push(json!({"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind, "verbs": verbs(r)}));
        if r.status_subresource {
            list.push(json!({"name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced, "kind": r.kind, "verbs": ["get", "patch", "update"]}));
        }
    }
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list})
}

fn api_groups() -> Vec<Value> {
    let mut groups: Vec<(&str, &str)> = RESOURCES
        .iter()
        .filter(|r| !r.group.is_empty())
        .map(|r| r.group_version())
        .collect();
    groups.dedup();
    groups
        .into_iter()
        .map(|(g, v)| {
            let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
            json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect()
}

fn api_group_list() -> Value {
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": api_groups()})
}

fn aggregated_response(core: bool) -> Response {
    let mut groups: Vec<(&str, &str)> = RESOURCES
        .iter()
        .filter(|r| r.group.is_empty() == core)
        .map(|r| r.group_version())
        .collect();
    groups.dedup();
    let items: Vec<Value> = groups
        .into_iter()
        .map(|(g, v)| {
            let resources: Vec<Value> = RESOURCES
                .iter()
                .filter(|r| r.group == g && r.version == v)
                .map(|r| {
                    let kind = json!({"group": r.group, "version": r.version, "kind": r.kind});
                    let subs: Vec<Value> = if r.status_subresource {
                        vec![json!({"subresource": "status", "responseKind": kind, "verbs": ["get", "patch", "update"]})]
                    } else {
                        vec![]
                    };
                    json!({"resource": r.plural, "responseKind": kind, "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                        "singularResource": r.singular, "verbs": verbs(r), "subresources": subs})
                })
                .collect();
            json!({"metadata": {"name": g}, "versions": [{"version": v, "resources": resources, "freshness": "Current"}]})
        })
        .collect();
    let body = json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items});
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
        )],
        body.to_string(),
    )
        .into_response()
}

/// Name of an object, for callers of the store that log.
pub fn name_of(obj: &Value) -> String {
    str_at(obj, "/metadata/name")
}
