//! The real Kubernetes control plane the rig runs on: etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler, built from Go modules by `rig/k8s/build`, started
//! on 127.0.0.1 inside the rig's network namespace (see [`crate::netns`]), and stopped by PID.
//!
//! The API server authenticates with client certificates and service-account tokens, authorises
//! with `Node,RBAC`, runs its default admission plugins (MutatingAdmissionWebhook among them)
//! plus NodeRestriction, routes webhook calls to a Service's endpoints
//! (`--enable-aggregator-routing`) and writes an audit log of every request.

use anyhow::{Context, bail};
use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The API server's secure port on 127.0.0.1 (the namespace is private: fixed ports are free).
pub const API_PORT: u16 = 6443;
const ETCD_CLIENT: &str = "http://127.0.0.1:2379";
const ETCD_PEER: &str = "http://127.0.0.1:2380";
const KCM_PORT: u16 = 10257;
const SCHEDULER_PORT: u16 = 10259;
pub const SERVICE_CIDR: &str = "10.96.0.0/16";

/// The cluster CA, and client identities signed by it.
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    pub ca_pem: String,
}

/// A client certificate and its key, PEM.
pub struct ClientCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Pki {
    pub fn new() -> anyhow::Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "rig kubernetes CA");
        params.distinguished_name = dn;
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let ca_pem = ca.pem();
        Ok(Self { ca, ca_pem })
    }

    fn sign(
        &self,
        cn: &str,
        orgs: &[&str],
        sans: &[String],
        usage: ExtendedKeyUsagePurpose,
    ) -> anyhow::Result<ClientCert> {
        let mut params = CertificateParams::new(sans.to_vec())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        for o in orgs {
            dn.push(DnType::OrganizationName, *o);
        }
        params.distinguished_name = dn;
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.ca)?;
        Ok(ClientCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A client certificate for user `cn` in groups `orgs`.
    pub fn client(&self, cn: &str, orgs: &[&str]) -> anyhow::Result<ClientCert> {
        self.sign(cn, orgs, &[], ExtendedKeyUsagePurpose::ClientAuth)
    }

    pub fn serving(&self, cn: &str, sans: &[String]) -> anyhow::Result<ClientCert> {
        self.sign(cn, &[], sans, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A kubeconfig for `server` with this client certificate.
    pub fn kubeconfig(&self, server: &str, user: &str, cert: &ClientCert) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        kubeconfig_yaml(
            server,
            &b64(&self.ca_pem),
            user,
            &format!(
                "client-certificate-data: {}\n    client-key-data: {}",
                b64(&cert.cert_pem),
                b64(&cert.key_pem)
            ),
        )
    }

    /// A kubeconfig for `server` that authenticates with a bearer token.
    pub fn token_kubeconfig(&self, server: &str, user: &str, token: &str) -> String {
        token_kubeconfig(server, &self.ca_pem, user, token)
    }
}

/// A kubeconfig for `server`, verified against `ca_pem`, that authenticates with a bearer token.
pub fn token_kubeconfig(server: &str, ca_pem: &str, user: &str, token: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    kubeconfig_yaml(server, &b64, user, &format!("token: {token}"))
}

fn kubeconfig_yaml(server: &str, ca_b64: &str, user: &str, auth: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: rig\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca_b64}\n\
         users:\n- name: {user}\n  user:\n    {auth}\n\
         contexts:\n- name: rig\n  context:\n    cluster: rig\n    user: {user}\ncurrent-context: rig\n"
    )
}

/// One running component: its process, by PID, and its log.
struct Component {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Component {
    fn spawn(name: &'static str, bin: &Path, args: &[String], dir: &Path) -> anyhow::Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .current_dir(dir);
        // SAFETY: prctl in the child before exec: the component dies with the thread that
        // started it (a dedicated thread that lives as long as the control plane), so a
        // panicking or killed rig leaves nothing running.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({})", bin.display()))?;
        Ok(Self { name, child, log })
    }

