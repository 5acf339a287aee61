//! The rig's node: every pod is a real HTTP server on its own loopback address (127.0.x.y).
//! The kubelet starts it after the pod's start delay, probes its readiness to report
//! `ContainersReady`, and on deletion runs the preStop sleep, then stops the server as SIGTERM
//! would (no new connections, requests in flight finish; killed when the grace period ends),
//! then removes the pod object.

use crate::apiserver::resources;
use crate::apiserver::store::{EventType, PatchKind, Store, Subresource, WriteOpts, str_at};
use crate::time::now_time;
use axum::Router;
use axum::http::{HeaderValue, StatusCode};
use axum::response::IntoResponse;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// A pod whose process the rig runs outside the kubelet (a readygate replica, given a Pod
/// object so that its leader can be reached through the pod proxy): the kubelet leaves it alone.
pub const EXTERNAL_ANNOTATION: &str = "rig.readygate.io/external";
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

/// Unique loopback addresses for pods: 127.0.x.y with x, y in 1..=254. Linux routes all of
/// 127/8 to lo, so a server can bind each one.
pub struct IpPool {
    next: AtomicU32,
}

impl Default for IpPool {
    fn default() -> Self {
        // Start at a place that depends on the process, so that two rigs on one machine
        // (a test run beside a demo) rarely meet; a bind check settles the rest.
        let start = (std::process::id() % 200) * 254;
        Self {
            next: AtomicU32::new(start),
        }
    }
}

impl IpPool {
    /// An address whose `ports` are free right now. Addresses are never reused in a process,
    /// so a late health check or request never reaches a newer pod.
    pub fn allocate(&self, ports: &[u16]) -> Ipv4Addr {
        for _ in 0..64_516 {
            let n = self.next.fetch_add(1, Ordering::Relaxed) % 64_516;
            let ip = Ipv4Addr::new(127, 0, (n / 254 + 1) as u8, (n % 254 + 1) as u8);
            if ports
                .iter()
                .all(|p| std::net::TcpListener::bind((ip, *p)).is_ok())
            {
                return ip;
            }
        }
        panic!("no free loopback address left for pods")
    }
}

/// What the kubelet reads from a pod spec.
#[derive(Debug, Clone, PartialEq)]
pub struct PodPlan {
    pub container: String,
    pub image: String,
    pub ports: Vec<u16>,
    pub start_delay: Duration,
    pub probe: Option<Probe>,
    pub pre_stop: Duration,
    pub grace: Duration,
    pub lb_healthy: bool,
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
        let probe = match c.get("readinessProbe") {
            Some(p) => {
                let http = p
                    .get("httpGet")
                    .ok_or("the rig runs httpGet readiness probes only")?;
                Some(Probe {
                    path: http
                        .get("path")
                        .and_then(Value::as_str)
                        .unwrap_or("/")
                        .to_string(),
                    port: port_of(http.get("port"))?,
                    initial_delay: secs(p.get("initialDelaySeconds"), 0),
                    period: probe_period
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
            }
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
            pre_stop: secs(c.pointer("/lifecycle/preStop/sleep/seconds"), 0),
            grace: secs(pod.pointer("/spec/terminationGracePeriodSeconds"), 30),
            lb_healthy: annotation(LB_HEALTH_ANNOTATION).as_deref() != Some("fail"),
        })
    }
}

/// Runs the pods of the store; stops them all when dropped.
pub struct Kubelet {
    task: tokio::task::JoinHandle<()>,
    pods: Arc<Mutex<HashMap<String, PodHandle>>>,
    pub ips: Arc<IpPool>,
}

struct PodHandle {
    terminate: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
        for (_, p) in self.pods.lock().expect("pods lock").drain() {
            p.task.abort();
        }
    }
}

