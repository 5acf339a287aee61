//! Rollout scenarios and the report: the same rolling update with and without readiness
//! gates, each request through the load balancer counted, each pod's life on a timeline.

use crate::deploy::{Deployment, Rollout};
use crate::elb::TargetState;
use crate::load::{Load, Sample};
use crate::rig::{App, Rig};
use crate::timeline::{Milestone, PodTimeline};
use futures::future::BoxFuture;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// One measured rollout.
#[derive(Debug, Clone)]
pub struct RolloutResult {
    pub revision: String,
    pub rollout: Rollout,
    pub samples: Vec<Sample>,
    /// Pods of the new revision and of the one before it.
    pub pods: Vec<PodTimeline>,
    pub elb_calls: BTreeMap<String, u64>,
    pub load_started: Instant,
    /// batches × (start delay + interval × healthy threshold)
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
        .roll(&rig.store, revision, Duration::from_secs(60))
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
    let calls_before = rig.elb.calls();
    let load = Load::start(app.listener.addr, rate, timeout + Duration::from_secs(30));
    let load_started = load.started;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let roll = dep.roll(&rig.store, revision, timeout);
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
    if rollout.complete() {
        // Let the last targets turn healthy so the tail of the rollout is measured too.
        wait_all_healthy(rig, app, dep.replicas, Duration::from_secs(15)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let samples = load.stop().await;
    let calls = diff(&rig.elb.calls(), &calls_before);
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
    let batches = dep.replicas.div_ceil(dep.max_surge.max(1)) as u32;
    let physical_minimum =
        batches * (start_delay + rig.config.interval * rig.config.healthy_threshold);
    RolloutResult {
        revision: revision.into(),
        rollout,
        samples,
        pods,
        elb_calls: calls,
        load_started,
        physical_minimum,
    }
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
    let duration = r.rollout.duration().map(|d| {
        format!(
            "{} s ({:.2}× the physical minimum {} s)",
            secs(d),
            d.as_secs_f64() / r.physical_minimum.as_secs_f64(),
            secs(r.physical_minimum)
        )
    });
    let calls: Vec<String> = r
        .elb_calls
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    format!(
        "rollout to {}: {}; requests {} sent, {} failed{}; ELBv2 calls {}{}",
        r.revision,
        duration.unwrap_or_else(|| format!(
            "NOT COMPLETE (new ready {}/{}, old left {})",
            r.rollout.new_ready, r.rollout.new_pods, r.rollout.old_pods
        )),
        r.sent(),
        r.failed(),
        if r.failed() > 0 {
            format!(" {:?}", r.failure_kinds())
        } else {
            String::new()
        },
        r.elb_calls_total(),
        if calls.is_empty() {
            String::new()
        } else {
            format!(" ({})", calls.join(", "))
        }
    )
}

/// One mode of the demo: a namespace (gate label on or off), the app, the first deployment,
/// then `rollouts` measured rolling updates.
pub struct ModeReport {
    pub gated: bool,
    pub namespace: String,
    pub rollouts: Vec<RolloutResult>,
}

impl ModeReport {
    pub fn failed(&self) -> usize {
        self.rollouts.iter().map(RolloutResult::failed).sum()
    }

    pub fn sent(&self) -> usize {
        self.rollouts.iter().map(RolloutResult::sent).sum()
    }

    pub fn all_complete(&self) -> bool {
        self.rollouts.iter().all(|r| r.rollout.complete())
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
    pub pre_stop_secs: u64,
    pub rate: u32,
    pub rollouts: usize,
    pub timeout: Duration,
}

impl Default for ModeOptions {
    fn default() -> Self {
        Self {
            replicas: 3,
            start_delay: Duration::from_millis(200),
            pre_stop_secs: 1,
            rate: 50,
            rollouts: 1,
            timeout: Duration::from_secs(60),
        }
    }
}

pub async fn run_mode(
    rig: &Rig,
    namespace: &str,
    gated: bool,
    o: &ModeOptions,
    mut on_rollout: impl FnMut(&RolloutResult),
) -> anyhow::Result<ModeReport> {
    rig.namespace(namespace, gated).await?;
    let app = rig.app(namespace, "web").await?;
    // readygate's caches see the binding and the Service before the first pod is admitted.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let dep = crate::rig::web_deployment(&app, o.replicas, o.start_delay, o.pre_stop_secs);
    deploy(rig, &app, &dep, "v1").await?;
    let mut rollouts = Vec::new();
    for i in 0..o.rollouts {
        let (prev, next) = (format!("v{}", i + 1), format!("v{}", i + 2));
        let r = measured_rollout(rig, &app, &dep, &next, &prev, o.rate, o.timeout, None).await;
        on_rollout(&r);
        rollouts.push(r);
    }
    Ok(ModeReport {
        gated,
        namespace: namespace.into(),
        rollouts,
    })
}

/// The side-by-side summary of the two modes, with the figures the README quotes.
pub fn side_by_side(ungated: &ModeReport, gated: &ModeReport) -> String {
    let mut out = String::new();
    let durations = |m: &ModeReport| {
        let d: Vec<f64> = m
            .rollouts
            .iter()
            .filter_map(|r| r.rollout.duration())
            .map(|d| d.as_secs_f64())
            .collect();
        if d.is_empty() {
            "-".to_string()
        } else {
            format!("{:.2} s", d.iter().sum::<f64>() / d.len() as f64)
        }
    };
    let ratio = |m: &ModeReport| {
        let r: Vec<f64> = m
            .rollouts
            .iter()
            .filter_map(|r| {
                Some(r.rollout.duration()?.as_secs_f64() / r.physical_minimum.as_secs_f64())
            })
            .collect();
        if r.is_empty() {
            "-".to_string()
        } else {
            format!("{:.2}×", r.iter().sum::<f64>() / r.len() as f64)
        }
    };
    let calls = |m: &ModeReport| {
        format!(
            "{:.1}",
            m.rollouts
                .iter()
                .map(RolloutResult::elb_calls_total)
                .sum::<u64>() as f64
                / m.rollouts.len().max(1) as f64
        )
    };
    let row = |out: &mut String, k: &str, a: String, b: String| {
        let _ = writeln!(out, "  {k:<44} {a:>14} {b:>14}");
    };
    row(&mut out, "", "no gates".into(), "readygate".into());
    row(
        &mut out,
        "rollouts",
        ungated.rollouts.len().to_string(),
        gated.rollouts.len().to_string(),
    );
    row(
        &mut out,
        "requests sent",
        ungated.sent().to_string(),
        gated.sent().to_string(),
    );
    row(
        &mut out,
        "requests failed",
        ungated.failed().to_string(),
        gated.failed().to_string(),
    );
    row(
        &mut out,
        "mean rollout duration",
        durations(ungated),
        durations(gated),
    );
    row(
        &mut out,
        "rollout duration / physical minimum",
        ratio(ungated),
        ratio(gated),
    );
    row(
        &mut out,
        "ELBv2 calls per rollout (readygate's)",
        calls(ungated),
        calls(gated),
    );
    let mut lags: Vec<Duration> = gated
        .rollouts
        .iter()
        .flat_map(RolloutResult::gate_lags)
        .collect();
    lags.sort();
    let fmt = |d: Option<Duration>| {
        d.map(|d| format!("{} ms", d.as_millis()))
            .unwrap_or("-".into())
    };
    row(
        &mut out,
        "lag ELB healthy → gate True, p50",
        "-".into(),
        fmt(percentile(&lags, 50.0)),
    );
    row(
        &mut out,
        "lag ELB healthy → gate True, p99",
        "-".into(),
        fmt(percentile(&lags, 99.0)),
    );
    row(
        &mut out,
        "  (over gated pods)",
        "".into(),
        lags.len().to_string(),
    );
    if let Some(r) = gated.rollouts.first() {
        let _ = writeln!(
            out,
            "  physical minimum = batches × (start delay + interval × healthy threshold) = {} s",
            secs(r.physical_minimum)
        );
    }
    out
}

/// The Kubernetes API requests the rig's API server received, grouped by method, path shape,
/// query parameters, content type and status: what readygate's kube-rs client sends.
pub fn api_summary(requests: &[crate::apiserver::http::RecordedRequest]) -> String {
    let plurals: Vec<&str> = crate::apiserver::resources::RESOURCES
        .iter()
        .map(|r| r.plural)
        .collect();
    let mut groups: BTreeMap<String, usize> = BTreeMap::new();
    for r in requests {
        let segs: Vec<&str> = r.path.split('/').collect();
        let shape: Vec<String> = segs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let prev = if i > 0 { segs[i - 1] } else { "" };
                if prev == "namespaces" && segs.len() > i + 1 {
                    "{ns}".to_string()
                } else if (plurals.contains(&prev) && *s != "status")
                    || (prev == "namespaces" && segs.len() == i + 1)
                {
                    "{name}".to_string()
                } else {
                    s.to_string()
                }
            })
            .collect();
        let mut keys: Vec<String> = form_urlencoded::parse(r.query.as_bytes())
            .map(|(k, v)| {
                if k == "watch" || k == "sendInitialEvents" || k == "allowWatchBookmarks" {
                    format!("{k}={v}")
                } else {
                    k.into_owned()
                }
            })
            .collect();
        keys.sort();
        keys.dedup();
        let ct = if r.content_type.is_empty() {
            String::new()
        } else {
            format!(" [{}]", r.content_type)
        };
        let q = if keys.is_empty() {
            String::new()
        } else {
            format!("?{}", keys.join("&"))
        };
        *groups
            .entry(format!(
                "{} {}{q}{ct} → {}",
                r.method,
                shape.join("/"),
                r.status
            ))
            .or_default() += 1;
    }
    groups
        .into_iter()
        .map(|(k, n)| format!("  {n:>5}  {k}\n"))
        .collect()
}
