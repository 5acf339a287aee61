//! `rig demo`: the same 3-replica rolling update behind a load balancer three ways — without
//! readiness gates, with gates only, and with readygate's termination handling too — against
//! the real `readygate serve` binary.

use anyhow::Context;
use clap::{Parser, Subcommand};
use rig::demo::{
    Mode, ModeOptions, prestop_sleep_arg, run_mode, side_by_side, summary_line, timeline_table,
};
use rig::rig::RigConfig;
use rig::stage::Stage;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "rig",
    about = "A local cluster and load balancer on loopback that proves readygate's zero-downtime rollouts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the rolling update without gates, with gates only, then with readygate's
    /// termination handling, and prints the report. Exits non-zero if readygate's run lost a
    /// request, or if "gates only" lost none on the termination side (the rig would prove
    /// nothing).
    Demo(DemoArgs),
}

#[derive(clap::Args)]
struct DemoArgs {
    /// The readygate binary (default: $READYGATE_BIN, then the workspace's target/debug/readygate).
    #[arg(long)]
    readygate_bin: Option<PathBuf>,
    /// Where the MutatingWebhookConfiguration is (the project's manifests).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests"))]
    manifests: PathBuf,
    /// Rolling updates per mode.
    #[arg(long, default_value_t = 3)]
    rollouts: usize,
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Requests per second through the load balancer.
    #[arg(long, default_value_t = 50)]
    rate: u32,
    /// Time from a container's start to its server listening, in milliseconds.
    #[arg(long, default_value_t = 200)]
    start_delay_ms: u64,
    /// Where to write the HTML picture of the runs (one self-contained page).
    #[arg(long, default_value = "target/rig-demo.html")]
    html: PathBuf,
    /// Extra arguments for `readygate serve` (repeat), e.g. --readygate-arg=--poll-interval=500ms.
    /// Without a --prestop-sleep among them, the rig's termination window + 1 s is passed.
    #[arg(long = "readygate-arg", allow_hyphen_values = true)]
    readygate_args: Vec<String>,
    /// The AWS Load Balancer Controller's binary (v3.5.0, built by hand outside the
    /// repository): the rig runs it instead of its model of it.
    #[arg(long, env = "RIG_AWS_LBC_BIN")]
    aws_lbc: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let Command::Demo(args) = &cli.command;
    if let Some(bin) = &args.aws_lbc {
        let bin = rig::aws_lbc::check_binary(bin)?;
        // SAFETY: no other thread exists yet. Every rig of the run reads the choice from the
        // environment, as the tests do.
        unsafe { std::env::set_var(rig::aws_lbc::BIN_ENV, bin) };
    }
    // The whole run lives in a private network namespace: enter it before any thread starts,
    // so that the runtime's threads and every process the rig starts inherit it.
    rig::netns::enter()?;
    tokio::runtime::Runtime::new()?.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("installing the rustls crypto provider"))?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let Command::Demo(args) = cli.command;
    let code = demo(args).await?;
    std::process::exit(code);
}

