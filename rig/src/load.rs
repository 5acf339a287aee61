//! A load generator: requests at a steady rate through the listener for the whole rollout,
//! each one recorded with its time, outcome and the pod that answered.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Sample {
    /// When the request was sent.
    pub at: Instant,
    pub latency: Duration,
    /// The HTTP status, or the transport error.
    pub outcome: Result<u16, String>,
    pub pod: Option<String>,
    /// The target (`ip:port`) the load balancer sent the request to, when it picked one.
    pub target: Option<String>,
}

impl Sample {
    pub fn ok(&self) -> bool {
        matches!(self.outcome, Ok(s) if (200..300).contains(&s))
    }
}

pub struct Load {
    samples: Arc<Mutex<Vec<Sample>>>,
    task: tokio::task::JoinHandle<()>,
    pub started: Instant,
}

impl Load {
    /// Starts sending `GET /` to `addr` at `rate` requests per second, at most for `max` (a
    /// bound in case the caller never stops it).
    pub fn start(addr: SocketAddr, rate: u32, max: Duration) -> Self {
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let s2 = samples.clone();
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let mut ticker =
                tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut inflight = tokio::task::JoinSet::new();
            while started.elapsed() < max {
                ticker.tick().await;
                let s = s2.clone();
                inflight.spawn(async move {
                    let at = Instant::now();
                    let outcome = get(addr).await;
                    let latency = at.elapsed();
                    let (outcome, pod, target) = match outcome {
                        Ok(Answer {
                            status,
                            pod,
                            target,
                        }) => (Ok(status), pod, target),
                        Err(e) => (Err(e), None, None),
                    };
                    s.lock().expect("samples lock").push(Sample {
                        at,
                        latency,
                        outcome,
                        pod,
                        target,
                    });
                });
                while inflight.try_join_next().is_some() {}
            }
        });
        Self {
            samples,
            task,
            started,
        }
    }

    /// Stops sending, waits for requests in flight (bounded), and returns every sample in
    /// send order.
    pub async fn stop(self) -> Vec<Sample> {
        self.task.abort();
        let _ = self.task.await;
        // Requests in flight finish within their own timeout.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut samples = self.samples.lock().expect("samples lock").clone();
        samples.sort_by_key(|s| s.at);
        samples
    }
}

struct Answer {
    status: u16,
    pod: Option<String>,
    target: Option<String>,
}

async fn get(addr: SocketAddr) -> Result<Answer, String> {
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .map_err(|e| e.to_string())?;
        let conn = tokio::spawn(conn);
        let req = hyper::Request::get("/")
            .header("host", "web")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        };
        let (pod, target) = (header("x-pod"), header(crate::elb::listener::TARGET_HEADER));
        resp.into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        conn.abort();
        Ok(Answer {
            status,
            pod,
            target,
        })
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| "timeout".to_string())?
}
