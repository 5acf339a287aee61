//! What the real API server recorded: its audit log (who made which request, and its answer),
//! read against the RBAC rules readygate ships, and its own admission-webhook latency histogram.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

/// readygate's ServiceAccount as the API server names the user.
pub const READYGATE_USER: &str = "system:serviceaccount:readygate-system:readygate";

/// One request of the audit log (stage ResponseComplete).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Request {
    pub user: String,
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    pub code: u16,
    /// `requestReceivedTimestamp`, RFC 3339 with microseconds.
    pub at: String,
    /// The pod a bound ServiceAccount token was issued for (the user's extra
    /// `authentication.kubernetes.io/pod-name`), empty for other credentials.
    pub pod: String,
    /// The client's address (the first of `sourceIPs`).
    pub source_ip: String,
}

/// The requests of the audit log at `path`, in order.
pub fn requests(path: &Path) -> anyhow::Result<Vec<Request>> {
    let text = std::fs::read_to_string(path)?;
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["stage"] == "ResponseComplete")
        .map(|e| Request {
            user: s(&e["user"]["username"]),
            verb: s(&e["verb"]),
            group: s(&e["objectRef"]["apiGroup"]),
            resource: s(&e["objectRef"]["resource"]),
            subresource: s(&e["objectRef"]["subresource"]),
            namespace: s(&e["objectRef"]["namespace"]),
            name: s(&e["objectRef"]["name"]),
            code: e["responseStatus"]["code"].as_u64().unwrap_or_default() as u16,
            at: s(&e["requestReceivedTimestamp"]),
            pod: s(&e["user"]["extra"]["authentication.kubernetes.io/pod-name"][0]),
            source_ip: s(&e["sourceIPs"][0]),
        })
        .collect())
}

/// A (verb, group, resource[/subresource]) a rule grants or a request used.
pub type Permission = (String, String, String);

fn resource_name(resource: &str, subresource: &str) -> String {
    if subresource.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}/{subresource}")
    }
}

