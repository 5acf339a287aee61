//! Command-line interface. Every flag of `serve` can also be set through its environment
//! variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::termination::PrestopSleep;

#[derive(Debug, Parser)]
#[command(
    name = "readygate",
    version,
    about = "ELBv2 target-health readiness gates for Kubernetes pods"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format.
    #[arg(long, global = true, env = "READYGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Subcommand)]
// Parsed once at start; boxing the flags would only add noise at every use.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run the admission webhook (every replica) and the status controller (leader only).
    Serve(Box<ServeArgs>),
    /// Generate a CA and a serving certificate for the webhook Service.
    Certs(CertsArgs),
    /// Show gated pods and their gates (stuck first), or explain one pod; uses the kube context
    /// as kubectl does.
    Status(StatusArgs),
    /// Check the installation against the kube context; exits 1 on any problem.
    Doctor(DoctorArgs),
}

/// The name the binary answers to: as a kubectl plugin (`kubectl-readygate` on the PATH, run
/// as `kubectl readygate`) its usage says so; it behaves the same either way.
pub fn bin_name(argv0: &std::ffi::OsStr) -> &'static str {
    let file = std::path::Path::new(argv0)
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or_default();
    if file == "kubectl-readygate" {
        "kubectl readygate"
    } else {
        "readygate"
    }
}

/// Parses `args` (argv[0] first) under the name argv[0] calls for.
pub fn parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::{CommandFactory, FromArgMatches};
    let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    let name = bin_name(args.first().map(|a| a.as_os_str()).unwrap_or_default());
    let matches = Cli::command().bin_name(name).try_get_matches_from(args)?;
    Cli::from_arg_matches(&matches)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// Where readygate is installed, and how to reach its leader.
#[derive(Clone, Debug, Args)]
pub struct InstallArgs {
    /// Namespace of readygate's Lease (its own namespace).
    #[arg(long, default_value = "readygate-system")]
    pub lease_namespace: String,
    /// Name of readygate's Lease.
    #[arg(long, default_value = "readygate")]
    pub lease_name: String,
    /// The leader's admin server (e.g. http://127.0.0.1:8080 after a port-forward); by default
    /// it is reached through the API server's pod proxy, from the Lease's holder.
    #[arg(long)]
    pub controller_url: Option<String>,
}

#[derive(Clone, Debug, Args)]
pub struct StatusArgs {
    /// Only this pod, explained in sentences.
    pub pod: Option<String>,
    /// Namespace (default: the kube context's).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long, conflicts_with_all = ["namespace", "pod"])]
    pub all_namespaces: bool,
    /// Label selector of the pods, as kubectl's (`app=web,tier!=db`).
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    #[command(flatten)]
    pub install: InstallArgs,
}

#[derive(Clone, Debug, Args)]
pub struct DoctorArgs {
    /// Name of readygate's MutatingWebhookConfiguration.
    #[arg(long, default_value = "readygate")]
    pub webhook_configuration: String,
    /// Probe the webhook's TLS at this address (https://HOST:PORT) instead of the Service's
    /// endpoint addresses, e.g. when those are not reachable from here.
    #[arg(long)]
    pub webhook_url: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    #[command(flatten)]
    pub install: InstallArgs,
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 2s, 5m)"))
}

fn prestop_sleep(s: &str) -> Result<PrestopSleep, String> {
    s.parse()
        .map_err(|e| format!("{e} (examples: 5s, 15s, off)"))
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub webhook: WebhookArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(flatten)]
    pub controller: ControllerArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
}

