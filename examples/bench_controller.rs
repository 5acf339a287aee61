//! The status controller against a fake ELBv2 endpoint: call budget, scheduling and the lag from
//! "the load balancer reports the target healthy" to "the condition is written".
//!
//!     cargo run --example bench_controller [-- --groups 500 --only small|large]
//!
//! Drives `readygate::controller::run_loop` with the default controller flags (poll interval
//! 2 s, budget 5 calls/s with a burst of 10) against an in-process ELBv2 Query-API fake on
//! 127.0.0.1 that answers DescribeTargetGroups and DescribeTargetHealth in the XML the AWS SDK
//! parses, reports every target `initial` until a chosen time and `healthy` from then on, can
//! answer `Throttling` to every Nth call, and records the time of every call. Health checks are
//! 1 s × 2 in the fake, so a target can be healthy 2 s after it is ready.
//!
//! This program plays the writer: it receives the controller's jobs, applies each condition to
//! the pod in the cache (as the pod watcher would after the PATCH), notifies the cache and answers
//! `Done { outcome: Written }`; the API server's write latency is not included.
//!
//! Three parts, one after the other (`--only small|budget|large` runs one):
//! - small: 8 target groups × 25 pods, targets turning healthy 3–18 s after the pods are ready.
//!   The budget is not the bottleneck, so this measures the lag. The same workload is then
//!   simulated for the AWS Load Balancer Controller's way (one DescribeTargetHealth per binding
//!   every 15 s while any of its pods is pending) to show the ratio.
//! - budget: the call budget alone with 40 waiters (grant order against arrival order). (The
//!   controller's CPU cost per pass is `bench_passes`'.)
//! - large: 500 target groups × 2 pods, same health timing, every 50th call throttled. Checks
//!   that calls never exceed the budget and every pod still gets its condition. At 5 calls/s,
//!   500 DescribeTargetGroups plus 500 DescribeTargetHealth take at least 200 s, so this part
//!   runs for about 4 minutes; `--groups N` makes it smaller.
//!
//! Other arguments go to `readygate serve`'s parser, e.g. `--poll-interval 1s --elbv2-rate 10`;
//! `--small-groups N` sets the small scenario's group count (200 pods in all).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use clap::Parser;
use readygate::budget::Budget;
use readygate::cache::Cache;
use readygate::cli::{Cli, Command, ControllerArgs};
use readygate::domain::{
    self, ConditionStatus, ContainerPort, NamespaceSettings, PortRef, ServicePort, TargetType,
};
use readygate::elbv2::Elbv2;
use readygate::metrics::Metrics;
use readygate::writer::{Done, Job, Outcome};
use tokio::sync::{mpsc, oneshot, watch};

// ---------------------------------------------------------------------------------------------
// The fake ELBv2 endpoint.

const XMLNS: &str = "http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/";
const HEALTH_CHECK_INTERVAL: u32 = 1;
const HEALTHY_THRESHOLD: u32 = 2;

struct FakeTarget {
    ip: String,
    port: i32,
    /// When the fake starts reporting it healthy.
    healthy_at: Instant,
    /// When an answer first said healthy.
    first_healthy_answer: Option<Instant>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Groups,
    Health,
    Other,
}

struct Call {
    at: Instant,
    action: Action,
    /// The group asked about (DescribeTargetHealth).
    arn: Option<String>,
    throttled: bool,
}

struct Fake {
    /// Target group ARN → its targets (indexes into `targets`).
    groups: HashMap<String, Vec<usize>>,
    targets: Vec<FakeTarget>,
    calls: Vec<Call>,
    /// Answer `Throttling` to every Nth call.
    throttle_every: Option<usize>,
}

