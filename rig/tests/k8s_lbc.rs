//! The load balancer controller stand-in on the real control plane: the real EndpointSlice
//! controller makes the slices from pods whose status the test writes, and the stand-in registers
//! and deregisters their addresses in the rig's ELB.

mod k8s_fixtures;

use k8s_fixtures::*;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DynamicObject, ListParams, PostParams};
use rig::elb::{Elb, ElbConfig, GroupSpec, TargetEventKind};
use rig::lbc::{Lbc, target_group_bindings};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const REACTION: Duration = Duration::from_millis(1500);

#[test]
fn registers_ready_and_gated_endpoints_and_deregisters_a_terminating_one_after_the_reaction() {
    rig::cluster::test(|plane| async move {
        let client = plane.client().await.unwrap();
        install_crd(&client).await;
        let ns = namespace(&client, "lbc").await;
        let node = format!("node-{ns}");
        ready_node(&client, &node).await;

        let elb = Elb::new(ElbConfig::default());
        let arn = elb
            .create_target_group(GroupSpec::new("lbc-web", 8080))
            .unwrap();
        let mut events = elb.events();
        let lbc = Lbc::start(client.clone(), elb.clone(), REACTION)
            .await
            .unwrap();

        // The binding names the Service port by name; the Service's target port is a named
        // container port, which the EndpointSlice controller resolves to 8080.
        Api::<Service>::namespaced(client.clone(), &ns)
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": "web"},
                    "spec": {"selector": {"app": "web"},
                             "ports": [{"name": "http", "port": 80, "targetPort": "web"}]},
                }))
                .unwrap(),
            )
            .await
            .unwrap();
        Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &target_group_bindings())
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "apiVersion": "elbv2.k8s.aws/v1beta1", "kind": "TargetGroupBinding",
                    "metadata": {"name": "web"},
                    "spec": {"targetGroupARN": arn, "targetType": "ip",
                             "serviceRef": {"name": "web", "port": "http"}},
                }))
                .unwrap(),
            )
            .await
            .unwrap();

        let gate = "target-health.elbv2.k8s.aws/web";
        let pods = [
            // (name, gates, containers ready, ready)
            ("ready", vec![gate], true, true),
            ("gated", vec![gate], true, false),
            ("ungated", vec![], true, false),
            (
                "other-gate",
                vec!["target-health.elbv2.k8s.aws/other"],
                true,
                false,
            ),
        ];
        let mut ips = Vec::new();
        for (name, gates, containers_ready, ready) in &pods {
            pod(&client, &ns, name, "web", &node, gates).await;
            let ip = pod_ip();
            set_pod_status(&client, &ns, name, ip, *containers_ready, *ready).await;
            ips.push(ip.to_string());
        }
        let ip = |name: &str| ips[pods.iter().position(|p| p.0 == name).unwrap()].clone();

        // The real controller lists all four, only the Ready one with ready: true.
        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
        let seen = Instant::now();
        until(
            "the EndpointSlice of all four pods",
            Duration::from_secs(30),
            || {
                let slices = slices.clone();
                async move {
                    let list = slices
                        .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
                        .await
                        .ok()?;
                    let eps: Vec<_> = list
                        .items
                        .iter()
                        .flat_map(|s| s.endpoints.clone())
                        .collect();
                    let ports: Vec<_> = list
                        .items
                        .iter()
                        .flat_map(|s| s.ports.clone().unwrap_or_default())
                        .collect();
                    (eps.len() == 4
                        && ports
                            .iter()
                            .all(|p| p.port == Some(8080) && p.name.as_deref() == Some("http")))
                    .then_some(())
                }
            },
        )
        .await;
        eprintln!(
            "slices complete {:?} after the pods' status",
            seen.elapsed()
        );

        let registered = |events: &mut tokio::sync::broadcast::Receiver<rig::elb::TargetEvent>,
                          set: &mut BTreeSet<(String, u16)>| {
            while let Ok(e) = events.try_recv() {
                assert_eq!(e.arn, arn);
                match e.kind {
                    TargetEventKind::Registered => assert!(set.insert((e.id, e.port))),
                    TargetEventKind::Deregistered => assert!(set.remove(&(e.id, e.port))),
                    _ => {}
                }
            }
        };
        let want: BTreeSet<_> = [(ip("ready"), 8080), (ip("gated"), 8080)].into();
        let mut set = BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while set != want && Instant::now() < deadline {
            registered(&mut events, &mut set);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // And nothing else turns up later: the ungated and the other binding's pods stay out.
        tokio::time::sleep(Duration::from_millis(500)).await;
        registered(&mut events, &mut set);
        assert_eq!(set, want, "registered targets");

        // A deleted pod on a node stays, terminating, until its kubelet removes it: the
        // endpoint turns terminating and goes from the target group `REACTION` later.
        let deleted = Instant::now();
        Api::<Pod>::namespaced(client.clone(), &ns)
            .delete("ready", &Default::default())
            .await
            .unwrap();
        let gone = loop {
            let e = tokio::time::timeout(Duration::from_secs(15), events.recv())
                .await
                .expect("a deregistration")
                .unwrap();
            if e.kind == TargetEventKind::Deregistered {
                assert_eq!((e.id.as_str(), e.port), (ip("ready").as_str(), 8080));
                break e.at;
            }
        };
        let after = gone.duration_since(deleted);
        eprintln!("deregistered {after:?} after the delete");
        assert!(after >= REACTION, "deregistered {after:?} after the delete");
        assert!(
            after < REACTION + Duration::from_secs(5),
            "deregistered {after:?} after the delete"
        );
        let eps = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
            .await
            .unwrap();
        let terminating = eps
            .items
            .iter()
            .flat_map(|s| &s.endpoints)
            .find(|e| e.addresses == [ip("ready")])
            .expect("the terminating endpoint is still in the slice");
        let c = terminating.conditions.clone().unwrap();
        assert_eq!(
            (c.ready, c.serving, c.terminating),
            (Some(false), Some(true), Some(true))
        );

        // The gated pod's node stops being Ready: the pod is no longer registrable.
        set_node_ready(&client, &node, false).await;
        let e = tokio::time::timeout(REACTION + Duration::from_secs(10), events.recv())
            .await
            .expect("a deregistration")
            .unwrap();
        assert_eq!((e.kind, e.id), (TargetEventKind::Deregistered, ip("gated")));

        drop(lbc);
        delete_node(&client, &node).await;
    });
}
