//! readygate beside the AWS Load Balancer Controller, the other writer of the gates'
//! conditions: the rig's model of v3.5.0, or the real controller when `RIG_AWS_LBC_BIN` names it
//! (the output says which). Both at their defaults, the controller's pod webhook off. What each
//! writer wrote is counted from the API server's audit log (`pods/status` patches by user), and a
//! pod watch records every value each gate condition took.
//!
//! - The everyday case (targets `initial`, then `healthy`): a few writes per gate between the
//!   two, never True → False.
//! - A target group attached to no load balancer (`unused` / `Target.NotInUse`), which readygate
//!   releases on its own and the AWS controller keeps False: readygate leaves the gate False, says
//!   so in an event, and neither writes again and again.

mod common;

use k8s_openapi::api::core::v1::Event;
use kube::api::ListParams;
use rig::demo::{Mode, ModeOptions, prestop_sleep_arg, run_mode, summary_line};
use rig::k8s::audit::READYGATE_USER;
use rig::rig::{RigConfig, web_deployment};
use rig::stage::Stage;
use std::collections::BTreeMap;
use std::time::Duration;

/// How often a gate's values went from True to False.
fn flips(v: &[common::GateValue]) -> usize {
    v.windows(2)
        .filter(|p| p[0].0 == "True" && p[1].0 == "False")
        .count()
}

fn by(w: &BTreeMap<String, usize>, user: &str) -> usize {
    w.get(user).copied().unwrap_or(0)
}

