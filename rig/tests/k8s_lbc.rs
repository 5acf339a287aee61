//! The model of the AWS Load Balancer Controller v3.5.0 (`rig::lbc`) on the real control plane:
//! the real EndpointSlice controller makes the slices from pods whose status the test writes,
//! the model registers their addresses in the rig's ELB and writes their gates' conditions as
//! the AWS controller's own ServiceAccount, whose writes the API server's audit log counts.

mod k8s_fixtures;

use futures::StreamExt;
use k8s_fixtures::*;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use rig::elb::{Elb, ElbConfig, GroupSpec, TargetEvent, TargetEventKind};
use rig::k8s::aws_lbc;
use rig::lbc::{CALLER, FINALIZER, Lbc, LbcConfig, target_group_bindings};
use serde_json::json;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// Shorter than the re-queue, as in the rig (0.5 s and 1.5 s): a pending gate's re-queue must
/// not hold back a deregistration.
const REACTION: Duration = Duration::from_millis(500);
const REQUEUE: Duration = Duration::from_millis(1500);

fn config() -> LbcConfig {
    LbcConfig {
        reaction: REACTION,
        requeue: REQUEUE,
        ..LbcConfig::default()
    }
}

/// The cluster side of every test: the CRDs (the AWS controller's own when they are beside the
/// repository), the AWS controller's identity, a fresh namespace and a Ready Node.
struct Setup {
    admin: Client,
    lbc_client: Client,
    ns: String,
    node: String,
    elb: Arc<Elb>,
    audit: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn setup(plane: &'static rig::cluster::ControlPlane, prefix: &str) -> Setup {
    let admin = plane.client().await.unwrap();
    let crds = aws_lbc::install_crds(&admin).await.unwrap();
    eprintln!("TargetGroupBinding CRD: {crds}");
    let dir = tempfile::tempdir().unwrap();
    let identity = aws_lbc::install_aws_lbc_identity(plane, &admin, dir.path())
        .await
        .unwrap();
    eprintln!("the model's RBAC: {:?}", identity.role);
    let ns = namespace(&admin, prefix).await;
    let node = format!("node-{ns}");
    ready_node(&admin, &node).await;
    Setup {
        admin,
        lbc_client: identity.client,
        ns,
        node,
        elb: Elb::new(ElbConfig::default()),
        audit: plane.audit_log.clone(),
        _dir: dir,
    }
}

impl Setup {
    /// The model, watching this test's namespace only (the tests of a binary share the
    /// control plane).
    fn start(&self, config: LbcConfig) -> impl std::future::Future<Output = Lbc> + use<> {
        let (client, elb) = (self.lbc_client.clone(), self.elb.clone());
        let config = LbcConfig {
            watch_namespace: Some(self.ns.clone()),
            ..config
        };
        async move { Lbc::start(client, elb, config).await.unwrap() }
    }

    /// Service `name` (port `http` 80 → the pods' container port `web`), its target group
    /// (health checks every `interval`, healthy after `healthy` passes, unhealthy after 2
    /// failures; attached to a load balancer when `attached`) and the IP-mode binding `name`.
    async fn app(&self, name: &str, interval: Duration, healthy: u32, attached: bool) -> String {
        let mut spec = GroupSpec::new(&format!("{}-{name}", self.ns), 8080);
        spec.interval = interval;
        spec.timeout = interval.min(Duration::from_secs(5));
        spec.healthy_threshold = healthy;
        spec.deregistration_delay = Duration::from_secs(30);
        let arn = self.elb.create_target_group(spec).unwrap();
        if attached {
            self.elb
                .attach(&arn, "arn:aws:elasticloadbalancing:lb/rig")
                .unwrap();
        }
        self.services()
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": name},
                    "spec": {"selector": {"app": name},
                             "ports": [{"name": "http", "port": 80, "targetPort": "web"}]},
                }))
                .unwrap(),
            )
            .await
            .unwrap();
        self.bindings()
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "apiVersion": "elbv2.k8s.aws/v1beta1", "kind": "TargetGroupBinding",
                    "metadata": {"name": name},
                    "spec": {"targetGroupARN": arn, "targetType": "ip",
                             "serviceRef": {"name": name, "port": "http"}},
                }))
                .unwrap(),
            )
            .await
            .unwrap();
        arn
    }

    fn services(&self) -> Api<Service> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    fn bindings(&self) -> Api<DynamicObject> {
        Api::namespaced_with(self.admin.clone(), &self.ns, &target_group_bindings())
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    /// A pod of `app` with `gates`, running at a fresh address, ContainersReady as asked and
    /// not Ready (no kubelet turns it Ready: its gate holds it, or the test says so).
    async fn pod(&self, name: &str, app: &str, gates: &[&str], containers_ready: bool) -> Ipv4Addr {
        pod(&self.admin, &self.ns, name, app, &self.node, gates).await;
        let ip = pod_ip();
        set_pod_status(&self.admin, &self.ns, name, ip, containers_ready, false).await;
        ip
    }

    /// The model's `pods/status` patches of pod `name`, from the audit log.
    fn status_writes(&self, name: &str) -> usize {
        rig::k8s::audit::requests(&self.audit)
            .unwrap()
            .iter()
            .filter(|r| {
                r.user == aws_lbc::USER
                    && r.verb == "patch"
                    && r.resource == "pods"
                    && r.subresource == "status"
                    && r.namespace == self.ns
                    && r.name == name
            })
            .count()
    }

    fn describes(&self) -> u64 {
        self.elb
            .calls_by(CALLER)
            .get("DescribeTargetHealth")
            .copied()
            .unwrap_or(0)
    }
}

