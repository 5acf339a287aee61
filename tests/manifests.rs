//! The shipped Kubernetes manifests (`manifests/`): every object parses as its API type without
//! losing a field, the kustomizations reference files that exist, and the settings a reviewer
//! relies on hold: the webhook can never block readygate's own pods or pod creation, the pod
//! runs locked down, and RBAC grants exactly the API calls readygate makes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use k8s_openapi::Resource;
use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, MutatingWebhookConfiguration};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodSpec, Service, ServiceAccount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use readygate::cli::{Cli, Command as Subcommand};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

const NAMESPACE: &str = "readygate-system";
const POD_NAME_LABEL: &str = "app.kubernetes.io/name";
const OPT_IN_LABEL: &str = "elbv2.k8s.aws/pod-readiness-gate-inject";
const TLS_SECRET: &str = "readygate-webhook-tls";
const NONROOT: i64 = 65532;

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests")
}

fn base_dir() -> PathBuf {
    manifests_dir().join("base")
}

fn monitoring_dir() -> PathBuf {
    manifests_dir().join("monitoring")
}

fn cert_manager_dir() -> PathBuf {
    manifests_dir().join("overlays").join("cert-manager")
}

// ---------------------------------------------------------------------------------------------
// Loading

/// One YAML document of a manifest file, normalised to JSON.
#[derive(Debug, Clone)]
struct Doc {
    file: PathBuf,
    value: Value,
}

impl Doc {
    fn str_at(&self, pointer: &str) -> &str {
        self.value
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or("")
    }
    fn api_version(&self) -> &str {
        self.str_at("/apiVersion")
    }
    fn kind(&self) -> &str {
        self.str_at("/kind")
    }
    fn name(&self) -> &str {
        self.str_at("/metadata/name")
    }
    fn namespace(&self) -> &str {
        self.str_at("/metadata/namespace")
    }
    fn describe(&self) -> String {
        format!("{}: {} {:?}", rel(&self.file), self.kind(), self.name())
    }
    fn typed<T: DeserializeOwned>(&self) -> T {
        serde_json::from_value(self.value.clone())
            .unwrap_or_else(|e| panic!("{}: does not parse: {e}", self.describe()))
    }
}

fn rel(path: &Path) -> String {
    path.strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .unwrap_or(path)
        .display()
        .to_string()
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

fn is_kustomization(path: &Path) -> bool {
    matches!(
        path.file_name().and_then(|n| n.to_str()),
        Some("kustomization.yaml" | "kustomization.yml" | "Kustomization")
    )
}

/// Every YAML file under `dir`, recursively, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("read {}: {e}", d.display())) {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if is_yaml(&path) || is_kustomization(&path) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn parse_yaml_stream(file: &Path, text: &str) -> Vec<Doc> {
    serde_yaml::Deserializer::from_str(text)
        .filter_map(|de| {
            let yaml = serde_yaml::Value::deserialize(de)
                .unwrap_or_else(|e| panic!("{}: invalid YAML: {e}", rel(file)));
            if yaml.is_null() {
                return None; // an empty document, e.g. after a trailing `---`
            }
            let value = serde_json::to_value(&yaml)
                .unwrap_or_else(|e| panic!("{}: YAML not representable as JSON: {e}", rel(file)));
            Some(Doc {
                file: file.to_path_buf(),
                value,
            })
        })
        .collect()
}

/// All object documents (not kustomizations) of the YAML files under `dir`.
fn load_docs(dir: &Path) -> Vec<Doc> {
    yaml_files(dir)
        .into_iter()
        .filter(|f| !is_kustomization(f))
        .flat_map(|f| {
            let text =
                std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("read {}: {e}", rel(&f)));
            parse_yaml_stream(&f, &text)
        })
        .collect()
}

/// The single document of `T`'s kind (and `name`, if given) among `docs`.
fn one<T: Resource + DeserializeOwned>(docs: &[Doc], name: Option<&str>) -> T {
    let found: Vec<&Doc> = docs
        .iter()
        .filter(|d| d.api_version() == T::API_VERSION && d.kind() == T::KIND)
        .filter(|d| name.is_none_or(|n| d.name() == n))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {} {name:?}, found {}",
        T::KIND,
        found.len()
    );
    found[0].typed()
}

// ---------------------------------------------------------------------------------------------
// Round trip through the API types

