//! `readygate status`'s decisions: the pods, bindings and Services of a namespace (an `Index`
//! built from what the API server lists) and, when reachable, the leader's `/debug/gates`
//! view, in; one row per gate, sorted with the stuck ones first, and for one pod an
//! explanation in sentences, out. Pure: the fetching lives in `operate`.

use serde::Serialize;

use crate::domain::{
    Binding, ConditionStatus, INJECT_LABEL, INJECT_LABEL_VALUE, Pod, PortRef, gate_type,
};
use crate::gates_view::{GatesView, PendingGate};
use crate::index::Index;
use crate::target;

/// Where the ELB state came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Source {
    /// The leader's `/debug/gates`, read at `url`.
    Controller { url: String },
    /// The pods' conditions alone, and why the controller was not asked.
    Conditions { why: String },
}

impl Source {
    pub fn describe(&self) -> String {
        match self {
            Source::Controller { url } => {
                format!("ELB state from the leading controller ({url})")
            }
            Source::Conditions { why } => format!(
                "ELB state from the pods' conditions alone (the controller was not asked: {why})"
            ),
        }
    }
}

/// One gate of one pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub namespace: String,
    pub pod: String,
    pub binding: String,
    /// `True`, `False`, `Unknown`, `none` (no condition yet) or `missing` (a binding selects
    /// the pod but it has no gate).
    pub status: String,
    pub reason: String,
    pub message: String,
    /// Seconds since pod creation while not True; seconds from creation to True once True.
    pub pending_seconds: Option<i64>,
    pub took_seconds: Option<i64>,
    /// `ip:port`.
    pub target: Option<String>,
    /// The leader's view of this gate, when it was read.
    pub controller: Option<PendingGate>,
}

impl Row {
    fn stuck(&self) -> bool {
        self.status != "True"
    }
}

fn status_word(s: ConditionStatus) -> &'static str {
    s.as_str()
}

fn parse_ms(t: &str) -> Option<i64> {
    t.parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

fn target_of(ix: &Index, ns: &str, pod: &Pod, binding: &str) -> Option<String> {
    let b = ix.binding(ns, binding)?;
    let s = ix.service(ns, &b.service_name)?;
    target::resolve(pod, b, s).ok().map(|t| t.to_string())
}

fn view_of<'a>(
    view: Option<&'a GatesView>,
    ns: &str,
    pod: &str,
    binding: &str,
) -> Option<&'a PendingGate> {
    view?
        .gates
        .iter()
        .find(|g| g.namespace == ns && g.pod == pod && g.binding == binding)
}

/// The gates a binding of the pod's namespace gives it that it does not have.
fn missing(ix: &Index, ns: &str, pod: &Pod) -> Vec<String> {
    if !ix.is_opted_in(ns) || pod.finished {
        return Vec::new();
    }
    ix.gates_for(ns, pod.labels.as_slice())
        .into_iter()
        .filter(|g| !pod.gates.iter().any(|b| gate_type(b) == *g))
        .filter_map(|g| crate::domain::gate_binding(&g).map(str::to_string))
        .collect()
}

/// The rows of one pod: its gates, then the ones it lacks.
pub fn pod_rows(
    ix: &Index,
    ns: &str,
    name: &str,
    pod: &Pod,
    view: Option<&GatesView>,
    now_ms: i64,
) -> Vec<Row> {
    let created_ms = pod.created.map(|c| c * 1000);
    let mut rows = Vec::new();
    for binding in &pod.gates {
        let c = pod.condition(binding);
        let status = c.map_or("none", |c| status_word(c.status));
        let controller = view_of(view, ns, name, binding).cloned();
        let (pending_seconds, took_seconds) = if status == "True" {
            let at = c
                .and_then(|c| c.last_transition_time.as_deref())
                .and_then(parse_ms);
            (
                None,
                at.zip(created_ms).map(|(t, c)| ((t - c) / 1000).max(0)),
            )
        } else {
            (created_ms.map(|c| ((now_ms - c) / 1000).max(0)), None)
        };
        rows.push(Row {
            namespace: ns.into(),
            pod: name.into(),
            binding: binding.clone(),
            status: status.into(),
            reason: c.map(|c| c.reason.clone()).unwrap_or_default(),
            message: c.map(|c| c.message.clone()).unwrap_or_default(),
            pending_seconds,
            took_seconds,
            target: controller
                .as_ref()
                .and_then(|g| g.target.clone())
                .or_else(|| target_of(ix, ns, pod, binding)),
            controller,
        });
    }
    for binding in missing(ix, ns, pod) {
        rows.push(Row {
            namespace: ns.into(),
            pod: name.into(),
            target: target_of(ix, ns, pod, &binding),
            binding,
            status: "missing".into(),
            reason: "ReadinessGateMissing".into(),
            message: "a binding selects this pod but it has no gate for it; delete the pod to have it recreated with the gate".into(),
            pending_seconds: created_ms.map(|c| ((now_ms - c) / 1000).max(0)),
            took_seconds: None,
            controller: None,
        });
    }
    rows
}

