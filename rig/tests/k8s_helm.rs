//! readygate installed the way EKS users install it, then run, upgraded and removed, with the
//! rig's node agent running its pods as containers of this build's binary (in-cluster config,
//! the chart's Secret at /tls, its probes):
//! - `helm install --wait` of `charts/readygate` (chart-generated TLS), a gated rollout losing
//!   nothing, `helm upgrade` to a new release while the application rolls (every new pod gated,
//!   nothing lost), `readygate doctor` with every check `ok`, then `helm uninstall` leaving no
//!   object of readygate's behind; a pod still waiting on its gate then keeps it False (nothing
//!   writes it any more: on EKS the AWS Load Balancer Controller's own reconcile does);
//! - `kubectl apply -k` of an overlay of `manifests/` with the TLS made as certs/README.md says
//!   (`readygate certs`, `kubectl create secret tls`, `kubectl patch` of the caBundle), a gated
//!   rollout losing nothing, then `kubectl delete -k`.
//!
//! helm comes from `rig/helm/build` (`HELM_BIN`), kubectl from `rig/k8s/build`.

mod common;

use rig::demo::{Interlude, ModeOptions, deployed_app, measured_rollout, prestop_sleep_secs};
use rig::rig::{Rig, RigConfig};
use rig::timeline::Milestone;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const NS: &str = "readygate-system";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// helm and the readygate binary; None (skip) only outside CI.
fn tools() -> Option<(PathBuf, PathBuf)> {
    common::crypto();
    let helm = common::helm()?;
    let bin = rig::readygate::find_binary(None);
    if bin.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "under CI these need the readygate binary (scripts/test sets READYGATE_BIN)"
        );
        println!("SKIPPED: build readygate (scripts/test does)");
    }
    Some((helm, bin?))
}

/// Runs a tool against the rig's API server as its admin; stdout, or the output as the error.
async fn run(rig: &Rig, bin: &Path, args: &[&str]) -> Result<String, String> {
    common::run(
        common::as_admin(bin, &rig.plane.admin_kubeconfig, args),
        None,
    )
    .await
}

/// The environment the rig's ELBv2 needs, as a user sets AWS_* for an emulator.
fn aws_env(rig: &Rig) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL", rig.elb_api.url()),
        ("AWS_ACCESS_KEY_ID", "rig".into()),
        ("AWS_SECRET_ACCESS_KEY", "rig".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// readygate's pods (name, uid), Ready ones only when `ready`.
async fn readygate_pods(rig: &Rig, ready: bool) -> Vec<(String, String)> {
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(rig.client.clone(), NS);
    let lp = kube::api::ListParams::default().labels("app.kubernetes.io/name=readygate");
    let mut out: Vec<(String, String)> = pods
        .list(&lp)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|p| serde_json::to_value(p).unwrap())
        .filter(|p| {
            !ready || (rig::deploy::is_ready(p) && p["metadata"]["deletionTimestamp"].is_null())
        })
        .map(|p| {
            (
                rig::str_at(&p, "/metadata/name"),
                rig::str_at(&p, "/metadata/uid"),
            )
        })
        .collect();
    out.sort();
    out
}

