//! The real `readygate serve` binary as a child process of the rig, pointed at the rig's API
//! server and ELBv2 endpoint through the standard KUBECONFIG and AWS_* variables.

use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// readygate's access key on the rig's AWS APIs (the load balancer counts calls by it).
pub const ACCESS_KEY: &str = "rig";

#[derive(Debug, Clone)]
pub struct ReadygateOpts {
    pub bin: PathBuf,
    pub kubeconfig: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub elb_url: String,
    pub lease_namespace: String,
    pub identity: String,
    pub webhook_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub log: PathBuf,
    pub extra_args: Vec<String>,
}

pub struct Readygate {
    child: tokio::process::Child,
    pub opts: ReadygateOpts,
}

/// Where the readygate binary is: an explicit path, $READYGATE_BIN, or the debug build of
/// the workspace (or of the crate at the repository root).
pub fn find_binary(explicit: Option<&Path>) -> Option<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        explicit.map(Path::to_path_buf),
        std::env::var_os("READYGATE_BIN").map(PathBuf::from),
        std::env::var_os("CARGO_TARGET_DIR").map(|d| PathBuf::from(d).join("debug/readygate")),
        Some(manifest.join("../target/debug/readygate")),
        Some(manifest.join("target/debug/readygate")),
    ];
    candidates.into_iter().flatten().find(|p| p.is_file())
}

/// A port free right now on 127.0.0.1.
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    l.local_addr().expect("local addr")
}

impl Readygate {
    pub async fn start(opts: ReadygateOpts) -> anyhow::Result<Self> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&opts.log)
            .with_context(|| format!("opening {}", opts.log.display()))?;
        let mut cmd = tokio::process::Command::new(&opts.bin);
        cmd.arg("serve")
            .arg("--webhook-addr")
            .arg(opts.webhook_addr.to_string())
            .arg("--admin-addr")
            .arg(opts.admin_addr.to_string())
            .arg("--tls-cert")
            .arg(&opts.cert)
            .arg("--tls-key")
            .arg(&opts.key)
            .arg("--lease-namespace")
            .arg(&opts.lease_namespace)
            .arg("--identity")
            .arg(&opts.identity)
            .arg("--log-format")
            .arg("text")
            .args(&opts.extra_args)
            // The rig drops a terminating replica's endpoint `stage::ENDPOINT_LAG` (1 s) after
            // SIGTERM: twice that covers it without slowing every test's teardown.
            .env("READYGATE_SHUTDOWN_DELAY", "2s")
            .env("KUBECONFIG", &opts.kubeconfig)
            .env("AWS_ENDPOINT_URL", &opts.elb_url)
            .env("AWS_REGION", crate::elb::REGION)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", "rig")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", opts.bin.display()))?;
        let mut rg = Self { child, opts };
        rg.wait_ready(Duration::from_secs(30)).await?;
        Ok(rg)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let client = crate::kubelet::reqwest_like::Client;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "readygate exited during start-up ({status}); log:\n{}",
                    self.log_tail(40)
                );
            }
            if client
                .get_ok(self.opts.admin_addr, "/readyz", Duration::from_millis(500))
                .await
                .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "readygate not ready after {timeout:?}; log:\n{}",
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends `signal` (e.g. `TERM`, `KILL`) by PID, as the kubelet does to a container.
    pub fn signal(&self, signal: &str) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(pid.to_string())
                .status();
        }
    }

    /// Waits up to `within` for the process to exit, then kills it.
    pub async fn wait_or_kill(mut self, within: Duration) -> anyhow::Result<()> {
        if tokio::time::timeout(within, self.child.wait())
            .await
            .is_ok()
        {
            return Ok(());
        }
        self.child.kill().await?;
        Ok(())
    }

    /// SIGTERM by PID, then SIGKILL if it has not exited within 30 s (readygate keeps serving
    /// for its shutdown delay first).
    pub async fn stop(self) -> anyhow::Result<()> {
        self.signal("TERM");
        self.wait_or_kill(Duration::from_secs(30)).await
    }

    /// Stops this process and starts a new one with the same options.
    pub async fn restart(self) -> anyhow::Result<Self> {
        let opts = self.opts.clone();
        self.stop().await?;
        Self::start(opts).await
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.opts.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}
