use super::watch::drive_bindings;
use super::*;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::{Client, ResourceExt};

use crate::crd::TargetGroupBinding;
use crate::crd_presence::Discovery;
use crate::domain::{self, ConditionStatus, INJECT_LABEL, INJECT_LABEL_VALUE, PortRef, TargetType};
use crate::metrics::Metrics;
use crate::termination::PRESTOP_SLEEP_ANNOTATION;
use serde_json::{Value, json};

#[test]
fn pod_view_keeps_what_the_controller_needs() {
    let pod: WatchedPod = serde_json::from_value(json!({
        "metadata": { "name": "web-1", "namespace": "shop", "uid": "u-1", "labels": {"app": "web"},
                      "resourceVersion": "42", "creationTimestamp": "2026-11-21T10:00:00Z",
                      "managedFields": [{ "manager": "kubelet", "fieldsV1": { "f:status": {} } }] },
        "spec": {
            "containers": [{ "name": "web", "ports": [{ "name": "http", "containerPort": 8080 }, { "containerPort": 9 }] }],
            "initContainers": [{ "name": "side", "restartPolicy": "Always", "ports": [{ "name": "admin", "containerPort": 9901 }] }],
            "readinessGates": [{ "conditionType": "target-health.elbv2.k8s.aws/web-tgb" }, { "conditionType": "other/x" }]
        },
        "status": {
            "podIP": "127.0.1.2",
            "conditions": [
                { "type": "ContainersReady", "status": "True", "lastTransitionTime": "2026-11-21T10:00:07Z" },
                { "type": "target-health.elbv2.k8s.aws/web-tgb", "status": "False", "reason": "Elb.InitialHealthChecking",
                  "message": "Initial health checks in progress", "lastTransitionTime": "2026-11-21T10:00:03Z" }
            ]
        }
    }))
    .unwrap();
    // The watcher resumes from the resourceVersion; managedFields are never kept.
    assert_eq!(pod.resource_version().as_deref(), Some("42"));
    assert!(pod.metadata.managed_fields.is_none());
    let v = pod_view(&pod);
    assert_eq!(v.uid, "u-1");
    assert_eq!(v.ips, ["127.0.1.2".parse::<std::net::IpAddr>().unwrap()]);
    assert_eq!(v.gates, ["web-tgb"]);
    assert_eq!(v.container_ports.len(), 2);
    assert_eq!(v.containers_ready_since, Some(1_795_255_207));
    assert_eq!(v.created, Some(1_795_255_200));
    let c = v.condition("web-tgb").unwrap();
    assert_eq!(c.status, ConditionStatus::False);
    assert_eq!(
        c.last_transition_time.as_deref(),
        Some("2026-11-21T10:00:03Z")
    );
    assert!(!v.finished);
}

fn service(ns: &str, name: &str, app: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": { "name": name, "namespace": ns, "resourceVersion": "1" },
        "spec": { "selector": { "app": app }, "ports": [{ "port": 80, "targetPort": "http" }] }
    }))
    .unwrap()
}

#[test]
fn a_relist_is_applied_in_place_and_drops_what_it_did_not_see() {
    let cache = Arc::new(Cache::default());
    let mut feed = Feed::<Service>::new(cache.clone());
    feed.init();
    feed.init_apply(&service("shop", "web", "web"));
    feed.init_apply(&service("shop", "old", "old"));
    assert!(
        !cache.read().synced().services,
        "not synced before the list is complete"
    );
    feed.init_done();
    assert!(cache.read().synced().services);
    assert!(cache.read().service("shop", "old").is_some());
    // A watch restart re-lists: "old" is gone, "web" changed, "api" is new.
    feed.init();
    feed.init_apply(&service("shop", "web", "web2"));
    feed.init_apply(&service("shop", "api", "api"));
    feed.init_done();
    let ix = cache.read();
    assert!(ix.service("shop", "old").is_none());
    assert_eq!(ix.service("shop", "web").unwrap().selector["app"], "web2");
    assert!(ix.service("shop", "api").is_some());
    drop(ix);
    feed.delete(&service("shop", "api", "api"));
    assert!(cache.read().service("shop", "api").is_none());
}

