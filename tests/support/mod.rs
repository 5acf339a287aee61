//! Shared test rig pieces: moto on loopback, free ports, certificates.
#![allow(dead_code)]

use std::net::TcpListener;

use aws_sdk_elasticloadbalancingv2::types::{ProtocolEnum, TargetDescription, TargetTypeEnum};
use readygate::cache::Cache;
use readygate::domain::{Binding, NamespaceSettings, PortRef, Service, ServicePort, TargetType};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A moto server on 127.0.0.1, stopped (by PID) when dropped.
pub struct Moto {
    child: Child,
    pub url: String,
}

impl Moto {
    /// Starts `moto_server` from $MOTO_SERVER or the repository's .venv (made by scripts/test).
    pub fn start() -> Moto {
        let bin = std::env::var_os("MOTO_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server")
            });
        assert!(
            bin.exists(),
            "moto_server not found at {} — run the tests through scripts/test (it installs moto) or set MOTO_SERVER",
            bin.display()
        );
        let port = free_port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto_server");
        let moto = Moto {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not start within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    /// A raw Query API call (for services readygate has no SDK for, such as EC2's CreateVpc).
    pub fn query(&self, service: &str, body: &str) -> String {
        use std::io::{Read, Write};
        let addr = self.url.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(
            s,
            "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=0\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    /// Creates a VPC and returns its id (moto checks that target groups name a real VPC).
    pub fn create_vpc(&self) -> String {
        let out = self.query(
            "ec2",
            "Action=CreateVpc&Version=2016-11-15&CidrBlock=10.0.0.0%2F16",
        );
        let start = out.find("<vpcId>").expect("CreateVpc answered") + "<vpcId>".len();
        let end = out[start..].find("</vpcId>").unwrap() + start;
        out[start..end].to_string()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// An SDK client for setting moto up (the product's own client is `readygate::elbv2`).
    pub async fn admin(&self) -> aws_sdk_elasticloadbalancingv2::Client {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&self.url)
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_elasticloadbalancingv2::config::Credentials::new(
                "testing", "testing", None, None, "static",
            ))
            .load()
            .await;
        aws_sdk_elasticloadbalancingv2::Client::new(&config)
    }

    /// An IP target group (in a new VPC) with `registered` IPs on port 8080; returns its ARN.
    pub async fn target_group(&self, name: &str, check: (i32, i32), registered: &[&str]) -> String {
        let admin = self.admin().await;
        let tg = admin
            .create_target_group()
            .name(name)
            .protocol(ProtocolEnum::Http)
            .port(80)
            .vpc_id(self.create_vpc())
            .target_type(TargetTypeEnum::Ip)
            .health_check_interval_seconds(check.0)
            .healthy_threshold_count(check.1)
            .send()
            .await
            .unwrap();
        let arn = tg.target_groups()[0]
            .target_group_arn()
            .unwrap()
            .to_string();
        for ip in registered {
            admin
                .register_targets()
                .target_group_arn(&arn)
                .targets(TargetDescription::builder().id(*ip).port(8080).build())
                .send()
                .await
                .unwrap();
        }
        arn
    }
}

/// Namespace `shop`: Service `web` (selects app=web, port 80 → container port "http") and
/// TargetGroupBinding `web-tgb` (ip) on it, as synced caches.
pub fn shop(arn: &str) -> std::sync::Arc<Cache> {
    let cache = std::sync::Arc::new(Cache::default());
    {
        let mut ix = cache.write();
        ix.replace_services(vec![(
            "shop".into(),
            "web".into(),
            Service {
                selector: [("app".to_string(), "web".to_string())].into(),
                ports: vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    target_port: Some(PortRef::Name("http".into())),
                }],
            },
        )]);
        ix.replace_bindings(vec![(
            "shop".into(),
            Binding {
                name: "web-tgb".into(),
                target_group_arn: arn.into(),
                target_type: TargetType::Ip,
                service_name: "web".into(),
                service_port: PortRef::Number(80),
                ip_family: Default::default(),
                aws_controller: false,
            },
        )]);
        ix.replace_pods(Vec::new());
        ix.replace_namespaces(vec![("shop".into(), NamespaceSettings::opted_in())]);
    }
    cache
}
