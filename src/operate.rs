//! The operator commands' thin shell: `readygate status` and `readygate doctor` fetch what they
//! need from the API server of the kube context (and the leader's `/debug/gates`, and a TLS
//! handshake with the webhook), hand it to the pure `status` and `doctor` modules and print.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Endpoints, Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams};
use kube::{Client, Resource, ResourceExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::cache::{Cached, WatchedPod};
use crate::cli::{DoctorArgs, InstallArgs, Output, StatusArgs};
use crate::crd::TargetGroupBinding;
use crate::doctor::{self, Lookup, Observed, Probe, ServiceState};
use crate::gates_view::GatesView;
use crate::index::Index;
use crate::status::{self, Source};

/// Bound on every call of these commands: a CLI must not hang on an unreachable server.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The admin port when the leader's pod names none (the manifests' `admin`: 8080).
const DEFAULT_ADMIN_PORT: i32 = 8080;

/// A client for the kube context, as kubectl's. Without kube's default retries: they back off
/// on 503 for minutes, and the pod proxy answers 503 for a leader it cannot reach.
async fn client() -> anyhow::Result<Client> {
    let mut config = kube::Config::infer()
        .await
        .context("reading the kube context (KUBECONFIG, ~/.kube/config or in-cluster)")?;
    config.default_retry = false;
    Client::try_from(config).context("building the Kubernetes client")
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// Colour only on a terminal, and never when NO_COLOR is set.
fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

async fn bounded<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(r) => r.with_context(|| what.to_string()),
        Err(_) => bail!("{what}: no answer within {CALL_TIMEOUT:?}"),
    }
}

fn is_not_found(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<kube::Error>(),
            Some(kube::Error::Api(s)) if s.code == 404
        )
    })
}

async fn list<K>(api: Api<K>, lp: &ListParams, what: &str) -> anyhow::Result<Vec<K>>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    Ok(bounded(what, api.list(lp)).await?.items)
}

async fn lookup<K>(api: Api<K>, name: &str, what: &str) -> Lookup<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match bounded(what, api.get_opt(name)).await {
        Ok(Some(o)) => Lookup::Found(o),
        Ok(None) => Lookup::Absent,
        Err(e) => Lookup::Failed(format!("{e:#}")),
    }
}

fn fill<K: Cached>(ix: &mut Index, items: &[K]) {
    for o in items {
        if let Some(item) = o.convert() {
            K::apply(ix, &o.namespace().unwrap_or_default(), &o.name_any(), item);
        }
    }
}

/// `readygate status`.
pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let client = client().await?;
    let ns = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let scoped = |c: &Client| -> (Api<WatchedPod>, Api<Service>, Api<TargetGroupBinding>) {
        if args.all_namespaces {
            (
                Api::all(c.clone()),
                Api::all(c.clone()),
                Api::all(c.clone()),
            )
        } else {
            (
                Api::namespaced(c.clone(), &ns),
                Api::namespaced(c.clone(), &ns),
                Api::namespaced(c.clone(), &ns),
            )
        }
    };
    let (pods_api, services_api, bindings_api) = scoped(&client);
    let mut pods_lp = ListParams::default();
    if let Some(sel) = &args.selector {
        pods_lp = pods_lp.labels(sel);
    }
    let pods = list(pods_api, &pods_lp, "listing pods").await?;
    let services = list(services_api, &ListParams::default(), "listing services").await?;
    let bindings = match list(
        bindings_api,
        &ListParams::default(),
        "listing TargetGroupBindings",
    )
    .await
    {
        Ok(b) => b,
        Err(e) if is_not_found(&e) => {
            eprintln!(
                "warning: the TargetGroupBinding CRD is not installed; run `readygate doctor`"
            );
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    // Opt-in decides which pods miss gates; without the right to read namespaces, none do.
    let namespaces: Vec<Namespace> = if args.all_namespaces {
        list(
            Api::all(client.clone()),
            &ListParams::default(),
            "listing namespaces",
        )
        .await
        .unwrap_or_default()
    } else {
        match lookup(
            Api::<Namespace>::all(client.clone()),
            &ns,
            "reading the namespace",
        )
        .await
        {
            Lookup::Found(n) => vec![n],
            _ => Vec::new(),
        }
    };
    let mut ix = Index::default();
    fill(&mut ix, &pods);
    fill(&mut ix, &services);
    fill(&mut ix, &bindings);
    fill(&mut ix, &namespaces);

    let (view, source) = controller_view(&client, &args.install).await;
    let now = now_ms();
    let mut out = std::io::stdout().lock();
    use std::io::Write as _;
    match &args.pod {
        Some(pod) => {
            let found = ix
                .pods()
                .find(|(n, p, _)| *n == ns && p == pod)
                .map(|(_, _, p)| p);
            let Some(p) = found else {
                bail!("pod {ns}/{pod} not found");
            };
            let rows = status::pod_rows(&ix, &ns, pod, p, view.as_ref(), now);
            let sentences = status::explain(&ix, &ns, pod, view.as_ref(), &source, now);
            match args.output {
                Output::Json => writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({"source": source, "rows": rows, "explanation": sentences})
                    )?
                )?,
                Output::Text => {
                    for s in sentences {
                        writeln!(out, "{s}")?;
                    }
                }
            }
        }
        None => {
            let rows = status::rows(&ix, view.as_ref(), now);
            match args.output {
                Output::Json => writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&json!({"source": source, "rows": rows}))?
                )?,
                Output::Text => write!(out, "{}", status::render_table(&rows, &source, colour()))?,
            }
        }
    }
    Ok(())
}

