//! Mutating admission of pods as kube-apiserver does it: the MutatingWebhookConfiguration
//! from the project's manifests, its rules, namespaceSelector, objectSelector, timeoutSeconds
//! and failurePolicy, an HTTPS call that verifies the caBundle, and the returned JSON patch.

use super::resources;
use super::selector::{LabelSelector, labels_of};
use super::status::ApiError;
use super::store::{PodAdmission, Store, str_at};
use anyhow::{Context, bail};
use base64::Engine;
use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    Ignore,
    Fail,
}

/// Where a webhook is called: the addresses behind it, and the TLS name to verify.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The ready endpoints of the Service (or the URL's one address); each call goes to the
    /// next, round-robin, as kube-apiserver's service resolver spreads calls.
    pub addrs: Arc<Mutex<Vec<SocketAddr>>>,
    next: Arc<std::sync::atomic::AtomicUsize>,
    /// `namespace/name` of the Service, for service webhooks.
    pub service: Option<(String, String)>,
    pub server_name: String,
    pub path: String,
    /// The URL as the API server would print it in errors.
    pub display_url: String,
}

pub struct Webhook {
    pub name: String,
    pub endpoint: Endpoint,
    tls: Arc<rustls::ClientConfig>,
    pub namespace_selector: LabelSelector,
    pub object_selector: LabelSelector,
    pub timeout: Duration,
    pub failure_policy: FailurePolicy,
    rules: Vec<Value>,
}

/// What happened to one pod CREATE at one webhook.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The selectors or rules left the pod out; the webhook was not called.
    NotCalled(String),
    /// Called and allowed; the JSON patch (empty if none) was applied.
    Patched(Value),
    /// Called and denied.
    Denied(String),
    /// The call failed; with failurePolicy Ignore the pod was admitted unchanged.
    Failed { error: String, ignored: bool },
}

#[derive(Debug, Clone)]
pub struct Record {
    pub at: Instant,
    pub webhook: String,
    pub namespace: String,
    /// The pod's name, or its generateName before naming.
    pub pod: String,
    pub outcome: Outcome,
    pub latency: Duration,
}

pub struct Admission {
    pub webhooks: Vec<Webhook>,
    records: Mutex<Vec<Record>>,
}

/// How the rig resolves a webhook's `clientConfig.service` to an address.
pub type ServiceResolver<'a> = &'a dyn Fn(&str, &str, u16) -> Option<SocketAddr>;

impl Admission {
    /// Reads the MutatingWebhookConfiguration from the YAML files under `dir` (the top level
    /// first, then sub-folders such as overlays), sets every webhook's caBundle to `ca_pem`
    /// and resolves services with `resolve`.
    pub fn from_manifests(
        dir: &Path,
        ca_pem: &str,
        resolve: ServiceResolver<'_>,
    ) -> anyhow::Result<Self> {
        let doc = find_webhook_configuration(dir)?;
        Self::from_configuration(&doc, Some(ca_pem), resolve)
    }

