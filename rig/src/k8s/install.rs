//! Installing objects on the real API server: YAML documents applied with server-side apply, the
//! TargetGroupBinding CRD, and readygate from the project's own manifests (`manifests/base`).

use anyhow::{Context, bail};
use base64::Engine;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::discovery::{Scope, pinned_kind};
use kube::{Api, Client};
use serde::Deserialize;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const FIELD_MANAGER: &str = "rig";

/// The TargetGroupBinding CRD the rig installs (see the file's header).
pub fn crd_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/targetgroupbinding-crd.yaml")
}

/// The YAML documents of `text` (empty ones skipped).
pub fn documents(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v = Value::deserialize(doc)?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

/// The API of `obj`'s kind, in its namespace (or `default_ns`) when the kind is namespaced.
async fn api_for(
    client: &Client,
    obj: &Value,
    default_ns: &str,
) -> anyhow::Result<Api<DynamicObject>> {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (ar, caps) = pinned_kind(client, &gvk)
        .await
        .with_context(|| format!("discovering {api_version} {kind}"))?;
    Ok(match caps.scope {
        Scope::Namespaced => {
            let ns = obj["metadata"]["namespace"].as_str().unwrap_or(default_ns);
            Api::namespaced_with(client.clone(), ns, &ar)
        }
        Scope::Cluster => Api::all_with(client.clone(), &ar),
    })
}

/// Creates `obj` (namespaced objects without a namespace go to `default_ns`).
pub async fn create(client: &Client, obj: &Value, default_ns: &str) -> anyhow::Result<()> {
    let api = api_for(client, obj, default_ns).await?;
    let o: DynamicObject = serde_json::from_value(obj.clone())?;
    api.create(&PostParams::default(), &o)
        .await
        .with_context(|| {
            format!(
                "creating {} {}",
                obj["kind"].as_str().unwrap_or_default(),
                obj["metadata"]["name"].as_str().unwrap_or_default()
            )
        })?;
    Ok(())
}

/// Waits for namespace `ns`'s `default` ServiceAccount, which its controller makes: pods
/// cannot be created before it exists.
pub async fn wait_default_service_account(client: &Client, ns: &str) -> anyhow::Result<()> {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(30);
    while sas.get_opt("default").await?.is_none() {
        if Instant::now() > deadline {
            bail!("namespace {ns} got no default ServiceAccount within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Server-side applies `obj` (namespaced objects without a namespace go to `default_ns`).
pub async fn apply(client: &Client, obj: &Value, default_ns: &str) -> anyhow::Result<()> {
    let kind = obj["kind"].as_str().unwrap_or_default();
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let api = api_for(client, obj, default_ns).await?;
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .with_context(|| format!("applying {kind} {name}"))?;
    Ok(())
}

/// Applies the rig's own TargetGroupBinding CRD and waits until it is Established.
pub async fn target_group_binding_crd(client: &Client) -> anyhow::Result<()> {
    crate::k8s::aws_lbc::install_crds_from(client, &crate::k8s::aws_lbc::Crds::Rig(crd_path()))
        .await
}

/// readygate as installed from `manifests/base`: every resource its kustomization lists, in its
/// namespace, with the webhook configuration's `caBundle` filled in; the Deployment too when
/// installed by [`readygate_deployed`].
pub struct Installed {
    pub namespace: String,
    /// The Deployment's pod template (labels, ports, probes, ServiceAccount): the rig's
    /// readygate pods are made from it when it runs them as processes ([`crate::stage`]).
    pub pod_template: Value,
    /// The MutatingWebhookConfiguration as applied.
    pub webhook_configuration: Value,
    /// The Deployment as applied (patched), when it was.
    pub deployment: Option<Value>,
    /// The name of the Secret the Deployment mounts its serving certificate from, when the
    /// Deployment was applied.
    pub tls_secret: Option<String>,
}

/// Every resource of `manifests/base` except the Deployment (the rig runs readygate's replicas
/// itself, see [`crate::stage::Stage`]).
pub async fn readygate(
    client: &Client,
    manifests: &Path,
    ca_pem: &str,
) -> anyhow::Result<Installed> {
    install(client, manifests, ca_pem, None).await
}

/// Every resource of `manifests/base`, the Deployment included, as a user installs readygate:
/// the Deployment changed by `patch` (RFC 6902 operations, as an overlay's `patches:` would),
/// and the Secret its TLS volume names created first (type `kubernetes.io/tls`) with `certs`.
pub async fn readygate_deployed(
    client: &Client,
    manifests: &Path,
    certs: &crate::certs::Certs,
    patch: &json_patch::Patch,
) -> anyhow::Result<Installed> {
    install(client, manifests, &certs.ca_pem, Some((certs, patch))).await
}

/// The Secret a Deployment's pod template mounts first (its TLS key pair).
pub fn tls_secret_name(deployment: &Value) -> Option<String> {
    deployment
        .pointer("/spec/template/spec/volumes")?
        .as_array()?
        .iter()
        .find_map(|v| v.pointer("/secret/secretName")?.as_str())
        .map(String::from)
}

/// A `kubernetes.io/tls` Secret with `certs`.
pub fn tls_secret(name: &str, namespace: &str, certs: &crate::certs::Certs) -> Value {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"tls.crt": b64(&certs.cert_pem), "tls.key": b64(&certs.key_pem), "ca.crt": b64(&certs.ca_pem)}})
}

async fn install(
    client: &Client,
    manifests: &Path,
    ca_pem: &str,
    deployment: Option<(&crate::certs::Certs, &json_patch::Patch)>,
) -> anyhow::Result<Installed> {
    let base = manifests.join("base");
    let kustomization: Value = serde_yaml::from_str(
        &std::fs::read_to_string(base.join("kustomization.yaml"))
            .with_context(|| format!("reading {}", base.join("kustomization.yaml").display()))?,
    )?;
    let namespace = kustomization["namespace"]
        .as_str()
        .context("manifests/base/kustomization.yaml sets no namespace")?
        .to_string();
    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let mut docs = Vec::new();
    for file in kustomization["resources"]
        .as_array()
        .context("manifests/base/kustomization.yaml lists no resources")?
    {
        let path = base.join(file.as_str().unwrap_or_default());
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        docs.extend(documents(&text)?);
    }
    // Namespaces first, as kubectl orders them.
    docs.sort_by_key(|d| d["kind"] != "Namespace");
    let mut pod_template = None;
    let mut webhook_configuration = None;
    let mut applied_deployment = None;
    let mut secret = None;
    for mut doc in docs {
        match doc["kind"].as_str() {
            Some("Deployment") => {
                pod_template = Some(doc["spec"]["template"].clone());
                let Some((certs, patch)) = deployment else {
                    continue;
                };
                json_patch::patch(&mut doc, patch).context("patching readygate's Deployment")?;
                let name = tls_secret_name(&doc)
                    .context("readygate's Deployment mounts no Secret for its certificate")?;
                apply(client, &tls_secret(&name, &namespace, certs), &namespace).await?;
                secret = Some(name);
                applied_deployment = Some(doc.clone());
            }
            Some("MutatingWebhookConfiguration") => {
                for w in doc["webhooks"].as_array_mut().into_iter().flatten() {
                    w["clientConfig"]["caBundle"] = json!(ca_bundle);
                }
                webhook_configuration = Some(doc.clone());
            }
            _ => {}
        }
        apply(client, &doc, &namespace).await?;
    }
    Ok(Installed {
        namespace,
        pod_template: pod_template.context("manifests/base has no Deployment")?,
        webhook_configuration: webhook_configuration
            .context("manifests/base has no MutatingWebhookConfiguration")?,
        deployment: applied_deployment,
        tls_secret: secret,
    })
}

/// A token for ServiceAccount `namespace/name` from the TokenRequest API, valid `secs`.
pub async fn service_account_token(
    client: &Client,
    namespace: &str,
    name: &str,
    secs: i64,
) -> anyhow::Result<String> {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let req: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": secs}}))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match sas
            .create_token_request(name, &PostParams::default(), &req)
            .await
        {
            Ok(t) => {
                return t
                    .status
                    .map(|s| s.token)
                    .context("a TokenRequest without a token");
            }
            // The ServiceAccount may have been applied a moment ago.
            Err(kube::Error::Api(s)) if s.code == 404 && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e).context(format!("TokenRequest for {namespace}/{name}")),
        }
    }
}
