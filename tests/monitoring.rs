//! The monitoring add-on (`manifests/monitoring`): the PrometheusRule passes `promtool check
//! rules` and its unit tests (`tests/monitoring/alerts.test.yaml`); the dashboard's queries are
//! valid PromQL; and every metric, label and label value that the alerts, the dashboard and the
//! unit tests' input series name is one the real `readygate serve` binary exports, as scraped from
//! its /metrics after driving it through the rig: a gated pod turned Ready, a malformed admission
//! request, a rejected certificate. The first scrape, before any of that, must already show all of
//! it: every labelled family with its known series at 0, every series the traffic later shows,
//! and the certificate gauges of the certificate the webhook serves.
//!
//! promtool comes from Debian's `prometheus` package; `scripts/test` installs it. Under CI (`CI`
//! set) a missing promtool fails these tests; elsewhere they skip with a message.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use readygate::metrics::{Admission, Deferral, ElbOperation, ElbOutcome, StatusWrite, TlsReload};
use readygate::termination::Source;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Labels Prometheus adds to every series it scrapes through the ServiceMonitor.
const TARGET_LABELS: &[&str] = &[
    "job",
    "namespace",
    "pod",
    "instance",
    "service",
    "endpoint",
    "container",
];

/// Every alert of the PrometheusRule; a rename or a new alert must be seen here (and get unit tests).
const ALERTS: &[&str] = &[
    "ReadygatePodsMissingGates",
    "ReadygateNoLeader",
    "ReadygateMetricsAbsent",
    "ReadygateAdmissionErrors",
    "ReadygateAdmissionSlow",
    "ReadygateAdmissionTimeouts",
    "ReadygateGatesPendingTooLong",
    "ReadygateGatesSlow",
    "ReadygateELBv2Throttled",
    "ReadygateTLSReloadFailed",
    "ReadygateTLSCertificateExpiresSoon",
    "ReadygateTLSCertificateExpiresWithinADay",
    "ReadygateStatusWritesFailing",
];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn monitoring_dir() -> PathBuf {
    repo().join("manifests/monitoring")
}

fn unit_tests_file() -> PathBuf {
    repo().join("tests/monitoring/alerts.test.yaml")
}

fn yaml_file(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// promtool

/// promtool ($PROMTOOL, or on the PATH); `None` (skip) only outside CI.
fn promtool() -> Option<PathBuf> {
    let bin = std::env::var_os("PROMTOOL").map_or_else(|| PathBuf::from("promtool"), PathBuf::from);
    match Command::new(&bin).arg("--version").output() {
        Ok(out) if out.status.success() => Some(bin),
        result => {
            let why = match result {
                Ok(out) => format!("`{} --version` failed: {}", bin.display(), out.status),
                Err(e) => format!("{} not runnable: {e}", bin.display()),
            };
            assert!(
                std::env::var_os("CI").is_none(),
                "promtool is required under CI ({why}); scripts/test installs it \
                 (apt-get install prometheus)"
            );
            println!(
                "SKIPPED: {why}; install Debian's `prometheus` package (or set PROMTOOL) to run the promtool checks"
            );
            None
        }
    }
}

/// Runs promtool; returns its combined output, panicking with it on failure.
fn run_promtool(promtool: &Path, dir: &Path, args: &[&str]) -> String {
    let out = Command::new(promtool)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("$ promtool {}\n{text}", args.join(" "));
    assert!(
        out.status.success(),
        "promtool {} failed:\n{text}",
        args.join(" ")
    );
    text
}

/// The PrometheusRule's `spec`: a plain Prometheus rules file.
fn rules_spec() -> Value {
    let rule = yaml_file(&monitoring_dir().join("prometheusrule.yaml"));
    assert_eq!(rule["kind"], "PrometheusRule");
    rule["spec"].clone()
}

fn rules() -> Vec<Value> {
    rules_spec()["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").clone())
        .collect()
}

fn alert<'a>(rules: &'a [Value], name: &str) -> &'a Value {
    rules
        .iter()
        .find(|r| r["alert"] == name)
        .unwrap_or_else(|| panic!("no alert {name}"))
}

/// Writes the rules as promtool reads them, under the name the unit tests' `rule_files` use.
fn write_rules_file(dir: &Path) -> PathBuf {
    let path = dir.join("readygate.rules.yaml");
    std::fs::write(&path, serde_yaml::to_string(&rules_spec()).expect("YAML")).expect("write");
    path
}

