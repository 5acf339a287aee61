//! `readygate status` and `readygate doctor` as an operator runs them: the real binary, with
//! KUBECONFIG pointing at the rig's API server, against a rig running the real `readygate serve`
//! (one replica) with the objects of an installation (`Stage::install_objects`).
//!
//! doctor: a healthy install says ok and exits 0; each broken setup — CRD missing, a caBundle
//! that does not verify the served certificate, the webhook Service without endpoints, a pod
//! missing its gate, the AWS Load Balancer Controller's pod webhook on the same namespaces, no
//! leader — is the one problem reported, with its fix, and exits 1.
//! status: a pod pending on `Elb.InitialHealthChecking` is listed with its target and reason,
//! from the leader's `/debug/gates` (through the pod proxy, or `--controller-url`) or from the
//! conditions alone, and explained; `-o json` parses.
//!
//! `OPERATE_PRINT=1` prints the commands' output (the README's "Operating readygate" comes from
//! it): `OPERATE_PRINT=1 cargo nextest run -p readygate --test operate --no-capture`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use rig::apiserver::resources;
use rig::apiserver::store::{PatchKind, Subresource, WriteOpts, str_at};
use rig::elb::GroupSpec;
use rig::kubelet::{LB_HEALTH_ANNOTATION, LB_HEALTH_PATH, PROBE_PERIOD_ANNOTATION};
use rig::stage::Stage;
use serde_json::{Value, json};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_readygate"))
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `program args…` with the rig's kubeconfig, as an operator's shell would (no terminal,
/// so no colour).
async fn run_as(program: &Path, stage: &Stage, args: &[&str]) -> Run {
    let out = tokio::process::Command::new(program)
        .args(args)
        .env("KUBECONFIG", stage.rig.kubeconfig_path())
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("running readygate");
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    if std::env::var_os("OPERATE_PRINT").is_some() {
        println!(
            "$ {} {}\n{}",
            program.file_name().unwrap().to_string_lossy(),
            args.join(" "),
            run.stdout
        );
    }
    run
}

async fn run(stage: &Stage, args: &[&str]) -> Run {
    run_as(bin(), stage, args).await
}

async fn doctor(stage: &Stage) -> Run {
    let r = run(stage, &["doctor"]).await;
    assert!(
        !r.stdout.contains('\x1b'),
        "colour in a pipe:\n{}",
        r.stdout
    );
    r
}

/// The checks doctor reported at `level`.
fn checks(stdout: &str, level: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix(level))
        .filter(|rest| rest.starts_with(' '))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// doctor reports exactly one problem, of `check`, and exits 1; returns its text (summary and
/// fix).
async fn sole_problem(stage: &Stage, check: &str) -> String {
    let r = doctor(stage).await;
    assert_eq!(
        checks(&r.stdout, "problem"),
        [check],
        "stdout:\n{}\nstderr:\n{}",
        r.stdout,
        r.stderr
    );
    assert_eq!(r.code, 1, "{}", r.stdout);
    let mut lines = r.stdout.lines().skip_while(|l| !l.starts_with("problem"));
    let summary = lines.next().unwrap().to_string();
    let fix = lines.next().unwrap_or_default().trim().to_string();
    assert!(
        fix.starts_with("fix: "),
        "no fix under the problem:\n{}",
        r.stdout
    );
    format!("{summary}\n{fix}")
}

async fn until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start() -> (Stage, rig::serial::Exclusive) {
    readygate::install_crypto_provider();
    let lock = rig::serial::exclusive().await;
    let stage = Stage::start(bin(), &repo().join("manifests"), &[])
        .await
        .expect("starting the rig and readygate");
    stage.install_objects().await.expect("installation objects");
    until("a leader", Duration::from_secs(30), || {
        stage.leader().is_some()
    })
    .await;
    (stage, lock)
}

/// A pod of `app` in `ns`, as a Deployment would create it (through admission).
fn app_pod(name: &str, app: &str, annotations: Value) -> Value {
    json!({
        "metadata": {"name": name, "labels": {"app": app}, "annotations": annotations},
        "spec": {"containers": [{
            "name": "web", "image": "rig/web:1",
            "ports": [{"name": "http", "containerPort": rig::rig::APP_PORT}],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1}
        }]}
    })
}

