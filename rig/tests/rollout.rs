//! Rollouts through the rig without readygate: the rig sees the downtime of an ungated
//! rollout, and a gated one driven by a minimal stand-in controller (kube-rs client + the
//! Query API) loses nothing. The e2e suite runs the same scenarios with the real binary.

mod common;

use common::{FakeWebhook, PatchEncoding};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use rig::certs::Certs;
use rig::demo::{deploy, measured_rollout, summary_line, timeline_table};
use rig::elb::client::QueryClient;
use rig::elb::xml::Answer;
use rig::rig::{Rig, RigConfig, web_deployment, webhook_service};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn ungated_rollout_loses_requests_and_a_gated_one_with_a_stand_in_controller_does_not() {
    common::crypto();
    let _serial = rig::serial::exclusive().await; // one rollout scenario at a time on this machine
    let rig = Rig::start(RigConfig::default()).await.unwrap();

    // Ungated: pods count as available as soon as their containers are ready.
    rig.namespace("plain", false).await.unwrap();
    let app = rig.app("plain", "web").await.unwrap();
    let dep = web_deployment(&app, 3, Duration::from_millis(200), None);
    deploy(&rig, &app, &dep, "v1").await.unwrap();
    let r = measured_rollout(
        &rig,
        &app,
        &dep,
        "v2",
        "v1",
        50,
        Duration::from_secs(60),
        None,
    )
    .await;
    println!("ungated {}\n{}", summary_line(&r), timeline_table(&r));
    assert!(r.rollout.complete());
    assert!(
        r.failed() > 0,
        "the rig must see the downtime of an ungated rollout"
    );
    assert!(
        r.failure_kinds().contains_key("HTTP 503"),
        "{:?}",
        r.failure_kinds()
    );
    let (start, end) = r.failed_by_phase();
    assert!(
        start > 0 && end > 0,
        "an ungated pod without a preStop sleep loses requests at both ends: {start} / {end}"
    );

    // Gated, with a stand-in for readygate: the fake webhook injects the gate, a kube-rs
    // loop sets it True once the rig's ELBv2 endpoint says healthy.
    let (svc, svc_ns) = webhook_service(&common::manifests_dir()).unwrap();
    let certs = Certs::for_service(&svc, &svc_ns).unwrap();
    let hook = FakeWebhook::new(PatchEncoding::ByteArray);
    let (hook_addr, _hook_task) = hook.serve(&certs).await;
    rig.install_webhook(&common::manifests_dir(), hook_addr, &certs.ca_pem)
        .unwrap();
    rig.namespace("gated", true).await.unwrap();
    let app = rig.app("gated", "web").await.unwrap();
    let client = common::client_for(&rig.api).await;
    let controller = tokio::spawn(stand_in_controller(
        client,
        QueryClient::new(rig.elb_api.addr),
        app.arn.clone(),
    ));
    // The application brings a preStop sleep that outlasts the termination window itself.
    let own_pre_stop = rig::demo::prestop_sleep_secs(&rig.config);
    let dep = web_deployment(&app, 3, Duration::from_millis(200), Some(own_pre_stop));
    deploy(&rig, &app, &dep, "v1").await.unwrap();
    let r = measured_rollout(
        &rig,
        &app,
        &dep,
        "v2",
        "v1",
        50,
        Duration::from_secs(60),
        None,
    )
    .await;
    println!(
        "gated (stand-in) {}\n{}",
        summary_line(&r),
        timeline_table(&r)
    );
    controller.abort();
    assert!(r.rollout.complete());
    assert_eq!(r.failed(), 0, "{:?}", r.failure_kinds());
    assert_eq!(
        r.gate_lags().len(),
        3,
        "every new pod had its gate set after it was healthy"
    );
    assert!(r.sent() > 100);
}

async fn stand_in_controller(client: kube::Client, elb: QueryClient, arn: String) {
    let pods: Api<Pod> = Api::all(client.clone());
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Ok(list) = pods.list(&ListParams::default()).await else {
            continue;
        };
        let Ok(Answer::TargetHealth(health)) = elb
            .answer("DescribeTargetHealth", &[("TargetGroupArn", arn.clone())])
            .await
        else {
            continue;
        };
        for p in list.items {
            let gated = p
                .spec
                .as_ref()
                .and_then(|s| s.readiness_gates.as_ref())
                .is_some_and(|g| !g.is_empty());
            let ip = p
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .unwrap_or_default();
            if !gated || ip.is_empty() {
                continue;
            }
            if health
                .iter()
                .any(|(id, _, state, _)| *id == ip && state == "healthy")
            {
                let api: Api<Pod> =
                    Api::namespaced(client.clone(), p.metadata.namespace.as_deref().unwrap());
                let patch = json!({"metadata": {"uid": p.metadata.uid}, "status": {"conditions": [{"type": "target-health.elbv2.k8s.aws/web", "status": "True"}]}});
                let _ = api
                    .patch_status(
                        p.metadata.name.as_deref().unwrap(),
                        &PatchParams::default(),
                        &Patch::Strategic(&patch),
                    )
                    .await;
            }
        }
    }
}