#[test]
fn prometheus_rule_passes_promtool_check_rules() {
    let Some(promtool) = promtool() else { return };
    let dir = tempfile::tempdir().unwrap();
    write_rules_file(dir.path());
    let out = run_promtool(
        &promtool,
        dir.path(),
        &["check", "rules", "readygate.rules.yaml"],
    );
    let rules = rules();
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", rules.len())),
        "{out}"
    );

    let names: BTreeSet<&str> = rules.iter().filter_map(|r| r["alert"].as_str()).collect();
    assert_eq!(names, ALERTS.iter().copied().collect());
    for r in &rules {
        let name = r["alert"].as_str().unwrap_or("?");
        assert!(
            ["warning", "critical"].contains(&r["labels"]["severity"].as_str().unwrap_or("")),
            "{name}: severity warning or critical"
        );
        for key in ["summary", "description"] {
            assert!(
                r["annotations"][key]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "{name}: annotation {key}"
            );
        }
    }
}

/// The number an alert's expression compares against last (`... > N`).
fn threshold(expr: &str) -> f64 {
    let (_, n) = expr.trim().rsplit_once('>').expect("a `>` comparison");
    n.trim().parse().unwrap_or_else(|e| panic!("{n:?}: {e}"))
}

#[test]
fn admission_latency_alerts_follow_the_webhook_timeout_and_the_histogram_buckets() {
    let config = yaml_file(&repo().join("manifests/base/mutatingwebhookconfiguration.yaml"));
    let timeout = config["webhooks"][0]["timeoutSeconds"]
        .as_f64()
        .expect("timeoutSeconds");
    let exported = readygate::metrics::Metrics::new().encode();
    let bounds: Vec<f64> = exported
        .lines()
        .filter_map(|l| l.strip_prefix("readygate_admission_duration_seconds_bucket{le=\""))
        .filter_map(|l| l.split('"').next())
        .filter(|b| *b != "+Inf")
        .map(|b| b.parse().expect("bucket bound"))
        .collect();
    let largest = bounds.iter().copied().fold(f64::NAN, f64::max);
    // Above the timeout, or a p99 past it would read as the largest bound and never exceed it.
    assert!(
        largest > timeout,
        "largest bucket {largest} s, timeout {timeout} s"
    );

    let rules = rules();
    let p99 = |name: &str| {
        let expr = alert(&rules, name)["expr"].as_str().unwrap().to_owned();
        assert!(
            expr.trim().starts_with("histogram_quantile(0.99,"),
            "{name}: a p99 of the buckets: {expr}"
        );
        let refs = references(&expr);
        let metrics: Vec<&str> = refs.selectors.iter().map(|s| s.metric.as_str()).collect();
        assert_eq!(
            metrics,
            ["readygate_admission_duration_seconds_bucket"],
            "{name}"
        );
        let bound = threshold(&expr);
        // On a bound, "p99 > bound" is exactly "more than 1% of requests slower than bound".
        assert!(
            bounds.contains(&bound),
            "{name}: {bound} is no bucket bound of {bounds:?}"
        );
        bound
    };
    let timeouts = p99("ReadygateAdmissionTimeouts");
    assert_eq!(timeouts, timeout);
    assert!(
        alert(&rules, "ReadygateAdmissionTimeouts")["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains(&format!("({timeout} s)"))
    );
    // The warning comes well before the timeout, with room to act on it.
    let slow = p99("ReadygateAdmissionSlow");
    assert!(slow <= timeout / 2.0, "slow {slow} s, timeout {timeout} s");
}

#[test]
fn alert_unit_tests_pass_under_promtool() {
    // Every alert has a case where it fires and one where it stays quiet.
    let tests = yaml_file(&unit_tests_file());
    let mut fires = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for case in tests["tests"].as_array().expect("tests") {
        for t in case["alert_rule_test"].as_array().expect("alert_rule_test") {
            let name = t["alertname"].as_str().expect("alertname").to_owned();
            match t["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()) {
                true => fires.insert(name),
                false => quiet.insert(name),
            };
        }
    }
    let all: BTreeSet<String> = ALERTS.iter().map(|a| a.to_string()).collect();
    assert_eq!(fires, all, "alerts with a firing unit test");
    assert_eq!(quiet, all, "alerts with a quiet unit test");

    let Some(promtool) = promtool() else { return };
    let dir = tempfile::tempdir().unwrap();
    write_rules_file(dir.path());
    std::fs::copy(unit_tests_file(), dir.path().join("alerts.test.yaml")).expect("copy");
    let out = run_promtool(
        &promtool,
        dir.path(),
        &["test", "rules", "alerts.test.yaml"],
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

// ---------------------------------------------------------------------------------------------
// Dashboard

fn dashboard() -> Value {
    let path = monitoring_dir().join("readygate-dashboard.json");
    serde_json::from_str(&std::fs::read_to_string(&path).expect("read dashboard")).expect("JSON")
}

/// (panel title, query) of every panel target, Grafana's variables replaced by what they stand
/// for, so that the result is plain PromQL.
fn dashboard_queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard()["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr");
            out.push((
                panel["title"].as_str().unwrap_or("?").to_owned(),
                expr.replace("$__rate_interval", "2m")
                    .replace("$namespace", "readygate-system"),
            ));
        }
    }
    out
}

