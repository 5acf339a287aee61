//! kube-rs's own client, watchers, event recorder and lease manager against the rig's API
//! server: readygate's Kubernetes code runs here with no special casing.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use rig::apiserver::http::ApiServer;
use rig::apiserver::store::Store;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

async fn start() -> (ApiServer, kube::Client, Arc<Store>) {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let store = Arc::new(Store::new());
    let server = ApiServer::start(store.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&server.kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let ns: Api<Namespace> = Api::all(client.clone());
    ns.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "app"}})).unwrap(),
    )
    .await
    .unwrap();
    (server, client, store)
}

fn pod(name: &str, labels: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "containers": [{"name": "app", "image": "web:1", "ports": [{"name": "http", "containerPort": 8080}]}],
            "readinessGates": [{"conditionType": "target-health.elbv2.k8s.aws/web"}]
        }
    }))
    .unwrap()
}

#[tokio::test]
async fn crud_and_status_subresource_with_kube_rs() {
    let (_server, client, _store) = start().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "app");
    let created = pods
        .create(&PostParams::default(), &pod("web-1", json!({"app": "web"})))
        .await
        .unwrap();
    let uid = created.metadata.uid.clone().unwrap();
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(created.status.unwrap().phase.as_deref(), Some("Pending"));

    let err = pods
        .create(&PostParams::default(), &pod("web-1", json!({})))
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409 && s.reason == "AlreadyExists"),
        "{err:?}"
    );

    // The status patch readygate sends: strategic merge, one condition, uid precondition.
    let patch = json!({"metadata": {"uid": uid}, "status": {"conditions": [{
        "type": "target-health.elbv2.k8s.aws/web", "status": "True", "reason": "Healthy", "message": "", "lastTransitionTime": "2025-01-01T00:00:00Z"
    }]}});
    let patched = pods
        .patch_status("web-1", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .unwrap();
    let conds = patched.status.unwrap().conditions.unwrap();
    assert_eq!(conds.len(), 1);
    assert_eq!(conds[0].status, "True");

    // A second condition merges by type; the first stays.
    let patch2 = json!({"status": {"conditions": [{"type": "Other", "status": "False"}]}});
    let patched = pods
        .patch_status("web-1", &PatchParams::default(), &Patch::Strategic(&patch2))
        .await
        .unwrap();
    assert_eq!(patched.status.unwrap().conditions.unwrap().len(), 2);

    // Status writes ignore spec; main-resource writes ignore status.
    let sneaky = json!({"spec": {"activeDeadlineSeconds": 5}, "status": {"phase": "Running"}});
    let p = pods
        .patch_status("web-1", &PatchParams::default(), &Patch::Merge(&sneaky))
        .await
        .unwrap();
    assert_eq!(p.spec.as_ref().unwrap().active_deadline_seconds, None);
    assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Running"));
    let p = pods
        .patch(
            "web-1",
            &PatchParams::default(),
            &Patch::Merge(
                &json!({"status": {"phase": "Failed"}, "metadata": {"labels": {"x": "y"}}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Running"));
    assert_eq!(p.metadata.labels.unwrap()["x"], "y");

    // A PATCH naming a uid that is not the stored pod's changes an immutable field: 422
    // Invalid, with kube-apiserver's message and cause (its patch handler sets no uid
    // precondition; `rest.BeforeUpdate` validates the metadata), and nothing is written.
    let before = pods.get("web-1").await.unwrap();
    let stale_uid = "00000000-0000-4000-8000-000000000000";
    let stale = json!({"metadata": {"uid": stale_uid}, "status": {"conditions": [{"type": "X", "status": "True"}]}});
    for write in [
        pods.patch_status("web-1", &PatchParams::default(), &Patch::Strategic(&stale))
            .await,
        pods.patch_status("web-1", &PatchParams::default(), &Patch::Merge(&stale))
            .await,
        pods.patch("web-1", &PatchParams::default(), &Patch::Strategic(&stale))
            .await,
    ] {
        let Err(kube::Error::Api(s)) = write else {
            panic!("not an API error: {write:?}")
        };
        assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"), "{s:?}");
        assert_eq!(
            s.message,
            format!(
                "Pod \"web-1\" is invalid: metadata.uid: Invalid value: \"{stale_uid}\": field is immutable"
            )
        );
        let causes = s.details.map(|d| d.causes).unwrap_or_default();
        assert_eq!(
            causes.iter().map(|c| c.field.as_str()).collect::<Vec<_>>(),
            ["metadata.uid"]
        );
    }
    let after = pods.get("web-1").await.unwrap();
    assert_eq!(
        after.metadata.resource_version, before.metadata.resource_version,
        "nothing written"
    );
    // A PUT carries the uid as a storage precondition instead: 409 Conflict.
    let mut replaced = after.clone();
    replaced.metadata.uid = Some(stale_uid.into());
    let err = pods
        .replace_status("web-1", &PostParams::default(), &replaced)
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409 && s.reason == "Conflict"),
        "{err:?}"
    );

    // Missing pod: 404 Status.
    let err = pods
        .patch_status("nope", &PatchParams::default(), &Patch::Strategic(&patch2))
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 404 && s.reason == "NotFound"),
        "{err:?}"
    );

    // Readiness gates are fixed at creation: 422.
    let gates = json!({"spec": {"readinessGates": [{"conditionType": "x"}]}});
    let err = pods
        .patch("web-1", &PatchParams::default(), &Patch::Strategic(&gates))
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 422 && s.reason == "Invalid"),
        "{err:?}"
    );

    // JSON patch, with a failing test op.
    let jp: json_patch::Patch = serde_json::from_value(
        json!([{"op": "add", "path": "/metadata/labels/tier", "value": "front"}]),
    )
    .unwrap();
    let p = pods
        .patch("web-1", &PatchParams::default(), &Patch::Json::<()>(jp))
        .await
        .unwrap();
    assert_eq!(p.metadata.labels.unwrap()["tier"], "front");

    // Label selectors on list.
    pods.create(&PostParams::default(), &pod("db-1", json!({"app": "db"})))
        .await
        .unwrap();
    let names = |l: kube::core::ObjectList<Pod>| {
        l.items
            .into_iter()
            .map(|p| p.metadata.name.unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(
            pods.list(&ListParams::default().labels("app=web"))
                .await
                .unwrap()
        ),
        ["web-1"]
    );
    assert_eq!(
        names(
            pods.list(&ListParams::default().labels("app in (db,cache)"))
                .await
                .unwrap()
        ),
        ["db-1"]
    );
    assert_eq!(
        names(
            pods.list(&ListParams::default().labels("app notin (db),tier"))
                .await
                .unwrap()
        ),
        ["web-1"]
    );
    assert_eq!(
        names(
            pods.list(&ListParams::default().fields("metadata.name=db-1"))
                .await
                .unwrap()
        ),
        ["db-1"]
    );
    let page = pods.list(&ListParams::default().limit(1)).await.unwrap();
    assert_eq!(page.items.len(), 1);
    let rest = pods
        .list(
            &ListParams::default()
                .limit(1)
                .continue_token(page.metadata.continue_.as_deref().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 1);
    assert_ne!(page.items[0].metadata.name, rest.items[0].metadata.name);

    // Graceful deletion: a deletionTimestamp first; gone only after a delete with grace 0.
    pods.delete("db-1", &DeleteParams::default()).await.unwrap();
    let terminating = pods.get("db-1").await.unwrap();
    assert!(terminating.metadata.deletion_timestamp.is_some());
    pods.delete(
        "db-1",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let err = pods.get("db-1").await.unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 404),
        "{err:?}"
    );

    // Pods in a namespace that does not exist: 404.
    let err = Api::<Pod>::namespaced(client.clone(), "ghost")
        .create(&PostParams::default(), &pod("p", json!({})))
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 404),
        "{err:?}"
    );
}

