//! `readygate status` and `readygate doctor` as an operator runs them: the real binary, with
//! KUBECONFIG the admin kubeconfig of the rig's real control plane, against readygate installed
//! from `manifests/base` with its replica Pods on the rig's node and behind the webhook Service
//! (the real EndpointSlice controller), called by the real API server.
//!
//! doctor: a healthy install says ok and exits 0; each broken setup — CRD missing, a caBundle
//! that does not verify the served certificate, the webhook Service without endpoints, a pod
//! missing its gate, the AWS Load Balancer Controller's pod webhook on the same namespaces, no
//! leader — is the one problem reported, with its fix, and exits 1.
//! status: a pod pending on `Elb.InitialHealthChecking` is listed with its target and reason,
//! from the leader's `/debug/gates` (through the real API server's pod proxy, or
//! `--controller-url`) or from the conditions alone, and explained; `-o json` parses.
//!
//! Each test works in a namespace of its own and deletes it at the end: doctor looks at the
//! whole cluster, which the tests of this binary share.
//!
//! `OPERATE_PRINT=1` prints the commands' output (docs/operating.md's output comes from
//! it): `OPERATE_PRINT=1 cargo test -p readygate --test operate -- --nocapture`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use rig::elb::GroupSpec;
use rig::k8s::install;
use rig::k8s::node::{EXTERNAL_ANNOTATION, EXTERNAL_PID_ANNOTATION, NODE_NAME};
use rig::kubelet::{LB_HEALTH_ANNOTATION, LB_HEALTH_PATH, PROBE_PERIOD_ANNOTATION};
use rig::readygate::Readygate;
use rig::stage::{LEASE_NAME, Stage};
use serde_json::{Value, json};

const CRD: &str = "targetgroupbindings.elbv2.k8s.aws";
/// Bound on one CLI run (the CLI bounds each of its calls at 10 s).
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

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

/// Runs `program args…` with the control plane's admin kubeconfig, as an operator's shell would
/// (no terminal, so no colour).
async fn run_as(program: &Path, stage: &Stage, args: &[&str]) -> Run {
    let child = tokio::process::Command::new(program)
        .args(args)
        .env("KUBECONFIG", &stage.rig.plane.admin_kubeconfig)
        .env_remove("RUST_LOG")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(RUN_TIMEOUT, child)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{} {args:?} ran longer than {RUN_TIMEOUT:?}",
                program.display()
            )
        })
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

/// doctor reported exactly one problem, of `check`, and exited 1; returns its text (summary
/// and fix).
fn sole_problem(r: &Run, check: &str) -> String {
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

/// Polls `ok` every 100 ms until it holds, failing after `within`.
async fn until<F, Fut>(what: &str, within: Duration, mut ok: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !ok().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The rig with readygate installed and one replica, holding its Lease.
async fn start() -> (Stage, rig::serial::Exclusive) {
    readygate::install_crypto_provider();
    let lock = rig::serial::exclusive().await;
    let stage = Stage::start(bin(), &repo().join("manifests"), &[])
        .await
        .unwrap_or_else(|e| panic!("starting the rig and readygate: {e:#}"));
    let first = stage.replicas.lock().await[0].opts.identity.clone();
    // A replica of an earlier stage of this process may hold it until it expires.
    until(
        "our replica holding the Lease",
        Duration::from_secs(40),
        || async { stage.leader().await.as_deref() == Some(first.as_str()) },
    )
    .await;
    (stage, lock)
}

fn pods(stage: &Stage, ns: &str) -> Api<Pod> {
    Api::namespaced(stage.rig.client.clone(), ns)
}

fn webhook_configurations(stage: &Stage) -> Api<MutatingWebhookConfiguration> {
    Api::all(stage.rig.client.clone())
}

/// A pod of `app`, as a Deployment would create it (through admission).
fn app_pod(name: &str, app: &str, annotations: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": app}, "annotations": annotations},
        "spec": {"containers": [{
            "name": "web", "image": "rig/web:1",
            "ports": [{"name": "http", "containerPort": rig::rig::APP_PORT}],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1}
        }]}
    }))
    .unwrap()
}

fn gates(pod: &Pod) -> Vec<String> {
    pod.spec
        .iter()
        .flat_map(|s| s.readiness_gates.iter().flatten())
        .map(|g| g.condition_type.clone())
        .collect()
}