/// (metric, label) of the dashboard's `label_values(metric, label)` variables.
fn dashboard_label_values() -> Vec<(String, String)> {
    dashboard()["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            let q = v["query"]["query"].as_str().expect("variable query");
            let args = q
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(')'))
                .unwrap_or_else(|| panic!("unexpected variable query {q}"));
            let (metric, label) = args.split_once(',').expect("label_values(metric, label)");
            (metric.trim().to_owned(), label.trim().to_owned())
        })
        .collect()
}

#[test]
fn dashboard_queries_are_valid_promql_over_a_datasource_variable() {
    let dashboard = dashboard();
    let datasource = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(datasource["query"], "prometheus");
    let name = datasource["name"].as_str().unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"],
            format!("${{{name}}}"),
            "panel {}",
            panel["title"]
        );
    }

    let queries = dashboard_queries();
    assert!(queries.len() >= 10);
    let Some(promtool) = promtool() else { return };
    // promtool parses rule expressions: one recording rule per query.
    let rules: Vec<Value> = queries
        .iter()
        .enumerate()
        .map(|(i, (_, expr))| serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": expr}))
        .collect();
    let file = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("dashboard.rules.yaml"),
        serde_yaml::to_string(&file).unwrap(),
    )
    .unwrap();
    let out = run_promtool(
        &promtool,
        dir.path(),
        &["check", "rules", "dashboard.rules.yaml"],
    );
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", queries.len())),
        "{out}"
    );
}

// ---------------------------------------------------------------------------------------------
// What a PromQL expression names

#[derive(Debug, Clone, PartialEq)]
struct Matcher {
    label: String,
    op: String,
    value: String,
}

#[derive(Debug, Clone, PartialEq)]
struct Selector {
    metric: String,
    matchers: Vec<Matcher>,
}

#[derive(Debug, Default)]
struct References {
    selectors: Vec<Selector>,
    /// Labels of `by`, `without`, `on`, `ignoring`, `group_left`, `group_right`.
    grouping: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    Num(String),
    Matchers(Vec<Matcher>),
    Open,
    Close,
    Other(char),
}

fn quoted(chars: &[char], start: usize) -> (String, usize) {
    let quote = chars[start];
    let mut s = String::new();
    let mut i = start + 1;
    while i < chars.len() && chars[i] != quote {
        if chars[i] == '\\' && quote != '`' && i + 1 < chars.len() {
            i += 1;
        }
        s.push(chars[i]);
        i += 1;
    }
    (s, i + 1)
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    is_ident_start(c) || c.is_ascii_digit()
}

/// PromQL (or exposition-format) tokens: enough to find metric names, label matchers and
/// grouping labels. Ranges and subqueries (`[...]`) are skipped.
fn tokens(expr: &str) -> Vec<Token> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if matches!(c, '"' | '\'' | '`') {
            let (s, next) = quoted(&chars, i);
            out.push(Token::Str(s));
            i = next;
        } else if is_ident_start(c) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            out.push(Token::Ident(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit() || c == '.' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            out.push(Token::Num(chars[start..i].iter().collect()));
        } else if c == '{' {
            let mut matchers = Vec::new();
            i += 1;
            loop {
                while i < chars.len() && (chars[i].is_whitespace() || chars[i] == ',') {
                    i += 1;
                }
                if i >= chars.len() || chars[i] == '}' {
                    i += 1;
                    break;
                }
                let start = i;
                while i < chars.len() && is_ident(chars[i]) {
                    i += 1;
                }
                let label: String = chars[start..i].iter().collect();
                while i < chars.len() && chars[i].is_whitespace() {
                    i += 1;
                }
                let start = i;
                while i < chars.len() && matches!(chars[i], '=' | '!' | '~') {
                    i += 1;
                }
                let op: String = chars[start..i].iter().collect();
                while i < chars.len() && chars[i].is_whitespace() {
                    i += 1;
                }
                assert!(
                    !label.is_empty() && !op.is_empty() && i < chars.len(),
                    "cannot read the label matchers in {expr:?}"
                );
                let (value, next) = quoted(&chars, i);
                i = next;
                matchers.push(Matcher { label, op, value });
            }
            out.push(Token::Matchers(matchers));
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else {
            out.push(match c {
                '(' => Token::Open,
                ')' => Token::Close,
                c => Token::Other(c),
            });
            i += 1;
        }
    }
    out
}

