//! Shared test fixtures.
#![allow(dead_code)]

pub fn crypto() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The project's manifests.
pub fn manifests_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

/// helm (`$HELM_BIN`); None (the test then passes with a SKIPPED line) only outside CI.
pub fn helm() -> Option<std::path::PathBuf> {
    let helm = rig::helm::binary();
    if helm.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "helm is required under CI: scripts/test builds it (rig/helm/build) and sets HELM_BIN"
        );
        println!("SKIPPED: set HELM_BIN (rig/helm/build prints it)");
    }
    helm
}

/// Runs `cmd` from the repository root (stdin fed from `input`), for at most 240 s; its
/// stdout, or its exit status and combined output as the error.
pub fn run(
    mut cmd: std::process::Command,
    input: Option<&str>,
) -> impl std::future::Future<Output = Result<String, String>> + use<> {
    use tokio::io::AsyncWriteExt;
    cmd.current_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let what = format!("{cmd:?}");
    let input = input.unwrap_or_default().as_bytes().to_vec();
    let mut cmd = tokio::process::Command::from(cmd);
    async move {
        let mut child = cmd
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("running {what}: {e}"));
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(&input).await.expect("writing stdin");
        drop(stdin);
        let out = tokio::time::timeout(
            std::time::Duration::from_secs(240),
            child.wait_with_output(),
        )
        .await
        .unwrap_or_else(|_| panic!("{what} ran longer than 240 s"))
        .expect("waiting for a tool");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        if out.status.success() {
            Ok(text(&out.stdout))
        } else {
            Err(format!(
                "{what} exited {:?}:\n{}{}",
                out.status.code(),
                text(&out.stdout),
                text(&out.stderr)
            ))
        }
    }
}

/// `bin args…` as the rig's admin: `KUBECONFIG` names the control plane's admin kubeconfig
/// (kubectl, helm and readygate all read it), `RUST_LOG` unset, and helm's own cache and
/// configuration directories (which other tools ignore).
pub fn as_admin(
    bin: &std::path::Path,
    kubeconfig: &std::path::Path,
    args: &[&str],
) -> std::process::Command {
    let mut cmd = rig::helm::command(bin);
    cmd.env("KUBECONFIG", kubeconfig)
        .env_remove("RUST_LOG")
        .args(args);
    cmd
}

/// kubectl as `rig/k8s/build` builds it beside the control plane.
pub fn kubectl() -> std::path::PathBuf {
    rig::cluster::ControlPlaneOpts::build()
        .expect("the control plane's binaries")
        .bin_dir
        .join("kubectl")
}

/// Waits until no object labelled `app.kubernetes.io/name=readygate` is left (cluster-scoped
/// ones and the Lease included), failing after `within` with what `what` left behind.
pub async fn until_nothing_left(
    kubectl: &std::path::Path,
    kubeconfig: &std::path::Path,
    what: &str,
    within: std::time::Duration,
) {
    let kinds = "deployments,replicasets,pods,services,endpointslices,secrets,configmaps,\
                 serviceaccounts,roles,rolebindings,poddisruptionbudgets,leases,clusterroles,\
                 clusterrolebindings,mutatingwebhookconfigurations";
    let args = [
        "get",
        kinds,
        "-A",
        "-l",
        "app.kubernetes.io/name=readygate",
        "-o",
        "name",
    ];
    let deadline = std::time::Instant::now() + within;
    loop {
        let out = run(as_admin(kubectl, kubeconfig, &args), None)
            .await
            .unwrap();
        let left: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
        if left.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} left these behind: {left:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// One value a gate condition took on a pod: (status, reason, message).
pub type GateValue = (String, String, String);
/// Per pod, the gate condition's values in order.
pub type GateValues =
    std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, Vec<GateValue>>>>;

/// Records, per pod of `ns`, every distinct value its `target-health.elbv2.k8s.aws/*`
/// condition took, in order, as a watch sees them.
pub fn watch_gate_values(
    client: kube::Client,
    ns: String,
) -> (GateValues, tokio::task::JoinHandle<()>) {
    use futures::StreamExt;
    use kube::runtime::watcher;
    let seen: GateValues = std::sync::Arc::default();
    let out = seen.clone();
    let task = tokio::spawn(async move {
        let api: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(client, &ns);
        let mut stream = watcher(api, watcher::Config::default()).boxed();
        while let Some(event) = stream.next().await {
            let pods = match event {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => vec![p],
                _ => continue,
            };
            for p in pods {
                let v = serde_json::to_value(&p).unwrap_or_default();
                let name = rig::str_at(&v, "/metadata/name");
                let Some(c) = v
                    .pointer("/status/conditions")
                    .and_then(serde_json::Value::as_array)
                    .and_then(|cs| {
                        cs.iter().find(|c| {
                            c["type"]
                                .as_str()
                                .is_some_and(|t| t.starts_with("target-health.elbv2.k8s.aws/"))
                        })
                    })
                else {
                    continue;
                };
                let value = (
                    rig::str_at(c, "/status"),
                    rig::str_at(c, "/reason"),
                    rig::str_at(c, "/message"),
                );
                let mut seen = seen.lock().unwrap();
                let values = seen.entry(name).or_default();
                if values.last() != Some(&value) {
                    values.push(value);
                }
            }
        }
    });
    (out, task)
}

/// The readygate binary, or None (the test then passes with a SKIPPED line) only outside CI and
/// when `READYGATE_BIN` is not set.
pub fn readygate() -> Option<std::path::PathBuf> {
    let bin = rig::readygate::find_binary(None);
    if bin.is_none() {
        assert!(
            std::env::var_os("CI").is_none() && std::env::var_os("READYGATE_BIN").is_none(),
            "the readygate binary was not found"
        );
        println!("SKIPPED: the readygate binary is not built");
    }
    bin
}

/// `pods/status` patches per pod of `ns` and per user, in the audit log from entry `from` on.
pub fn status_writes(
    plane: &rig::cluster::ControlPlane,
    from: usize,
    ns: &str,
) -> std::collections::BTreeMap<String, std::collections::BTreeMap<String, usize>> {
    let audit = rig::k8s::audit::requests(&plane.audit_log).unwrap();
    let mut writes: std::collections::BTreeMap<String, std::collections::BTreeMap<String, usize>> =
        Default::default();
    for q in &audit[from..] {
        if q.namespace == ns
            && q.resource == "pods"
            && q.subresource == "status"
            && q.verb == "patch"
        {
            *writes
                .entry(q.name.clone())
                .or_default()
                .entry(q.user.clone())
                .or_default() += 1;
        }
    }
    writes
}
