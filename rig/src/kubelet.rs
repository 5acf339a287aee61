//! What runs inside the rig's pods: the pod spec as the node agent ([`crate::k8s::node`]) reads
//! it, the demo application's HTTP server (listening after the pod's start delay; on SIGTERM
//! the listener closes and requests in flight finish), and the HTTP client of its probes.

use crate::str_at;
use axum::Router;
use axum::http::{HeaderValue, StatusCode};
use axum::response::IntoResponse;
use serde_json::Value;
use std::net::Ipv4Addr;
use std::time::Duration;
use tokio::sync::watch;

/// Pod annotation: milliseconds between the container start and its server listening.
pub const START_DELAY_ANNOTATION: &str = "rig.readygate.io/start-delay-ms";
/// Pod annotation: `fail` makes the pod answer its load balancer health check path with 503
/// (its readiness probe still passes): a target that never turns healthy.
pub const LB_HEALTH_ANNOTATION: &str = "rig.readygate.io/lb-health";
/// Pod annotation: readiness probe period in milliseconds, overriding `periodSeconds` (whose
/// minimum is 1 s) when the rig compresses time.
pub const PROBE_PERIOD_ANNOTATION: &str = "rig.readygate.io/probe-period-ms";
/// Path the pod answers for load balancer health checks.
pub const LB_HEALTH_PATH: &str = "/lb-health";

