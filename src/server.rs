//! The two listeners: HTTPS for admission, plain HTTP for health and metrics.

use std::future::Future;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
pub use socket2::Socket;
use socket2::{Domain, Protocol, Type};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::cache::Cache;
use crate::gates_view::GatesBoard;
use crate::metrics::Metrics;

/// A listener on `addr` (the socket of `listen_socket`).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = listen_socket(addr)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// The unbound socket `bind` uses for `addr`. On an IPv6 wildcard (`[::]`) it takes IPv4
/// connections too: IPV6_V6ONLY is turned off explicitly, since its default comes from the host
/// (`net.ipv6.bindv6only`). (Linux turns it back on for a specific IPv6 address such as `[::1]`.)
pub fn listen_socket(addr: SocketAddr) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    // As tokio's own bind: a restarted replica can take its port back at once.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Limits of the HTTPS listener.
#[derive(Clone, Copy, Debug)]
pub struct HttpsLimits {
    /// Time a connection has to finish its TLS handshake.
    pub handshake_timeout: Duration,
    /// Time a client has to send a request's headers, so idle scanners cannot pile up.
    pub header_read_timeout: Duration,
    /// Time in-flight requests get to finish at shutdown.
    pub drain_timeout: Duration,
}

/// Serves `router` over TLS on `listener` until `shutdown` resolves, then drains.
pub async fn serve_https(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    limits: HttpsLimits,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        // Each connection is registered with the drain before its handshake.
        let (acceptor, router, http, watcher) = (
            acceptor.clone(),
            router.clone(),
            http.clone(),
            graceful.watcher(),
        );
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                };
            let conn = http.serve_connection(TokioIo::new(tls), TowerToHyperService::new(router));
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain timeout");
    }
}

#[derive(Clone)]
pub struct AdminState {
    pub cache: Arc<Cache>,
    pub metrics: Arc<Metrics>,
    /// Set when shutdown starts: `/readyz` fails from then on.
    pub shutting_down: Arc<AtomicBool>,
    /// The status controller's view of its pending gates (`/debug/gates`).
    pub gates: GatesBoard,
}

/// Both listeners, and how this replica leaves the webhook Service's endpoints.
pub struct Servers {
    pub webhook: TcpListener,
    pub acceptor: TlsAcceptor,
    pub router: Router,
    pub limits: HttpsLimits,
    pub admin: TcpListener,
    pub admin_state: AdminState,
    /// How long the webhook keeps serving after shutdown starts.
    pub shutdown_delay: Duration,
}

impl Servers {
    /// Serves until `signal` resolves, then shuts down in the order the API server needs: it
    /// keeps calling this replica until the endpoint removal has reached it, and with
    /// `failurePolicy: Ignore` a refused call is a pod created without its gates. So `/readyz`
    /// fails at once, the webhook keeps accepting new connections and requests for
    /// `shutdown_delay`, then stops accepting and drains (bounded by the drain timeout); the
    /// admin endpoints stay up to the end, so `/healthz` never fails while this happens.
    pub async fn run(self, signal: impl Future<Output = ()>) {
        let Servers {
            webhook,
            acceptor,
            router,
            limits,
            admin,
            admin_state,
            shutdown_delay,
        } = self;
        let shutting_down = admin_state.shutting_down.clone();
        let (webhook_done, admin_stop) = tokio::sync::oneshot::channel::<()>();
        let admin = axum::serve(admin, admin_router(admin_state)).with_graceful_shutdown(async {
            let _ = admin_stop.await;
        });
        let admin = tokio::spawn(admin.into_future());
        let stop_accepting = async move {
            signal.await;
            shutting_down.store(true, Ordering::SeqCst);
            tracing::info!(
                delay = ?shutdown_delay,
                "shutting down: /readyz fails; the webhook serves until its endpoint is gone"
            );
            tokio::time::sleep(shutdown_delay).await;
            tracing::info!("webhook stops accepting connections and drains");
        };
        serve_https(webhook, acceptor, router, limits, stop_accepting).await;
        let _ = webhook_done.send(());
        if let Ok(Err(e)) = admin.await {
            tracing::warn!(error = %e, "admin server failed");
        }
    }
}

