//! Rollout scenarios and the report: the same rolling update without readiness gates, with
//! gates only, and with readygate's termination handling too; each request through the load
//! balancer counted and traced to the side of a pod's life it failed on, each pod's life on a
//! timeline.

use crate::deploy::{Deployment, Rollout};
use crate::elb::TargetState;
use crate::load::{Load, Sample};
use crate::rig::{App, Rig};
use crate::timeline::{Milestone, PodTimeline};
use futures::future::BoxFuture;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// The namespace (and pod) annotation readygate reads for its preStop sleep.
pub const PRESTOP_ANNOTATION: &str = "readygate.io/prestop-sleep";

/// The three ways the demo runs the same rolling update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The namespace is not labelled: no gates.
    NoGates,
    /// Labelled, but readygate's termination handling is off for the namespace.
    GatesOnly,
    /// Labelled, with readygate's preStop sleep (its `--prestop-sleep` flag).
    Readygate,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::NoGates, Mode::GatesOnly, Mode::Readygate];

    pub fn title(self) -> &'static str {
        match self {
            Mode::NoGates => "no gates",
            Mode::GatesOnly => "gates only",
            Mode::Readygate => "readygate",
        }
    }

    pub fn namespace(self) -> &'static str {
        match self {
            Mode::NoGates => "no-gates",
            Mode::GatesOnly => "gates-only",
            Mode::Readygate => "readygate",
        }
    }

    pub fn gated(self) -> bool {
        self != Mode::NoGates
    }

    /// The namespace's annotations: gates only turns readygate's preStop sleep off there.
    pub fn annotations(self) -> Value {
        match self {
            Mode::GatesOnly => json!({ PRESTOP_ANNOTATION: "off" }),
            _ => json!({}),
        }
    }
}

/// readygate's `--prestop-sleep` for the rig: the termination window (controller reaction +
/// load balancer propagation) rounded up to whole seconds, plus a second of margin.
pub fn prestop_sleep_arg(config: &crate::rig::RigConfig) -> String {
    format!("--prestop-sleep={}s", prestop_sleep_secs(config))
}

/// The preStop sleep, in seconds, that outlasts the rig's termination window.
pub fn prestop_sleep_secs(config: &crate::rig::RigConfig) -> u64 {
    config.termination_window().as_millis().div_ceil(1000) as u64 + 1
}

/// Which side of a pod's life a failed request fell on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Nothing routable, or a pod not (yet) serving: the start of a pod's life.
    Start,
    /// Sent to a pod that was already terminating.
    Termination,
}

/// One measured rollout.
#[derive(Debug, Clone)]
pub struct RolloutResult {
    pub revision: String,
    pub rollout: Rollout,
    pub samples: Vec<Sample>,
    /// Pods of the new revision and of the one before it.
    pub pods: Vec<PodTimeline>,
    pub elb_calls: BTreeMap<String, u64>,
    /// The load balancer controller model's ELBv2 calls meanwhile (its own caller).
    pub lbc_calls: BTreeMap<String, u64>,
    pub load_started: Instant,
    /// When the last pod of the previous revision was gone (its termination finished).
    pub drained: Option<Instant>,
    /// batches × (start delay + interval × healthy threshold) + termination window
    pub physical_minimum: Duration,
}

impl RolloutResult {
    pub fn sent(&self) -> usize {
        self.samples.len()
    }

    pub fn failed(&self) -> usize {
        self.samples.iter().filter(|s| !s.ok()).count()
    }

    pub fn elb_calls_total(&self) -> u64 {
        self.elb_calls.values().sum()
    }

    pub fn lbc_calls_total(&self) -> u64 {
        self.lbc_calls.values().sum()
    }

    /// Time from "healthy in the load balancer" to "gate True", per new gated pod.
    pub fn gate_lags(&self) -> Vec<Duration> {
        self.pods
            .iter()
            .filter(|p| p.revision == self.revision)
            .filter_map(|p| {
                Some(
                    p.at.get(&Milestone::GateTrue)?
                        .saturating_duration_since(*p.at.get(&Milestone::ElbHealthy)?),
                )
            })
            .collect()
    }

