//! Wiring: builds the clients, caches, servers and controller from the CLI and runs them
//! until SIGTERM or Ctrl-C.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::cache::{self, Cache};
use crate::certs;
use crate::cli::{CertsArgs, Command, LogFormat, ServeArgs};
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

pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve(*args).await,
        Command::Certs(args) => write_certs(args),
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
    let webhook_listener = TcpListener::bind(args.webhook.webhook_addr)
        .await
        .with_context(|| format!("binding the webhook on {}", args.webhook.webhook_addr))?;
    let admin_listener = TcpListener::bind(args.admin.admin_addr)
        .await
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
    let mut controller = match args.controller.controller {
        true => tokio::spawn(crate::controller::run(
            client,
            cache.clone(),
            metrics.clone(),
            args.controller.clone(),
            stopped(),
        )),
        false => tokio::spawn(std::future::pending()),
    };
    let admin = axum::serve(
        admin_listener,
        server::admin_router(AdminState {
            cache: cache.clone(),
            metrics: metrics.clone(),
        }),
    )
    .with_graceful_shutdown(stopped());
    let limits = HttpsLimits {
        handshake_timeout: Duration::from_secs(10),
        header_read_timeout: args.webhook.header_read_timeout,
        drain_timeout: Duration::from_secs(20),
    };
    let https = server::serve_https(
        webhook_listener,
        acceptor,
        webhook::router(WebhookState { cache, metrics }, args.webhook.max_body_bytes),
        limits,
        stopped(),
    );
    tracing::info!(webhook = %args.webhook.webhook_addr, admin = %args.admin.admin_addr, "readygate serving");
    let admin = tokio::spawn(async move { admin.await });
    let https = tokio::spawn(https);
    tokio::select! {
        () = shutdown_signal() => {}
        r = &mut controller => {
            // The controller ends on its own only if it fails.
            r.context("status controller panicked")?.context("status controller")?;
        }
    }
    let _ = stop_tx.send(true);
    let _ = https.await;
    let _ = admin.await;
    // The controller steps down (releases its lease) once its queued writes are done.
    if !args.controller.controller {
        controller.abort();
    }
    let _ = controller.await;
    Ok(())
}
