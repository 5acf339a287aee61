//! Pods as real servers on loopback: start delay, readiness probe, the kubelet's Ready rule
//! with readiness gates, and graceful termination with a preStop sleep.

mod common;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use rig::kubelet::{Kubelet, reqwest_like::Client};
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn pod(name: &str, gates: bool) -> Pod {
    let mut p = json!({
        "metadata": {"name": name, "annotations": {"rig.readygate.io/start-delay-ms": "300"}},
        "spec": {
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "app", "image": "web:1",
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1},
                "lifecycle": {"preStop": {"sleep": {"seconds": 1}}}
            }]
        }
    });
    if gates {
        p["spec"]["readinessGates"] = json!([{"conditionType": "target-health.elbv2.k8s.aws/web"}]);
    }
    serde_json::from_value(p).unwrap()
}

fn condition(p: &Pod, t: &str) -> Option<String> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| c.status.clone())
}

async fn wait_for(pods: &Api<Pod>, name: &str, what: &str, f: impl Fn(&Pod) -> bool) -> Pod {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(p) = pods.get(name).await
            && f(&p)
        {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {name}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_pod_serves_becomes_ready_by_the_kubelet_rule_and_terminates_gracefully() {
    let (_server, client, store) = common::api().await;
    let _kubelet = Kubelet::start(store.clone());
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "app"}})).unwrap(),
        )
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "app");
    let created_at = Instant::now();
    pods.create(&PostParams::default(), &pod("plain", false))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &pod("gated", true))
        .await
        .unwrap();

    let plain = wait_for(&pods, "plain", "Ready", |p| {
        condition(p, "Ready").as_deref() == Some("True")
    })
    .await;
    let took = created_at.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "not ready before the start delay: {took:?}"
    );
    let ip = plain.status.as_ref().unwrap().pod_ip.clone().unwrap();
    assert!(ip.starts_with("127.0.") && !ip.ends_with(".0"), "{ip}");
    assert!(
        plain
            .status
            .as_ref()
            .unwrap()
            .container_statuses
            .as_ref()
            .unwrap()[0]
            .ready
    );
    let addr: SocketAddr = format!("{ip}:8080").parse().unwrap();
    assert!(
        Client
            .get_ok(addr, "/", Duration::from_secs(1))
            .await
            .is_ok(),
        "the pod serves on its own address"
    );

    // Containers ready but the gate is missing: not Ready.
    let gated = wait_for(&pods, "gated", "ContainersReady", |p| {
        condition(p, "ContainersReady").as_deref() == Some("True")
    })
    .await;
    assert_eq!(condition(&gated, "Ready").as_deref(), Some("False"));
    let ready = gated
        .status
        .as_ref()
        .unwrap()
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready.reason.as_deref(), Some("ReadinessGatesNotReady"));
    assert!(ready.message.unwrap().contains("corresponding condition of pod readiness gate \"target-health.elbv2.k8s.aws/web\" does not exist"));
    let set = |status: &str| json!({"status": {"conditions": [{"type": "target-health.elbv2.k8s.aws/web", "status": status}]}});
    pods.patch_status(
        "gated",
        &PatchParams::default(),
        &Patch::Strategic(set("False")),
    )
    .await
    .unwrap();
    assert_eq!(
        condition(&pods.get("gated").await.unwrap(), "Ready").as_deref(),
        Some("False")
    );
    pods.patch_status(
        "gated",
        &PatchParams::default(),
        &Patch::Strategic(set("True")),
    )
    .await
    .unwrap();
    assert_eq!(
        condition(&pods.get("gated").await.unwrap(), "Ready").as_deref(),
        Some("True"),
        "Ready as soon as the gate is True"
    );

    // Deletion: the pod keeps serving through its preStop sleep, then stops and is removed.
    let deleted_at = Instant::now();
    pods.delete("plain", &DeleteParams::default())
        .await
        .unwrap();
    assert!(
        pods.get("plain")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        Client
            .get_ok(addr, "/", Duration::from_secs(1))
            .await
            .is_ok(),
        "still serving during preStop"
    );
    let deadline = Instant::now() + Duration::from_secs(6);
    while pods.get("plain").await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "pod removed within its grace period"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        deleted_at.elapsed() >= Duration::from_secs(1),
        "not before the preStop sleep ended"
    );
    assert!(
        Client
            .get_ok(addr, "/", Duration::from_secs(1))
            .await
            .is_err(),
        "the server stopped"
    );
}