/// cert-manager.io/v1 kinds, reduced to the fields the overlay uses. `deny_unknown_fields` makes
/// a misspelled field an error, as the round trip does for the Kubernetes types.
mod cert_manager {
    use super::*;

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct Issuer {
        pub api_version: String,
        pub kind: String,
        pub metadata: ObjectMeta,
        pub spec: IssuerSpec,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct IssuerSpec {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub self_signed: Option<SelfSignedIssuer>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub ca: Option<CaIssuer>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct SelfSignedIssuer {}

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct CaIssuer {
        pub secret_name: String,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct Certificate {
        pub api_version: String,
        pub kind: String,
        pub metadata: ObjectMeta,
        pub spec: CertificateSpec,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct CertificateSpec {
        pub secret_name: String,
        pub issuer_ref: IssuerRef,
        #[serde(rename = "isCA", default, skip_serializing_if = "Option::is_none")]
        pub is_ca: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub common_name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub dns_names: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub duration: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub renew_before: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub private_key: Option<PrivateKey>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub usages: Option<Vec<KeyUsage>>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct IssuerRef {
        pub name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub kind: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub group: Option<String>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct PrivateKey {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub algorithm: Option<PrivateKeyAlgorithm>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub size: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub rotation_policy: Option<RotationPolicy>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    pub enum PrivateKeyAlgorithm {
        #[serde(rename = "RSA")]
        Rsa,
        #[serde(rename = "ECDSA")]
        Ecdsa,
        Ed25519,
    }

    #[derive(Debug, Serialize, Deserialize)]
    pub enum RotationPolicy {
        Never,
        Always,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum KeyUsage {
        #[serde(rename = "digital signature")]
        DigitalSignature,
        #[serde(rename = "key encipherment")]
        KeyEncipherment,
        #[serde(rename = "cert sign")]
        CertSign,
        #[serde(rename = "server auth")]
        ServerAuth,
        #[serde(rename = "client auth")]
        ClientAuth,
    }
}

/// monitoring.coreos.com/v1 kinds (Prometheus Operator), reduced to the fields
/// manifests/monitoring uses, with `deny_unknown_fields` as for cert-manager.
mod monitoring {
    use super::*;

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct ServiceMonitor {
        pub api_version: String,
        pub kind: String,
        pub metadata: ObjectMeta,
        pub spec: ServiceMonitorSpec,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct ServiceMonitorSpec {
        pub selector: LabelSelector,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub namespace_selector: Option<NamespaceSelector>,
        pub endpoints: Vec<Endpoint>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct NamespaceSelector {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub any: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub match_names: Option<Vec<String>>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct Endpoint {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub port: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub path: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub scheme: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub interval: Option<String>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct PrometheusRule {
        pub api_version: String,
        pub kind: String,
        pub metadata: ObjectMeta,
        pub spec: PrometheusRuleSpec,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct PrometheusRuleSpec {
        pub groups: Vec<RuleGroup>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RuleGroup {
        pub name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub interval: Option<String>,
        pub rules: Vec<Rule>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Rule {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub alert: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub record: Option<String>,
        pub expr: String,
        #[serde(rename = "for", default, skip_serializing_if = "Option::is_none")]
        pub for_: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub labels: Option<BTreeMap<String, String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub annotations: Option<BTreeMap<String, String>>,
    }
}

type RoundTrip = fn(&Value) -> Result<Value, String>;

fn round_trip<T: Serialize + DeserializeOwned>(value: &Value) -> Result<Value, String> {
    let typed: T = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(&typed).map_err(|e| e.to_string())
}

/// The API type for an apiVersion and kind; `None` for a kind these manifests should not hold.
fn round_trip_for(api_version: &str, kind: &str) -> Option<RoundTrip> {
    fn k8s<T: Resource + Serialize + DeserializeOwned>() -> (&'static str, &'static str, RoundTrip)
    {
        (T::API_VERSION, T::KIND, round_trip::<T>)
    }
    let table = [
        k8s::<Namespace>(),
        k8s::<ServiceAccount>(),
        k8s::<Service>(),
        k8s::<ClusterRole>(),
        k8s::<ClusterRoleBinding>(),
        k8s::<Role>(),
        k8s::<RoleBinding>(),
        k8s::<Deployment>(),
        k8s::<PodDisruptionBudget>(),
        k8s::<MutatingWebhookConfiguration>(),
        k8s::<ConfigMap>(),
        (
            "cert-manager.io/v1",
            "Issuer",
            round_trip::<cert_manager::Issuer>,
        ),
        (
            "cert-manager.io/v1",
            "Certificate",
            round_trip::<cert_manager::Certificate>,
        ),
        (
            "monitoring.coreos.com/v1",
            "ServiceMonitor",
            round_trip::<monitoring::ServiceMonitor>,
        ),
        (
            "monitoring.coreos.com/v1",
            "PrometheusRule",
            round_trip::<monitoring::PrometheusRule>,
        ),
    ];
    table
        .into_iter()
        .find(|(v, k, _)| *v == api_version && *k == kind)
        .map(|(_, _, f)| f)
}

/// Paths where `after` differs from `before`: a field the type dropped, changed or added.
fn differences(before: &Value, after: &Value, path: &str, out: &mut Vec<String>) {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            for (key, bv) in b {
                let p = format!("{path}.{key}");
                match a.get(key) {
                    Some(av) => differences(bv, av, &p, out),
                    None => out.push(format!(
                        "{p} is missing after the round trip (unknown field?)"
                    )),
                }
            }
            for key in a.keys().filter(|k| !b.contains_key(*k)) {
                out.push(format!("{path}.{key} was added by the round trip"));
            }
        }
        (Value::Array(b), Value::Array(a)) if b.len() == a.len() => {
            for (i, (bv, av)) in b.iter().zip(a).enumerate() {
                differences(bv, av, &format!("{path}[{i}]"), out);
            }
        }
        _ if before == after => {}
        _ => out.push(format!("{path} changed: {before} -> {after}")),
    }
}

/// Every failure of `docs` to round-trip through its API type, one line each.
fn round_trip_failures(docs: &[Doc]) -> Vec<String> {
    let mut failures = Vec::new();
    for doc in docs {
        let Some(round_trip) = round_trip_for(doc.api_version(), doc.kind()) else {
            failures.push(format!(
                "{}: unknown apiVersion/kind {:?}/{:?}; add its type to round_trip_for",
                doc.describe(),
                doc.api_version(),
                doc.kind()
            ));
            continue;
        };
        match round_trip(&doc.value) {
            Err(e) => failures.push(format!("{}: does not parse: {e}", doc.describe())),
            Ok(after) => {
                let mut diffs = Vec::new();
                differences(&doc.value, &after, "", &mut diffs);
                failures.extend(
                    diffs
                        .into_iter()
                        .map(|d| format!("{}: {d}", doc.describe())),
                );
            }
        }
    }
    failures
}

fn assert_no_failures(what: &str, failures: &[String]) {
    if !failures.is_empty() {
        let mut msg = format!("{what}:\n");
        for f in failures {
            let _ = writeln!(msg, "  {f}");
        }
        panic!("{msg}");
    }
}

#[test]
fn every_manifest_round_trips_through_its_api_type() {
    let docs = load_docs(&manifests_dir());
    assert!(
        docs.len() >= 10,
        "expected the base and overlay objects, found {}",
        docs.len()
    );
    assert_no_failures(
        "manifests that do not survive a round trip through their API type",
        &round_trip_failures(&docs),
    );
}

#[test]
fn round_trip_check_catches_a_misspelled_field() {
    // Guards the guard: a typo must not pass silently.
    let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n\
                spec:\n  replicas: 1\n  selector: {matchLabels: {a: b}}\n  template:\n    \
                metadata: {labels: {a: b}}\n    spec:\n      containers:\n        - name: c\n          \
                securityContext: {readOnlyRootFileSystem: true}\n";
    let docs = parse_yaml_stream(Path::new("typo.yaml"), text);
    let failures = round_trip_failures(&docs);
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        failures[0]
            .contains(".spec.template.spec.containers[0].securityContext.readOnlyRootFileSystem")
            && failures[0].contains("Deployment")
            && failures[0].contains("typo.yaml"),
        "{failures:?}"
    );

    let cert = "apiVersion: cert-manager.io/v1\nkind: Certificate\nmetadata: {name: x}\n\
                spec: {secretName: s, issuerRef: {name: i}, dnsName: [a]}\n";
    let failures = round_trip_failures(&parse_yaml_stream(Path::new("cert.yaml"), cert));
    assert!(
        failures.len() == 1 && failures[0].contains("dnsName"),
        "{failures:?}"
    );

    let rule = "apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata: {name: x}\n\
                spec: {groups: [{name: g, rules: [{alert: A, expr: up == 0, fro: 5m}]}]}\n";
    let failures = round_trip_failures(&parse_yaml_stream(Path::new("rule.yaml"), rule));
    assert!(
        failures.len() == 1 && failures[0].contains("fro"),
        "{failures:?}"
    );

    let unknown = "apiVersion: v1\nkind: Secret\nmetadata: {name: x}\n";
    let failures = round_trip_failures(&parse_yaml_stream(Path::new("s.yaml"), unknown));
    assert!(
        failures.len() == 1 && failures[0].contains("unknown apiVersion/kind"),
        "{failures:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Kustomizations

/// Paths a kustomization lists under `resources` and `patches` (string or `{path: ...}` entries;
/// inline patches have no path).
fn kustomization_refs(kustomization: &Value) -> Vec<String> {
    let mut refs = Vec::new();
    for key in [
        "resources",
        "patches",
        "patchesStrategicMerge",
        "components",
    ] {
        for entry in kustomization
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            match entry {
                Value::String(s) => refs.push(s.clone()),
                Value::Object(m) => {
                    if let Some(p) = m.get("path").and_then(Value::as_str) {
                        refs.push(p.to_owned());
                    }
                }
                other => panic!("unexpected {key} entry {other}"),
            }
        }
    }
    refs
}

#[test]
fn kustomizations_list_existing_files_and_every_manifest_is_listed() {
    let files = yaml_files(&manifests_dir());
    let kustomizations: Vec<&PathBuf> = files.iter().filter(|f| is_kustomization(f)).collect();
    for dir in [
        manifests_dir(),
        base_dir(),
        cert_manager_dir(),
        monitoring_dir(),
    ] {
        assert!(
            kustomizations
                .iter()
                .any(|k| k.parent() == Some(dir.as_path())),
            "{} has no kustomization.yaml",
            rel(&dir)
        );
    }

    let mut failures = Vec::new();
    let mut listed = BTreeSet::new();
    for k in &kustomizations {
        let text = std::fs::read_to_string(k).expect("read kustomization");
        let value: Value =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: invalid YAML: {e}", rel(k)));
        let dir = k.parent().expect("parent");
        for r in kustomization_refs(&value) {
            if r.contains("://") || r.starts_with("github.com/") {
                continue; // remote bases are not fetched here
            }
            let path = dir.join(&r);
            if path.is_file() {
                listed.insert(path.canonicalize().expect("canonicalize"));
            } else if !path.is_dir() || !path.join("kustomization.yaml").is_file() {
                failures.push(format!(
                    "{} lists {r:?}, which is neither a file nor a directory with a kustomization.yaml",
                    rel(k)
                ));
            }
        }
        // Files a generator reads (`files: [path]` or `[key=path]`) must exist.
        for generator in value
            .get("configMapGenerator")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for file in generator
                .get("files")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let file = file.as_str().unwrap_or_default();
                let path = file.split_once('=').map_or(file, |(_, p)| p);
                if !dir.join(path).is_file() {
                    failures.push(format!(
                        "{} generates from {path:?}, which does not exist",
                        rel(k)
                    ));
                }
            }
        }
    }
    // A manifest no kustomization lists would never be applied.
    for f in files.iter().filter(|f| !is_kustomization(f)) {
        if !listed.contains(&f.canonicalize().expect("canonicalize")) {
            failures.push(format!("{} is not listed by any kustomization", rel(f)));
        }
    }
    assert_no_failures("kustomization problems", &failures);
}

// ---------------------------------------------------------------------------------------------
// Semantics

fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            op => panic!("unknown label selector operator {op}"),
        }
    });
    by_labels && by_expressions
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn pod_spec(deployment: &Deployment) -> &PodSpec {
    deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("Deployment has a pod template spec")
}

fn pod_labels(deployment: &Deployment) -> BTreeMap<String, String> {
    deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .expect("pod template has labels")
}

fn readygate_container(deployment: &Deployment) -> &Container {
    let containers = &pod_spec(deployment).containers;
    assert_eq!(containers.len(), 1, "one container expected");
    &containers[0]
}

/// The container port number a Service targetPort or probe port refers to.
fn resolve_port(container: &Container, port: &IntOrString) -> i32 {
    match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => {
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))
                .unwrap_or_else(|| panic!("no container port named {name}"))
                .container_port
        }
    }
}

fn the_webhook(config: &MutatingWebhookConfiguration) -> &MutatingWebhook {
    let webhooks = config.webhooks.as_deref().unwrap_or_default();
    assert_eq!(webhooks.len(), 1, "one webhook expected");
    &webhooks[0]
}

#[test]
fn webhook_only_sees_opted_in_pods_and_never_blocks_pod_creation() {
    let docs = load_docs(&base_dir());
    let config: MutatingWebhookConfiguration = one(&docs, Some("readygate"));
    let deployment: Deployment = one(&docs, Some("readygate"));
    let webhook = the_webhook(&config);

    assert_eq!(webhook.name, "pod-readiness-gate.readygate.io");
    let ns_selector = webhook
        .namespace_selector
        .as_ref()
        .expect("namespaceSelector");
    assert_eq!(
        ns_selector
            .match_labels
            .as_ref()
            .and_then(|l| l.get(OPT_IN_LABEL))
            .map(String::as_str),
        Some("enabled"),
        "namespaceSelector must require {OPT_IN_LABEL}: enabled"
    );
    assert!(
        !selector_matches(ns_selector, &labels(&[])),
        "unlabelled namespaces must be skipped"
    );

    // readygate's own pods are never sent to readygate; everyone else's are.
    let objects = webhook.object_selector.as_ref().expect("objectSelector");
    assert!(
        !selector_matches(objects, &pod_labels(&deployment)),
        "objectSelector must exclude readygate's own pods {:?}",
        pod_labels(&deployment)
    );
    assert!(selector_matches(objects, &labels(&[("app", "web")])));
    assert!(selector_matches(
        objects,
        &labels(&[(POD_NAME_LABEL, "web")])
    ));

    assert_eq!(webhook.side_effects, "None");
    assert_eq!(webhook.failure_policy.as_deref(), Some("Ignore"));
    assert_eq!(webhook.reinvocation_policy.as_deref(), Some("Never"));
    assert_eq!(webhook.match_policy.as_deref(), Some("Equivalent"));
    assert_eq!(webhook.admission_review_versions, ["v1"]);
    assert!(
        webhook
            .timeout_seconds
            .is_some_and(|t| (1..=10).contains(&t)),
        "short timeout"
    );

    let rules = webhook.rules.as_deref().unwrap_or_default();
    assert_eq!(rules.len(), 1);
    let rule = &rules[0];
    assert_eq!(rule.operations.as_deref(), Some(&["CREATE".to_owned()][..]));
    assert_eq!(rule.api_groups.as_deref(), Some(&[String::new()][..]));
    assert_eq!(rule.api_versions.as_deref(), Some(&["v1".to_owned()][..]));
    assert_eq!(rule.resources.as_deref(), Some(&["pods".to_owned()][..]));
    assert_eq!(rule.scope.as_deref(), Some("Namespaced"));

    // The API server reaches a readygate container's webhook port through the Service.
    assert!(webhook.client_config.url.is_none());
    let target = webhook
        .client_config
        .service
        .as_ref()
        .expect("clientConfig.service");
    assert_eq!(target.path.as_deref(), Some("/mutate-v1-pod"));
    assert_eq!(target.namespace, NAMESPACE);
    let service: Service = one(&docs, Some(&target.name));
    let spec = service.spec.as_ref().expect("Service spec");
    assert!(
        selector_matches(
            &LabelSelector {
                match_labels: spec.selector.clone(),
                match_expressions: None
            },
            &pod_labels(&deployment)
        ) && spec.selector.as_ref().is_some_and(|s| !s.is_empty()),
        "Service {} must select readygate's pods",
        target.name
    );
    let port = spec
        .ports
        .iter()
        .flatten()
        .find(|p| Some(p.port) == target.port)
        .unwrap_or_else(|| panic!("Service {} has no port {:?}", target.name, target.port));
    assert_eq!(target.port, Some(443));
    let target_port = port.target_port.as_ref().expect("targetPort");
    assert_eq!(
        resolve_port(readygate_container(&deployment), target_port),
        9443
    );
}

#[test]
fn deployment_runs_locked_down_with_probes_and_rotating_tls() {
    let docs = load_docs(&base_dir());
    let deployment: Deployment = one(&docs, Some("readygate"));
    let spec = deployment.spec.as_ref().expect("spec");
    assert_eq!(spec.replicas, Some(2));
    assert!(selector_matches(&spec.selector, &pod_labels(&deployment)));
    assert_eq!(
        pod_labels(&deployment)
            .get(POD_NAME_LABEL)
            .map(String::as_str),
        Some("readygate")
    );

    let pod = pod_spec(&deployment);
    let pod_sc = pod.security_context.clone().unwrap_or_default();
    let c = readygate_container(&deployment);
    let sc = c
        .security_context
        .clone()
        .expect("container securityContext");
    // The container's settings win over the pod's.
    let run_as_non_root = sc.run_as_non_root.or(pod_sc.run_as_non_root);
    let run_as_user = sc.run_as_user.or(pod_sc.run_as_user);
    let run_as_group = sc.run_as_group.or(pod_sc.run_as_group);
    let seccomp = sc
        .seccomp_profile
        .clone()
        .or(pod_sc.seccomp_profile.clone());
    assert_eq!(run_as_non_root, Some(true));
    assert_eq!(run_as_user, Some(NONROOT));
    assert_eq!(run_as_group, Some(NONROOT));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.privileged, None);
    let caps = sc.capabilities.clone().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    assert!(
        caps.add.is_none_or(|a| a.is_empty()),
        "no capabilities added"
    );
    assert_eq!(seccomp.map(|s| s.type_), Some("RuntimeDefault".to_owned()));
    assert!(pod.host_network.is_none_or(|h| !h));

    assert_eq!(
        c.image.as_deref(),
        Some(concat!("readygate:", env!("CARGO_PKG_VERSION"))),
        "the release's tag (kustomize `images:` sets the registry)"
    );
    assert_eq!(c.args.as_deref(), Some(&["serve".to_owned()][..]));
    let env: BTreeMap<&str, &str> = c
        .env
        .iter()
        .flatten()
        .filter_map(|e| {
            let field = e.value_from.as_ref()?.field_ref.as_ref()?;
            Some((e.name.as_str(), field.field_path.as_str()))
        })
        .collect();
    assert_eq!(env.get("POD_NAMESPACE"), Some(&"metadata.namespace"));
    assert_eq!(env.get("POD_NAME"), Some(&"metadata.name"));

    let ports: BTreeMap<&str, i32> = c
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.as_deref().unwrap_or(""), p.container_port))
        .collect();
    assert_eq!(ports, BTreeMap::from([("webhook", 9443), ("admin", 8080)]));

    for (probe, path) in [
        (&c.liveness_probe, "/healthz"),
        (&c.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("HTTP probe");
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            resolve_port(c, &get.port),
            8080,
            "{path} is served on the admin port"
        );
        assert!(get.scheme.as_deref().is_none_or(|s| s == "HTTP"));
    }

    let resources = c.resources.as_ref().expect("resources");
    assert!(
        resources
            .requests
            .as_ref()
            .is_some_and(|r| r.contains_key("cpu") && r.contains_key("memory"))
    );
    assert!(
        resources
            .limits
            .as_ref()
            .is_some_and(|l| l.contains_key("memory"))
    );

    // The TLS Secret as a whole directory (no subPath), so rotation reaches the running pod.
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == "/tls")
        .expect("a volume mounted at /tls");
    assert_eq!(mount.read_only, Some(true));
    assert!(
        mount.sub_path.is_none() && mount.sub_path_expr.is_none(),
        "subPath mounts never update"
    );
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .expect("the /tls volume");
    let secret = volume.secret.as_ref().expect("/tls is a Secret volume");
    assert_eq!(secret.secret_name.as_deref(), Some(TLS_SECRET));
    if let Some(mode) = secret.default_mode {
        assert!(
            mode & 0o004 != 0 || pod_sc.fs_group == Some(NONROOT) && mode & 0o040 != 0,
            "user {NONROOT} cannot read the key with mode {mode:o}"
        );
    }

    let spread = pod
        .topology_spread_constraints
        .as_deref()
        .unwrap_or_default();
    assert!(
        spread
            .iter()
            .any(|t| t.topology_key == "kubernetes.io/hostname"
                && t.label_selector
                    .as_ref()
                    .is_some_and(|s| selector_matches(s, &pod_labels(&deployment)))),
        "replicas spread across nodes"
    );
    assert_eq!(pod.service_account_name.as_deref(), Some("readygate"));

    let pdb: PodDisruptionBudget = one(&docs, Some("readygate"));
    let pdb = pdb.spec.expect("PDB spec");
    assert_eq!(pdb.min_available, Some(IntOrString::Int(1)));
    assert!(
        pdb.selector
            .is_some_and(|s| selector_matches(&s, &pod_labels(&deployment)))
    );
}

#[test]
fn deployment_keeps_serving_until_its_endpoint_is_gone_then_drains() {
    let docs = load_docs(&base_dir());
    let deployment: Deployment = one(&docs, Some("readygate"));
    let c = readygate_container(&deployment);
    // The image is distroless: the preStop must be the native sleep, not exec (no shell).
    let pre_stop = c
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .expect("a preStop hook");
    assert!(
        pre_stop.exec.is_none() && pre_stop.http_get.is_none() && pre_stop.tcp_socket.is_none()
    );
    let sleep = pre_stop.sleep.as_ref().expect("preStop.sleep").seconds;
    assert!(
        sleep >= 5,
        "preStop sleeps {sleep}s, less than endpoint propagation"
    );

    // What readygate does after SIGTERM, from its flags (the container's env, else defaults).
    let mut argv = vec!["readygate".to_owned()];
    argv.extend(c.args.iter().flatten().cloned());
    for e in c.env.iter().flatten() {
        let flag = match e.name.as_str() {
            "READYGATE_SHUTDOWN_DELAY" => "--shutdown-delay",
            "READYGATE_DRAIN_TIMEOUT" => "--drain-timeout",
            _ => continue,
        };
        argv.extend([flag.to_owned(), e.value.clone().expect("a literal value")]);
    }
    let Subcommand::Serve(serve) = Cli::try_parse_from(&argv)
        .expect("the container's args")
        .command
    else {
        panic!("the container runs `readygate serve`")
    };
    let delay = serve.webhook.shutdown_delay.as_secs() as i64;
    let drain = serve.webhook.drain_timeout.as_secs() as i64;
    assert!(delay >= 5, "shutdown delay {delay}s");
    let grace = pod_spec(&deployment)
        .termination_grace_period_seconds
        .expect("terminationGracePeriodSeconds");
    // preStop and the shutdown delay run one after the other, then the drain; 5 s more for the
    // lease hand-over and exit.
    assert!(
        grace >= sleep + delay + drain + 5,
        "terminationGracePeriodSeconds {grace} < preStop {sleep} + delay {delay} + drain {drain} + 5"
    );
}

/// (apiGroup, resource, verb) triples a rule grants.
fn grants(rules: &[PolicyRule]) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in rules {
        assert!(rule.non_resource_urls.is_none(), "no nonResourceURLs");
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    out.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    out
}

fn triples(list: &[(&str, &str, &[&str])]) -> BTreeSet<(String, String, String)> {
    list.iter()
        .flat_map(|(g, r, verbs)| {
            verbs
                .iter()
                .map(move |v| (g.to_string(), r.to_string(), v.to_string()))
        })
        .collect()
}

#[test]
fn rbac_grants_exactly_the_calls_readygate_makes() {
    let docs = load_docs(&base_dir());
    let cluster_role: ClusterRole = one(&docs, None);
    let rules = cluster_role.rules.as_deref().unwrap_or_default();
    let granted = grants(rules);

    for (group, resource, verb) in &granted {
        assert!(
            group != "*" && resource != "*" && verb != "*",
            "no wildcards: {group}/{resource} {verb}"
        );
        assert!(resource != "secrets", "readygate reads no Secrets");
        assert!(
            !(group.is_empty()
                && resource == "pods"
                && ["update", "patch", "delete"].contains(&verb.as_str())),
            "pods are only read; readygate writes pods/status, got {verb} pods"
        );
    }
    assert!(granted.contains(&(String::new(), "pods/status".into(), "patch".into())));
    assert!(
        rules.iter().all(|r| r.resource_names.is_none()),
        "cluster-wide rules name no object"
    );
    let expected = triples(&[
        ("", "pods", &["list", "watch"]),
        ("", "pods/status", &["patch"]),
        ("", "services", &["list", "watch"]),
        ("", "namespaces", &["list", "watch"]),
        ("elbv2.k8s.aws", "targetgroupbindings", &["list", "watch"]),
        ("events.k8s.io", "events", &["create", "patch"]),
    ]);
    assert_eq!(
        granted, expected,
        "ClusterRole grants (left) vs the calls readygate makes (right)"
    );

    let role: Role = one(&docs, None);
    assert_eq!(role.metadata.namespace.as_deref(), Some(NAMESPACE));
    let role_rules = role.rules.as_deref().unwrap_or_default();
    // kube-lease-manager's calls (GET, POST, PATCH: tests/leader.rs checks the methods).
    assert_eq!(
        grants(role_rules),
        triples(&[("coordination.k8s.io", "leases", &["get", "create", "patch"])]),
        "leader election needs exactly these Lease verbs"
    );
    // A name pinned here would break leader election for any other --lease-name.
    assert!(
        role_rules.iter().all(|r| r.resource_names.is_none()),
        "the Lease rules must not pin a name: --lease-name picks it"
    );

    // Both roles are bound to the ServiceAccount the Deployment runs as.
    let sa: ServiceAccount = one(&docs, None);
    let sa_name = sa.metadata.name.clone().expect("ServiceAccount name");
    assert_eq!(sa.metadata.namespace.as_deref(), Some(NAMESPACE));
    let crb: ClusterRoleBinding = one(&docs, None);
    let rb: RoleBinding = one(&docs, None);
    assert_eq!(
        (crb.role_ref.kind.as_str(), crb.role_ref.name.as_str()),
        (
            "ClusterRole",
            cluster_role.metadata.name.as_deref().unwrap_or("")
        )
    );
    assert_eq!(
        (rb.role_ref.kind.as_str(), rb.role_ref.name.as_str()),
        ("Role", role.metadata.name.as_deref().unwrap_or(""))
    );
    assert_eq!(rb.metadata.namespace.as_deref(), Some(NAMESPACE));
    for subjects in [
        crb.subjects.unwrap_or_default(),
        rb.subjects.unwrap_or_default(),
    ] {
        assert_eq!(subjects.len(), 1);
        assert_eq!(subjects[0].kind, "ServiceAccount");
        assert_eq!(subjects[0].name, sa_name);
        assert_eq!(subjects[0].namespace.as_deref(), Some(NAMESPACE));
    }
    let deployment: Deployment = one(&docs, Some("readygate"));
    assert_eq!(
        pod_spec(&deployment).service_account_name.as_ref(),
        Some(&sa_name)
    );
}

#[test]
fn cert_manager_overlay_issues_the_secret_the_deployment_mounts() {
    let base = load_docs(&base_dir());
    let overlay = load_docs(&cert_manager_dir());
    let docs_of = |kind: &str| -> Vec<&Doc> {
        overlay
            .iter()
            .filter(|d| d.api_version() == "cert-manager.io/v1" && d.kind() == kind)
            .collect()
    };
    let issuers: BTreeMap<String, cert_manager::Issuer> = docs_of("Issuer")
        .into_iter()
        .map(|d| (d.name().to_owned(), d.typed()))
        .collect();
    let certificates: BTreeMap<String, cert_manager::Certificate> = docs_of("Certificate")
        .into_iter()
        .map(|d| (d.name().to_owned(), d.typed()))
        .collect();
    for d in docs_of("Issuer").into_iter().chain(docs_of("Certificate")) {
        assert_eq!(d.namespace(), NAMESPACE, "{}", d.describe());
    }

    let serving = certificates
        .get("readygate-webhook")
        .expect("Certificate readygate-webhook");
    assert_eq!(
        serving.spec.secret_name, TLS_SECRET,
        "the Secret the Deployment mounts at /tls"
    );
    assert_ne!(serving.spec.is_ca, Some(true));
    let dns = serving.spec.dns_names.clone().unwrap_or_default();
    for name in [
        "readygate-webhook.readygate-system.svc",
        "readygate-webhook.readygate-system.svc.cluster.local",
    ] {
        assert!(
            dns.iter().any(|d| d == name),
            "dnsNames must include {name}"
        );
    }
    // Its issuer is a CA issuer backed by a CA Certificate from the self-signed issuer.
    let ca_issuer = issuers
        .get(&serving.spec.issuer_ref.name)
        .expect("serving issuer is defined here");
    let ca_secret = &ca_issuer.spec.ca.as_ref().expect("a CA issuer").secret_name;
    let ca_cert = certificates
        .values()
        .find(|c| &c.spec.secret_name == ca_secret)
        .expect("a Certificate for the CA Secret");
    assert_eq!(ca_cert.spec.is_ca, Some(true));
    let root = issuers
        .get(&ca_cert.spec.issuer_ref.name)
        .expect("CA issuer is defined here");
    assert!(root.spec.self_signed.is_some());

    // The injector fills the caBundle of the base's webhook from the serving Certificate.
    let base_config: MutatingWebhookConfiguration = one(&base, Some("readygate"));
    let service = the_webhook(&base_config)
        .client_config
        .service
        .clone()
        .expect("service");
    assert_eq!(service.namespace, NAMESPACE);
    assert!(dns.contains(&format!("{}.{}.svc", service.name, service.namespace)));
    let patch: MutatingWebhookConfiguration = one(&overlay, Some("readygate"));
    assert_eq!(
        patch
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("cert-manager.io/inject-ca-from")),
        Some(&format!("{NAMESPACE}/readygate-webhook"))
    );
}

