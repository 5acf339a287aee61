//! `rig demo`: the same 3-replica rolling update behind a load balancer, without readiness
//! gates and with readygate, against the real `readygate serve` binary.

use anyhow::Context;
use clap::{Parser, Subcommand};
use rig::demo::{ModeOptions, run_mode, side_by_side, summary_line, timeline_table};
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
    /// Runs the rolling update without gates, then with readygate, and prints the report.
    /// Exits non-zero if the gated run lost a request.
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
    /// Extra arguments for `readygate serve` (repeat), e.g. --readygate-arg=--poll-interval=500ms
    #[arg(long = "readygate-arg", allow_hyphen_values = true)]
    readygate_args: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("installing the rustls crypto provider"))?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let Command::Demo(args) = Cli::parse().command;
    let code = demo(args).await?;
    std::process::exit(code);
}

async fn demo(args: DemoArgs) -> anyhow::Result<i32> {
    let bin = rig::readygate::find_binary(args.readygate_bin.as_deref()).context(
        "the readygate binary was not found: build it (cargo build) or pass --readygate-bin",
    )?;
    println!("readygate binary: {}", bin.display());
    let stage = Stage::start(&bin, &args.manifests, &args.readygate_args).await?;
    println!(
        "rig: API server {}, ELBv2 endpoint {}, readygate pid {:?} (log {})",
        stage.rig.api.url(),
        stage.rig.elb_api.url(),
        stage.readygate.lock().await.as_ref().and_then(|r| r.pid()),
        stage.log_path().display()
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
        "{} replicas, maxSurge 1, maxUnavailable 0; start delay {} ms; health checks every {:?}, healthy after {}; \
         the listener keeps routing to a deregistered target for {:?}, covered by a {} s preStop sleep; {} requests/s\n",
        options.replicas,
        args.start_delay_ms,
        c.interval,
        c.healthy_threshold,
        c.elb.deregistration_lag,
        options.pre_stop_secs,
        options.rate
    );
    let print = |title: &str| {
        let title = title.to_string();
        move |r: &rig::demo::RolloutResult| {
            println!("[{title}] {}\n{}", summary_line(r), timeline_table(r))
        }
    };
    println!("== without readiness gates (namespace not labelled) ==");
    let ungated = run_mode(&stage.rig, "no-gates", false, &options, print("no gates")).await?;
    println!(
        "== with readygate (namespace labelled elbv2.k8s.aws/pod-readiness-gate-inject=enabled) =="
    );
    let gated = run_mode(&stage.rig, "readygate", true, &options, print("readygate")).await?;
    stage.stop().await?;
    println!(
        "== Kubernetes API requests the rig received (all from readygate: the rig's own controllers use its store directly) ==\n{}",
        rig::demo::api_summary(&stage.rig.api.requests())
    );
    println!("== side by side ==\n{}", side_by_side(&ungated, &gated));
    let mut code = 0;
    if gated.ungated_new_pods() > 0 {
        println!(
            "FAIL: {} new pods in the labelled namespace got no readiness gate (is the webhook working?)",
            gated.ungated_new_pods()
        );
        code = 1;
    }
    if !gated.all_complete() {
        println!(
            "FAIL: a gated rollout did not complete; readygate log tail:\n{}",
            stage.log_tail(30)
        );
        code = 1;
    }
    if gated.failed() > 0 {
        println!("FAIL: the gated run lost {} requests", gated.failed());
        code = 1;
    }
    if code == 0 {
        println!(
            "OK: readygate's rollouts lost no request ({} sent); without gates {} of {} failed",
            gated.sent(),
            ungated.failed(),
            ungated.sent()
        );
    }
    Ok(code)
}
