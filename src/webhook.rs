//! The mutating admission webhook: AdmissionReview in, JSON Patch out (readiness gates, and
//! the preStop sleep when it is on).
//!
//! Answers from the in-memory index only. Outcomes map to HTTP deliberately: a request we
//! cannot read is a 400 with a message; an internal fault (caches not synced) is a 503 so the
//! webhook configuration's failurePolicy decides; never a denial, never a silent allow.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::{DynamicObject, Resource};
use serde_json::Value;

use crate::cache::Cache;
use crate::gates;
use crate::metrics::{Admission, Metrics};
use crate::review::PodView;
use crate::termination::{self, PRESTOP_SLEEP_ANNOTATION, PrestopSleep};

pub const PATH: &str = "/mutate-v1-pod";

#[derive(Clone)]
pub struct WebhookState {
    pub cache: Arc<Cache>,
    pub metrics: Arc<Metrics>,
    /// The `--prestop-sleep` flag: the sleep where no annotation says otherwise.
    pub prestop_sleep: PrestopSleep,
}

/// The admission router; bodies over `max_body_bytes` get a 413.
pub fn router(state: WebhookState, max_body_bytes: usize) -> Router {
    Router::new()
        .route(PATH, post(mutate))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// Why a request got no AdmissionReview answer.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("request body rejected: {1}")]
    Body(StatusCode, String),
    #[error("invalid AdmissionReview: {0}")]
    Invalid(String),
    #[error("readygate caches are not synced yet")]
    NotSynced,
    #[error("could not encode the patch: {0}")]
    Encode(String),
}

