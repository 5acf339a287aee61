//! Wiring: builds the clients, caches, servers and controller from the CLI and runs them
//! until SIGTERM or Ctrl-C.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_rustls::TlsAcceptor;

use crate::cache::{self, Cache};
use crate::certs;
use crate::cli::{CertsArgs, Command, LogFormat, ServeArgs};
use crate::gates_view::GatesBoard;
use crate::metrics::Metrics;
use crate::server::{self, AdminState, HttpsLimits};
use crate::tls::{self, KeyPairPaths, ReloadingResolver};
use crate::webhook::{self, WebhookState};

pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,kube=warn,aws=warn,hyper=warn")
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Logging for the operator commands: warnings only, to stderr, so stdout stays the output.
pub fn init_cli_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,kube=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Runs a command; returns the process's exit code.
pub async fn run(command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Serve(args) => serve(*args).await.map(|()| 0),
        Command::Certs(args) => write_certs(args).map(|()| 0),
        Command::Status(args) => crate::operate::status(args).await.map(|()| 0),
        Command::Doctor(args) => crate::operate::doctor(args).await,
    }
}

fn write_certs(args: CertsArgs) -> anyhow::Result<()> {
    let mut names = certs::service_dns_names(&args.service, &args.namespace);
    names.extend(args.extra_sans);
    let bundle = certs::generate(names, args.days).context("generating certificates")?;
    certs::write(&bundle, &args.out)
        .with_context(|| format!("writing certificates to {}", args.out.display()))?;
    eprintln!(
        "wrote {0}/ca.crt, {0}/tls.crt and {0}/tls.key; caBundle for the webhook configuration:",
        args.out.display()
    );
    println!("{}", bundle.ca_bundle());
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let cache = Arc::new(Cache::default());

    // TLS is validated at bind: a missing or bad key pair is a start-up error.
    let resolver = Arc::new(
        ReloadingResolver::load(KeyPairPaths {
            cert: args.webhook.tls_cert.clone(),
            key: args.webhook.tls_key.clone(),
        })
        .context("loading the webhook's TLS certificate")?,
    );
    let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(resolver.clone())?));
    let webhook_listener = server::bind(args.webhook.webhook_addr)
        .with_context(|| format!("binding the webhook on {}", args.webhook.webhook_addr))?;
    let admin_listener = server::bind(args.admin.admin_addr)
        .with_context(|| format!("binding the admin server on {}", args.admin.admin_addr))?;

    let client = kube::Client::try_default()
        .await
        .context("building the Kubernetes client")?;
    cache::spawn_watchers(
        client.clone(),
        cache.clone(),
        metrics.clone(),
        args.cache.crd_missing_grace,
    );
    tokio::spawn(resolver.watch(args.webhook.tls_reload_interval, metrics.clone()));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let gates = GatesBoard::default();
    let mut controller = match args.controller.controller {
        true => tokio::spawn(crate::controller::run(
            client,
            cache.clone(),
            metrics.clone(),
            args.controller.clone(),
            gates.clone(),
            stopped(),
        )),
        false => tokio::spawn(std::future::pending()),
    };
    let limits = HttpsLimits {
        handshake_timeout: Duration::from_secs(10),
        header_read_timeout: args.webhook.header_read_timeout,
        drain_timeout: args.webhook.drain_timeout,
    };
    let servers = server::Servers {
        webhook: webhook_listener,
        acceptor,
        router: webhook::router(
            WebhookState {
                cache: cache.clone(),
                metrics: metrics.clone(),
                prestop_sleep: args.webhook.prestop_sleep,
            },
            args.webhook.max_body_bytes,
        ),
        limits,
        admin: admin_listener,
        admin_state: AdminState {
            cache,
            metrics,
            shutting_down: Arc::default(),
            gates,
        },
        shutdown_delay: args.webhook.shutdown_delay,
    };
    tracing::info!(webhook = %args.webhook.webhook_addr, admin = %args.admin.admin_addr, "readygate serving");
    let servers = tokio::spawn(servers.run(stopped()));
    tokio::select! {
        () = shutdown_signal() => {}
        r = &mut controller => {
            // The controller ends on its own only if it fails.
            r.context("status controller panicked")?.context("status controller")?;
        }
    }
    // The controller steps down at once (its lease goes to another replica once its queued
    // writes are done), while the webhook keeps serving for the shutdown delay.
    let _ = stop_tx.send(true);
    if !args.controller.controller {
        controller.abort();
    }
    let _ = controller.await;
    let _ = servers.await;
    Ok(())
}