    /// Fails with the component's name and log when it has exited.
    fn check(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}) while the rig needed it; its log: {}{}",
                self.name,
                self.log.display(),
                tail(&self.log)
            );
        }
        Ok(())
    }

    fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        // SAFETY: signalling our own child by PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last lines of a log, for an error message.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(15);
    if lines.is_empty() {
        String::new()
    } else {
        format!("\n  …\n  {}", lines[from..].join("\n  "))
    }
}

/// Options of a control plane.
#[derive(Debug, Clone)]
pub struct ControlPlaneOpts {
    /// Where the four binaries are (`rig/k8s/build` prints it).
    pub bin_dir: PathBuf,
    /// etcd's backend quota (`--quota-backend-bytes`).
    pub etcd_quota_bytes: u64,
    /// Start kube-controller-manager and kube-scheduler (true by default). A benchmark that
    /// loads objects no controller should touch (pods bound to Nodes that do not exist, which
    /// pod GC deletes; Pending pods, which the scheduler binds) runs etcd and the API server
    /// alone.
    pub controllers: bool,
}

impl ControlPlaneOpts {
    /// The binaries `rig/k8s/build` makes (building them first when they are missing).
    pub fn build() -> anyhow::Result<Self> {
        Ok(Self {
            bin_dir: build_control_plane()?,
            etcd_quota_bytes: 8 << 30,
            controllers: true,
        })
    }
}

/// Runs `rig/k8s/build` (which builds nothing when the binaries exist) and returns their
/// directory. `$RIG_K8S_BIN_DIR` names a directory of prebuilt binaries instead.
pub fn build_control_plane() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("RIG_K8S_BIN_DIR") {
        return Ok(dir.into());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s/build");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): the control plane could not be built (its errors are above)",
            script.display(),
            out.status
        );
    }
    let stdout = String::from_utf8(out.stdout)?;
    let dir = stdout
        .lines()
        .last()
        .context("rig/k8s/build printed no directory")?;
    Ok(dir.into())
}

/// A running control plane.
pub struct ControlPlane {
    pub dir: PathBuf,
    pub pki: Pki,
    /// `https://127.0.0.1:6443`.
    pub url: String,
    /// A cluster-admin kubeconfig (`system:masters`).
    pub admin_kubeconfig: PathBuf,
    /// The audit log (JSON lines, one event per request at `ResponseComplete`).
    pub audit_log: PathBuf,
    /// `gitVersion` from `/version`, e.g. `v1.37.2`.
    pub version: String,
    /// etcd's version, from its `/version`.
    pub etcd_version: String,
    components: Mutex<Vec<Component>>,
}

const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  # Every request: user, verb, resource, subresource, response code.
  - level: Metadata
";

