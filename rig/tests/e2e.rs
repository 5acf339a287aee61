//! End to end: the real `readygate serve` binary against the rig. Skipped, with a message,
//! only when the binary has not been built.

mod common;

use rig::demo::{
    Interlude, Mode, ModeOptions, deployed_app, measured_rollout, prestop_sleep_arg, run_mode,
    summary_line, timeline_table,
};
use rig::kubelet::LB_HEALTH_ANNOTATION;
use rig::readygate::find_binary;
use rig::rig::RigConfig;
use rig::stage::Stage;
use rig::timeline::Milestone;
use serde_json::Value;
use std::time::Duration;

/// The readygate binary; None (the test then passes with a SKIPPED line) only outside CI and
/// scripts/test, where a missing binary would hide a broken build.
fn binary() -> Option<std::path::PathBuf> {
    common::crypto();
    let bin = find_binary(None);
    if bin.is_none() {
        assert!(
            std::env::var_os("CI").is_none() && std::env::var_os("READYGATE_BIN").is_none(),
            "the readygate binary was not found (READYGATE_BIN={:?})",
            std::env::var_os("READYGATE_BIN")
        );
        println!(
            "SKIPPED: the readygate binary is not built (run `cargo build` at the repository root, or set READYGATE_BIN)"
        );
    }
    bin
}

/// The rig with `replicas` readygate replicas as the demo runs them: termination handling on
/// (`--prestop-sleep`).
async fn stage_with(replicas: usize) -> Option<std::sync::Arc<Stage>> {
    stage_opts(replicas, false).await
}

/// The stage, with readygate behind the fault proxy when `behind_proxy`.
async fn stage_opts(replicas: usize, behind_proxy: bool) -> Option<std::sync::Arc<Stage>> {
    let bin = binary()?;
    let args = [prestop_sleep_arg(&RigConfig::default())];
    Some(std::sync::Arc::new(
        Stage::start_with(
            &bin,
            &common::manifests_dir(),
            &args,
            replicas,
            behind_proxy,
        )
        .await
        .unwrap_or_else(|e| panic!("starting the rig and readygate: {e:#}")),
    ))
}

async fn stage() -> Option<std::sync::Arc<Stage>> {
    stage_with(1).await
}

fn report(r: &rig::demo::RolloutResult) {
    println!("{}\n{}", summary_line(r), timeline_table(r));
}

#[test]
fn readygate_rollouts_lose_no_request_three_times_in_a_row() {
    rig::cluster::test(|_| async {
        let _serial = rig::serial::exclusive().await; // one rollout scenario at a time on this machine
        let Some(stage) = stage().await else { return };
        let options = ModeOptions {
            rollouts: 3,
            ..ModeOptions::default()
        };
        let mode = run_mode(&stage.rig, Mode::Readygate, &options, report)
            .await
            .unwrap();
        // The pods of the last revision, as the webhook left them.
        let pods = stage
            .rig
            .pods(
                &mode.namespace,
                &format!("{}=v4", rig::deploy::REVISION_LABEL),
            )
            .await
            .unwrap();
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
    })
}

#[test]
fn gates_only_still_loses_requests_on_the_termination_side() {
    rig::cluster::test(|_| async {
        let _serial = rig::serial::exclusive().await; // one rollout scenario at a time on this machine
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
    })
}

#[test]
fn an_ungated_rollout_loses_requests() {
    rig::cluster::test(|_| async {
        let _serial = rig::serial::exclusive().await; // one rollout scenario at a time on this machine
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
            .pods(&mode.namespace, "app=web")
            .await
            .unwrap()
            .into_iter()
            .find(|p| p["metadata"]["name"] == pod.name.as_str())
            .map(|p| p["spec"].clone())
            .unwrap();
        // The API server's default grace period, no preStop: as the template had it.
        assert!(
            spec.pointer("/containers/0/lifecycle").is_none()
                && spec["terminationGracePeriodSeconds"] == 30,
            "a pod that gets no gate is not touched: {spec}"
        );
    })
}

