//! `readygate doctor`'s decisions: the objects of an installation, as fetched from the API
//! server (and the result of a TLS probe of the webhook), in; findings — ok, warning or
//! problem, each with its fix — out. Pure: the fetching lives in `operate`, so every check is
//! unit-tested on plain objects.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, MutatingWebhookConfiguration};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Endpoints, Namespace};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::Serialize;

use crate::domain::{
    AWS_CONTROLLER_FINALIZER, ConditionStatus, INJECT_LABEL, INJECT_LABEL_VALUE, gate_type,
};
use crate::index::Index;

/// The CRD readygate reads bindings from.
pub const BINDING_CRD: &str = "targetgroupbindings.elbv2.k8s.aws";
/// The AWS Load Balancer Controller's pod-mutating webhook (it injects the same gates).
pub const LBC_POD_WEBHOOK: &str = "mpod.elbv2.k8s.aws";
/// Above this, every pod creation in an opted-in namespace can wait that long on readygate.
pub const MAX_TIMEOUT_SECONDS: i32 = 10;
/// Pods named per finding; the rest are counted.
const NAMED_PODS: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warning,
    Problem,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Ok => "ok",
            Level::Warning => "warning",
            Level::Problem => "problem",
        })
    }
}

/// One check's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub level: Level,
    /// Which check: `crd`, `webhook`, `endpoints`, `ca-bundle`, `failure-policy`, `timeout`,
    /// `double-injection`, `namespaces`, `missing-gates`, `leader`.
    pub check: &'static str,
    pub summary: String,
    pub fix: Option<String>,
}

impl Finding {
    fn ok(check: &'static str, summary: impl Into<String>) -> Self {
        Self {
            level: Level::Ok,
            check,
            summary: summary.into(),
            fix: None,
        }
    }
    fn warning(check: &'static str, summary: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            level: Level::Warning,
            check,
            summary: summary.into(),
            fix: Some(fix.into()),
        }
    }
    fn problem(check: &'static str, summary: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            level: Level::Problem,
            check,
            summary: summary.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Whether something could be looked up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup<T> {
    Found(T),
    Absent,
    /// The lookup itself failed (RBAC, network): say so rather than guess.
    Failed(String),
}

/// The result of a TLS handshake with the webhook, verifying its certificate against the
/// configuration's caBundle under the Service's DNS name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// The handshake at `addr` verified.
    Verified { addr: String },
    /// The handshake reached `addr` and the certificate did not verify.
    Rejected { addr: String, error: String },
    /// No connection to any address.
    Unreachable { error: String },
    /// Not attempted, and why (no address, no caBundle, …).
    NotTried(String),
}

/// The webhook Service readygate's configuration calls, as found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceState {
    pub namespace: String,
    pub name: String,
    pub exists: bool,
    /// `ip:port` of the ready endpoints (EndpointSlices, else Endpoints).
    pub ready: Vec<String>,
    /// Endpoints present but not ready.
    pub not_ready: usize,
    pub probe: Probe,
}

fn host_port(ip: &str, port: i32) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// The ready `ip:port`s of a Service's EndpointSlices (on the port named `port_name`, the
/// Service port's name, which slices carry) and how many addresses are not ready.
pub fn slice_addresses(slices: &[EndpointSlice], port_name: Option<&str>) -> (Vec<String>, usize) {
    let (mut ready, mut not_ready) = (Vec::new(), 0);
    for s in slices {
        let port = s
            .ports
            .iter()
            .flatten()
            .find(|p| port_name.is_none() || p.name.as_deref() == port_name)
            .and_then(|p| p.port);
        for e in &s.endpoints {
            // discovery.k8s.io/v1: an absent `ready` means ready.
            let is_ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            for ip in &e.addresses {
                match (is_ready, port) {
                    (true, Some(p)) => ready.push(host_port(ip, p)),
                    _ => not_ready += 1,
                }
            }
        }
    }
    (ready, not_ready)
}

/// The same from a (legacy) Endpoints object.
pub fn endpoints_addresses(ep: &Endpoints, port_name: Option<&str>) -> (Vec<String>, usize) {
    let (mut ready, mut not_ready) = (Vec::new(), 0);
    for subset in ep.subsets.iter().flatten() {
        let port = subset
            .ports
            .iter()
            .flatten()
            .find(|p| port_name.is_none() || p.name.as_deref() == port_name)
            .map(|p| p.port);
        for a in subset.addresses.iter().flatten() {
            match port {
                Some(p) => ready.push(host_port(&a.ip, p)),
                None => not_ready += 1,
            }
        }
        not_ready += subset.not_ready_addresses.as_ref().map_or(0, Vec::len);
    }
    (ready, not_ready)
}

/// Everything doctor looks at.
pub struct Observed<'a> {
    pub now_ms: i64,
    pub crd: Lookup<()>,
    /// Every MutatingWebhookConfiguration of the cluster.
    pub webhook_configurations: &'a [MutatingWebhookConfiguration],
    /// The name of readygate's own configuration.
    pub ours: &'a str,
    /// The Service behind readygate's webhook, when it calls one.
    pub service: Option<ServiceState>,
    /// For a webhook called by `clientConfig.url`: the TLS probe of that URL (or of
    /// `--webhook-url`) under the URL's host name.
    pub url_probe: Option<Probe>,
    pub namespaces: &'a [Namespace],
    /// Pods, Services and bindings; `None` when bindings could not be listed.
    pub index: Option<&'a Index>,
    pub lease: Lookup<Lease>,
    /// `namespace/name` of the Lease looked up.
    pub lease_ref: String,
}

