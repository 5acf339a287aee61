//! The controller loop against moto: what it polls, and the condition writes it asks for.

mod support;

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use readygate::budget::Budget;
use readygate::cache::Cache;
use readygate::cli::{Cli, Command, ControllerArgs};
use readygate::domain::{Condition, ConditionStatus, ContainerPort, Pod};
use readygate::elbv2::Elbv2;
use readygate::metrics::Metrics;
use readygate::writer::{ConditionWrite, Done, Job, Outcome};
use support::Moto;
use tokio::sync::{mpsc, watch};

fn args(extra: &[&str]) -> ControllerArgs {
    let mut argv = vec!["readygate", "serve"];
    argv.extend_from_slice(extra);
    match Cli::parse_from(argv).command {
        Command::Serve(s) => s.controller,
        _ => unreachable!(),
    }
}

fn pod(uid: &str, ip: &str, ready_since: i64) -> Pod {
    Pod {
        uid: uid.into(),
        labels: [("app".to_string(), "web".to_string())].into(),
        created: Some(ready_since - 5),
        ips: vec![ip.parse().unwrap()],
        container_ports: vec![ContainerPort {
            name: "http".into(),
            port: 8080,
        }],
        gates: vec!["web-tgb".into()],
        containers_ready_since: Some(ready_since),
        ..Pod::default()
    }
}

struct Rig {
    cache: Arc<Cache>,
    metrics: Arc<Metrics>,
    jobs: mpsc::Receiver<Job>,
    done: mpsc::Sender<Done>,
    _leader: watch::Sender<bool>,
}

async fn start(moto: &Moto, arn: &str, pods: Vec<(&str, Pod)>, extra: &[&str]) -> Rig {
    start_at(&moto.url, arn, pods, extra).await
}

async fn start_at(url: &str, arn: &str, pods: Vec<(&str, Pod)>, extra: &[&str]) -> Rig {
    readygate::install_crypto_provider();
    let cache = support::shop(arn);
    {
        let mut ix = cache.write();
        ix.replace_pods(
            pods.into_iter()
                .map(|(n, p)| ("shop".to_string(), n.to_string(), p))
                .collect(),
        );
    }
    let metrics = Arc::new(Metrics::new());
    let elb = Elbv2::with_endpoint(
        url,
        "us-east-1",
        Arc::new(Budget::new(5.0, 10)),
        metrics.clone(),
    )
    .await;
    let (leader_tx, leader) = watch::channel(true);
    let (jobs_tx, jobs) = mpsc::channel(64);
    let (done, done_rx) = mpsc::channel(64);
    let args = args(extra);
    let (c, m) = (cache.clone(), metrics.clone());
    tokio::spawn(async move {
        readygate::controller::run_loop(
            c,
            elb,
            m,
            &args,
            leader,
            jobs_tx,
            done_rx,
            Default::default(),
        )
        .await
    });
    Rig {
        cache,
        metrics,
        jobs,
        done,
        _leader: leader_tx,
    }
}

impl Rig {
    /// The next condition write, applied to the cache as the API server and watch would.
    async fn next_write(&mut self) -> ConditionWrite {
        loop {
            let job = tokio::time::timeout(Duration::from_secs(20), self.jobs.recv())
                .await
                .expect("a write within 20 s")
                .unwrap();
            if let Job::Condition(w, _) = job {
                {
                    let mut ix = self.cache.write();
                    let mut p = ix
                        .pods()
                        .find(|(_, n, _)| *n == w.pod)
                        .map(|(_, _, p)| p.clone())
                        .unwrap();
                    p.set_condition(&w.binding, w.condition.clone());
                    ix.apply_pod(&w.namespace, &w.pod, p);
                }
                self.cache.notify();
                self.done
                    .send(Done {
                        write: w.clone(),
                        outcome: Outcome::Written,
                    })
                    .await
                    .unwrap();
                return w;
            }
        }
    }

    async fn no_more_writes(&mut self, within: Duration) {
        if let Ok(Some(Job::Condition(w, _))) = tokio::time::timeout(within, self.jobs.recv()).await
        {
            panic!("unexpected write: {w:?}");
        }
    }
}

fn now_s() -> i64 {
    jiff::Timestamp::now().as_second()
}