async fn demo(args: DemoArgs) -> anyhow::Result<i32> {
    let bin = rig::readygate::find_binary(args.readygate_bin.as_deref()).context(
        "the readygate binary was not found: build it (cargo build) or pass --readygate-bin",
    )?;
    println!("readygate binary: {}", bin.display());
    let config = RigConfig::default();
    let mut readygate_args = args.readygate_args.clone();
    if !readygate_args
        .iter()
        .any(|a| a.starts_with("--prestop-sleep"))
    {
        readygate_args.push(prestop_sleep_arg(&config));
    }
    let started = std::time::Instant::now();
    let stage = Stage::start(&bin, &args.manifests, &readygate_args).await?;
    let plane = stage.rig.plane;
    println!(
        "control plane: kube-apiserver {} (etcd {}), kube-controller-manager, kube-scheduler; the rig's node agent; \
         readygate installed from {} (up in {:.1} s; logs and audit log in {})",
        plane.version,
        plane.etcd_version,
        args.manifests.display(),
        started.elapsed().as_secs_f64(),
        plane.dir.display()
    );
    let admission_before = rig::k8s::audit::admission_latency(&stage.rig.client).await?;
    println!(
        "rig: API server {}, ELBv2 endpoint {}, load balancer controller: {}, readygate pids {:?} (log {}), readygate serve {}",
        plane.url,
        stage.rig.elb_api.url(),
        stage.rig.lbc.describe(),
        stage.pids().await,
        stage.log_path().display(),
        readygate_args.join(" ")
    );
    let c = &stage.rig.config;
    let options = ModeOptions {
        replicas: args.replicas,
        start_delay: Duration::from_millis(args.start_delay_ms),
        rate: args.rate,
        rollouts: args.rollouts,
        ..ModeOptions::default()
    };
    println!(
        "{} replicas, maxSurge 1, maxUnavailable 0, no preStop hook of their own, grace 30 s; start delay {} ms; \
         health checks every {:?}, healthy after {}; a deleted pod's target is deregistered {:?} after the deletion \
         and the listener keeps sending it new requests for {:?} more; {} requests/s\n",
        options.replicas,
        args.start_delay_ms,
        c.interval,
        c.healthy_threshold,
        c.lbc_reaction,
        c.elb.deregistration_lag,
        options.rate
    );
    let mut reports = Vec::new();
    for mode in Mode::ALL {
        let heading = match mode {
            Mode::NoGates => "without readiness gates (namespace not labelled)",
            Mode::GatesOnly => {
                "gates only (namespace labelled; annotation readygate.io/prestop-sleep=off)"
            }
            Mode::Readygate => {
                "readygate (namespace labelled; preStop sleep and grace injected by the webhook)"
            }
        };
        println!("== {} — {heading} ==", mode.title());
        let report = run_mode(&stage.rig, mode, &options, |r| {
            println!(
                "[{}] {}\n{}",
                mode.title(),
                summary_line(r),
                timeline_table(r)
            )
        })
        .await?;
        reports.push(report);
    }
    let admission = rig::k8s::audit::admission_latency(&stage.rig.client)
        .await?
        .since(&admission_before);
    stage.stop().await?;
    let audit = rig::k8s::audit::requests(&plane.audit_log)?;
    println!(
        "== Kubernetes API requests readygate's ServiceAccount made (the API server's audit log) ==\n{}",
        rig::demo::api_summary(&audit)
    );
    let rbac_path = args.manifests.join("base/rbac.yaml");
    let rbac = rig::k8s::audit::rbac_use(
        &audit,
        &rig::k8s::audit::granted(&std::fs::read_to_string(&rbac_path)?)?,
    );
    println!(
        "== RBAC: what readygate used of what {} grants ==\n{}",
        rbac_path.display(),
        rbac.report()
    );
    let ms = |q: f64| {
        admission
            .quantile(q)
            .map(|s| format!("{:.1} ms", s * 1000.0))
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "== admission latency of readygate's webhook as kube-apiserver measures it ({}) ==\n  {} calls, p50 {}, p99 {} (histogram_quantile over its buckets)\n",
        rig::k8s::audit::ADMISSION_METRIC,
        admission.count,
        ms(0.5),
        ms(0.99)
    );
    println!("== side by side ==\n{}", side_by_side(&reports));
    if let Some(dir) = args.html.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&args.html, rig::html::render(&reports))
        .with_context(|| format!("writing {}", args.html.display()))?;
    println!(
        "picture of the runs: {}",
        std::path::absolute(&args.html)
            .unwrap_or_else(|_| args.html.clone())
            .display()
    );
    let [_, gates_only, full] = &reports[..] else {
        unreachable!("three modes")
    };
    let mut code = 0;
    for m in [gates_only, full] {
        if m.ungated_new_pods() > 0 {
            println!(
                "FAIL: {} new pods in namespace {} got no readiness gate (is the webhook working?)",
                m.ungated_new_pods(),
                m.namespace
            );
            code = 1;
        }
    }
    if !rbac.denied.is_empty() {
        println!("FAIL: the API server denied readygate requests its RBAC should allow");
        code = 1;
    }
    if !full.all_complete() {
        println!(
            "FAIL: a readygate rollout did not complete; readygate log tail:\n{}",
            stage.log_tail(30)
        );
        code = 1;
    }
    if full.failed() > 0 {
        println!("FAIL: readygate's run lost {} requests", full.failed());
        code = 1;
    }
    if gates_only.failed_by_phase().1 == 0 {
        println!(
            "FAIL: \"gates only\" lost no request on the termination side: the rig cannot see that side"
        );
        code = 1;
    }
    if code == 0 {
        println!(
            "OK: readygate's rollouts lost no request ({} sent); gates only lost {} of {} ({} on the termination side); without gates {} of {}",
            full.sent(),
            gates_only.failed(),
            gates_only.sent(),
            gates_only.failed_by_phase().1,
            reports[0].failed(),
            reports[0].sent()
        );
    }
    Ok(code)
}