    /// From the start of the rollout until the last old pod was gone: what the rollout costs,
    /// its termination side included (a Deployment calls itself complete earlier, as soon as
    /// no old pod is left that is not terminating).
    pub fn duration(&self) -> Option<Duration> {
        Some(self.drained?.max(self.rollout.finished?) - self.rollout.started)
    }

    /// The side of a pod's life a failed request fell on: a request the load balancer sent to
    /// a pod that was terminating by the time the request failed is a termination-side failure
    /// (one sent a moment before the pod's deletion reaches it after its listener closed), any
    /// other one (nothing routable, a pod not serving yet) a start-side one.
    pub fn phase(&self, sample: &Sample) -> Phase {
        let ip = sample
            .target
            .as_deref()
            .and_then(|t| t.parse::<std::net::SocketAddr>().ok())
            .map(|a| a.ip().to_string());
        let terminating = ip.is_some_and(|ip| {
            self.pods.iter().any(|p| {
                p.ip == ip
                    && p.at
                        .get(&Milestone::Terminating)
                        .is_some_and(|t| *t <= sample.at + sample.latency)
            })
        });
        if terminating {
            Phase::Termination
        } else {
            Phase::Start
        }
    }

    /// Failed requests on the start side and on the termination side.
    pub fn failed_by_phase(&self) -> (usize, usize) {
        self.samples
            .iter()
            .filter(|s| !s.ok())
            .fold((0, 0), |(start, end), s| match self.phase(s) {
                Phase::Start => (start + 1, end),
                Phase::Termination => (start, end + 1),
            })
    }

    /// Failures grouped by what the client saw.
    pub fn failure_kinds(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for s in self.samples.iter().filter(|s| !s.ok()) {
            let k = match &s.outcome {
                Ok(code) => format!("HTTP {code}"),
                Err(e) => e.clone(),
            };
            *out.entry(k).or_default() += 1;
        }
        out
    }
}