impl ControlPlane {
    /// Starts etcd, kube-apiserver, kube-controller-manager and kube-scheduler (those two unless
    /// `opts.controllers` is false) in `dir` and waits until each is ready. Call it inside the rig's network namespace ([`crate::netns::enter`]).
    pub async fn start(opts: &ControlPlaneOpts, dir: &Path) -> anyhow::Result<Self> {
        let started = Instant::now();
        std::fs::create_dir_all(dir)?;
        let pki = Pki::new()?;
        let w = |name: &str, text: &str| -> anyhow::Result<PathBuf> {
            let p = dir.join(name);
            std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
            Ok(p)
        };
        let url = format!("https://127.0.0.1:{API_PORT}");
        let ca = w("ca.crt", &pki.ca_pem)?;
        let serving = pki.serving(
            "kube-apiserver",
            &[
                "127.0.0.1".into(),
                crate::netns::NODE_IP.to_string(),
                "10.96.0.1".into(),
                "localhost".into(),
                "kubernetes".into(),
                "kubernetes.default".into(),
                "kubernetes.default.svc".into(),
                "kubernetes.default.svc.cluster.local".into(),
            ],
        )?;
        let api_crt = w("apiserver.crt", &serving.cert_pem)?;
        let api_key = w("apiserver.key", &serving.key_pem)?;
        let sa = KeyPair::generate()?;
        let sa_key = w("sa.key", &sa.serialize_pem())?;
        let sa_pub = w("sa.pub", &sa.public_key_pem())?;
        let admin = pki.client("rig-admin", &["system:masters"])?;
        let admin_kubeconfig = w(
            "admin.kubeconfig",
            &pki.kubeconfig(&url, "rig-admin", &admin),
        )?;
        let kcm = pki.client("system:kube-controller-manager", &[])?;
        let kcm_kubeconfig = w(
            "controller-manager.kubeconfig",
            &pki.kubeconfig(&url, "kcm", &kcm),
        )?;
        let sched = pki.client("system:kube-scheduler", &[])?;
        let sched_kubeconfig = w(
            "scheduler.kubeconfig",
            &pki.kubeconfig(&url, "scheduler", &sched),
        )?;
        let local = pki.serving("127.0.0.1", &["127.0.0.1".into(), "localhost".into()])?;
        let local_crt = w("local.crt", &local.cert_pem)?;
        let local_key = w("local.key", &local.key_pem)?;
        let policy = w("audit-policy.yaml", AUDIT_POLICY)?;
        let audit_log = dir.join("audit.log");
        let p = |p: &Path| p.display().to_string();
        let bin = |name: &str| opts.bin_dir.join(name);
        for b in [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
        ] {
            if !bin(b).is_file() {
                bail!(
                    "{} is missing: run rig/k8s/build (or set RIG_K8S_BIN_DIR)",
                    bin(b).display()
                );
            }
        }
        let plane = Self {
            dir: dir.to_path_buf(),
            pki,
            url: url.clone(),
            admin_kubeconfig,
            audit_log: audit_log.clone(),
            version: String::new(),
            etcd_version: String::new(),
            components: Mutex::new(Vec::new()),
        };
        let etcd_dir = dir.join("etcd");
        plane.spawn(
            "etcd",
            &bin("etcd"),
            &[
                format!("--data-dir={}", p(&etcd_dir)),
                "--name=rig".into(),
                format!("--listen-client-urls={ETCD_CLIENT}"),
                format!("--advertise-client-urls={ETCD_CLIENT}"),
                format!("--listen-peer-urls={ETCD_PEER}"),
                format!("--initial-advertise-peer-urls={ETCD_PEER}"),
                format!("--initial-cluster=rig={ETCD_PEER}"),
                format!("--quota-backend-bytes={}", opts.etcd_quota_bytes),
                // A throwaway store: no fsync, as the Kubernetes integration tests run it.
                "--unsafe-no-fsync=true".into(),
                "--log-level=warn".into(),
            ],
        )?;
        let mut plane = plane;
        plane.etcd_version = plane.etcd_version_wait().await?;
        plane.spawn(
            "kube-apiserver",
            &bin("kube-apiserver"),
            &[
                format!("--etcd-servers={ETCD_CLIENT}"),
                // Every address of the rig's private namespace: the rig's clients use
                // 127.0.0.1, pods the advertise address (the `kubernetes` Service's endpoint),
                // from their own network namespaces.
                "--bind-address=0.0.0.0".into(),
                format!("--secure-port={API_PORT}"),
                format!("--advertise-address={}", crate::netns::NODE_IP),
                format!("--tls-cert-file={}", p(&api_crt)),
                format!("--tls-private-key-file={}", p(&api_key)),
                format!("--client-ca-file={}", p(&ca)),
                "--authorization-mode=Node,RBAC".into(),
                "--enable-admission-plugins=NodeRestriction".into(),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!("--service-account-key-file={}", p(&sa_pub)),
                format!("--service-account-signing-key-file={}", p(&sa_key)),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                // Webhook (and aggregated API) calls go to a Service's endpoint, not its
                // ClusterIP: there is no kube-proxy in the rig.
                "--enable-aggregator-routing=true".into(),
                format!("--audit-policy-file={}", p(&policy)),
                format!("--audit-log-path={}", p(&audit_log)),
                "--audit-log-format=json".into(),
                "--audit-log-maxsize=0".into(),
                "--profiling=false".into(),
                "--v=1".into(),
            ],
        )?;
        plane.wait_http("kube-apiserver", &url, "/readyz").await?;
        let ca_s = p(&ca);
        let common = |kubeconfig: &Path, port: u16| -> Vec<String> {
            vec![
                format!("--kubeconfig={}", p(kubeconfig)),
                format!("--authentication-kubeconfig={}", p(kubeconfig)),
                format!("--authorization-kubeconfig={}", p(kubeconfig)),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={port}"),
                format!("--tls-cert-file={}", p(&local_crt)),
                format!("--tls-private-key-file={}", p(&local_key)),
                "--leader-elect=false".into(),
                "--kube-api-qps=200".into(),
                "--kube-api-burst=400".into(),
                "--v=1".into(),
            ]
        };
        if opts.controllers {
            let mut kcm_args = common(&kcm_kubeconfig, KCM_PORT);
            kcm_args.extend([
                // Every default controller, named ones spelled out so a changed default fails loudly.
                "--controllers=*,deployment-controller,replicaset-controller,endpointslice-controller,endpoints-controller,garbage-collector-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller,node-lifecycle-controller".into(),
                "--use-service-account-credentials=true".into(),
                format!("--service-account-private-key-file={}", p(&sa_key)),
                format!("--root-ca-file={ca_s}"),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                format!("--cluster-cidr={}", crate::netns::POD_CIDR),
            ]);
            plane.spawn(
                "kube-controller-manager",
                &bin("kube-controller-manager"),
                &kcm_args,
            )?;
            plane.spawn(
                "kube-scheduler",
                &bin("kube-scheduler"),
                &common(&sched_kubeconfig, SCHEDULER_PORT),
            )?;
            plane
                .wait_http(
                    "kube-controller-manager",
                    &format!("https://127.0.0.1:{KCM_PORT}"),
                    "/healthz",
                )
                .await?;
            plane
                .wait_http(
                    "kube-scheduler",
                    &format!("https://127.0.0.1:{SCHEDULER_PORT}"),
                    "/healthz",
                )
                .await?;
        }
        let client = plane.client().await?;
        let v: serde_json::Value = serde_json::from_str(
            &client
                .request_text(http::Request::get("/version").body(Vec::new())?)
                .await
                .context("GET /version")?,
        )?;
        plane.version = v["gitVersion"].as_str().unwrap_or_default().to_string();
        tracing::info!(
            version = %plane.version,
            etcd = %plane.etcd_version,
            seconds = started.elapsed().as_secs_f64(),
            "control plane ready"
        );
        Ok(plane)
    }

