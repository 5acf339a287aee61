//! Shared test fixtures: a rig API server with a kube-rs client, and a scriptable fake
//! admission webhook over real TLS.
#![allow(dead_code)]

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use rig::apiserver::http::ApiServer;
use rig::apiserver::store::Store;
use rig::certs::Certs;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub fn crypto() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

pub async fn api() -> (ApiServer, kube::Client, Arc<Store>) {
    crypto();
    let store = Arc::new(Store::new());
    let server = ApiServer::start(store.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let client = client_for(&server).await;
    (server, client, store)
}

pub async fn client_for(server: &ApiServer) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&server.kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

#[derive(Clone, Copy, PartialEq, Debug)]
pub enum PatchEncoding {
    /// kube-rs's AdmissionResponse: the patch bytes as a JSON array of numbers.
    ByteArray,
    /// The documented wire format: a base64 string.
    Base64,
}

#[derive(Clone)]
pub struct FakeWebhook {
    pub reviews: Arc<Mutex<Vec<Value>>>,
    pub delay: Arc<Mutex<Duration>>,
    pub encoding: PatchEncoding,
    pub deny: bool,
}

impl FakeWebhook {
    pub fn new(encoding: PatchEncoding) -> Self {
        Self {
            reviews: Arc::default(),
            delay: Arc::default(),
            encoding,
            deny: false,
        }
    }

    /// Serves `/mutate-v1-pod` over TLS with `certs`; adds the gate
    /// `target-health.elbv2.k8s.aws/web` to every pod.
    pub async fn serve(&self, certs: &Certs) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let router = Router::new()
            .route("/mutate-v1-pod", post(review))
            .with_state(self.clone());
        rig::certs::serve_tls(
            router,
            certs.server_config().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap()
    }
}

async fn review(State(hook): State<FakeWebhook>, Json(review): Json<Value>) -> Json<Value> {
    hook.reviews.lock().unwrap().push(review.clone());
    let delay = *hook.delay.lock().unwrap();
    tokio::time::sleep(delay).await;
    let uid = review["request"]["uid"].clone();
    if hook.deny {
        return Json(
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": {
            "uid": uid, "allowed": false, "status": {"code": 403, "message": "no pods today"}}}),
        );
    }
    let has_gates = review["request"]["object"]["spec"]
        .get("readinessGates")
        .is_some();
    let patch = if has_gates {
        json!([{"op": "add", "path": "/spec/readinessGates/-", "value": {"conditionType": "target-health.elbv2.k8s.aws/web"}}])
    } else {
        json!([{"op": "add", "path": "/spec/readinessGates", "value": [{"conditionType": "target-health.elbv2.k8s.aws/web"}]}])
    };
    let bytes = serde_json::to_vec(&patch).unwrap();
    let encoded = match hook.encoding {
        PatchEncoding::ByteArray => json!(bytes),
        PatchEncoding::Base64 => json!(base64::engine::general_purpose::STANDARD.encode(&bytes)),
    };
    Json(
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": {
        "uid": uid, "allowed": true, "patchType": "JSONPatch", "patch": encoded}}),
    )
}

pub fn manifests_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}