#[derive(Clone, Debug, Args)]
pub struct WebhookArgs {
    /// HTTPS address of the admission webhook (POST /mutate-v1-pod). `[::]` listens on IPv6 and
    /// IPv4 (EKS IPv6 clusters reach pods over IPv6 only).
    #[arg(long, env = "READYGATE_WEBHOOK_ADDR", default_value = "[::]:9443")]
    pub webhook_addr: SocketAddr,
    /// PEM certificate chain served by the webhook.
    #[arg(long, env = "READYGATE_TLS_CERT", default_value = "/tls/tls.crt")]
    pub tls_cert: PathBuf,
    /// PEM private key of the certificate.
    #[arg(long, env = "READYGATE_TLS_KEY", default_value = "/tls/tls.key")]
    pub tls_key: PathBuf,
    /// How often the certificate files are checked for rotation.
    #[arg(long, env = "READYGATE_TLS_RELOAD_INTERVAL", default_value = "5s", value_parser = duration)]
    pub tls_reload_interval: Duration,
    /// Time a client has to send a request's headers, also between requests on a kept-alive
    /// connection. Keep it above the API server's idle-connection timeout (90 s): closing an
    /// idle connection races with the API server reusing it, and a lost admission call means a
    /// pod without its gate.
    #[arg(long, env = "READYGATE_HEADER_READ_TIMEOUT", default_value = "120s", value_parser = duration)]
    pub header_read_timeout: Duration,
    /// How long the webhook keeps serving after SIGTERM, with /readyz failing, before it stops
    /// accepting connections: the API server keeps calling a terminating replica until the
    /// endpoint removal has reached it (a refused call creates the pod without its gates).
    #[arg(long, env = "READYGATE_SHUTDOWN_DELAY", default_value = "10s", value_parser = duration)]
    pub shutdown_delay: Duration,
    /// Time requests in flight get to finish once the webhook stops accepting connections.
    #[arg(long, env = "READYGATE_DRAIN_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub drain_timeout: Duration,
    /// Largest AdmissionReview body accepted, in bytes.
    #[arg(long, env = "READYGATE_MAX_BODY_BYTES", default_value_t = 3 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// preStop sleep injected into pods that get a readiness gate, so a terminating pod keeps
    /// serving while the load balancer deregisters it: every regular container without a
    /// preStop hook of its own gets `lifecycle.preStop.sleep`, and terminationGracePeriodSeconds
    /// grows by the same time (whole seconds, rounded up; at most 1h; `off` or 0s for none).
    /// The annotation readygate.io/prestop-sleep on the namespace, then on the pod, overrides
    /// it. Needs Kubernetes 1.30 or later (the sleep action, PodLifecycleSleepAction, is beta
    /// and on by default since 1.30): leave it off on older clusters.
    #[arg(long, env = "READYGATE_PRESTOP_SLEEP", default_value = "off", value_parser = prestop_sleep)]
    pub prestop_sleep: PrestopSleep,
}

#[derive(Clone, Debug, Args)]
pub struct AdminArgs {
    /// Plain-HTTP address for /healthz, /readyz and /metrics (`[::]`: IPv6 and IPv4).
    #[arg(long, env = "READYGATE_ADMIN_ADDR", default_value = "[::]:8080")]
    pub admin_addr: SocketAddr,
}