/// The leader's view of its pending gates, and where it came from; the pods' conditions alone
/// (with the reason) when it cannot be had.
async fn controller_view(client: &Client, install: &InstallArgs) -> (Option<GatesView>, Source) {
    let fetched = match &install.controller_url {
        Some(url) => {
            let url = if url.trim_end_matches('/').ends_with("/debug/gates") {
                url.clone()
            } else {
                format!("{}/debug/gates", url.trim_end_matches('/'))
            };
            http_get(&url).await.map(|body| (body, url))
        }
        None => via_pod_proxy(client, install).await,
    };
    match fetched.and_then(|(body, url)| {
        let view: GatesView = serde_json::from_str(&body)
            .with_context(|| format!("{url} did not answer a gates view"))?;
        Ok((view, url))
    }) {
        Ok((view, url)) if view.leader => (Some(view), Source::Controller { url }),
        Ok((_, url)) => (
            None,
            Source::Conditions {
                why: format!("the replica at {url} does not hold the lease"),
            },
        ),
        Err(e) => (
            None,
            Source::Conditions {
                why: format!("{e:#}"),
            },
        ),
    }
}

/// GET the leader's `/debug/gates` through the API server's pod proxy; the leader's pod is the
/// Lease's holder.
async fn via_pod_proxy(client: &Client, install: &InstallArgs) -> anyhow::Result<(String, String)> {
    let ns = &install.lease_namespace;
    let lease = match lookup(
        Api::<Lease>::namespaced(client.clone(), ns),
        &install.lease_name,
        "reading the Lease",
    )
    .await
    {
        Lookup::Found(l) => l,
        Lookup::Absent => bail!("no Lease {ns}/{}: no leader", install.lease_name),
        Lookup::Failed(e) => bail!("{e}"),
    };
    let holder = lease
        .spec
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
        .with_context(|| format!("no replica holds Lease {ns}/{}", install.lease_name))?;
    let pod = match lookup(
        Api::<Pod>::namespaced(client.clone(), ns),
        &holder,
        "reading the leader's pod",
    )
    .await
    {
        Lookup::Found(p) => p,
        Lookup::Absent => bail!("the leader {holder} is not a pod of {ns} (pass --controller-url)"),
        Lookup::Failed(e) => bail!("{e}"),
    };
    let port = pod
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some("admin"))
        .map_or(DEFAULT_ADMIN_PORT, |p| p.container_port);
    let path = format!("/api/v1/namespaces/{ns}/pods/{holder}:{port}/proxy/debug/gates");
    let req = hyper::Request::get(&path).body(Vec::new())?;
    let body = bounded(
        "reading /debug/gates through the pod proxy",
        client.request_text(req),
    )
    .await?;
    Ok((body, format!("pod proxy {path}")))
}