type Shared = Arc<Mutex<Fake>>;

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn form(body: &str) -> HashMap<String, String> {
    body.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn xml(status: StatusCode, body: String) -> axum::response::Response {
    (status, [(header::CONTENT_TYPE, "text/xml")], body).into_response()
}

fn error(code: &str, message: &str) -> axum::response::Response {
    xml(
        StatusCode::BAD_REQUEST,
        format!(
            "<ErrorResponse xmlns=\"{XMLNS}\"><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>\
             <RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>"
        ),
    )
}

async fn handle(State(fake): State<Shared>, body: String) -> axum::response::Response {
    let now = Instant::now();
    let params = form(&body);
    let action = match params.get("Action").map(String::as_str) {
        Some("DescribeTargetGroups") => Action::Groups,
        Some("DescribeTargetHealth") => Action::Health,
        _ => Action::Other,
    };
    let mut f = fake.lock().expect("fake lock");
    let n = f.calls.len() + 1;
    let throttled = action != Action::Other && f.throttle_every.is_some_and(|every| n % every == 0);
    let arn = (action == Action::Health)
        .then(|| params.get("TargetGroupArn").cloned().unwrap_or_default());
    f.calls.push(Call {
        at: now,
        action,
        arn,
        throttled,
    });
    if throttled {
        return error("Throttling", "Rate exceeded");
    }
    match action {
        Action::Groups => {
            let mut members = String::new();
            for arn in params
                .iter()
                .filter(|(k, _)| k.starts_with("TargetGroupArns.member."))
                .map(|(_, v)| v)
            {
                if !f.groups.contains_key(arn) {
                    return error(
                        "TargetGroupNotFound",
                        &format!("One or more target groups not found: {arn}"),
                    );
                }
                members.push_str(&format!(
                    "<member><TargetGroupArn>{arn}</TargetGroupArn><TargetGroupName>bench</TargetGroupName><Protocol>HTTP</Protocol>\
                     <Port>8080</Port><VpcId>vpc-0bench</VpcId><HealthCheckProtocol>HTTP</HealthCheckProtocol>\
                     <HealthCheckPort>traffic-port</HealthCheckPort><HealthCheckEnabled>true</HealthCheckEnabled>\
                     <HealthCheckIntervalSeconds>{HEALTH_CHECK_INTERVAL}</HealthCheckIntervalSeconds>\
                     <HealthCheckTimeoutSeconds>1</HealthCheckTimeoutSeconds><HealthyThresholdCount>{HEALTHY_THRESHOLD}</HealthyThresholdCount>\
                     <UnhealthyThresholdCount>2</UnhealthyThresholdCount><HealthCheckPath>/</HealthCheckPath>\
                     <Matcher><HttpCode>200</HttpCode></Matcher><TargetType>ip</TargetType></member>"
                ));
            }
            xml(
                StatusCode::OK,
                format!(
                    "<DescribeTargetGroupsResponse xmlns=\"{XMLNS}\"><DescribeTargetGroupsResult><TargetGroups>{members}</TargetGroups>\
                     </DescribeTargetGroupsResult><ResponseMetadata><RequestId>1</RequestId></ResponseMetadata></DescribeTargetGroupsResponse>"
                ),
            )
        }
        Action::Health => {
            let arn = params.get("TargetGroupArn").cloned().unwrap_or_default();
            let Some(members) = f.groups.get(&arn).cloned() else {
                return error(
                    "TargetGroupNotFound",
                    &format!("Target groups '{arn}' not found"),
                );
            };
            let mut out = String::new();
            for i in members {
                let t = &mut f.targets[i];
                let health = if now >= t.healthy_at {
                    t.first_healthy_answer.get_or_insert(now);
                    "<State>healthy</State>".to_string()
                } else {
                    "<State>initial</State><Reason>Elb.InitialHealthChecking</Reason><Description>Initial health checks in progress</Description>"
                        .to_string()
                };
                out.push_str(&format!(
                    "<member><HealthCheckPort>{port}</HealthCheckPort><Target><Id>{ip}</Id><Port>{port}</Port>\
                     <AvailabilityZone>us-west-2a</AvailabilityZone></Target><TargetHealth>{health}</TargetHealth></member>",
                    ip = t.ip,
                    port = t.port
                ));
            }
            xml(
                StatusCode::OK,
                format!(
                    "<DescribeTargetHealthResponse xmlns=\"{XMLNS}\"><DescribeTargetHealthResult><TargetHealthDescriptions>{out}\
                     </TargetHealthDescriptions></DescribeTargetHealthResult><ResponseMetadata><RequestId>2</RequestId></ResponseMetadata>\
                     </DescribeTargetHealthResponse>"
                ),
            )
        }
        Action::Other => error("InvalidAction", "not implemented by the fake"),
    }
}

async fn serve(fake: Shared) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1");
    let addr = listener.local_addr().expect("addr");
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let app = Router::new().route("/", post(handle)).with_state(fake);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await;
    });
    (addr, stop_tx)
}

