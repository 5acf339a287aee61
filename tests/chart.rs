//! The Helm chart (`charts/readygate`), through the helm this project builds (`rig/helm/build`,
//! helm v4 from the Go module proxy) and kubectl's kustomize (`rig/k8s/build`):
//! - `helm lint --strict` passes for the default values and every file of `ci/`;
//! - one source of truth: rendered with its defaults the chart is `manifests/base` (kustomize),
//!   with cert-manager it is `manifests/overlays/cert-manager`, with monitoring it is
//!   `manifests/monitoring`, apart from the differences a Helm install needs by design (its
//!   labels, the TLS Secret it generates and its caBundle; the Namespace, which `helm install
//!   --create-namespace` makes);
//! - the generated TLS is a CA and a serving certificate for the webhook Service that complete
//!   a TLS handshake, and the caBundle is that CA;
//! - every `serve` value becomes the flag of that name, which `readygate serve` accepts;
//! - `values.schema.json` rejects wrong types and unknown keys with a message naming the key.
//!
//! Server-side validation of every rendering against the real API server is in
//! `rig/tests/k8s_chart.rs`. `scripts/test` builds helm and kubectl and sets `HELM_BIN` and
//! `RIG_K8S_BIN_DIR`; under CI (`CI` set) a missing one fails these tests, elsewhere they skip.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use clap::CommandFactory;
use readygate::cli::Cli;
use serde_json::Value;

const NAMESPACE: &str = "readygate-system";
const RELEASE: &str = "readygate";
/// The labels every chart object carries that a kustomize install has no use for.
const HELM_LABELS: [&str; 4] = [
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    root().join("charts/readygate")
}

/// A tool the tests need, or `None` (skip) outside CI.
fn tool(name: &str, path: Option<PathBuf>, how: &str) -> Option<PathBuf> {
    match path.filter(|p| p.is_file()) {
        Some(p) => Some(p),
        None => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{name} is required under CI; {how}"
            );
            eprintln!("SKIPPED: no {name}; {how}");
            None
        }
    }
}

fn helm() -> Option<PathBuf> {
    tool(
        "helm",
        rig::helm::binary(),
        "scripts/test builds it (rig/helm/build) and sets HELM_BIN",
    )
}

fn kubectl() -> Option<PathBuf> {
    tool(
        "kubectl",
        std::env::var_os("RIG_K8S_BIN_DIR").map(|d| PathBuf::from(d).join("kubectl")),
        "scripts/test builds it (rig/k8s/build) and sets RIG_K8S_BIN_DIR",
    )
}

/// Runs a command (helm with its own cache and configuration); its stdout, or its stderr as the
/// error.
fn run(bin: &Path, args: &[&str]) -> Result<String, String> {
    let out = rig::helm::command(bin)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// `helm template` of the release `readygate` in `readygate-system` with these extra args.
fn render(helm: &Path, args: &[&str]) -> Result<Vec<Value>, String> {
    let chart = chart();
    let mut all = vec![
        "template",
        RELEASE,
        chart.to_str().unwrap(),
        "-n",
        NAMESPACE,
    ];
    all.extend_from_slice(args);
    run(helm, &all).map(|s| documents(&s))
}

fn kustomize(kubectl: &Path, dir: &str) -> Vec<Value> {
    let dir = root().join(dir);
    documents(&run(kubectl, &["kustomize", dir.to_str().unwrap()]).unwrap())
}

fn key(doc: &Value) -> String {
    format!(
        "{} {}/{}",
        doc["kind"].as_str().unwrap_or(""),
        doc["metadata"]["namespace"].as_str().unwrap_or("-"),
        doc["metadata"]["name"].as_str().unwrap_or("")
    )
}

/// Removes the Helm-only labels wherever labels are written (objects and pod templates).
fn strip_helm_labels(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Object(labels)) = map.get_mut("labels") {
                for l in HELM_LABELS {
                    labels.remove(l);
                }
            }
            map.values_mut().for_each(strip_helm_labels);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_helm_labels),
        _ => {}
    }
}

fn by_key(docs: Vec<Value>) -> BTreeMap<String, Value> {
    docs.into_iter().map(|d| (key(&d), d)).collect()
}

/// Every difference between two sets of objects, as readable lines.
fn differences(
    chart: &BTreeMap<String, Value>,
    kustomize: &BTreeMap<String, Value>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (k, want) in kustomize {
        match chart.get(k) {
            None => out.push(format!("{k}: in the manifests, not rendered by the chart")),
            Some(got) if got != want => out.push(format!(
                "{k} differs:\n  chart:     {}\n  manifests: {}",
                serde_json::to_string(got).unwrap(),
                serde_json::to_string(want).unwrap()
            )),
            Some(_) => {}
        }
    }
    for k in chart.keys().filter(|k| !kustomize.contains_key(*k)) {
        out.push(format!("{k}: rendered by the chart, not in the manifests"));
    }
    out
}