#[tokio::test]
async fn kube_runtime_watchers_see_every_change() {
    let (_server, client, _store) = start().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "app");
    pods.create(
        &PostParams::default(),
        &pod("before", json!({"app": "web"})),
    )
    .await
    .unwrap();

    // An all-namespaces watcher, as readygate runs them, plus a reflector store.
    let (reader, writer) = kube::runtime::reflector::store::<Pod>();
    let all: Api<Pod> = Api::all(client.clone());
    let stream = kube::runtime::reflector(
        writer,
        watcher(all, watcher::Config::default().labels("app=web")),
    )
    .applied_objects()
    .map_ok(|p| p.metadata.name.unwrap());
    let mut stream = Box::pin(stream);
    let first = tokio::time::timeout(Duration::from_secs(5), stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first, "before");

    pods.create(&PostParams::default(), &pod("after", json!({"app": "web"})))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &pod("other", json!({"app": "db"})))
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next, "after");
    let patch = json!({"status": {"conditions": [{"type": "target-health.elbv2.k8s.aws/web", "status": "True"}]}});
    pods.patch_status("after", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next, "after");
    assert_eq!(
        reader.state().len(),
        2,
        "the selector keeps db pods out of the cache"
    );
    let cached = reader
        .get(&kube::runtime::reflector::ObjectRef::new("after").within("app"))
        .unwrap();
    assert_eq!(
        cached.status.as_ref().unwrap().conditions.as_ref().unwrap()[0].status,
        "True"
    );

    // Relabelled out of the selector: the watch says DELETED and the cache drops it.
    pods.patch(
        "before",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"labels": {"app": "old"}}})),
    )
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let drain = tokio::spawn(async move { while stream.try_next().await.is_ok() {} });
    while reader.state().len() != 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(reader.state().len(), 1);
    drain.abort();

    // Streaming lists (sendInitialEvents) work too.
    let streaming = watcher(
        Api::<Pod>::namespaced(client, "app"),
        watcher::Config::default().streaming_lists(),
    );
    let mut events = Box::pin(streaming);
    let mut seen = Vec::new();
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(5), events.try_next())
        .await
        .unwrap()
    {
        match ev {
            watcher::Event::InitApply(p) => seen.push(p.metadata.name.unwrap()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    seen.sort();
    assert_eq!(seen, ["after", "before", "other"]);
}

#[tokio::test]
async fn events_recorder_creates_then_patches_a_series() {
    let (server, client, _store) = start().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "app");
    let p = pods
        .create(&PostParams::default(), &pod("web-1", json!({})))
        .await
        .unwrap();
    let recorder = kube::runtime::events::Recorder::new(client.clone(), "readygate".into());
    let ev = kube::runtime::events::Event {
        type_: kube::runtime::events::EventType::Normal,
        reason: "GateTrue".into(),
        note: Some("target healthy".into()),
        action: "SetCondition".into(),
        secondary: None,
    };
    use kube::Resource;
    let reference = p.object_ref(&());
    recorder.publish(&ev, &reference).await.unwrap();
    recorder.publish(&ev, &reference).await.unwrap();
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client, "app");
    let list = events.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].series.as_ref().unwrap().count, 2);
    let reqs = server.requests();
    assert!(reqs.iter().any(|r| r.method == "POST" && r.path == "/apis/events.k8s.io/v1/namespaces/app/events"));
    assert!(
        reqs.iter()
            .any(|r| r.method == "PATCH" && r.content_type == "application/merge-patch+json")
    );
}