/// `/healthz` (the process answers), `/readyz` (the webhook's caches synced), `/metrics`, `/debug/gates`
/// (the leader's pending gates, for `readygate status`).
pub fn admin_router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/debug/gates", get(debug_gates))
        .with_state(state)
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.shutting_down.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down (the webhook still answers until this endpoint is gone, then drains)\n".to_string(),
        );
    }
    let ix = state.cache.read();
    let s = ix.synced();
    // The webhook needs bindings, Services and Namespaces. Pods are the leading controller's
    // alone (it waits for them itself): named while listed, never waited for.
    let mut missing = Vec::new();
    for (synced, kind) in [
        (s.bindings, "targetgroupbindings"),
        (s.services, "services"),
        (s.pods, "pods"),
        (s.namespaces, "namespaces"),
    ] {
        if !synced {
            missing.push(kind);
        }
    }
    if !(s.bindings && s.services && s.namespaces) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: caches not synced: {}{}\n",
                missing.join(", "),
                match s.pods {
                    true => "",
                    false =>
                        " (pods are listed only by the leading controller; readiness does not wait for them)",
                }
            ),
        );
    }
    if ix.bindings_crd_missing {
        return (
            StatusCode::OK,
            "ready; WARNING: the TargetGroupBinding CRD (targetgroupbindings.elbv2.k8s.aws) is not installed, no readiness gates will be injected\n".to_string(),
        );
    }
    if let Some(note) = &ix.bindings_warning {
        return (StatusCode::OK, format!("ready; WARNING: {note}\n"));
    }
    (StatusCode::OK, "ready\n".to_string())
}

/// How long `/debug/gates` waits for the controller loop's fresh view before serving its last.
const FRESH_VIEW_WAIT: Duration = Duration::from_secs(1);

async fn debug_gates(State(state): State<AdminState>) -> impl IntoResponse {
    axum::Json(state.gates.fresh(FRESH_VIEW_WAIT).await)
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let pods = state.cache.read().counts().2;
    state.metrics.cached_pods.set(pods as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get(state: AdminState, path: &str) -> (StatusCode, String) {
        let res = admin_router(state)
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn readyz_waits_for_the_webhooks_caches_not_for_pods() {
        let state = AdminState {
            cache: Arc::new(Cache::default()),
            metrics: Arc::new(Metrics::new()),
            shutting_down: Arc::default(),
            gates: GatesBoard::default(),
        };
        {
            let mut ix = state.cache.write();
            ix.replace_bindings(vec![]);
            ix.replace_services(vec![]);
        }
        let (status, body) = get(state.clone(), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("pods, namespaces"), "{body}");
        // A webhook-only replica or a follower never lists pods: ready all the same.
        state.cache.write().replace_namespaces(vec![]);
        assert_eq!(
            get(state.clone(), "/readyz").await,
            (StatusCode::OK, "ready\n".into())
        );
        // The leader's pods, counted when scraped.
        let pod = crate::domain::Pod::default();
        state.cache.write().apply_pod("shop", "a", pod);
        let (_, body) = get(state, "/metrics").await;
        assert!(body.contains("readygate_cached_pods 1"), "{body}");
    }

    #[tokio::test]
    async fn readyz_follows_the_caches_and_names_a_missing_crd() {
        let state = AdminState {
            cache: Arc::new(Cache::default()),
            metrics: Arc::new(Metrics::new()),
            shutting_down: Arc::default(),
            gates: GatesBoard::default(),
        };
        assert_eq!(get(state.clone(), "/healthz").await.0, StatusCode::OK);
        let (status, body) = get(state.clone(), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            body.contains("targetgroupbindings, services, pods, namespaces"),
            "{body}"
        );
        {
            let mut ix = state.cache.write();
            ix.replace_services(vec![]);
            ix.replace_pods(vec![]);
            ix.replace_namespaces(vec![]);
            ix.bindings_crd_missing = true;
            ix.mark_synced(crate::index::Kind::Binding);
        }
        let (status, body) = get(state.clone(), "/readyz").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains("TargetGroupBinding CRD") && body.contains("not installed"),
            "{body}"
        );
        // The controller's view, as published.
        let (status, body) = get(state.clone(), "/debug/gates").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            serde_json::from_str::<crate::gates_view::GatesView>(&body).unwrap(),
            crate::gates_view::GatesView::default()
        );
        state.gates.publish(crate::gates_view::GatesView {
            controller: true,
            leader: true,
            ..Default::default()
        });
        let (_, body) = get(state.clone(), "/debug/gates").await;
        assert!(body.contains("\"leader\":true"), "{body}");
        state.cache.write().bindings_crd_missing = false;
        assert_eq!(get(state.clone(), "/readyz").await.1, "ready\n");
        // Shutting down: not ready whatever the caches say; alive still.
        state.shutting_down.store(true, Ordering::SeqCst);
        let (status, body) = get(state.clone(), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("shutting down"), "{body}");
        assert_eq!(get(state.clone(), "/healthz").await.0, StatusCode::OK);
        let (status, body) = get(state, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains("# TYPE readygate_admission_duration_seconds histogram")
                && body.ends_with("# EOF\n"),
            "{body}"
        );
    }
}