// ---------------------------------------------------------------------------------------------
// Workload.

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[derive(Clone)]
struct Scenario {
    name: &'static str,
    groups: usize,
    pods_per_group: usize,
    /// Targets turn healthy uniformly in [from, to) ms after the pods are ready.
    healthy_from_ms: u64,
    healthy_to_ms: u64,
    throttle_every: Option<usize>,
    deadline: Duration,
}

struct PodInfo {
    ns: String,
    name: String,
    group: usize,
    target: usize,
}

struct Workload {
    arns: Vec<String>,
    pods: Vec<PodInfo>,
    /// Healthy time of each target, ms after t0.
    healthy_ms: Vec<u64>,
}

fn arn(g: usize) -> String {
    format!(
        "arn:aws:elasticloadbalancing:us-west-2:123456789012:targetgroup/bench-{g:04}/{:016x}",
        mix(g as u64)
    )
}

fn workload(s: &Scenario) -> Workload {
    let arns: Vec<String> = (0..s.groups).map(arn).collect();
    let mut pods = Vec::new();
    let mut healthy_ms = Vec::new();
    for g in 0..s.groups {
        for k in 0..s.pods_per_group {
            let i = pods.len();
            pods.push(PodInfo {
                ns: format!("team-{:02}", g / 20),
                name: format!("app-{g:04}-{k:03}"),
                group: g,
                target: i,
            });
            let span = (s.healthy_to_ms - s.healthy_from_ms).max(1);
            healthy_ms.push(s.healthy_from_ms + mix(i as u64 ^ 0x5eed) % span);
        }
    }
    Workload {
        arns,
        pods,
        healthy_ms,
    }
}

fn pod_ip(i: usize) -> String {
    format!("127.0.{}.{}", 1 + i / 250, 1 + i % 250)
}

fn fill_cache(cache: &Cache, w: &Workload, now_s: i64) -> HashMap<String, (usize, domain::Pod)> {
    let mut bindings = Vec::new();
    let mut services = Vec::new();
    let mut namespaces = Vec::new();
    for (g, arn) in w.arns.iter().enumerate() {
        let ns = format!("team-{:02}", g / 20);
        if !namespaces.contains(&ns) {
            namespaces.push(ns.clone());
        }
        bindings.push((
            ns.clone(),
            domain::Binding {
                name: format!("tgb-{g:04}"),
                target_group_arn: arn.clone(),
                target_type: TargetType::Ip,
                service_name: format!("svc-{g:04}"),
                service_port: PortRef::Number(80),
                ip_family: Default::default(),
                aws_controller: false,
            },
        ));
        services.push((
            ns,
            format!("svc-{g:04}"),
            domain::Service {
                selector: [("app".to_string(), format!("app-{g:04}"))].into(),
                ports: vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    target_port: Some(PortRef::Name("http".into())),
                }],
            },
        ));
    }
    let mut by_uid = HashMap::new();
    let mut pods = Vec::new();
    for (i, p) in w.pods.iter().enumerate() {
        let uid = format!("{:032x}", mix(i as u64 + 1));
        let pod = domain::Pod {
            uid: uid.clone(),
            labels: [
                ("app".to_string(), format!("app-{:04}", p.group)),
                ("pod-template-hash".to_string(), "7d9f8b6c5d".to_string()),
            ]
            .into(),
            created: Some(now_s - 10),
            finished: false,
            ips: vec![pod_ip(i).parse().expect("a loopback address")],
            container_ports: vec![ContainerPort {
                name: "http".into(),
                port: 8080,
            }],
            gates: vec![format!("tgb-{:04}", p.group)],
            conditions: Default::default(),
            containers_ready_since: Some(now_s),
        };
        pods.push((p.ns.clone(), p.name.clone(), pod.clone()));
        by_uid.insert(uid, (i, pod));
    }
    let mut ix = cache.write();
    ix.replace_namespaces(
        namespaces
            .into_iter()
            .map(|ns| (ns, NamespaceSettings::opted_in()))
            .collect(),
    );
    ix.replace_bindings(bindings);
    ix.replace_services(services);
    ix.replace_pods(pods);
    drop(ix);
    cache.notify();
    by_uid
}