/// What a gate's condition said: (status, reason, message, lastTransitionTime).
type Said = (String, String, String, String);

/// Every distinct value pod `name`'s condition `gate` takes, as a watch of the pod sees it.
fn follow_condition(
    admin: &Client,
    ns: &str,
    name: &str,
    gate: &str,
) -> (Arc<Mutex<Vec<Said>>>, Task) {
    let seen: Arc<Mutex<Vec<Said>>> = Arc::default();
    let api: Api<Pod> = Api::namespaced(admin.clone(), ns);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let (gate, out) = (gate.to_string(), seen.clone());
    let task = tokio::spawn(async move {
        let mut stream = watcher::watcher(api, cfg).boxed();
        while let Some(e) = stream.next().await {
            let (Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p))) = e else {
                continue;
            };
            let Some(c) = p
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .into_iter()
                .find(|c| c.type_ == gate)
            else {
                continue;
            };
            let said = (
                c.status,
                c.reason.unwrap_or_default(),
                c.message.unwrap_or_default(),
                c.last_transition_time
                    .map(|t| t.0.to_string())
                    .unwrap_or_default(),
            );
            let mut out = out.lock().unwrap();
            if out.last() != Some(&said) {
                out.push(said);
            }
        }
    });
    (seen, Task::new(task))
}

fn said(seen: &Arc<Mutex<Vec<Said>>>) -> Vec<(String, String, String)> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|(s, r, m, _)| (s.clone(), r.clone(), m.clone()))
        .collect()
}

fn triple(s: &str, r: &str, m: &str) -> (String, String, String) {
    (s.into(), r.into(), m.into())
}

fn registration_in_progress() -> (String, String, String) {
    triple(
        "False",
        "Elb.RegistrationInProgress",
        "Target registration is in progress",
    )
}

/// An HTTP server answering 200 on `ip:8080` (the pod's container), until dropped.
async fn serve(ip: Ipv4Addr) -> Task {
    let listener = tokio::net::TcpListener::bind((ip, 8080)).await.unwrap();
    Task::new(tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    }))
}

/// Applies the target events received so far to `set` (registered, not yet deregistered).
fn registered(events: &mut broadcast::Receiver<TargetEvent>, set: &mut BTreeSet<String>) {
    while let Ok(e) = events.try_recv() {
        match e.kind {
            TargetEventKind::Registered => {
                set.insert(e.id);
            }
            TargetEventKind::Deregistered => {
                set.remove(&e.id);
            }
            _ => {}
        }
    }
}