/// Every (verb, group, resource) the Roles and ClusterRoles of `rbac_yaml` grant.
pub fn granted(rbac_yaml: &str) -> anyhow::Result<BTreeSet<Permission>> {
    let mut out = BTreeSet::new();
    for doc in crate::k8s::install::documents(rbac_yaml)? {
        if doc["kind"] != "Role" && doc["kind"] != "ClusterRole" {
            continue;
        }
        for rule in doc["rules"].as_array().into_iter().flatten() {
            let list = |k: &str| -> Vec<String> {
                rule[k]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            };
            for g in list("apiGroups") {
                for r in list("resources") {
                    for v in list("verbs") {
                        out.insert((v.clone(), g.clone(), r.clone()));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// readygate's use of its grants, from an audit log.
#[derive(Debug, Default)]
pub struct RbacUse {
    /// Requests per permission readygate used.
    pub used: BTreeMap<Permission, usize>,
    /// Requests the authoriser denied (403), per permission.
    pub denied: BTreeMap<Permission, usize>,
    /// Granted, never used.
    pub unused: BTreeSet<Permission>,
}

pub fn rbac_use(requests: &[Request], granted: &BTreeSet<Permission>) -> RbacUse {
    let mut u = RbacUse::default();
    for r in requests.iter().filter(|r| r.user == READYGATE_USER) {
        // Non-resource requests (discovery, /version) carry no resource.
        if r.resource.is_empty() {
            continue;
        }
        let p = (
            r.verb.clone(),
            r.group.clone(),
            resource_name(&r.resource, &r.subresource),
        );
        if r.code == 403 {
            *u.denied.entry(p).or_default() += 1;
        } else {
            *u.used.entry(p).or_default() += 1;
        }
    }
    u.unused = granted
        .iter()
        .filter(|g| !u.used.contains_key(*g))
        .cloned()
        .collect();
    u
}

impl RbacUse {
    pub fn report(&self) -> String {
        let mut out = String::new();
        let p = |(v, g, r): &Permission| {
            format!(
                "{v} {}{r}",
                if g.is_empty() {
                    String::new()
                } else {
                    format!("{g}/")
                }
            )
        };
        for (perm, n) in &self.used {
            let _ = writeln!(out, "  used     {:<44} {n:>6} requests", p(perm));
        }
        for (perm, n) in &self.denied {
            let _ = writeln!(out, "  DENIED   {:<44} {n:>6} requests", p(perm));
        }
        for perm in &self.unused {
            let _ = writeln!(out, "  unused   {}", p(perm));
        }
        out
    }
}

/// One series of a Prometheus histogram: cumulative bucket counts by upper bound.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    pub buckets: Vec<(f64, f64)>,
    pub count: f64,
    pub sum: f64,
}

impl Histogram {
    /// The `q` quantile as Prometheus' `histogram_quantile` estimates it: linear
    /// interpolation inside the bucket that holds it.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        if total == 0.0 {
            return None;
        }
        let rank = q * total;
        let mut prev = (0.0, 0.0);
        for &(le, c) in &self.buckets {
            if c >= rank {
                if le.is_infinite() {
                    return Some(prev.0);
                }
                let width = le - prev.0;
                let inside = c - prev.1;
                return Some(if inside == 0.0 {
                    le
                } else {
                    prev.0 + width * (rank - prev.1) / inside
                });
            }
            prev = (le, c);
        }
        None
    }

    /// The difference `self - before` (the observations between two scrapes).
    pub fn since(&self, before: &Histogram) -> Histogram {
        Histogram {
            buckets: self
                .buckets
                .iter()
                .map(|(le, c)| {
                    let b = before
                        .buckets
                        .iter()
                        .find(|(l, _)| l == le)
                        .map_or(0.0, |(_, c)| *c);
                    (*le, c - b)
                })
                .collect(),
            count: self.count - before.count,
            sum: self.sum - before.sum,
        }
    }
}

/// The histogram `name` from a Prometheus text exposition, summed over the series whose labels
/// include every `(label, value)` of `matching`.
pub fn histogram(text: &str, name: &str, matching: &[(&str, &str)]) -> Histogram {
    let mut buckets: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    let mut h = Histogram::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (metric, labels) = match series.split_once('{') {
            Some((m, l)) => (m, l.trim_end_matches('}')),
            None => (series, ""),
        };
        let label = |k: &str| {
            labels.split(',').find_map(|kv| {
                let (lk, lv) = kv.split_once('=')?;
                (lk == k).then(|| lv.trim_matches('"').to_string())
            })
        };
        if !matching
            .iter()
            .all(|(k, v)| label(k).as_deref() == Some(*v))
        {
            continue;
        }
        if metric == format!("{name}_bucket") {
            let le = label("le").unwrap_or_default();
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::NAN)
            };
            buckets.entry(le).or_insert((bound, 0.0)).1 += value;
        } else if metric == format!("{name}_count") {
            h.count += value;
        } else if metric == format!("{name}_sum") {
            h.sum += value;
        }
    }
    h.buckets = buckets.into_values().collect();
    h.buckets
        .sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    h
}

/// The name of readygate's webhook in `apiserver_admission_webhook_admission_duration_seconds`.
pub const WEBHOOK_NAME: &str = "pod-readiness-gate.readygate.io";
pub const ADMISSION_METRIC: &str = "apiserver_admission_webhook_admission_duration_seconds";

/// The API server's admission latency histogram for readygate's webhook, from its `/metrics`.
pub async fn admission_latency(client: &kube::Client) -> anyhow::Result<Histogram> {
    let text = client
        .request_text(http::Request::get("/metrics").body(Vec::new())?)
        .await?;
    Ok(histogram(
        &text,
        ADMISSION_METRIC,
        &[("name", WEBHOOK_NAME), ("type", "admit")],
    ))
}

/// The sum of counter `name` over the series whose labels include every `(label, value)` of
/// `matching`, from a Prometheus text exposition.
pub fn counter(text: &str, name: &str, matching: &[(&str, &str)]) -> f64 {
    let h = histogram(
        &text.replace(&format!("{name}{{"), &format!("{name}_count{{")),
        name,
        matching,
    );
    h.count
}