fn object(stage: &Stage, res: &'static resources::ResourceType, ns: &str, name: &str) -> Value {
    stage.rig.store.get(res, ns, name).expect("object")
}

/// A copy of a stored object that can be created again.
fn recreatable(mut obj: Value) -> Value {
    let meta = obj["metadata"].as_object_mut().unwrap();
    for k in ["resourceVersion", "uid", "creationTimestamp", "generation"] {
        meta.remove(k);
    }
    obj
}

#[tokio::test]
async fn doctor_says_ok_then_names_each_broken_setup_with_its_fix() {
    let (stage, _lock) = start().await;
    let store = stage.rig.store.clone();
    let opts = WriteOpts::default();
    stage.rig.namespace("shop", true).await.unwrap();
    stage.rig.app("shop", "web").await.unwrap();
    // readygate's caches see the binding and the Service before the pod is admitted.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pod = stage
        .rig
        .create(
            resources::pods(),
            "shop",
            app_pod("web-1", "web", json!({})),
        )
        .await
        .unwrap();
    assert_eq!(
        pod.pointer("/spec/readinessGates/0/conditionType"),
        Some(&json!("target-health.elbv2.k8s.aws/web")),
        "the webhook injected the gate"
    );

    // Healthy.
    let r = doctor(&stage).await;
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert!(checks(&r.stdout, "problem").is_empty() && checks(&r.stdout, "warning").is_empty());
    for words in [
        "ok      crd",
        "ok      ca-bundle        caBundle verifies the certificate served at 127.0.0.1:",
        "for readygate-webhook.readygate-system.svc",
        "opted-in namespaces: shop",
        "rig-readygate holds Lease readygate-system/readygate",
        "0 problem(s), 0 warning(s)",
    ] {
        assert!(r.stdout.contains(words), "{words:?} not in:\n{}", r.stdout);
    }
    let json = run(&stage, &["doctor", "-o", "json"]).await;
    let v: Value = serde_json::from_str(&json.stdout).expect("doctor -o json parses");
    assert_eq!(v["exitCode"], 0);
    assert!(
        v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["level"] == "ok")
    );

    // A pod created while the webhook was unavailable has no gate.
    store.set_admission(None);
    stage
        .rig
        .create(
            resources::pods(),
            "shop",
            app_pod("web-nogate", "web", json!({})),
        )
        .await
        .unwrap();
    store.set_admission(Some(stage.admission.clone()));
    let p = sole_problem(&stage, "missing-gates").await;
    assert!(
        p.contains("shop/web-nogate lacks target-health.elbv2.k8s.aws/web")
            && p.contains("kubectl -n shop delete pod web-nogate"),
        "{p}"
    );
    store
        .delete(
            resources::pods(),
            "shop",
            "web-nogate",
            Some(0),
            None,
            false,
        )
        .unwrap();

    // The TargetGroupBinding CRD is missing.
    let crd_name = "targetgroupbindings.elbv2.k8s.aws";
    let crd = object(
        &stage,
        resources::custom_resource_definitions(),
        "",
        crd_name,
    );
    store
        .delete(
            resources::custom_resource_definitions(),
            "",
            crd_name,
            None,
            None,
            false,
        )
        .unwrap();
    let p = sole_problem(&stage, "crd").await;
    assert!(
        p.contains("CRD targetgroupbindings.elbv2.k8s.aws is not installed")
            && p.contains("aws-load-balancer-controller"),
        "{p}"
    );
    store
        .create(
            resources::custom_resource_definitions(),
            "",
            recreatable(crd),
            &opts,
        )
        .await
        .unwrap();

    // A caBundle of another CA: it cannot verify the certificate the webhook serves.
    let mwc = resources::mutating_webhook_configurations();
    let good = object(&stage, mwc, "", "readygate");
    let other_ca = rig::certs::Certs::for_service("readygate-webhook", "readygate-system")
        .unwrap()
        .ca_pem;
    let patch = json!([{"op": "replace", "path": "/webhooks/0/clientConfig/caBundle",
        "value": base64::engine::general_purpose::STANDARD.encode(other_ca)}]);
    store
        .patch(
            mwc,
            "",
            "readygate",
            PatchKind::Json,
            &patch,
            Subresource::Main,
            &opts,
        )
        .unwrap();
    let p = sole_problem(&stage, "ca-bundle").await;
    assert!(
        p.contains("caBundle does not verify the certificate served at 127.0.0.1:")
            && p.contains("invalid peer certificate")
            && p.contains("fix: put the CA that signed the serving certificate into caBundle"),
        "{p}"
    );
    let restore = json!([{"op": "replace", "path": "/webhooks/0/clientConfig/caBundle",
        "value": good.pointer("/webhooks/0/clientConfig/caBundle").unwrap()}]);
    store
        .patch(
            mwc,
            "",
            "readygate",
            PatchKind::Json,
            &restore,
            Subresource::Main,
            &opts,
        )
        .unwrap();

    // The webhook Service has no ready endpoint: the caBundle cannot be checked either, which
    // is a warning; --webhook-url checks it anyway.
    stage.drop_endpoints().await.unwrap();
    let p = sole_problem(&stage, "endpoints").await;
    assert!(
        p.contains("Service readygate-system/readygate-webhook has no ready endpoints")
            && p.contains(
                "kubectl -n readygate-system get pods -l app.kubernetes.io/name=readygate"
            ),
        "{p}"
    );
    let webhook = stage.replicas.lock().await[0].opts.webhook_addr;
    let r = run(
        &stage,
        &["doctor", "--webhook-url", &format!("https://{webhook}")],
    )
    .await;
    assert!(
        r.stdout.contains(&format!(
            "caBundle verifies the certificate served at {webhook}"
        )),
        "{}",
        r.stdout
    );
    stage.restore_endpoints().await.unwrap();

    // The AWS Load Balancer Controller's own pod webhook also selects opted-in namespaces.
    store
        .create(
            mwc,
            "",
            json!({"metadata": {"name": "aws-load-balancer-webhook"}, "webhooks": [{
                "name": "mpod.elbv2.k8s.aws",
                "clientConfig": {"service": {"namespace": "kube-system", "name": "aws-load-balancer-webhook-service", "path": "/mutate-v1-pod"}},
                "namespaceSelector": {"matchExpressions": [
                    {"key": "elbv2.k8s.aws/pod-readiness-gate-inject", "operator": "In", "values": ["enabled"]}]},
                "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
                "failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1"]}]}),
            &opts,
        )
        .await
        .unwrap();
    let p = sole_problem(&stage, "double-injection").await;
    assert!(
        p.contains("aws-load-balancer-webhook (webhook mpod.elbv2.k8s.aws) also injects readiness gates into shop")
            && p.contains("--enable-pod-readiness-gate-inject=false"),
        "{p}"
    );
    store
        .delete(mwc, "", "aws-load-balancer-webhook", None, None, false)
        .unwrap();
    assert_eq!(doctor(&stage).await.code, 0, "back to healthy");

    // No leader: readygate stopped (it hands its lease back on the way out).
    stage.stop().await.unwrap();
    let p = sole_problem(&stage, "leader").await;
    assert!(
        p.contains("Lease readygate-system/readygate")
            && p.contains("no gate turns True")
            && p.contains("check that readygate runs"),
        "{p}"
    );
}