impl Failure {
    fn status(&self) -> StatusCode {
        match self {
            Failure::Body(status, _) => *status,
            Failure::Invalid(_) => StatusCode::BAD_REQUEST,
            Failure::NotSynced => StatusCode::SERVICE_UNAVAILABLE,
            Failure::Encode(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

async fn mutate(
    State(state): State<WebhookState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let (outcome, response) = match body
        .map_err(|e| Failure::Body(e.status(), e.body_text()))
        .and_then(|b| review(&state, &b))
        .and_then(|(outcome, review)| {
            let json = encode(&review).map_err(|e| Failure::Encode(e.to_string()))?;
            Ok((outcome, json))
        }) {
        Ok((outcome, json)) => (
            outcome,
            ([(CONTENT_TYPE, "application/json")], json).into_response(),
        ),
        Err(failure) => {
            tracing::warn!(error = %failure, "admission request failed");
            (
                Admission::Error,
                (failure.status(), failure.to_string()).into_response(),
            )
        }
    };
    state.metrics.admission(outcome);
    state
        .metrics
        .admission_seconds
        .observe(started.elapsed().as_secs_f64());
    response
}

fn review(
    state: &WebhookState,
    body: &[u8],
) -> Result<(Admission, AdmissionReview<DynamicObject>), Failure> {
    // The one-pass read; a body it does not take is read the full way, which answers (and
    // refuses) exactly as before.
    if let Some(req) = crate::review::request(body) {
        return decide(state, req);
    }
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_slice(body).map_err(|e| Failure::Invalid(e.to_string()))?;
    let req: AdmissionRequest<DynamicObject> = review
        .try_into()
        .map_err(|_| Failure::Invalid("no request".into()))?;
    decide(state, req)
}

/// An admitted object: its metadata, and its other fields as JSON (all of them, or at least
/// those the patches read).
trait Admitted: Resource {
    fn data(&self) -> &Value;
}
impl Admitted for DynamicObject {
    fn data(&self) -> &Value {
        &self.data
    }
}
impl Admitted for PodView {
    fn data(&self) -> &Value {
        &self.data
    }
}

fn decide<T: Admitted>(
    state: &WebhookState,
    req: AdmissionRequest<T>,
) -> Result<(Admission, AdmissionReview<DynamicObject>), Failure> {
    let allowed = AdmissionResponse::from(&req);

    let is_pod = req.kind.group.is_empty() && req.kind.kind == "Pod" && req.sub_resource.is_none();
    if !is_pod || req.operation != Operation::Create {
        return Ok((Admission::Skipped, allowed.into_review()));
    }
    let Some(pod) = req.object.as_ref() else {
        return Err(Failure::Invalid("pod CREATE without an object".into()));
    };
    let namespace = req
        .namespace
        .as_deref()
        .or(pod.meta().namespace.as_deref())
        .unwrap_or("default");
    let no_labels = BTreeMap::new();
    let labels = pod.meta().labels.as_ref().unwrap_or(&no_labels);

    let (wanted, namespace_sleep) = {
        let ix = state.cache.read();
        let synced = ix.synced();
        if !(synced.bindings && synced.services) {
            return Err(Failure::NotSynced);
        }
        let wanted = ix.gates_for(namespace, labels);
        // A gated pod's preStop sleep may come from its namespace's annotation.
        if !wanted.is_empty() && !synced.namespaces {
            return Err(Failure::NotSynced);
        }
        let namespace_sleep = ix.namespace_prestop_sleep(namespace).map(str::to_string);
        (wanted, namespace_sleep)
    };
    let pod_name = pod
        .meta()
        .name
        .as_deref()
        .or(pod.meta().generate_name.as_deref())
        .unwrap_or("");
    // A pod that gets no gate is behind no load balancer of ours: left as it is.
    let sleep = if wanted.is_empty() {
        PrestopSleep::Off
    } else {
        let on_pod = pod
            .meta()
            .annotations
            .as_ref()
            .and_then(|a| a.get(PRESTOP_SLEEP_ANNOTATION))
            .map(String::as_str);
        prestop_sleep(
            state,
            namespace,
            pod_name,
            on_pod,
            namespace_sleep.as_deref(),
        )
    };
    // `data` holds the raw JSON of everything but apiVersion, kind and metadata (at least the
    // parts the patches read).
    let gates = gates::gate_patch(pod.data(), &wanted);
    let prestop = termination::prestop_patch(pod.data(), &wanted, sleep);
    let Some(patch) = termination::admission_patch(gates.as_ref(), prestop.as_ref()) else {
        tracing::info!(namespace, pod = pod_name, uid = %req.uid, dry_run = req.dry_run, "admitted; nothing to add");
        return Ok((Admission::Allowed, allowed.into_review()));
    };
    let added = gates.map(|g| g.added).unwrap_or_default();
    match &prestop {
        Some(p) => {
            tracing::info!(namespace, pod = pod_name, uid = %req.uid, dry_run = req.dry_run, gates = ?added, prestop_sleep = %sleep, containers = ?p.containers, grace_seconds = p.grace_seconds, "readiness gates and preStop sleep injected");
            state.metrics.prestop_injected.inc();
        }
        None => {
            tracing::info!(namespace, pod = pod_name, uid = %req.uid, dry_run = req.dry_run, gates = ?added, "readiness gates injected")
        }
    }
    state.metrics.gates_injected.inc_by(added.len() as u64);
    let response = allowed
        .with_patch(patch)
        .map_err(|e| Failure::Encode(e.to_string()))?;
    Ok((Admission::Patched, response.into_review()))
}

/// The answer as `Json(review)` writes it, byte for byte, with the patch's bytes (a JSON array
/// of numbers, as kube-core holds them) written from a table: serde's one call per byte was a
/// tenth of the webhook's CPU time.
fn encode(review: &AdmissionReview<DynamicObject>) -> Result<Vec<u8>, serde_json::Error> {
    let r = match &review.response {
        Some(r)
            if review.request.is_none()
                && r.audit_annotations.is_empty()
                && r.warnings.is_none() =>
        {
            r
        }
        _ => return serde_json::to_vec(review),
    };
    let patch = r.patch.as_deref().unwrap_or_default();
    let mut out = Vec::with_capacity(256 + 4 * patch.len());
    out.extend_from_slice(b"{\"apiVersion\":");
    serde_json::to_writer(&mut out, &review.types.api_version)?;
    out.extend_from_slice(b",\"kind\":");
    serde_json::to_writer(&mut out, &review.types.kind)?;
    out.extend_from_slice(b",\"response\":{\"uid\":");
    serde_json::to_writer(&mut out, &r.uid)?;
    out.extend_from_slice(b",\"allowed\":");
    serde_json::to_writer(&mut out, &r.allowed)?;
    out.extend_from_slice(b",\"status\":");
    serde_json::to_writer(&mut out, &r.result)?;
    // `with_patch` is the only way `decide` sets a patch, and it sets the patch type with it
    // (a private field, so it cannot be read here).
    if r.patch.is_some() {
        out.extend_from_slice(b",\"patch\":");
        byte_array(&mut out, patch);
        out.extend_from_slice(b",\"patchType\":\"JSONPatch\"");
    }
    out.extend_from_slice(b"}}");
    Ok(out)
}

/// Bytes as serde writes a `Vec<u8>` to JSON: `[91,123,34]`.
fn byte_array(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'[');
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let (hundreds, tens, ones) = (b / 100, b / 10 % 10, b % 10);
        if hundreds > 0 {
            out.push(b'0' + hundreds);
        }
        if hundreds > 0 || tens > 0 {
            out.push(b'0' + tens);
        }
        out.push(b'0' + ones);
    }
    out.push(b']');
}

/// The sleep for a pod from its annotation, its namespace's and the flag. An annotation that
/// does not parse is logged, counted and taken as off: a typo must not block pod creation.
fn prestop_sleep(
    state: &WebhookState,
    namespace: &str,
    pod: &str,
    on_pod: Option<&str>,
    on_namespace: Option<&str>,
) -> PrestopSleep {
    match termination::resolve(on_pod, on_namespace, state.prestop_sleep) {
        Ok(setting) => setting.sleep,
        Err(invalid) => {
            let source = invalid.on.as_str();
            tracing::warn!(namespace, pod, source, value = %invalid.value, error = %invalid.error, "invalid {PRESTOP_SLEEP_ANNOTATION} annotation; no preStop sleep for this pod");
            state.metrics.prestop_invalid_annotation(invalid.on);
            PrestopSleep::Off
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Binding, NamespaceSettings, PortRef, Service, TargetType};
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use serde_json::{Value, json};
    use tower::ServiceExt;

    /// Lists namespace `shop`'s Service `web` (app=web) and binding `web-tgb` on it.
    fn list_shop(ix: &mut crate::index::Index) {
        ix.replace_services(vec![(
            "shop".into(),
            "web".into(),
            Service {
                selector: [("app".to_string(), "web".to_string())].into(),
                ports: vec![],
            },
        )]);
        ix.replace_bindings(vec![(
            "shop".into(),
            Binding {
                name: "web-tgb".into(),
                target_group_arn: "arn".into(),
                target_type: TargetType::Ip,
                service_name: "web".into(),
                service_port: PortRef::Number(80),
                ip_family: Default::default(),
                aws_controller: false,
            },
        )]);
    }

    /// `shop` listed and synced, the namespace carrying `namespace_sleep` as its preStop
    /// annotation, and the flag at `prestop_sleep`.
    fn state_with(namespace_sleep: Option<&str>, prestop_sleep: PrestopSleep) -> WebhookState {
        let cache = Arc::new(Cache::default());
        {
            let mut ix = cache.write();
            list_shop(&mut ix);
            ix.replace_namespaces(vec![(
                "shop".into(),
                NamespaceSettings {
                    opted_in: true,
                    prestop_sleep: namespace_sleep.map(str::to_string),
                },
            )]);
        }
        WebhookState {
            cache,
            metrics: Arc::new(Metrics::new()),
            prestop_sleep,
        }
    }

    fn state(synced: bool) -> WebhookState {
        if synced {
            return state_with(None, PrestopSleep::Off);
        }
        WebhookState {
            cache: Arc::new(Cache::default()),
            metrics: Arc::new(Metrics::new()),
            prestop_sleep: PrestopSleep::Off,
        }
    }

    pub fn review_json(kind: &str, operation: &str, pod: Value) -> Value {
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": { "group": "", "version": "v1", "kind": kind },
                "resource": { "group": "", "version": "v1", "resource": "pods" },
                "requestKind": { "group": "", "version": "v1", "kind": kind },
                "requestResource": { "group": "", "version": "v1", "resource": "pods" },
                "namespace": "shop",
                "operation": operation,
                "userInfo": { "username": "system:serviceaccount:kube-system:replicaset-controller" },
                "object": pod,
                "oldObject": null,
                "dryRun": false,
                "options": { "apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions" }
            }
        })
    }

