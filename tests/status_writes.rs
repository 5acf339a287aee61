//! Pod status writes checked at the HTTP level against a scripted API server.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::{Request, Response};
use kube::client::Body;
use readygate::domain::{Condition, ConditionStatus};
use readygate::metrics::Metrics;
use readygate::writer::{ConditionWrite, Outcome, Writer, status_patch};
use serde_json::{Value, json};
use tokio::sync::watch;
use tower_test::mock;

type Handle = mock::Handle<Request<Body>, Response<Body>>;

fn client() -> (kube::Client, Handle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), handle)
}

fn write() -> ConditionWrite {
    ConditionWrite {
        namespace: "shop".into(),
        pod: "web-6d9f-x2x7k".into(),
        uid: "7c4f2f6a-0000-4000-8000-000000000001".into(),
        binding: "web-tgb".into(),
        condition: Condition {
            status: ConditionStatus::True,
            reason: "Elb.Healthy".into(),
            message: "Target is healthy".into(),
            last_transition_time: Some("2026-11-21T10:00:09Z".into()),
        },
    }
}

fn status(code: u16, reason: &str) -> Response<Body> {
    let body = json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": format!("scripted {reason}"), "reason": reason, "code": code });
    Response::builder()
        .status(code)
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

type Seen = Option<(String, String, String, Value)>;

/// Runs one write against the scripted server; returns the outcome and the request it saw.
async fn exchange(
    leader: bool,
    answer: impl FnOnce(&Value) -> Response<Body> + Send + 'static,
) -> (Outcome, Seen) {
    let (outcome, seen, _) = counted_exchange(leader, answer).await;
    (outcome, seen)
}

/// `exchange`, also returning the writer's metrics.
async fn counted_exchange(
    leader: bool,
    answer: impl FnOnce(&Value) -> Response<Body> + Send + 'static,
) -> (Outcome, Seen, String) {
    let (client, mut handle) = client();
    let (_tx, rx) = watch::channel(leader);
    let metrics = Arc::new(Metrics::new());
    let writer = Writer::new(
        client,
        rx,
        metrics.clone(),
        Duration::from_secs(5),
        "test".into(),
    );
    let server = tokio::spawn(async move {
        let (req, send) = tokio::time::timeout(Duration::from_secs(2), handle.next_request())
            .await
            .ok()??;
        let method = req.method().to_string();
        let uri = req.uri().to_string();
        let ctype = req
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body: Value =
            serde_json::from_slice(&req.into_body().collect().await.unwrap().to_bytes()).unwrap();
        send.send_response(answer(&body));
        Some((method, uri, ctype, body))
    });
    let outcome = tokio::time::timeout(Duration::from_secs(10), writer.write(&write()))
        .await
        .expect("write finished");
    (outcome, server.await.unwrap(), metrics.encode())
}

#[tokio::test]
async fn condition_is_one_strategic_merge_patch_of_pods_status() {
    let (outcome, seen) = exchange(true, |body| {
        // The API server answers with the pod; echo what a merged pod would look like.
        let pod = json!({ "apiVersion": "v1", "kind": "Pod",
                          "metadata": { "name": "web-6d9f-x2x7k", "namespace": "shop", "uid": body["metadata"]["uid"] },
                          "status": body["status"] });
        Response::builder().status(200).body(Body::from(serde_json::to_vec(&pod).unwrap())).unwrap()
    })
    .await;
    assert_eq!(outcome, Outcome::Written);
    let (method, uri, ctype, body) = seen.expect("one request");
    assert_eq!(method, "PATCH");
    assert_eq!(
        uri.split('?').next().unwrap(),
        "/api/v1/namespaces/shop/pods/web-6d9f-x2x7k/status"
    );
    assert_eq!(ctype, "application/strategic-merge-patch+json");
    assert_eq!(
        body,
        json!({
            "metadata": { "uid": "7c4f2f6a-0000-4000-8000-000000000001" },
            "status": { "conditions": [{
                "type": "target-health.elbv2.k8s.aws/web-tgb",
                "status": "True",
                "reason": "Elb.Healthy",
                "message": "Target is healthy",
                "lastProbeTime": null,
                "lastTransitionTime": "2026-11-21T10:00:09Z"
            }] }
        })
    );
    assert_eq!(body, status_patch(&write()));
}

#[tokio::test]
async fn a_pod_that_is_gone_is_not_an_error() {
    let (outcome, seen) = exchange(true, |_| status(404, "NotFound")).await;
    assert!(seen.is_some());
    assert_eq!(outcome, Outcome::Gone);
}

#[tokio::test]
async fn a_conflict_is_decided_again() {
    let (outcome, seen) = exchange(true, |_| status(409, "Conflict")).await;
    assert!(seen.is_some());
    assert_eq!(outcome, Outcome::Conflict);
}

/// kube-apiserver's answer to a PATCH whose `metadata.uid` is not the stored object's (the
/// patch handler passes no uid precondition; `rest.BeforeUpdate` finds an immutable field
/// changed), for pods/status, where the status strategy validates the metadata a second time.
fn uid_immutable(name: &str, uid: &str) -> Response<Body> {
    let why = format!("Invalid value: \"{uid}\": field is immutable");
    let cause = json!({ "reason": "FieldValueInvalid", "message": why, "field": "metadata.uid" });
    let body = json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": format!("Pod \"{name}\" is invalid: metadata.uid: {why}"),
                       "reason": "Invalid",
                       "details": { "name": name, "kind": "Pod", "causes": [cause.clone(), cause] },
                       "code": 422 });
    Response::builder()
        .status(422)
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

#[tokio::test]
async fn a_replaced_pod_drops_the_write() {
    // A pod of the same name with another uid: the write was for a pod that is gone.
    let (outcome, seen, metrics) = counted_exchange(true, |body| {
        assert_eq!(
            body["metadata"]["uid"],
            write().uid,
            "the patch names the uid"
        );
        uid_immutable("web-6d9f-x2x7k", body["metadata"]["uid"].as_str().unwrap())
    })
    .await;
    assert!(seen.is_some());
    assert_eq!(outcome, Outcome::Replaced);
    assert!(
        metrics.contains(r#"readygate_status_writes_total{outcome="replaced"} 1"#)
            && metrics.contains(r#"readygate_status_writes_total{outcome="failed"} 0"#),
        "{metrics}"
    );

    // Any other 422 is a real failure.
    let (outcome, _, _) = counted_exchange(true, |_| status(422, "Invalid")).await;
    assert_eq!(outcome, Outcome::Failed);
}

#[tokio::test]
async fn server_errors_are_failures() {
    let (outcome, _) = exchange(true, |_| status(500, "InternalError")).await;
    assert_eq!(outcome, Outcome::Failed);
}

#[tokio::test]
async fn a_follower_sends_nothing() {
    let (outcome, seen) = exchange(false, |_| status(500, "unexpected")).await;
    assert_eq!(outcome, Outcome::NotLeader);
    assert!(seen.is_none(), "a follower wrote: {seen:?}");
}