async fn until_registered(
    events: &mut broadcast::Receiver<TargetEvent>,
    set: &mut BTreeSet<String>,
    want: &BTreeSet<String>,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    while set != want && Instant::now() < deadline {
        registered(events, set);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(set, want, "registered targets");
}

#[test]
fn registers_every_ready_or_containers_ready_endpoint_gated_or_not_and_deregisters_what_leaves() {
    rig::cluster::test(|plane| async move {
        let s = setup(plane, "lbc-reg").await;
        let mut events = s.elb.events();
        let _lbc = s.start(config()).await;
        s.app("web", Duration::from_secs(30), 3, false).await;
        let gate = "target-health.elbv2.k8s.aws/web";
        let pods = [
            // (name, gates, containers ready, Ready)
            ("ready", vec![gate], true, true),
            ("gated", vec![gate], true, false),
            ("ungated", vec![], true, false),
            (
                "other-gate",
                vec!["target-health.elbv2.k8s.aws/other"],
                true,
                false,
            ),
            ("starting", vec![gate], false, false),
        ];
        let mut ips = std::collections::BTreeMap::new();
        for (name, gates, containers_ready, ready) in &pods {
            pod(&s.admin, &s.ns, name, "web", &s.node, gates).await;
            let ip = pod_ip();
            set_pod_status(&s.admin, &s.ns, name, ip, *containers_ready, *ready).await;
            ips.insert(*name, ip.to_string());
        }
        // Every ready endpoint, and every not-ready one whose pod is ContainersReady on a Ready
        // Node, whatever gates it carries; not the pod whose containers are not ready.
        let want: BTreeSet<String> = ["ready", "gated", "ungated", "other-gate"]
            .iter()
            .map(|n| ips[n].clone())
            .collect();
        let mut set = BTreeSet::new();
        until_registered(&mut events, &mut set, &want, Duration::from_secs(30)).await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        registered(&mut events, &mut set);
        assert_eq!(set, want, "registered targets, a second later");

        // A deleted pod on a node stays, terminating, until its kubelet removes it: its endpoint
        // turns terminating and goes from the target group the model's reaction later.
        let deleted = Instant::now();
        s.pods().delete("ready", &Default::default()).await.unwrap();
        let gone = loop {
            let e = tokio::time::timeout(Duration::from_secs(15), events.recv())
                .await
                .expect("a deregistration")
                .unwrap();
            if e.kind == TargetEventKind::Deregistered {
                assert_eq!(e.id, ips["ready"]);
                break e.at;
            }
        };
        let after = gone.duration_since(deleted);
        eprintln!("deregistered {after:?} after the delete");
        assert!(after >= REACTION, "deregistered {after:?} after the delete");
        // Within the reaction and the watches' latency: before the pending gate's re-queue.
        assert!(
            after < REACTION + Duration::from_millis(900),
            "deregistered {after:?} after the delete (the re-queue is {REQUEUE:?})"
        );

        // The Node stops being Ready: its not-ready pods are no longer registrable, gated or
        // not. Node events re-queue only instance-mode bindings: the re-queue of the pending
        // gate finds them.
        let changed = Instant::now();
        set_node_ready(&s.admin, &s.node, false).await;
        let want: BTreeSet<String> = BTreeSet::new();
        set.remove(&ips["ready"]);
        until_registered(
            &mut events,
            &mut set,
            &want,
            REQUEUE + REACTION + Duration::from_secs(5),
        )
        .await;
        eprintln!(
            "not-ready pods deregistered {:?} after the Node's change",
            changed.elapsed()
        );
        delete_node(&s.admin, &s.node).await;
    });
}

#[test]
fn writes_each_condition_as_the_aws_controller_does_and_skips_what_is_already_there() {
    rig::cluster::test(|plane| async move {
        let s = setup(plane, "lbc-cond").await;
        let _lbc = s.start(config()).await;
        s.app("web", Duration::from_secs(1), 3, true).await;
        s.app("idle", Duration::from_secs(1), 3, false).await;
        let web = "target-health.elbv2.k8s.aws/web";
        let idle = "target-health.elbv2.k8s.aws/idle";
        let (healthy_seen, _t1) = follow_condition(&s.admin, &s.ns, "healthy", web);
        let (failing_seen, _t2) = follow_condition(&s.admin, &s.ns, "failing", web);
        let (unused_seen, _t3) = follow_condition(&s.admin, &s.ns, "unused", idle);
        let ip = s.pod("healthy", "web", &[web], true).await;
        let _server = serve(ip).await;
        s.pod("failing", "web", &[web], true).await;
        s.pod("unused", "idle", &[idle], true).await;

        until(
            "the healthy pod's gate True",
            Duration::from_secs(30),
            || async {
                said(&healthy_seen)
                    .last()
                    .is_some_and(|c| c.0 == "True")
                    .then_some(())
            },
        )
        .await;
        let failed = triple("False", "Target.FailedHealthChecks", "Health checks failed");
        until(
            "the failing pod's gate to say why",
            Duration::from_secs(30),
            || async { (said(&failing_seen).last() == Some(&failed)).then_some(()) },
        )
        .await;
        let not_in_use = triple(
            "False",
            "Target.NotInUse",
            "Target group is not configured to receive traffic from the load balancer",
        );
        until(
            "the unused pod's gate to say why",
            Duration::from_secs(30),
            || async { (said(&unused_seen).last() == Some(&not_in_use)).then_some(()) },
        )
        .await;

        // Healthy: registration in progress (before the model's first DescribeTargetHealth),
        // the initial health checks, then True with empty reason and message.
        let initial = triple(
            "False",
            "Elb.InitialHealthChecking",
            "Initial health checks in progress",
        );
        assert_eq!(
            said(&healthy_seen),
            vec![
                registration_in_progress(),
                initial.clone(),
                triple("True", "", "")
            ]
        );
        let ltt: Vec<String> = healthy_seen
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.3.clone())
            .collect();
        assert_eq!(
            ltt[1], ltt[0],
            "lastTransitionTime kept while the status stays False"
        );
        assert!(
            ltt[2] >= ltt[1],
            "lastTransitionTime of the change to True: {ltt:?}"
        );
        // Failing: never True, ELB's reason and description once unhealthy.
        let failing = said(&failing_seen);
        assert_eq!(
            failing.first(),
            Some(&registration_in_progress()),
            "{failing:?}"
        );
        assert!(
            failing[1..failing.len() - 1].iter().all(|c| *c == initial),
            "{failing:?}"
        );
        // Not in use: False with ELB's reason, whatever readygate would decide.
        assert_eq!(
            said(&unused_seen),
            vec![registration_in_progress(), not_in_use]
        );

        // Every value seen is one of the model's writes (a reconcile that starts before the
        // informer has delivered its previous write may write the same value once more, as an
        // informer-fed controller does). The no-op skip: the failing and unused gates stay
        // pending, so the model keeps reconciling (it describes again every re-queue), but it
        // writes nothing the pods already say.
        tokio::time::sleep(REQUEUE).await;
        let writes = ["healthy", "failing", "unused"].map(|p| s.status_writes(p));
        eprintln!("the model's pods/status patches (healthy, failing, unused): {writes:?}");
        assert!(
            writes[0] >= 3 && writes[1] >= failing.len() && writes[2] >= 2,
            "{writes:?}"
        );
        let before = s.describes();
        tokio::time::sleep(REQUEUE * 3).await;
        assert!(s.describes() >= before + 2, "the model kept looking");
        assert_eq!(
            ["healthy", "failing", "unused"].map(|p| s.status_writes(p)),
            writes,
            "no write while nothing changes"
        );
        let all = rig::k8s::audit::requests(&s.audit).unwrap();
        assert!(
            all.iter()
                .filter(|r| r.user == aws_lbc::USER && r.namespace == s.ns)
                .all(|r| r.code < 300),
            "every request of the model succeeded"
        );
        delete_node(&s.admin, &s.node).await;
    });
}