fn namespace(name: &str, labels: Value, annotations: Value) -> Namespace {
    serde_json::from_value(json!({
        "metadata": { "name": name, "resourceVersion": "1", "labels": labels, "annotations": annotations }
    }))
    .unwrap()
}

fn binding(name: &str) -> TargetGroupBinding {
    serde_json::from_value(json!({
        "apiVersion": "elbv2.k8s.aws/v1beta1", "kind": "TargetGroupBinding",
        "metadata": { "name": name, "namespace": "shop", "resourceVersion": "1" },
        "spec": { "targetGroupARN": "arn:x", "targetType": "ip", "serviceRef": { "name": "web", "port": 80 } }
    }))
    .unwrap()
}

#[test]
fn namespaces_keep_the_opt_in_and_the_prestop_annotation() {
    let cache = Arc::new(Cache::default());
    let mut feed = Feed::<Namespace>::new(cache.clone());
    feed.init();
    feed.init_apply(&namespace(
        "shop",
        json!({ INJECT_LABEL: INJECT_LABEL_VALUE }),
        json!({ PRESTOP_SLEEP_ANNOTATION: "15s", "owner": "team-a" }),
    ));
    feed.init_apply(&namespace("quiet", json!({}), json!({})));
    feed.init_done();
    let ix = cache.read();
    assert!(ix.synced().namespaces);
    assert!(ix.is_opted_in("shop") && !ix.is_opted_in("quiet"));
    assert_eq!(ix.namespace_prestop_sleep("shop"), Some("15s"));
    assert_eq!(ix.namespace_prestop_sleep("quiet"), None);
    drop(ix);
    // The annotation removed by an update, then the namespace deleted.
    feed.apply(&namespace(
        "shop",
        json!({ INJECT_LABEL: INJECT_LABEL_VALUE }),
        json!({}),
    ));
    assert_eq!(cache.read().namespace_prestop_sleep("shop"), None);
    assert!(cache.read().is_opted_in("shop"));
    feed.delete(&namespace("shop", json!({}), json!({})));
    assert!(!cache.read().is_opted_in("shop"));
}

fn listed_bindings(cache: &Arc<Cache>) -> Feed<TargetGroupBinding> {
    let mut feed =
        Feed::<TargetGroupBinding>::new(cache.clone()).crd_missing_grace(Duration::from_secs(120));
    feed.init();
    feed.init_apply(&binding("web-tgb"));
    feed.init_done();
    feed
}

#[test]
fn a_404_keeps_known_bindings_until_the_absence_is_confirmed_and_sustained() {
    let cache = Arc::new(Cache::default());
    let mut feed = listed_bindings(&cache);
    // API server restart: 404s, discovery down or still serving the CRD.
    feed.not_found(0, &Discovery::Unknown("connection refused".into()));
    feed.not_found(30_000, &Discovery::Present);
    {
        let ix = cache.read();
        assert!(
            ix.binding("shop", "web-tgb").is_some(),
            "a blip wiped the bindings"
        );
        assert!(!ix.bindings_crd_missing);
        let note = ix.bindings_warning.as_deref().unwrap();
        assert!(
            note.contains("404 for 30s") && note.contains("keeping the 1 known bindings"),
            "{note}"
        );
    }
    // The list answers again: back to normal.
    feed.init();
    feed.init_apply(&binding("web-tgb"));
    feed.init_done();
    assert!(cache.read().bindings_warning.is_none());
    // CRD deleted for real: kept for the grace period, dropped after.
    feed.not_found(100_000, &Discovery::Absent);
    feed.not_found(219_000, &Discovery::Absent);
    assert!(cache.read().binding("shop", "web-tgb").is_some());
    feed.not_found(220_000, &Discovery::Absent);
    let ix = cache.read();
    assert!(ix.binding("shop", "web-tgb").is_none() && ix.bindings_crd_missing);
    assert!(ix.bindings_warning.is_none());
}

#[test]
fn at_start_up_a_confirmed_missing_crd_is_an_empty_synced_list_at_once() {
    let cache = Arc::new(Cache::default());
    let mut feed = Feed::<TargetGroupBinding>::new(cache.clone());
    feed.not_found(0, &Discovery::Unknown("timeout".into()));
    assert!(
        !cache.read().synced().bindings,
        "unconfirmed: still waiting for a list"
    );
    feed.not_found(1_000, &Discovery::Absent);
    let ix = cache.read();
    assert!(ix.synced().bindings && ix.bindings_crd_missing);
}