/// All findings, in the order they are printed.
pub fn findings(o: &Observed<'_>) -> Vec<Finding> {
    let mut out = vec![crd(&o.crd)];
    let ours = o
        .webhook_configurations
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(o.ours));
    let probe = o
        .service
        .as_ref()
        .map(|s| &s.probe)
        .or(o.url_probe.as_ref());
    out.extend(webhook(ours, o.ours, o.service.as_ref(), probe));
    let opted_in = opted_in(o.namespaces);
    out.push(double_injection(
        o.webhook_configurations,
        o.ours,
        o.namespaces,
    ));
    out.push(namespaces(&opted_in));
    out.push(missing_gates(o.index));
    out.push(aws_controller(o.index));
    out.push(leader(&o.lease, &o.lease_ref, o.now_ms));
    out
}

/// The exit status for CI: non-zero on any problem.
pub fn exit_code(findings: &[Finding]) -> i32 {
    i32::from(findings.iter().any(|f| f.level == Level::Problem))
}

fn crd(crd: &Lookup<()>) -> Finding {
    match crd {
        Lookup::Found(()) => Finding::ok("crd", format!("CRD {BINDING_CRD} is installed")),
        Lookup::Absent => Finding::problem(
            "crd",
            format!(
                "CRD {BINDING_CRD} is not installed: there are no TargetGroupBindings, so readygate injects no gate"
            ),
            "install the AWS Load Balancer Controller with its CRDs (Helm chart aws-load-balancer-controller, or `kubectl apply -k github.com/aws/eks-charts/stable/aws-load-balancer-controller/crds`)",
        ),
        Lookup::Failed(e) => Finding::warning(
            "crd",
            format!("cannot tell whether CRD {BINDING_CRD} is installed: {e}"),
            "run doctor with a context allowed to get customresourcedefinitions",
        ),
    }
}

fn webhook(
    ours: Option<&MutatingWebhookConfiguration>,
    name: &str,
    service: Option<&ServiceState>,
    probe: Option<&Probe>,
) -> Vec<Finding> {
    let Some(config) = ours else {
        return vec![Finding::problem(
            "webhook",
            format!("MutatingWebhookConfiguration {name} does not exist: no pod gets a gate"),
            "kubectl apply -k manifests (or manifests/overlays/cert-manager); pass --webhook-configuration if yours has another name",
        )];
    };
    let Some(w) = config.webhooks.as_ref().and_then(|w| w.first()) else {
        return vec![Finding::problem(
            "webhook",
            format!("MutatingWebhookConfiguration {name} has no webhooks"),
            "re-apply manifests/base/mutatingwebhookconfiguration.yaml",
        )];
    };
    let mut out = Vec::new();
    let cc = &w.client_config;
    let target = match (&cc.service, &cc.url) {
        (Some(s), _) => format!(
            "Service {}/{} port {} path {}",
            s.namespace,
            s.name,
            s.port.unwrap_or(443),
            s.path.as_deref().unwrap_or("/")
        ),
        (None, Some(url)) => format!("URL {url}"),
        (None, None) => "nothing (no service, no url)".into(),
    };
    out.push(Finding::ok(
        "webhook",
        format!(
            "MutatingWebhookConfiguration {name} exists; webhook {} calls {target}",
            w.name
        ),
    ));
    out.extend(endpoints(service, cc.url.is_some()));
    out.push(ca_bundle(w, probe));
    out.push(failure_policy(w));
    out.push(timeout(w));
    out
}

fn endpoints(service: Option<&ServiceState>, url: bool) -> Option<Finding> {
    let Some(s) = service else {
        return url.then(|| {
            Finding::ok(
                "endpoints",
                "the webhook is called by URL: no Service endpoints to check",
            )
        });
    };
    let svc = format!("{}/{}", s.namespace, s.name);
    Some(if !s.exists {
        Finding::problem(
            "endpoints",
            format!("Service {svc}, which the webhook calls, does not exist"),
            "kubectl apply -k manifests (manifests/base/service.yaml)",
        )
    } else if s.ready.is_empty() {
        Finding::problem(
            "endpoints",
            format!(
                "Service {svc} has no ready endpoints ({} not ready): the API server cannot call readygate, so pods are created without gates (failurePolicy Ignore) or not at all (Fail)",
                s.not_ready
            ),
            format!(
                "kubectl -n {} get pods -l app.kubernetes.io/name=readygate; a replica is Ready once its caches are synced (`/readyz` says what it waits for); check its logs",
                s.namespace
            ),
        )
    } else {
        Finding::ok(
            "endpoints",
            format!(
                "Service {svc} has {} ready endpoint(s): {}",
                s.ready.len(),
                s.ready.join(", ")
            ),
        )
    })
}