/// Calls of readygate's webhook that did not admit cleanly, as the API server counts them:
/// failed open (an error, ignored by `failurePolicy: Ignore`, so the pod got no gate) or
/// rejected.
pub async fn admission_failures(client: &kube::Client) -> anyhow::Result<f64> {
    let text = client
        .request_text(http::Request::get("/metrics").body(Vec::new())?)
        .await?;
    let m = [("name", WEBHOOK_NAME)];
    Ok(
        counter(&text, "apiserver_admission_webhook_fail_open_count", &m)
            + counter(&text, "apiserver_admission_webhook_rejection_count", &m),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_the_bucket_as_histogram_quantile_does() {
        let text = "# HELP x y\n\
            apiserver_admission_webhook_admission_duration_seconds_bucket{name=\"pod-readiness-gate.readygate.io\",operation=\"CREATE\",rejected=\"false\",type=\"admit\",le=\"0.005\"} 10\n\
            apiserver_admission_webhook_admission_duration_seconds_bucket{name=\"pod-readiness-gate.readygate.io\",operation=\"CREATE\",rejected=\"false\",type=\"admit\",le=\"0.025\"} 90\n\
            apiserver_admission_webhook_admission_duration_seconds_bucket{name=\"pod-readiness-gate.readygate.io\",operation=\"CREATE\",rejected=\"false\",type=\"admit\",le=\"0.1\"} 100\n\
            apiserver_admission_webhook_admission_duration_seconds_bucket{name=\"pod-readiness-gate.readygate.io\",operation=\"CREATE\",rejected=\"false\",type=\"admit\",le=\"+Inf\"} 100\n\
            apiserver_admission_webhook_admission_duration_seconds_count{name=\"pod-readiness-gate.readygate.io\",operation=\"CREATE\",rejected=\"false\",type=\"admit\"} 100\n\
            apiserver_admission_webhook_admission_duration_seconds_bucket{name=\"other\",operation=\"CREATE\",rejected=\"false\",type=\"admit\",le=\"0.005\"} 1000\n";
        let h = histogram(text, ADMISSION_METRIC, &[("name", WEBHOOK_NAME)]);
        assert_eq!(h.count, 100.0);
        // 50th of 100: inside (0.005, 0.025], 40 of its 80.
        assert!((h.quantile(0.5).unwrap() - 0.015).abs() < 1e-9);
        // 99th: inside (0.025, 0.1], 9 of its 10.
        assert!((h.quantile(0.99).unwrap() - 0.0925).abs() < 1e-9);
        let before = histogram(text, ADMISSION_METRIC, &[("name", WEBHOOK_NAME)]);
        assert_eq!(h.since(&before).quantile(0.5), None);
        let counters = "apiserver_admission_webhook_fail_open_count{name=\"pod-readiness-gate.readygate.io\",type=\"admit\"} 2\n\
            apiserver_admission_webhook_fail_open_count{name=\"other\",type=\"admit\"} 5\n";
        assert_eq!(
            counter(
                counters,
                "apiserver_admission_webhook_fail_open_count",
                &[("name", WEBHOOK_NAME)]
            ),
            2.0
        );
    }

    #[test]
    fn rbac_use_splits_used_denied_and_unused_grants() {
        let rbac = "kind: ClusterRole\nrules:\n  - apiGroups: [\"\"]\n    resources: [pods, pods/status]\n    verbs: [list, patch]\n";
        let g = granted(rbac).unwrap();
        assert_eq!(g.len(), 4);
        let r = |verb: &str, resource: &str, sub: &str, code: u16| Request {
            user: READYGATE_USER.into(),
            verb: verb.into(),
            group: String::new(),
            resource: resource.into(),
            subresource: sub.into(),
            namespace: String::new(),
            name: String::new(),
            code,
            ..Request::default()
        };
        let u = rbac_use(
            &[
                r("list", "pods", "", 200),
                r("patch", "pods", "status", 200),
                r("get", "nodes", "", 403),
            ],
            &g,
        );
        assert_eq!(u.used.len(), 2);
        assert_eq!(
            u.denied.keys().next().unwrap(),
            &("get".to_string(), String::new(), "nodes".to_string())
        );
        assert_eq!(
            u.unused.iter().cloned().collect::<Vec<_>>(),
            vec![
                ("list".to_string(), String::new(), "pods/status".to_string()),
                ("patch".to_string(), String::new(), "pods".to_string())
            ]
        );
    }
}