#[test]
fn requeues_at_once_on_a_change_of_a_gated_pod_and_every_requeue_period_while_a_gate_waits() {
    rig::cluster::test(|plane| async move {
        let s = setup(plane, "lbc-requeue").await;
        let _lbc = s.start(config()).await;
        // Health checks every 30 s: the target stays `initial`, the gate False.
        let arn = s.app("web", Duration::from_secs(30), 3, true).await;
        let gate = "target-health.elbv2.k8s.aws/web";
        s.pod("plain", "web", &[], true).await;
        let poke = |name: &'static str, value: &'static str| {
            let pods = s.pods();
            async move {
                pods.patch_status(
                    name,
                    &PatchParams::default(),
                    &Patch::Strategic(json!({"status": {"conditions": [
                        {"type": "rig.readygate.io/poke", "status": value}]}})),
                )
                .await
                .unwrap();
            }
        };
        // Nothing waits: once the plain pod is registered and the model has checkpointed the
        // binding, it is idle, and a change of a pod without its gate re-queues nothing.
        until(
            "the plain pod registered",
            Duration::from_secs(20),
            || async { (s.elb.describe_target_health(&arn, &[]).ok()?.len() == 1).then_some(()) },
        )
        .await;
        until(
            "the binding's checkpoint",
            Duration::from_secs(20),
            || async {
                let b = s.bindings().get("web").await.ok()?;
                let cp = b.metadata.annotations?.get(rig::lbc::CHECKPOINT)?.clone();
                (!cp.is_empty()).then_some(())
            },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let idle = s.describes();
        poke("plain", "True").await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            s.describes(),
            idle,
            "no DescribeTargetHealth while no gate waits"
        );

        s.pod("gated", "web", &[gate], true).await;
        until(
            "the gated pod's condition",
            Duration::from_secs(20),
            || async {
                let p = s.pods().get("gated").await.ok()?;
                p.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == gate)
                    .then_some(())
            },
        )
        .await;
        // While the gate waits, one look every re-queue period.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let from = s.describes();
        let window = REQUEUE * 4;
        tokio::time::sleep(window).await;
        let looks = s.describes() - from;
        eprintln!("{looks} DescribeTargetHealth calls in {window:?} of a pending gate");
        assert!((3..=5).contains(&looks), "{looks} looks in {window:?}");

        // A change of the gated pod re-queues its binding at once: right after a look, the
        // next re-queue is 1.5 s away, yet the poke brings one within 0.5 s.
        let last = s.describes();
        until("a re-queue", Duration::from_secs(5), || async {
            (s.describes() > last).then_some(())
        })
        .await;
        let at = s.describes();
        let poked = Instant::now();
        poke("gated", "True").await;
        until(
            "the look the poke brings",
            Duration::from_millis(500),
            || async { (s.describes() > at).then_some(()) },
        )
        .await;
        eprintln!(
            "looked again {:?} after the gated pod changed",
            poked.elapsed()
        );
        assert_eq!(
            s.status_writes("plain"),
            0,
            "the ungated pod is never written"
        );
        delete_node(&s.admin, &s.node).await;
    });
}