impl Kubelet {
    pub fn start(store: Arc<Store>) -> Self {
        let pods: Arc<Mutex<HashMap<String, PodHandle>>> = Arc::default();
        let ips = Arc::new(IpPool::default());
        let mut feed = store.subscribe();
        let (p2, ips2) = (pods.clone(), ips.clone());
        let task = tokio::spawn(async move {
            loop {
                let change = match feed.recv().await {
                    Ok(c) => c,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::error!(missed = n, "kubelet fell behind the change feed");
                        continue;
                    }
                    Err(_) => return,
                };
                if !std::ptr::eq(change.resource, resources::pods()) {
                    continue;
                }
                let uid = str_at(&change.object, "/metadata/uid");
                let terminating = change
                    .object
                    .pointer("/metadata/deletionTimestamp")
                    .is_some();
                let mut pods = p2.lock().expect("pods lock");
                // A process the rig runs itself (a readygate replica): not the kubelet's.
                if change
                    .object
                    .pointer("/metadata/annotations")
                    .and_then(|a| a.get(EXTERNAL_ANNOTATION))
                    .is_some()
                {
                    continue;
                }
                match change.event {
                    EventType::Added => {
                        let (tx, rx) = watch::channel(terminating);
                        let task = tokio::spawn(run_pod(
                            store.clone(),
                            ips2.clone(),
                            change.object.clone(),
                            rx,
                        ));
                        pods.insert(
                            uid,
                            PodHandle {
                                terminate: tx,
                                task,
                            },
                        );
                    }
                    EventType::Modified if terminating => {
                        if let Some(p) = pods.get(&uid) {
                            p.terminate.send_replace(true);
                        }
                    }
                    EventType::Deleted => {
                        if let Some(p) = pods.remove(&uid) {
                            // Removed by force (or by us after it stopped): the server stops now.
                            p.task.abort();
                        }
                    }
                    EventType::Modified => {}
                }
                pods.retain(|_, p| !p.task.is_finished());
            }
        });
        Self { task, pods, ips }
    }

    /// Pods whose server task is still running.
    pub fn running(&self) -> usize {
        self.pods
            .lock()
            .expect("pods lock")
            .values()
            .filter(|p| !p.task.is_finished())
            .count()
    }
}

fn status_patch(
    store: &Store,
    pod: &Value,
    status: Value,
) -> Result<Value, crate::apiserver::status::ApiError> {
    let patch = json!({"metadata": {"uid": str_at(pod, "/metadata/uid")}, "status": status});
    store.patch(
        resources::pods(),
        &str_at(pod, "/metadata/namespace"),
        &str_at(pod, "/metadata/name"),
        PatchKind::Strategic,
        &patch,
        Subresource::Status,
        &WriteOpts {
            field_manager: Some("kubelet".into()),
            ..Default::default()
        },
    )
}

fn container_status(plan: &PodPlan, ready: bool, started_at: &str, running: bool) -> Value {
    let state = if running {
        json!({"running": {"startedAt": started_at}})
    } else {
        json!({"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": started_at, "finishedAt": now_time()}})
    };
    json!([{
        "name": plan.container, "image": plan.image, "imageID": format!("rig://{}", plan.image),
        "containerID": format!("rig://{}", crate::time::uuid()), "ready": ready, "started": running,
        "restartCount": 0, "state": state
    }])
}

fn ready_conditions(plan: &PodPlan, ready: bool) -> Value {
    let now = now_time();
    if ready {
        json!([{"type": "ContainersReady", "status": "True", "lastProbeTime": null, "lastTransitionTime": now}])
    } else {
        json!([{"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady",
            "message": format!("containers with unready status: [{}]", plan.container), "lastProbeTime": null, "lastTransitionTime": now}])
    }
}

