//! A plain HTTP client for the ELBv2 Query API (form-encoded POST, XML answer), used to run one
//! call sequence against the rig and against moto.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct QueryClient {
    pub addr: SocketAddr,
}

impl QueryClient {
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr }
    }

    /// Sends `Action` with `Version=2015-12-01` (or `version`) and the parameters; returns the
    /// HTTP status and body. The Authorization header carries a SigV4-shaped credential scope so
    /// that moto routes the call to the right service; neither endpoint checks signatures.
    pub async fn call_service(
        &self,
        service: &str,
        version: &str,
        action: &str,
        params: &[(&str, String)],
    ) -> anyhow::Result<(u16, String)> {
        let body = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("Action", action)
                .append_pair("Version", version);
            for (k, v) in params {
                form.append_pair(k, v);
            }
            form.finish()
        };
        let exchange = async {
            let tcp = tokio::net::TcpStream::connect(self.addr).await?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
            let conn = tokio::spawn(conn);
            let req = hyper::Request::post("/")
                .header("host", self.addr.to_string())
                .header("content-type", "application/x-www-form-urlencoded; charset=utf-8")
                .header(
                    "authorization",
                    format!("AWS4-HMAC-SHA256 Credential=rig/20250101/{}/{service}/aws4_request, SignedHeaders=host, Signature=0", super::REGION),
                )
                .body(Full::new(Bytes::from(body)))?;
            let resp = sender.send_request(req).await?;
            let status = resp.status().as_u16();
            let bytes = resp.into_body().collect().await?.to_bytes();
            conn.abort();
            anyhow::Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
        };
        tokio::time::timeout(Duration::from_secs(10), exchange).await?
    }

    pub async fn call(
        &self,
        action: &str,
        params: &[(&str, String)],
    ) -> anyhow::Result<(u16, String)> {
        self.call_service("elasticloadbalancing", "2015-12-01", action, params)
            .await
    }

    pub async fn answer(
        &self,
        action: &str,
        params: &[(&str, String)],
    ) -> anyhow::Result<super::xml::Answer> {
        let (status, body) = self.call(action, params).await?;
        super::xml::parse_answer(status, &body).map_err(|e| anyhow::anyhow!("{e}: {body}"))
    }
}

/// `Targets.member.N.Id` / `.Port` parameters.
pub fn targets_params(targets: &[(&str, u16)]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, (id, port)) in targets.iter().enumerate() {
        out.push((format!("Targets.member.{}.Id", i + 1), id.to_string()));
        out.push((format!("Targets.member.{}.Port", i + 1), port.to_string()));
    }
    out
}