/// The chart-generated TLS Secret and the caBundle are taken out of `docs` (and returned:
/// ca.crt, tls.crt, tls.key, caBundle); the manifests have neither.
fn take_generated_tls(docs: &mut Vec<Value>) -> Option<[String; 4]> {
    let i = docs
        .iter()
        .position(|d| d["kind"] == "Secret" && d["metadata"]["name"] == "readygate-webhook-tls")?;
    let secret = docs.remove(i);
    let data = |k: &str| secret["data"][k].as_str().unwrap_or_default().to_string();
    let mwc = docs
        .iter_mut()
        .find(|d| d["kind"] == "MutatingWebhookConfiguration")
        .expect("a MutatingWebhookConfiguration");
    let bundle = mwc["webhooks"][0]["clientConfig"]
        .as_object_mut()
        .unwrap()
        .remove("caBundle")
        .and_then(|b| b.as_str().map(str::to_string))
        .unwrap_or_default();
    Some([data("ca.crt"), data("tls.crt"), data("tls.key"), bundle])
}

fn assert_same(what: &str, chart: Vec<Value>, manifests: Vec<Value>) {
    let mut chart = by_key(chart);
    chart.values_mut().for_each(strip_helm_labels);
    let manifests = by_key(
        manifests
            .into_iter()
            .filter(|d| d["kind"] != "Namespace")
            .collect(),
    );
    let diffs = differences(&chart, &manifests);
    assert!(
        diffs.is_empty(),
        "{what}: the chart and the manifests have drifted; change both (the chart's templates \
         under charts/readygate/templates and the file under manifests/):\n{}",
        diffs.join("\n")
    );
}

#[test]
fn chart_passes_helm_lint_strict_for_the_defaults_and_every_ci_values_file() {
    let Some(helm) = helm() else { return };
    let chart = chart();
    let chart = chart.to_str().unwrap();
    let out = run(&helm, &["lint", "--strict", chart]).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains("0 chart(s) failed"), "{out}");
    let files = ci_values_files();
    assert!(
        files.len() >= 5,
        "charts/readygate/ci/ has the toggles: {files:?}"
    );
    for f in files {
        run(
            &helm,
            &["lint", "--strict", chart, "-f", f.to_str().unwrap()],
        )
        .unwrap_or_else(|e| panic!("helm lint --strict -f {}: {e}", f.display()));
    }
}

