//! A hung ELBv2 call against a fake endpoint on 127.0.0.1 that accepts the connection and never
//! answers: the call ends with a timeout within its bound, is counted, and the controller polls
//! the group again afterwards.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use clap::Parser;
use readygate::budget::Budget;
use readygate::cli::{Cli, Command};
use readygate::domain::{ConditionStatus, ContainerPort, Pod};
use readygate::elbv2::{ElbError, Elbv2};
use readygate::metrics::Metrics;
use readygate::writer::{Done, Job, Outcome};
use tokio::sync::{mpsc, watch};

const XMLNS: &str = "http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/";
const ARN: &str = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web/1";

/// DescribeTargetHealth calls seen, and how many of the first ones are never answered.
struct Fake {
    health_calls: AtomicUsize,
    hang_first: usize,
}

fn xml(body: String) -> axum::response::Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/xml")], body).into_response()
}

async fn handle(State(fake): State<Arc<Fake>>, body: String) -> axum::response::Response {
    if body.contains("Action=DescribeTargetGroups") {
        return xml(format!(
            "<DescribeTargetGroupsResponse xmlns=\"{XMLNS}\"><DescribeTargetGroupsResult><TargetGroups><member>\
             <TargetGroupArn>{ARN}</TargetGroupArn><TargetGroupName>web</TargetGroupName><Protocol>HTTP</Protocol>\
             <Port>8080</Port><HealthCheckIntervalSeconds>1</HealthCheckIntervalSeconds>\
             <HealthyThresholdCount>1</HealthyThresholdCount><TargetType>ip</TargetType></member></TargetGroups>\
             </DescribeTargetGroupsResult><ResponseMetadata><RequestId>1</RequestId></ResponseMetadata></DescribeTargetGroupsResponse>"
        ));
    }
    let n = fake.health_calls.fetch_add(1, Ordering::SeqCst) + 1;
    if n <= fake.hang_first {
        // The black hole: the request was read, the answer never comes.
        std::future::pending::<()>().await;
    }
    xml(format!(
        "<DescribeTargetHealthResponse xmlns=\"{XMLNS}\"><DescribeTargetHealthResult><TargetHealthDescriptions><member>\
         <Target><Id>127.0.1.1</Id><Port>8080</Port></Target><HealthCheckPort>8080</HealthCheckPort>\
         <TargetHealth><State>healthy</State></TargetHealth></member></TargetHealthDescriptions>\
         </DescribeTargetHealthResult><ResponseMetadata><RequestId>2</RequestId></ResponseMetadata></DescribeTargetHealthResponse>"
    ))
}

/// The fake on 127.0.0.1; returns its URL.
async fn fake(hang_first: usize) -> (String, Arc<Fake>) {
    let fake = Arc::new(Fake {
        health_calls: AtomicUsize::new(0),
        hang_first,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/", post(handle))
        .with_state(fake.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, fake)
}

async fn client(url: &str, metrics: Arc<Metrics>, timeout: Duration) -> Elbv2 {
    readygate::install_crypto_provider();
    Elbv2::with_endpoint(url, "us-east-1", Arc::new(Budget::new(50.0, 10)), metrics)
        .await
        .with_timeout(timeout)
}

#[tokio::test]
async fn a_hung_call_times_out_within_its_bound_and_is_counted() {
    let (url, fake) = fake(usize::MAX).await;
    let metrics = Arc::new(Metrics::new());
    let elb = client(&url, metrics.clone(), Duration::from_millis(500)).await;
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(30), elb.target_health(ARN))
        .await
        .expect("the call returned");
    assert!(matches!(r, Err(ElbError::Timeout(_))), "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        fake.health_calls.load(Ordering::SeqCst),
        1,
        "the fake got it"
    );
    let text = metrics.encode();
    assert!(
        text.contains(
            r#"readygate_elbv2_calls_total{operation="DescribeTargetHealth",outcome="timeout"} 1"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn the_group_is_polled_again_after_a_hung_call() {
    // The first DescribeTargetHealth never returns; the next says healthy.
    let (url, fake) = fake(1).await;
    let metrics = Arc::new(Metrics::new());
    let elb = client(&url, metrics.clone(), Duration::from_millis(500)).await;
    let cache = support::shop(ARN);
    let ready = jiff::Timestamp::now().as_second() - 600;
    cache.write().replace_pods(vec![(
        "shop".into(),
        "web-1".into(),
        Pod {
            uid: "u1".into(),
            labels: [("app".to_string(), "web".to_string())].into(),
            created: Some(ready - 5),
            ips: vec!["127.0.1.1".parse().unwrap()],
            container_ports: vec![ContainerPort {
                name: "http".into(),
                port: 8080,
            }],
            gates: vec!["web-tgb".into()],
            containers_ready_since: Some(ready),
            ..Pod::default()
        },
    )]);
    let Command::Serve(serve) = Cli::parse_from(["readygate", "serve"]).command else {
        unreachable!()
    };
    let (_leader_tx, leader) = watch::channel(true);
    let (jobs_tx, mut jobs) = mpsc::channel(64);
    let (done, done_rx) = mpsc::channel(64);
    let (c, m) = (cache.clone(), metrics.clone());
    tokio::spawn(async move {
        readygate::controller::run_loop(
            c,
            elb,
            m,
            &serve.controller,
            leader,
            jobs_tx,
            done_rx,
            Default::default(),
        )
        .await
    });

    // Writes land in the cache as the API server and the watch would, until the gate is True.
    let started = Instant::now();
    loop {
        let job = tokio::time::timeout(Duration::from_secs(15), jobs.recv())
            .await
            .expect("the gate turned True within 15 s: the group was polled again")
            .unwrap();
        let Job::Condition(w, _) = job else { continue };
        {
            let mut ix = cache.write();
            let mut p = ix.pods().next().map(|(_, _, p)| p.clone()).unwrap();
            p.set_condition(&w.binding, w.condition.clone());
            ix.apply_pod(&w.namespace, &w.pod, p);
        }
        cache.notify();
        let status = w.condition.status;
        done.send(Done {
            write: w,
            outcome: Outcome::Written,
        })
        .await
        .unwrap();
        if status == ConditionStatus::True {
            break;
        }
    }
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "True before the hung call could time out"
    );
    assert_eq!(fake.health_calls.load(Ordering::SeqCst), 2);
    let text = metrics.encode();
    for outcome in ["timeout", "ok"] {
        assert!(
            text.contains(&format!(
                r#"readygate_elbv2_calls_total{{operation="DescribeTargetHealth",outcome="{outcome}"}} 1"#
            )),
            "{text}"
        );
    }
}