/// A scripted API server: the binding list answers 404; discovery answers `discovery`
/// (`None`: 404 for the group version too).
async fn serve_404s(
    mut handle: tower_test::mock::Handle<
        hyper::Request<kube::client::Body>,
        hyper::Response<kube::client::Body>,
    >,
    discovery: Option<serde_json::Value>,
) {
    let not_found = || {
        let body = json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                           "message": "the server could not find the requested resource", "reason": "NotFound", "code": 404 });
        hyper::Response::builder()
            .status(404)
            .body(kube::client::Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap()
    };
    while let Some((req, send)) = handle.next_request().await {
        let answer = match (req.uri().path(), &discovery) {
            ("/apis/elbv2.k8s.aws/v1beta1", Some(d)) => hyper::Response::builder()
                .body(kube::client::Body::from(serde_json::to_vec(d).unwrap()))
                .unwrap(),
            _ => not_found(),
        };
        send.send_response(answer);
    }
}

#[tokio::test(start_paused = true)]
async fn the_binding_watcher_checks_discovery_before_dropping_anything() {
    let served = json!({ "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "elbv2.k8s.aws/v1beta1",
        "resources": [{ "name": "targetgroupbindings", "singularName": "targetgroupbinding", "namespaced": true,
                        "kind": "TargetGroupBinding", "verbs": ["get", "list", "watch"] }] });
    for (discovery, kept) in [(Some(served), true), (None, false)] {
        let cache = Arc::new(Cache::default());
        listed_bindings(&cache);
        let metrics = Arc::new(Metrics::new());
        let (service, handle) = tower_test::mock::pair();
        let client = Client::new(service, "default");
        tokio::spawn(serve_404s(handle, discovery));
        let watcher = tokio::spawn(drive_bindings(
            client,
            cache.clone(),
            metrics.clone(),
            Duration::from_secs(120),
        ));
        // Well inside the grace: kept either way, and said so.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(cache.read().binding("shop", "web-tgb").is_some());
        assert!(cache.read().bindings_warning.is_some());
        assert!(metrics.encode().contains("readygate_bindings_crd_state 1"));
        // Past it: dropped only when discovery confirmed the absence all along.
        tokio::time::sleep(Duration::from_secs(180)).await;
        assert_eq!(cache.read().binding("shop", "web-tgb").is_some(), kept);
        let state = if kept { 1 } else { 2 };
        assert!(
            metrics
                .encode()
                .contains(&format!("readygate_bindings_crd_state {state}")),
            "{}",
            metrics.encode()
        );
        watcher.abort();
    }
}

#[test]
fn a_missing_binding_crd_is_an_empty_synced_list() {
    let cache = Arc::new(Cache::default());
    let mut feed = Feed::<TargetGroupBinding>::new(cache.clone());
    feed.crd_missing();
    let ix = cache.read();
    assert!(ix.synced().bindings && ix.bindings_crd_missing);
    drop(ix);
    feed.init();
    feed.init_done();
    assert!(!cache.read().bindings_crd_missing);
}

#[test]
fn dual_stack_pods_keep_both_addresses_parsed_and_ipv6_bindings_say_so() {
    let pod: WatchedPod = serde_json::from_value(json!({
        "metadata": { "name": "p", "namespace": "ns" },
        "status": { "podIP": "10.0.0.7",
                    "podIPs": [{ "ip": "10.0.0.7" }, { "ip": "2001:0db8:0000:0000:0000:0000:0000:0007" }] }
    }))
    .unwrap();
    let ips: Vec<std::net::IpAddr> = ["10.0.0.7", "2001:db8::7"]
        .iter()
        .map(|ip| ip.parse().unwrap())
        .collect();
    assert_eq!(pod_view(&pod).ips, ips);
    // Only podIP (an older API server, or a single-stack pod): that one.
    let single: WatchedPod = serde_json::from_value(json!({
        "metadata": { "name": "q" }, "status": { "podIP": "2001:db8::9" }
    }))
    .unwrap();
    assert_eq!(
        pod_view(&single).ips,
        ["2001:db8::9".parse::<std::net::IpAddr>().unwrap()]
    );
    let tgb = |family: serde_json::Value| -> TargetGroupBinding {
        serde_json::from_value(json!({
            "apiVersion": "elbv2.k8s.aws/v1beta1", "kind": "TargetGroupBinding",
            "metadata": { "name": "web", "namespace": "shop" },
            "spec": { "targetGroupARN": "arn:x", "targetType": "ip", "ipAddressType": family,
                      "serviceRef": { "name": "web", "port": 80 } }
        }))
        .unwrap()
    };
    assert_eq!(
        tgb(json!("ipv6")).convert().unwrap().ip_family,
        domain::IpFamily::V6
    );
    assert_eq!(
        tgb(json!("ipv4")).convert().unwrap().ip_family,
        domain::IpFamily::V4
    );
    assert_eq!(
        tgb(json!(null)).convert().unwrap().ip_family,
        domain::IpFamily::V4
    );
}

