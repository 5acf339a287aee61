//! Leader election against a scripted API server: lead, stop writing at once when a renewal
//! fails, or before the lease could pass on when a renewal hangs; lead again once the lease can
//! be renewed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

use http_body_util::BodyExt;
use hyper::{Request, Response};
use kube::client::Body;
use readygate::leader::{Election, elect};
use readygate::metrics::Metrics;
use serde_json::{Value, json};
use tower_test::mock;

/// How the scripted API server behaves, and what it saw.
#[derive(Default)]
struct Script {
    /// Answer 500 to everything.
    failing: AtomicBool,
    /// Never answer a PATCH (the call hangs).
    hanging: AtomicBool,
    methods: Mutex<Vec<String>>,
    /// When a PATCH was last answered 200.
    last_renewal: Mutex<Option<Instant>>,
    /// PATCHes left without an answer.
    held: Mutex<Vec<mock::SendResponse<Response<Body>>>>,
}

/// A one-Lease API server: GET, POST, and PATCH (merge of `spec`), as `script` says.
fn serve(mut handle: mock::Handle<Request<Body>, Response<Body>>, script: Arc<Script>) {
    tokio::spawn(async move {
        let mut lease: Option<Value> = None;
        let mut version = 1u64;
        while let Some((req, send)) = handle.next_request().await {
            let method = req.method().to_string();
            script.methods.lock().unwrap().push(method.clone());
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let reply = |code: u16, v: &Value| {
                Response::builder()
                    .status(code)
                    .body(Body::from(serde_json::to_vec(v).unwrap()))
                    .unwrap()
            };
            let status = |code: u16, reason: &str| {
                reply(
                    code,
                    &json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code, "message": reason }),
                )
            };
            if script.failing.load(Ordering::SeqCst) {
                send.send_response(status(500, "InternalError"));
                continue;
            }
            if method == "PATCH" && script.hanging.load(Ordering::SeqCst) {
                script.held.lock().unwrap().push(send);
                continue;
            }
            let answer = match (method.as_str(), &mut lease) {
                ("GET", None) => status(404, "NotFound"),
                ("GET", Some(l)) => reply(200, l),
                ("POST", _) => {
                    let mut l: Value = serde_json::from_slice(&body).unwrap();
                    version += 1;
                    l["metadata"]["resourceVersion"] = json!(version.to_string());
                    l["metadata"]["namespace"] = json!("readygate-system");
                    lease = Some(l.clone());
                    reply(201, &l)
                }
                ("PATCH", Some(l)) => {
                    let patch: Value = serde_yaml::from_slice(&body).unwrap();
                    if let Some(spec) = patch.get("spec").and_then(Value::as_object) {
                        for (k, v) in spec {
                            l["spec"][k] = v.clone();
                        }
                    }
                    version += 1;
                    l["metadata"]["resourceVersion"] = json!(version.to_string());
                    *script.last_renewal.lock().unwrap() = Some(Instant::now());
                    reply(200, l)
                }
                _ => status(404, "NotFound"),
            };
            send.send_response(answer);
        }
    });
}

async fn wait_for(rx: &mut tokio::sync::watch::Receiver<bool>, want: bool, within: Duration) {
    tokio::time::timeout(within, rx.wait_for(|v| *v == want))
        .await
        .unwrap_or_else(|_| panic!("leading != {want} after {within:?}"))
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_failed_renewal_stops_writes_at_once_and_leadership_comes_back() {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let script = Arc::new(Script::default());
    serve(handle, script.clone());
    let client = kube::Client::new(service, "readygate-system");
    let metrics = Arc::new(Metrics::new());
    let election = Election::new("readygate", "readygate-system", "replica-a");
    let leadership = elect(client, election, metrics.clone());
    let mut leading = leadership.leading.clone();

    wait_for(&mut leading, true, Duration::from_secs(30)).await;
    assert!(metrics.encode().contains("readygate_leader 1"));

    // The API server fails: the next renewal (10 s before the 15 s lease ends) errs, and the
    // replica stops writing then, before the lease could pass to anyone else.
    script.failing.store(true, Ordering::SeqCst);
    let started = tokio::time::Instant::now();
    wait_for(&mut leading, false, Duration::from_secs(15)).await;
    assert!(
        started.elapsed() <= Duration::from_secs(11),
        "stopped after {:?}",
        started.elapsed()
    );
    assert!(metrics.encode().contains("readygate_leader 0"));

    // Back again: the lease still names us, so we lead again.
    script.failing.store(false, Ordering::SeqCst);
    wait_for(&mut leading, true, Duration::from_secs(60)).await;

    drop(leading);
    leadership.release(Duration::from_secs(10)).await;
    let seen = script.methods.lock().unwrap().clone();
    assert!(
        seen.iter().any(|m| m == "POST"),
        "the lease was created: {seen:?}"
    );
    assert!(
        seen.iter().filter(|m| *m == "PATCH").count() >= 2,
        "renewed and released: {seen:?}"
    );
    // The Role in manifests/base/rbac.yaml grants get, create and patch on leases, no more.
    assert!(
        seen.iter()
            .all(|m| ["GET", "POST", "PATCH"].contains(&m.as_str())),
        "lease calls beyond get/create/patch: {seen:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hung_renewal_stops_writes_before_the_lease_can_pass_on() {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let script = Arc::new(Script::default());
    serve(handle, script.clone());
    let client = kube::Client::new(service, "readygate-system");
    let metrics = Arc::new(Metrics::new());
    let election = Election::new("readygate", "readygate-system", "replica-a");
    let lease = election.duration;
    assert!(election.renew_deadline < lease);
    let leadership = elect(client, election, metrics.clone());
    let mut leading = leadership.leading.clone();
    wait_for(&mut leading, true, Duration::from_secs(30)).await;

    // Renewals go through for a while, then one hangs: the API server never answers it, and
    // the lease manager waits on it without a word.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(*leading.borrow(), "renewals succeeded, still leading");
    script.hanging.store(true, Ordering::SeqCst);
    let last_renewal = script.last_renewal.lock().unwrap().expect("renewed");
    // From the last renewal the API server saw, another replica may take the lease once it has
    // expired: writes must stop before that.
    let expires = last_renewal + lease;
    tokio::time::timeout_at(expires, leading.wait_for(|l| !*l))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "still leading {:?} after the last renewal, with the renewal hung",
                lease
            )
        })
        .unwrap();
    assert!(
        !script.held.lock().unwrap().is_empty(),
        "the renewal was hanging"
    );
    assert!(metrics.encode().contains("readygate_leader 0"));

    // Once the API server answers again and the lease is renewed, this replica leads again.
    script.hanging.store(false, Ordering::SeqCst);
    wait_for(&mut leading, true, Duration::from_secs(60)).await;
    assert!(
        script.last_renewal.lock().unwrap().unwrap() > last_renewal,
        "led again only after a renewal"
    );
    drop(leading);
    leadership.release(Duration::from_secs(10)).await;
}