fn ca_bundle(w: &MutatingWebhook, probe: Option<&Probe>) -> Finding {
    let empty = w
        .client_config
        .ca_bundle
        .as_ref()
        .is_none_or(|b| b.0.is_empty());
    if empty && w.client_config.service.is_some() {
        return Finding::problem(
            "ca-bundle",
            format!(
                "webhook {} has no caBundle: the API server cannot verify readygate's certificate and every call fails",
                w.name
            ),
            "use manifests/overlays/cert-manager (its CA injector fills caBundle), or set it from `readygate certs` (certs/README.md)",
        );
    }
    let name = w
        .client_config
        .service
        .as_ref()
        .map(|s| format!("{}.{}.svc", s.name, s.namespace))
        .or_else(|| w.client_config.url.as_deref().map(url_host))
        .unwrap_or_default();
    match probe {
        Some(Probe::Verified { addr }) => Finding::ok(
            "ca-bundle",
            format!("caBundle verifies the certificate served at {addr} for {name}"),
        ),
        Some(Probe::Rejected { addr, error }) => Finding::problem(
            "ca-bundle",
            format!(
                "caBundle does not verify the certificate served at {addr} for {name}: {error}; the API server rejects every call the same way"
            ),
            "put the CA that signed the serving certificate into caBundle: with cert-manager check its cainjector and the Certificate; otherwise re-run `readygate certs`, update the Secret and patch caBundle (certs/README.md)",
        ),
        Some(Probe::Unreachable { error }) => Finding::warning(
            "ca-bundle",
            format!("cannot check the caBundle: the webhook is not reachable from here ({error})"),
            "pass --webhook-url https://HOST:PORT for an address of the webhook you can reach (e.g. after `kubectl -n readygate-system port-forward svc/readygate-webhook 9443:443`)",
        ),
        Some(Probe::NotTried(why)) => Finding::warning(
            "ca-bundle",
            format!("cannot check the caBundle: {why}"),
            "pass --webhook-url https://HOST:PORT for an address of the webhook you can reach",
        ),
        None => Finding::warning(
            "ca-bundle",
            "cannot check the caBundle: the webhook names neither a Service nor a URL",
            "set clientConfig.service (manifests/base/mutatingwebhookconfiguration.yaml)",
        ),
    }
}

/// The host of a webhook URL (`https://HOST[:PORT]/path`): the name its certificate must carry.
pub fn url_host(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or_default();
    match authority.strip_prefix('[') {
        // [IPv6]:port
        Some(v6) => v6.split(']').next().unwrap_or_default().to_string(),
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(h, _)| h)
            .to_string(),
    }
}

fn failure_policy(w: &MutatingWebhook) -> Finding {
    // admissionregistration.k8s.io/v1 defaults failurePolicy to Fail.
    match w.failure_policy.as_deref().unwrap_or("Fail") {
        "Ignore" => Finding::ok(
            "failure-policy",
            "failurePolicy Ignore: while readygate is unavailable pods are still created, but without gates (the controller counts them in readygate_pods_missing_gates and the ReadygatePodsMissingGates alert fires)",
        ),
        policy => Finding::ok(
            "failure-policy",
            format!(
                "failurePolicy {policy}: while readygate is unavailable, pod creation in opted-in namespaces fails (readygate's own pods are excluded by the objectSelector, so it can always start)"
            ),
        ),
    }
}

fn timeout(w: &MutatingWebhook) -> Finding {
    // v1 defaults timeoutSeconds to 10.
    let t = w.timeout_seconds.unwrap_or(10);
    if t > MAX_TIMEOUT_SECONDS {
        Finding::warning(
            "timeout",
            format!(
                "timeoutSeconds {t}: when readygate hangs, every pod creation in an opted-in namespace waits up to {t}s"
            ),
            format!(
                "set timeoutSeconds to at most {MAX_TIMEOUT_SECONDS} (the manifests use 5; readygate answers in milliseconds)"
            ),
        )
    } else {
        Finding::ok("timeout", format!("timeoutSeconds {t}"))
    }
}

fn labels(ns: &Namespace) -> BTreeMap<String, String> {
    ns.metadata.labels.clone().unwrap_or_default()
}

fn opted_in(namespaces: &[Namespace]) -> Vec<String> {
    let mut out: Vec<String> = namespaces
        .iter()
        .filter(|n| labels(n).get(INJECT_LABEL).map(String::as_str) == Some(INJECT_LABEL_VALUE))
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    out.sort();
    out
}

/// Kubernetes label-selector semantics: an absent or empty selector matches everything.
pub fn selector_matches(sel: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(sel) = sel else { return true };
    let by_labels = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = sel.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    by_labels && by_expressions
}

fn double_injection(
    configs: &[MutatingWebhookConfiguration],
    ours: &str,
    namespaces: &[Namespace],
) -> Finding {
    let mut found = Vec::new();
    let mut overlap = Vec::new();
    for c in configs {
        let name = c.metadata.name.clone().unwrap_or_default();
        if name == ours {
            continue;
        }
        for w in c.webhooks.iter().flatten() {
            if w.name != LBC_POD_WEBHOOK {
                continue;
            }
            found.push(format!("{name} (webhook {})", w.name));
            for ns in namespaces {
                let l = labels(ns);
                let opted = l.get(INJECT_LABEL).map(String::as_str) == Some(INJECT_LABEL_VALUE);
                if opted && selector_matches(w.namespace_selector.as_ref(), &l) {
                    overlap.push(ns.metadata.name.clone().unwrap_or_default());
                }
            }
        }
    }
    overlap.sort();
    overlap.dedup();
    if !overlap.is_empty() {
        Finding::problem(
            "double-injection",
            format!(
                "the AWS Load Balancer Controller's pod webhook {} also injects readiness gates into {}: both webhooks add the same gates and both controllers write them",
                found.join(", "),
                overlap.join(", ")
            ),
            "start the AWS Load Balancer Controller with --enable-pod-readiness-gate-inject=false, so that only readygate injects",
        )
    } else if !found.is_empty() {
        Finding::ok(
            "double-injection",
            format!(
                "the AWS Load Balancer Controller's pod webhook {} selects none of the opted-in namespaces",
                found.join(", ")
            ),
        )
    } else {
        Finding::ok(
            "double-injection",
            format!("no other webhook ({LBC_POD_WEBHOOK}) injects readiness gates"),
        )
    }
}