// ---------------------------------------------------------------------------------------------
// Rendering with kubectl (skipped when kubectl is absent)

fn kustomize(dir: &Path) -> Option<Vec<Doc>> {
    let output = match Command::new("kubectl").arg("kustomize").arg(dir).output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("running kubectl: {e}"),
    };
    assert!(
        output.status.success(),
        "kubectl kustomize {} failed: {}",
        rel(dir),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("UTF-8 output");
    Some(parse_yaml_stream(&dir.join("<rendered>"), &text))
}

const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "MutatingWebhookConfiguration",
];

#[test]
fn kubectl_kustomize_renders_base_and_cert_manager_overlay() {
    let Some(base) = kustomize(&manifests_dir()) else {
        println!("note: kubectl not on PATH, skipping `kubectl kustomize` checks");
        return;
    };
    let overlay = kustomize(&cert_manager_dir()).expect("kubectl vanished");

    for (name, docs) in [("manifests", &base), ("overlays/cert-manager", &overlay)] {
        assert_no_failures(&format!("rendered {name}"), &round_trip_failures(docs));
        for d in docs.iter().filter(|d| !CLUSTER_SCOPED.contains(&d.kind())) {
            assert_eq!(
                d.namespace(),
                NAMESPACE,
                "rendered {name}: {}",
                d.describe()
            );
        }
    }
    let kinds =
        |docs: &[Doc]| -> BTreeSet<String> { docs.iter().map(|d| d.kind().to_owned()).collect() };
    assert!(
        kinds(&base).is_superset(&BTreeSet::from(
            [
                "Namespace",
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "Role",
                "RoleBinding",
                "Deployment",
                "Service",
                "PodDisruptionBudget",
                "MutatingWebhookConfiguration"
            ]
            .map(String::from)
        ))
    );
    // The overlay is the base plus cert-manager objects, with the injection annotation merged in.
    assert_eq!(overlay.len(), base.len() + 4);
    let config: MutatingWebhookConfiguration = one(&overlay, Some("readygate"));
    assert_eq!(
        config
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("cert-manager.io/inject-ca-from")),
        Some(&format!("{NAMESPACE}/readygate-webhook"))
    );
    assert_eq!(
        the_webhook(&config).failure_policy.as_deref(),
        Some("Ignore"),
        "the patch keeps the webhook"
    );
}