    pub fn from_configuration(
        doc: &Value,
        ca_override: Option<&str>,
        resolve: ServiceResolver<'_>,
    ) -> anyhow::Result<Self> {
        if doc.get("kind").and_then(Value::as_str) != Some("MutatingWebhookConfiguration") {
            bail!("not a MutatingWebhookConfiguration");
        }
        let mut webhooks = Vec::new();
        for w in doc
            .get("webhooks")
            .and_then(Value::as_array)
            .context("no webhooks")?
        {
            let name = str_at(w, "/name");
            let cc = w
                .get("clientConfig")
                .context("webhook without clientConfig")?;
            let ca_pem = match ca_override {
                Some(ca) => ca.to_string(),
                None => {
                    let b = base64::engine::general_purpose::STANDARD
                        .decode(str_at(cc, "/caBundle"))
                        .context("caBundle is not base64")?;
                    String::from_utf8(b).context("caBundle is not PEM")?
                }
            };
            let endpoint = if let Some(svc) = cc.get("service") {
                let (sname, sns) = (str_at(svc, "/name"), str_at(svc, "/namespace"));
                let port = svc.get("port").and_then(Value::as_u64).unwrap_or(443) as u16;
                let path = svc
                    .get("path")
                    .and_then(Value::as_str)
                    .unwrap_or("/")
                    .to_string();
                let addr = resolve(&sns, &sname, port).with_context(|| {
                    format!("service {sns}/{sname}:{port} has no endpoint in the rig")
                })?;
                let server_name = format!("{sname}.{sns}.svc");
                Endpoint {
                    addrs: Arc::new(Mutex::new(vec![addr])),
                    next: Arc::default(),
                    service: Some((sns.clone(), sname.clone())),
                    display_url: format!("https://{server_name}:{port}{path}"),
                    server_name,
                    path,
                }
            } else {
                let url = str_at(cc, "/url");
                let rest = url
                    .strip_prefix("https://")
                    .context("webhook url must be https")?;
                let (hostport, path) = rest
                    .split_once('/')
                    .map(|(h, p)| (h, format!("/{p}")))
                    .unwrap_or((rest, "/".into()));
                let addr: SocketAddr = hostport
                    .parse()
                    .with_context(|| format!("the rig only calls IP:port URLs, got {hostport}"))?;
                Endpoint {
                    addrs: Arc::new(Mutex::new(vec![addr])),
                    next: Arc::default(),
                    service: None,
                    server_name: addr.ip().to_string(),
                    path,
                    display_url: url.clone(),
                }
            };
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
                roots.add(cert.context("caBundle certificate")?)?;
            }
            let mut tls = rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth();
            tls.alpn_protocols = vec![b"http/1.1".to_vec()];
            let policy = match w
                .get("failurePolicy")
                .and_then(Value::as_str)
                .unwrap_or("Fail")
            {
                "Ignore" => FailurePolicy::Ignore,
                "Fail" => FailurePolicy::Fail,
                other => bail!("unknown failurePolicy {other}"),
            };
            let secs = w
                .get("timeoutSeconds")
                .and_then(Value::as_u64)
                .unwrap_or(10);
            if !(1..=30).contains(&secs) {
                bail!("timeoutSeconds must be between 1 and 30, got {secs}");
            }
            let versions = w
                .get("admissionReviewVersions")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if !versions.iter().any(|v| v == "v1") {
                bail!("webhook {name}: admissionReviewVersions must include v1");
            }
            webhooks.push(Webhook {
                name,
                endpoint,
                tls: Arc::new(tls),
                namespace_selector: LabelSelector::from_object(w.get("namespaceSelector"))
                    .map_err(anyhow::Error::msg)?,
                object_selector: LabelSelector::from_object(w.get("objectSelector"))
                    .map_err(anyhow::Error::msg)?,
                timeout: Duration::from_secs(secs),
                failure_policy: policy,
                rules: w
                    .get("rules")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
            });
        }
        Ok(Self {
            webhooks,
            records: Mutex::new(Vec::new()),
        })
    }

    /// Sets the ready endpoints of the Service `namespace/name` for every webhook that calls
    /// it, as the endpoints controller does when replicas start, turn unready or go.
    pub fn set_endpoints(&self, namespace: &str, name: &str, addrs: Vec<SocketAddr>) {
        for w in &self.webhooks {
            if w.endpoint
                .service
                .as_ref()
                .is_some_and(|(ns, n)| ns == namespace && n == name)
            {
                *w.endpoint.addrs.lock().expect("endpoints lock") = addrs.clone();
            }
        }
    }

    pub fn records(&self) -> Vec<Record> {
        self.records.lock().expect("records lock").clone()
    }

    fn rules_match(rules: &[Value]) -> bool {
        let has = |r: &Value, field: &str, want: &str| {
            r.get(field)
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|x| x == want || x == "*"))
        };
        rules.iter().any(|r| {
            (has(r, "operations", "CREATE"))
                && has(r, "apiGroups", "")
                && has(r, "apiVersions", "v1")
                && (has(r, "resources", "pods") || has(r, "resources", "*/*"))
        })
    }

    async fn admit_pod(
        &self,
        store: &Store,
        namespace: &str,
        mut pod: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let ns = store.get(resources::namespaces(), "", namespace)?;
        let ns_labels = labels_of(&ns);
        for w in &self.webhooks {
            let started = Instant::now();
            let pod_name = {
                let n = str_at(&pod, "/metadata/name");
                if n.is_empty() {
                    str_at(&pod, "/metadata/generateName")
                } else {
                    n
                }
            };
            let outcome = if !Self::rules_match(&w.rules) {
                Outcome::NotCalled("rules do not match pod CREATE".into())
            } else if !w.namespace_selector.matches(&ns_labels) {
                Outcome::NotCalled("namespaceSelector does not match".into())
            } else if !w.object_selector.matches(&labels_of(&pod)) {
                Outcome::NotCalled("objectSelector does not match".into())
            } else {
                match call(w, namespace, &pod, dry_run).await {
                    Ok(CallResult::Allowed(patch)) => match apply(&mut pod, &patch) {
                        Ok(()) => Outcome::Patched(patch),
                        Err(e) => Outcome::Failed {
                            error: e,
                            ignored: w.failure_policy == FailurePolicy::Ignore,
                        },
                    },
                    Ok(CallResult::Denied(code, msg)) => {
                        self.record(
                            w,
                            namespace,
                            &pod_name,
                            Outcome::Denied(msg.clone()),
                            started,
                        );
                        let mut e = ApiError::forbidden(format!(
                            "admission webhook \"{}\" denied the request: {msg}",
                            w.name
                        ));
                        e.code = code;
                        return Err(e);
                    }
                    Err(error) => Outcome::Failed {
                        error,
                        ignored: w.failure_policy == FailurePolicy::Ignore,
                    },
                }
            };
            if let Outcome::Failed {
                error,
                ignored: false,
            } = &outcome
            {
                self.record(w, namespace, &pod_name, outcome.clone(), started);
                return Err(ApiError::internal(format!(
                    "failed calling webhook \"{}\": {error}",
                    w.name
                )));
            }
            if let Outcome::Failed { error, .. } = &outcome {
                tracing::warn!(webhook = %w.name, %error, "webhook call failed; failurePolicy Ignore admits the pod unchanged");
            }
            self.record(w, namespace, &pod_name, outcome, started);
        }
        Ok(pod)
    }

    fn record(&self, w: &Webhook, namespace: &str, pod: &str, outcome: Outcome, started: Instant) {
        self.records.lock().expect("records lock").push(Record {
            at: started,
            webhook: w.name.clone(),
            namespace: namespace.into(),
            pod: pod.into(),
            outcome,
            latency: started.elapsed(),
        });
    }
}