    fn spawn(&self, name: &'static str, bin: &Path, args: &[String]) -> anyhow::Result<()> {
        // Started from a thread that lives until the control plane stops, so that the
        // components' parent-death signal fires only with the process.
        let (tx, rx) = std::sync::mpsc::channel();
        let (bin, args, dir) = (bin.to_path_buf(), args.to_vec(), self.dir.clone());
        std::thread::Builder::new()
            .name(format!("rig-{name}"))
            .spawn(move || {
                let _ = tx.send(Component::spawn(name, &bin, &args, &dir));
                loop {
                    std::thread::park();
                }
            })?;
        let component = rx.recv().context("the spawning thread died")??;
        self.components.lock().unwrap().push(component);
        Ok(())
    }

    /// Fails with the name and log of a component that has exited.
    pub fn check(&self) -> anyhow::Result<()> {
        for c in self.components.lock().unwrap().iter_mut() {
            c.check()?;
        }
        Ok(())
    }

    /// The PID of component `name` (`etcd`, `kube-apiserver`, …), when it was started.
    pub fn pid(&self, name: &str) -> Option<u32> {
        let components = self.components.lock().unwrap();
        components
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.child.id())
    }

    /// The log of component `name` (`etcd`, `kube-apiserver`, …).
    pub fn log(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    async fn etcd_version_wait(&self) -> anyhow::Result<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.check()?;
            if let Ok(text) = http_get_plain("127.0.0.1:2379", "/version").await
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
                && let Some(s) = v["etcdserver"].as_str()
            {
                return Ok(s.to_string());
            }
            if Instant::now() > deadline {
                bail!(
                    "etcd did not answer /version within 30 s; its log: {}",
                    self.log("etcd").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for `path` (`/readyz`, `/healthz`) of a component to answer `ok`.
    async fn wait_http(&self, name: &str, base: &str, path: &str) -> anyhow::Result<()> {
        let mut config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&self.admin_kubeconfig)?,
            &Default::default(),
        )
        .await?;
        config.cluster_url = base.parse()?;
        config.connect_timeout = Some(Duration::from_secs(2));
        config.read_timeout = Some(Duration::from_secs(5));
        let client = kube::Client::try_from(config)?;
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut last;
        loop {
            self.check()?;
            match client
                .request_text(http::Request::get(path).body(Vec::new())?)
                .await
            {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                Ok(body) => last = body,
                Err(e) => last = e.to_string(),
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} was not ready within 90 s ({base}{path}: {last}); its log: {}",
                    self.log(name).display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A cluster-admin client.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        client_from_kubeconfig(&self.admin_kubeconfig).await
    }

    /// A kubeconfig and client for user `cn` in groups `orgs`, by client certificate (a node
    /// agent is `system:node:NAME` in `system:nodes`).
    pub async fn user_client(&self, cn: &str, orgs: &[&str]) -> anyhow::Result<kube::Client> {
        let cert = self.pki.client(cn, orgs)?;
        let path = self
            .dir
            .join(format!("{}.kubeconfig", cn.replace(':', "-")));
        std::fs::write(&path, self.pki.kubeconfig(&self.url, cn, &cert))?;
        client_from_kubeconfig(&path).await
    }

    /// Stops every component by PID, newest first.
    pub fn stop(&self) {
        let mut components = self.components.lock().unwrap();
        while let Some(mut c) = components.pop() {
            c.stop();
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

pub async fn client_from_kubeconfig(path: &Path) -> anyhow::Result<kube::Client> {
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(path)
            .with_context(|| format!("reading {}", path.display()))?,
        &Default::default(),
    )
    .await?;
    Ok(kube::Client::try_from(config)?)
}

/// A plain-HTTP GET on loopback (etcd's client port), the body as text.
async fn http_get_plain(addr: &str, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await??;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("{}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_string())
}

/// The control plane of this process, started on first use and shared by every test of a test
/// binary (fresh namespaces per test): its start-up is paid once. Its components die with the
/// process.
pub fn shared() -> anyhow::Result<&'static ControlPlane> {
    static PLANE: std::sync::OnceLock<Result<ControlPlane, String>> = std::sync::OnceLock::new();
    let plane = PLANE.get_or_init(|| {
        std::thread::scope(|s| {
            s.spawn(|| -> anyhow::Result<ControlPlane> {
                crate::netns::enter()?;
                let opts = ControlPlaneOpts::build()?;
                let dir = tempfile::Builder::new()
                    .prefix("rig-k8s-")
                    .tempdir()?
                    .keep();
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
                    .block_on(ControlPlane::start(&opts, &dir))
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the control plane's start panicked"))?
        })
        .map_err(|e| format!("{e:#}"))
    });
    plane
        .as_ref()
        .map_err(|e| anyhow::anyhow!("the rig's control plane did not start: {e}"))
}

/// Runs `f` for a test: on this thread inside the rig's network namespace, on a tokio runtime,
/// with the shared control plane.
pub fn test<F, Fut>(f: F) -> Fut::Output
where
    F: FnOnce(&'static ControlPlane) -> Fut,
    Fut: std::future::Future,
{
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    crate::netns::enter().expect("entering the rig's network namespace");
    let plane = shared().expect("starting the control plane");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(f(plane))
}
