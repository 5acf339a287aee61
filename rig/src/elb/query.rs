//! The ELBv2 Query API endpoint (what `AWS_ENDPOINT_URL` points readygate's SDK at): form
//! parameters in, XML out, in the shapes aws-sdk-elasticloadbalancingv2 deserialises. Calls of
//! EC2's Query API (`Version=2016-11-15`) on the same endpoint go to [`super::ec2`]. Every call
//! is counted by its caller, the access key of its SigV4 `Authorization` header.

use super::xml::escape;
use super::{Elb, ElbError, GroupSpec, TargetHealth};
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

const NS: &str = "http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/";

/// A running Query API server; stops when dropped.
pub struct QueryServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for QueryServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl QueryServer {
    pub async fn start(elb: Arc<Elb>, addr: SocketAddr) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new().fallback(handle).with_state(elb);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn request_id() -> String {
    crate::time::uuid()
}

fn xml(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/xml")], body).into_response()
}

fn ok(action: &str, result: &str) -> Response {
    let result = if result.is_empty() {
        format!("<{action}Result/>")
    } else {
        format!("<{action}Result>{result}</{action}Result>")
    };
    xml(
        StatusCode::OK,
        format!(
            "<{action}Response xmlns=\"{NS}\">{result}<ResponseMetadata><RequestId>{}</RequestId></ResponseMetadata></{action}Response>",
            request_id()
        ),
    )
}

pub fn error_body(code: &str, message: &str) -> String {
    format!(
        "<ErrorResponse xmlns=\"{NS}\"><Error><Type>Sender</Type><Code>{code}</Code><Message>{}</Message></Error><RequestId>{}</RequestId></ErrorResponse>",
        escape(message),
        request_id()
    )
}

fn error(e: &ElbError) -> Response {
    xml(
        StatusCode::BAD_REQUEST,
        error_body(e.code(), &e.to_string()),
    )
}

/// The access key of a SigV4 `Authorization` header (`AWS4-HMAC-SHA256 Credential=KEY/date/
/// region/service/aws4_request, …`), or [`super::ANONYMOUS`].
pub fn caller(headers: &HeaderMap) -> String {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once("Credential="))
        .and_then(|(_, rest)| rest.split('/').next())
        .filter(|key| !key.is_empty())
        .unwrap_or(super::ANONYMOUS)
        .to_string()
}

async fn handle(
    axum::extract::State(elb): axum::extract::State<Arc<Elb>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut params: HashMap<String, String> =
        form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    params.extend(form_urlencoded::parse(&body).into_owned());
    let action = params.get("Action").cloned().unwrap_or_default();
    let caller = caller(&headers);
    elb.count_call(&caller, &action);
    if params.get("Version").map(String::as_str) == Some(super::ec2::VERSION) {
        return super::ec2::dispatch(&action, &params);
    }
    if elb.swallows(&caller, &action) {
        // Silent for far longer than any client should wait; bounded so the task ends.
        tokio::time::sleep(Duration::from_secs(120)).await;
        return xml(
            StatusCode::SERVICE_UNAVAILABLE,
            error_body("ServiceUnavailable", "black hole"),
        );
    }
    match dispatch(&elb, &action, &params) {
        Ok(r) => r,
        Err(e) => error(&e),
    }
}

fn members(params: &HashMap<String, String>, prefix: &str) -> Vec<String> {
    (1..=1000)
        .map_while(|i| params.get(&format!("{prefix}.member.{i}")).cloned())
        .collect()
}

fn targets(params: &HashMap<String, String>) -> Result<Vec<(String, Option<u16>)>, ElbError> {
    let mut out = Vec::new();
    for i in 1..=1000 {
        let Some(id) = params.get(&format!("Targets.member.{i}.Id")) else {
            break;
        };
        let port = match params.get(&format!("Targets.member.{i}.Port")) {
            Some(p) => Some(
                p.parse()
                    .map_err(|_| ElbError::Validation(format!("Invalid port {p}")))?,
            ),
            None => None,
        };
        out.push((id.clone(), port));
    }
    Ok(out)
}

fn arn_param(params: &HashMap<String, String>) -> Result<String, ElbError> {
    params.get("TargetGroupArn").cloned().ok_or_else(|| ElbError::Validation("1 validation error detected: Value null at 'targetGroupArn' failed to satisfy constraint: Member must not be null".into()))
}

