//! The ELBv2 client against moto on loopback: what readygate parses from real Query API answers.

mod support;

use std::sync::Arc;

use readygate::budget::Budget;
use readygate::condition::{self, Policy};
use readygate::domain::ConditionStatus;
use readygate::elbv2::{ElbError, Elbv2};
use readygate::metrics::Metrics;
use readygate::target::Target;

#[tokio::test]
async fn target_health_from_moto() {
    readygate::install_crypto_provider();
    let moto = Moto::start();
    let arn = moto.target_group("web", (10, 3), &["127.0.1.1"]).await;

    let metrics = Arc::new(Metrics::new());
    let elb = Elbv2::with_endpoint(
        &moto.url,
        "us-east-1",
        Arc::new(Budget::new(50.0, 10)),
        metrics.clone(),
    )
    .await;

    // Registered → healthy → the gate turns True.
    let health = elb.target_health(&arn).await.unwrap();
    let registered = Target {
        ip: "127.0.1.1".parse().unwrap(),
        port: 8080,
    };
    assert_eq!(health[&registered].state, "healthy");
    assert_eq!(
        condition::from_health(&health[&registered], Policy::default()).status,
        ConditionStatus::True
    );

    // Unregistered → absent from the group's answer → "registration in progress".
    let unregistered = Target {
        ip: "127.0.1.2".parse().unwrap(),
        port: 8080,
    };
    assert!(!health.contains_key(&unregistered));
    assert_eq!(health.len(), 1);

    // Settings read once for the first poll's timing.
    let settings = elb.group_settings(&arn).await.unwrap();
    assert_eq!(
        (settings.interval_seconds, settings.healthy_threshold),
        (10, 3)
    );
    assert_eq!(settings.healthy_after().as_secs(), 30);

    // A wrong ARN maps to TargetGroupNotFound, for both calls.
    let wrong = format!("{arn}0");
    assert!(matches!(
        elb.target_health(&wrong).await,
        Err(ElbError::TargetGroupNotFound(_))
    ));
    assert!(matches!(
        elb.group_settings(&wrong).await,
        Err(ElbError::TargetGroupNotFound(_))
    ));

    let text = metrics.encode();
    assert!(
        text.contains(
            r#"readygate_elbv2_calls_total{operation="DescribeTargetHealth",outcome="ok"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"readygate_elbv2_calls_total{operation="DescribeTargetHealth",outcome="not_found"} 1"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn unreachable_endpoint_is_an_error_not_a_hang() {
    readygate::install_crypto_provider();
    // A closed loopback port: the call fails fast and is classified for backoff.
    let url = format!("http://127.0.0.1:{}", support::free_port());
    let elb = Elbv2::with_endpoint(
        &url,
        "us-east-1",
        Arc::new(Budget::new(50.0, 10)),
        Arc::new(Metrics::new()),
    )
    .await;
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        elb.target_health("arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/x/1"),
    )
    .await;
    assert!(matches!(r, Ok(Err(ElbError::Other(_)))), "{r:?}");
}

use support::Moto;

#[tokio::test]
async fn settings_say_whether_the_group_serves_a_load_balancer() {
    readygate::install_crypto_provider();
    let moto = Moto::start();
    let detached = moto.target_group("alone", (10, 3), &[]).await;
    let attached = moto.target_group("served", (10, 3), &[]).await;
    // An NLB in a subnet of the group's VPC, forwarding to `served`.
    let admin = moto.admin().await;
    let vpc = admin
        .describe_target_groups()
        .target_group_arns(&attached)
        .send()
        .await
        .unwrap()
        .target_groups()[0]
        .vpc_id()
        .unwrap()
        .to_string();
    let out = moto.query(
        "ec2",
        &format!(
            "Action=CreateSubnet&Version=2016-11-15&VpcId={vpc}&CidrBlock=10.0.1.0%2F24&AvailabilityZone=us-east-1a"
        ),
    );
    let start = out.find("<subnetId>").expect("CreateSubnet answered") + "<subnetId>".len();
    let subnet = &out[start..start + out[start..].find("</subnetId>").unwrap()];
    let lb = admin
        .create_load_balancer()
        .name("nlb")
        .r#type(aws_sdk_elasticloadbalancingv2::types::LoadBalancerTypeEnum::Network)
        .subnets(subnet)
        .send()
        .await
        .unwrap();
    admin
        .create_listener()
        .load_balancer_arn(lb.load_balancers()[0].load_balancer_arn().unwrap())
        .protocol(aws_sdk_elasticloadbalancingv2::types::ProtocolEnum::Tcp)
        .port(80)
        .default_actions(
            aws_sdk_elasticloadbalancingv2::types::Action::builder()
                .r#type(aws_sdk_elasticloadbalancingv2::types::ActionTypeEnum::Forward)
                .target_group_arn(&attached)
                .build(),
        )
        .send()
        .await
        .unwrap();

    let elb = Elbv2::with_endpoint(
        &moto.url,
        "us-east-1",
        Arc::new(Budget::new(50.0, 10)),
        Arc::new(Metrics::new()),
    )
    .await;
    let both = elb
        .groups_settings(&[detached.clone(), attached.clone()])
        .await
        .unwrap();
    assert!(!both[&detached].attached);
    assert!(both[&attached].attached);
}