#[test]
fn keeps_a_healthy_target_healthy_in_its_cache_until_the_cache_expires() {
    rig::cluster::test(|plane| async move {
        let s = setup(plane, "lbc-cache").await;
        let ttl = Duration::from_secs(15);
        let _lbc = s
            .start(LbcConfig {
                targets_cache_ttl: ttl,
                ..config()
            })
            .await;
        let cached_from = Instant::now();
        s.app("web", Duration::from_secs(1), 2, true).await;
        let gate = "target-health.elbv2.k8s.aws/web";
        let mut events = s.elb.events();
        let (seen, _t) = follow_condition(&s.admin, &s.ns, "a", gate);
        let ip = s.pod("a", "web", &[gate], true).await;
        let server = serve(ip).await;
        until("pod a's gate True", Duration::from_secs(20), || async {
            said(&seen)
                .last()
                .is_some_and(|c| c.0 == "True")
                .then_some(())
        })
        .await;
        // Its container stops answering: the ELB marks it unhealthy…
        drop(server);
        loop {
            let e = tokio::time::timeout(Duration::from_secs(15), events.recv())
                .await
                .expect("the target to turn unhealthy")
                .unwrap();
            if e.kind == TargetEventKind::Unhealthy && e.id == ip.to_string() {
                break;
            }
        }
        let unhealthy_at = Instant::now();
        // …and a second pod waiting on its gate keeps the model reconciling the binding, yet it
        // never describes a target its cache holds healthy: pod a's gate stays True.
        s.pod("b", "web", &[gate], true).await;
        let looks = s.describes();
        let expiry = cached_from + ttl;
        if let Some(left) =
            expiry.checked_duration_since(Instant::now() + Duration::from_millis(300))
        {
            tokio::time::sleep(left.min(REQUEUE * 2)).await;
        }
        assert!(s.describes() > looks, "the model reconciled meanwhile");
        assert_eq!(
            said(&seen).last().unwrap().0,
            "True",
            "still True while cached"
        );
        assert!(
            Instant::now() < expiry,
            "checked before the cache entry expired"
        );
        // Once the entry expires, the whole group is described again.
        let failed = triple("False", "Target.FailedHealthChecks", "Health checks failed");
        until(
            "pod a's gate False after the cache expired",
            ttl + REQUEUE * 2,
            || async { (said(&seen).last() == Some(&failed)).then_some(()) },
        )
        .await;
        eprintln!(
            "pod a False {:?} after its target turned unhealthy (cache of {ttl:?})",
            unhealthy_at.elapsed()
        );
        delete_node(&s.admin, &s.node).await;
    });
}