/// Waits until the webhook Service has `n` ready endpoints (the API server calls only those).
async fn webhook_endpoints(rig: &Rig, n: usize) {
    let slices: kube::Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        kube::Api::namespaced(rig.client.clone(), NS);
    let lp =
        kube::api::ListParams::default().labels("kubernetes.io/service-name=readygate-webhook");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = slices
            .list(&lp)
            .await
            .unwrap()
            .items
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
            .count();
        if ready == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{ready} of {n} webhook endpoints ready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn assert_clean(r: &rig::demo::RolloutResult, what: &str) {
    assert!(
        r.rollout.complete() && r.drained.is_some(),
        "{what}: the rollout completed"
    );
    assert_eq!(r.failed(), 0, "{what}: {:?}", r.failure_kinds());
    assert!(r.sent() > 200, "{what}: load was sent");
    let new: Vec<_> = r.pods.iter().filter(|p| p.revision == r.revision).collect();
    assert!(!new.is_empty());
    for p in new {
        assert!(
            !p.gates.is_empty(),
            "{what}: {} was admitted without its gate",
            p.name
        );
        assert!(
            p.at[&Milestone::GateTrue] >= p.at[&Milestone::ElbHealthy],
            "{what}: {} gate True only once the load balancer said healthy",
            p.name
        );
    }
}

fn report(r: &rig::demo::RolloutResult) {
    println!(
        "{}\n{}",
        rig::demo::summary_line(r),
        rig::demo::timeline_table(r)
    );
}

#[test]
fn helm_install_rollout_upgrade_while_rolling_doctor_and_uninstall() {
    let Some((helm, bin)) = tools() else { return };
    rig::cluster::test(|_plane| async move {
        let _serial = rig::serial::exclusive().await;
        let config = RigConfig {
            readygate_bin: Some(bin.clone()),
            ..RigConfig::default()
        };
        let sleep = prestop_sleep_secs(&config);
        let rig = Rig::start(config).await.unwrap();
        let kubectl = common::kubectl();
        let chart = root().join("charts/readygate");
        let chart = chart.to_str().unwrap().to_string();
        let env: Vec<Value> = aws_env(&rig)
            .into_iter()
            .map(|(name, value)| json!({"name": name, "value": value}))
            .collect();
        let env = serde_json::to_string(&env).unwrap();

        // helm install --wait: the chart makes its TLS; readygate runs as its pods.
        let started = Instant::now();
        let out = run(
            &rig,
            &helm,
            &[
                "install",
                "readygate",
                &chart,
                "--namespace",
                NS,
                "--create-namespace",
                "--set",
                &format!("region={}", rig::elb::REGION),
                "--set",
                &format!("serve.prestopSleep={sleep}s"),
                "--set-json",
                &format!("extraEnv={env}"),
                "--wait",
                "--timeout",
                "180s",
            ],
        )
        .await
        .unwrap_or_else(|e| panic!("helm install: {e}"));
        println!("helm install --wait took {:?}\n{out}", started.elapsed());
        assert!(out.contains("STATUS: deployed"), "{out}");
        assert!(
            out.contains("readygate doctor"),
            "NOTES say how to run doctor: {out}"
        );
        let first = readygate_pods(&rig, true).await;
        assert_eq!(
            first.len(),
            2,
            "both replicas Ready by their probes: {first:?}"
        );
        webhook_endpoints(&rig, 2).await;

        // A gated rollout of an application, readygate's preStop sleep injected.
        let o = ModeOptions::default();
        let (app, dep) = deployed_app(&rig, rig::demo::Mode::Readygate, &o)
            .await
            .unwrap();
        let r = measured_rollout(&rig, &app, &dep, "v2", "v1", o.rate, o.timeout, None).await;
        report(&r);
        assert_clean(&r, "after helm install");

        // helm upgrade to a new release while the application rolls.
        let upgrading = common::run(
            common::as_admin(
                &helm,
                &rig.plane.admin_kubeconfig,
                &[
                    "upgrade",
                    "readygate",
                    &chart,
                    "--namespace",
                    NS,
                    "--reuse-values",
                    "--set",
                    "image.tag=0.1.1",
                    "--wait",
                    "--timeout",
                    "180s",
                ],
            ),
            None,
        );
        let upgraded = std::sync::Arc::new(std::sync::Mutex::new(None));
        let u2 = upgraded.clone();
        let upgrade = Interlude {
            after: Duration::from_millis(500),
            action: Box::pin(async move {
                let out = upgrading.await;
                *u2.lock().unwrap() = Some(out);
            }),
        };
        let r = measured_rollout(
            &rig,
            &app,
            &dep,
            "v3",
            "v2",
            o.rate,
            o.timeout,
            Some(upgrade),
        )
        .await;
        report(&r);
        let deadline = Instant::now() + Duration::from_secs(200);
        while upgraded.lock().unwrap().is_none() {
            assert!(Instant::now() < deadline, "helm upgrade did not finish");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let out = upgraded
            .lock()
            .unwrap()
            .clone()
            .unwrap()
            .unwrap_or_else(|e| panic!("helm upgrade: {e}"));
        assert!(out.contains("REVISION: 2"), "helm upgrade: {out}");
        assert_clean(&r, "helm upgrade while the application rolled");
        let second = readygate_pods(&rig, true).await;
        assert_eq!(second.len(), 2, "{second:?}");
        assert!(
            second.iter().all(|p| !first.contains(p)),
            "the upgrade replaced both replicas: {first:?} → {second:?}"
        );
        let image = run(
            &rig,
            &kubectl,
            &[
                "-n",
                NS,
                "get",
                "deployment",
                "readygate",
                "-o",
                "jsonpath={.spec.template.spec.containers[0].image}",
            ],
        )
        .await
        .unwrap();
        assert_eq!(image, "readygate:0.1.1");
        webhook_endpoints(&rig, 2).await;

        // readygate doctor: every check ok.
        let upgraded_at = Instant::now();
        let out = loop {
            match run(&rig, &bin, &["doctor", "-o", "json"]).await {
                Ok(out) => break out,
                Err(e) if upgraded_at.elapsed() < Duration::from_secs(40) => {
                    let lease = run(
                        &rig,
                        &kubectl,
                        &["-n", NS, "get", "lease", "readygate", "-o", "yaml"],
                    )
                    .await;
                    println!(
                        "{:?} after the upgrade: {e}\n{lease:?}",
                        upgraded_at.elapsed()
                    );
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                Err(e) => panic!("readygate doctor: {e}"),
            }
        };
        println!(
            "doctor ok {:?} after the upgrade finished",
            upgraded_at.elapsed()
        );
        let v: Value = serde_json::from_str(&out).expect("doctor -o json parses");
        let not_ok: Vec<&Value> = v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["level"] != "ok")
            .collect();
        assert!(
            not_ok.is_empty() && v["exitCode"] == 0,
            "doctor: {not_ok:?}\n{out}"
        );
        println!(
            "readygate doctor: {} checks, all ok",
            v["findings"].as_array().unwrap().len()
        );

        // A pod that waits on its gate when readygate goes: its target never turns healthy.
        let waiting = app_pod_waiting_on_its_gate(&rig, &app).await;

        // helm uninstall: nothing of readygate's is left, cluster-scoped objects included.
        run(
            &rig,
            &helm,
            &[
                "uninstall",
                "readygate",
                "--namespace",
                NS,
                "--wait",
                "--timeout",
                "120s",
            ],
        )
        .await
        .unwrap_or_else(|e| panic!("helm uninstall: {e}"));
        common::until_nothing_left(
            &kubectl,
            &rig.plane.admin_kubeconfig,
            "helm uninstall",
            Duration::from_secs(90),
        )
        .await;
        // The Lease is the release's too (the chart makes it), whatever readygate wrote in it.
        let lease = run(
            &rig,
            &kubectl,
            &[
                "-n",
                NS,
                "get",
                "lease",
                "readygate",
                "-o",
                "name",
                "--ignore-not-found",
            ],
        )
        .await
        .unwrap();
        assert_eq!(lease.trim(), "", "helm uninstall removes the Lease");

        // The waiting pod keeps its gate False: nothing writes it any more (in the rig; on EKS
        // the AWS Load Balancer Controller's reconcile of the binding does).
        tokio::time::sleep(Duration::from_secs(3)).await;
        let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
            kube::Api::namespaced(rig.client.clone(), &app.namespace);
        let pod = serde_json::to_value(pods.get(&waiting).await.unwrap()).unwrap();
        let gate = pod["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| {
                c["type"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("target-health.elbv2.k8s.aws/"))
            })
            .cloned()
            .expect("the gate's condition");
        assert_eq!(gate["status"], "False", "{gate}");
        assert!(
            !rig::deploy::is_ready(&pod),
            "the pod stays not Ready: {pod}"
        );
        println!("a pod waiting when readygate was uninstalled keeps its gate: {gate}");
    })
}

/// Creates a pod of the application's Deployment template whose load balancer health check
/// fails, so its gate stays False; returns its name once readygate has written that condition.
async fn app_pod_waiting_on_its_gate(rig: &Rig, app: &rig::rig::App) -> String {
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(rig.client.clone(), &app.namespace);
    let deployments: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
        kube::Api::namespaced(rig.client.clone(), &app.namespace);
    let d = deployments
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .remove(0);
    let mut template = serde_json::to_value(d.spec.unwrap().template).unwrap();
    template["metadata"]["annotations"][rig::kubelet::LB_HEALTH_ANNOTATION] = json!("fail");
    // Not the Deployment's own pod (its controller would delete an extra one), but selected by
    // the same Service and binding.
    template["metadata"]["labels"]["pod-template-hash"] = json!("waiting");
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": {"name": "waiting", "labels": template["metadata"]["labels"],
                     "annotations": template["metadata"]["annotations"]},
        "spec": template["spec"],
    }))
    .unwrap();
    pods.create(&Default::default(), &pod).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = serde_json::to_value(pods.get("waiting").await.unwrap()).unwrap();
        let written = p["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter().any(|c| {
                c["type"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("target-health.elbv2.k8s.aws/"))
                    && c["status"] == "False"
                    && c["reason"].as_str().is_some_and(|r| !r.is_empty())
            })
        });
        if written {
            return "waiting".into();
        }
        assert!(
            Instant::now() < deadline,
            "readygate never wrote the waiting pod's gate: {p}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn kubectl_apply_k_with_certs_from_readygate_certs_then_delete_k() {
    let Some((_helm, bin)) = tools() else { return };
    rig::cluster::test(|_plane| async move {
        let _serial = rig::serial::exclusive().await;
        let config = RigConfig {
            readygate_bin: Some(bin.clone()),
            ..RigConfig::default()
        };
        let sleep = prestop_sleep_secs(&config);
        let rig = Rig::start(config).await.unwrap();
        let kubectl = common::kubectl();

        // The user's overlay of manifests/: the ELBv2 endpoint and the preStop sleep flag.
        let overlay = rig.dir.path().join("overlay");
        std::fs::create_dir_all(&overlay).unwrap();
        let mut ops = vec![
            json!({"op": "add", "path": "/spec/template/spec/containers/0/args/-",
                                  "value": format!("--prestop-sleep={sleep}s")}),
        ];
        for (name, value) in aws_env(&rig)
            .into_iter()
            .chain([("AWS_REGION".to_string(), rig::elb::REGION.to_string())])
        {
            ops.push(
                json!({"op": "add", "path": "/spec/template/spec/containers/0/env/-",
                            "value": {"name": name, "value": value}}),
            );
        }
        let kustomization = json!({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            // kustomize takes no absolute root: the way up from the overlay, then down.
            "resources": [format!(
                "{}{}",
                "../".repeat(overlay.canonicalize().unwrap().components().count() - 1),
                root().join("manifests").canonicalize().unwrap().display().to_string().trim_start_matches('/')
            )],
            "patches": [{"target": {"kind": "Deployment", "name": "readygate"},
                         "patch": serde_json::to_string(&ops).unwrap()}],
        });
        std::fs::write(
            overlay.join("kustomization.yaml"),
            serde_yaml::to_string(&kustomization).unwrap(),
        )
        .unwrap();
        let overlay = overlay.to_str().unwrap().to_string();

        // certs/README.md, step by step.
        let tls = rig.dir.path().join("readygate-tls");
        let tls_s = tls.to_str().unwrap().to_string();
        let printed = run(
            &rig,
            &bin,
            &[
                "certs",
                "--service",
                "readygate-webhook",
                "--namespace",
                NS,
                "--out",
                &tls_s,
            ],
        )
        .await
        .unwrap();
        run(&rig, &kubectl, &["apply", "-k", &overlay])
            .await
            .unwrap_or_else(|e| panic!("kubectl apply -k: {e}"));
        // The pods wait for the Secret (ContainerCreating), then start.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            readygate_pods(&rig, true).await.is_empty(),
            "no replica runs without its Secret"
        );
        run(
            &rig,
            &kubectl,
            &[
                "-n",
                NS,
                "create",
                "secret",
                "tls",
                "readygate-webhook-tls",
                &format!("--cert={tls_s}/tls.crt"),
                &format!("--key={tls_s}/tls.key"),
            ],
        )
        .await
        .unwrap();
        use base64::Engine as _;
        let bundle = base64::engine::general_purpose::STANDARD
            .encode(std::fs::read(tls.join("ca.crt")).unwrap());
        assert!(
            printed.contains(&bundle),
            "readygate certs prints the caBundle: {printed}"
        );
        let patch = format!(
            r#"[{{"op":"add","path":"/webhooks/0/clientConfig/caBundle","value":"{bundle}"}}]"#
        );
        run(
            &rig,
            &kubectl,
            &[
                "patch",
                "mutatingwebhookconfiguration",
                "readygate",
                "--type=json",
                "-p",
                &patch,
            ],
        )
        .await
        .unwrap();
        run(
            &rig,
            &kubectl,
            &[
                "-n",
                NS,
                "rollout",
                "status",
                "deployment/readygate",
                "--timeout=180s",
            ],
        )
        .await
        .unwrap_or_else(|e| panic!("the Deployment did not become available: {e}"));
        assert_eq!(readygate_pods(&rig, true).await.len(), 2);
        webhook_endpoints(&rig, 2).await;

        let o = ModeOptions::default();
        let (app, dep) = deployed_app(&rig, rig::demo::Mode::Readygate, &o)
            .await
            .unwrap();
        let r = measured_rollout(&rig, &app, &dep, "v2", "v1", o.rate, o.timeout, None).await;
        report(&r);
        assert_clean(&r, "after kubectl apply -k");

        // kubectl delete -k, and the Secret the user created by hand.
        run(
            &rig,
            &kubectl,
            &["delete", "-k", &overlay, "--wait", "--timeout=120s"],
        )
        .await
        .unwrap_or_else(|e| panic!("kubectl delete -k: {e}"));
        // The namespace went with it, and the Secret inside it.
        common::until_nothing_left(
            &kubectl,
            &rig.plane.admin_kubeconfig,
            "kubectl delete -k",
            Duration::from_secs(90),
        )
        .await;
    })
}