// ---------------------------------------------------------------------------------------------
// Figures.

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn dist(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    format!(
        "p50 {:.3} s, p90 {:.3} s, p99 {:.3} s, max {:.3} s (n={})",
        pct(&v, 50.0),
        pct(&v, 90.0),
        pct(&v, 99.0),
        v.last().copied().unwrap_or(f64::NAN),
        v.len()
    )
}

fn p99(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    pct(&v, 99.0)
}

fn p50(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    pct(&v, 50.0)
}

/// Most calls in any window [t, t + 1 s), times in ms.
fn max_in_window(times: &[f64], window_ms: f64) -> usize {
    let mut t = times.to_vec();
    t.sort_by(f64::total_cmp);
    let mut best = 0;
    let mut j = 0;
    for i in 0..t.len() {
        while j < t.len() && t[j] < t[i] + window_ms {
            j += 1;
        }
        best = best.max(j - i);
    }
    best
}

/// The process's CPU time (user + system) in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat; index 11 and 12 after the ")".
    (ticks(11) + ticks(12)) / 100.0
}

fn histogram_mean(metrics: &Metrics, name: &str) -> Option<f64> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &metrics.registry).ok()?;
    let get = |suffix: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("readygate_{name}_{suffix} ")))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
    };
    let (sum, count) = (get("sum")?, get("count")?);
    (count > 0.0).then(|| sum / count)
}

// ---------------------------------------------------------------------------------------------
// One scenario.

struct Outcome1 {
    calls: usize,
    flip_p50: f64,
    flip_p99: f64,
}