/// A target group (behind a listener: attached to a load balancer) whose health checks keep
/// failing under a high unhealthy threshold: ELB says `initial` / `Elb.InitialHealthChecking`
/// for minutes, and readygate writes that. Returns the pod's target and the listener.
async fn slow_app(stage: &Stage) -> (String, rig::elb::listener::Listener) {
    let rig = &stage.rig;
    rig.namespace("shop", true).await.unwrap();
    rig.create(
        resources::services(),
        "shop",
        json!({"metadata": {"name": "slow"}, "spec": {"selector": {"app": "slow"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}}),
    )
    .await
    .unwrap();
    let mut spec = GroupSpec::new("shop-slow", rig::rig::APP_PORT);
    spec.interval = Duration::from_secs(1);
    spec.timeout = Duration::from_secs(1);
    spec.healthy_threshold = 2;
    spec.unhealthy_threshold = 1000;
    spec.health_check_path = LB_HEALTH_PATH.into();
    let arn = rig.elb.create_target_group(spec).unwrap();
    let listener = rig::elb::listener::Listener::start(
        rig.elb.clone(),
        "shop-slow",
        &arn,
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    rig.create(
        resources::target_group_bindings(),
        "shop",
        json!({"apiVersion": "elbv2.k8s.aws/v1beta1", "kind": "TargetGroupBinding", "metadata": {"name": "slow"},
            "spec": {"targetGroupARN": arn, "targetType": "ip", "serviceRef": {"name": "slow", "port": 80}}}),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pod = rig
        .create(
            resources::pods(),
            "shop",
            app_pod(
                "slow-1",
                "slow",
                json!({LB_HEALTH_ANNOTATION: "fail", PROBE_PERIOD_ANNOTATION: "100"}),
            ),
        )
        .await
        .unwrap();
    assert!(pod.pointer("/spec/readinessGates/0").is_some(), "gated");
    let condition = || {
        let pod = object(stage, resources::pods(), "shop", "slow-1");
        pod.pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|cs| {
                cs.iter()
                    .find(|c| c["type"] == "target-health.elbv2.k8s.aws/slow")
                    .cloned()
            })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition().is_some_and(|c| c["reason"] == "Elb.InitialHealthChecking") {
        assert!(
            Instant::now() < deadline,
            "the gate's condition never said Elb.InitialHealthChecking: {:?}; pod status {}; readygate log:\n{}",
            condition(),
            object(stage, resources::pods(), "shop", "slow-1")["status"],
            stage.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pod = object(stage, resources::pods(), "shop", "slow-1");
    (
        format!("{}:{}", str_at(&pod, "/status/podIP"), rig::rig::APP_PORT),
        listener,
    )
}

#[tokio::test]
async fn status_lists_and_explains_a_pod_pending_on_initial_health_checks() {
    let (stage, _lock) = start().await;
    let (target, _listener) = slow_app(&stage).await;
    // Beside it: a pod whose gate turned True, and one created without its gate.
    let _web = stage.rig.app("shop", "web").await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stage
        .rig
        .create(
            resources::pods(),
            "shop",
            app_pod("web-1", "web", json!({PROBE_PERIOD_ANNOTATION: "100"})),
        )
        .await
        .unwrap();
    stage.rig.store.set_admission(None);
    stage
        .rig
        .create(
            resources::pods(),
            "shop",
            app_pod("web-old", "web", json!({PROBE_PERIOD_ANNOTATION: "100"})),
        )
        .await
        .unwrap();
    stage.rig.store.set_admission(Some(stage.admission.clone()));
    until("web-1's gate True", Duration::from_secs(30), || {
        object(&stage, resources::pods(), "shop", "web-1")
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter().any(|c| {
                    c["type"] == "target-health.elbv2.k8s.aws/web" && c["status"] == "True"
                })
            })
    })
    .await;

    // The table, with ELB's view from the leader through the API server's pod proxy.
    let r = run(&stage, &["status", "-n", "shop"]).await;
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.starts_with(
            "# ELB state from the leading controller (pod proxy /api/v1/namespaces/readygate-system/pods/rig-readygate:"
        ),
        "{}",
        r.stdout
    );
    let line = r
        .stdout
        .lines()
        .find(|l| l.contains("slow-1"))
        .unwrap_or_else(|| panic!("no slow-1 line:\n{}", r.stdout));
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        (cells[0], cells[1], cells[2], cells[3], cells[4], cells[5]),
        (
            "shop",
            "slow-1",
            "slow",
            "False",
            "Elb.InitialHealthChecking",
            "pending"
        ),
        "{line}"
    );
    assert_eq!(cells.last(), Some(&target.as_str()), "{line}");
    assert!(!r.stdout.contains('\x1b'), "no colour in a pipe");
    // Stuck first: the pod missing its gate, the pending one, then the one whose gate is True.
    let order: Vec<(&str, &str)> = r
        .stdout
        .lines()
        .skip(2)
        .map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            (c[1], c[3])
        })
        .collect();
    assert_eq!(
        order,
        [
            ("web-old", "missing"),
            ("slow-1", "False"),
            ("web-1", "True")
        ],
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .lines()
            .any(|l| l.contains("web-1") && l.contains("Elb.Healthy") && l.contains("took ")),
        "{}",
        r.stdout
    );

    // -o json parses, and carries the leader's view of the gate.
    let r = run(&stage, &["status", "-n", "shop", "-o", "json"]).await;
    let v: Value = serde_json::from_str(&r.stdout).expect("status -o json parses");
    assert_eq!(v["source"]["kind"], "controller");
    let row = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["pod"] == "slow-1")
        .expect("slow-1's row");
    assert_eq!(row["reason"], "Elb.InitialHealthChecking");
    assert_eq!(row["target"], target.as_str());
    assert_eq!(row["controller"]["elb"]["state"], "initial");
    assert_eq!(
        row["controller"]["elb"]["reason"],
        "Elb.InitialHealthChecking"
    );

    // One pod, explained.
    let r = run(&stage, &["status", "-n", "shop", "slow-1"]).await;
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    for words in [
        "TargetGroupBinding slow (targetType ip) selects it: its Service slow has selector app=slow",
        &format!("targetPort \"http\", the pod's container port 8080; so the target is {target}"),
        "Gate target-health.elbv2.k8s.aws/slow is False since",
        &format!("ELB last said about {target}"),
        "initial (Elb.InitialHealthChecking), \"Initial health checks in progress\"",
        "It turns True when ELB reports the target healthy",
        "No failsafe timeout is set",
    ] {
        assert!(r.stdout.contains(words), "{words:?} not in:\n{}", r.stdout);
    }
    assert!(
        r.stdout
            .contains("The next poll of its target group is due")
            || r.stdout.contains("is in flight"),
        "{}",
        r.stdout
    );
    let r = run(&stage, &["status", "-n", "shop", "slow-1", "-o", "json"]).await;
    let v: Value = serde_json::from_str(&r.stdout).expect("status POD -o json parses");
    assert!(v["explanation"].as_array().unwrap().len() > 3);

    // --controller-url reaches the admin port directly.
    let admin = stage.replicas.lock().await[0].opts.admin_addr;
    let r = run(
        &stage,
        &[
            "status",
            "-n",
            "shop",
            "--controller-url",
            &format!("http://{admin}"),
        ],
    )
    .await;
    assert!(
        r.stdout.starts_with(&format!(
            "# ELB state from the leading controller (http://{admin}/debug/gates)"
        )),
        "{}",
        r.stdout
    );

    // As a kubectl plugin: the same binary under the name kubectl looks for.
    let dir = tempfile::tempdir().unwrap();
    let plugin: PathBuf = dir.path().join("kubectl-readygate");
    std::os::unix::fs::symlink(bin(), &plugin).unwrap();
    let r = run_as(&plugin, &stage, &["status", "-n", "shop"]).await;
    assert!(
        r.stdout.contains("Elb.InitialHealthChecking"),
        "{}",
        r.stdout
    );
    let r = run_as(&plugin, &stage, &["status", "--bogus"]).await;
    assert!(
        r.stderr.contains("kubectl readygate status"),
        "{}",
        r.stderr
    );

    // Without the controller (no Lease where it is looked for): the conditions alone, said so.
    let r = run(
        &stage,
        &["status", "-n", "shop", "--lease-namespace", "nowhere"],
    )
    .await;
    assert!(
        r.stdout.starts_with("# ELB state from the pods' conditions alone (the controller was not asked: no Lease nowhere/readygate: no leader)"),
        "{}",
        r.stdout
    );
    let line = r.stdout.lines().find(|l| l.contains("slow-1")).unwrap();
    assert!(
        line.contains("Elb.InitialHealthChecking") && line.ends_with(&target),
        "{line}"
    );
    stage.stop().await.unwrap();
}