#[test]
fn everyday_rollouts_make_a_few_writes_per_gate_between_the_two_writers_and_no_flip() {
    let Some(bin) = common::readygate() else {
        return;
    };
    rig::cluster::test(|plane| async move {
        common::crypto();
        let _serial = rig::serial::exclusive().await;
        let stage = Stage::start(
            &bin,
            &common::manifests_dir(),
            &[prestop_sleep_arg(&RigConfig::default())],
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
        println!("load balancer controller: {}", stage.rig.lbc.describe());
        let from = rig::k8s::audit::requests(&plane.audit_log).unwrap().len();
        let ns = stage.rig.ns(Mode::Readygate.namespace());
        let (values, watch) = common::watch_gate_values(stage.rig.client.clone(), ns.clone());
        let options = ModeOptions {
            rollouts: 2,
            ..ModeOptions::default()
        };
        let report = run_mode(&stage.rig, Mode::Readygate, &options, |r| {
            println!("{}", summary_line(r))
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
        // Two of the controller's re-queues: any write the other provokes has happened.
        tokio::time::sleep(stage.rig.config.lbc_requeue * 2).await;
        watch.abort();
        stage.rig.lbc.check().unwrap();
        for r in &report.rollouts {
            assert!(r.rollout.complete(), "{r:?}");
            assert_eq!(r.failed(), 0, "{}", summary_line(r));
        }
        let writes = common::status_writes(plane, from, &ns);
        let values = values.lock().unwrap().clone();
        let lbc = rig::k8s::aws_lbc::USER;
        let gated: Vec<&String> = values.keys().collect();
        assert!(
            gated.len() >= 6,
            "3 replicas × (deploy + 2 rollouts): {gated:?}"
        );
        let (mut ours, mut theirs) = (0, 0);
        for pod in gated {
            let w = writes.get(pod).cloned().unwrap_or_default();
            let v = &values[pod];
            println!(
                "  {pod}: readygate {}, AWS controller {}; values {v:?}",
                by(&w, READYGATE_USER),
                by(&w, lbc)
            );
            ours += by(&w, READYGATE_USER);
            theirs += by(&w, lbc);
            // Registration in progress, initial, healthy: each written once, by whichever
            // writer is first, and at most once more by the other in a race.
            assert!(
                by(&w, READYGATE_USER) + by(&w, lbc) <= 6,
                "{pod}: {w:?} {v:?}"
            );
            assert_eq!(flips(v), 0, "{pod}: True → False: {v:?}");
            assert_eq!(v.last().map(|x| x.0.as_str()), Some("True"), "{pod}: {v:?}");
            // The words both write for a healthy target: none.
            assert_eq!(
                v.last().map(|x| (x.1.as_str(), x.2.as_str())),
                Some(("", "")),
                "{pod}: {v:?}"
            );
        }
        println!("gate writes in all: readygate {ours}, AWS controller {theirs}");
        stage.stop().await.unwrap();
    });
}

#[test]
fn a_group_attached_to_no_load_balancer_is_left_false_to_the_aws_controller_without_a_fight() {
    let Some(bin) = common::readygate() else {
        return;
    };
    rig::cluster::test(|plane| async move {
        common::crypto();
        let _serial = rig::serial::exclusive().await;
        // readygate at its defaults: it releases `unused` targets of unattached groups.
        let stage = Stage::start(&bin, &common::manifests_dir(), &[])
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        println!("load balancer controller: {}", stage.rig.lbc.describe());
        let rig = &stage.rig;
        let ns = rig.ns("coexist-unused");
        rig.namespace(&ns, true).await.unwrap();
        let app = rig.app(&ns, "web").await.unwrap();
        rig.elb
            .detach(&app.arn, &app.listener.load_balancer_arn)
            .unwrap();
        let from = rig::k8s::audit::requests(&plane.audit_log).unwrap().len();
        let (values, watch) = common::watch_gate_values(rig.client.clone(), ns.clone());
        let dep = web_deployment(&app, 2, Duration::from_millis(200), None);
        // Never complete: the gates stay False. The time it waits is the window in which a
        // fight would show: first ELB answers after 3 s, the controller re-queues every 1.5 s
        // (15 s real), readygate re-sends an unconfirmed write after 10 s.
        let r = dep.roll(&rig.client, "v1", Duration::from_secs(20)).await;
        watch.abort();
        rig.lbc.check().unwrap();

        let bindings: kube::Api<kube::api::DynamicObject> =
            kube::Api::namespaced_with(rig.client.clone(), &ns, &rig::lbc::target_group_bindings());
        let binding = bindings.get("web").await.unwrap();
        assert!(
            binding
                .metadata
                .finalizers
                .iter()
                .flatten()
                .any(|f| f == "elbv2.k8s.aws/resources"),
            "the AWS controller reconciles the binding: {:?}",
            binding.metadata.finalizers
        );
        let writes = common::status_writes(plane, from, &ns);
        let values = values.lock().unwrap().clone();
        let lbc = rig::k8s::aws_lbc::USER;
        assert_eq!(values.len(), 2, "{values:?}");
        let events: kube::Api<Event> = kube::Api::namespaced(rig.client.clone(), &ns);
        let events = events.list(&ListParams::default()).await.unwrap();
        for (pod, v) in &values {
            let w = writes.get(pod).cloned().unwrap_or_default();
            println!(
                "  {pod}: readygate {}, AWS controller {}; {} True → False flips; values {:?}",
                by(&w, READYGATE_USER),
                by(&w, lbc),
                flips(v),
                &v[..v.len().min(4)]
            );
        }
        assert!(!r.complete(), "the pods turned Ready: {r:?}");
        for (pod, v) in &values {
            let w = writes.get(pod).cloned().unwrap_or_default();
            assert!(
                v.iter().all(|(status, _, _)| status == "False"),
                "{pod}: the gate went True: {v:?}"
            );
            assert_eq!(
                v.last().map(|x| x.1.as_str()),
                Some("Target.NotInUse"),
                "{pod}: {v:?}"
            );
            // Registration in progress, then not in use: no write loop.
            assert!(by(&w, READYGATE_USER) <= 3, "{pod}: {w:?}");
            assert!(by(&w, READYGATE_USER) + by(&w, lbc) <= 5, "{pod}: {w:?}");
            let said: Vec<&str> = events
                .items
                .iter()
                .filter(|e| e.involved_object.name.as_deref() == Some(pod.as_str()))
                .filter_map(|e| e.reason.as_deref())
                .collect();
            assert_eq!(
                said.iter()
                    .filter(|r| **r == "GateLeftToAwsLoadBalancerController")
                    .count(),
                1,
                "{pod}: {said:?}"
            );
        }
        stage.stop().await.unwrap();
    });
}