async fn run(s: &Scenario, args: &ControllerArgs) -> Outcome1 {
    let w = workload(s);
    let t0 = Instant::now();
    let now_s = jiff::Timestamp::now().as_second();
    let fake = Arc::new(Mutex::new(Fake {
        groups: w
            .arns
            .iter()
            .enumerate()
            .map(|(g, a)| {
                (
                    a.clone(),
                    w.pods
                        .iter()
                        .filter(|p| p.group == g)
                        .map(|p| p.target)
                        .collect(),
                )
            })
            .collect(),
        targets: w
            .pods
            .iter()
            .enumerate()
            .map(|(i, _)| FakeTarget {
                ip: pod_ip(i),
                port: 8080,
                healthy_at: t0 + Duration::from_millis(w.healthy_ms[i]),
                first_healthy_answer: None,
            })
            .collect(),
        calls: Vec::new(),
        throttle_every: s.throttle_every,
    }));
    let (addr, stop_fake) = serve(fake.clone()).await;

    println!();
    println!(
        "== {}: {} target groups x {} pods = {} pods; targets healthy {:.0}-{:.0} s after ready; fake health checks {} s x {}; {}",
        s.name,
        s.groups,
        s.pods_per_group,
        w.pods.len(),
        s.healthy_from_ms as f64 / 1000.0,
        s.healthy_to_ms as f64 / 1000.0,
        HEALTH_CHECK_INTERVAL,
        HEALTHY_THRESHOLD,
        s.throttle_every
            .map_or("no throttling".to_string(), |n| format!(
                "every {n}th call answered Throttling"
            ))
    );
    println!(
        "   controller flags: poll interval {:?}, budget {}/s burst {} (defaults)",
        args.poll_interval, args.elbv2_rate, args.elbv2_burst
    );

    let cache = Arc::new(Cache::default());
    let mut pods = fill_cache(&cache, &w, now_s);
    let metrics = Arc::new(Metrics::new());
    let budget = Arc::new(Budget::new(args.elbv2_rate, args.elbv2_burst));
    let elb = Elbv2::with_endpoint(
        &format!("http://{addr}"),
        "us-west-2",
        budget,
        metrics.clone(),
    )
    .await;
    let (_leader_tx, leader_rx) = watch::channel(true);
    let (jobs_tx, mut jobs_rx) = mpsc::channel::<Job>(4096);
    let (done_tx, done_rx) = mpsc::channel::<Done>(4096);
    let cpu0 = cpu_seconds();
    let controller = {
        let (cache, metrics, args) = (cache.clone(), metrics.clone(), args.clone());
        tokio::spawn(async move {
            readygate::controller::run_loop(
                cache,
                elb,
                metrics,
                &args,
                leader_rx,
                jobs_tx,
                done_rx,
                Default::default(),
            )
            .await
        })
    };

    // The writer.
    let n = w.pods.len();
    let mut first_false: Vec<Option<Instant>> = vec![None; n];
    let mut true_at: Vec<Option<Instant>> = vec![None; n];
    let mut writes = 0usize;
    let mut events = 0usize;
    let mut done_all: Option<Instant> = None;
    let deadline = t0 + s.deadline;
    // Long enough for several poll intervals and the idle backoff to show any stray call.
    let idle = (args.poll_interval * 5).max(Duration::from_secs(10));
    let mut progress = tokio::time::interval_at(
        (t0 + Duration::from_secs(30)).into(),
        Duration::from_secs(30),
    );
    loop {
        let stop_at = done_all.map_or(deadline, |d| (d + idle).min(deadline));
        let job = tokio::select! {
            j = jobs_rx.recv() => j,
            _ = tokio::time::sleep_until(stop_at.into()) => break,
            _ = progress.tick() => {
                let calls = fake.lock().expect("fake lock").calls.len();
                eprintln!(
                    "   ... {:.0} s: {}/{n} pods True, {calls} ELBv2 calls",
                    t0.elapsed().as_secs_f64(),
                    true_at.iter().filter(|t| t.is_some()).count()
                );
                continue;
            }
        };
        let Some(job) = job else { break };
        match job {
            Job::Condition(write, _event) => {
                let at = Instant::now();
                writes += 1;
                if let Some((i, pod)) = pods.get_mut(&write.uid) {
                    let i = *i;
                    if write.condition.status == ConditionStatus::True {
                        true_at[i].get_or_insert(at);
                    } else {
                        first_false[i].get_or_insert(at);
                    }
                    pod.set_condition(&write.binding, write.condition.clone());
                    cache
                        .write()
                        .apply_pod(&write.namespace, &write.pod, pod.clone());
                    cache.notify();
                }
                let _ = done_tx
                    .send(Done {
                        write,
                        outcome: Outcome::Written,
                    })
                    .await;
                if done_all.is_none() && true_at.iter().all(Option::is_some) {
                    done_all = Some(Instant::now());
                }
            }
            Job::Event(_) => events += 1,
        }
    }
    let cpu = cpu_seconds() - cpu0;
    controller.abort();
    let _ = stop_fake.send(());
    let f = fake.lock().expect("fake lock");

    // Calls.
    let ms = |t: Instant| t.saturating_duration_since(t0).as_secs_f64() * 1000.0;
    let times: Vec<f64> = f.calls.iter().map(|c| ms(c.at)).collect();
    let groups_calls = f
        .calls
        .iter()
        .filter(|c| c.action == Action::Groups)
        .count();
    let health_calls = f
        .calls
        .iter()
        .filter(|c| c.action == Action::Health)
        .count();
    let throttled = f.calls.iter().filter(|c| c.throttled).count();
    let first = times.iter().copied().fold(f64::INFINITY, f64::min);
    let last_needed = done_all.map_or(deadline, |d| d);
    let last = f
        .calls
        .iter()
        .filter(|c| c.at <= last_needed)
        .map(|c| ms(c.at))
        .fold(0.0, f64::max);
    let span = ((last - first) / 1000.0).max(0.001);
    let in_span = f.calls.iter().filter(|c| c.at <= last_needed).count();
    let after_done = done_all.map(|d| f.calls.iter().filter(|c| c.at > d).count());
    let limit = args.elbv2_rate + f64::from(args.elbv2_burst);
    let max1 = max_in_window(&times, 1000.0);
    let max10 = max_in_window(&times, 10_000.0);

    let got_true = true_at.iter().filter(|t| t.is_some()).count();
    let got_false = first_false.iter().filter(|t| t.is_some()).count();
    println!(
        "   every pod got its True condition: {} ({got_true}/{n}){}",
        if got_true == n { "yes" } else { "NO" },
        done_all.map_or(
            format!(" — stopped at the {:?} deadline", s.deadline),
            |d| format!(" in {:.1} s", (d - t0).as_secs_f64())
        )
    );
    let initial: Vec<f64> = first_false
        .iter()
        .flatten()
        .map(|t| ms(*t) / 1000.0)
        .collect();
    println!(
        "   initial False condition (Elb.RegistrationInProgress) written for {got_false}/{n} pods; time from start: {}",
        dist(initial)
    );
    println!("   condition writes: {writes}; events: {events}");
    println!(
        "   ELBv2 calls: {} (DescribeTargetGroups {groups_calls}, DescribeTargetHealth {health_calls}; {throttled} answered Throttling)",
        f.calls.len()
    );
    println!(
        "   most calls in any 1 s window: {max1} (limit rate + burst = {limit}: {}); in any 10 s window: {max10} (bucket allows {})",
        if max1 as f64 <= limit {
            "never exceeded"
        } else {
            "EXCEEDED"
        },
        args.elbv2_rate * 10.0 + f64::from(args.elbv2_burst)
    );
    println!(
        "   average rate from the first call to the last True: {:.2}/s over {span:.1} s ({} calls); without the initial burst {:.2}/s (budget {}/s: {})",
        in_span as f64 / span,
        in_span,
        (in_span as f64 - f64::from(args.elbv2_burst)).max(0.0) / span,
        args.elbv2_rate,
        if (in_span as f64 - f64::from(args.elbv2_burst)) / span <= args.elbv2_rate * 1.01 {
            "within"
        } else {
            "ABOVE"
        }
    );
    if let Some(k) = after_done {
        println!(
            "   calls in the {:.0} s after the last True (nothing pending): {k}",
            idle.as_secs_f64()
        );
    }
    println!("   process CPU time during the scenario (controller, fake and writer): {cpu:.2} s");

    let mut flip = Vec::new();
    let mut answer = Vec::new();
    let mut missing_answer = 0;
    for (i, t) in true_at.iter().enumerate() {
        let Some(t) = t else { continue };
        let target = &f.targets[w.pods[i].target];
        flip.push(t.saturating_duration_since(target.healthy_at).as_secs_f64());
        match target.first_healthy_answer {
            Some(a) => answer.push(t.saturating_duration_since(a).as_secs_f64()),
            None => missing_answer += 1,
        }
    }
    println!(
        "   lag, fake starts reporting healthy -> True written: {}",
        dist(flip.clone())
    );
    println!(
        "   lag, first DescribeTargetHealth answer saying healthy -> True written: {}",
        dist(answer)
    );
    if missing_answer > 0 {
        println!("   ({missing_answer} pods went True without an answer saying healthy)");
    }
    if let Some(m) = histogram_mean(&metrics, "healthy_to_written_seconds") {
        println!("   controller's own metric healthy_to_written_seconds: mean {m:.3} s");
    }
    // When each group was first asked about its health, and first answered: how the budget
    // queue orders the groups.
    let mut first_asked: HashMap<&str, f64> = HashMap::new();
    for c in f.calls.iter().filter(|c| !c.throttled) {
        if let Some(a) = &c.arn {
            first_asked.entry(a.as_str()).or_insert(ms(c.at) / 1000.0);
        }
    }
    println!(
        "   first DescribeTargetHealth of each group, time from start: {}",
        dist(first_asked.values().copied().collect())
    );
    // The last group's first poll against the earliest the budget allows it: one token per
    // call made until then, after the initial burst.
    let last_first = first_asked.values().copied().fold(0.0, f64::max);
    let before = f
        .calls
        .iter()
        .filter(|c| ms(c.at) / 1000.0 <= last_first)
        .count();
    println!(
        "   last group's first poll: {last_first:.1} s after start ({}/{} groups polled); the budget allows the {before} calls up to it no sooner than {:.1} s",
        first_asked.len(),
        s.groups,
        (before as f64 - f64::from(args.elbv2_burst)).max(0.0) / args.elbv2_rate
    );
    Outcome1 {
        calls: in_span,
        flip_p50: p50(flip.clone()),
        flip_p99: p99(flip),
    }
}

