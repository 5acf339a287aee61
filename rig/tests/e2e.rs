//! End to end: the real `readygate serve` binary against the rig. Skipped, with a message,
//! only when the binary has not been built.

mod common;

use rig::apiserver::resources;
use rig::demo::{
    Interlude, Mode, ModeOptions, deploy, measured_rollout, prestop_sleep_arg, run_mode,
    summary_line, timeline_table,
};
use rig::kubelet::LB_HEALTH_ANNOTATION;
use rig::readygate::find_binary;
use rig::rig::RigConfig;
use rig::stage::Stage;
use rig::timeline::Milestone;
use serde_json::Value;
use std::time::Duration;

async fn stage() -> Option<Stage> {
    common::crypto();
    let Some(bin) = find_binary(None) else {
        // Under CI and scripts/test the binary must be there: a skip would hide a broken build.
        assert!(
            std::env::var_os("CI").is_none() && std::env::var_os("READYGATE_BIN").is_none(),
            "the readygate binary was not found (READYGATE_BIN={:?})",
            std::env::var_os("READYGATE_BIN")
        );
        println!(
            "SKIPPED: the readygate binary is not built (run `cargo build` at the repository root, or set READYGATE_BIN)"
        );
        return None;
    };
    // readygate as the demo runs it: termination handling on (`--prestop-sleep`).
    let args = [prestop_sleep_arg(&RigConfig::default())];
    Some(
        Stage::start(&bin, &common::manifests_dir(), &args)
            .await
            .expect("starting the rig and readygate"),
    )
}

fn report(r: &rig::demo::RolloutResult) {
    println!("{}\n{}", summary_line(r), timeline_table(r));
}

#[tokio::test]
async fn readygate_rollouts_lose_no_request_three_times_in_a_row() {
    let _serial = common::exclusive().await; // one rollout scenario at a time on this machine
    let Some(stage) = stage().await else { return };
    let options = ModeOptions {
        rollouts: 3,
        ..ModeOptions::default()
    };
    let mode = run_mode(&stage.rig, Mode::Readygate, &options, report)
        .await
        .unwrap();
    // The pods of the last revision, as the webhook left them.
    let (pods, _) = stage.rig.store.list(
        resources::pods(),
        Some(Mode::Readygate.namespace()),
        &rig::apiserver::selector::LabelSelector::parse("pod-template-hash=v4").unwrap(),
        &Default::default(),
    );
    stage.stop().await.unwrap();
    assert_eq!(
        mode.ungated_new_pods(),
        0,
        "the webhook gave every new pod its gate"
    );
    let sleep = rig::demo::prestop_sleep_secs(&RigConfig::default());
    assert_eq!(pods.len(), 3);
    for p in &pods {
        assert_eq!(
            p.pointer("/spec/containers/0/lifecycle/preStop/sleep/seconds"),
            Some(&Value::from(sleep)),
            "preStop sleep injected: {}",
            p["spec"]
        );
        assert_eq!(
            p.pointer("/spec/terminationGracePeriodSeconds"),
            Some(&Value::from(30 + sleep)),
            "the application keeps its 30 s on top of the sleep"
        );
    }
    for r in &mode.rollouts {
        assert!(
            r.rollout.complete() && r.drained.is_some(),
            "rollout to {} completed; readygate log:\n{}",
            r.revision,
            stage.log_tail(30)
        );
        assert_eq!(
            r.failed(),
            0,
            "rollout to {} lost requests: {:?}",
            r.revision,
            r.failure_kinds()
        );
        assert!(r.sent() > 200);
        for p in r.pods.iter().filter(|p| p.revision == r.revision) {
            let (healthy, gate, ready) = (
                p.at[&Milestone::ElbHealthy],
                p.at[&Milestone::GateTrue],
                p.at[&Milestone::Ready],
            );
            assert!(
                gate >= healthy,
                "{}: gate True only once the load balancer says healthy",
                p.name
            );
            assert!(
                ready >= gate,
                "{}: Ready only once the gate is True",
                p.name
            );
        }
    }
}

#[tokio::test]
async fn gates_only_still_loses_requests_on_the_termination_side() {
    let _serial = common::exclusive().await; // one rollout scenario at a time on this machine
    let Some(stage) = stage().await else { return };
    let mode = run_mode(&stage.rig, Mode::GatesOnly, &ModeOptions::default(), report)
        .await
        .unwrap();
    stage.stop().await.unwrap();
    let r = &mode.rollouts[0];
    assert!(r.rollout.complete() && r.drained.is_some());
    assert_eq!(mode.ungated_new_pods(), 0, "the gates were injected");
    let (start, end) = r.failed_by_phase();
    assert_eq!(start, 0, "the gates close the start side");
    assert!(
        end > 0,
        "without a preStop sleep a deleted pod still gets requests it can no longer answer"
    );
}