    fn web_pod() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "generateName": "web-5f7-", "namespace": "shop", "labels": { "app": "web" } },
            "spec": { "containers": [{ "name": "web", "image": "nginx" }] }
        })
    }

    async fn call(state: WebhookState, body: impl Into<Body>) -> (StatusCode, Vec<u8>) {
        let res = router(state, 64 * 1024)
            .oneshot(
                Request::post(PATH)
                    .header("content-type", "application/json")
                    .body(body.into())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = res.status();
        (
            status,
            res.into_body().collect().await.unwrap().to_bytes().to_vec(),
        )
    }

    /// Applies the response's patch to `pod`.
    pub fn patched(response: &Value, pod: &Value) -> Value {
        let mut out = pod.clone();
        json_patch::patch(&mut out, &patch_of(response)).unwrap();
        out
    }

    /// The response's patch (a base64 string or a byte array).
    fn patch_of(response: &Value) -> json_patch::Patch {
        let raw = &response["response"]["patch"];
        let bytes: Vec<u8> = match raw {
            Value::Array(a) => a.iter().map(|b| b.as_u64().unwrap() as u8).collect(),
            Value::String(s) => {
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, s).unwrap()
            }
            _ => panic!("no patch in {response}"),
        };
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn pod_create_gets_the_gate() {
        let st = state(true);
        let (status, body) = call(
            st.clone(),
            review_json("Pod", "CREATE", web_pod()).to_string(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(v["response"]["allowed"], true);
        assert_eq!(v["response"]["patchType"], "JSONPatch");
        let out = patched(&v, &web_pod());
        assert_eq!(
            out["spec"]["readinessGates"],
            json!([{ "conditionType": "target-health.elbv2.k8s.aws/web-tgb" }])
        );
        assert!(
            st.metrics
                .encode()
                .contains("readygate_gates_injected_total 1")
        );
    }

    #[tokio::test]
    async fn dry_run_gives_the_same_answer() {
        let mut r = review_json("Pod", "CREATE", web_pod());
        r["request"]["dryRun"] = json!(true);
        let (status, body) = call(state(true), r.to_string()).await;
        assert_eq!(status, StatusCode::OK);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            patched(&v, &web_pod())["spec"]["readinessGates"][0]["conditionType"],
            "target-health.elbv2.k8s.aws/web-tgb"
        );
    }

    #[tokio::test]
    async fn other_operations_and_kinds_pass_unchanged() {
        for (kind, op) in [
            ("Pod", "UPDATE"),
            ("Pod", "DELETE"),
            ("Deployment", "CREATE"),
        ] {
            let (status, body) =
                call(state(true), review_json(kind, op, web_pod()).to_string()).await;
            assert_eq!(status, StatusCode::OK, "{kind} {op}");
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["response"]["allowed"], true);
            assert!(
                v["response"].get("patch").is_none_or(Value::is_null),
                "{kind} {op}: {v}"
            );
        }
    }

    #[tokio::test]
    async fn unmatched_pod_is_allowed_without_patch() {
        let mut pod = web_pod();
        pod["metadata"]["labels"] = json!({ "app": "api" });
        let (_, body) = call(state(true), review_json("Pod", "CREATE", pod).to_string()).await;
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["response"]["allowed"], true);
        assert!(v["response"].get("patch").is_none_or(Value::is_null));
    }

    #[tokio::test]
    async fn garbage_is_a_400_with_a_message() {
        let (status, body) = call(state(true), "{not json").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(String::from_utf8_lossy(&body).contains("invalid AdmissionReview"));
        let (status, _) = call(
            state(true),
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).to_string(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn oversized_body_is_a_413() {
        let mut pod = web_pod();
        pod["metadata"]["annotations"] = json!({ "big": "x".repeat(100 * 1024) });
        let (status, body) = call(state(true), review_json("Pod", "CREATE", pod).to_string()).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(
            String::from_utf8_lossy(&body).contains("length limit exceeded"),
            "{}",
            String::from_utf8_lossy(&body)
        );
    }

    #[tokio::test]
    async fn unsynced_caches_are_a_503_not_an_allow() {
        let st = state(false);
        let (status, body) = call(
            st.clone(),
            review_json("Pod", "CREATE", web_pod()).to_string(),
        )
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(String::from_utf8_lossy(&body).contains("not synced"));
        assert!(
            st.metrics
                .encode()
                .contains("readygate_admissions_total{outcome=\"error\"} 1")
        );
    }

    #[tokio::test]
    async fn annotated_namespace_gets_gates_prestop_and_grace_in_one_patch() {
        let st = state_with(Some("15s"), PrestopSleep::Off);
        let mut pod = web_pod();
        pod["spec"]["terminationGracePeriodSeconds"] = json!(30);
        pod["spec"]["initContainers"] =
            json!([{ "name": "mesh", "image": "envoy", "restartPolicy": "Always" }]);
        let (status, body) = call(
            st.clone(),
            review_json("Pod", "CREATE", pod.clone()).to_string(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let v: Value = serde_json::from_slice(&body).unwrap();
        // Gates first, then the sleep, then the grace period.
        let patch = patch_of(&v);
        let paths: Vec<&str> = patch.0.iter().map(|op| op.path().as_str()).collect();
        assert_eq!(
            paths,
            [
                "/spec/readinessGates",
                "/spec/containers/0/lifecycle",
                "/spec/terminationGracePeriodSeconds"
            ]
        );
        let mut expected = pod.clone();
        expected["spec"]["readinessGates"] =
            json!([{ "conditionType": "target-health.elbv2.k8s.aws/web-tgb" }]);
        expected["spec"]["containers"][0]["lifecycle"] =
            json!({ "preStop": { "sleep": { "seconds": 15 } } });
        expected["spec"]["terminationGracePeriodSeconds"] = json!(45);
        assert_eq!(patched(&v, &pod), expected);
        let text = st.metrics.encode();
        assert!(
            text.contains("readygate_prestop_injected_total 1"),
            "{text}"
        );
        assert!(text.contains("readygate_gates_injected_total 1"), "{text}");
    }

    #[tokio::test]
    async fn the_flag_applies_where_no_annotation_says_otherwise() {
        let st = state_with(None, "5s".parse().unwrap());
        let (_, body) = call(
            st.clone(),
            review_json("Pod", "CREATE", web_pod()).to_string(),
        )
        .await;
        let v: Value = serde_json::from_slice(&body).unwrap();
        let out = patched(&v, &web_pod());
        assert_eq!(
            out["spec"]["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"],
            5
        );
        assert_eq!(out["spec"]["terminationGracePeriodSeconds"], 35);

        // A pod no binding selects gets nothing, the flag notwithstanding.
        let mut api = web_pod();
        api["metadata"]["labels"] = json!({ "app": "api" });
        let (_, body) = call(st, review_json("Pod", "CREATE", api).to_string()).await;
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert!(v["response"].get("patch").is_none_or(Value::is_null));
    }

    #[tokio::test]
    async fn an_invalid_pod_annotation_gives_gates_only_and_is_counted() {
        let st = state_with(Some("15s"), "5s".parse().unwrap());
        let mut pod = web_pod();
        pod["metadata"]["annotations"] = json!({ PRESTOP_SLEEP_ANNOTATION: "a while" });
        let (status, body) = call(
            st.clone(),
            review_json("Pod", "CREATE", pod.clone()).to_string(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["response"]["allowed"], true);
        let mut expected = pod.clone();
        expected["spec"]["readinessGates"] =
            json!([{ "conditionType": "target-health.elbv2.k8s.aws/web-tgb" }]);
        assert_eq!(patched(&v, &pod), expected);
        let text = st.metrics.encode();
        assert!(
            text.contains(r#"readygate_prestop_invalid_annotations_total{source="pod"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("readygate_prestop_injected_total 0"),
            "{text}"
        );
        assert!(
            text.contains(r#"readygate_admissions_total{outcome="patched"} 1"#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn an_invalid_namespace_annotation_is_counted_as_such() {
        let st = state_with(Some("forever"), PrestopSleep::Off);
        let (_, body) = call(
            st.clone(),
            review_json("Pod", "CREATE", web_pod()).to_string(),
        )
        .await;
        let v: Value = serde_json::from_slice(&body).unwrap();
        let out = patched(&v, &web_pod());
        assert!(out["spec"]["containers"][0].get("lifecycle").is_none());
        assert!(
            st.metrics
                .encode()
                .contains(r#"readygate_prestop_invalid_annotations_total{source="namespace"} 1"#)
        );
    }

    #[tokio::test]
    async fn unsynced_namespaces_are_a_503_only_for_gated_pods() {
        // Bindings and Services listed, Namespaces not yet.
        let st = state(false);
        list_shop(&mut st.cache.write());
        let (status, body) = call(
            st.clone(),
            review_json("Pod", "CREATE", web_pod()).to_string(),
        )
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(String::from_utf8_lossy(&body).contains("not synced"));
        // A pod no binding selects needs no namespace setting: allowed as before.
        let mut api = web_pod();
        api["metadata"]["labels"] = json!({ "app": "api" });
        let (status, body) = call(st, review_json("Pod", "CREATE", api).to_string()).await;
        assert_eq!(status, StatusCode::OK);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["response"]["allowed"], true);
    }

    /// The old way: the whole review through kube-core's `AdmissionReview<DynamicObject>`.
    fn full_read(
        state: &WebhookState,
        body: &[u8],
    ) -> Result<(Admission, AdmissionReview<DynamicObject>), Failure> {
        let review: AdmissionReview<DynamicObject> =
            serde_json::from_slice(body).map_err(|e| Failure::Invalid(e.to_string()))?;
        let req: AdmissionRequest<DynamicObject> = review
            .try_into()
            .map_err(|_| Failure::Invalid("no request".into()))?;
        decide(state, req)
    }

    /// What the API server gets: HTTP status, outcome, and the body's bytes or the message.
    fn answer(r: Result<(Admission, AdmissionReview<DynamicObject>), Failure>) -> (u16, String) {
        match r {
            Ok((outcome, review)) => (
                200,
                format!(
                    "{} {}",
                    outcome.label(),
                    serde_json::to_string(&review).unwrap()
                ),
            ),
            Err(f) => (f.status().as_u16(), f.to_string()),
        }
    }

    /// Random reviews over the shapes a pod can take (and some it should not): the one-pass
    /// read answers each exactly as the full read, byte for byte, and takes the ordinary ones.
    #[test]
    fn the_one_pass_read_answers_as_the_full_read() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(10);
        let states = [
            state(true),
            state(false),
            state_with(Some("15s"), "5s".parse().unwrap()),
            state_with(Some("soon"), PrestopSleep::Off),
        ];
        let pick = |rng: &mut StdRng, from: &[Value]| from[rng.random_range(0..from.len())].clone();
        let labels = [
            json!({ "app": "web" }),
            json!({ "app": "api" }),
            json!({}),
            Value::Null,
            json!({ "app": "web", "x": "y" }),
        ];
        let gates = [
            Value::Null,
            json!([]),
            json!([{ "conditionType": "target-health.alb.ingress.k8s.aws/old" }]),
            json!([{ "conditionType": "example.com/x" }, { "conditionType": "target-health.elbv2.k8s.aws/web-tgb" }]),
            json!([{ "conditionType": "example.com/x" }]),
            json!("not a list"),
        ];
        let containers = [
            json!([{ "name": "web", "image": "nginx" }]),
            json!([{ "name": "web", "lifecycle": null }, { "name": "side", "lifecycle": { "postStart": { "exec": { "command": ["true"] } } } }]),
            json!([{ "name": "web", "lifecycle": { "preStop": { "sleep": { "seconds": 3 } } } }, { "image": "x" }]),
            json!([{ "name": "web", "lifecycle": "odd" }, 5, null]),
            json!([]),
            json!({ "not": "a list" }),
        ];
        let graces = [Value::Null, json!(30), json!("30"), json!(-1), json!(1.5)];
        let annotations = [
            Value::Null,
            json!({ PRESTOP_SLEEP_ANNOTATION: "20s" }),
            json!({ PRESTOP_SLEEP_ANNOTATION: "bad" }),
            json!({ PRESTOP_SLEEP_ANNOTATION: "off" }),
            json!({ "other": "x" }),
        ];
        let (mut fast, mut total) = (0, 0);
        for i in 0..3000 {
            let mut pod = web_pod();
            match pick(&mut rng, &labels) {
                Value::Null => drop(pod["metadata"].as_object_mut().unwrap().remove("labels")),
                l => pod["metadata"]["labels"] = l,
            }
            if let a @ Value::Object(_) = pick(&mut rng, &annotations) {
                pod["metadata"]["annotations"] = a;
            }
            let g = pick(&mut rng, &gates);
            if !g.is_null() || rng.random_bool(0.3) {
                pod["spec"]["readinessGates"] = g;
            }
            pod["spec"]["containers"] = pick(&mut rng, &containers);
            if let g @ (Value::Number(_) | Value::String(_)) = pick(&mut rng, &graces) {
                pod["spec"]["terminationGracePeriodSeconds"] = g;
            }
            pod["status"] = json!({ "phase": "Pending" });
            match rng.random_range(0..40) {
                0 => drop(pod.as_object_mut().unwrap().remove("spec")),
                1 => pod["spec"] = json!("odd"),
                2 => drop(pod.as_object_mut().unwrap().remove("metadata")),
                3 => pod["metadata"]["labels"] = json!({ "app": 5 }),
                4 => pod = json!(["not", "an", "object"]),
                _ => {}
            }
            let (kind, op) = match rng.random_range(0..10) {
                0 => ("Pod", "UPDATE"),
                1 => ("Deployment", "CREATE"),
                _ => ("Pod", "CREATE"),
            };
            let mut r = review_json(kind, op, pod);
            match rng.random_range(0..30) {
                0 => drop(r["request"].as_object_mut().unwrap().remove("namespace")),
                1 => r["request"]["subResource"] = json!("status"),
                2 => r["request"]["dryRun"] = json!(true),
                3 => drop(r.as_object_mut().unwrap().remove("apiVersion")),
                4 => r["response"] = json!({ "uid": "x", "allowed": true }),
                5 => r["request"] = Value::Null,
                6 => drop(r["request"].as_object_mut().unwrap().remove("userInfo")),
                7 => r["request"]["operation"] = json!("EXPLODE"),
                8 => r["request"]["object"] = Value::Null,
                _ => {}
            }
            let mut body = r.to_string();
            match rng.random_range(0..30) {
                // A key written with an escape, and duplicate keys.
                0 => body = body.replacen("\"spec\"", "\"sp\\u0065c\"", 1),
                1 => {
                    body = body.replacen("\"containers\":", "\"containers\":[],\"containers\":", 1)
                }
                2 => body = body.replacen("\"labels\":", "\"labels\":{},\"labels\":", 1),
                3 => body.truncate(body.len() / 2),
                _ => {}
            }
            let st = &states[i % states.len()];
            total += 1;
            fast += usize::from(crate::review::request(body.as_bytes()).is_some());
            assert_eq!(
                answer(review(st, body.as_bytes())),
                answer(full_read(st, body.as_bytes())),
                "{body}"
            );
        }
        // Half of them or so take the one-pass read: a third of the container lists above have
        // shapes it refuses on purpose, and so do some of the rarer changes.
        assert!(fast * 10 > total * 4, "{fast} of {total}");
        let ordinary = review_json("Pod", "CREATE", web_pod()).to_string();
        assert!(crate::review::request(ordinary.as_bytes()).is_some());
    }

    #[test]
    fn byte_arrays_are_written_as_serde_writes_them() {
        let all: Vec<u8> = (0..=255).collect();
        for bytes in [&all[..], &[], &[0], &[100, 7, 255]] {
            let mut out = Vec::new();
            byte_array(&mut out, bytes);
            assert_eq!(out, serde_json::to_vec(&bytes.to_vec()).unwrap());
        }
    }
}