fn namespaces(opted_in: &[String]) -> Finding {
    if opted_in.is_empty() {
        Finding::warning(
            "namespaces",
            format!(
                "no namespace is labelled {INJECT_LABEL}={INJECT_LABEL_VALUE}: no pod gets a gate"
            ),
            format!("kubectl label namespace NAMESPACE {INJECT_LABEL}={INJECT_LABEL_VALUE}"),
        )
    } else {
        Finding::ok(
            "namespaces",
            format!("opted-in namespaces: {}", opted_in.join(", ")),
        )
    }
}

fn missing_gates(index: Option<&Index>) -> Finding {
    let Some(ix) = index else {
        return Finding::warning(
            "missing-gates",
            "cannot look for pods missing their gates: TargetGroupBindings could not be listed",
            "install the TargetGroupBinding CRD, or run doctor with a context allowed to list them",
        );
    };
    let mut missing: Vec<(String, String, Vec<String>)> = ix
        .pods()
        .filter(|(ns, _, pod)| !pod.finished && ix.is_opted_in(ns))
        .filter_map(|(ns, name, pod)| {
            let lacking: Vec<String> = ix
                .gates_for(ns, pod.labels.as_slice())
                .into_iter()
                .filter(|g| !pod.gates.iter().any(|b| gate_type(b) == *g))
                .collect();
            (!lacking.is_empty()).then(|| (ns.to_string(), name.to_string(), lacking))
        })
        .collect();
    if missing.is_empty() {
        return Finding::ok(
            "missing-gates",
            "every pod selected by a binding in an opted-in namespace has its gates",
        );
    }
    missing.sort();
    let (ns, pod, _) = &missing[0];
    Finding::problem(
        "missing-gates",
        format!(
            "{} pod(s) selected by a TargetGroupBinding have no gate for it (created before the binding existed, or while the webhook was unavailable): {}; the load balancer does not hold their readiness",
            missing.len(),
            some_of(
                missing
                    .iter()
                    .map(|(ns, pod, gates)| format!("{ns}/{pod} lacks {}", gates.join(", ")))
            ),
        ),
        format!(
            "delete them so their controllers recreate them with the gates, e.g. `kubectl -n {ns} delete pod {pod}` (or `kubectl rollout restart` their Deployment)"
        ),
    )
}