async fn create_pod(stage: &Stage, ns: &str, pod: Pod) -> Pod {
    pods(stage, ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("creating pod {:?}: {e}", pod.metadata.name))
}

/// Whether the API server calls readygate's webhook for a pod of `app` in `ns` right now: a
/// dry-run creation (admission runs, nothing is stored) comes back with the gate.
async fn webhook_called(stage: &Stage, ns: &str, app: &str) -> bool {
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let pod = pods(stage, ns)
        .create(&dry, &app_pod("admission-probe", app, json!({})))
        .await
        .expect("dry-run pod creation");
    gates(&pod).contains(&format!("target-health.elbv2.k8s.aws/{app}"))
}

/// Creates pod `pod` of `app` in `ns` while readygate's webhook is unavailable: the
/// MutatingWebhookConfiguration deleted (and the API server no longer calling it), the pod
/// created, the configuration applied again as installed (and the API server calling it again).
async fn create_pod_without_webhook(stage: &Stage, ns: &str, app: &str, pod: Pod) -> Pod {
    webhook_configurations(stage)
        .delete("readygate", &DeleteParams::default())
        .await
        .expect("deleting the webhook configuration");
    until(
        "the API server to stop calling the webhook",
        Duration::from_secs(20),
        || async { !webhook_called(stage, ns, app).await },
    )
    .await;
    let created = create_pod(stage, ns, pod).await;
    install::apply(
        &stage.rig.client,
        &stage.installed.webhook_configuration,
        "",
    )
    .await
    .expect("re-applying the webhook configuration");
    until(
        "the API server to call the webhook again",
        Duration::from_secs(20),
        || async { webhook_called(stage, ns, app).await },
    )
    .await;
    created
}

async fn gate_condition(stage: &Stage, ns: &str, pod: &str, gate: &str) -> Option<Value> {
    let p = pods(stage, ns).get(pod).await.ok()?;
    let v = serde_json::to_value(p).ok()?;
    v.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c["type"] == gate)
        .cloned()
}

/// `ip:port` of the webhook Service's ready endpoints.
async fn webhook_endpoints(stage: &Stage) -> Vec<String> {
    let (service, ns) = &stage.service;
    let slices: Api<EndpointSlice> = Api::namespaced(stage.rig.client.clone(), ns);
    let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={service}"));
    let slices = slices
        .list(&lp)
        .await
        .expect("listing EndpointSlices")
        .items;
    readygate::doctor::slice_addresses(&slices, Some("https")).0
}

fn json_patch(ops: Value) -> Patch<()> {
    Patch::Json(serde_json::from_value(ops).unwrap())
}

/// Deletes namespace `ns` and waits until it is gone, its pods removed at once (the node agent
/// stops them): doctor, in the other tests, looks at every namespace.
async fn delete_namespace(stage: &Stage, ns: &str) {
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    pods(stage, ns)
        .delete_collection(&now, &ListParams::default())
        .await
        .expect("deleting the namespace's pods");
    let namespaces: Api<Namespace> = Api::all(stage.rig.client.clone());
    namespaces
        .delete(ns, &DeleteParams::default())
        .await
        .expect("deleting the namespace");
    until(
        &format!("namespace {ns} to be gone"),
        Duration::from_secs(60),
        || async { namespaces.get_opt(ns).await.unwrap().is_none() },
    )
    .await;
}

/// One more readygate replica, started with `--controller=false` (it serves the webhook and
/// never takes the Lease), its Pod made from the manifests' template as the stage makes its
/// replicas'; returns once the webhook Service sends it requests.
async fn add_webhook_only_replica(stage: &Stage) -> Readygate {
    let mut opts = stage.replicas.lock().await[0].opts.clone();
    let ip = rig::netns::pod_ips().allocate().unwrap();
    opts.identity = format!("{}-webhook-only", opts.identity);
    opts.webhook_addr = SocketAddr::new(ip.into(), opts.webhook_addr.port());
    opts.admin_addr = SocketAddr::new(ip.into(), opts.admin_addr.port());
    opts.log = opts.log.with_file_name("readygate-webhook-only.log");
    opts.extra_args.push("--controller=false".into());
    let rg = Readygate::start(opts).await.unwrap();
    let t = &stage.installed.pod_template;
    let mut metadata = t["metadata"].clone();
    metadata["name"] = json!(rg.opts.identity);
    metadata["annotations"][EXTERNAL_ANNOTATION] = json!(ip.to_string());
    metadata["annotations"][EXTERNAL_PID_ANNOTATION] = json!(rg.pid().unwrap().to_string());
    let mut spec = t["spec"].clone();
    spec["nodeName"] = json!(NODE_NAME);
    let pod: Pod = serde_json::from_value(json!({"metadata": metadata, "spec": spec})).unwrap();
    create_pod(stage, &stage.service.1, pod).await;
    let addr = rg.opts.webhook_addr.to_string();
    until(
        "the webhook-only replica behind the Service",
        Duration::from_secs(30),
        || async { webhook_endpoints(stage).await.contains(&addr) },
    )
    .await;
    rg
}