// ---------------------------------------------------------------------------------------------
// The AWS Load Balancer Controller's way, simulated on the same workload.

const LBC_REQUEUE_MS: u64 = 15_000;

/// One DescribeTargetHealth per binding when its pods become ready, then every 15 s while any
/// of its pods is not healthy; a pod's condition goes True at the first check after it is healthy.
fn lbc(s: &Scenario, w: &Workload) -> (usize, Vec<f64>, usize) {
    let mut calls = 0;
    let mut lag = Vec::new();
    let mut call_times = Vec::new();
    for g in 0..s.groups {
        let healthy: Vec<u64> = w
            .pods
            .iter()
            .filter(|p| p.group == g)
            .map(|p| w.healthy_ms[p.target])
            .collect();
        let last = healthy.iter().copied().max().unwrap_or(0);
        let mut t = 0;
        loop {
            calls += 1;
            call_times.push(t as f64);
            if t >= last {
                break;
            }
            t += LBC_REQUEUE_MS;
        }
        for h in healthy {
            let written = h.div_ceil(LBC_REQUEUE_MS) * LBC_REQUEUE_MS;
            lag.push((written - h) as f64 / 1000.0);
        }
    }
    (calls, lag, max_in_window(&call_times, 1000.0))
}

fn compare(s: &Scenario, ours: &Outcome1) {
    let w = workload(s);
    let (calls, lag, peak) = lbc(s, &w);
    println!(
        "   baseline, AWS Load Balancer Controller (simulated: one DescribeTargetHealth per binding at ready, then every 15 s while any pod is pending;"
    );
    println!(
        "     no client-side budget, and AWS's own throttling — 40 tokens, 10/s per account — not modelled, so its lag is a lower bound):"
    );
    println!(
        "     calls {calls} (most in 1 s: {peak}); lag healthy -> True: {}",
        dist(lag.clone())
    );
    println!(
        "     ratio readygate / LBC: calls {:.2}x; lag p50 {:.2}x, p99 {:.2}x (LBC p50 {:.2} s, p99 {:.2} s vs readygate {:.2} s, {:.2} s)",
        ours.calls as f64 / calls.max(1) as f64,
        ours.flip_p50 / p50(lag.clone()),
        ours.flip_p99 / p99(lag.clone()),
        p50(lag.clone()),
        p99(lag),
        ours.flip_p50,
        ours.flip_p99
    );
}