#[test]
fn kubectl_kustomize_renders_monitoring() {
    let Some(docs) = kustomize(&monitoring_dir()) else {
        println!("note: kubectl not on PATH, skipping `kubectl kustomize` checks");
        return;
    };
    assert_no_failures("rendered monitoring", &round_trip_failures(&docs));
    for d in &docs {
        assert_eq!(
            d.namespace(),
            NAMESPACE,
            "rendered monitoring: {}",
            d.describe()
        );
    }
    let kinds: BTreeSet<&str> = docs.iter().map(Doc::kind).collect();
    assert_eq!(
        kinds,
        BTreeSet::from(["ConfigMap", "PrometheusRule", "ServiceMonitor"])
    );
    // The dashboard reaches Grafana's sidecar unchanged, under a stable name.
    let dashboard: ConfigMap = one(&docs, Some("readygate-dashboard"));
    assert_eq!(
        dashboard
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("grafana_dashboard"))
            .map(String::as_str),
        Some("1")
    );
    let data = dashboard.data.unwrap_or_default();
    let file = std::fs::read_to_string(monitoring_dir().join("readygate-dashboard.json"))
        .expect("read the dashboard");
    let rendered: Value =
        serde_json::from_str(&data["readygate-dashboard.json"]).expect("dashboard JSON");
    assert_eq!(
        rendered,
        serde_json::from_str::<Value>(&file).expect("dashboard JSON")
    );
}