#[test]
fn pods_with_nulls_and_missing_parts_still_decode() {
    let pod: WatchedPod = serde_json::from_value(json!({
        "metadata": { "name": "p", "namespace": "ns", "labels": null },
        "spec": { "containers": [{ "name": "c", "ports": null }], "readinessGates": null },
        "status": { "phase": "Pending", "conditions": null, "podIP": "" }
    }))
    .unwrap();
    let v = pod_view(&pod);
    assert!(v.gates.is_empty() && v.ips.is_empty() && v.labels.is_empty());
    let bare: WatchedPod = serde_json::from_value(json!({ "metadata": { "name": "q" } })).unwrap();
    assert_eq!(pod_view(&bare).containers_ready_since, None);
}

#[test]
fn binding_conversion_reads_lbc_fields_and_ignores_the_rest() {
    let tgb: TargetGroupBinding = serde_json::from_value(json!({
        "apiVersion": "elbv2.k8s.aws/v1beta1", "kind": "TargetGroupBinding",
        "metadata": { "name": "web-tgb", "namespace": "shop" },
        "spec": { "targetGroupARN": "arn:x", "targetType": "ip", "serviceRef": { "name": "web", "port": "http" },
                  "networking": { "ingress": [] }, "ipAddressType": "ipv4", "vpcID": "vpc-1" }
    }))
    .unwrap();
    let b = tgb.convert().unwrap();
    assert_eq!(b.target_group_arn, "arn:x");
    assert_eq!(b.target_type, TargetType::Ip);
    assert_eq!(b.service_port, PortRef::Name("http".into()));
    let no_ref: TargetGroupBinding = serde_json::from_value(json!({
        "apiVersion": "elbv2.k8s.aws/v1beta1", "kind": "TargetGroupBinding",
        "metadata": { "name": "x" }, "spec": { "targetGroupName": "tg" }
    }))
    .unwrap();
    assert!(no_ref.convert().is_none());
}

fn watched_pod(ns: &str, name: &str, gated: bool) -> Value {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": ns, "uid": format!("uid-{name}"), "resourceVersion": "1",
                      "labels": { "app": "web" } },
        "spec": { "containers": [{ "name": "c" }] }
    });
    if gated {
        pod["spec"]["readinessGates"] =
            json!([{ "conditionType": "target-health.elbv2.k8s.aws/web-tgb" }]);
    }
    pod
}

fn pod_of(v: Value) -> WatchedPod {
    serde_json::from_value(v).unwrap()
}

fn held_pods(cache: &Cache) -> Vec<String> {
    let mut names: Vec<String> = cache
        .read()
        .pods()
        .map(|(ns, name, _)| format!("{ns}/{name}"))
        .collect();
    names.sort();
    names
}

/// A cache whose namespaces are listed: `shop` opted in, `other` not.
fn namespaces_listed() -> (Arc<Cache>, Feed<Namespace>) {
    let cache = Arc::new(Cache::default());
    let feed = namespaces_listed_in(&cache);
    (cache, feed)
}

/// Lists the namespaces of `namespaces_listed` into `cache`; the feed for later changes.
fn namespaces_listed_in(cache: &Arc<Cache>) -> Feed<Namespace> {
    let mut feed = Feed::<Namespace>::new(cache.clone());
    feed.init();
    feed.init_apply(&namespace(
        "shop",
        json!({ INJECT_LABEL: INJECT_LABEL_VALUE }),
        json!({}),
    ));
    feed.init_apply(&namespace("other", json!({}), json!({})));
    feed.init_done();
    feed
}