#[test]
fn doctor_says_ok_then_names_each_broken_setup_with_its_fix() {
    rig::cluster::test(|_| async {
        let (stage, _lock) = start().await;
        let client = stage.rig.client.clone();
        let ns = "doctor-shop";
        stage.rig.namespace(ns, true).await.unwrap();
        let web = stage.rig.app(ns, "web").await.unwrap();
        until(
            "readygate's caches to see the binding",
            Duration::from_secs(20),
            || async { webhook_called(&stage, ns, "web").await },
        )
        .await;
        let pod = create_pod(&stage, ns, app_pod("web-1", "web", json!({}))).await;
        assert_eq!(
            gates(&pod),
            ["target-health.elbv2.k8s.aws/web"],
            "the webhook injected the gate"
        );
        let leader = stage.leader().await.unwrap();
        let webhook = stage.replicas.lock().await[0].opts.webhook_addr;

        // Healthy.
        let r = doctor(&stage).await;
        assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
        assert!(
            checks(&r.stdout, "problem").is_empty() && checks(&r.stdout, "warning").is_empty(),
            "{}",
            r.stdout
        );
        for words in [
            "ok      crd".to_string(),
            format!(
                "ok      ca-bundle        caBundle verifies the certificate served at {webhook} for readygate-webhook.readygate-system.svc"
            ),
            format!(
                "Service readygate-system/readygate-webhook has 1 ready endpoint(s): {webhook}"
            ),
            format!("opted-in namespaces: {ns}"),
            format!("{leader} holds Lease readygate-system/readygate"),
            "0 problem(s), 0 warning(s)".to_string(),
        ] {
            assert!(r.stdout.contains(&words), "{words:?} not in:\n{}", r.stdout);
        }
        let json = run(&stage, &["doctor", "-o", "json"]).await;
        let v: Value = serde_json::from_str(&json.stdout).expect("doctor -o json parses");
        assert_eq!(v["exitCode"], 0);
        assert!(
            v["findings"]
                .as_array()
                .unwrap()
                .iter()
                .all(|f| f["level"] == "ok"),
            "{}",
            json.stdout
        );

        // A pod created while the webhook was unavailable has no gate.
        let pod =
            create_pod_without_webhook(&stage, ns, "web", app_pod("web-nogate", "web", json!({})))
                .await;
        assert!(gates(&pod).is_empty(), "created without the webhook");
        let r = doctor(&stage).await;
        let now = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        pods(&stage, ns).delete("web-nogate", &now).await.unwrap();
        let p = sole_problem(&r, "missing-gates");
        assert!(
            p.contains(&format!(
                "{ns}/web-nogate lacks target-health.elbv2.k8s.aws/web"
            )) && p.contains(&format!("kubectl -n {ns} delete pod web-nogate")),
            "{p}"
        );

        // The TargetGroupBinding CRD is missing (its deletion takes the bindings with it).
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        crds.delete(CRD, &DeleteParams::default()).await.unwrap();
        until("the CRD to be gone", Duration::from_secs(30), || async {
            crds.get_opt(CRD).await.unwrap().is_none()
        })
        .await;
        let r = doctor(&stage).await;
        install::target_group_binding_crd(&client).await.unwrap();
        let binding = json!({"apiVersion": "elbv2.k8s.aws/v1beta1", "kind": "TargetGroupBinding",
            "metadata": {"name": "web"},
            "spec": {"targetGroupARN": web.arn, "targetType": "ip", "serviceRef": {"name": "web", "port": 80}}});
        // Discovery may lag the CRD's return a moment.
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Err(e) = stage.rig.create(binding.clone(), ns).await {
            assert!(Instant::now() < deadline, "re-creating the binding: {e:#}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // readygate follows the CRD's return: it injects the binding's gate again.
        until(
            "readygate to see the re-created binding",
            Duration::from_secs(30),
            || async { webhook_called(&stage, ns, "web").await },
        )
        .await;
        let p = sole_problem(&r, "crd");
        assert!(
            p.contains("CRD targetgroupbindings.elbv2.k8s.aws is not installed")
                && p.contains("aws-load-balancer-controller"),
            "{p}"
        );
        assert!(
            r.stdout.contains(
                "warning missing-gates    cannot look for pods missing their gates: TargetGroupBindings could not be listed"
            ),
            "{}",
            r.stdout
        );

        // A caBundle of another CA: it cannot verify the certificate the webhook serves.
        let mwcs = webhook_configurations(&stage);
        let good = stage
            .installed
            .webhook_configuration
            .pointer("/webhooks/0/clientConfig/caBundle")
            .unwrap()
            .clone();
        let other_ca = rig::certs::Certs::for_service("readygate-webhook", "readygate-system")
            .unwrap()
            .ca_pem;
        let set_ca = |value: Value| {
            json_patch(
                json!([{"op": "replace", "path": "/webhooks/0/clientConfig/caBundle",
                "value": value}]),
            )
        };
        mwcs.patch(
            "readygate",
            &PatchParams::default(),
            &set_ca(json!(
                base64::engine::general_purpose::STANDARD.encode(other_ca)
            )),
        )
        .await
        .unwrap();
        let r = doctor(&stage).await;
        mwcs.patch("readygate", &PatchParams::default(), &set_ca(good))
            .await
            .unwrap();
        let p = sole_problem(&r, "ca-bundle");
        assert!(
            p.contains(&format!(
                "caBundle does not verify the certificate served at {webhook} for readygate-webhook.readygate-system.svc"
            )) && p.contains("invalid peer certificate")
                && p.contains("fix: put the CA that signed the serving certificate into caBundle"),
            "{p}"
        );

        // The webhook Service selects no pod, so it has no endpoint (the real EndpointSlice
        // controller empties its slices): the caBundle cannot be checked either, which is a
        // warning; --webhook-url checks it anyway.
        let services: Api<Service> = Api::namespaced(client.clone(), &stage.service.1);
        let selector = serde_json::to_value(
            services
                .get(&stage.service.0)
                .await
                .unwrap()
                .spec
                .unwrap()
                .selector,
        )
        .unwrap();
        let set_selector = |value: Value| {
            json_patch(json!([{"op": "replace", "path": "/spec/selector", "value": value}]))
        };
        services
            .patch(
                &stage.service.0,
                &PatchParams::default(),
                &set_selector(json!({"app.kubernetes.io/name": "nothing"})),
            )
            .await
            .unwrap();
        until(
            "the webhook Service without endpoints",
            Duration::from_secs(30),
            || async { webhook_endpoints(&stage).await.is_empty() },
        )
        .await;
        let r = doctor(&stage).await;
        let with_url = run(
            &stage,
            &["doctor", "--webhook-url", &format!("https://{webhook}")],
        )
        .await;
        services
            .patch(
                &stage.service.0,
                &PatchParams::default(),
                &set_selector(selector),
            )
            .await
            .unwrap();
        until(
            "the webhook Service's endpoint back",
            Duration::from_secs(30),
            || async { webhook_endpoints(&stage).await == [webhook.to_string()] },
        )
        .await;
        let p = sole_problem(&r, "endpoints");
        assert!(
            p.contains(
                "Service readygate-system/readygate-webhook has no ready endpoints (0 not ready)"
            ) && p.contains(
                "kubectl -n readygate-system get pods -l app.kubernetes.io/name=readygate"
            ),
            "{p}"
        );
        assert_eq!(checks(&r.stdout, "warning"), ["ca-bundle"], "{}", r.stdout);
        assert!(
            with_url.stdout.contains(&format!(
                "caBundle verifies the certificate served at {webhook}"
            )),
            "{}",
            with_url.stdout
        );

        // The AWS Load Balancer Controller's own pod webhook (as its chart installs it) also
        // selects opted-in namespaces.
        install::create(
            &client,
            &json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
                "metadata": {"name": "aws-load-balancer-webhook"}, "webhooks": [{
                "name": "mpod.elbv2.k8s.aws",
                "clientConfig": {"service": {"namespace": "kube-system", "name": "aws-load-balancer-webhook-service", "path": "/mutate-v1-pod"}},
                "namespaceSelector": {"matchExpressions": [
                    {"key": "elbv2.k8s.aws/pod-readiness-gate-inject", "operator": "In", "values": ["enabled"]}]},
                "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
                "failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1"]}]}),
            "",
        )
        .await
        .unwrap();
        let r = doctor(&stage).await;
        mwcs.delete("aws-load-balancer-webhook", &DeleteParams::default())
            .await
            .unwrap();
        let p = sole_problem(&r, "double-injection");
        assert!(
            p.contains(&format!(
                "aws-load-balancer-webhook (webhook mpod.elbv2.k8s.aws) also injects readiness gates into {ns}"
            )) && p.contains("--enable-pod-readiness-gate-inject=false"),
            "{p}"
        );
        let r = doctor(&stage).await;
        assert_eq!(r.code, 0, "back to healthy:\n{}", r.stdout);

        // No leader: the only replica left runs without the status controller
        // (--controller=false); the leader terminated (it hands its Lease back on the way out).
        let webhook_only = add_webhook_only_replica(&stage).await;
        let rg = stage.replicas.lock().await.remove(0);
        pods(&stage, &stage.service.1)
            .delete(&rg.opts.identity, &DeleteParams::default())
            .await
            .unwrap();
        rg.wait_or_kill(Duration::from_secs(60)).await.unwrap();
        let only = webhook_only.opts.webhook_addr.to_string();
        until(
            "the leader's endpoint to go",
            Duration::from_secs(30),
            || async { webhook_endpoints(&stage).await == [only.clone()] },
        )
        .await;
        assert_eq!(stage.leader().await, None, "the Lease was handed back");
        let r = doctor(&stage).await;
        let p = sole_problem(&r, "leader");
        assert!(
            p.contains("no replica holds Lease readygate-system/readygate")
                && p.contains("no gate turns True")
                && p.contains("check that readygate runs")
                && p.contains("--controller true"),
            "{p}"
        );

        // Stopped altogether: the Service loses its last endpoint too.
        let name = webhook_only.opts.identity.clone();
        pods(&stage, &stage.service.1)
            .delete(&name, &DeleteParams::default())
            .await
            .unwrap();
        webhook_only
            .wait_or_kill(Duration::from_secs(60))
            .await
            .unwrap();
        until("no webhook endpoint", Duration::from_secs(30), || async {
            webhook_endpoints(&stage).await.is_empty()
        })
        .await;
        let r = doctor(&stage).await;
        assert_eq!(
            checks(&r.stdout, "problem"),
            ["endpoints", "leader"],
            "{}",
            r.stdout
        );
        assert_eq!(r.code, 1);
        stage.stop().await.unwrap();
        delete_namespace(&stage, ns).await;
    })
}