/// The budget alone under many waiters, as when many groups are due at once: how much CPU the
/// waiting costs and in which order the waiters get their tokens (arrival order would be fair).
async fn budget_under_load(args: &ControllerArgs, waiters: usize) {
    let budget = Arc::new(Budget::new(args.elbv2_rate, args.elbv2_burst));
    let grants = Arc::new(Mutex::new(Vec::new()));
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..waiters {
        let (budget, grants) = (budget.clone(), grants.clone());
        tasks.push(tokio::spawn(async move {
            budget.acquire().await;
            grants
                .lock()
                .expect("grants lock")
                .push((i, start.elapsed().as_secs_f64()));
        }));
        // Arrivals 1 ms apart, so "arrival order" is well defined.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let expected = (waiters as f64 - f64::from(args.elbv2_burst)).max(0.0) / args.elbv2_rate;
    let limit = Duration::from_secs_f64(expected + 2.0);
    for t in tasks {
        let _ = tokio::time::timeout(limit.saturating_sub(start.elapsed()), t).await;
    }
    let cpu = cpu_seconds() - cpu0;
    let grants = grants.lock().expect("grants lock").clone();
    let displaced = grants
        .iter()
        .enumerate()
        .map(|(pos, (i, _))| pos.abs_diff(*i))
        .max()
        .unwrap_or(0);
    let out_of_order = grants.windows(2).filter(|w| w[1].0 < w[0].0).count();
    // The longest wait relative to a FIFO budget (waiter i served at (i - burst) / rate).
    let worst_extra = grants
        .iter()
        .map(|(i, t)| t - (*i as f64 - f64::from(args.elbv2_burst)).max(0.0) / args.elbv2_rate)
        .fold(0.0, f64::max);
    println!();
    println!(
        "== budget alone, {waiters} waiters arriving 1 ms apart: {} granted in {:.1} s, process CPU {cpu:.2} s",
        grants.len(),
        start.elapsed().as_secs_f64()
    );
    println!(
        "   grant order vs arrival: {out_of_order} of {} consecutive grants out of order, a waiter moved up to {displaced} places; \
         worst wait beyond its FIFO turn {worst_extra:.1} s; order: {:?}",
        grants.len().saturating_sub(1),
        grants.iter().map(|(i, _)| *i).collect::<Vec<_>>()
    );
}

/// Cost of one `plan` over many pending pods (the controller runs one per pass).
fn main() {
    // --groups N (large scenario), --small-groups N, --only small|budget|large; every other
    // argument goes to `readygate serve` (e.g. --poll-interval 1s, --elbv2-rate 10).
    let mut groups = 500usize;
    let mut small_groups = 8usize;
    let mut only: Option<String> = None;
    let mut serve_args: Vec<String> = vec!["readygate".into(), "serve".into()];
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--groups" => {
                groups = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(groups)
                    .clamp(1, 2000)
            }
            "--small-groups" => {
                small_groups = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(small_groups)
                    .clamp(1, 200)
            }
            "--only" => only = it.next(),
            _ => serve_args.push(a),
        }
    }
    let cli = match Cli::try_parse_from(&serve_args) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let Command::Serve(serve) = cli.command else {
        unreachable!("serve")
    };
    let controller_args = serve.controller;
    let want = |name: &str| only.as_deref().is_none_or(|o| o == name);

    readygate::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        println!(
            "bench_controller ({} build); ELBv2 fake on 127.0.0.1; wall-clock times on a shared 2-core machine",
            if cfg!(debug_assertions) { "dev" } else { "release" }
        );
        let small = Scenario {
            name: "small (lag)",
            groups: small_groups,
            pods_per_group: 200 / small_groups.min(200),
            healthy_from_ms: 3_000,
            healthy_to_ms: 18_000,
            throttle_every: None,
            deadline: Duration::from_secs(60),
        };
        let large = Scenario {
            name: "large (budget)",
            groups,
            pods_per_group: 2,
            healthy_from_ms: 3_000,
            healthy_to_ms: 18_000,
            throttle_every: Some(50),
            // Two calls per group at the budget's rate, plus backoff after throttles.
            deadline: Duration::from_secs_f64(60.0 + 2.6 * groups as f64 / controller_args.elbv2_rate),
        };
        if want("small") {
            let r = run(&small, &controller_args).await;
            compare(&small, &r);
        }
        if want("budget") {
            budget_under_load(&controller_args, 40).await;
        }
        if want("large") {
            eprintln!(
                "   (the large scenario needs at least {:.0} s: {} groups x 2 calls at {}/s)",
                2.0 * groups as f64 / controller_args.elbv2_rate,
                groups,
                controller_args.elbv2_rate
            );
            let r = run(&large, &controller_args).await;
            compare(&large, &r);
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
}