impl PodAdmission for Admission {
    fn admit<'a>(
        &'a self,
        store: &'a Store,
        namespace: &'a str,
        pod: Value,
        dry_run: bool,
    ) -> BoxFuture<'a, Result<Value, ApiError>> {
        Box::pin(self.admit_pod(store, namespace, pod, dry_run))
    }
}

enum CallResult {
    Allowed(Value),
    Denied(u16, String),
}

/// The AdmissionReview the API server sends for a pod CREATE.
pub fn review_request(uid: &str, namespace: &str, pod: &Value, dry_run: bool) -> Value {
    let gvk = json!({"group": "", "version": "v1", "kind": "Pod"});
    let gvr = json!({"group": "", "version": "v1", "resource": "pods"});
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": gvk, "resource": gvr, "requestKind": gvk, "requestResource": gvr,
            "name": str_at(pod, "/metadata/name"),
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller", "uid": "rig", "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]},
            "object": pod,
            "oldObject": null,
            "dryRun": dry_run,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    })
}

async fn call(
    w: &Webhook,
    namespace: &str,
    pod: &Value,
    dry_run: bool,
) -> Result<CallResult, String> {
    let uid = crate::time::uuid();
    let body = review_request(&uid, namespace, pod, dry_run).to_string();
    let secs = w.timeout.as_secs();
    let url = format!("{}?timeout={secs}s", w.endpoint.display_url);
    let addr = {
        let addrs = w.endpoint.addrs.lock().expect("endpoints lock");
        if addrs.is_empty() {
            let service = w.endpoint.service.as_ref().map_or("", |(_, n)| n.as_str());
            return Err(format!(
                "failed to call webhook: Post \"{url}\": no endpoints available for service \"{service}\""
            ));
        }
        let i = w
            .endpoint
            .next
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        addrs[i % addrs.len()]
    };
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("dial tcp {addr}: {e}"))?;
        let name = rustls::pki_types::ServerName::try_from(w.endpoint.server_name.clone())
            .map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(w.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("tls: failed to verify certificate: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
        let conn = tokio::spawn(conn);
        let req = hyper::Request::post(format!("{}?timeout={secs}s", w.endpoint.path))
            .header("host", &w.endpoint.server_name)
            .header("content-type", "application/json")
            .header("accept", "application/json, */*")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), 3 * 1024 * 1024)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        conn.abort();
        Ok::<_, String>((status, bytes))
    };
    let (status, bytes) = tokio::time::timeout(w.timeout, exchange)
        .await
        .map_err(|_| format!("failed to call webhook: Post \"{url}\": context deadline exceeded"))?
        .map_err(|e| format!("failed to call webhook: Post \"{url}\": {e}"))?;
    if !status.is_success() {
        return Err(format!(
            "received invalid webhook response: expected status 200, got {status}: {}",
            String::from_utf8_lossy(&bytes)
        ));
    }
    let review: Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("received invalid webhook response: {e}"))?;
    let response = review
        .get("response")
        .ok_or("received invalid webhook response: missing response")?;
    if str_at(response, "/uid") != uid {
        return Err(format!(
            "expected response.uid={uid}, got {}",
            str_at(response, "/uid")
        ));
    }
    if response.get("allowed").and_then(Value::as_bool) != Some(true) {
        let code = response
            .pointer("/status/code")
            .and_then(Value::as_u64)
            .unwrap_or(403) as u16;
        return Ok(CallResult::Denied(
            code,
            str_at(response, "/status/message"),
        ));
    }
    let patch = match response.get("patch") {
        None | Some(Value::Null) => return Ok(CallResult::Allowed(json!([]))),
        // The wire format is a base64 string; kube-rs's AdmissionResponse serialises its
        // Vec<u8> as an array of numbers. The API server takes both (JSON bytes are []byte).
        Some(Value::String(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("patch is not base64: {e}"))?,
        Some(Value::Array(nums)) => nums
            .iter()
            .map(|n| {
                n.as_u64()
                    .filter(|n| *n < 256)
                    .map(|n| n as u8)
                    .ok_or("patch byte out of range")
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(format!("unexpected patch {other}")),
    };
    if let Some(t) = response.get("patchType").and_then(Value::as_str)
        && t != "JSONPatch"
    {
        return Err(format!("unsupported patch type {t}"));
    }
    let patch: Value =
        serde_json::from_slice(&patch).map_err(|e| format!("patch is not JSON: {e}"))?;
    Ok(CallResult::Allowed(patch))
}

fn apply(pod: &mut Value, patch: &Value) -> Result<(), String> {
    if patch.as_array().is_some_and(Vec::is_empty) {
        return Ok(());
    }
    let before_name = (
        str_at(pod, "/metadata/name"),
        str_at(pod, "/metadata/namespace"),
    );
    super::patch::json_patch(pod, patch)
        .map_err(|e| format!("JSON patch from webhook could not be applied: {e}"))?;
    if (
        str_at(pod, "/metadata/name"),
        str_at(pod, "/metadata/namespace"),
    ) != before_name
    {
        return Err("a webhook may not change the object's name or namespace".into());
    }
    Ok(())
}

/// The first MutatingWebhookConfiguration document in the YAML files under `dir`.
pub fn find_webhook_configuration(dir: &Path) -> anyhow::Result<Value> {
    let mut files = Vec::new();
    collect_yaml(dir, 0, &mut files)?;
    // Top-level files first: the base, not an overlay's patch.
    files.sort_by_key(|p| (p.components().count(), p.clone()));
    for f in files {
        let text = std::fs::read_to_string(&f)?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let Ok(v) = serde_yaml::Value::deserialize(doc) else {
                continue;
            };
            let Ok(v) = serde_json::to_value(v) else {
                continue;
            };
            if v.get("kind").and_then(Value::as_str) == Some("MutatingWebhookConfiguration")
                && v.get("webhooks").is_some()
            {
                return Ok(v);
            }
        }
    }
    bail!("no MutatingWebhookConfiguration under {}", dir.display())
}

use serde::Deserialize;

fn collect_yaml(dir: &Path, depth: usize, out: &mut Vec<std::path::PathBuf>) -> anyhow::Result<()> {
    if depth > 4 {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_yaml(&path, depth + 1, out)?;
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    Ok(())
}