const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "offset", "bool", "inf", "nan", "atan2",
];

fn references(expr: &str) -> References {
    let toks = tokens(expr);
    let mut refs = References::default();
    let mut k = 0;
    while k < toks.len() {
        match &toks[k] {
            Token::Ident(name) => {
                // A function call, or an aggregation with its grouping first (`sum by (x) (...)`).
                let call = match toks.get(k + 1) {
                    Some(Token::Open) => true,
                    Some(Token::Ident(next)) => {
                        ["by", "without"].contains(&next.as_str())
                            && !GROUPING.contains(&name.as_str())
                    }
                    _ => false,
                };
                if GROUPING.contains(&name.as_str()) {
                    if call {
                        k += 2;
                        while let Some(t) = toks.get(k) {
                            match t {
                                Token::Ident(label) => refs.grouping.push(label.clone()),
                                Token::Other(',') => {}
                                _ => break,
                            }
                            k += 1;
                        }
                    }
                } else if !call && !KEYWORDS.contains(&name.to_lowercase().as_str()) {
                    let matchers = match toks.get(k + 1) {
                        Some(Token::Matchers(m)) => {
                            k += 1;
                            m.clone()
                        }
                        _ => Vec::new(),
                    };
                    refs.selectors.push(Selector {
                        metric: name.clone(),
                        matchers,
                    });
                }
            }
            Token::Matchers(m) => {
                let metric = m
                    .iter()
                    .find(|m| m.label == "__name__")
                    .map(|m| m.value.clone())
                    .unwrap_or_default();
                refs.selectors.push(Selector {
                    metric,
                    matchers: m.clone(),
                });
            }
            _ => {}
        }
        k += 1;
    }
    refs
}

#[test]
fn promql_references_find_metrics_matchers_and_grouping_labels() {
    let refs = references(
        r#"sum by (namespace, le) (rate(readygate_x_bucket{le="0.25", outcome=~"a|b"}[5m] offset 1h))
           / on(pod) group_left (outcome) readygate_y unless absent(up) > 0.01
           or max(readygate_z) without (instance)"#,
    );
    assert_eq!(
        refs.selectors
            .iter()
            .map(|s| s.metric.as_str())
            .collect::<Vec<_>>(),
        ["readygate_x_bucket", "readygate_y", "up", "readygate_z"]
    );
    assert_eq!(
        refs.selectors[0].matchers,
        [
            Matcher {
                label: "le".into(),
                op: "=".into(),
                value: "0.25".into()
            },
            Matcher {
                label: "outcome".into(),
                op: "=~".into(),
                value: "a|b".into()
            }
        ]
    );
    assert_eq!(
        refs.grouping,
        ["namespace", "le", "pod", "outcome", "instance"]
    );
}

// ---------------------------------------------------------------------------------------------
// A scrape of the real binary

#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug)]
struct Scrape {
    samples: Vec<Sample>,
    /// Metric family → type, from the `# TYPE` lines.
    families: BTreeMap<String, String>,
}

impl Scrape {
    fn parse(text: &str) -> Self {
        let mut samples = Vec::new();
        let mut families = BTreeMap::new();
        for line in text.lines() {
            if let Some(t) = line.strip_prefix("# TYPE ") {
                let (family, kind) = t.split_once(' ').expect("# TYPE family type");
                families.insert(family.to_owned(), kind.to_owned());
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            // `name{labels} value` (readygate exports no timestamps or exemplars).
            let (series, value) = line.rsplit_once(' ').expect("a sample line");
            let (name, labels) = match tokens(series).as_slice() {
                [Token::Ident(n), Token::Matchers(m)] => (n.clone(), m.clone()),
                [Token::Ident(n)] => (n.clone(), Vec::new()),
                _ => panic!("unexpected exposition line {line:?}"),
            };
            samples.push(Sample {
                name,
                labels: labels.into_iter().map(|m| (m.label, m.value)).collect(),
                value: value.parse().unwrap_or_else(|e| panic!("{line:?}: {e}")),
            });
        }
        Self { samples, families }
    }

    /// The sum of the samples of `name` with `labels` (and any others), `None` when there is none.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .reduce(|a, b| a + b)
    }