/// A plain-HTTP GET (the admin port speaks HTTP/1.1 without TLS).
async fn http_get(url: &str) -> anyhow::Result<String> {
    use http_body_util::BodyExt;
    let uri: hyper::Uri = url.parse().with_context(|| format!("bad URL {url}"))?;
    if uri.scheme_str() != Some("http") {
        bail!("--controller-url must be http:// (the admin port has no TLS): {url}");
    }
    let host = uri.host().context("URL without host")?.to_string();
    let authority = format!("{host}:{}", uri.port_u16().unwrap_or(80));
    let work = async {
        let tcp = tokio::net::TcpStream::connect(&authority).await?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let req = hyper::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(hyper::header::HOST, &authority)
            .body(http_body_util::Empty::<hyper::body::Bytes>::new())?;
        let res = send.send_request(req).await?;
        let status = res.status();
        let body = res.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("{url} answered {status}");
        }
        Ok::<_, anyhow::Error>(String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(CALL_TIMEOUT, work)
        .await
        .with_context(|| format!("{url}: no answer within {CALL_TIMEOUT:?}"))?
        .with_context(|| format!("GET {url}"))
}

/// `readygate doctor`; returns the exit code.
pub async fn doctor(args: DoctorArgs) -> anyhow::Result<i32> {
    let client = client().await?;
    let crd = match lookup(
        Api::<CustomResourceDefinition>::all(client.clone()),
        doctor::BINDING_CRD,
        "reading the CRD",
    )
    .await
    {
        Lookup::Found(_) => Lookup::Found(()),
        Lookup::Absent => Lookup::Absent,
        Lookup::Failed(e) => Lookup::Failed(e),
    };
    let configs: Vec<MutatingWebhookConfiguration> = list(
        Api::all(client.clone()),
        &ListParams::default(),
        "listing MutatingWebhookConfigurations",
    )
    .await?;
    let ours = configs
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(args.webhook_configuration.as_str()));
    let service = match ours
        .and_then(|c| c.webhooks.as_ref()?.first().cloned())
        .and_then(|w| Some((w.client_config.service.clone()?, w)))
    {
        Some((svc, w)) => Some(
            webhook_service(
                &client,
                &svc.namespace,
                &svc.name,
                svc.port.unwrap_or(443),
                w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()),
                args.webhook_url.as_deref(),
            )
            .await?,
        ),
        None => None,
    };
    // A webhook called by URL: probe that URL (or --webhook-url) under the URL's host name.
    let url_probe = match ours
        .and_then(|c| c.webhooks.as_ref()?.first().cloned())
        .filter(|w| w.client_config.service.is_none())
        .and_then(|w| Some((w.client_config.url.clone()?, w.client_config.ca_bundle)))
    {
        Some((url, ca)) => {
            let target = args.webhook_url.as_deref().unwrap_or(&url);
            let uri: hyper::Uri = target
                .parse()
                .with_context(|| format!("bad webhook URL {target}"))?;
            let host = uri.host().context("webhook URL without host")?;
            let addr = format!("{host}:{}", uri.port_u16().unwrap_or(443));
            Some(match ca.as_ref().map(|b| b.0.as_slice()) {
                None | Some([]) => Probe::NotTried("the webhook has no caBundle".into()),
                Some(ca) => probe(&[addr], ca, &doctor::url_host(&url)).await,
            })
        }
        None => None,
    };
    let namespaces: Vec<Namespace> = list(
        Api::all(client.clone()),
        &ListParams::default(),
        "listing namespaces",
    )
    .await?;
    let bindings = list(
        Api::<TargetGroupBinding>::all(client.clone()),
        &ListParams::default(),
        "listing TargetGroupBindings",
    )
    .await;
    let index = match bindings {
        Ok(bindings) => {
            let pods: Vec<WatchedPod> = list(
                Api::all(client.clone()),
                &ListParams::default(),
                "listing pods",
            )
            .await?;
            let services: Vec<Service> = list(
                Api::all(client.clone()),
                &ListParams::default(),
                "listing services",
            )
            .await?;
            let mut ix = Index::default();
            fill(&mut ix, &pods);
            fill(&mut ix, &services);
            fill(&mut ix, &bindings);
            fill(&mut ix, &namespaces);
            Some(ix)
        }
        Err(e) => {
            tracing::debug!(error = %format!("{e:#}"), "bindings not listed");
            None
        }
    };
    let lease = lookup(
        Api::<Lease>::namespaced(client.clone(), &args.install.lease_namespace),
        &args.install.lease_name,
        "reading the Lease",
    )
    .await;
    let findings = doctor::findings(&Observed {
        now_ms: now_ms(),
        crd,
        webhook_configurations: &configs,
        ours: &args.webhook_configuration,
        service,
        url_probe,
        namespaces: &namespaces,
        index: index.as_ref(),
        lease,
        lease_ref: format!(
            "{}/{}",
            args.install.lease_namespace, args.install.lease_name
        ),
    });
    let code = doctor::exit_code(&findings);
    match args.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json!({"findings": findings, "exitCode": code}))?
        ),
        Output::Text => print!("{}", doctor::render(&findings, colour())),
    }
    Ok(code)
}