#[test]
fn readygate_restarted_mid_rollout_still_loses_nothing() {
    rig::cluster::test(|_| async {
        let _serial = rig::serial::exclusive().await; // one rollout scenario at a time on this machine
        let Some(stage) = stage().await else { return };
        let rig = &stage.rig;
        let o = ModeOptions::default();
        let (app, dep) = deployed_app(rig, Mode::Readygate, &o).await.unwrap();
        let first_pid = stage.pids().await;
        let s2 = stage.clone();
        let restart = Interlude {
            after: Duration::from_millis(2500),
            action: Box::pin(async move {
                s2.restart(0).await.expect("restarting readygate");
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
        let second_pid = stage.pids().await;
        stage.stop().await.unwrap();
        assert_ne!(first_pid, second_pid, "readygate was restarted");
        assert!(
            r.rollout.complete(),
            "readygate log:\n{}",
            stage.log_tail(30)
        );
        assert_eq!(r.failed(), 0, "{:?}", r.failure_kinds());
    })
}

#[test]
fn a_pod_whose_target_never_turns_healthy_keeps_the_rollout_waiting() {
    rig::cluster::test(|_| async {
        let _serial = rig::serial::exclusive().await; // one rollout scenario at a time on this machine
        let Some(stage) = stage().await else { return };
        let rig = &stage.rig;
        let o = ModeOptions::default();
        let (app, mut dep) = deployed_app(rig, Mode::Readygate, &o).await.unwrap();
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
            .pods(&app.namespace, "app=web")
            .await
            .unwrap()
            .into_iter()
            .find(|p| p["metadata"]["name"] == new_pod.name.as_str())
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
    })
}

/// A gated namespace with the app deployed at `v1`, ready for a measured rollout.
async fn deployed(stage: &Stage) -> (rig::rig::App, rig::deploy::Deployment, ModeOptions) {
    let rig = &stage.rig;
    let o = ModeOptions::default();
    let (app, dep) = deployed_app(rig, Mode::Readygate, &o).await.unwrap();
    (app, dep, o)
}

/// Calls of readygate's webhook that failed (and so, with failurePolicy Ignore, pods created
/// without gates) or were rejected, as kube-apiserver counts them.
async fn failed_admissions(stage: &Stage) -> f64 {
    rig::k8s::audit::admission_failures(&stage.rig.client)
        .await
        .expect("the API server's metrics")
}

fn assert_clean(stage: &Stage, r: &rig::demo::RolloutResult) {
    assert!(
        r.rollout.complete() && r.drained.is_some(),
        "the rollout completed; readygate logs:\n{}",
        stage.log_tail(30)
    );
    assert_eq!(r.failed(), 0, "{:?}", r.failure_kinds());
    let new: Vec<_> = r.pods.iter().filter(|p| p.revision == r.revision).collect();
    assert_eq!(new.len(), 3);
    for p in new {
        assert!(!p.gates.is_empty(), "{} got its gate", p.name);
        assert!(
            p.at[&Milestone::GateTrue] >= p.at[&Milestone::ElbHealthy],
            "{}: gate True only once the load balancer said healthy",
            p.name
        );
    }
}

/// Rolls the deployed app to `v2` under load, with `interlude` mid-rollout, and prints the report.
async fn roll_to_v2(
    stage: &Stage,
    (app, dep, o): &(rig::rig::App, rig::deploy::Deployment, ModeOptions),
    interlude: Option<Interlude>,
) -> rig::demo::RolloutResult {
    let r = measured_rollout(
        &stage.rig, app, dep, "v2", "v1", o.rate, o.timeout, interlude,
    )
    .await;
    report(&r);
    r
}

#[test]
fn readygate_rolled_while_the_app_rolls_gives_every_pod_its_gates() {
    rig::cluster::test(|_| async {
        let _serial = rig::serial::exclusive().await;
        let Some(stage) = stage_with(2).await else {
            return;
        };
        let deployment = deployed(&stage).await;
        let s2 = stage.clone();
        // Both replicas replaced, one after the other, while the app's pods are being created.
        let roll = Interlude {
            after: Duration::from_millis(1500),
            action: Box::pin(async move {
                s2.replace(0).await.expect("replacing the first replica");
                s2.replace(0).await.expect("replacing the second replica");
            }),
        };
        let before = stage.pids().await;
        let failed_before = failed_admissions(&stage).await;
        let r = roll_to_v2(&stage, &deployment, Some(roll)).await;
        let after = stage.pids().await;
        let failed = failed_admissions(&stage).await - failed_before;
        stage.stop().await.unwrap();
        assert_eq!(after.len(), 2, "two replicas serve after the roll");
        assert!(
            before.iter().all(|p| !after.contains(p)),
            "both replicas were replaced: {before:?} → {after:?}"
        );
        assert_eq!(failed, 0.0, "no admission call failed");
        assert_clean(&stage, &r);
    })
}

#[test]
fn leader_killed_mid_rollout_the_other_replica_takes_over() {
    rig::cluster::test(|_| async {
        let _serial = rig::serial::exclusive().await;
        let Some(stage) = stage_with(2).await else {
            return;
        };
        let deployment = deployed(&stage).await;
        let s2 = stage.clone();
        let killed = std::sync::Arc::new(std::sync::Mutex::new(None));
        let k2 = killed.clone();
        let kill = Interlude {
            after: Duration::from_millis(2500),
            action: Box::pin(async move {
                let old = s2.kill_leader().await.expect("killing the leader");
                let at = std::time::Instant::now();
                // The lease lasts 15 s: the other replica must hold it within that (and a poll).
                while s2.leader().await.is_none_or(|l| l == old)
                    && at.elapsed() < Duration::from_secs(25)
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let leader = s2.leader().await;
                *k2.lock().unwrap() = Some((old, leader, at.elapsed()));
            }),
        };
        let r = roll_to_v2(&stage, &deployment, Some(kill)).await;
        stage.stop().await.unwrap();
        let (old, new, took) = killed
            .lock()
            .unwrap()
            .clone()
            .expect("the leader was killed");
        println!("leader {old} killed; {new:?} took over after {took:?}");
        assert!(
            new.as_ref().is_some_and(|n| *n != old) && took <= Duration::from_secs(17),
            "another replica leads within the lease duration: {new:?} after {took:?}"
        );
        assert_clean(&stage, &r);
    })
}

#[test]
fn an_api_blip_on_bindings_releases_no_gate_early() {
    rig::cluster::test(|_| async {
        let _serial = rig::serial::exclusive().await;
        let Some(stage) = stage_opts(1, true).await else {
            return;
        };
        let deployment = deployed(&stage).await;
        let s2 = stage.clone();
        let blip = Interlude {
            after: Duration::from_millis(1000),
            action: Box::pin(async move {
                s2.proxy
                    .as_ref()
                    .expect("readygate runs behind the fault proxy")
                    .outage(vec!["/apis/elbv2.k8s.aws/".into()], Duration::from_secs(4));
            }),
        };
        let r = roll_to_v2(&stage, &deployment, Some(blip)).await;
        stage.stop().await.unwrap();
        assert_clean(&stage, &r);
    })
}

#[test]
fn an_elbv2_black_hole_does_not_stall_the_rollout() {
    rig::cluster::test(|_| async {
        let _serial = rig::serial::exclusive().await;
        let Some(stage) = stage_with(1).await else {
            return;
        };
        let deployment = deployed(&stage).await;
        // readygate's call: the load balancer controller's own calls are answered.
        stage
            .rig
            .elb
            .black_hole(rig::readygate::ACCESS_KEY, "DescribeTargetHealth", 1);
        let r = roll_to_v2(&stage, &deployment, None).await;
        stage.stop().await.unwrap();
        assert_clean(&stage, &r);
    })
}