    /// Sample name → label → values seen.
    fn labels(&self) -> BTreeMap<&str, BTreeMap<&str, BTreeSet<&str>>> {
        let mut out: BTreeMap<&str, BTreeMap<&str, BTreeSet<&str>>> = BTreeMap::new();
        for s in &self.samples {
            let entry = out.entry(s.name.as_str()).or_default();
            for (k, v) in &s.labels {
                entry.entry(k.as_str()).or_default().insert(v.as_str());
            }
        }
        out
    }

    /// The family a sample name belongs to (`x_total` → `x`, `x_bucket` → `x`, ...).
    fn family_of(&self, sample: &str) -> Option<&str> {
        self.families.keys().map(String::as_str).find(|f| {
            sample == *f
                || sample.strip_prefix(*f).is_some_and(|rest| {
                    ["_total", "_bucket", "_sum", "_count", "_created"].contains(&rest)
                })
        })
    }
}

/// GET /metrics over plain HTTP (the admin port).
fn get_metrics(admin: SocketAddr) -> String {
    let mut stream = std::net::TcpStream::connect(admin).expect("connect to the admin port");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: readygate\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read /metrics");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "{head}"
    );
    body.to_owned()
}

/// A TLS connection to the webhook, verified against `ca` for `server_name`.
async fn connect_webhook(
    webhook: SocketAddr,
    ca: &Path,
    server_name: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).expect("CA certificate"))
        .expect("CA as a root");
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(webhook)
        .await
        .expect("connect");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(server_name.to_owned()).unwrap(), tcp)
        .await
        .expect("TLS handshake with the webhook")
}

/// notAfter (unix seconds) of the certificate the webhook presents in a handshake.
async fn served_not_after(webhook: SocketAddr, ca: &Path, server_name: &str) -> i64 {
    let tls = connect_webhook(webhook, ca, server_name).await;
    let chain = tls
        .get_ref()
        .1
        .peer_certificates()
        .expect("a server certificate");
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).expect("an X.509 certificate");
    leaf.validity().not_after.timestamp()
}