#[test]
fn the_pod_feed_keeps_only_gated_pods_and_the_pods_of_opted_in_namespaces() {
    let (cache, _) = namespaces_listed();
    let mut feed = Feed::<WatchedPod>::new(cache.clone());
    feed.init();
    feed.init_apply(&pod_of(watched_pod("shop", "plain", false)));
    feed.init_apply(&pod_of(watched_pod("other", "gated", true)));
    feed.init_apply(&pod_of(watched_pod("other", "batch", false)));
    feed.init_done();
    assert!(cache.read().synced().pods);
    assert_eq!(held_pods(&cache), ["other/gated", "shop/plain"]);
    // Watch events: the same rule.
    feed.apply(&pod_of(watched_pod("other", "batch-2", false)));
    feed.apply(&pod_of(watched_pod("other", "gated-2", true)));
    assert_eq!(
        held_pods(&cache),
        ["other/gated", "other/gated-2", "shop/plain"]
    );
    // A re-list in place keeps the same pods (those not kept are not "seen", and not missed).
    feed.init();
    feed.init_apply(&pod_of(watched_pod("shop", "plain", false)));
    feed.init_apply(&pod_of(watched_pod("other", "gated", true)));
    feed.init_apply(&pod_of(watched_pod("other", "batch", false)));
    feed.init_done();
    assert_eq!(held_pods(&cache), ["other/gated", "shop/plain"]);
}

#[test]
fn a_namespace_opting_out_drops_its_pods_without_our_gates() {
    let (cache, mut namespaces) = namespaces_listed();
    let mut feed = Feed::<WatchedPod>::new(cache.clone());
    feed.init();
    feed.init_apply(&pod_of(watched_pod("shop", "plain", false)));
    feed.init_apply(&pod_of(watched_pod("shop", "gated", true)));
    feed.init_done();
    assert_eq!(held_pods(&cache), ["shop/gated", "shop/plain"]);
    namespaces.apply(&namespace("shop", json!({}), json!({})));
    assert_eq!(held_pods(&cache), ["shop/gated"]);
    // Opting in again counts: the leader's pod watch lists again to take the others back in.
    let before = cache.read().opt_ins();
    namespaces.apply(&namespace(
        "shop",
        json!({ INJECT_LABEL: INJECT_LABEL_VALUE }),
        json!({}),
    ));
    assert_eq!(cache.read().opt_ins(), before + 1);
}

#[test]
fn a_namespace_created_opted_in_keeps_its_early_pods_without_a_relist() {
    let (cache, mut namespaces) = namespaces_listed();
    let mut feed = Feed::<WatchedPod>::new(cache.clone());
    feed.init();
    feed.init_done();
    let before = cache.read().opt_ins();
    // A new namespace's first pods may come before the Namespace itself: kept until it says.
    feed.apply(&pod_of(watched_pod("fresh", "early", false)));
    feed.apply(&pod_of(watched_pod("scratch", "early", false)));
    assert_eq!(held_pods(&cache), ["fresh/early", "scratch/early"]);
    namespaces.apply(&namespace(
        "fresh",
        json!({ INJECT_LABEL: INJECT_LABEL_VALUE }),
        json!({}),
    ));
    namespaces.apply(&namespace("scratch", json!({}), json!({})));
    assert_eq!(held_pods(&cache), ["fresh/early"]);
    // Created with the label: nothing was dropped, so no re-list of every pod is asked for.
    assert_eq!(cache.read().opt_ins(), before);
    // A known namespace that gets the label does ask for one.
    namespaces.apply(&namespace(
        "scratch",
        json!({ INJECT_LABEL: INJECT_LABEL_VALUE }),
        json!({}),
    ));
    assert_eq!(cache.read().opt_ins(), before + 1);
}

type Handle = tower_test::mock::Handle<
    hyper::Request<kube::client::Body>,
    hyper::Response<kube::client::Body>,
>;