/// A target group (behind a listener: attached to a load balancer) whose health checks keep
/// failing under a high unhealthy threshold: ELB says `initial` / `Elb.InitialHealthChecking`
/// for minutes, and readygate writes that. Returns the pod's target and the listener.
async fn slow_app(stage: &Stage, ns: &str) -> (String, rig::elb::listener::Listener) {
    let rig = &stage.rig;
    rig.create(
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "slow"},
            "spec": {"selector": {"app": "slow"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}}),
        ns,
    )
    .await
    .unwrap();
    let mut spec = GroupSpec::new(&format!("{ns}-slow"), rig::rig::APP_PORT);
    spec.interval = Duration::from_secs(1);
    spec.timeout = Duration::from_secs(1);
    spec.healthy_threshold = 2;
    spec.unhealthy_threshold = 1000;
    spec.health_check_path = LB_HEALTH_PATH.into();
    let arn = rig.elb.create_target_group(spec).unwrap();
    let listener = rig::elb::listener::Listener::start(
        rig.elb.clone(),
        &format!("{ns}-slow"),
        &arn,
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    rig.create(
        json!({"apiVersion": "elbv2.k8s.aws/v1beta1", "kind": "TargetGroupBinding", "metadata": {"name": "slow"},
            "spec": {"targetGroupARN": arn, "targetType": "ip", "serviceRef": {"name": "slow", "port": 80}}}),
        ns,
    )
    .await
    .unwrap();
    until(
        "readygate's caches to see the binding",
        Duration::from_secs(20),
        || async { webhook_called(stage, ns, "slow").await },
    )
    .await;
    let pod = create_pod(
        stage,
        ns,
        app_pod(
            "slow-1",
            "slow",
            json!({LB_HEALTH_ANNOTATION: "fail", PROBE_PERIOD_ANNOTATION: "100"}),
        ),
    )
    .await;
    assert_eq!(gates(&pod), ["target-health.elbv2.k8s.aws/slow"], "gated");
    let gate = "target-health.elbv2.k8s.aws/slow";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = gate_condition(stage, ns, "slow-1", gate).await;
        if c.as_ref()
            .is_some_and(|c| c["reason"] == "Elb.InitialHealthChecking")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gate's condition never said Elb.InitialHealthChecking: {c:?}; pod status {:?}; readygate log:\n{}",
            pods(stage, ns)
                .get("slow-1")
                .await
                .ok()
                .and_then(|p| p.status),
            stage.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pod = pods(stage, ns).get("slow-1").await.unwrap();
    let ip = pod.status.and_then(|s| s.pod_ip).expect("slow-1's pod IP");
    (format!("{ip}:{}", rig::rig::APP_PORT), listener)
}

