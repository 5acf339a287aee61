//! Every rendering of the Helm chart (`charts/readygate`: the defaults and each file of its
//! `ci/`) passes the real API server's own validation: `kubectl apply --dry-run=server`, with the
//! CRDs of the add-ons it can render objects for (cert-manager, the Prometheus Operator) from
//! their Go modules, fetched by scripts/test's set-up step `rig/helm/addon-crds` before the
//! tests enter the rig's network namespace (`RIG_ADDON_CRDS`). helm comes from `rig/helm/build`
//! (`HELM_BIN`).

mod common;

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn every_rendering_of_the_chart_passes_the_api_servers_validation() {
    let Some(helm) = common::helm() else { return };
    rig::cluster::test(|plane| async move {
        let kubectl = common::kubectl();
        let kubeconfig = plane.admin_kubeconfig.clone();
        let k = |args: &[&str], input: Option<&str>| {
            common::run(common::as_admin(&kubectl, &kubeconfig, args), input)
        };
        let h = |args: &[&str]| common::run(common::as_admin(&helm, &kubeconfig, args), None);

        // The add-ons' CRDs, for real: the dry runs of their objects need them. Fetched before
        // the tests start: nothing in the rig's network namespace can download.
        let crds = std::env::var("RIG_ADDON_CRDS").unwrap_or_default();
        assert!(
            !crds.is_empty(),
            "RIG_ADDON_CRDS is not set: scripts/test's set-up step rig/helm/addon-crds fetches \
             the add-ons' CRDs and sets it (their paths, separated by ':')"
        );
        for crd in crds.split(':') {
            assert!(
                Path::new(crd).is_file(),
                "{crd} (from RIG_ADDON_CRDS) is missing: run rig/helm/addon-crds again"
            );
            k(&["apply", "--server-side", "-f", crd], None)
                .await
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
        .await
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
            k(&["create", "namespace", &ns], None)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let mut all = vec![
                "template",
                "readygate",
                chart.to_str().unwrap(),
                "-n",
                ns.as_str(),
            ];
            all.extend(args.iter().map(String::as_str));
            let yaml = h(&all)
                .await
                .unwrap_or_else(|e| panic!("helm template ({name}): {e}"));
            let objects = yaml.matches("\nkind: ").count();
            let out = k(
                &["apply", "--dry-run=server", "-n", &ns, "-f", "-"],
                Some(&yaml),
            )
            .await
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
        let yaml = h(&[
            "template",
            "readygate",
            chart.to_str().unwrap(),
            "-n",
            "chart-0",
            "--set",
            "podDisruptionBudget.minAvailable=most",
        ])
        .await
        .unwrap();
        let err = k(
            &["apply", "--dry-run=server", "-n", "chart-0", "-f", "-"],
            Some(&yaml),
        )
        .await
        .expect_err("minAvailable: most is accepted");
        assert!(err.contains("minAvailable"), "{err}");
    })
}

#[test]
fn helm_install_upgrade_and_uninstall_keep_the_tls_and_leave_nothing_behind() {
    let Some(helm) = common::helm() else { return };
    rig::cluster::test(|plane| async move {
        let kubectl = common::kubectl();
        let kubeconfig = plane.admin_kubeconfig.clone();
        let k = |args: &[&str]| common::run(common::as_admin(&kubectl, &kubeconfig, args), None);
        let h = |args: &[&str]| common::run(common::as_admin(&helm, &kubeconfig, args), None);
        let chart = root().join("charts/readygate");
        let chart = chart.to_str().unwrap();
        let (release, ns) = ("life", "chart-life");
        let name = "life-readygate";
        let out = h(&["install", release, chart, "-n", ns, "--create-namespace"])
            .await
            .unwrap_or_else(|e| panic!("helm install: {e}"));
        assert!(out.contains("STATUS: deployed"), "{out}");
        let secret_json = async || {
            let s = k(&[
                "-n",
                ns,
                "get",
                "secret",
                &format!("{name}-webhook-tls"),
                "-o",
                "json",
            ])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
            serde_json::from_str::<serde_json::Value>(&s).unwrap()["data"].clone()
        };
        let bundle = async || {
            k(&[
                "get",
                "mutatingwebhookconfiguration",
                name,
                "-o",
                "jsonpath={.webhooks[0].clientConfig.caBundle}",
            ])
            .await
            .unwrap_or_else(|e| panic!("{e}"))
        };
        let tls = secret_json().await;
        assert_eq!(
            bundle().await,
            tls["ca.crt"].as_str().unwrap(),
            "the caBundle is the Secret's CA"
        );
        assert!(tls["tls.key"].as_str().is_some_and(|k| !k.is_empty()));

        // An upgrade that changes values keeps the CA and the key pair (lookup of the Secret).
        let out = h(&[
            "upgrade",
            release,
            chart,
            "-n",
            ns,
            "--set",
            "serve.pollInterval=1s",
        ])
        .await
        .unwrap_or_else(|e| panic!("helm upgrade: {e}"));
        assert!(out.contains("REVISION: 2"), "{out}");
        assert_eq!(
            secret_json().await,
            tls,
            "helm upgrade kept the generated TLS"
        );
        assert_eq!(bundle().await, tls["ca.crt"].as_str().unwrap());
        let args = k(&[
            "-n",
            ns,
            "get",
            "deployment",
            name,
            "-o",
            "jsonpath={.spec.template.spec.containers[0].args}",
        ])
        .await
        .unwrap();
        assert!(args.contains("--poll-interval=1s"), "{args}");

        // Uninstall leaves no object of the release, cluster-scoped ones included.
        h(&["uninstall", release, "-n", ns, "--wait", "--timeout", "60s"])
            .await
            .unwrap_or_else(|e| panic!("helm uninstall: {e}"));
        common::until_nothing_left(
            &kubectl,
            &kubeconfig,
            "helm uninstall",
            std::time::Duration::from_secs(60),
        )
        .await;
        let ns_secrets = k(&["-n", ns, "get", "secrets", "-o", "name"])
            .await
            .unwrap();
        assert!(
            !ns_secrets.contains(&format!("{name}-webhook-tls")),
            "the generated Secret goes with the release: {ns_secrets}"
        );
    })
}