#[test]
fn finalizes_its_bindings_and_releases_their_pods_when_a_binding_or_its_service_goes() {
    rig::cluster::test(|plane| async move {
        let s = setup(plane, "lbc-final").await;
        let mut events = s.elb.events();
        let _lbc = s.start(config()).await;
        s.app("a", Duration::from_secs(30), 3, true).await;
        s.app("b", Duration::from_secs(30), 3, true).await;
        let gate_a = "target-health.elbv2.k8s.aws/a";
        let gate_b = "target-health.elbv2.k8s.aws/b";
        let ip_a = s.pod("pa", "a", &[gate_a], true).await.to_string();
        let ip_b = s.pod("pb", "b", &[gate_b], true).await.to_string();
        for name in ["a", "b"] {
            until(
                "the AWS controller's finalizer",
                Duration::from_secs(20),
                || async {
                    let b = s.bindings().get(name).await.ok()?;
                    b.metadata
                        .finalizers?
                        .iter()
                        .any(|f| f == FINALIZER)
                        .then_some(())
                },
            )
            .await;
        }
        let want: BTreeSet<String> = [ip_a.clone(), ip_b.clone()].into();
        let mut set = BTreeSet::new();
        until_registered(&mut events, &mut set, &want, Duration::from_secs(20)).await;
        let condition = |pod: &'static str, gate: &'static str| {
            let pods = s.pods();
            async move {
                let p = pods.get(pod).await.ok()?;
                let c = p
                    .status?
                    .conditions?
                    .into_iter()
                    .find(|c| c.type_ == gate)?;
                Some(triple(
                    &c.status,
                    &c.reason.unwrap_or_default(),
                    &c.message.unwrap_or_default(),
                ))
            }
        };
        let deleted = triple("True", "", "Target Group Binding is deleted");

        // Service a goes: its targets are deregistered and its gated pods released; the binding
        // stays, finalized.
        s.services().delete("a", &Default::default()).await.unwrap();
        until("pa released", Duration::from_secs(20), || async {
            (condition("pa", gate_a).await? == deleted).then_some(())
        })
        .await;
        let want: BTreeSet<String> = [ip_b.clone()].into();
        until_registered(&mut events, &mut set, &want, Duration::from_secs(10)).await;
        let a = s.bindings().get("a").await.unwrap();
        assert_eq!(a.metadata.finalizers, Some(vec![FINALIZER.to_string()]));

        // Binding b is deleted: the same clean-up, then the finalizer goes and the binding with it.
        s.bindings().delete("b", &Default::default()).await.unwrap();
        until("pb released", Duration::from_secs(20), || async {
            (condition("pb", gate_b).await? == deleted).then_some(())
        })
        .await;
        until_registered(
            &mut events,
            &mut set,
            &BTreeSet::new(),
            Duration::from_secs(10),
        )
        .await;
        until("binding b gone", Duration::from_secs(20), || async {
            s.bindings()
                .get_opt("b")
                .await
                .ok()?
                .is_none()
                .then_some(())
        })
        .await;
        let patched: Vec<_> = rig::k8s::audit::requests(&s.audit)
            .unwrap()
            .into_iter()
            .filter(|r| {
                r.user == aws_lbc::USER
                    && r.resource == "targetgroupbindings"
                    && r.namespace == s.ns
                    && r.verb == "patch"
                    && r.subresource.is_empty()
            })
            .collect();
        assert!(
            patched.iter().any(|r| r.name == "b"),
            "the finalizer came and went by the AWS controller's patches"
        );
        // The model no longer reconciles a Service-less binding's pods into anything else.
        tokio::time::sleep(REQUEUE * 2).await;
        assert_eq!(condition("pa", gate_a).await, Some(deleted));
        delete_node(&s.admin, &s.node).await;
    });
}