async fn run_pod(
    store: Arc<Store>,
    ips: Arc<IpPool>,
    pod: Value,
    mut terminate: watch::Receiver<bool>,
) {
    let name = str_at(&pod, "/metadata/name");
    let namespace = str_at(&pod, "/metadata/namespace");
    let plan = match PodPlan::from_pod(&pod) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(pod = %name, error = %e, "the rig cannot run this pod");
            return;
        }
    };
    let ip = ips.allocate(&plan.ports);
    let started_at = now_time();
    let mut conditions = vec![
        json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": started_at}),
        json!({"type": "Initialized", "status": "True", "lastProbeTime": null, "lastTransitionTime": started_at}),
    ];
    conditions.extend(
        ready_conditions(&plan, false)
            .as_array()
            .cloned()
            .unwrap_or_default(),
    );
    let status = json!({
        "phase": "Running", "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
        "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}], "startTime": started_at,
        "conditions": conditions, "containerStatuses": container_status(&plan, false, &started_at, true)
    });
    if status_patch(&store, &pod, status).is_err() {
        return; // the pod is already gone
    }

    // The container: after the start delay, its server listens on every container port.
    let (stop_tx, stop_rx) = watch::channel(false);
    let app_name = name.clone();
    let app_plan = plan.clone();
    let server = tokio::spawn(async move {
        tokio::time::sleep(app_plan.start_delay).await;
        serve_app(app_name, ip, app_plan, stop_rx).await;
    });

    let deleted_early = *terminate.borrow();
    if !deleted_early {
        probe_until_terminated(&store, &pod, &plan, ip, &started_at, &mut terminate).await;
    }

    // Termination: the endpoints controller and the load balancer controller see the
    // deletionTimestamp at once; the preStop sleep lets traffic drain before SIGTERM.
    let grace_deadline = tokio::time::Instant::now() + plan.grace;
    tokio::time::sleep_until(grace_deadline.min(tokio::time::Instant::now() + plan.pre_stop)).await;
    stop_tx.send_replace(true);
    let abort = server.abort_handle();
    if tokio::time::timeout_at(grace_deadline, server)
        .await
        .is_err()
    {
        abort.abort();
        tracing::warn!(pod = %name, "server did not stop within the grace period; killed");
    }
    let mut stopped =
        json!({"containerStatuses": container_status(&plan, false, &started_at, false)});
    stopped["conditions"] = ready_conditions(&plan, false);
    let _ = status_patch(&store, &pod, stopped);
    let uid = str_at(&pod, "/metadata/uid");
    let _ = store.delete(
        resources::pods(),
        &namespace,
        &name,
        Some(0),
        Some(&uid),
        false,
    );
}

async fn probe_until_terminated(
    store: &Store,
    pod: &Value,
    plan: &PodPlan,
    ip: Ipv4Addr,
    started_at: &str,
    terminate: &mut watch::Receiver<bool>,
) {
    let client = reqwest_like::Client;
    let mut ready = false;
    let (mut successes, mut failures) = (0u32, 0u32);
    let report = |ready: bool| {
        let status = json!({"conditions": ready_conditions(plan, ready), "containerStatuses": container_status(plan, ready, started_at, true)});
        status_patch(store, pod, status).is_ok()
    };
    let Some(probe) = plan.probe.clone() else {
        // No readiness probe: ready once the server listens.
        let deadline = tokio::time::Instant::now() + plan.start_delay + Duration::from_secs(30);
        loop {
            if *terminate.borrow() || tokio::time::Instant::now() > deadline {
                break;
            }
            if let Some(port) = plan.ports.first()
                && tokio::net::TcpStream::connect((ip, *port)).await.is_ok()
            {
                report(true);
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = terminate.changed() => {}
            }
        }
        let _ = terminate.wait_for(|t| *t).await;
        return;
    };
    let first = tokio::time::Instant::now() + probe.initial_delay;
    let mut ticker = tokio::time::interval_at(first, probe.period);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            r = terminate.changed() => {
                if r.is_err() || *terminate.borrow() { return; }
                continue;
            }
        }
        let ok = client
            .get_ok(
                SocketAddr::new(IpAddr::V4(ip), probe.port),
                &probe.path,
                probe.timeout,
            )
            .await
            .is_ok();
        if ok {
            successes += 1;
            failures = 0;
        } else {
            failures += 1;
            successes = 0;
        }
        if !ready && successes >= probe.success_threshold {
            ready = true;
            if !report(true) {
                return;
            }
        } else if ready && failures >= probe.failure_threshold {
            ready = false;
            if !report(false) {
                return;
            }
        }
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