#[derive(Clone, Debug, Args)]
pub struct ControllerArgs {
    /// Run the status controller (leader-elected). With false, this replica only serves the webhook.
    #[arg(long, env = "READYGATE_CONTROLLER", default_value_t = true, action = clap::ArgAction::Set)]
    pub controller: bool,
    /// Interval between polls of a target group once its targets can be healthy.
    #[arg(long, env = "READYGATE_POLL_INTERVAL", default_value = "2s", value_parser = duration)]
    pub poll_interval: Duration,
    /// Interval between polls inside the windows where a target is likely to turn healthy
    /// (right after its earliest possible moment, and threshold − 1 check intervals after its
    /// health checks were seen to start), so the gate follows ELB closely.
    #[arg(long, env = "READYGATE_FAST_POLL_INTERVAL", default_value = "500ms", value_parser = duration)]
    pub fast_poll_interval: Duration,
    /// Cap of the poll interval of a group whose answers stay the same (targets that stay
    /// unhealthy): each poll that changes nothing doubles the interval up to this; a changed
    /// answer or a new pending target brings it back.
    #[arg(long, env = "READYGATE_MAX_POLL_INTERVAL", default_value = "30s", value_parser = duration)]
    pub max_poll_interval: Duration,
    /// How long a group's health-check settings (interval, healthy threshold, load balancers)
    /// are used before they are read again; an answer they cannot explain re-reads them sooner.
    #[arg(long, env = "READYGATE_SETTINGS_TTL", default_value = "5m", value_parser = duration)]
    pub settings_ttl: Duration,
    /// ELBv2 calls per second this process makes at most, averaged (AWS's Describe* bucket
    /// refills at 10/s for the whole account).
    #[arg(long, env = "READYGATE_ELBV2_RATE", default_value_t = 5.0)]
    pub elbv2_rate: f64,
    /// ELBv2 calls that may go at once before the rate applies.
    #[arg(long, env = "READYGATE_ELBV2_BURST", default_value_t = 10)]
    pub elbv2_burst: u32,
    /// Bound on one ELBv2 call (connect, attempt and operation); a call that times out is
    /// counted, and its target group backs off and is polled again.
    #[arg(long, env = "READYGATE_ELBV2_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub elbv2_timeout: Duration,
    /// Count `unused` targets with reason Target.NotInUse as ready when their target group is
    /// attached to no load balancer (no traffic waits on them). In an attached group that state
    /// means an Availability Zone the load balancer does not enable: never ready.
    #[arg(long, env = "READYGATE_UNUSED_IS_READY", default_value_t = true, action = clap::ArgAction::Set)]
    pub unused_is_ready: bool,
    /// Count `unavailable` targets with reason Target.HealthCheckDisabled as ready.
    #[arg(long, env = "READYGATE_UNAVAILABLE_IS_READY", default_value_t = true, action = clap::ArgAction::Set)]
    pub unavailable_is_ready: bool,
    /// Release a gate this long after pod creation whatever the load balancer says (off when unset).
    #[arg(long, env = "READYGATE_FAILSAFE_TIMEOUT", value_parser = duration)]
    pub failsafe_timeout: Option<Duration>,
    /// Name of the coordination.k8s.io Lease used for leader election.
    #[arg(long, env = "READYGATE_LEASE_NAME", default_value = "readygate")]
    pub lease_name: String,
    /// Namespace of the Lease (defaults to $POD_NAMESPACE, else readygate-system).
    #[arg(long, env = "READYGATE_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// This replica's identity in the Lease (defaults to $POD_NAME, else the host name).
    #[arg(long, env = "READYGATE_IDENTITY")]
    pub identity: Option<String>,
    /// Time allowed for one pod status PATCH.
    #[arg(long, env = "READYGATE_WRITE_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub write_timeout: Duration,
}

#[derive(Clone, Debug, Args)]
pub struct CacheArgs {
    /// How long the TargetGroupBinding CRD must be confirmed absent by discovery, while its
    /// list/watch answers 404, before the known bindings are dropped (their pending gates are
    /// then released). A 404 alone, as during an API server restart, never drops them.
    #[arg(long, env = "READYGATE_CRD_MISSING_GRACE", default_value = "2m", value_parser = duration)]
    pub crd_missing_grace: Duration,
}