fn diff(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// Waits until every registered target of the app's group is healthy and there are `n` of them.
pub async fn wait_all_healthy(rig: &Rig, app: &App, n: usize, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let health = rig
            .elb
            .describe_target_health(&app.arn, &[])
            .unwrap_or_default();
        let live: Vec<_> = health
            .iter()
            .filter(|h| h.state != TargetState::Draining)
            .collect();
        if live.len() == n && live.iter().all(|h| h.state == TargetState::Healthy) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Deploys the first revision and waits for it to be fully healthy behind the load balancer.
pub async fn deploy(rig: &Rig, app: &App, dep: &Deployment, revision: &str) -> anyhow::Result<()> {
    let r = dep
        .roll(&rig.client, revision, Duration::from_secs(60))
        .await;
    anyhow::ensure!(
        r.complete(),
        "initial deployment of {revision} did not complete: {r:?}"
    );
    anyhow::ensure!(
        wait_all_healthy(rig, app, dep.replicas, Duration::from_secs(30)).await,
        "initial targets never all healthy"
    );
    Ok(())
}

/// Something to do while the rollout runs (after `after`), such as restarting readygate.
pub struct Interlude {
    pub after: Duration,
    pub action: BoxFuture<'static, ()>,
}

/// Rolls `dep` to `revision` under steady load through the app's listener and measures it.
#[allow(clippy::too_many_arguments)]
pub async fn measured_rollout(
    rig: &Rig,
    app: &App,
    dep: &Deployment,
    revision: &str,
    previous: &str,
    rate: u32,
    timeout: Duration,
    interlude: Option<Interlude>,
) -> RolloutResult {
    let calls_before = rig.elb.calls_but(crate::lbc::CALLER);
    let lbc_calls_before = rig.elb.calls_by(crate::lbc::CALLER);
    let load = Load::start(app.listener.addr, rate, timeout + Duration::from_secs(30));
    let load_started = load.started;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let roll = dep.roll(&rig.client, revision, timeout);
    let rollout = match interlude {
        Some(i) => {
            let side = async move {
                tokio::time::sleep(i.after).await;
                i.action.await;
            };
            tokio::join!(roll, side).0
        }
        None => roll.await,
    };
    let mut drained = None;
    if rollout.complete() {
        // The tail of the rollout is measured too: the old pods' termination (the load balancer
        // may route to a deleted pod for the whole termination window, even after it is gone)
        // and the last targets turning healthy.
        drained = wait_revision_gone(rig, app, previous, Duration::from_secs(60)).await;
        let last_deleted = rig
            .timeline
            .pods(&app.namespace)
            .iter()
            .filter(|p| p.revision == previous)
            .filter_map(|p| p.at.get(&Milestone::Terminating).copied())
            .max();
        if let Some(t) = last_deleted {
            let until = t + rig.config.termination_window() + Duration::from_millis(500);
            tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
        }
        wait_all_healthy(rig, app, dep.replicas, Duration::from_secs(15)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let samples = load.stop().await;
    let calls = diff(&rig.elb.calls_but(crate::lbc::CALLER), &calls_before);
    let lbc_calls = diff(&rig.elb.calls_by(crate::lbc::CALLER), &lbc_calls_before);
    let pods = rig
        .timeline
        .pods(&app.namespace)
        .into_iter()
        .filter(|p| p.revision == revision || p.revision == previous)
        .collect();
    let start_delay = dep
        .template
        .pointer(&format!(
            "/metadata/annotations/{}",
            crate::kubelet::START_DELAY_ANNOTATION.replace('/', "~1")
        ))
        .and_then(|v| v.as_str())
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis)
        .unwrap_or_default();
    RolloutResult {
        revision: revision.into(),
        rollout,
        samples,
        pods,
        elb_calls: calls,
        lbc_calls,
        load_started,
        drained,
        physical_minimum: physical_minimum(rig, dep, start_delay),
    }
}

/// The shortest rollout that loses nothing: each batch of new pods must start and pass
/// `healthy threshold` health checks before old pods may go, and the last old pod must keep
/// serving for the termination window (the controller's reaction plus the load balancer's
/// propagation) after its deletion; earlier old pods terminate while the next batch starts.
pub fn physical_minimum(rig: &Rig, dep: &Deployment, start_delay: Duration) -> Duration {
    let batches = dep.replicas.div_ceil(dep.max_surge.max(1)) as u32;
    batches * (start_delay + rig.config.interval * rig.config.healthy_threshold)
        + rig.config.termination_window()
}

/// Waits until no pod of `revision` is left in the app's namespace; returns when that was.
pub async fn wait_revision_gone(
    rig: &Rig,
    app: &App,
    revision: &str,
    timeout: Duration,
) -> Option<Instant> {
    let selector = format!(
        "app={},{}={revision}",
        app.name,
        crate::deploy::REVISION_LABEL
    );
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if rig
            .pods(&app.namespace, &selector)
            .await
            .is_ok_and(|p| p.is_empty())
        {
            return Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    Some(sorted[idx.min(sorted.len() - 1)])
}

fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

/// The per-pod timeline of one rollout, times in seconds from the start of its load.
pub fn timeline_table(r: &RolloutResult) -> String {
    let mut out = String::new();
    let _ = write!(out, "  {:<22}", "pod");
    for m in Milestone::ALL {
        let _ = write!(out, " {:>12}", m.label());
    }
    out.push('\n');
    let mut pods = r.pods.clone();
    pods.sort_by_key(|p| {
        (
            p.revision != r.revision,
            p.at.get(&Milestone::Created).copied(),
        )
    });
    for p in pods {
        let _ = write!(out, "  {:<22}", p.name);
        for m in Milestone::ALL {
            let cell = match p.at.get(&m) {
                Some(t) if *t >= r.load_started => secs(t.duration_since(r.load_started)),
                Some(_) => "before".into(),
                None => "-".into(),
            };
            let _ = write!(out, " {cell:>12}");
        }
        out.push('\n');
    }
    out
}

pub fn summary_line(r: &RolloutResult) -> String {
    let duration = match (r.rollout.duration(), r.duration()) {
        (Some(deployment), Some(total)) => format!(
            "{} s until the last old pod was gone ({:.2}× the physical minimum {} s; the Deployment was complete after {} s)",
            secs(total),
            total.as_secs_f64() / r.physical_minimum.as_secs_f64(),
            secs(r.physical_minimum),
            secs(deployment)
        ),
        (Some(deployment), None) => format!(
            "Deployment complete after {} s, but old pods were still there",
            secs(deployment)
        ),
        _ => format!(
            "NOT COMPLETE (new ready {}/{}, old left {})",
            r.rollout.new_ready, r.rollout.new_pods, r.rollout.old_pods
        ),
    };
    let calls: Vec<String> = r
        .elb_calls
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let (start, end) = r.failed_by_phase();
    format!(
        "rollout to {}: {duration}; requests {} sent, {} failed{}; ELBv2 calls {}{}; \
         the load balancer controller's {}",
        r.revision,
        r.sent(),
        r.failed(),
        if r.failed() > 0 {
            format!(
                " (start side {start}, termination side {end}: {:?})",
                r.failure_kinds()
            )
        } else {
            String::new()
        },
        r.elb_calls_total(),
        if calls.is_empty() {
            String::new()
        } else {
            format!(" ({})", calls.join(", "))
        },
        r.lbc_calls_total()
    )
}

/// One mode of the demo: a namespace (gate label on or off, annotations), the app, the first
/// deployment, then `rollouts` measured rolling updates.
pub struct ModeReport {
    pub mode: Mode,
    pub namespace: String,
    pub rollouts: Vec<RolloutResult>,
}

impl ModeReport {
    pub fn failed(&self) -> usize {
        self.rollouts.iter().map(RolloutResult::failed).sum()
    }

    /// Failed requests on the start side and on the termination side, over every rollout.
    pub fn failed_by_phase(&self) -> (usize, usize) {
        self.rollouts
            .iter()
            .map(RolloutResult::failed_by_phase)
            .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
    }

    pub fn sent(&self) -> usize {
        self.rollouts.iter().map(RolloutResult::sent).sum()
    }

    pub fn all_complete(&self) -> bool {
        self.rollouts
            .iter()
            .all(|r| r.rollout.complete() && r.drained.is_some())
    }

    /// New pods of every rollout that carry no readiness gate.
    pub fn ungated_new_pods(&self) -> usize {
        self.rollouts
            .iter()
            .flat_map(|r| r.pods.iter().filter(move |p| p.revision == r.revision))
            .filter(|p| p.gates.is_empty())
            .count()
    }
}

pub struct ModeOptions {
    pub replicas: usize,
    pub start_delay: Duration,
    /// A preStop sleep the application brings itself (the demo's has none).
    pub own_pre_stop_secs: Option<u64>,
    pub rate: u32,
    pub rollouts: usize,
    pub timeout: Duration,
}

impl Default for ModeOptions {
    fn default() -> Self {
        Self {
            replicas: 3,
            start_delay: Duration::from_millis(200),
            own_pre_stop_secs: None,
            rate: 50,
            rollouts: 1,
            timeout: Duration::from_secs(60),
        }
    }
}

/// The mode's namespace and app, with `v1` deployed and healthy behind the load balancer.
pub async fn deployed_app(
    rig: &Rig,
    mode: Mode,
    o: &ModeOptions,
) -> anyhow::Result<(App, Deployment)> {
    let namespace = rig.ns(mode.namespace());
    rig.annotated_namespace(&namespace, mode.gated(), mode.annotations())
        .await?;
    let app = rig.app(&namespace, "web").await?;
    // readygate's caches see the binding and the Service before the first pod is admitted.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let dep = crate::rig::web_deployment(&app, o.replicas, o.start_delay, o.own_pre_stop_secs);
    deploy(rig, &app, &dep, "v1").await?;
    Ok((app, dep))
}

/// Creates the mode's namespace and app, deploys `v1`, then measures `o.rollouts` rollouts.
pub async fn run_mode(
    rig: &Rig,
    mode: Mode,
    o: &ModeOptions,
    mut on_rollout: impl FnMut(&RolloutResult),
) -> anyhow::Result<ModeReport> {
    let (app, dep) = deployed_app(rig, mode, o).await?;
    let mut rollouts = Vec::new();
    for i in 0..o.rollouts {
        let (prev, next) = (format!("v{}", i + 1), format!("v{}", i + 2));
        let r = measured_rollout(rig, &app, &dep, &next, &prev, o.rate, o.timeout, None).await;
        on_rollout(&r);
        rollouts.push(r);
    }
    Ok(ModeReport {
        mode,
        namespace: app.namespace.clone(),
        rollouts,
    })
}

/// The side-by-side summary of the modes, with the figures README.md and docs/benchmarks.md quote.
pub fn side_by_side(modes: &[ModeReport]) -> String {
    let mut out = String::new();
    let mean = |v: Vec<f64>, fmt: &dyn Fn(f64) -> String| {
        if v.is_empty() {
            "-".to_string()
        } else {
            fmt(v.iter().sum::<f64>() / v.len() as f64)
        }
    };
    let row = |out: &mut String, k: &str, cells: Vec<String>| {
        let _ = write!(out, "  {k:<44}");
        for c in cells {
            let _ = write!(out, " {c:>14}");
        }
        out.push('\n');
    };
    let each = |f: &dyn Fn(&ModeReport) -> String| modes.iter().map(f).collect::<Vec<_>>();
    row(&mut out, "", each(&|m| m.mode.title().to_string()));
    row(
        &mut out,
        "rollouts",
        each(&|m| m.rollouts.len().to_string()),
    );
    row(&mut out, "requests sent", each(&|m| m.sent().to_string()));
    row(
        &mut out,
        "requests failed",
        each(&|m| m.failed().to_string()),
    );
    row(
        &mut out,
        "  on the start side",
        each(&|m| m.failed_by_phase().0.to_string()),
    );
    row(
        &mut out,
        "  on the termination side",
        each(&|m| m.failed_by_phase().1.to_string()),
    );
    row(
        &mut out,
        "mean rollout duration (old pods gone)",
        each(&|m| {
            mean(
                m.rollouts
                    .iter()
                    .filter_map(|r| r.duration())
                    .map(|d| d.as_secs_f64())
                    .collect(),
                &|x| format!("{x:.2} s"),
            )
        }),
    );
    row(
        &mut out,
        "rollout duration / physical minimum",
        each(&|m| {
            mean(
                m.rollouts
                    .iter()
                    .filter_map(|r| {
                        Some(r.duration()?.as_secs_f64() / r.physical_minimum.as_secs_f64())
                    })
                    .collect(),
                &|x| format!("{x:.2}×"),
            )
        }),
    );
    let per_rollout = |m: &ModeReport, calls: fn(&RolloutResult) -> u64| {
        format!(
            "{:.1}",
            m.rollouts.iter().map(calls).sum::<u64>() as f64 / m.rollouts.len().max(1) as f64
        )
    };
    row(
        &mut out,
        "ELBv2 calls per rollout (readygate's)",
        each(&|m| per_rollout(m, RolloutResult::elb_calls_total)),
    );
    row(
        &mut out,
        "ELBv2 calls per rollout (AWS LBC's)",
        each(&|m| per_rollout(m, RolloutResult::lbc_calls_total)),
    );
    let lags = |m: &ModeReport| {
        let mut l: Vec<Duration> = m
            .rollouts
            .iter()
            .flat_map(RolloutResult::gate_lags)
            .collect();
        l.sort();
        l
    };
    let fmt = |d: Option<Duration>| {
        d.map(|d| format!("{} ms", d.as_millis()))
            .unwrap_or("-".into())
    };
    row(
        &mut out,
        "lag ELB healthy → gate True, p50",
        each(&|m| fmt(percentile(&lags(m), 50.0))),
    );
    row(
        &mut out,
        "lag ELB healthy → gate True, p99",
        each(&|m| fmt(percentile(&lags(m), 99.0))),
    );
    if let Some(r) = modes.iter().find_map(|m| m.rollouts.first()) {
        let _ = writeln!(
            out,
            "  physical minimum = batches × (start delay + interval × healthy threshold) + termination window = {} s",
            secs(r.physical_minimum)
        );
    }
    out
}

/// The Kubernetes API requests readygate's ServiceAccount made, as the real API server's audit
/// log recorded them: per verb, resource (and subresource), namespace scope and response code.
pub fn api_summary(requests: &[crate::k8s::audit::Request]) -> String {
    let mut groups: BTreeMap<String, usize> = BTreeMap::new();
    for r in requests
        .iter()
        .filter(|r| r.user == crate::k8s::audit::READYGATE_USER)
    {
        let resource = match (r.group.as_str(), r.subresource.as_str()) {
            (_, "") if r.resource.is_empty() => "(non-resource)".to_string(),
            ("", "") => r.resource.clone(),
            ("", sub) => format!("{}/{sub}", r.resource),
            (g, "") => format!("{g}/{}", r.resource),
            (g, sub) => format!("{g}/{}/{sub}", r.resource),
        };
        let scope = if r.namespace.is_empty() {
            ""
        } else {
            " (namespaced)"
        };
        *groups
            .entry(format!("{} {resource}{scope} → {}", r.verb, r.code))
            .or_default() += 1;
    }
    groups
        .into_iter()
        .map(|(k, n)| format!("  {n:>5}  {k}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(pod_terminating: Instant, samples: Vec<Sample>) -> RolloutResult {
        let started = pod_terminating - Duration::from_secs(1);
        RolloutResult {
            revision: "v2".into(),
            rollout: Rollout {
                revision: "v2".into(),
                started,
                finished: None,
                created: vec![],
                deleted: vec![],
                new_pods: 0,
                new_ready: 0,
                old_pods: 0,
            },
            samples,
            pods: vec![PodTimeline {
                namespace: "demo".into(),
                name: "web-old".into(),
                revision: "v1".into(),
                ip: "10.244.0.7".into(),
                gates: vec![],
                at: BTreeMap::from([(Milestone::Terminating, pod_terminating)]),
            }],
            elb_calls: BTreeMap::new(),
            lbc_calls: BTreeMap::new(),
            load_started: started,
            drained: None,
            physical_minimum: Duration::from_secs(1),
        }
    }

    fn failed(at: Instant, latency: Duration, target: Option<&str>) -> Sample {
        Sample {
            at,
            latency,
            outcome: Ok(502),
            pod: None,
            target: target.map(str::to_string),
        }
    }

    #[test]
    fn a_request_that_reached_a_pod_after_it_began_terminating_is_a_termination_failure() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let r = result(
            t,
            vec![
                // sent 2 ms before the pod began terminating, refused 3 ms later
                failed(t - ms(2), ms(5), Some("10.244.0.7:8080")),
                // sent after
                failed(t + ms(1), ms(1), Some("10.244.0.7:8080")),
                // failed before the pod began terminating
                failed(t - ms(9), ms(2), Some("10.244.0.7:8080")),
                // nothing routable
                failed(t + ms(1), ms(1), None),
                // a pod that is not terminating
                failed(t + ms(1), ms(1), Some("10.244.0.8:8080")),
            ],
        );
        assert_eq!(r.failed_by_phase(), (3, 2));
    }
}
