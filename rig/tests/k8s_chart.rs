//! Every rendering of the Helm chart (`charts/readygate`: the defaults and each file of its
//! `ci/`) passes the real API server's own validation: `kubectl apply --dry-run=server`, with the
//! CRDs of the add-ons it can render objects for (cert-manager, the Prometheus Operator) from
//! their Go modules (`rig/helm/addon-crds`). helm comes from `rig/helm/build` (`HELM_BIN`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use std::io::Write as _;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs a command (stdin fed from `input`); stdout, or the combined output as the error.
fn run(bin: &Path, args: &[&str], input: Option<&str>) -> Result<String, String> {
    let mut child = Command::new(bin)
        .args(args)
        .current_dir(root())
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("readygate-helm-cache"),
        )
        .env(
            "HELM_CONFIG_HOME",
            std::env::temp_dir().join("readygate-helm-config"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(input.unwrap_or_default().as_bytes())
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(format!("{}{}", text(&out.stdout), text(&out.stderr)))
    }
}

fn helm() -> Option<PathBuf> {
    match std::env::var_os("HELM_BIN").map(PathBuf::from) {
        Some(p) if p.is_file() => Some(p),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "helm is required under CI: scripts/test builds it (rig/helm/build) and sets HELM_BIN"
            );
            eprintln!("SKIPPED: set HELM_BIN (rig/helm/build prints it)");
            None
        }
    }
}

#[test]
fn every_rendering_of_the_chart_passes_the_api_servers_validation() {
    let Some(helm) = helm() else { return };
    rig::cluster::test(|plane| async move {
        let opts = rig::cluster::ControlPlaneOpts::build().unwrap();
        let kubectl = opts.bin_dir.join("kubectl");
        let kubeconfig = plane.admin_kubeconfig.to_str().unwrap().to_string();
        let k = |args: &[&str], input: Option<&str>| {
            let mut all = vec!["--kubeconfig", kubeconfig.as_str()];
            all.extend_from_slice(args);
            run(&kubectl, &all, input)
        };

        // The add-ons' CRDs, for real: the dry runs of their objects need them.
        let crds =
            run(&root().join("rig/helm/addon-crds"), &[], None).unwrap_or_else(|e| panic!("{e}"));
        for crd in crds.lines() {
            k(&["apply", "--server-side", "-f", crd], None)
                .unwrap_or_else(|e| panic!("{crd}: {e}"));
        }
        k(
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/issuers.cert-manager.io",
                "crd/certificates.cert-manager.io",
                "crd/servicemonitors.monitoring.coreos.com",
                "crd/prometheusrules.monitoring.coreos.com",
            ],
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));

        let chart = root().join("charts/readygate");
        let mut cases: Vec<(String, Vec<String>)> = vec![("defaults".into(), vec![])];
        let mut files: Vec<PathBuf> = std::fs::read_dir(chart.join("ci"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            cases.push((name, vec!["-f".into(), f.to_string_lossy().into_owned()]));
        }
        assert!(
            cases.len() >= 6,
            "the defaults and the ci/ toggles: {cases:?}"
        );

        for (i, (name, args)) in cases.iter().enumerate() {
            let ns = format!("chart-{i}");
            k(&["create", "namespace", &ns], None).unwrap_or_else(|e| panic!("{e}"));
            let mut all = vec![
                "template",
                "readygate",
                chart.to_str().unwrap(),
                "-n",
                ns.as_str(),
            ];
            all.extend(args.iter().map(String::as_str));
            let yaml =
                run(&helm, &all, None).unwrap_or_else(|e| panic!("helm template ({name}): {e}"));
            let objects = yaml.matches("\nkind: ").count();
            let out = k(
                &["apply", "--dry-run=server", "-n", &ns, "-f", "-"],
                Some(&yaml),
            )
            .unwrap_or_else(|e| {
                panic!("{name}: the API server rejects the chart's rendering:\n{e}")
            });
            let accepted = out
                .lines()
                .filter(|l| l.ends_with("(server dry run)"))
                .count();
            println!("{name}: {accepted} objects accepted by the API server\n{out}");
            assert_eq!(
                accepted, objects,
                "{name}: every rendered object is validated:\n{out}"
            );
        }

        // The dry run does judge: a value the schema lets through (a string) but the API
        // server refuses.
        let yaml = run(
            &helm,
            &[
                "template",
                "readygate",
                chart.to_str().unwrap(),
                "-n",
                "chart-0",
                "--set",
                "podDisruptionBudget.minAvailable=most",
            ],
            None,
        )
        .unwrap();
        let err = k(
            &["apply", "--dry-run=server", "-n", "chart-0", "-f", "-"],
            Some(&yaml),
        )
        .expect_err("minAvailable: most is accepted");
        assert!(err.contains("minAvailable"), "{err}");
    })
}