/// A scripted API server: every list answers the items `lists` holds for its path (none when
/// absent) and each path listed is reported on `listed`; watches are held open unanswered.
async fn serve_lists(
    mut handle: Handle,
    lists: Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<Value>>>>,
    listed: tokio::sync::mpsc::UnboundedSender<String>,
) {
    let mut watches = Vec::new();
    while let Some((req, send)) = handle.next_request().await {
        let query = req.uri().query().unwrap_or_default();
        if query.split('&').any(|kv| kv == "watch=true") {
            watches.push(send);
            continue;
        }
        let path = req.uri().path().to_string();
        let items = lists
            .lock()
            .unwrap()
            .get(&path)
            .cloned()
            .unwrap_or_default();
        let body = json!({ "apiVersion": "v1", "kind": "List", "metadata": { "resourceVersion": "1" }, "items": items });
        send.send_response(
            hyper::Response::builder()
                .body(kube::client::Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap(),
        );
        let _ = listed.send(path);
    }
}

/// Every path listed so far (waiting `for_` of paused time first).
async fn listed_within(
    listed: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    for_: Duration,
) -> Vec<String> {
    tokio::time::sleep(for_).await;
    let mut paths = Vec::new();
    while let Ok(p) = listed.try_recv() {
        paths.push(p);
    }
    paths
}

const PODS: &str = "/api/v1/pods";

#[tokio::test(start_paused = true)]
async fn a_webhook_only_replica_never_lists_pods() {
    let (service, handle) = tower_test::mock::pair();
    let (tx, mut listed) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(serve_lists(handle, Arc::default(), tx));
    let cache = Arc::new(Cache::default());
    spawn_watchers(
        Client::new(service, "default"),
        cache.clone(),
        Arc::new(Metrics::new()),
        Duration::from_secs(120),
    );
    let paths = listed_within(&mut listed, Duration::from_secs(60)).await;
    assert!(
        paths.contains(&"/api/v1/namespaces".to_string()),
        "{paths:?}"
    );
    assert!(!paths.iter().any(|p| p == PODS), "{paths:?}");
    let s = cache.read().synced();
    assert!(s.bindings && s.services && s.namespaces && !s.pods);
}

#[tokio::test(start_paused = true)]
async fn pods_are_listed_only_while_leading_and_forgotten_after() {
    let (service, handle) = tower_test::mock::pair();
    let (tx, mut listed) = tokio::sync::mpsc::unbounded_channel();
    let lists = Arc::new(std::sync::Mutex::new(std::collections::HashMap::from([(
        PODS.to_string(),
        vec![
            watched_pod("shop", "plain", false),
            watched_pod("other", "gated", true),
            watched_pod("other", "batch", false),
        ],
    )])));
    tokio::spawn(serve_lists(handle, lists.clone(), tx));
    let cache = Arc::new(Cache::default());
    let (leading_tx, leading) = tokio::sync::watch::channel(false);
    let pods = watch_pods_while_leading(Client::new(service, "default"), cache.clone(), leading);

    // A follower: no pod list, however long.
    assert!(
        listed_within(&mut listed, Duration::from_secs(60))
            .await
            .is_empty()
    );
    // Leading, but the Namespaces are not listed yet: still none (the opted-in namespaces'
    // pods would be dropped).
    leading_tx.send_replace(true);
    assert!(
        listed_within(&mut listed, Duration::from_secs(10))
            .await
            .is_empty()
    );
    let mut namespaces = namespaces_listed_in(&cache);
    assert_eq!(
        listed_within(&mut listed, Duration::from_secs(1)).await,
        [PODS]
    );
    assert!(cache.read().synced().pods);
    assert_eq!(held_pods(&cache), ["other/gated", "shop/plain"]);

    // `other` opts in: its pods are listed again and come in.
    namespaces.apply(&namespace(
        "other",
        json!({ INJECT_LABEL: INJECT_LABEL_VALUE }),
        json!({}),
    ));
    assert_eq!(
        listed_within(&mut listed, Duration::from_secs(1)).await,
        [PODS]
    );
    assert_eq!(
        held_pods(&cache),
        ["other/batch", "other/gated", "shop/plain"]
    );
    // Another change of a namespace that is no opt-in lists nothing.
    namespaces.apply(&namespace(
        "shop",
        json!({ INJECT_LABEL: INJECT_LABEL_VALUE }),
        json!({ PRESTOP_SLEEP_ANNOTATION: "5s" }),
    ));
    assert!(
        listed_within(&mut listed, Duration::from_secs(1))
            .await
            .is_empty()
    );

    // A blip: leadership lost and back within the grace keeps the watch, lists nothing.
    leading_tx.send_replace(false);
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(held_pods(&cache).len(), 3);
    leading_tx.send_replace(true);
    assert!(
        listed_within(&mut listed, Duration::from_secs(60))
            .await
            .is_empty()
    );
    assert!(cache.read().synced().pods);

    // Stepping down for longer than the grace forgets every pod; leading again lists them again.
    leading_tx.send_replace(false);
    tokio::time::sleep(KEEP_PODS_AFTER_LEADING - Duration::from_secs(1)).await;
    assert_eq!(held_pods(&cache).len(), 3, "kept through the grace");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(held_pods(&cache).is_empty());
    assert!(!cache.read().synced().pods);
    assert!(
        listed_within(&mut listed, Duration::from_secs(60))
            .await
            .is_empty()
    );
    leading_tx.send_replace(true);
    assert_eq!(
        listed_within(&mut listed, Duration::from_secs(1)).await,
        [PODS]
    );
    assert_eq!(held_pods(&cache).len(), 3);

    // Shutdown: stopped and forgotten.
    pods.stop().await;
    assert!(held_pods(&cache).is_empty() && !cache.read().synced().pods);
    assert_eq!(
        leading_tx.receiver_count(),
        0,
        "the pod watch let `leading` go"
    );
}

#[test]
fn the_slim_service_and_binding_views_convert_as_the_full_types_do() {
    let managed = json!([{ "manager": "helm", "operation": "Update", "fieldsType": "FieldsV1",
                           "fieldsV1": { "f:spec": { "f:selector": {} } } }]);
    let svc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": "web", "namespace": "shop", "resourceVersion": "7", "uid": "u",
                      "labels": { "team": "a" }, "annotations": { "x": "y" }, "managedFields": managed },
        "spec": { "selector": { "app": "web", "tier": "front" }, "type": "ClusterIP",
                  "ports": [{ "name": "http", "port": 80, "targetPort": "http", "protocol": "TCP" },
                            { "port": 8443, "targetPort": 8443 }, { "port": 9000 }] },
        "status": { "loadBalancer": {} }
    });
    let slim: WatchedService = serde_json::from_value(svc.clone()).unwrap();
    let full: Service = serde_json::from_value(svc).unwrap();
    assert_eq!(slim.convert(), full.convert());
    assert_eq!(
        (slim.name_any(), slim.namespace(), slim.resource_version()),
        ("web".into(), Some("shop".into()), Some("7".into()))
    );
    assert!(slim.metadata.managed_fields.is_none() && slim.metadata.labels.is_none());
    let no_spec = json!({ "metadata": { "name": "x", "namespace": "shop" } });
    let slim: WatchedService = serde_json::from_value(no_spec.clone()).unwrap();
    assert!(
        slim.convert().is_none()
            && serde_json::from_value::<Service>(no_spec)
                .unwrap()
                .convert()
                .is_none()
    );

    for spec in [
        json!({ "targetGroupARN": "arn:x", "targetType": "ip", "ipAddressType": "ipv6",
                "serviceRef": { "name": "web", "port": "http" }, "networking": { "ingress": [] } }),
        json!({ "targetGroupARN": "arn:y", "serviceRef": { "name": "web", "port": 80 } }),
        json!({ "targetGroupName": "tg", "serviceRef": { "name": "web" } }),
    ] {
        let tgb = json!({
            "apiVersion": "elbv2.k8s.aws/v1beta1", "kind": "TargetGroupBinding",
            "metadata": { "name": "web-tgb", "namespace": "shop", "resourceVersion": "9", "managedFields": managed },
            "spec": spec
        });
        let slim: WatchedBinding = serde_json::from_value(tgb.clone()).unwrap();
        let full: TargetGroupBinding = serde_json::from_value(tgb).unwrap();
        assert_eq!(slim.convert(), full.convert(), "{spec}");
        assert_eq!(slim.resource_version().as_deref(), Some("9"));
    }
}