#[tokio::test]
async fn registered_target_turns_true_unregistered_stays_false_and_nothing_is_rewritten() {
    let moto = Moto::start();
    let arn = moto.target_group("web", (30, 5), &["127.0.1.1"]).await;
    // Containers ready long ago: the first poll is due at once (moto: 30 s × 5).
    let ready = now_s() - 600;
    let mut rig = start(
        &moto,
        &arn,
        vec![
            ("web-a", pod("a", "127.0.1.1", ready)),
            ("web-b", pod("b", "127.0.1.2", ready)),
        ],
        &[],
    )
    .await;

    let mut writes = Vec::new();
    for _ in 0..3 {
        writes.push(rig.next_write().await);
    }
    let by = |pod: &str, status| {
        writes
            .iter()
            .find(|w| w.pod == pod && w.condition.status == status)
            .cloned()
    };
    // Both got a prompt initial False before any answer; then a got True from ELB's answer.
    let initial = by("web-b", ConditionStatus::False).expect("initial False for b");
    assert_eq!(initial.condition.reason, "Elb.RegistrationInProgress");
    assert_eq!(
        initial.condition.message,
        "Target registration is in progress"
    );
    let healthy = by("web-a", ConditionStatus::True).expect("a turned True");
    // As the AWS Load Balancer Controller writes it: no reason, no message.
    assert_eq!(
        (
            healthy.condition.reason.as_str(),
            healthy.condition.message.as_str()
        ),
        ("", "")
    );
    assert_eq!(healthy.uid, "a");
    // No write when nothing changes: b stays "registration in progress", already written.
    rig.no_more_writes(Duration::from_secs(5)).await;
    let text = rig.metrics.encode();
    assert!(text.contains("readygate_gated_pods_pending 1"), "{text}");
    // One group, polled every 2 s while b waits: no per-pod or per-binding calls.
    let calls: u64 = text
        .lines()
        .filter(|l| l.starts_with("readygate_elbv2_calls_total{operation=\"DescribeTargetHealth\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(
        (2..=5).contains(&calls),
        "{calls} DescribeTargetHealth calls in ~5 s\n{text}"
    );
}

#[tokio::test]
async fn deleted_binding_releases_its_gates_and_idle_makes_no_calls() {
    let moto = Moto::start();
    let arn = moto.target_group("web2", (30, 5), &[]).await;
    let mut p = pod("a", "127.0.1.1", now_s());
    p.set_condition(
        "web-tgb",
        Condition {
            status: ConditionStatus::False,
            reason: "Elb.RegistrationInProgress".into(),
            message: "Target registration is in progress".into(),
            last_transition_time: Some("2026-11-21T10:00:00Z".into()),
        },
    );
    let mut rig = start(&moto, &arn, vec![("web-a", p)], &[]).await;
    rig.cache.write().delete_binding("shop", "web-tgb");
    rig.cache.notify();
    let w = rig.next_write().await;
    assert_eq!(w.condition.status, ConditionStatus::True);
    assert_eq!(w.condition.reason, "Readygate.BindingNotFound");
    // The status changed, so the transition time moved.
    assert_ne!(
        w.condition.last_transition_time.as_deref(),
        Some("2026-11-21T10:00:00Z")
    );
    rig.no_more_writes(Duration::from_secs(3)).await;
    assert_eq!(
        calls(&rig, "DescribeTargetHealth"),
        0,
        "an idle controller called ELBv2"
    );
}

#[tokio::test]
async fn first_poll_waits_until_the_target_can_be_healthy() {
    let moto = Moto::start();
    let arn = moto.target_group("web3", (30, 5), &["127.0.1.1"]).await;
    // Ready now; moto's group needs 30 s × 5 before a target can be healthy.
    let mut rig = start(
        &moto,
        &arn,
        vec![("web-a", pod("a", "127.0.1.1", now_s()))],
        &[],
    )
    .await;
    let w = rig.next_write().await;
    assert_eq!(w.condition.reason, "Elb.RegistrationInProgress");
    rig.no_more_writes(Duration::from_secs(3)).await;
    let text = rig.metrics.encode();
    assert!(
        text.contains(r#"operation="DescribeTargetGroups",outcome="ok"} 1"#),
        "{text}"
    );
    assert_eq!(
        calls(&rig, "DescribeTargetHealth"),
        0,
        "polled before the target could be healthy\n{text}"
    );
}

#[tokio::test]
async fn pods_lacking_their_gate_get_a_warning_event_and_a_metric() {
    let moto = Moto::start();
    let arn = moto.target_group("web4", (30, 5), &[]).await;
    // Created before its binding existed: selected by the Service, but no gate.
    let mut old = pod("a", "127.0.1.1", now_s());
    old.gates.clear();
    let mut rig = start(&moto, &arn, vec![("web-old", old)], &[]).await;
    let event = loop {
        let job = tokio::time::timeout(Duration::from_secs(10), rig.jobs.recv())
            .await
            .expect("an event within 10 s")
            .unwrap();
        if let Job::Event(e) = job {
            break e;
        }
    };
    assert!(event.warning);
    assert_eq!(event.reason, "ReadinessGateMissing");
    assert_eq!(
        (event.namespace.as_str(), event.pod.as_str()),
        ("shop", "web-old")
    );
    assert!(
        event.note.contains("target-health.elbv2.k8s.aws/web-tgb"),
        "{}",
        event.note
    );
    assert!(
        rig.metrics
            .encode()
            .contains("readygate_pods_missing_gates 1")
    );
    // Once per pod, and nothing to write for a pod without gates.
    rig.no_more_writes(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn the_failsafe_releases_a_gate_even_when_nothing_else_happens() {
    let moto = Moto::start();
    let arn = moto.target_group("web5", (30, 5), &[]).await;
    // Containers not ready: no poll is ever due, so only the failsafe's own wake-up can act.
    let mut p = pod("a", "127.0.1.1", now_s());
    p.containers_ready_since = None;
    p.created = Some(now_s());
    let mut rig = start(
        &moto,
        &arn,
        vec![("web-a", p)],
        &["--failsafe-timeout", "3s"],
    )
    .await;
    let first = rig.next_write().await;
    assert_eq!(first.condition.reason, "Elb.RegistrationInProgress");
    let waited = std::time::Instant::now();
    let released = rig.next_write().await;
    // Due 3 s after creation: on time, not at some later unrelated wake-up.
    assert!(
        waited.elapsed() < Duration::from_secs(5),
        "released after {:?}",
        waited.elapsed()
    );
    assert_eq!(released.condition.status, ConditionStatus::True);
    assert_eq!(released.condition.reason, "Readygate.FailsafeTimeout");
    assert_eq!(calls(&rig, "DescribeTargetHealth"), 0);
}

#[tokio::test]
async fn a_true_gate_turns_false_again_when_its_containers_restart() {
    let moto = Moto::start();
    // The restarted container's target is not back in the group yet.
    let arn = moto.target_group("web6", (30, 5), &[]).await;
    let mut p = pod("a", "127.0.1.1", now_s() - 600);
    let was_true = jiff::Timestamp::from_second(now_s() - 500)
        .unwrap()
        .to_string();
    p.set_condition(
        "web-tgb",
        Condition {
            status: ConditionStatus::True,
            reason: "Elb.Healthy".into(),
            message: "Target is healthy".into(),
            last_transition_time: Some(was_true.clone()),
        },
    );
    // The container restarted and was ready again 2 s ago: the gate was True before that.
    p.containers_ready_since = Some(now_s() - 2);
    let mut rig = start(&moto, &arn, vec![("web-a", p)], &[]).await;
    let w = rig.next_write().await;
    assert_eq!(w.condition.status, ConditionStatus::False);
    assert_eq!(w.condition.reason, "Elb.RegistrationInProgress");
    assert_ne!(w.condition.last_transition_time, Some(was_true));
    // Now an ordinary pending gate: no rewrite, and no poll before the target can be healthy.
    rig.no_more_writes(Duration::from_secs(3)).await;
    assert_eq!(calls(&rig, "DescribeTargetHealth"), 0);
}

fn calls(rig: &Rig, operation: &str) -> u64 {
    rig.metrics
        .encode()
        .lines()
        .filter(|l| {
            l.starts_with(&format!(
                "readygate_elbv2_calls_total{{operation=\"{operation}\""
            ))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[tokio::test]
async fn a_target_that_stays_unregistered_is_polled_less_and_less() {
    let moto = Moto::start();
    let arn = moto.target_group("web7", (5, 2), &[]).await;
    let ready = now_s() - 600;
    let mut rig = start(
        &moto,
        &arn,
        vec![("web-a", pod("a", "127.0.1.1", ready))],
        &[],
    )
    .await;
    let w = rig.next_write().await;
    assert_eq!(w.condition.reason, "Elb.RegistrationInProgress");
    // The same answer again and again: polls after 2, 4, 8 s, not every 2 s (7 or 8 calls).
    tokio::time::sleep(Duration::from_secs(14)).await;
    let idle = calls(&rig, "DescribeTargetHealth");
    assert!((2..=5).contains(&idle), "{idle} polls in 14 s");
    // A new pending target: back to the short interval at once.
    rig.cache
        .write()
        .apply_pod("shop", "web-b", pod("b", "127.0.1.2", ready));
    rig.cache.notify();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        calls(&rig, "DescribeTargetHealth") > idle,
        "the new target waited for the backed-off poll"
    );
}

#[tokio::test]
async fn changed_health_check_settings_apply_without_a_restart() {
    let moto = Moto::start();
    let arn = moto.target_group("web8", (30, 5), &["127.0.1.1"]).await;
    // Ready now: with 30 s × 5 the first poll would wait 150 s.
    let mut rig = start(
        &moto,
        &arn,
        vec![("web-a", pod("a", "127.0.1.1", now_s()))],
        &["--settings-ttl", "1s"],
    )
    .await;
    let w = rig.next_write().await;
    assert_eq!(w.condition.reason, "Elb.RegistrationInProgress");
    // The group is changed to 5 s × 2: healthy possible 10 s after ready.
    moto.admin()
        .await
        .modify_target_group()
        .target_group_arn(&arn)
        .health_check_interval_seconds(5)
        .healthy_threshold_count(2)
        .send()
        .await
        .unwrap();
    let healthy = rig.next_write().await;
    assert_eq!(healthy.condition.status, ConditionStatus::True);
    assert!(calls(&rig, "DescribeTargetGroups") >= 2);
}

/// A fake ELBv2 endpoint on 127.0.0.1 that reports 127.0.1.1:8080 `unused` / `Target.NotInUse`
/// (moto never does) in a group with or without a load balancer; returns its URL.
async fn not_in_use_elb(attached: bool) -> String {
    use axum::routing::post;
    const XMLNS: &str = "http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/";
    let handle = move |body: String| async move {
        let arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web/1";
        let lbs = if attached {
            "<LoadBalancerArns><member>arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/net/nlb/1</member></LoadBalancerArns>"
        } else {
            "<LoadBalancerArns/>"
        };
        let xml = if body.contains("Action=DescribeTargetGroups") {
            format!(
                "<DescribeTargetGroupsResponse xmlns=\"{XMLNS}\"><DescribeTargetGroupsResult><TargetGroups><member>\
                 <TargetGroupArn>{arn}</TargetGroupArn><HealthCheckIntervalSeconds>5</HealthCheckIntervalSeconds>\
                 <HealthyThresholdCount>2</HealthyThresholdCount><TargetType>ip</TargetType>{lbs}</member></TargetGroups>\
                 </DescribeTargetGroupsResult><ResponseMetadata><RequestId>1</RequestId></ResponseMetadata></DescribeTargetGroupsResponse>"
            )
        } else {
            format!(
                "<DescribeTargetHealthResponse xmlns=\"{XMLNS}\"><DescribeTargetHealthResult><TargetHealthDescriptions><member>\
                 <Target><Id>127.0.1.1</Id><Port>8080</Port><AvailabilityZone>us-east-1c</AvailabilityZone></Target>\
                 <TargetHealth><State>unused</State><Reason>Target.NotInUse</Reason>\
                 <Description>Target is in an Availability Zone that is not enabled for the load balancer</Description></TargetHealth>\
                 </member></TargetHealthDescriptions></DescribeTargetHealthResult><ResponseMetadata><RequestId>2</RequestId></ResponseMetadata>\
                 </DescribeTargetHealthResponse>"
            )
        };
        ([("content-type", "text/xml")], xml)
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().route("/", post(handle));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn not_in_use_releases_only_a_group_attached_to_no_load_balancer() {
    let arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web/1";
    for attached in [true, false] {
        let url = not_in_use_elb(attached).await;
        let mut rig = start_at(
            &url,
            arn,
            vec![("web-a", pod("a", "127.0.1.1", now_s() - 600))],
            &[],
        )
        .await;
        // The jobs up to the condition ELB's answer implies (after the prompt initial False).
        let mut warnings = Vec::new();
        let written = loop {
            let job = tokio::time::timeout(Duration::from_secs(20), rig.jobs.recv())
                .await
                .expect("a job within 20 s")
                .unwrap();
            match job {
                Job::Event(e) => warnings.push(e),
                Job::Condition(w, _) if w.condition.reason == "Target.NotInUse" => break w,
                Job::Condition(..) => {}
            }
        };
        if attached {
            // The target's AZ is not enabled: no traffic reaches it, so the gate stays False.
            assert_eq!(written.condition.status, ConditionStatus::False);
            let e = warnings
                .iter()
                .find(|e| e.reason == "TargetNotInUse")
                .expect("a TargetNotInUse event");
            assert!(e.warning && e.pod == "web-a", "{e:?}");
            assert!(e.note.contains("Availability Zone"), "{}", e.note);
        } else {
            assert_eq!(written.condition.status, ConditionStatus::True);
            assert!(warnings.iter().all(|e| e.reason != "TargetNotInUse"));
        }
    }
}