/// The webhook Service, its ready endpoints, and a TLS probe of one of them (or of
/// `--webhook-url`).
async fn webhook_service(
    client: &Client,
    ns: &str,
    name: &str,
    port: i32,
    ca_bundle: Option<&[u8]>,
    webhook_url: Option<&str>,
) -> anyhow::Result<ServiceState> {
    let svc = match lookup(
        Api::<Service>::namespaced(client.clone(), ns),
        name,
        "reading the webhook Service",
    )
    .await
    {
        Lookup::Found(s) => Some(s),
        Lookup::Absent => None,
        Lookup::Failed(e) => bail!("{e}"),
    };
    let exists = svc.is_some();
    // EndpointSlices name their ports after the Service's.
    let port_name = svc
        .as_ref()
        .and_then(|s| {
            s.spec
                .as_ref()?
                .ports
                .as_ref()?
                .iter()
                .find(|p| p.port == port)
                .cloned()
        })
        .and_then(|p| p.name);
    let (ready, not_ready) = match svc {
        Some(_) => endpoints(client, ns, name, port_name.as_deref()).await?,
        None => (Vec::new(), 0),
    };
    let server_name = format!("{name}.{ns}.svc");
    let addrs: Vec<String> = match webhook_url {
        Some(url) => {
            let uri: hyper::Uri = url
                .parse()
                .with_context(|| format!("bad --webhook-url {url}"))?;
            let host = uri.host().context("--webhook-url without host")?;
            vec![format!("{host}:{}", uri.port_u16().unwrap_or(443))]
        }
        None => ready.clone(),
    };
    let probe = match ca_bundle {
        None | Some([]) => Probe::NotTried("the webhook has no caBundle".into()),
        Some(_) if addrs.is_empty() => {
            Probe::NotTried("no ready endpoint to probe (and no --webhook-url)".into())
        }
        Some(ca) => probe(&addrs, ca, &server_name).await,
    };
    Ok(ServiceState {
        namespace: ns.into(),
        name: name.into(),
        exists,
        ready,
        not_ready,
        probe,
    })
}

/// Ready and not-ready endpoint addresses of a Service: from its EndpointSlices, or from its
/// Endpoints where EndpointSlices are not served.
async fn endpoints(
    client: &Client,
    ns: &str,
    service: &str,
    port_name: Option<&str>,
) -> anyhow::Result<(Vec<String>, usize)> {
    let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={service}"));
    let slices = list(
        Api::<EndpointSlice>::namespaced(client.clone(), ns),
        &lp,
        "listing EndpointSlices",
    )
    .await;
    match slices {
        Ok(slices) => Ok(doctor::slice_addresses(&slices, port_name)),
        Err(e) if is_not_found(&e) => Ok(
            match lookup(
                Api::<Endpoints>::namespaced(client.clone(), ns),
                service,
                "reading Endpoints",
            )
            .await
            {
                Lookup::Found(ep) => doctor::endpoints_addresses(&ep, port_name),
                _ => (Vec::new(), 0),
            },
        ),
        Err(e) => Err(e),
    }
}

/// A TLS handshake with the first reachable address, verifying the served certificate against
/// `ca_pem` under `server_name`, as the API server does.
pub async fn probe(addrs: &[String], ca_pem: &[u8], server_name: &str) -> Probe {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem).flatten() {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Probe::Rejected {
            addr: addrs.join(", "),
            error: "caBundle holds no PEM certificate".into(),
        };
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let Ok(name) = ServerName::try_from(server_name.to_string()) else {
        return Probe::NotTried(format!("{server_name} is not a valid TLS name"));
    };
    let mut errors = Vec::new();
    for addr in addrs {
        let tcp = match tokio::time::timeout(
            Duration::from_secs(3),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                errors.push(format!("{addr}: {e}"));
                continue;
            }
            Err(_) => {
                errors.push(format!("{addr}: connect timed out"));
                continue;
            }
        };
        let handshake =
            tokio::time::timeout(Duration::from_secs(5), connector.connect(name.clone(), tcp))
                .await;
        return match handshake {
            Ok(Ok(_)) => Probe::Verified { addr: addr.clone() },
            Ok(Err(e)) => {
                let tls = e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>());
                match tls {
                    Some(
                        err @ (rustls::Error::InvalidCertificate(_)
                        | rustls::Error::NoCertificatesPresented),
                    ) => Probe::Rejected {
                        addr: addr.clone(),
                        error: err.to_string(),
                    },
                    _ => Probe::Unreachable {
                        error: format!("{addr}: TLS handshake failed: {e}"),
                    },
                }
            }
            Err(_) => Probe::Unreachable {
                error: format!("{addr}: TLS handshake timed out"),
            },
        };
    }
    Probe::Unreachable {
        error: errors.join("; "),
    }
}