fn ci_values_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart().join("ci"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn chart_version_is_the_crate_version() {
    let chart: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart().join("Chart.yaml")).unwrap())
            .unwrap();
    assert_eq!(chart["apiVersion"], "v2", "Helm v3 chart format");
    assert_eq!(chart["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn default_rendering_is_manifests_base() {
    let (Some(helm), Some(kubectl)) = (helm(), kubectl()) else {
        return;
    };
    let mut chart = render(&helm, &[]).unwrap();
    take_generated_tls(&mut chart).expect("the chart generates its TLS Secret by default");
    assert_same(
        "defaults vs manifests/base",
        chart,
        kustomize(&kubectl, "manifests/base"),
    );
}

#[test]
fn cert_manager_rendering_is_the_cert_manager_overlay() {
    let (Some(helm), Some(kubectl)) = (helm(), kubectl()) else {
        return;
    };
    let mut chart = render(&helm, &["--set", "tls.certManager.enabled=true"]).unwrap();
    assert!(
        take_generated_tls(&mut chart).is_none(),
        "with cert-manager the chart generates no Secret"
    );
    assert_same(
        "tls.certManager.enabled vs manifests/overlays/cert-manager",
        chart,
        kustomize(&kubectl, "manifests/overlays/cert-manager"),
    );
}

#[test]
fn monitoring_rendering_is_manifests_monitoring() {
    let (Some(helm), Some(kubectl)) = (helm(), kubectl()) else {
        return;
    };
    let toggles = [
        "monitoring.serviceMonitor.enabled",
        "monitoring.prometheusRule.enabled",
        "monitoring.dashboard.enabled",
    ];
    // Off by default.
    let base = render(&helm, &[]).unwrap();
    for kind in ["ServiceMonitor", "PrometheusRule", "ConfigMap"] {
        assert!(
            !base.iter().any(|d| d["kind"] == kind),
            "{kind} rendered by default"
        );
    }
    let on: Vec<String> = toggles.iter().map(|t| format!("{t}=true")).collect();
    let chart: Vec<Value> = render(&helm, &["--set", &on.join(",")])
        .unwrap()
        .into_iter()
        .filter(|d| {
            ["ServiceMonitor", "PrometheusRule", "ConfigMap"]
                .contains(&d["kind"].as_str().unwrap_or(""))
        })
        .collect();
    assert_same(
        "monitoring.* vs manifests/monitoring",
        chart,
        kustomize(&kubectl, "manifests/monitoring"),
    );
}

#[test]
fn chart_files_are_copies_of_manifests_monitoring() {
    for f in ["prometheusrule.yaml", "readygate-dashboard.json"] {
        let chart = std::fs::read(chart().join("files").join(f)).unwrap();
        let manifests = std::fs::read(root().join("manifests/monitoring").join(f)).unwrap();
        assert!(
            chart == manifests,
            "charts/readygate/files/{f} differs from manifests/monitoring/{f}: copy it over"
        );
    }
}

fn pem_certs(b64: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .unwrap()
}

/// A TLS handshake in memory: a server with `crt`/`key`, a client trusting only `ca` and
/// asking for `name`.
fn handshake(ca: &str, crt: &str, key: &str, name: &str) -> Result<(), rustls::Error> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let key_pem = base64::engine::general_purpose::STANDARD
        .decode(key)
        .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            pem_certs(crt),
            PrivateKeyDer::from_pem_slice(&key_pem).unwrap(),
        )?;
    let mut roots = rustls::RootCertStore::empty();
    for c in pem_certs(ca) {
        roots.add(c)?;
    }
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut c =
        rustls::ClientConnection::new(Arc::new(client), name.to_string().try_into().unwrap())?;
    let mut s = rustls::ServerConnection::new(Arc::new(server))?;
    for _ in 0..20 {
        if !c.is_handshaking() && !s.is_handshaking() {
            return Ok(());
        }
        let mut buf = Vec::new();
        c.write_tls(&mut buf).unwrap();
        s.read_tls(&mut buf.as_slice()).unwrap();
        s.process_new_packets()?;
        let mut buf = Vec::new();
        s.write_tls(&mut buf).unwrap();
        c.read_tls(&mut buf.as_slice()).unwrap();
        c.process_new_packets()?;
    }
    panic!("the handshake did not finish");
}

