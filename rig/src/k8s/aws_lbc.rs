//! The AWS Load Balancer Controller's place in the rig's cluster, whoever plays it (the rig's
//! model, [`crate::lbc`], or the real binary): its CRDs and its identity. The AWS controller's
//! data files at v3.5.0 (CRDs, RBAC role) sit beside the repository in `../shared/aws-lbc-v3.5.0`
//! on the machines this project is built on and in CI; they are read from there at run time and
//! never copied into the repository. Without them the rig installs its own TargetGroupBinding CRD
//! and a minimal role of its own.

use anyhow::{Context, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{Api, Client};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The namespace and ServiceAccount the AWS controller runs as (its Helm chart's defaults).
pub const NAMESPACE: &str = "kube-system";
pub const SERVICE_ACCOUNT: &str = "aws-load-balancer-controller";
/// The AWS controller as the API server names the user (audit log, RBAC).
pub const USER: &str = "system:serviceaccount:kube-system:aws-load-balancer-controller";

/// The AWS controller's data files at v3.5.0 beside the repository, when they are there.
pub fn shared_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/aws-lbc-v3.5.0");
    dir.is_dir().then_some(dir)
}

/// Which TargetGroupBinding CRD the cluster got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Crds {
    /// The AWS controller's own CRDs (TargetGroupBinding, IngressClassParams,
    /// ALBTargetControlConfig) from this folder.
    Real(PathBuf),
    /// The rig's own minimal TargetGroupBinding CRD (`rig/manifests/targetgroupbinding-crd.yaml`).
    Rig(PathBuf),
}

impl std::fmt::Display for Crds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Crds::Real(dir) => write!(
                f,
                "the AWS Load Balancer Controller v3.5.0's CRDs from {}",
                dir.display()
            ),
            Crds::Rig(path) => write!(
                f,
                "the rig's own TargetGroupBinding CRD {} (../shared/aws-lbc-v3.5.0 is absent)",
                path.display()
            ),
        }
    }
}

/// The real CRDs when [`shared_dir`] is there, the rig's own otherwise.
pub fn crds_available() -> Crds {
    match shared_dir() {
        Some(dir) => Crds::Real(dir.join("crds")),
        None => Crds::Rig(crate::k8s::install::crd_path()),
    }
}

/// Applies `crds` (server-side) and waits until each is Established.
pub async fn install_crds_from(client: &Client, crds: &Crds) -> anyhow::Result<()> {
    let files: Vec<PathBuf> = match crds {
        Crds::Real(dir) => {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
                .collect();
            files.sort();
            files
        }
        Crds::Rig(path) => vec![path.clone()],
    };
    let mut names = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        for doc in crate::k8s::install::documents(&text)? {
            if doc["kind"] != "CustomResourceDefinition" {
                continue;
            }
            names.push(crate::str_at(&doc, "/metadata/name"));
            crate::k8s::install::apply(client, &doc, "default").await?;
        }
    }
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    for name in names {
        loop {
            let crd = api.get(&name).await?;
            let established = crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                break;
            }
            if Instant::now() > deadline {
                bail!("the CRD {name} was not Established within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Installs the real CRDs when `../shared/aws-lbc-v3.5.0` is there, the rig's own otherwise;
/// says which.
pub async fn install_crds(client: &Client) -> anyhow::Result<Crds> {
    let crds = crds_available();
    install_crds_from(client, &crds).await?;
    Ok(crds)
}

/// Where the AWS controller's RBAC came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// `rbac/role.yaml` of the AWS controller's data files.
    Real(PathBuf),
    /// The rig's minimal role: only what the model uses.
    Rig,
}

/// The rig's role for the model when the AWS controller's own is not there: what the model reads
/// and writes, nothing more.
const RIG_ROLE: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: aws-load-balancer-controller-rig
rules:
- apiGroups: [""]
  resources: [pods, services, nodes]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [pods/status]
  verbs: [patch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
- apiGroups: [elbv2.k8s.aws]
  resources: [targetgroupbindings]
  verbs: [get, list, watch, patch]
- apiGroups: [elbv2.k8s.aws]
  resources: [targetgroupbindings/status]
  verbs: [patch]
"#;

/// The AWS controller's identity in the cluster.
pub struct Identity {
    /// A kubeconfig for the API server that authenticates as [`USER`] (a token from the
    /// TokenRequest API, valid a day).
    pub kubeconfig_path: PathBuf,
    /// A client that authenticates the same way.
    pub client: Client,
    pub role: Role,
}

/// Installs the AWS controller's ServiceAccount (`kube-system/aws-load-balancer-controller`)
/// with the ClusterRoles and Roles of `../shared/aws-lbc-v3.5.0/rbac/role.yaml` (read there, at
/// run time) bound to it, or the rig's minimal role when that folder is absent; writes a
/// kubeconfig for it into `dir` and returns it with a client.
pub async fn install_aws_lbc_identity(
    plane: &crate::cluster::ControlPlane,
    admin: &Client,
    dir: &Path,
) -> anyhow::Result<Identity> {
    use crate::k8s::install::{apply, documents};
    apply(
        admin,
        &json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": SERVICE_ACCOUNT, "namespace": NAMESPACE}}),
        NAMESPACE,
    )
    .await?;
    let (text, role) = match shared_dir() {
        Some(d) => {
            let path = d.join("rbac/role.yaml");
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            (text, Role::Real(path))
        }
        None => (RIG_ROLE.to_string(), Role::Rig),
    };
    let subject =
        json!([{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}]);
    let mut bound = 0;
    for doc in documents(&text)? {
        let name = crate::str_at(&doc, "/metadata/name");
        let binding: Value = match doc["kind"].as_str() {
            Some("ClusterRole") => json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": format!("{SERVICE_ACCOUNT}-{name}")},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
                "subjects": subject}),
            Some("Role") => {
                let ns = doc["metadata"]["namespace"].as_str().unwrap_or(NAMESPACE);
                json!({
                    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                    "metadata": {"name": format!("{SERVICE_ACCOUNT}-{name}"), "namespace": ns},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                    "subjects": subject})
            }
            _ => continue,
        };
        apply(admin, &doc, NAMESPACE).await?;
        apply(admin, &binding, NAMESPACE).await?;
        bound += 1;
    }
    if bound == 0 {
        bail!("the AWS controller's role holds no ClusterRole or Role");
    }
    let token =
        crate::k8s::install::service_account_token(admin, NAMESPACE, SERVICE_ACCOUNT, 86_400)
            .await?;
    std::fs::create_dir_all(dir)?;
    let kubeconfig_path = dir.join("aws-load-balancer-controller.kubeconfig");
    std::fs::write(
        &kubeconfig_path,
        plane
            .pki
            .token_kubeconfig(&plane.url, SERVICE_ACCOUNT, &token),
    )?;
    let client = crate::cluster::client_from_kubeconfig(&kubeconfig_path).await?;
    Ok(Identity {
        kubeconfig_path,
        client,
        role,
    })
}