#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Name of the webhook Service.
    #[arg(long, default_value = "readygate-webhook")]
    pub service: String,
    /// Namespace of the webhook Service.
    #[arg(long, default_value = "readygate-system")]
    pub namespace: String,
    /// Directory to write ca.crt, tls.crt and tls.key into.
    #[arg(long)]
    pub out: PathBuf,
    /// Extra subject alternative names (DNS names or IP addresses).
    #[arg(long = "extra-san")]
    pub extra_sans: Vec<String>,
    /// Validity of the serving certificate, in days.
    #[arg(long, default_value_t = 365)]
    pub days: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent_and_defaults_hold() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["readygate", "serve"]).unwrap();
        let Command::Serve(s) = cli.command else {
            panic!()
        };
        assert_eq!(s.webhook.webhook_addr, "[::]:9443".parse().unwrap());
        assert_eq!(s.admin.admin_addr, "[::]:8080".parse().unwrap());
        assert_eq!(s.controller.poll_interval, Duration::from_secs(2));
        // Longer than endpoint propagation to the API server.
        assert!(s.webhook.shutdown_delay >= Duration::from_secs(5));
        assert!(s.controller.unused_is_ready && s.controller.failsafe_timeout.is_none());
        assert_eq!(s.cache.crd_missing_grace, Duration::from_secs(120));
        let cli = Cli::try_parse_from([
            "readygate",
            "serve",
            "--failsafe-timeout",
            "10m",
            "--unused-is-ready",
            "false",
        ])
        .unwrap();
        let Command::Serve(s) = cli.command else {
            panic!()
        };
        assert_eq!(
            s.controller.failsafe_timeout,
            Some(Duration::from_secs(600))
        );
        assert!(!s.controller.unused_is_ready);
        assert!(Cli::try_parse_from(["readygate", "serve", "--poll-interval", "soon"]).is_err());
    }

    #[test]
    fn the_binary_answers_as_a_kubectl_plugin() {
        assert_eq!(
            bin_name(std::ffi::OsStr::new("/usr/local/bin/kubectl-readygate")),
            "kubectl readygate"
        );
        assert_eq!(bin_name(std::ffi::OsStr::new("./readygate")), "readygate");
        let cli = parse_from([
            "/usr/local/bin/kubectl-readygate",
            "status",
            "-A",
            "-o",
            "json",
        ])
        .unwrap();
        let Command::Status(s) = cli.command else {
            panic!("not status")
        };
        assert!(s.all_namespaces && s.output == Output::Json);
        let err = parse_from(["kubectl-readygate", "status", "--bogus"]).unwrap_err();
        assert!(
            err.to_string().contains("kubectl readygate status"),
            "{err}"
        );
        let cli = parse_from([
            "readygate",
            "doctor",
            "--webhook-url",
            "https://127.0.0.1:9443",
        ])
        .unwrap();
        let Command::Doctor(d) = cli.command else {
            panic!("not doctor")
        };
        assert_eq!(d.webhook_configuration, "readygate");
        assert_eq!(d.install.lease_namespace, "readygate-system");
        // -A lists everything: a namespace or a pod with it is a mistake.
        assert!(parse_from(["readygate", "status", "-A", "-n", "shop"]).is_err());
    }

    fn serve(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        let cli = Cli::try_parse_from(["readygate", "serve"].iter().chain(args))?;
        let Command::Serve(s) = cli.command else {
            panic!("not serve")
        };
        Ok(*s)
    }

    #[test]
    fn prestop_sleep_flag_is_off_by_default_and_parses_durations() {
        assert_eq!(serve(&[]).unwrap().webhook.prestop_sleep, PrestopSleep::Off);
        assert_eq!(
            serve(&["--prestop-sleep", "5s"])
                .unwrap()
                .webhook
                .prestop_sleep
                .seconds()
                .map(|s| s.get()),
            Some(5)
        );
        assert_eq!(
            serve(&["--prestop-sleep", "off"])
                .unwrap()
                .webhook
                .prestop_sleep,
            PrestopSleep::Off
        );
        for garbage in ["soon", "5", "2h"] {
            let err = serve(&["--prestop-sleep", garbage]).unwrap_err();
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{garbage}"
            );
            assert!(err.to_string().contains("examples: 5s"), "{err}");
        }
        // Users on older clusters learn from --help that the sleep action needs 1.30.
        let help = Cli::command()
            .find_subcommand_mut("serve")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(help.contains("Needs Kubernetes 1.30 or later"), "{help}");
    }
}