#[tokio::test]
async fn an_ungated_rollout_loses_requests() {
    let _serial = common::exclusive().await; // one rollout scenario at a time on this machine
    let Some(stage) = stage().await else { return };
    let mode = run_mode(&stage.rig, Mode::NoGates, &ModeOptions::default(), report)
        .await
        .unwrap();
    stage.stop().await.unwrap();
    let r = &mode.rollouts[0];
    assert!(r.rollout.complete());
    assert!(r.failed() > 0, "without gates the rig must see downtime");
    assert_eq!(
        mode.rollouts[0]
            .pods
            .iter()
            .filter(|p| !p.gates.is_empty())
            .count(),
        0,
        "no gates outside labelled namespaces"
    );
    let pod = r.pods.iter().find(|p| p.revision == r.revision).unwrap();
    let spec = stage
        .rig
        .store
        .get(resources::pods(), Mode::NoGates.namespace(), &pod.name)
        .map(|p| p["spec"].clone())
        .unwrap();
    assert!(
        spec.pointer("/containers/0/lifecycle").is_none()
            && spec.get("terminationGracePeriodSeconds").is_none(),
        "a pod that gets no gate is not touched: {spec}"
    );
}

#[tokio::test]
async fn readygate_restarted_mid_rollout_still_loses_nothing() {
    let _serial = common::exclusive().await; // one rollout scenario at a time on this machine
    let Some(stage) = stage().await else { return };
    let rig = &stage.rig;
    rig.namespace("gated", true).await.unwrap();
    let app = rig.app("gated", "web").await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let o = ModeOptions::default();
    let dep = rig::rig::web_deployment(&app, o.replicas, o.start_delay, o.own_pre_stop_secs);
    deploy(rig, &app, &dep, "v1").await.unwrap();
    let first_pid = stage.readygate.lock().await.as_ref().and_then(|r| r.pid());
    let handle = stage.readygate.clone();
    let restart = Interlude {
        after: Duration::from_millis(2500),
        action: Box::pin(async move {
            let mut slot = handle.lock().await;
            let old = slot.take().expect("readygate running");
            *slot = Some(old.restart().await.expect("restarting readygate"));
        }),
    };
    let r = measured_rollout(
        rig,
        &app,
        &dep,
        "v2",
        "v1",
        o.rate,
        o.timeout,
        Some(restart),
    )
    .await;
    report(&r);
    let second_pid = stage.readygate.lock().await.as_ref().and_then(|r| r.pid());
    stage.stop().await.unwrap();
    assert_ne!(first_pid, second_pid, "readygate was restarted");
    assert!(
        r.rollout.complete(),
        "readygate log:\n{}",
        stage.log_tail(30)
    );
    assert_eq!(r.failed(), 0, "{:?}", r.failure_kinds());
}

#[tokio::test]
async fn a_pod_whose_target_never_turns_healthy_keeps_the_rollout_waiting() {
    let _serial = common::exclusive().await; // one rollout scenario at a time on this machine
    let Some(stage) = stage().await else { return };
    let rig = &stage.rig;
    rig.namespace("gated", true).await.unwrap();
    let app = rig.app("gated", "web").await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let o = ModeOptions::default();
    let mut dep = rig::rig::web_deployment(&app, o.replicas, o.start_delay, o.own_pre_stop_secs);
    deploy(rig, &app, &dep, "v1").await.unwrap();
    // The new revision passes its readiness probe but fails the load balancer's health check.
    dep.template["metadata"]["annotations"][LB_HEALTH_ANNOTATION] = "fail".into();
    let r = measured_rollout(
        rig,
        &app,
        &dep,
        "v2",
        "v1",
        o.rate,
        Duration::from_secs(10),
        None,
    )
    .await;
    report(&r);
    stage.stop().await.unwrap();
    assert!(!r.rollout.complete(), "the rollout must wait");
    assert_eq!(
        (r.rollout.new_pods, r.rollout.new_ready, r.rollout.old_pods),
        (1, 0, 3),
        "one surge pod, not Ready; every old pod kept"
    );
    assert_eq!(r.failed(), 0, "{:?}", r.failure_kinds());
    let new_pod = r.pods.iter().find(|p| p.revision == "v2").unwrap();
    assert!(
        new_pod.at.contains_key(&Milestone::ContainersReady)
            && !new_pod.at.contains_key(&Milestone::Ready)
    );
    let pod = rig
        .store
        .get(resources::pods(), "gated", &new_pod.name)
        .unwrap();
    let gate = pod["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "target-health.elbv2.k8s.aws/web")
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(
        gate["status"], "False",
        "the gate condition is written, and False: {gate}"
    );
    assert_eq!(
        gate["reason"], "Target.ResponseCodeMismatch",
        "with the load balancer's reason: {gate}"
    );
}