#[test]
fn service_monitor_scrapes_the_admin_port_of_readygate_through_the_metrics_service() {
    let base = load_docs(&base_dir());
    let monitoring = load_docs(&monitoring_dir());
    let deployment: Deployment = one(&base, Some("readygate"));
    let container = readygate_container(&deployment);
    let monitor: monitoring::ServiceMonitor = one_of(&monitoring, "ServiceMonitor");
    // Without a namespaceSelector the Service is looked up in the ServiceMonitor's namespace.
    assert!(monitor.spec.namespace_selector.is_none());
    assert_eq!(monitor.metadata.namespace.as_deref(), Some(NAMESPACE));
    assert_eq!(monitor.spec.endpoints.len(), 1);
    let endpoint = &monitor.spec.endpoints[0];
    assert_eq!(endpoint.path.as_deref(), Some("/metrics"));
    assert!(endpoint.scheme.as_deref().is_none_or(|s| s == "http"));
    let port_name = endpoint.port.as_deref().expect("endpoint port by name");

    // The Services the selector picks that have the endpoint's port: the metrics Service only.
    let scraped: Vec<(String, i32)> = base
        .iter()
        .filter(|d| d.kind() == "Service")
        .map(|d| d.typed::<Service>())
        .filter(|s| {
            selector_matches(
                &monitor.spec.selector,
                &s.metadata.labels.clone().unwrap_or_default(),
            )
        })
        .filter_map(|s| {
            let spec = s.spec.as_ref()?;
            assert!(
                selector_matches(
                    &LabelSelector {
                        match_labels: spec.selector.clone(),
                        match_expressions: None
                    },
                    &pod_labels(&deployment)
                ),
                "a selected Service selects readygate's pods"
            );
            let port = spec
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(port_name))?;
            let target = port.target_port.as_ref().expect("targetPort");
            Some((
                s.metadata.name.clone().unwrap_or_default(),
                resolve_port(container, target),
            ))
        })
        .collect();
    assert_eq!(
        scraped,
        [("readygate-metrics".to_owned(), 8080)],
        "scraped: the admin port (8080) through readygate-metrics, never the webhook Service"
    );
}

/// The single document of an apiVersion/kind that has no k8s-openapi type.
fn one_of<T: DeserializeOwned>(docs: &[Doc], kind: &str) -> T {
    let found: Vec<&Doc> = docs.iter().filter(|d| d.kind() == kind).collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind}");
    found[0].typed()
}