#[test]
fn status_lists_and_explains_a_pod_pending_on_initial_health_checks() {
    rig::cluster::test(|_| async {
        let (stage, _lock) = start().await;
        let ns = "status-shop";
        stage.rig.namespace(ns, true).await.unwrap();
        let (target, _listener) = slow_app(&stage, ns).await;
        // Beside it: a pod whose gate turned True, and one created without its gate.
        let _web = stage.rig.app(ns, "web").await.unwrap();
        until(
            "readygate's caches to see the binding",
            Duration::from_secs(20),
            || async { webhook_called(&stage, ns, "web").await },
        )
        .await;
        create_pod(
            &stage,
            ns,
            app_pod("web-1", "web", json!({PROBE_PERIOD_ANNOTATION: "100"})),
        )
        .await;
        create_pod_without_webhook(
            &stage,
            ns,
            "web",
            app_pod("web-old", "web", json!({PROBE_PERIOD_ANNOTATION: "100"})),
        )
        .await;
        until("web-1's gate True", Duration::from_secs(30), || async {
            gate_condition(&stage, ns, "web-1", "target-health.elbv2.k8s.aws/web")
                .await
                .is_some_and(|c| c["status"] == "True")
        })
        .await;
        let leader = stage.leader().await.unwrap();

        // The table, with ELB's view from the leader through the API server's pod proxy.
        let r = run(&stage, &["status", "-n", ns]).await;
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        assert!(
            r.stdout.starts_with(&format!(
                "# ELB state from the leading controller (pod proxy /api/v1/namespaces/readygate-system/pods/{leader}:8080/proxy/debug/gates)"
            )),
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
                ns,
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
                // A healthy target's condition has no reason (as the AWS controller writes it).
                .any(|l| l.contains("web-1")
                    && l.split_whitespace().nth(4) == Some("-")
                    && l.contains("took ")),
            "{}",
            r.stdout
        );

        // -o json parses, and carries the leader's view of the gate.
        let r = run(&stage, &["status", "-n", ns, "-o", "json"]).await;
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
        let r = run(&stage, &["status", "-n", ns, "slow-1"]).await;
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        for words in [
            "TargetGroupBinding slow (targetType ip) selects it: its Service slow has selector app=slow",
            &format!(
                "targetPort \"http\", the pod's container port 8080; so the target is {target}"
            ),
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
        let r = run(&stage, &["status", "-n", ns, "slow-1", "-o", "json"]).await;
        let v: Value = serde_json::from_str(&r.stdout).expect("status POD -o json parses");
        assert!(v["explanation"].as_array().unwrap().len() > 3);

        // --controller-url reaches the admin port (on the leader's pod IP) directly.
        let admin = stage.replicas.lock().await[0].opts.admin_addr;
        let r = run(
            &stage,
            &[
                "status",
                "-n",
                ns,
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
        let r = run_as(&plugin, &stage, &["status", "-n", ns]).await;
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
            &["status", "-n", ns, "--lease-namespace", "nowhere"],
        )
        .await;
        assert!(
            r.stdout.starts_with(&format!("# ELB state from the pods' conditions alone (the controller was not asked: no Lease nowhere/{LEASE_NAME}: no leader)")),
            "{}",
            r.stdout
        );
        let line = r.stdout.lines().find(|l| l.contains("slow-1")).unwrap();
        assert!(
            line.contains("Elb.InitialHealthChecking") && line.ends_with(&target),
            "{line}"
        );
        stage.stop().await.unwrap();
        delete_namespace(&stage, ns).await;
    })
}
