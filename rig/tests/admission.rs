//! Pod admission as kube-apiserver does it, with the project's own MutatingWebhookConfiguration
//! and a webhook over real TLS.

mod common;

use common::{FakeWebhook, PatchEncoding};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, PostParams};
use rig::apiserver::admission::{Admission, Outcome, find_webhook_configuration};
use rig::certs::Certs;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const GATE: &str = "target-health.elbv2.k8s.aws/web";

async fn namespace(client: &kube::Client, name: &str, labelled: bool) {
    let labels = if labelled {
        json!({"elbv2.k8s.aws/pod-readiness-gate-inject": "enabled"})
    } else {
        json!({})
    };
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap(),
        )
        .await
        .unwrap();
}

fn pod(labels: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"generateName": "web-", "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "web:1"}]}
    }))
    .unwrap()
}

fn gates(p: &Pod) -> Vec<String> {
    p.spec
        .as_ref()
        .unwrap()
        .readiness_gates
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|g| g.condition_type)
        .collect()
}

fn resolver(addr: SocketAddr) -> impl Fn(&str, &str, u16) -> Option<SocketAddr> {
    move |ns: &str, name: &str, port: u16| {
        (ns == "readygate-system" && name == "readygate-webhook" && port == 443).then_some(addr)
    }
}

fn project_config() -> Value {
    find_webhook_configuration(&common::manifests_dir())
        .expect("the project's manifests hold a MutatingWebhookConfiguration")
}

#[tokio::test]
async fn the_projects_webhook_configuration_selects_and_patches_like_kube_apiserver() {
    let (_server, client, store) = common::api().await;
    let certs = Certs::for_service("readygate-webhook", "readygate-system").unwrap();
    let hook = FakeWebhook::new(PatchEncoding::ByteArray);
    let (addr, _task) = hook.serve(&certs).await;
    let admission = Arc::new(
        Admission::from_manifests(&common::manifests_dir(), &certs.ca_pem, &resolver(addr))
            .unwrap(),
    );
    assert_eq!(
        admission.webhooks[0].name,
        "pod-readiness-gate.readygate.io"
    );
    store.set_admission(Some(admission.clone()));
    namespace(&client, "gated", true).await;
    namespace(&client, "plain", false).await;

    let gated: Api<Pod> = Api::namespaced(client.clone(), "gated");
    // Created as raw JSON (as the rig's own controllers do), so that a field no Rust type
    // knows reaches the webhook and comes back through its patch untouched.
    let raw = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "web-", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "image": "web:1", "futureField": {"kept": true}}]}});
    let created = store
        .create(
            rig::apiserver::resources::pods(),
            "gated",
            raw,
            &Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        created["spec"]["readinessGates"],
        json!([{"conditionType": GATE}])
    );
    assert_eq!(
        created["spec"]["containers"][0]["futureField"],
        json!({"kept": true})
    );
    let name = created["metadata"]["name"].as_str().unwrap().to_string();
    assert!(
        name.starts_with("web-") && name.len() == "web-".len() + 5,
        "named after admission: {name}"
    );
    assert_eq!(gates(&gated.get(&name).await.unwrap()), [GATE]);

    let reviews = hook.reviews.lock().unwrap().clone();
    assert_eq!(reviews.len(), 1);
    let req = &reviews[0]["request"];
    assert_eq!(req["operation"], "CREATE");
    assert_eq!(req["namespace"], "gated");
    assert_eq!(
        req["name"], "",
        "the webhook sees the pod before it is named"
    );
    assert_eq!(req["object"]["metadata"]["generateName"], "web-");
    assert_eq!(
        req["object"]["spec"]["containers"][0]["futureField"],
        json!({"kept": true})
    );

    // Not labelled: namespaceSelector keeps the webhook out.
    let plain: Api<Pod> = Api::namespaced(client.clone(), "plain");
    assert!(
        gates(
            &plain
                .create(&PostParams::default(), &pod(json!({"app": "web"})))
                .await
                .unwrap()
        )
        .is_empty()
    );
    // readygate's own pods: objectSelector keeps the webhook out.
    let own = gated
        .create(
            &PostParams::default(),
            &pod(json!({"app.kubernetes.io/name": "readygate"})),
        )
        .await
        .unwrap();
    assert!(gates(&own).is_empty());
    assert_eq!(hook.reviews.lock().unwrap().len(), 1);
    let outcomes: Vec<Outcome> = admission.records().into_iter().map(|r| r.outcome).collect();
    assert!(matches!(outcomes[0], Outcome::Patched(_)));
    assert_eq!(
        outcomes[1],
        Outcome::NotCalled("namespaceSelector does not match".into())
    );
    assert_eq!(
        outcomes[2],
        Outcome::NotCalled("objectSelector does not match".into())
    );
}