/// What the kubelet reads from a pod spec.
#[derive(Debug, Clone, PartialEq)]
pub struct PodPlan {
    pub container: String,
    pub image: String,
    pub ports: Vec<u16>,
    pub start_delay: Duration,
    /// The readiness probe.
    pub probe: Option<Probe>,
    pub liveness: Option<Probe>,
    pub pre_stop: Duration,
    pub grace: Duration,
    pub lb_healthy: bool,
    /// `Always`, `OnFailure` or `Never`.
    pub restart_policy: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub path: String,
    pub port: u16,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl PodPlan {
    pub fn from_pod(pod: &Value) -> Result<Self, String> {
        let c = pod
            .pointer("/spec/containers/0")
            .ok_or("pod has no container")?;
        let named_ports: Vec<(String, u16)> = c
            .get("ports")
            .and_then(Value::as_array)
            .map(|ps| {
                ps.iter()
                    .filter_map(|p| {
                        Some((str_at(p, "/name"), p.get("containerPort")?.as_u64()? as u16))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let port_of = |v: Option<&Value>| -> Result<u16, String> {
            match v {
                Some(Value::Number(n)) => n
                    .as_u64()
                    .map(|n| n as u16)
                    .ok_or_else(|| "bad port".to_string()),
                Some(Value::String(name)) => named_ports
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, p)| *p)
                    .ok_or_else(|| format!("probe port {name:?} is not a container port")),
                _ => Err("probe without port".into()),
            }
        };
        let secs = |v: Option<&Value>, default: u64| {
            Duration::from_secs(v.and_then(Value::as_u64).unwrap_or(default))
        };
        let annotation = |k: &str| {
            pod.pointer("/metadata/annotations")
                .and_then(|a| a.get(k))
                .and_then(Value::as_str)
                .map(String::from)
        };
        let probe_period = annotation(PROBE_PERIOD_ANNOTATION)
            .and_then(|p| p.parse::<u64>().ok())
            .map(Duration::from_millis);
        let parse = |p: &Value, kind: &str, period: Option<Duration>| -> Result<Probe, String> {
            let http = p
                .get("httpGet")
                .ok_or(format!("the rig runs httpGet {kind} probes only"))?;
            Ok(Probe {
                path: http
                    .get("path")
                    .and_then(Value::as_str)
                    .unwrap_or("/")
                    .to_string(),
                port: port_of(http.get("port"))?,
                initial_delay: secs(p.get("initialDelaySeconds"), 0),
                period: period
                    .unwrap_or(secs(p.get("periodSeconds"), 10).max(Duration::from_secs(1)))
                    .max(Duration::from_millis(10)),
                timeout: secs(p.get("timeoutSeconds"), 1).max(Duration::from_secs(1)),
                success_threshold: p
                    .get("successThreshold")
                    .and_then(Value::as_u64)
                    .unwrap_or(1) as u32,
                failure_threshold: p
                    .get("failureThreshold")
                    .and_then(Value::as_u64)
                    .unwrap_or(3) as u32,
            })
        };
        let probe = match c.get("readinessProbe") {
            Some(p) => Some(parse(p, "readiness", probe_period)?),
            None => None,
        };
        let liveness = match c.get("livenessProbe") {
            Some(p) => Some(parse(p, "liveness", None)?),
            None => None,
        };
        Ok(Self {
            container: str_at(c, "/name"),
            image: str_at(c, "/image"),
            ports: named_ports.iter().map(|(_, p)| *p).collect(),
            start_delay: Duration::from_millis(
                annotation(START_DELAY_ANNOTATION)
                    .and_then(|d| d.parse().ok())
                    .unwrap_or(0),
            ),
            probe,
            liveness,
            pre_stop: secs(c.pointer("/lifecycle/preStop/sleep/seconds"), 0),
            grace: secs(pod.pointer("/spec/terminationGracePeriodSeconds"), 30),
            lb_healthy: annotation(LB_HEALTH_ANNOTATION).as_deref() != Some("fail"),
            restart_policy: pod
                .pointer("/spec/restartPolicy")
                .and_then(Value::as_str)
                .unwrap_or("Always")
                .to_string(),
        })
    }
}

/// The demo application: answers `/` with its pod name, the probe path with 200, and the load
/// balancer health check path with 200 (or 503 when the pod is told to fail it).
pub(crate) async fn serve_app(
    name: String,
    ip: Ipv4Addr,
    plan: PodPlan,
    mut stop: watch::Receiver<bool>,
) {
    let lb_healthy = plan.lb_healthy;
    let pod_header = HeaderValue::from_str(&name).unwrap_or(HeaderValue::from_static("pod"));
    let h2 = pod_header.clone();
    let router = Router::new()
        .route(
            LB_HEALTH_PATH,
            axum::routing::get(move || async move {
                if lb_healthy {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            }),
        )
        .fallback(move || {
            let h = h2.clone();
            async move { ([("x-pod", h)], "ok\n").into_response() }
        });
    let _ = pod_header;
    // Dropping the set (the pod killed at the end of its grace period) aborts every server.
    let mut servers = tokio::task::JoinSet::new();
    for port in &plan.ports {
        let listener = match tokio::net::TcpListener::bind((ip, *port)).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(pod = %name, %ip, port, error = %e, "pod cannot listen");
                continue;
            }
        };
        let router = router.clone();
        let mut stop = stop.clone();
        servers.spawn(async move {
            // SIGTERM: the listener closes at once (new connections are refused), requests
            // in flight finish.
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
        });
    }
    let _ = stop.wait_for(|s| *s).await;
    servers.join_all().await;
}

/// A minimal HTTP/1.1 client over a fresh connection per request, as probes and health
/// checks use: no pooled connection can outlive the server it points at.
pub mod reqwest_like {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use std::net::SocketAddr;
    use std::time::Duration;

    #[derive(Default, Clone)]
    pub struct Client;

    #[derive(Debug, Clone, PartialEq)]
    pub enum Failure {
        Connect,
        Timeout,
        Status(u16),
        Other(String),
    }

    impl Client {
        /// GET `path` from `addr`; Ok with the status code when it is 2xx or 3xx.
        pub async fn get_ok(
            &self,
            addr: SocketAddr,
            path: &str,
            timeout: Duration,
        ) -> Result<u16, Failure> {
            let exchange = async {
                let tcp = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|_| Failure::Connect)?;
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                        .await
                        .map_err(|e| Failure::Other(e.to_string()))?;
                let conn = tokio::spawn(conn);
                let req = hyper::Request::get(path)
                    .header("host", addr.to_string())
                    .header("user-agent", "rig-probe")
                    .body(Empty::<Bytes>::new())
                    .map_err(|e| Failure::Other(e.to_string()))?;
                let resp = sender
                    .send_request(req)
                    .await
                    .map_err(|e| Failure::Other(e.to_string()))?;
                let code = resp.status().as_u16();
                let _ = resp.into_body().collect().await;
                conn.abort();
                Ok(code)
            };
            match tokio::time::timeout(timeout, exchange).await {
                Err(_) => Err(Failure::Timeout),
                Ok(Err(e)) => Err(e),
                Ok(Ok(code)) if (200..400).contains(&code) => Ok(code),
                Ok(Ok(code)) => Err(Failure::Status(code)),
            }
        }
    }
}
