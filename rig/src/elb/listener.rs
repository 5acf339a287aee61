//! An ALB-like listener on loopback: each new request goes to a target the load balancer
//! routes to (see `Elb::pick`), over a fresh connection; 503 when nothing is routable, 502
//! when the target refuses or resets. Every answer that went to a target names it in
//! `x-rig-target` (the rig's instrumentation, not an ALB header), so a failure can be traced
//! to the pod behind it.

use super::{Elb, Pick};
use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The header naming the target (`ip:port`) a request went to.
pub const TARGET_HEADER: &str = "x-rig-target";

pub struct Listener {
    pub addr: SocketAddr,
    pub load_balancer_arn: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct State {
    elb: Arc<Elb>,
    arn: String,
}

impl Listener {
    /// Starts a load balancer named `name` whose listener forwards to the target group `arn`.
    pub async fn start(
        elb: Arc<Elb>,
        name: &str,
        arn: &str,
        addr: SocketAddr,
    ) -> anyhow::Result<Self> {
        let lb_arn = format!(
            "arn:aws:elasticloadbalancing:{}:{}:loadbalancer/app/{name}/{:016x}",
            super::REGION,
            super::ACCOUNT,
            rand::random::<u64>()
        );
        elb.attach(arn, &lb_arn)?;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = State {
            elb,
            arn: arn.to_string(),
        };
        let app = axum::Router::new().fallback(forward).with_state(state);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            addr,
            load_balancer_arn: lb_arn,
            task,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Body::from(text.to_string()))
        .expect("response")
}

async fn forward(
    axum::extract::State(state): axum::extract::State<State>,
    req: Request<Body>,
) -> Response<Body> {
    let target = match state.elb.pick(&state.arn) {
        Pick::Target(t) => t,
        Pick::Nothing => {
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "503 Service Temporarily Unavailable\n",
            );
        }
    };
    let (parts, body) = req.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return plain(StatusCode::BAD_REQUEST, "bad request body\n");
    };
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(target).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
        let conn = tokio::spawn(conn);
        let mut out = Request::builder().method(parts.method.clone()).uri(
            parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/"),
        );
        for (k, v) in &parts.headers {
            if k != "connection" {
                out = out.header(k, v);
            }
        }
        let out = out
            .header("x-forwarded-for", "127.0.0.1")
            .body(http_body_util::Full::new(body))?;
        let resp = sender.send_request(out).await?;
        let (rparts, rbody) = resp.into_parts();
        let bytes = rbody.collect().await?.to_bytes();
        conn.abort();
        anyhow::Ok(Response::from_parts(rparts, Body::from(bytes)))
    };
    // When the target's deregistration delay ends, the load balancer closes the connections
    // it still has to it.
    let mut events = state.elb.events();
    let (arn, ip, port) = (state.arn.clone(), target.ip().to_string(), target.port());
    let target_removed = async move {
        loop {
            match events.recv().await {
                Ok(e)
                    if e.kind == super::TargetEventKind::Removed
                        && e.arn == arn
                        && e.id == ip
                        && e.port == port =>
                {
                    return;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    std::future::pending::<()>().await
                }
                _ => {}
            }
        }
    };
    let exchange = async {
        tokio::select! {
            r = exchange => Some(r),
            _ = target_removed => None,
        }
    };
    let mut resp = match tokio::time::timeout(Duration::from_secs(10), exchange).await {
        Ok(Some(Ok(resp))) => resp,
        Ok(Some(Err(_)) | None) => plain(StatusCode::BAD_GATEWAY, "502 Bad Gateway\n"),
        Err(_) => plain(StatusCode::GATEWAY_TIMEOUT, "504 Gateway Time-out\n"),
    };
    if let Ok(v) = axum::http::HeaderValue::from_str(&target.to_string()) {
        resp.headers_mut().insert(TARGET_HEADER, v);
    }
    resp
}