#[tokio::test]
async fn base64_patches_are_accepted_too() {
    let (_server, client, store) = common::api().await;
    let certs = Certs::for_service("readygate-webhook", "readygate-system").unwrap();
    let hook = FakeWebhook::new(PatchEncoding::Base64);
    let (addr, _task) = hook.serve(&certs).await;
    store.set_admission(Some(Arc::new(
        Admission::from_manifests(&common::manifests_dir(), &certs.ca_pem, &resolver(addr))
            .unwrap(),
    )));
    namespace(&client, "gated", true).await;
    let mut p = pod(json!({}));
    p.spec.as_mut().unwrap().readiness_gates = Some(vec![
        serde_json::from_value(json!({"conditionType": "other"})).unwrap(),
    ]);
    let created = Api::<Pod>::namespaced(client, "gated")
        .create(&PostParams::default(), &p)
        .await
        .unwrap();
    assert_eq!(gates(&created), ["other", GATE]);
}

#[tokio::test]
async fn timeout_and_failure_policy() {
    let (_server, client, store) = common::api().await;
    let certs = Certs::for_service("readygate-webhook", "readygate-system").unwrap();
    let hook = FakeWebhook::new(PatchEncoding::ByteArray);
    *hook.delay.lock().unwrap() = Duration::from_secs(3);
    let (addr, _task) = hook.serve(&certs).await;
    namespace(&client, "gated", true).await;
    let pods: Api<Pod> = Api::namespaced(client, "gated");

    let mut config = project_config();
    config["webhooks"][0]["timeoutSeconds"] = json!(1);
    store.set_admission(Some(Arc::new(
        Admission::from_configuration(&config, Some(&certs.ca_pem), &resolver(addr)).unwrap(),
    )));
    let started = Instant::now();
    let created = pods
        .create(&PostParams::default(), &pod(json!({})))
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(
        gates(&created).is_empty(),
        "Ignore admits the pod unchanged"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "gave up after timeoutSeconds: {took:?}"
    );

    config["webhooks"][0]["failurePolicy"] = json!("Fail");
    store.set_admission(Some(Arc::new(
        Admission::from_configuration(&config, Some(&certs.ca_pem), &resolver(addr)).unwrap(),
    )));
    let err = pods
        .create(&PostParams::default(), &pod(json!({})))
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 500);
            assert!(
                s.message
                    .contains("failed calling webhook \"pod-readiness-gate.readygate.io\""),
                "{}",
                s.message
            );
            assert!(
                s.message.contains("context deadline exceeded"),
                "{}",
                s.message
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_ca_bundle_is_verified() {
    let (_server, client, store) = common::api().await;
    let served = Certs::for_service("readygate-webhook", "readygate-system").unwrap();
    let other_ca = Certs::for_service("readygate-webhook", "readygate-system").unwrap();
    let hook = FakeWebhook::new(PatchEncoding::ByteArray);
    let (addr, _task) = hook.serve(&served).await;
    namespace(&client, "gated", true).await;
    let pods: Api<Pod> = Api::namespaced(client, "gated");
    let mut config = project_config();
    config["webhooks"][0]["failurePolicy"] = json!("Fail");
    store.set_admission(Some(Arc::new(
        Admission::from_configuration(&config, Some(&other_ca.ca_pem), &resolver(addr)).unwrap(),
    )));
    let err = pods
        .create(&PostParams::default(), &pod(json!({})))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 500 && s.message.contains("certificate")),
        "{err:?}"
    );
    assert!(hook.reviews.lock().unwrap().is_empty());

    // A certificate for another service name fails verification as well.
    let wrong_name = Certs::for_service("something-else", "readygate-system").unwrap();
    let (addr2, _task2) = hook.serve(&wrong_name).await;
    store.set_admission(Some(Arc::new(
        Admission::from_configuration(&config, Some(&wrong_name.ca_pem), &resolver(addr2)).unwrap(),
    )));
    assert!(
        pods.create(&PostParams::default(), &pod(json!({})))
            .await
            .is_err()
    );

    // The right CA: admitted and patched.
    store.set_admission(Some(Arc::new(
        Admission::from_configuration(&config, Some(&served.ca_pem), &resolver(addr)).unwrap(),
    )));
    assert_eq!(
        gates(
            &pods
                .create(&PostParams::default(), &pod(json!({})))
                .await
                .unwrap()
        ),
        [GATE]
    );
}

#[tokio::test]
async fn a_denial_is_a_forbidden_status() {
    let (_server, client, store) = common::api().await;
    let certs = Certs::for_service("readygate-webhook", "readygate-system").unwrap();
    let mut hook = FakeWebhook::new(PatchEncoding::ByteArray);
    hook.deny = true;
    let (addr, _task) = hook.serve(&certs).await;
    store.set_admission(Some(Arc::new(
        Admission::from_manifests(&common::manifests_dir(), &certs.ca_pem, &resolver(addr))
            .unwrap(),
    )));
    namespace(&client, "gated", true).await;
    let err = Api::<Pod>::namespaced(client, "gated")
        .create(&PostParams::default(), &pod(json!({})))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 403 && s.message.contains("denied the request: no pods today")),
        "{err:?}"
    );
}