#[tokio::test]
async fn lease_manager_elects_one_leader_with_server_side_apply() {
    let (server, client, _store) = start().await;
    let a = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), "readygate")
        .with_namespace("app")
        .with_identity("a")
        .with_duration(5)
        .with_grace(2)
        .build()
        .await
        .unwrap();
    let b = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), "readygate")
        .with_namespace("app")
        .with_identity("b")
        .with_duration(5)
        .with_grace(2)
        .build()
        .await
        .unwrap();
    let (mut a_rx, a_task) = a.watch().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !*a_rx.borrow_and_update() && tokio::time::Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_secs(1), a_rx.changed()).await;
    }
    assert!(*a_rx.borrow(), "a became leader");
    let (b_rx, b_task) = b.watch().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!*b_rx.borrow(), "b is not leader while a holds the lease");
    let lease: Lease = Api::namespaced(client.clone(), "app")
        .get("readygate")
        .await
        .unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some("a"));
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r.content_type == "application/apply-patch+yaml"),
        "lease manager used server-side apply"
    );

    // The leader steps down; b takes over.
    drop(a_rx);
    let a_manager = a_task.await.unwrap().unwrap();
    drop(a_manager);
    let mut b_rx = b_rx;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !*b_rx.borrow_and_update() && tokio::time::Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_secs(1), b_rx.changed()).await;
    }
    assert!(*b_rx.borrow(), "b took over");
    drop(b_rx);
    let _ = b_task.await;
}

#[tokio::test]
async fn an_outage_ends_watches_and_answers_404_then_the_resource_is_back() {
    let (server, client, _store) = start().await;
    let tgbs: Api<kube::api::DynamicObject> = Api::all_with(
        client.clone(),
        &kube::discovery::ApiResource {
            group: "elbv2.k8s.aws".into(),
            version: "v1beta1".into(),
            api_version: "elbv2.k8s.aws/v1beta1".into(),
            kind: "TargetGroupBinding".into(),
            plural: "targetgroupbindings".into(),
        },
    );
    let pods: Api<Pod> = Api::all(client.clone());
    assert!(tgbs.list(&ListParams::default()).await.is_ok());
    let mut stream = tgbs
        .watch(&kube::api::WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    server.outage("targetgroupbindings", Duration::from_millis(800));
    // The open watch ends.
    let ended = tokio::time::timeout(Duration::from_secs(2), async {
        while stream.try_next().await.ok().flatten().is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the watch was cut");
    match tgbs.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 404);
            assert_eq!(
                s.message,
                "the server could not find the requested resource"
            );
        }
        other => panic!("expected a 404 during the outage: {other:?}"),
    }
    assert!(
        pods.list(&ListParams::default()).await.is_ok(),
        "other resources are served"
    );
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(
        tgbs.list(&ListParams::default()).await.is_ok(),
        "served again"
    );
}

