//! The rig's ELBv2: target health from real HTTP health checks, draining, the Query API wire
//! format (compared with moto's answers to the same calls), throttling, and the listener's
//! routing.

mod common;

use axum::http::StatusCode;
use rig::elb::client::{QueryClient, targets_params};
use rig::elb::listener::Listener;
use rig::elb::query::QueryServer;
use rig::elb::xml::Answer;
use rig::elb::{Elb, ElbConfig, GroupSpec};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A backend on its own loopback address whose health check path can be made to fail.
struct Backend {
    addr: SocketAddr,
    healthy: Arc<AtomicBool>,
    _task: tokio::task::JoinHandle<()>,
}

async fn backend(ip: [u8; 4], name: &'static str) -> Backend {
    let healthy = Arc::new(AtomicBool::new(true));
    let h = healthy.clone();
    let app = axum::Router::new()
        .route(
            "/health",
            axum::routing::get(move || async move {
                if h.load(Ordering::SeqCst) {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            }),
        )
        .fallback(move || async move { name });
    let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::from(ip), 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Backend {
        addr,
        healthy,
        _task: task,
    }
}

fn spec(name: &str, port: u16) -> GroupSpec {
    let mut s = GroupSpec::new(name, port);
    s.interval = Duration::from_secs(1);
    s.healthy_threshold = 2;
    s.unhealthy_threshold = 2;
    s.health_check_path = "/health".into();
    s.deregistration_delay = Duration::from_secs(2);
    s
}

async fn health(q: &QueryClient, arn: &str, targets: &[(&str, u16)]) -> Answer {
    let mut params: Vec<(&str, String)> = vec![("TargetGroupArn", arn.to_string())];
    let t = targets_params(targets);
    params.extend(t.iter().map(|(k, v)| (k.as_str(), v.clone())));
    q.answer("DescribeTargetHealth", &params).await.unwrap()
}

fn states(a: &Answer) -> Vec<(String, Option<String>)> {
    match a {
        Answer::TargetHealth(t) => t
            .iter()
            .map(|(_, _, s, r)| (s.clone(), r.clone()))
            .collect(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn health_checks_drive_initial_healthy_unhealthy_and_draining() {
    common::crypto();
    let b = backend([127, 0, 250, 1], "b").await;
    let elb = Elb::new(ElbConfig::default());
    let server = QueryServer::start(elb.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let q = QueryClient::new(server.addr);
    let arn = elb.create_target_group(spec("web", b.addr.port())).unwrap();
    let _lb = Listener::start(elb.clone(), "web", &arn, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let ip = b.addr.ip().to_string();
    let t = [(ip.as_str(), b.addr.port())];

    let registered = Instant::now();
    let tp = targets_params(&t);
    let params: Vec<(&str, String)> = std::iter::once(("TargetGroupArn", arn.clone()))
        .chain(tp.iter().map(|(k, v)| (k.as_str(), v.clone())))
        .collect();
    assert_eq!(
        q.answer("RegisterTargets", &params).await.unwrap(),
        Answer::Done("RegisterTargets".into())
    );
    assert_eq!(
        states(&health(&q, &arn, &[]).await),
        [("initial".into(), Some("Elb.RegistrationInProgress".into()))]
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        states(&health(&q, &arn, &[]).await),
        [("initial".into(), Some("Elb.InitialHealthChecking".into()))]
    );
    while states(&health(&q, &arn, &[]).await)[0].0 != "healthy" {
        assert!(registered.elapsed() < Duration::from_secs(4));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = registered.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "healthy after interval × healthy threshold, not before: {took:?}"
    );

    b.healthy.store(false, Ordering::SeqCst);
    let failing = Instant::now();
    while states(&health(&q, &arn, &[]).await)[0].0 != "unhealthy" {
        assert!(failing.elapsed() < Duration::from_secs(4));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        states(&health(&q, &arn, &[]).await),
        [(
            "unhealthy".into(),
            Some("Target.ResponseCodeMismatch".into())
        )]
    );

    // Explicitly asked, not registered: unused / Target.NotRegistered.
    assert_eq!(
        states(&health(&q, &arn, &[("127.0.250.99", 80)]).await),
        [("unused".into(), Some("Target.NotRegistered".into()))]
    );

    // Deregistered: draining for the deregistration delay, then gone.
    q.answer("DeregisterTargets", &params).await.unwrap();
    assert_eq!(
        states(&health(&q, &arn, &[]).await),
        [(
            "draining".into(),
            Some("Target.DeregistrationInProgress".into())
        )]
    );
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_eq!(states(&health(&q, &arn, &[]).await), []);

    // Wrong ARN: TargetGroupNotFound, HTTP 400, Type Sender.
    let wrong = format!("{arn}0");
    assert_eq!(
        health(&q, &wrong, &[]).await,
        Answer::Error(400, "Sender".into(), "TargetGroupNotFound".into())
    );
    match q
        .answer(
            "DescribeTargetGroups",
            &[("TargetGroupArns.member.1", arn.clone())],
        )
        .await
        .unwrap()
    {
        Answer::TargetGroups(g) => {
            assert_eq!(g, [("web".into(), b.addr.port(), "ip".into(), 1, 2)])
        }
        other => panic!("{other:?}"),
    }
    let calls = elb.calls();
    assert_eq!(calls["RegisterTargets"], 1);
    assert!(calls["DescribeTargetHealth"] >= 6);
}

#[tokio::test]
async fn a_group_without_a_load_balancer_reports_unused_and_describes_are_throttled() {
    common::crypto();
    let b = backend([127, 0, 250, 2], "b").await;
    let elb = Elb::new(ElbConfig {
        describe_budget: Some((3.0, 0.5)),
        ..Default::default()
    });
    let server = QueryServer::start(elb.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let q = QueryClient::new(server.addr);
    let arn = elb
        .create_target_group(spec("lonely", b.addr.port()))
        .unwrap();
    elb.register(&arn, &[(b.addr.ip().to_string(), None)])
        .unwrap();
    assert_eq!(
        states(&health(&q, &arn, &[]).await),
        [("unused".into(), Some("Target.NotInUse".into()))]
    );
    assert!(matches!(
        health(&q, &arn, &[]).await,
        Answer::TargetHealth(_)
    ));
    assert!(matches!(
        health(&q, &arn, &[]).await,
        Answer::TargetHealth(_)
    ));
    assert_eq!(
        health(&q, &arn, &[]).await,
        Answer::Error(400, "Sender".into(), "Throttling".into())
    );
}

async fn get(client: &str) -> (u16, String) {
    let addr: SocketAddr = client.trim_start_matches("http://").parse().unwrap();
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::get("/")
            .header("host", "lb")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        use http_body_util::BodyExt;
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_listener_routes_only_to_healthy_targets_fails_open_and_drains() {
    common::crypto();
    let a = backend([127, 0, 250, 3], "a").await;
    let b = backend([127, 0, 250, 4], "b").await;
    let elb = Elb::new(ElbConfig {
        deregistration_lag: Duration::from_millis(800),
        ..Default::default()
    });
    let mut s = spec("route", a.addr.port());
    s.interval = Duration::from_millis(1000);
    let arn = elb.create_target_group(s).unwrap();
    let lb = Listener::start(elb.clone(), "route", &arn, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(get(&lb.url()).await.0, 503, "nothing registered");

    let target = |b: &Backend| (b.addr.ip().to_string(), Some(b.addr.port()));
    elb.register(&arn, &[target(&a)]).unwrap();
    assert_eq!(
        get(&lb.url()).await.0,
        503,
        "an initial target gets no traffic"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(&lb.url()).await.0 != 200 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // b registers: still initial, so every request goes to a.
    elb.register(&arn, &[target(&b)]).unwrap();
    for _ in 0..10 {
        assert_eq!(get(&lb.url()).await, (200, "a".into()));
    }
    // Once b is healthy too, round-robin over both.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        seen.insert(get(&lb.url()).await.1);
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["a", "b"]);

    // a deregistered: routed to for the lag, then never.
    elb.deregister(&arn, &[target(&a)]).unwrap();
    let mut seen_a = false;
    for _ in 0..4 {
        seen_a |= get(&lb.url()).await.1 == "a";
    }
    assert!(
        seen_a,
        "a deregistered target still gets requests for a moment"
    );
    tokio::time::sleep(Duration::from_millis(900)).await;
    for _ in 0..6 {
        assert_eq!(get(&lb.url()).await, (200, "b".into()));
    }

    // Every registered target unhealthy: fail open.
    b.healthy.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(5);
    while elb.describe_target_health(&arn, &[target(&b)]).unwrap()[0].state
        != rig::elb::TargetState::Unhealthy
    {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        get(&lb.url()).await,
        (200, "b".into()),
        "fails open to unhealthy targets"
    );
}

/// moto_server, started from $MOTO_SERVER or the repository's .venv (scripts/test makes it);
/// stopped by PID on drop.
struct Moto {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto() -> Moto {
    let candidates = [
        std::env::var("MOTO_SERVER").ok(),
        Some(concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/moto_server").to_string()),
    ];
    let bin = candidates
        .into_iter()
        .flatten()
        .find(|p| std::path::Path::new(p).exists())
        .expect("moto_server not found: set MOTO_SERVER or run ../scripts/test, which installs it into ../.venv");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "moto_server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Moto { child, addr }
}

fn first_arn(body: &str) -> String {
    rig::elb::xml::parse(body)
        .unwrap()
        .members("CreateTargetGroupResult/TargetGroups")[0]
        .text_at("TargetGroupArn")
        .unwrap()
        .to_string()
}

/// The same ELBv2 call sequence against moto and against the rig; the parsed answers must
/// agree. Known divergences, from moto's side: moto reports registered targets healthy at
/// once (no `initial`; the rig waits for real health checks, so the sequence waits until it
/// is healthy), removes deregistered targets at once (no `draining`), and calls an explicitly
/// asked unregistered target `unavailable` where AWS documents `unused` — both carry the
/// reason `Target.NotRegistered`, which is what readygate acts on.
#[tokio::test]
async fn the_same_call_sequence_gives_the_same_answers_from_moto_and_the_rig() {
    common::crypto();
    let pod = backend([127, 0, 250, 5], "pod").await;
    let moto = moto();
    let elb = Elb::new(ElbConfig::default());
    let rig_server = QueryServer::start(elb.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let moto_q = QueryClient::new(moto.addr);
    let rig_q = QueryClient::new(rig_server.addr);

    // Set-up differs only in moto needing a VPC.
    let (_, vpc) = moto_q
        .call_service(
            "ec2",
            "2016-11-15",
            "CreateVpc",
            &[("CidrBlock", "10.0.0.0/16".into())],
        )
        .await
        .unwrap();
    let vpc_id = rig::elb::xml::parse(&vpc)
        .unwrap()
        .text_at("vpc/vpcId")
        .unwrap()
        .to_string();
    let create = |vpc: String| {
        vec![
            ("Name", "web".to_string()),
            ("Protocol", "HTTP".into()),
            ("Port", pod.addr.port().to_string()),
            ("VpcId", vpc),
            ("TargetType", "ip".into()),
            ("HealthCheckPath", "/health".into()),
            ("HealthCheckIntervalSeconds", "5".into()),
            ("HealthyThresholdCount", "2".into()),
        ]
    };
    let (s1, moto_created) = moto_q
        .call("CreateTargetGroup", &create(vpc_id))
        .await
        .unwrap();
    let (s2, rig_created) = rig_q
        .call("CreateTargetGroup", &create("vpc-rig".into()))
        .await
        .unwrap();
    assert_eq!(
        rig::elb::xml::parse_answer(s1, &moto_created).unwrap(),
        rig::elb::xml::parse_answer(s2, &rig_created).unwrap()
    );
    let (moto_arn, rig_arn) = (first_arn(&moto_created), first_arn(&rig_created));
    let _lb = Listener::start(elb.clone(), "web", &rig_arn, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    elb.attach(
        &rig_arn,
        "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/web/0",
    )
    .unwrap();

    let ip = pod.addr.ip().to_string();
    let target = targets_params(&[(ip.as_str(), pod.addr.port())]);
    let with_arn = |arn: &str, extra: &[(String, String)]| {
        let mut p: Vec<(String, String)> = vec![("TargetGroupArn".into(), arn.to_string())];
        p.extend(extra.iter().cloned());
        p
    };
    let both = |action: &'static str,
                moto_params: Vec<(String, String)>,
                rig_params: Vec<(String, String)>| {
        let (mq, rq) = (moto_q.clone(), rig_q.clone());
        async move {
            let m: Vec<(&str, String)> = moto_params
                .iter()
                .map(|(k, v)| (k.as_str(), v.clone()))
                .collect();
            let r: Vec<(&str, String)> = rig_params
                .iter()
                .map(|(k, v)| (k.as_str(), v.clone()))
                .collect();
            (
                mq.answer(action, &m).await.unwrap(),
                rq.answer(action, &r).await.unwrap(),
            )
        }
    };

    // Registered → healthy (the rig after its real checks pass: 2 × 5 s).
    let (m, r) = both(
        "RegisterTargets",
        with_arn(&moto_arn, &target),
        with_arn(&rig_arn, &target),
    )
    .await;
    assert_eq!(m, r);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (m, r) = both(
            "DescribeTargetHealth",
            with_arn(&moto_arn, &[]),
            with_arn(&rig_arn, &[]),
        )
        .await;
        if m == r {
            assert_eq!(
                r,
                Answer::TargetHealth(vec![(ip.clone(), pod.addr.port(), "healthy".into(), None)])
            );
            break;
        }
        assert_eq!(
            states(&r)[0].0,
            "initial",
            "before its checks pass, the rig's target is initial"
        );
        assert!(Instant::now() < deadline, "rig target healthy in time");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Asked about an unregistered target: the same reason.
    let other = targets_params(&[("10.9.9.9", 8080)]);
    let (m, r) = both(
        "DescribeTargetHealth",
        with_arn(&moto_arn, &other),
        with_arn(&rig_arn, &other),
    )
    .await;
    let reason = |a: &Answer| states(a)[0].1.clone();
    assert_eq!(reason(&m), Some("Target.NotRegistered".into()));
    assert_eq!(reason(&m), reason(&r));
    assert_eq!(states(&m)[0].0, "unavailable", "moto's word");
    assert_eq!(states(&r)[0].0, "unused", "AWS's documented word");

    // Wrong ARN: the same error, status and type.
    let (m, r) = both(
        "DescribeTargetHealth",
        with_arn(&format!("{moto_arn}0"), &[]),
        with_arn(&format!("{rig_arn}0"), &[]),
    )
    .await;
    assert_eq!(
        m,
        Answer::Error(400, "Sender".into(), "TargetGroupNotFound".into())
    );
    assert_eq!(m, r);
    let (m, r) = both(
        "DescribeTargetGroups",
        vec![("TargetGroupArns.member.1".into(), format!("{moto_arn}0"))],
        vec![("TargetGroupArns.member.1".into(), format!("{rig_arn}0"))],
    )
    .await;
    assert_eq!(m, r);

    // DescribeTargetGroups: the same settings readygate reads.
    let (m, r) = both(
        "DescribeTargetGroups",
        vec![("TargetGroupArns.member.1".into(), moto_arn.clone())],
        vec![("TargetGroupArns.member.1".into(), rig_arn.clone())],
    )
    .await;
    assert_eq!(m, r);
    assert_eq!(
        r,
        Answer::TargetGroups(vec![("web".into(), pod.addr.port(), "ip".into(), 5, 2)])
    );

    // Deregistered: both answer the call the same way.
    let (m, r) = both(
        "DeregisterTargets",
        with_arn(&moto_arn, &target),
        with_arn(&rig_arn, &target),
    )
    .await;
    assert_eq!(m, r);
}

#[tokio::test]
async fn a_request_in_flight_to_a_draining_target_is_cut_when_its_deregistration_delay_ends() {
    common::crypto();
    // A target that answers its health checks at once and `/` only after 5 s.
    let app = axum::Router::new()
        .route("/health", axum::routing::get(|| async { StatusCode::OK }))
        .fallback(|| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "slow"
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _server = tokio::spawn(async move { axum::serve(listener, app).await });
    let elb = Elb::new(ElbConfig::default());
    let mut s = spec("cut", addr.port());
    s.interval = Duration::from_millis(200);
    s.deregistration_delay = Duration::from_millis(500);
    let arn = elb.create_target_group(s).unwrap();
    let lb = Listener::start(elb.clone(), "cut", &arn, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let target = [(addr.ip().to_string(), Some(addr.port()))];
    elb.register(&arn, &target).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while elb.describe_target_health(&arn, &[]).unwrap()[0].state != rig::elb::TargetState::Healthy
    {
        assert!(Instant::now() < deadline, "target never healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = lb.url();
    let in_flight = tokio::spawn(async move { get(&url).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let deregistered = Instant::now();
    elb.deregister(&arn, &target).unwrap();
    let (status, _) = in_flight.await.unwrap();
    let after = deregistered.elapsed();
    assert_eq!(status, 502, "the load balancer closed the connection");
    assert!(
        after >= Duration::from_millis(450) && after < Duration::from_secs(3),
        "cut when the 500 ms deregistration delay ended, not before and not at the answer: {after:?}"
    );
}

#[tokio::test]
async fn a_black_hole_swallows_exactly_the_calls_it_was_given() {
    common::crypto();
    let elb = Elb::new(ElbConfig::default());
    let server = QueryServer::start(elb.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let q = QueryClient::new(server.addr);
    let arn = elb.create_target_group(spec("hole", 8080)).unwrap();
    elb.black_hole("rig", "DescribeTargetHealth", 1);
    elb.black_hole("someone-else", "DescribeTargetHealth", 1);
    assert!(
        tokio::time::timeout(Duration::from_secs(1), health(&q, &arn, &[]))
            .await
            .is_err(),
        "the first call gets no answer"
    );
    let answer = tokio::time::timeout(Duration::from_secs(2), health(&q, &arn, &[]))
        .await
        .expect("the next call is answered");
    assert!(matches!(answer, Answer::TargetHealth(_)), "{answer:?}");
    assert_eq!(elb.calls()["DescribeTargetHealth"], 2);
}

/// The element paths under `e` (`item/vpcId`, `item/tagSet/item/key`, …), for comparing
/// shapes.
fn paths(e: &rig::elb::xml::Element, prefix: &str, out: &mut std::collections::BTreeSet<String>) {
    for c in &e.children {
        let p = format!("{prefix}{}", c.name);
        out.insert(p.clone());
        paths(c, &format!("{p}/"), out);
    }
}

/// The rig's EC2 answers (what the real AWS Load Balancer Controller calls: DescribeVpcs,
/// DescribeSecurityGroups with the cluster tag and VPC filters) in the shapes EC2 gives, checked
/// against moto's EC2: every element the rig sends, moto sends too, and an unknown VPC is the
/// same error code.
#[tokio::test]
async fn the_rigs_ec2_answers_have_ec2s_shapes_as_moto_gives_them() {
    common::crypto();
    let moto = moto();
    let elb = Elb::new(ElbConfig::default());
    let server = QueryServer::start(elb.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (moto_q, rig_q) = (QueryClient::new(moto.addr), QueryClient::new(server.addr));
    let ec2 = |q: &QueryClient, action: &'static str, params: Vec<(&'static str, String)>| {
        let q = q.clone();
        async move {
            let (status, body) = q
                .call_service("ec2", rig::elb::ec2::VERSION, action, &params)
                .await
                .unwrap();
            (status, rig::elb::xml::parse(&body).unwrap())
        }
    };
    let (_, vpc) = ec2(
        &moto_q,
        "CreateVpc",
        vec![
            ("CidrBlock", rig::netns::POD_CIDR.to_string()),
            ("TagSpecification.1.ResourceType", "vpc".into()),
            ("TagSpecification.1.Tag.1.Key", "Name".into()),
            ("TagSpecification.1.Tag.1.Value", "rig".into()),
        ],
    )
    .await;
    let moto_vpc = vpc.text_at("vpc/vpcId").unwrap().to_string();
    let tag = format!("kubernetes.io/cluster/{}", rig::elb::ec2::CLUSTER_NAME);
    let (_, sg) = ec2(
        &moto_q,
        "CreateSecurityGroup",
        vec![
            ("GroupName", "cluster".into()),
            ("GroupDescription", "cluster".into()),
            ("VpcId", moto_vpc.clone()),
            ("TagSpecification.1.ResourceType", "security-group".into()),
            ("TagSpecification.1.Tag.1.Key", tag.clone()),
            ("TagSpecification.1.Tag.1.Value", "owned".into()),
        ],
    )
    .await;
    assert!(sg.text_at("groupId").is_some(), "{sg:?}");
    let sg_filters = |vpc: &str| {
        vec![
            ("Filter.1.Name", format!("tag:{tag}")),
            ("Filter.1.Value.1", "owned".into()),
            ("Filter.1.Value.2", "shared".into()),
            ("Filter.2.Name", "vpc-id".into()),
            ("Filter.2.Value.1", vpc.to_string()),
        ]
    };
    for (action, set, moto_params, rig_params) in [
        (
            "DescribeVpcs",
            "vpcSet",
            vec![("VpcId.1", moto_vpc.clone())],
            vec![("VpcId.1", rig::elb::VPC_ID.to_string())],
        ),
        (
            "DescribeSecurityGroups",
            "securityGroupInfo",
            sg_filters(&moto_vpc),
            sg_filters(rig::elb::VPC_ID),
        ),
    ] {
        let (s1, m) = ec2(&moto_q, action, moto_params).await;
        let (s2, r) = ec2(&rig_q, action, rig_params).await;
        assert_eq!((s1, s2), (200, 200), "{action}");
        let (m, r) = (m.child(set).unwrap(), r.child(set).unwrap());
        assert_eq!(m.children.len(), 1, "{action}: moto's answer {m:?}");
        assert_eq!(r.children.len(), 1, "{action}: the rig's answer {r:?}");
        let (mut mp, mut rp) = (Default::default(), Default::default());
        paths(m, "", &mut mp);
        paths(r, "", &mut rp);
        let extra: Vec<_> = rp.difference(&mp).collect();
        assert!(
            extra.is_empty(),
            "{action}: elements moto does not send: {extra:?}"
        );
    }
    let (s1, m) = ec2(
        &moto_q,
        "DescribeVpcs",
        vec![("VpcId.1", "vpc-00000000".into())],
    )
    .await;
    let (s2, r) = ec2(
        &rig_q,
        "DescribeVpcs",
        vec![("VpcId.1", "vpc-00000000".into())],
    )
    .await;
    assert_eq!((s1, s2), (400, 400));
    assert_eq!(
        m.text_at("Errors/Error/Code"),
        r.text_at("Errors/Error/Code"),
        "{m:?} {r:?}"
    );
    let calls = elb.calls_by_caller();
    assert_eq!(calls[&("rig".to_string(), "DescribeVpcs".to_string())], 2);
}