/// Gates whose binding the AWS Load Balancer Controller reconciles (its finalizer): it writes
/// their conditions too, so readygate leaves False what that controller keeps False. The pods
/// waiting for a reason only a change of the target group ends are named, with that change.
fn aws_controller(index: Option<&Index>) -> Finding {
    const CHECK: &str = "aws-controller";
    let Some(ix) = index else {
        return Finding::warning(
            CHECK,
            "cannot tell which bindings the AWS Load Balancer Controller reconciles: TargetGroupBindings could not be listed",
            "install the TargetGroupBinding CRD, or run doctor with a context allowed to list them",
        );
    };
    let mut shared = 0;
    let mut held: Vec<(String, String, String, &'static str)> = Vec::new();
    for (ns, name, pod) in ix.pods().filter(|(_, _, p)| !p.finished) {
        for gate in &pod.gates {
            if !ix.binding(ns, gate).is_some_and(|b| b.aws_controller) {
                continue;
            }
            shared += 1;
            let Some(c) = pod
                .condition(gate)
                .filter(|c| c.status != ConditionStatus::True)
            else {
                continue;
            };
            let fix = match c.reason.as_str() {
                "Target.NotInUse" => "attach its target group to a load balancer",
                "Target.HealthCheckDisabled" => "enable its target group's health checks",
                _ => continue,
            };
            held.push((ns.to_string(), name.to_string(), gate.clone(), fix));
        }
    }
    let released = "readygate writes what it writes and releases no gate it keeps False (unused or unavailable targets, --failsafe-timeout)";
    if held.is_empty() {
        return Finding::ok(
            CHECK,
            if shared == 0 {
                format!(
                    "no gated pod's binding carries the AWS Load Balancer Controller's finalizer {AWS_CONTROLLER_FINALIZER}: readygate is the only writer of their conditions"
                )
            } else {
                format!(
                    "{shared} gate(s) belong to bindings the AWS Load Balancer Controller reconciles (finalizer {AWS_CONTROLLER_FINALIZER}), so it writes their conditions too: {released}; none is held for a reason only a change of its target group ends"
                )
            },
        );
    }
    held.sort();
    Finding::warning(
        CHECK,
        format!(
            "{} gate(s) stay False because the AWS Load Balancer Controller reconciles their binding (finalizer {AWS_CONTROLLER_FINALIZER}) and keeps them False where readygate would release them: {}; {released}",
            held.len(),
            some_of(
                held.iter()
                    .map(|(ns, pod, gate, fix)| format!("{ns}/{pod} ({}: {fix})", gate_type(gate)))
            ),
        ),
        "make the change named beside each pod, or delete the binding (the AWS controller then marks its gates True)",
    )
}

/// The first [`NAMED_PODS`] of `items`, joined, and how many more there are.
fn some_of(items: impl ExactSizeIterator<Item = String>) -> String {
    let more = items.len().saturating_sub(NAMED_PODS);
    let named: Vec<String> = items.take(NAMED_PODS).collect();
    if more > 0 {
        format!("{}; and {more} more", named.join("; "))
    } else {
        named.join("; ")
    }
}

fn leader(lease: &Lookup<Lease>, lease_ref: &str, now_ms: i64) -> Finding {
    let fix_logs = "check that readygate runs (`kubectl -n readygate-system get pods -l app.kubernetes.io/name=readygate`) with --controller true, its logs, and its RBAC on coordination.k8s.io leases";
    let lease = match lease {
        Lookup::Found(l) => l,
        Lookup::Absent => {
            return Finding::problem(
                "leader",
                format!(
                    "Lease {lease_ref} does not exist: no replica runs the status controller, so no gate turns True"
                ),
                fix_logs,
            );
        }
        Lookup::Failed(e) => {
            return Finding::warning(
                "leader",
                format!("cannot read Lease {lease_ref}: {e}"),
                "run doctor with a context allowed to get leases in readygate's namespace",
            );
        }
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.filter(|h| !h.is_empty());
    let Some(holder) = holder else {
        return Finding::problem(
            "leader",
            format!("no replica holds Lease {lease_ref}: no gate turns True until one does"),
            fix_logs,
        );
    };
    let duration_s = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    let renewed_ms = spec
        .renew_time
        .or(spec.acquire_time)
        .map(|t| t.0.as_millisecond());
    match renewed_ms {
        Some(r) if now_ms - r <= duration_s * 1000 => Finding::ok(
            "leader",
            format!(
                "{holder} holds Lease {lease_ref}, renewed {}s ago (lease {duration_s}s)",
                ((now_ms - r) / 1000).max(0)
            ),
        ),
        Some(r) => Finding::problem(
            "leader",
            format!(
                "{holder} holds Lease {lease_ref} but last renewed it {}s ago, longer than the lease ({duration_s}s): no replica is leading, so no gate turns True",
                (now_ms - r) / 1000
            ),
            fix_logs,
        ),
        None => Finding::problem(
            "leader",
            format!("{holder} holds Lease {lease_ref} but it has never been renewed"),
            fix_logs,
        ),
    }
}

/// The findings as text, one per line, each fix indented below it.
pub fn render(findings: &[Finding], colour: bool) -> String {
    let mut out = String::new();
    for f in findings {
        let level = format!("{:<8}", f.level.to_string());
        let level = match (colour, f.level) {
            (false, _) => level,
            (true, Level::Ok) => format!("\x1b[32m{level}\x1b[0m"),
            (true, Level::Warning) => format!("\x1b[33m{level}\x1b[0m"),
            (true, Level::Problem) => format!("\x1b[31m{level}\x1b[0m"),
        };
        out.push_str(&format!("{level}{:<17}{}\n", f.check, f.summary));
        if let Some(fix) = &f.fix {
            out.push_str(&format!("{:25}fix: {fix}\n", ""));
        }
    }
    let problems = findings
        .iter()
        .filter(|f| f.level == Level::Problem)
        .count();
    let warnings = findings
        .iter()
        .filter(|f| f.level == Level::Warning)
        .count();
    out.push_str(&format!("\n{problems} problem(s), {warnings} warning(s)\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Pod, PortRef};
    use serde_json::{Value, json};

    const NOW: i64 = 1_800_000_000_000;

    fn rfc3339(ms: i64) -> String {
        jiff::Timestamp::from_millisecond(ms).unwrap().to_string()
    }

    fn ours(extra: Value) -> MutatingWebhookConfiguration {
        let mut w = json!({
            "name": "pod-readiness-gate.readygate.io",
            "clientConfig": {"service": {"namespace": "readygate-system", "name": "readygate-webhook", "path": "/mutate-v1-pod", "port": 443},
                             "caBundle": "Y2E="},
            "namespaceSelector": {"matchLabels": {INJECT_LABEL: "enabled"}},
            "failurePolicy": "Ignore", "timeoutSeconds": 5,
            "sideEffects": "None", "admissionReviewVersions": ["v1"]
        });
        for (k, v) in extra.as_object().unwrap() {
            w[k] = v.clone();
        }
        serde_json::from_value(json!({"metadata": {"name": "readygate"}, "webhooks": [w]})).unwrap()
    }

    fn lbc(selector: Value) -> MutatingWebhookConfiguration {
        serde_json::from_value(json!({"metadata": {"name": "aws-load-balancer-webhook"}, "webhooks": [
            {"name": "mpod.elbv2.k8s.aws", "clientConfig": {"service": {"namespace": "kube-system", "name": "aws-load-balancer-webhook-service"}},
             "namespaceSelector": selector, "sideEffects": "None", "admissionReviewVersions": ["v1"]},
            {"name": "mtargetgroupbinding.elbv2.k8s.aws", "clientConfig": {"service": {"namespace": "kube-system", "name": "aws-load-balancer-webhook-service"}},
             "sideEffects": "None", "admissionReviewVersions": ["v1"]}
        ]})).unwrap()
    }

    fn namespace(name: &str, opted_in: bool) -> Namespace {
        let labels = if opted_in {
            json!({INJECT_LABEL: "enabled", "kubernetes.io/metadata.name": name})
        } else {
            json!({"kubernetes.io/metadata.name": name})
        };
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
    }

    fn lease(holder: &str, renewed_ms: i64) -> Lease {
        serde_json::from_value(json!({"metadata": {"name": "readygate", "namespace": "readygate-system"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": rfc3339(renewed_ms).replace('Z', ".000000Z")}}))
        .unwrap()
    }

    fn service(probe: Probe, ready: &[&str]) -> ServiceState {
        ServiceState {
            namespace: "readygate-system".into(),
            name: "readygate-webhook".into(),
            exists: true,
            ready: ready.iter().map(|s| s.to_string()).collect(),
            not_ready: 0,
            probe,
        }
    }

    fn verified() -> Probe {
        Probe::Verified {
            addr: "10.0.0.5:9443".into(),
        }
    }

    /// `shop` opted in, with binding `web` selecting `app=web`, and pod web-1 with its gate.
    fn index(with_gate: bool) -> Index {
        let mut ix = crate::index::shop_index(true, "web", "arn:tg", PortRef::Number(8080));
        ix.apply_pod(
            "shop",
            "web-1",
            Pod {
                uid: "u1".into(),
                labels: vec![("app".into(), "web".into())],
                gates: if with_gate {
                    vec!["web".into()]
                } else {
                    vec![]
                },
                ..Pod::default()
            },
        );
        ix
    }

    struct Setup {
        configs: Vec<MutatingWebhookConfiguration>,
        namespaces: Vec<Namespace>,
        index: Index,
        crd: Lookup<()>,
        service: Option<ServiceState>,
        url_probe: Option<Probe>,
        lease: Lookup<Lease>,
    }

    fn healthy() -> Setup {
        Setup {
            configs: vec![ours(json!({}))],
            namespaces: vec![namespace("shop", true), namespace("other", false)],
            index: index(true),
            crd: Lookup::Found(()),
            service: Some(service(verified(), &["10.0.0.5:9443"])),
            url_probe: None,
            lease: Lookup::Found(lease("readygate-abc", NOW - 3_000)),
        }
    }

    fn run(s: &Setup) -> Vec<Finding> {
        findings(&Observed {
            now_ms: NOW,
            crd: s.crd.clone(),
            webhook_configurations: &s.configs,
            ours: "readygate",
            service: s.service.clone(),
            url_probe: s.url_probe.clone(),
            namespaces: &s.namespaces,
            index: Some(&s.index),
            lease: s.lease.clone(),
            lease_ref: "readygate-system/readygate".into(),
        })
    }

    fn only(findings: &[Finding], check: &str) -> Finding {
        let of: Vec<&Finding> = findings.iter().filter(|f| f.check == check).collect();
        assert_eq!(of.len(), 1, "{check}: {findings:#?}");
        of[0].clone()
    }

    /// The one problem of a setup, with its fix; everything else stays ok.
    fn sole_problem(s: &Setup, check: &str) -> Finding {
        let f = run(s);
        let problems: Vec<&Finding> = f.iter().filter(|f| f.level == Level::Problem).collect();
        assert_eq!(problems.len(), 1, "{f:#?}");
        assert_eq!(problems[0].check, check, "{f:#?}");
        assert!(problems[0].fix.is_some());
        assert_eq!(exit_code(&f), 1);
        problems[0].clone()
    }

    #[test]
    fn a_healthy_install_is_all_ok() {
        let f = run(&healthy());
        assert!(f.iter().all(|f| f.level == Level::Ok), "{f:#?}");
        assert_eq!(exit_code(&f), 0);
        let checks: Vec<&str> = f.iter().map(|f| f.check).collect();
        assert_eq!(
            checks,
            [
                "crd",
                "webhook",
                "endpoints",
                "ca-bundle",
                "failure-policy",
                "timeout",
                "double-injection",
                "namespaces",
                "missing-gates",
                "aws-controller",
                "leader"
            ]
        );
        assert!(only(&f, "namespaces").summary.ends_with("shop"));
        assert!(only(&f, "leader").summary.contains("readygate-abc"));
        let text = render(&f, false);
        assert!(text.contains("ok      crd"), "{text}");
        assert!(text.ends_with("0 problem(s), 0 warning(s)\n"), "{text}");
        assert!(!text.contains('\x1b'));
    }

    #[test]
    fn gates_the_aws_controller_keeps_false_are_named_with_the_change_that_ends_it() {
        let mut s = healthy();
        assert!(
            only(&run(&s), "aws-controller")
                .summary
                .contains("readygate is the only writer")
        );
        let mut binding = s.index.binding("shop", "web").unwrap().clone();
        binding.aws_controller = true;
        s.index.apply_binding("shop", binding);
        let f = only(&run(&s), "aws-controller");
        assert_eq!(f.level, Level::Ok, "{f:#?}");
        assert!(f.summary.starts_with("1 gate(s)"), "{f:#?}");
        let mut pod = s.index.pod("shop", "web-1").unwrap().clone();
        pod.conditions = vec![(
            "web".into(),
            crate::domain::Condition {
                status: ConditionStatus::False,
                reason: "Target.NotInUse".into(),
                message: "Target group is not configured to receive traffic from the load balancer"
                    .into(),
                last_transition_time: None,
            },
        )];
        s.index.apply_pod("shop", "web-1", pod);
        let f = only(&run(&s), "aws-controller");
        assert_eq!(f.level, Level::Warning, "{f:#?}");
        assert!(
            f.summary.contains(
                "shop/web-1 (target-health.elbv2.k8s.aws/web: attach its target group to a load balancer)"
            ),
            "{f:#?}"
        );
        assert!(f.fix.is_some());
        assert_eq!(exit_code(&run(&s)), 0, "a warning, not a problem");
    }

    #[test]
    fn a_missing_crd_is_a_problem() {
        let s = Setup {
            crd: Lookup::Absent,
            ..healthy()
        };
        let p = sole_problem(&s, "crd");
        assert!(p.summary.contains(BINDING_CRD), "{p:?}");
        assert!(p.fix.unwrap().contains("aws-load-balancer-controller"));
    }

    #[test]
    fn a_ca_bundle_that_does_not_verify_is_a_problem_and_an_unchecked_one_a_warning() {
        let mut s = healthy();
        s.service = Some(service(
            Probe::Rejected {
                addr: "10.0.0.5:9443".into(),
                error: "invalid peer certificate: UnknownIssuer".into(),
            },
            &["10.0.0.5:9443"],
        ));
        let p = sole_problem(&s, "ca-bundle");
        assert!(p.summary.contains("UnknownIssuer"), "{p:?}");
        assert!(p.fix.unwrap().contains("caBundle"));

        s.service = Some(service(
            Probe::Unreachable {
                error: "connection refused".into(),
            },
            &["10.0.0.5:9443"],
        ));
        let f = run(&s);
        let w = only(&f, "ca-bundle");
        assert_eq!(w.level, Level::Warning);
        assert!(w.summary.contains("cannot check"), "{w:?}");
        assert!(w.fix.unwrap().contains("--webhook-url"));
        assert_eq!(exit_code(&f), 0);

        // No caBundle at all: nothing can verify.
        s.configs = vec![ours(
            json!({"clientConfig": {"service": {"namespace": "readygate-system", "name": "readygate-webhook"}}}),
        )];
        let p = sole_problem(&s, "ca-bundle");
        assert!(p.summary.contains("no caBundle"), "{p:?}");
    }

    #[test]
    fn a_service_without_ready_endpoints_is_a_problem() {
        let mut s = healthy();
        s.service = Some(ServiceState {
            not_ready: 2,
            ..service(Probe::NotTried("no ready endpoint to probe".into()), &[])
        });
        let f = run(&s);
        let p = only(&f, "endpoints");
        assert_eq!(p.level, Level::Problem);
        assert!(
            p.summary.contains("no ready endpoints (2 not ready)"),
            "{p:?}"
        );
        assert_eq!(only(&f, "ca-bundle").level, Level::Warning);
        assert_eq!(exit_code(&f), 1);

        s.service = Some(ServiceState {
            exists: false,
            ..service(Probe::NotTried("no Service".into()), &[])
        });
        let p = only(&run(&s), "endpoints");
        assert!(p.summary.contains("does not exist"), "{p:?}");
    }

    #[test]
    fn a_missing_webhook_configuration_is_a_problem() {
        let s = Setup {
            configs: vec![],
            ..healthy()
        };
        let p = sole_problem(&s, "webhook");
        assert!(p.summary.contains("readygate does not exist"), "{p:?}");
    }

    #[test]
    fn a_pod_missing_its_gate_is_named_with_the_fix() {
        let s = Setup {
            index: index(false),
            ..healthy()
        };
        let p = sole_problem(&s, "missing-gates");
        assert!(
            p.summary
                .contains("shop/web-1 lacks target-health.elbv2.k8s.aws/web"),
            "{p:?}"
        );
        assert!(p.fix.unwrap().contains("kubectl -n shop delete pod web-1"));
    }

    #[test]
    fn the_load_balancer_controllers_pod_webhook_on_opted_in_namespaces_is_double_injection() {
        // LBC's chart selects opted-in namespaces with matchExpressions.
        let mut s = healthy();
        s.configs.push(lbc(json!({"matchExpressions": [
            {"key": INJECT_LABEL, "operator": "In", "values": ["enabled"]}
        ]})));
        let p = sole_problem(&s, "double-injection");
        assert!(
            p.summary.contains("aws-load-balancer-webhook") && p.summary.contains("shop"),
            "{p:?}"
        );
        assert!(
            p.fix
                .unwrap()
                .contains("--enable-pod-readiness-gate-inject=false")
        );
        // Its selector matches no opted-in namespace: fine.
        let mut s = healthy();
        s.configs
            .push(lbc(json!({"matchLabels": {"team": "none"}})));
        let f = only(&run(&s), "double-injection");
        assert_eq!(f.level, Level::Ok, "{f:?}");
    }

    #[test]
    fn no_leader_or_a_stale_lease_is_a_problem() {
        for (lease, words) in [
            (Lookup::Absent, "does not exist"),
            (Lookup::Found(lease("", NOW)), "no replica holds"),
            (
                Lookup::Found(lease("readygate-abc", NOW - 60_000)),
                "last renewed it 60s ago",
            ),
        ] {
            let s = Setup { lease, ..healthy() };
            let p = sole_problem(&s, "leader");
            assert!(p.summary.contains(words), "{words}: {p:?}");
        }
    }

    #[test]
    fn a_long_timeout_is_a_warning_and_the_failure_policy_is_explained() {
        let s = Setup {
            configs: vec![ours(json!({"timeoutSeconds": 30, "failurePolicy": "Fail"}))],
            ..healthy()
        };
        let f = run(&s);
        let t = only(&f, "timeout");
        assert_eq!(t.level, Level::Warning);
        assert!(t.summary.contains("waits up to 30s"), "{t:?}");
        assert!(
            only(&f, "failure-policy")
                .summary
                .contains("pod creation in opted-in namespaces fails")
        );
        assert_eq!(exit_code(&f), 0);
    }

    #[test]
    fn no_opted_in_namespace_is_a_warning() {
        let s = Setup {
            namespaces: vec![namespace("other", false)],
            ..healthy()
        };
        let n = only(&run(&s), "namespaces");
        assert_eq!(n.level, Level::Warning);
        assert!(n.fix.unwrap().contains("kubectl label namespace"));
    }

    #[test]
    fn a_webhook_called_by_url_is_probed_at_that_url() {
        let mut s = healthy();
        s.configs = vec![ours(
            json!({"clientConfig": {"url": "https://dev.example:9443/mutate-v1-pod", "caBundle": "Y2E="}}),
        )];
        s.service = None;
        s.url_probe = Some(Probe::Rejected {
            addr: "dev.example:9443".into(),
            error: "invalid peer certificate: NotValidForName".into(),
        });
        let p = sole_problem(&s, "ca-bundle");
        assert!(
            p.summary
                .contains("for dev.example: invalid peer certificate"),
            "{p:?}"
        );
        let f = run(&s);
        assert!(
            only(&f, "webhook")
                .summary
                .contains("calls URL https://dev.example:9443/mutate-v1-pod")
        );
        assert_eq!(only(&f, "endpoints").level, Level::Ok);
        assert_eq!(url_host("https://[::1]:9443/x"), "::1");
        assert_eq!(url_host("https://localhost/x"), "localhost");
    }

    #[test]
    fn endpoint_addresses_come_from_slices_or_endpoints_on_the_services_port() {
        let slices: Vec<EndpointSlice> = serde_json::from_value(json!([
            {"metadata": {"name": "a"}, "addressType": "IPv4",
             "ports": [{"name": "metrics", "port": 8080}, {"name": "https", "port": 9443}],
             "endpoints": [{"addresses": ["10.0.0.5"], "conditions": {"ready": true}},
                           {"addresses": ["10.0.0.6"]},
                           {"addresses": ["10.0.0.7"], "conditions": {"ready": false}}]},
            {"metadata": {"name": "b"}, "addressType": "IPv6",
             "ports": [{"name": "https", "port": 9443}],
             "endpoints": [{"addresses": ["fd00::5"], "conditions": {"ready": true}}]}
        ]))
        .unwrap();
        assert_eq!(
            slice_addresses(&slices, Some("https")),
            (
                vec![
                    "10.0.0.5:9443".to_string(),
                    "10.0.0.6:9443".into(),
                    "[fd00::5]:9443".into()
                ],
                1
            )
        );
        let ep: Endpoints = serde_json::from_value(json!({"metadata": {"name": "s"}, "subsets": [
            {"addresses": [{"ip": "10.0.0.5"}], "notReadyAddresses": [{"ip": "10.0.0.7"}],
             "ports": [{"name": "https", "port": 9443}]}]}))
        .unwrap();
        assert_eq!(
            endpoints_addresses(&ep, Some("https")),
            (vec!["10.0.0.5:9443".to_string()], 1)
        );
        assert_eq!(endpoints_addresses(&ep, Some("other")), (vec![], 1 + 1));
    }

    #[test]
    fn label_selectors_follow_kubernetes() {
        let l: BTreeMap<String, String> = [("a".to_string(), "1".to_string())].into();
        let sel = |v: Value| serde_json::from_value::<LabelSelector>(v).unwrap();
        assert!(selector_matches(None, &l));
        assert!(selector_matches(Some(&sel(json!({}))), &l));
        assert!(selector_matches(
            Some(&sel(json!({"matchLabels": {"a": "1"}}))),
            &l
        ));
        assert!(!selector_matches(
            Some(&sel(json!({"matchLabels": {"a": "2"}}))),
            &l
        ));
        let expr = |op: &str, values: Value| {
            sel(json!({"matchExpressions": [{"key": "b", "operator": op, "values": values}]}))
        };
        assert!(selector_matches(Some(&expr("NotIn", json!(["x"]))), &l));
        assert!(selector_matches(
            Some(&expr("DoesNotExist", json!(null))),
            &l
        ));
        assert!(!selector_matches(Some(&expr("Exists", json!(null))), &l));
        assert!(!selector_matches(Some(&expr("In", json!(["x"]))), &l));
    }
}