/// Every gated pod's rows (and those missing gates): stuck first, longest pending first, then
/// the True ones by namespace and name.
pub fn rows(ix: &Index, view: Option<&GatesView>, now_ms: i64) -> Vec<Row> {
    let mut rows: Vec<Row> = ix
        .pods()
        .filter(|(_, _, p)| !p.finished)
        .flat_map(|(ns, name, pod)| pod_rows(ix, ns, name, pod, view, now_ms))
        .collect();
    rows.sort_by(|a, b| {
        b.stuck()
            .cmp(&a.stuck())
            .then((b.status == "missing").cmp(&(a.status == "missing")))
            .then(b.pending_seconds.cmp(&a.pending_seconds))
            .then_with(|| {
                (&a.namespace, &a.pod, &a.binding).cmp(&(&b.namespace, &b.pod, &b.binding))
            })
    });
    rows
}

/// `1h2m`, `3m4s`, `5s`.
pub fn human(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

/// The rows as a table, the source on the first line. Colour (stuck red, True green) only when
/// asked, i.e. on a terminal.
pub fn render_table(rows: &[Row], source: &Source, colour: bool) -> String {
    let mut table: Vec<[String; 7]> = vec![[
        "NAMESPACE".into(),
        "POD".into(),
        "GATE".into(),
        "STATUS".into(),
        "REASON".into(),
        "AGE".into(),
        "TARGET".into(),
    ]];
    for r in rows {
        let age = match (r.pending_seconds, r.took_seconds) {
            (Some(p), _) => format!("pending {}", human(p)),
            (None, Some(t)) => format!("took {}", human(t)),
            _ => "-".into(),
        };
        table.push([
            r.namespace.clone(),
            r.pod.clone(),
            r.binding.clone(),
            r.status.clone(),
            if r.reason.is_empty() {
                "-".into()
            } else {
                r.reason.clone()
            },
            age,
            r.target.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    let mut widths = [0usize; 7];
    for row in &table {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = format!("# {}\n", source.describe());
    if rows.is_empty() {
        out.push_str("no gated pods\n");
        return out;
    }
    for (i, row) in table.iter().enumerate() {
        let mut line = String::new();
        for (j, (cell, w)) in row.iter().zip(widths).enumerate() {
            let padded = if j == 6 {
                cell.clone()
            } else {
                format!("{cell:<w$}  ")
            };
            let coloured = match (colour && i > 0 && j == 3, cell.as_str()) {
                (false, _) => padded,
                (true, "True") => format!("\x1b[32m{padded}\x1b[0m"),
                (true, _) => format!("\x1b[31m{padded}\x1b[0m"),
            };
            line.push_str(&coloured);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn ago(now_ms: i64, at: &str) -> String {
    match parse_ms(at) {
        Some(t) if t <= now_ms => format!("{} ago, at {at}", human((now_ms - t) / 1000)),
        Some(t) => format!("in {}, at {at}", human((t - now_ms + 999) / 1000)),
        None => format!("at {at}"),
    }
}

/// When a past event happened: ELB's answers and condition transitions. The controller stamps
/// them to the nearest second (as conditions are), so a stamp up to a second ahead of now is an
/// event of the last moment, not one to come; further ahead, the clocks differ and it is said as is.
fn past(now_ms: i64, at: &str) -> String {
    match parse_ms(at) {
        Some(t) if t > now_ms && t - now_ms < 1000 => ago(t, at),
        _ => ago(now_ms, at),
    }
}

fn port_ref(p: &PortRef) -> String {
    match p {
        PortRef::Number(n) => n.to_string(),
        PortRef::Name(s) => format!("{s:?}"),
    }
}

/// How a binding's Service port becomes the pod's target, in words.
fn resolution(pod: &Pod, b: &Binding, svc: &crate::domain::Service) -> String {
    let Some(sp) = svc.ports.iter().find(|p| match &b.service_port {
        PortRef::Number(n) => p.port == *n,
        PortRef::Name(name) => p.name.as_deref() == Some(name),
    }) else {
        return format!(
            "but Service {} has no port {}, so there is no target",
            b.service_name,
            port_ref(&b.service_port)
        );
    };
    let via = match &sp.target_port {
        None => format!("has no targetPort, so the container port is {}", sp.port),
        Some(PortRef::Number(n)) => format!("has targetPort {n}"),
        Some(PortRef::Name(name)) => match pod.container_ports.iter().find(|c| &c.name == name) {
            Some(c) => format!(
                "has targetPort {name:?}, the pod's container port {}",
                c.port
            ),
            None => format!("has targetPort {name:?}, which no container port of the pod is named"),
        },
    };
    let target = match target::resolve(pod, b, svc) {
        Ok(t) => format!("so the target is {t}"),
        Err(e) => format!("so there is no target: {e}"),
    };
    format!(
        "serviceRef.port {} is Service port {}{} which {via}; {target} in target group {}",
        port_ref(&b.service_port),
        sp.port,
        sp.name
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default(),
        if b.target_group_arn.is_empty() {
            "(none yet: the binding has no targetGroupARN)"
        } else {
            &b.target_group_arn
        }
    )
}

fn selector_text(svc: &crate::domain::Service) -> String {
    svc.selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// One pod, explained in sentences.
pub fn explain(
    ix: &Index,
    ns: &str,
    name: &str,
    view: Option<&GatesView>,
    source: &Source,
    now_ms: i64,
) -> Vec<String> {
    let mut out = Vec::new();
    let Some(pod) = ix
        .pods()
        .find(|(n, p, _)| *n == ns && *p == name)
        .map(|(_, _, p)| p)
    else {
        return vec![format!("Pod {ns}/{name} does not exist.")];
    };
    let created = pod
        .created
        .map(|c| format!(", created {} ago", human(now_ms / 1000 - c)))
        .unwrap_or_default();
    out.push(format!(
        "Pod {ns}/{name} (IP {}{created}) has {} readiness gate(s) of readygate's{}.",
        if pod.ips.is_empty() {
            "none yet".to_string()
        } else {
            pod.ips
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        },
        pod.gates.len(),
        if pod.gates.is_empty() {
            String::new()
        } else {
            format!(
                ": {}",
                pod.gates
                    .iter()
                    .map(|g| gate_type(g))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    ));
    if !ix.is_opted_in(ns) {
        out.push(format!(
            "Namespace {ns} is not labelled {INJECT_LABEL}={INJECT_LABEL_VALUE}: readygate injects no gate into its new pods."
        ));
    }
    out.push(source.describe() + ".");
    // Which bindings select the pod, and why.
    let mut selecting = Vec::new();
    for b in ix.bindings(ns) {
        let Some(svc) = ix.service(ns, &b.service_name) else {
            if pod.gates.contains(&b.name) {
                out.push(format!(
                    "TargetGroupBinding {} names Service {}, which does not exist: its gate is released.",
                    b.name, b.service_name
                ));
            }
            continue;
        };
        if !svc.selects(pod.labels.as_slice()) {
            if pod.gates.contains(&b.name) {
                out.push(format!(
                    "TargetGroupBinding {}: its Service {} (selector {}) no longer selects this pod, so the load balancer does not register it: its gate is released.",
                    b.name,
                    b.service_name,
                    selector_text(svc)
                ));
            }
            continue;
        }
        selecting.push(b.name.clone());
        let kind = match b.target_type {
            crate::domain::TargetType::Ip => "targetType ip",
            crate::domain::TargetType::Instance => {
                "targetType instance (node ports, not pod IPs: no gate)"
            }
            crate::domain::TargetType::Unspecified => "no targetType (no gate)",
        };
        out.push(format!(
            "TargetGroupBinding {} ({kind}) selects it: its Service {} has selector {}, which the pod's labels match; {}.",
            b.name,
            b.service_name,
            selector_text(svc),
            resolution(pod, b, svc)
        ));
    }
    if selecting.is_empty() && pod.gates.is_empty() {
        out.push(format!(
            "No TargetGroupBinding in {ns} selects this pod: it needs no gate."
        ));
    }
    for binding in &pod.gates {
        if ix.binding(ns, binding).is_none() {
            out.push(format!(
                "Gate {}: TargetGroupBinding {binding} does not exist (deleted, or never created), so the controller releases it.",
                gate_type(binding)
            ));
        }
        out.extend(gate_sentences(pod, ns, name, binding, view, source, now_ms));
    }
    let lacking = missing(ix, ns, pod);
    if !lacking.is_empty() {
        out.push(format!(
            "Missing gates: {} select(s) this pod but it has no gate for {} (it was created before the binding existed, or while the webhook was unavailable), so the load balancer does not hold its readiness. Delete the pod (`kubectl -n {ns} delete pod {name}`) so that its controller recreates it with the gate.",
            lacking.join(", "),
            if lacking.len() == 1 { "it" } else { "them" }
        ));
    }
    out
}

fn gate_sentences(
    pod: &Pod,
    ns: &str,
    name: &str,
    binding: &str,
    view: Option<&GatesView>,
    source: &Source,
    now_ms: i64,
) -> Vec<String> {
    let mut out = Vec::new();
    let gate = gate_type(binding);
    let c = pod.condition(binding);
    match c {
        None => out.push(format!(
            "Gate {gate} has no condition yet: the pod stays NotReady until the controller writes one (it writes Elb.RegistrationInProgress first)."
        )),
        Some(c) => {
            let since = c
                .last_transition_time
                .as_deref()
                .map(|t| format!(" since {}", past(now_ms, t)))
                .unwrap_or_default();
            out.push(format!(
                "Gate {gate} is {}{since}: {}{}.",
                c.status.as_str(),
                c.reason,
                if c.message.is_empty() {
                    String::new()
                } else {
                    format!(" — {}", c.message)
                }
            ));
            if c.status == ConditionStatus::True {
                if let (Some(t), Some(created)) =
                    (c.last_transition_time.as_deref().and_then(parse_ms), pod.created)
                {
                    out.push(format!(
                        "It turned True {} after the pod was created.",
                        human((t / 1000 - created).max(0))
                    ));
                }
                return out;
            }
        }
    }
    let pending = view_of(view, ns, name, binding);
    match (source, pending) {
        (Source::Controller { .. }, Some(g)) => {
            match g.decision.as_str() {
                "release" => out.push(format!(
                    "The controller is releasing it: {} — {}.",
                    g.reason.as_deref().unwrap_or(""),
                    g.message.as_deref().unwrap_or("")
                )),
                "hold" => out.push(format!(
                    "The controller holds it False without asking ELB: {} — {}.",
                    g.reason.as_deref().unwrap_or(""),
                    g.message.as_deref().unwrap_or("")
                )),
                _ => {}
            }
            match &g.elb {
                Some(e) => out.push(format!(
                    "ELB last said about {} {}: {}{}{}.",
                    g.target.as_deref().unwrap_or("its target"),
                    past(now_ms, &e.at),
                    e.state,
                    e.reason
                        .as_deref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default(),
                    e.description
                        .as_deref()
                        .map(|d| format!(", \"{d}\""))
                        .unwrap_or_default()
                )),
                None if g.decision == "waiting" => out.push(format!(
                    "ELB has not answered about {} since its containers turned ready.",
                    g.target.as_deref().unwrap_or("its target")
                )),
                None => {}
            }
            if g.poll_in_flight {
                out.push("A DescribeTargetHealth call for its target group is in flight.".into());
            } else if let Some(next) = &g.next_poll_at {
                out.push(format!(
                    "The next poll of its target group is due {}.",
                    ago(now_ms, next)
                ));
            } else if g.decision == "waiting" {
                out.push("No poll is scheduled yet (its containers are not ready, or the group's health-check settings are being read).".into());
            }
            if let Some(until) = &g.backing_off_until {
                out.push(format!(
                    "After a failed ELBv2 call the group is backing off until {until}."
                ));
            }
            let policy = &view.map(|v| v.policy.clone()).unwrap_or_default();
            let mut release = vec!["ELB reports the target healthy".to_string()];
            if policy.unused_is_ready {
                release.push("ELB reports it unused (Target.NotInUse) while its target group is attached to no load balancer".into());
            }
            if policy.unavailable_is_ready {
                release.push(
                    "ELB reports health checks disabled (Target.HealthCheckDisabled)".into(),
                );
            }
            out.push(format!(
                "It turns True when {}; also when its binding or Service goes away or stops selecting the pod.",
                release.join(", or when ")
            ));
            match &g.failsafe_at {
                Some(at) => out.push(format!(
                    "The failsafe timeout releases it {} whatever ELB says.",
                    ago(now_ms, at)
                )),
                None => out.push(
                    "No failsafe timeout is set (--failsafe-timeout), so it waits for ELB as long as it takes.".into(),
                ),
            }
        }
        (Source::Controller { .. }, None) => out.push(
            "The leading controller has no pending entry for it (it has no IP yet, or the controller has not caught up with a change).".into(),
        ),
        (Source::Conditions { .. }, _) => out.push(
            "Without the controller's view, what ELB said last is only what the condition above says (the controller writes ELB's reason and description there); when the next poll is due and what the release policy is are unknown.".into(),
        ),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Condition, ContainerPort};
    use crate::gates_view::{ElbAnswer, PolicyView};

    const NOW: i64 = 1_800_000_100_000;

    fn ts(ms: i64) -> String {
        jiff::Timestamp::from_millisecond(ms).unwrap().to_string()
    }

    fn pod(ip: &str, gates: &[&str], conditions: Vec<(String, Condition)>) -> Pod {
        Pod {
            uid: ip.into(),
            labels: vec![("app".into(), "web".into())],
            created: Some(1_800_000_000),
            ips: vec![ip.parse().unwrap()],
            container_ports: vec![ContainerPort {
                name: "http".into(),
                port: 8080,
            }],
            gates: gates.iter().map(|g| g.to_string()).collect(),
            conditions,
            ..Pod::default()
        }
    }

    fn cond(status: ConditionStatus, reason: &str, message: &str, at_ms: i64) -> Condition {
        Condition {
            status,
            reason: reason.into(),
            message: message.into(),
            last_transition_time: Some(ts(at_ms)),
        }
    }

    fn index() -> Index {
        let mut ix =
            crate::index::shop_index(true, "web", "arn:aws:tg/web", PortRef::Name("http".into()));
        ix.apply_pod(
            "shop",
            "web-ready",
            pod(
                "10.0.0.1",
                &["web"],
                vec![(
                    "web".into(),
                    cond(ConditionStatus::True, "Elb.Healthy", "", 1_800_000_012_000),
                )],
            ),
        );
        ix.apply_pod(
            "shop",
            "web-new",
            pod(
                "10.0.0.2",
                &["web"],
                vec![(
                    "web".into(),
                    cond(
                        ConditionStatus::False,
                        "Elb.InitialHealthChecking",
                        "Initial health checks in progress",
                        1_800_000_005_000,
                    ),
                )],
            ),
        );
        ix.apply_pod("shop", "web-old", pod("10.0.0.3", &[], vec![]));
        ix
    }

    fn view() -> GatesView {
        GatesView {
            controller: true,
            leader: true,
            generated_at: ts(NOW),
            policy: PolicyView {
                unused_is_ready: true,
                unavailable_is_ready: true,
                failsafe_timeout_seconds: None,
            },
            gates: vec![PendingGate {
                namespace: "shop".into(),
                pod: "web-new".into(),
                binding: "web".into(),
                decision: "waiting".into(),
                target: Some("10.0.0.2:8080".into()),
                target_group_arn: Some("arn:aws:tg/web".into()),
                elb: Some(ElbAnswer {
                    state: "initial".into(),
                    reason: Some("Elb.InitialHealthChecking".into()),
                    description: Some("Initial health checks in progress".into()),
                    at: ts(NOW - 2_000),
                }),
                next_poll_at: Some(ts(NOW + 3_000)),
                ..PendingGate::default()
            }],
        }
    }

    #[test]
    fn rows_put_the_stuck_first_and_name_targets_and_missing_gates() {
        let ix = index();
        let rows = rows(&ix, None, NOW);
        let summary: Vec<(&str, &str, Option<i64>, Option<i64>)> = rows
            .iter()
            .map(|r| {
                (
                    r.pod.as_str(),
                    r.status.as_str(),
                    r.pending_seconds,
                    r.took_seconds,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("web-old", "missing", Some(100), None),
                ("web-new", "False", Some(100), None),
                ("web-ready", "True", None, Some(12)),
            ]
        );
        // The target comes from the binding's Service port → targetPort "http" → 8080.
        assert_eq!(rows[1].target.as_deref(), Some("10.0.0.2:8080"));
        let table = render_table(
            &rows,
            &Source::Conditions {
                why: "--no-controller".into(),
            },
            false,
        );
        assert!(
            table.starts_with("# ELB state from the pods' conditions alone"),
            "{table}"
        );
        let line = table.lines().find(|l| l.contains("web-new")).unwrap();
        assert!(
            line.contains("False")
                && line.contains("Elb.InitialHealthChecking")
                && line.contains("pending 1m40s")
                && line.ends_with("10.0.0.2:8080"),
            "{line}"
        );
        assert!(table.contains("took 12s"), "{table}");
        assert!(!table.contains('\x1b'));
        assert!(
            render_table(&rows, &Source::Conditions { why: String::new() }, true)
                .contains("\x1b[31m")
        );
    }

    #[test]
    fn past_events_stamped_to_the_second_never_read_as_future() {
        // ELB answered 0.4 s before NOW and the gate turned False then; the controller stamps
        // both to the nearest second (NOW), and the operator asks 0.3 s before NOW.
        let mut ix = index();
        ix.apply_pod(
            "shop",
            "web-new",
            pod(
                "10.0.0.2",
                &["web"],
                vec![(
                    "web".into(),
                    cond(
                        ConditionStatus::False,
                        "Elb.InitialHealthChecking",
                        "Initial health checks in progress",
                        NOW,
                    ),
                )],
            ),
        );
        let mut v = view();
        v.gates[0].elb.as_mut().unwrap().at = ts(NOW);
        let source = Source::Controller {
            url: "http://leader:8080/debug/gates".into(),
        };
        let text = explain(&ix, "shop", "web-new", Some(&v), &source, NOW - 300).join("\n");
        let at = ts(NOW);
        for words in [
            format!("is False since 0s ago, at {at}"),
            format!("ELB last said about 10.0.0.2:8080 0s ago, at {at}"),
        ] {
            assert!(text.contains(&words), "missing {words:?} in:\n{text}");
        }
        assert!(
            !text.contains("since in") && !text.contains("said about 10.0.0.2:8080 in"),
            "{text}"
        );
        // Further ahead than stamping explains (clocks apart): said as it is.
        let text = explain(&ix, "shop", "web-new", Some(&v), &source, NOW - 5_000).join("\n");
        assert!(
            text.contains("ELB last said about 10.0.0.2:8080 in 5s"),
            "{text}"
        );
    }

    #[test]
    fn explain_says_why_the_pod_is_selected_what_elb_said_and_what_releases_it() {
        let ix = index();
        let v = view();
        let source = Source::Controller {
            url: "http://leader:8080/debug/gates".into(),
        };
        let text = explain(&ix, "shop", "web-new", Some(&v), &source, NOW).join("\n");
        for words in [
            "Pod shop/web-new (IP 10.0.0.2, created 1m40s ago) has 1 readiness gate(s) of readygate's: target-health.elbv2.k8s.aws/web.",
            "ELB state from the leading controller (http://leader:8080/debug/gates).",
            "TargetGroupBinding web (targetType ip) selects it: its Service web has selector app=web",
            "serviceRef.port 80 is Service port 80 (http) which has targetPort \"http\", the pod's container port 8080; so the target is 10.0.0.2:8080 in target group arn:aws:tg/web",
            "is False since 1m35s ago",
            "ELB last said about 10.0.0.2:8080 2s ago",
            "initial (Elb.InitialHealthChecking), \"Initial health checks in progress\"",
            "The next poll of its target group is due in 3s",
            "It turns True when ELB reports the target healthy",
            "No failsafe timeout is set",
        ] {
            assert!(text.contains(words), "missing {words:?} in:\n{text}");
        }
        // Without the controller, it says so and does not invent an ELB answer.
        let text = explain(
            &ix,
            "shop",
            "web-new",
            None,
            &Source::Conditions {
                why: "no leader".into(),
            },
            NOW,
        )
        .join("\n");
        assert!(
            text.contains("the controller was not asked: no leader"),
            "{text}"
        );
        assert!(!text.contains("ELB last said"), "{text}");
    }

    #[test]
    fn explain_names_missing_gates_with_the_fix() {
        let text = explain(
            &index(),
            "shop",
            "web-old",
            None,
            &Source::Conditions { why: "x".into() },
            NOW,
        )
        .join("\n");
        assert!(
            text.contains("Missing gates: web select(s) this pod but it has no gate for it")
                && text.contains("kubectl -n shop delete pod web-old"),
            "{text}"
        );
        assert_eq!(
            explain(
                &index(),
                "shop",
                "nope",
                None,
                &Source::Conditions { why: "x".into() },
                NOW
            ),
            ["Pod shop/nope does not exist."]
        );
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(5), "5s");
        assert_eq!(human(125), "2m5s");
        assert_eq!(human(3_720), "1h2m");
    }
}