/// POSTs a body that is no AdmissionReview to the webhook over TLS; returns the status line.
async fn post_garbage(webhook: SocketAddr, ca: &Path, server_name: &str) -> String {
    let mut tls = connect_webhook(webhook, ca, server_name).await;
    let body = "this is not an AdmissionReview";
    let request = format!(
        "POST /mutate-v1-pod?timeout=5s HTTP/1.1\r\nHost: {server_name}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response);
    response.lines().next().unwrap_or("").to_owned()
}

/// One scrape of the admin port.
async fn scrape(admin: SocketAddr) -> (String, Scrape) {
    let text = tokio::task::spawn_blocking(move || get_metrics(admin))
        .await
        .unwrap();
    let scrape = Scrape::parse(&text);
    (text, scrape)
}

/// Scrapes until `ready` holds for the scrape, or panics with the last one after `timeout`.
async fn scrape_until(
    admin: SocketAddr,
    timeout: Duration,
    what: &str,
    ready: impl Fn(&Scrape) -> bool,
) -> (String, Scrape) {
    let deadline = Instant::now() + timeout;
    loop {
        let (text, scrape) = scrape(admin).await;
        if ready(&scrape) {
            return (text, scrape);
        }
        assert!(
            Instant::now() < deadline,
            "{what} not seen within {timeout:?}; /metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the scenario saw of the real binary.
struct Observed {
    /// /metrics right after start-up, before any admission, ELBv2 call, write or reload.
    first: (String, Scrape),
    /// /metrics while a rejected certificate is on disk (the previous one still served).
    rejected: (String, Scrape),
    /// /metrics once every family has series.
    last: (String, Scrape),
    /// notAfter of the certificate the webhook served (unix seconds), from a TLS handshake.
    served_not_after: i64,
}

/// The real binary against the rig: scraped once before any traffic, then driven until every
/// metric family has series: a gated pod made Ready (admission patched, ELBv2 polled, condition
/// written, leader) while another client drains the account's Describe* budget (throttled
/// calls), a malformed admission request (outcome error), a rejected certificate and the good
/// one back (TLS reload error, ok).
async fn scrape_real_binary() -> Observed {
    readygate::install_crypto_provider();
    let started = Instant::now();
    let _serial = rig::serial::exclusive().await;
    println!("rollouts lock after {:?}", started.elapsed());
    let manifests = repo().join("manifests");
    let args = ["--tls-reload-interval".to_owned(), "200ms".to_owned()];
    let stage = rig::stage::Stage::start(
        Path::new(env!("CARGO_BIN_EXE_readygate")),
        &manifests,
        &args,
    )
    .await
    .unwrap_or_else(|e| panic!("starting the rig and readygate: {e:#}"));
    let (admin, webhook, cert, ca) = {
        let guard = stage.replicas.lock().await;
        let opts = &guard.first().expect("readygate running").opts;
        let ca = opts.cert.parent().expect("certs dir").join("ca.crt");
        (opts.admin_addr, opts.webhook_addr, opts.cert.clone(), ca)
    };
    let first = scrape(admin).await;
    println!("first scrape after {:?}", started.elapsed());
    let (service, namespace) = rig::rig::webhook_service(&manifests).unwrap();
    let server_name = format!("{service}.{namespace}.svc");
    let served_not_after = served_not_after(webhook, &ca, &server_name).await;

    stage.rig.namespace("shop", true).await.unwrap();
    let app = stage.rig.app("shop", "web").await.unwrap();
    // readygate's caches see the binding and the Service before the pod is admitted.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let deployment = rig::rig::web_deployment(&app, 1, Duration::from_millis(100), None);
    // Another client of the account drains the Describe* budget until readygate is throttled.
    let elb = stage.rig.elb.clone();
    let other_client = tokio::spawn(async move {
        loop {
            while elb.take_describe_token().is_ok() {}
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let throttled = async {
        scrape_until(
            admin,
            Duration::from_secs(30),
            "a throttled ELBv2 call",
            |s| {
                s.value("readygate_elbv2_throttles_total", &[])
                    .is_some_and(|n| n >= 1.0)
            },
        )
        .await;
        other_client.abort();
    };
    let (rollout, ()) = tokio::join!(
        deployment.roll(&stage.rig.client, "v1", Duration::from_secs(60)),
        throttled
    );
    assert!(
        rollout.complete(),
        "the gated pod never became Ready: {rollout:?}; readygate log:\n{}",
        stage.log_tail(30)
    );

    println!("gated pod Ready after {:?}", started.elapsed());
    let status = post_garbage(webhook, &ca, &server_name).await;
    assert!(status.starts_with("HTTP/1.1 400"), "{status}");
    // A rejected certificate, then the good one back: one reload of each outcome.
    let good = std::fs::read(&cert).expect("read the serving certificate");
    std::fs::write(&cert, "not a certificate").expect("overwrite the serving certificate");
    scrape_until(
        admin,
        Duration::from_secs(10),
        "a rejected certificate",
        |s| {
            s.value("readygate_tls_reloads_total", &[("outcome", "error")])
                .is_some_and(|n| n >= 1.0)
        },
    )
    .await;
    // Scraped again after the count: the gauges are set before it, and nothing changes them
    // until the file does.
    let rejected = scrape(admin).await;
    std::fs::write(&cert, good).expect("restore the serving certificate");

    let last = scrape_until(admin, Duration::from_secs(15), "every family", |s| {
        s.value("readygate_leader", &[]) == Some(1.0)
            && s.value("readygate_gate_ready_seconds_count", &[])
                .is_some_and(|n| n >= 1.0)
            && s.value("readygate_admissions_total", &[("outcome", "patched")])
                .is_some_and(|n| n >= 1.0)
            && s.value("readygate_admissions_total", &[("outcome", "error")])
                .is_some_and(|n| n >= 1.0)
            && s.value("readygate_status_writes_total", &[("outcome", "written")])
                .is_some_and(|n| n >= 1.0)
            && s.value(
                "readygate_elbv2_calls_total",
                &[("operation", "DescribeTargetHealth"), ("outcome", "ok")],
            )
            .is_some_and(|n| n >= 1.0)
            && s.value("readygate_elbv2_calls_total", &[("outcome", "throttled")])
                .is_some_and(|n| n >= 1.0)
            && s.value("readygate_tls_reloads_total", &[("outcome", "error")])
                .is_some_and(|n| n >= 1.0)
            && s.value("readygate_tls_reloads_total", &[("outcome", "ok")])
                .is_some_and(|n| n >= 1.0)
    })
    .await;
    println!("scraped after {:?}", started.elapsed());
    stage.stop().await.unwrap();
    Observed {
        first,
        rejected,
        last,
        served_not_after,
    }
}

/// Sample name → label → values seen in a scrape.
type Exported<'a> = BTreeMap<&'a str, BTreeMap<&'a str, BTreeSet<&'a str>>>;

/// What of selector `s` the scrape does not export. Every label value readygate can count is
/// exported from start-up, so every value a selector names must be in any scrape.
fn unexported(place: &str, s: &Selector, exported: &Exported<'_>) -> Vec<String> {
    let mut failures = Vec::new();
    let Some(labels) = exported.get(s.metric.as_str()) else {
        failures.push(format!(
            "{place}: `{}` is not a series readygate exports",
            s.metric
        ));
        return failures;
    };
    for m in &s.matchers {
        if TARGET_LABELS.contains(&m.label.as_str()) {
            continue;
        }
        let Some(values) = labels.get(m.label.as_str()) else {
            failures.push(format!(
                "{place}: `{}` has no label `{}`",
                s.metric, m.label
            ));
            continue;
        };
        if m.op.starts_with('!') {
            continue;
        }
        let wanted: Vec<&str> = match m.op.as_str() {
            "=~" => m.value.split('|').collect(),
            _ => vec![m.value.as_str()],
        };
        for v in wanted {
            if !values.contains(v) {
                failures.push(format!(
                    "{place}: `{}{{{}=\"{v}\"}}`: readygate exports the values {values:?}",
                    s.metric, m.label
                ));
            }
        }
    }
    failures
}

/// Every query of the alerts and the dashboard, with where it is.
fn monitoring_queries() -> Vec<(String, String)> {
    rules()
        .iter()
        .map(|r| {
            let name = r["alert"].as_str().or(r["record"].as_str()).unwrap_or("?");
            (
                format!("alert {name}"),
                r["expr"].as_str().unwrap().to_owned(),
            )
        })
        .chain(
            dashboard_queries()
                .into_iter()
                .map(|(title, q)| (format!("dashboard panel {title:?}"), q)),
        )
        .collect()
}

/// Every selector the alerts, the dashboard (queries and variables) and the unit tests' input
/// series name, with where; unit test series must also carry the ServiceMonitor's target labels.
fn monitoring_selectors(failures: &mut Vec<String>) -> Vec<(String, Selector)> {
    let mut out = Vec::new();
    for (place, expr) in monitoring_queries() {
        let refs = references(&expr);
        if refs.selectors.is_empty() {
            failures.push(format!("{place}: names no metric: {expr}"));
        }
        out.extend(refs.selectors.into_iter().map(|s| (place.clone(), s)));
    }
    for (metric, _) in dashboard_label_values() {
        let s = Selector {
            metric,
            matchers: Vec::new(),
        };
        out.push(("dashboard variable".to_owned(), s));
    }
    let tests = yaml_file(&unit_tests_file());
    for case in tests["tests"].as_array().unwrap() {
        for series in case["input_series"].as_array().unwrap() {
            let text = series["series"].as_str().unwrap();
            let refs = references(text);
            assert_eq!(refs.selectors.len(), 1, "{text}");
            let s = refs.selectors.into_iter().next().unwrap();
            let labels: BTreeSet<&str> = s.matchers.iter().map(|m| m.label.as_str()).collect();
            for t in TARGET_LABELS {
                if !labels.contains(t) {
                    failures.push(format!("unit test series {text}: no target label `{t}`"));
                }
            }
            out.push(("unit test series".to_owned(), s));
        }
    }
    out
}

/// A sample's identity: its name and labels, as the exposition format writes them.
fn series_key(s: &Sample) -> String {
    let labels: Vec<String> = s
        .labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{v}\""))
        .collect();
    format!("{}{{{}}}", s.name, labels.join(","))
}

/// What an operator must find in the first scrape, before any traffic: every series that traffic
/// later shows (labelled counters at 0, so that rate() and increase() see their first event),
/// every metric, label and label value the alerts, the dashboard and the unit tests name, and the
/// certificate gauges of the certificate being served.
fn first_scrape_failures(observed: &Observed) -> Vec<String> {
    let (_, first) = &observed.first;
    let (_, last) = &observed.last;
    let mut failures = Vec::new();

    let in_first: BTreeMap<String, f64> = first
        .samples
        .iter()
        .map(|s| (series_key(s), s.value))
        .collect();
    for family in last.families.keys() {
        if !first.families.contains_key(family) {
            failures.push(format!("first scrape: no `# TYPE {family}` line"));
        }
    }
    for s in &last.samples {
        let family = last.family_of(&s.name).unwrap_or(&s.name);
        let key = series_key(s);
        let labelled_counter = last.families.get(family).is_some_and(|t| t == "counter")
            && s.labels.keys().any(|k| k != "le");
        match in_first.get(&key) {
            None => failures.push(format!("first scrape: no series {key}")),
            Some(v) if labelled_counter && *v != 0.0 => failures.push(format!(
                "first scrape: {key} is {v}, not 0 before any traffic"
            )),
            Some(_) => {}
        }
    }

    // Every value readygate's code can count, from the enums it counts with.
    let mut known: Vec<(&str, Vec<(&str, &str)>)> = Vec::new();
    known.extend(
        Admission::ALL
            .iter()
            .map(|o| ("readygate_admissions_total", vec![("outcome", o.label())])),
    );
    known.extend(
        TlsReload::ALL
            .iter()
            .map(|o| ("readygate_tls_reloads_total", vec![("outcome", o.label())])),
    );
    known.extend(StatusWrite::ALL.iter().map(|o| {
        (
            "readygate_status_writes_total",
            vec![("outcome", o.label())],
        )
    }));
    for op in ElbOperation::ALL {
        known.extend(ElbOutcome::ALL.iter().map(|o| {
            (
                "readygate_elbv2_calls_total",
                vec![("operation", op.label()), ("outcome", o.label())],
            )
        }));
    }
    known.extend(Deferral::ALL.iter().map(|r| {
        (
            "readygate_gate_releases_deferred_total",
            vec![("reason", r.label())],
        )
    }));
    known.extend(Source::ANNOTATIONS.iter().map(|s| {
        (
            "readygate_prestop_invalid_annotations_total",
            vec![("source", s.as_str())],
        )
    }));
    for (name, labels) in &known {
        let value = first
            .samples
            .iter()
            .find(|s| {
                s.name == *name
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value);
        if value != Some(0.0) {
            failures.push(format!(
                "first scrape: {name}{labels:?} is {value:?}, not 0 before any traffic"
            ));
        }
    }

    let exported = first.labels();
    for (place, s) in monitoring_selectors(&mut Vec::new()) {
        failures.extend(
            unexported(&place, &s, &exported)
                .into_iter()
                .map(|f| format!("first scrape: {f}")),
        );
    }

    // The certificate being served: its notAfter, and the last reload successful (the start-up
    // load); 0 while a rejected certificate is on disk; 1 again once a good one is back.
    let expiry = "readygate_tls_certificate_expiry_timestamp_seconds";
    let successful = "readygate_tls_last_reload_successful";
    let served = observed.served_not_after as f64;
    for (when, (_, scrape), ok) in [
        ("first scrape", &observed.first, 1.0),
        (
            "with a rejected certificate on disk",
            &observed.rejected,
            0.0,
        ),
        ("after the good certificate is back", &observed.last, 1.0),
    ] {
        if scrape.value(expiry, &[]) != Some(served) {
            failures.push(format!(
                "{when}: {expiry} is {:?}, the served certificate's notAfter is {served}",
                scrape.value(expiry, &[])
            ));
        }
        if scrape.value(successful, &[]) != Some(ok) {
            failures.push(format!(
                "{when}: {successful} is {:?}, not {ok}",
                scrape.value(successful, &[])
            ));
        }
    }
    failures
}

#[test]
fn alerts_dashboard_and_unit_tests_name_only_what_the_real_binary_exports() {
    rig::cluster::test(|_| async {
        let observed = scrape_real_binary().await;
        let (text, scrape) = &observed.last;
        let exported = scrape.labels();
        let mut failures = first_scrape_failures(&observed);
        for (place, s) in monitoring_selectors(&mut failures) {
            failures.extend(unexported(&place, &s, &exported));
        }
        let mut on_dashboard = BTreeSet::new();
        for (place, expr) in monitoring_queries() {
            let refs = references(&expr);
            if place.starts_with("dashboard") {
                on_dashboard.extend(refs.selectors.iter().map(|s| s.metric.clone()));
            }
            for label in &refs.grouping {
                let known = TARGET_LABELS.contains(&label.as_str())
                    || refs.selectors.iter().any(|s| {
                        exported
                            .get(s.metric.as_str())
                            .is_some_and(|l| l.contains_key(label.as_str()))
                    });
                if !known {
                    failures.push(format!(
                        "{place}: groups by `{label}`, which no series it reads has"
                    ));
                }
            }
        }
        for (_, label) in dashboard_label_values() {
            if !TARGET_LABELS.contains(&label.as_str()) {
                failures.push(format!(
                    "dashboard variable: label `{label}` is no target label"
                ));
            }
        }

        // The dashboard shows every family readygate exports.
        let shown: BTreeSet<&str> = on_dashboard
            .iter()
            .filter_map(|m| scrape.family_of(m))
            .collect();
        for family in scrape.families.keys() {
            if !shown.contains(family.as_str()) {
                failures.push(format!("the dashboard shows nothing of `{family}`"));
            }
        }
        assert!(scrape.families.len() >= 12, "{:?}", scrape.families.keys());

        if !failures.is_empty() {
            let mut msg = String::from("monitoring names what readygate does not export:\n");
            for f in &failures {
                let _ = writeln!(msg, "  {f}");
            }
            let _ = write!(
                msg,
                "first /metrics of the real binary:\n{}\n/metrics after traffic:\n{text}",
                observed.first.0
            );
            panic!("{msg}");
        }
    })
}