fn dispatch(
    elb: &Arc<Elb>,
    action: &str,
    params: &HashMap<String, String>,
) -> Result<Response, ElbError> {
    if action.starts_with("Describe") {
        elb.take_describe_token()?;
    }
    match action {
        "DescribeTargetHealth" => {
            let health = elb.describe_target_health(&arn_param(params)?, &targets(params)?)?;
            let members: String = health.iter().map(health_member).collect();
            Ok(ok(
                action,
                &format!("<TargetHealthDescriptions>{members}</TargetHealthDescriptions>"),
            ))
        }
        "DescribeTargetGroups" => {
            let groups = elb.describe_target_groups(
                &members(params, "TargetGroupArns"),
                &members(params, "Names"),
            )?;
            let members: String = groups
                .iter()
                .map(|(arn, spec, lbs)| group_member(arn, spec, lbs))
                .collect();
            Ok(ok(
                action,
                &format!("<TargetGroups>{members}</TargetGroups>"),
            ))
        }
        "RegisterTargets" => {
            elb.register(&arn_param(params)?, &targets(params)?)?;
            Ok(ok(action, ""))
        }
        "DeregisterTargets" => {
            elb.deregister(&arn_param(params)?, &targets(params)?)?;
            Ok(ok(action, ""))
        }
        "CreateTargetGroup" => {
            let name = params.get("Name").cloned().unwrap_or_default();
            let port = params
                .get("Port")
                .and_then(|p| p.parse().ok())
                .unwrap_or(80);
            let mut spec = GroupSpec::new(&name, port);
            let secs = |k: &str| {
                params
                    .get(k)
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(Duration::from_secs)
            };
            let num = |k: &str| params.get(k).and_then(|v| v.parse::<u32>().ok());
            if let Some(p) = params.get("Protocol") {
                spec.protocol = p.clone();
            }
            if let Some(v) = params.get("VpcId") {
                spec.vpc_id = v.clone();
            }
            if let Some(t) = params.get("TargetType") {
                spec.target_type = t.clone();
            }
            if let Some(p) = params.get("HealthCheckPath") {
                spec.health_check_path = p.clone();
            }
            spec.interval = secs("HealthCheckIntervalSeconds").unwrap_or(spec.interval);
            spec.timeout = secs("HealthCheckTimeoutSeconds").unwrap_or(spec.timeout);
            spec.healthy_threshold = num("HealthyThresholdCount").unwrap_or(spec.healthy_threshold);
            spec.unhealthy_threshold =
                num("UnhealthyThresholdCount").unwrap_or(spec.unhealthy_threshold);
            let arn = elb.create_target_group(spec)?;
            let groups = elb.describe_target_groups(&[arn], &[])?;
            let members: String = groups
                .iter()
                .map(|(arn, spec, lbs)| group_member(arn, spec, lbs))
                .collect();
            Ok(ok(
                action,
                &format!("<TargetGroups>{members}</TargetGroups>"),
            ))
        }
        other => {
            tracing::warn!(action = other, "ELBv2 call the rig does not answer");
            Err(ElbError::Validation(format!(
                "Could not find operation {other} for version 2015-12-01"
            )))
        }
    }
}

fn health_member(h: &TargetHealth) -> String {
    let mut th = format!("<State>{}</State>", h.state.as_str());
    if let Some(r) = h.reason {
        th.push_str(&format!("<Reason>{r}</Reason>"));
    }
    if let Some(d) = &h.description {
        th.push_str(&format!("<Description>{}</Description>", escape(d)));
    }
    format!(
        "<member><Target><Id>{}</Id><Port>{}</Port></Target><HealthCheckPort>{}</HealthCheckPort><TargetHealth>{th}</TargetHealth></member>",
        escape(&h.id),
        h.port,
        h.port
    )
}

fn group_member(arn: &str, s: &GroupSpec, lbs: &[String]) -> String {
    let lbs: String = lbs
        .iter()
        .map(|l| format!("<member>{}</member>", escape(l)))
        .collect();
    format!(
        "<member><TargetGroupArn>{}</TargetGroupArn><TargetGroupName>{}</TargetGroupName><Protocol>{}</Protocol><Port>{}</Port><VpcId>{}</VpcId>\
<HealthCheckProtocol>HTTP</HealthCheckProtocol><HealthCheckPort>traffic-port</HealthCheckPort><HealthCheckEnabled>true</HealthCheckEnabled>\
<HealthCheckIntervalSeconds>{}</HealthCheckIntervalSeconds><HealthCheckTimeoutSeconds>{}</HealthCheckTimeoutSeconds>\
<HealthyThresholdCount>{}</HealthyThresholdCount><UnhealthyThresholdCount>{}</UnhealthyThresholdCount><HealthCheckPath>{}</HealthCheckPath>\
<Matcher><HttpCode>200</HttpCode></Matcher><LoadBalancerArns>{lbs}</LoadBalancerArns><TargetType>{}</TargetType>\
<ProtocolVersion>HTTP1</ProtocolVersion><IpAddressType>ipv4</IpAddressType></member>",
        escape(arn),
        escape(&s.name),
        escape(&s.protocol),
        s.port,
        escape(&s.vpc_id),
        s.interval.as_secs(),
        s.timeout.as_secs(),
        s.healthy_threshold,
        s.unhealthy_threshold,
        escape(&s.health_check_path),
        escape(&s.target_type)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_caller_is_the_access_key_of_the_sigv4_credential() {
        let mut h = HeaderMap::new();
        assert_eq!(caller(&h), crate::elb::ANONYMOUS);
        h.insert(
            header::AUTHORIZATION,
            "AWS4-HMAC-SHA256 Credential=aws-load-balancer-controller/20261208/us-east-1/elasticloadbalancing/aws4_request, SignedHeaders=host;x-amz-date, Signature=00"
                .parse()
                .unwrap(),
        );
        assert_eq!(caller(&h), "aws-load-balancer-controller");
        h.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        assert_eq!(caller(&h), crate::elb::ANONYMOUS);
    }
}