#[test]
fn generated_tls_serves_the_webhook_service_and_the_ca_bundle_trusts_it() {
    let Some(helm) = helm() else { return };
    let mut docs = render(&helm, &[]).unwrap();
    let [ca, crt, key, bundle] = take_generated_tls(&mut docs).unwrap();
    assert_eq!(bundle, ca, "the caBundle is the generated CA");
    for name in [
        "readygate-webhook.readygate-system.svc",
        "readygate-webhook.readygate-system.svc.cluster.local",
    ] {
        handshake(&bundle, &crt, &key, name).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert!(
        handshake(&bundle, &crt, &key, "readygate-webhook.other.svc").is_err(),
        "the certificate names only the webhook Service"
    );
    // Another release in another namespace gets a certificate for its own Service.
    let docs = render(&helm, &["--namespace", "platform"]).unwrap();
    let secret = docs.iter().find(|d| d["kind"] == "Secret").unwrap();
    let d = |k: &str| secret["data"][k].as_str().unwrap().to_string();
    handshake(
        &d("ca.crt"),
        &d("tls.crt"),
        &d("tls.key"),
        "readygate-webhook.platform.svc",
    )
    .unwrap();
}

/// `--flag-name` for a camelCase values key, as the chart's `kebabcase` makes it.
fn flag_of(key: &str) -> String {
    let mut out = String::from("--");
    for ch in key.chars() {
        if ch.is_ascii_uppercase() {
            out.push('-');
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}

fn container_args(docs: &[Value]) -> Vec<String> {
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn every_serve_value_is_a_readygate_serve_flag_that_it_accepts() {
    let Some(helm) = helm() else { return };
    let values: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart().join("values.yaml")).unwrap())
            .unwrap();
    let serve_cmd = Cli::command();
    let serve_cmd = serve_cmd.find_subcommand("serve").unwrap();
    let longs: Vec<String> = serve_cmd
        .get_arguments()
        .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
        .collect();
    let keys: Vec<String> = values["serve"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    for k in &keys {
        assert!(
            longs.contains(&flag_of(k)),
            "values.yaml serve.{k} names no `readygate serve` flag ({})",
            flag_of(k)
        );
        assert!(
            values["serve"][k].is_null(),
            "serve.{k} defaults to null (readygate's own default)"
        );
    }
    // The defaults pass no flag at all: `args: [serve]`, as manifests/base.
    assert_eq!(container_args(&render(&helm, &[]).unwrap()), ["serve"]);
    // ci/serve-values.yaml sets every one; readygate's own parser takes the result.
    let file = chart().join("ci/serve-values.yaml");
    let set: Value = serde_yaml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    for k in &keys {
        assert!(
            !set["serve"][k].is_null(),
            "ci/serve-values.yaml leaves serve.{k} unset"
        );
    }
    let args = container_args(&render(&helm, &["-f", file.to_str().unwrap()]).unwrap());
    for k in &keys {
        assert!(
            args.iter()
                .any(|a| a.starts_with(&format!("{}=", flag_of(k)))),
            "serve.{k} did not become {} in {args:?}",
            flag_of(k)
        );
    }
    assert!(
        args.contains(&"--header-read-timeout=150s".to_string()),
        "extraArgs: {args:?}"
    );
    let argv = std::iter::once("readygate".to_string()).chain(args.iter().cloned());
    readygate::cli::parse_from(argv).unwrap_or_else(|e| panic!("readygate rejects {args:?}: {e}"));
}

#[test]
fn values_schema_rejects_wrong_types_and_unknown_keys_with_the_key_in_the_message() {
    let Some(helm) = helm() else { return };
    let cases: [(&[&str], &str); 6] = [
        (
            &["--set", "replicas=two"],
            "at '/replicas': got string, want integer",
        ),
        (
            &["--set", "replica=2"],
            "additional properties 'replica' not allowed",
        ),
        (
            &["--set", "serve.pollIntervall=2s"],
            "additional properties 'pollIntervall' not allowed",
        ),
        (
            &["--set", "serve.pollInterval=soon"],
            "at '/serve/pollInterval'",
        ),
        (
            &["--set", "webhook.failurePolicy=fail"],
            "at '/webhook/failurePolicy': value must be one of 'Ignore', 'Fail'",
        ),
        (
            &["--set", "tls.certManager=yes"],
            "at '/tls/certManager': got string, want object",
        ),
    ];
    for (args, want) in cases {
        match render(&helm, args) {
            Ok(_) => panic!("helm template {args:?} was accepted"),
            Err(e) => assert!(
                e.contains("values don't meet the specifications of the schema")
                    && e.contains(want),
                "helm template {args:?}: want {want:?} in:\n{e}"
            ),
        }
    }
}

#[test]
fn notes_say_how_to_opt_in_and_run_doctor() {
    let Some(helm) = helm() else { return };
    let chart = chart();
    let out = run(
        &helm,
        &[
            "install",
            RELEASE,
            chart.to_str().unwrap(),
            "-n",
            NAMESPACE,
            "--dry-run=client",
        ],
    )
    .unwrap();
    let notes = out.split_once("NOTES:").expect("helm prints the NOTES").1;
    assert!(
        notes.contains(
            "kubectl label namespace <ns> elbv2.k8s.aws/pod-readiness-gate-inject=enabled"
        ),
        "{notes}"
    );
    assert!(
        notes.contains("readygate doctor\n"),
        "the default install needs no doctor flags: {notes}"
    );
    // Another release name and namespace: doctor is told where to look.
    let out = run(
        &helm,
        &[
            "install",
            "gates",
            chart.to_str().unwrap(),
            "-n",
            "platform",
            "--dry-run=client",
        ],
    )
    .unwrap();
    assert!(
        out.contains(
            "readygate doctor --webhook-configuration gates-readygate --lease-namespace platform"
        ),
        "{out}"
    );
}

#[test]
fn a_large_whole_number_from_a_values_file_is_passed_as_digits() {
    // helm reads a values file's numbers as floats: printed with %v, 4194304 became
    // "4.194304e+06", which readygate's parser refuses.
    let Some(helm) = helm() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("values.yaml");
    std::fs::write(&file, "serve:\n  elbv2Burst: 4194304\n  elbv2Rate: 2.5\n").unwrap();
    let args = container_args(&render(&helm, &["-f", file.to_str().unwrap()]).unwrap());
    assert!(
        args.contains(&"--elbv2-burst=4194304".to_string()),
        "{args:?}"
    );
    assert!(args.contains(&"--elbv2-rate=2.5".to_string()), "{args:?}");
    let argv = std::iter::once("readygate".to_string()).chain(args.iter().cloned());
    readygate::cli::parse_from(argv).unwrap_or_else(|e| panic!("readygate rejects {args:?}: {e}"));
}