/// What `readygate doctor` and `status` read: MutatingWebhookConfigurations, EndpointSlices
/// (by the service-name label), CustomResourceDefinitions, and the pod proxy to a pod's port.
#[tokio::test]
async fn operator_resources_and_the_pod_proxy() {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let (_server, client, _store) = start().await;
    let pp = PostParams::default();

    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    mwcs.create(&pp, &serde_json::from_value(json!({"metadata": {"name": "readygate"}, "webhooks": [
        {"name": "pod-readiness-gate.readygate.io", "clientConfig": {"service": {"namespace": "readygate-system", "name": "readygate-webhook", "port": 443}, "caBundle": "Y2E="},
         "failurePolicy": "Ignore", "timeoutSeconds": 5, "sideEffects": "None", "admissionReviewVersions": ["v1"]}]})).unwrap())
        .await
        .unwrap();
    let listed = mwcs.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    let w = &listed.items[0].webhooks.as_ref().unwrap()[0];
    assert_eq!(w.timeout_seconds, Some(5));
    assert_eq!(w.client_config.ca_bundle.as_ref().unwrap().0, b"ca");

    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "app");
    for (name, service) in [("web-abc", "web"), ("other-abc", "other")] {
        slices
            .create(&pp, &serde_json::from_value(json!({"metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
                "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": true}}],
                "ports": [{"name": "https", "port": 9443, "protocol": "TCP"}]})).unwrap())
            .await
            .unwrap();
    }
    let web = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
        .await
        .unwrap();
    assert_eq!(web.items.len(), 1);
    assert_eq!(web.items[0].endpoints[0].addresses, ["10.0.0.1"]);

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    assert!(
        crds.get_opt("targetgroupbindings.elbv2.k8s.aws")
            .await
            .unwrap()
            .is_none()
    );

    // The pod proxy forwards a GET (with its query) to the pod's IP and port.
    let app = axum::Router::new().route(
        "/debug/gates",
        axum::routing::get(|q: axum::extract::RawQuery| async move {
            format!("gates {}", q.0.unwrap_or_default())
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let pods: Api<Pod> = Api::namespaced(client.clone(), "app");
    let mut p = pod("leader", json!({}));
    p.spec.as_mut().unwrap().containers[0].ports = Some(vec![
        serde_json::from_value(json!({"name": "admin", "containerPort": port})).unwrap(),
    ]);
    pods.create(&pp, &p).await.unwrap();
    let get = |path: String| {
        let client = client.clone();
        async move {
            client
                .request_text(hyper::Request::get(path).body(Vec::new()).unwrap())
                .await
        }
    };
    // No IP yet: nothing to proxy to.
    let err = get(format!(
        "/api/v1/namespaces/app/pods/leader:{port}/proxy/debug/gates"
    ))
    .await
    .unwrap_err();
    assert!(err.to_string().contains("has no IP"), "{err}");
    pods.patch_status(
        "leader",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"podIP": "127.0.0.1"}})),
    )
    .await
    .unwrap();
    for name_port in [
        format!("leader:{port}"),
        "leader:admin".into(),
        "leader".into(),
    ] {
        let body = get(format!(
            "/api/v1/namespaces/app/pods/{name_port}/proxy/debug/gates?x=1"
        ))
        .await
        .unwrap();
        assert_eq!(body, "gates x=1", "{name_port}");
    }
    // Nothing listens there: 503, as kube-apiserver's "error trying to reach service" (asked
    // without kube's default retries, which back off on 503 for minutes).
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&_server.kubeconfig()).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    config.default_retry = false;
    let once = kube::Client::try_from(config).unwrap();
    let err = once
        .request_text(
            hyper::Request::get(format!(
                "/api/v1/namespaces/app/pods/leader:{closed}/proxy/debug/gates"
            ))
            .body(Vec::new())
            .unwrap(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 503),
        "{err:?}"
    );
    let err = get("/api/v1/namespaces/app/pods/ghost:80/proxy/x".into())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 404),
        "{err:?}"
    );
}
