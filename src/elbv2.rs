//! The ELBv2 client: DescribeTargetHealth and DescribeTargetGroups behind the call budget.
//!
//! Uses the standard AWS configuration chain (region, IRSA / Pod Identity, AWS_ENDPOINT_URL),
//! with the SDK's own retries off: every attempt takes a budget token, and the controller
//! decides when to retry. Every call is bounded (connect, attempt, operation): the SDK sets no
//! operation timeout of its own, and a call that never returns would hold its target group.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_elasticloadbalancingv2::Client;
use aws_sdk_elasticloadbalancingv2::config::http::HttpResponse;
use aws_sdk_elasticloadbalancingv2::error::{ProvideErrorMetadata, SdkError};

use crate::budget::Budget;
use crate::condition::Health;
use crate::metrics::{ElbOperation, ElbOutcome, Metrics};
use crate::target::Target;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ElbError {
    #[error("ELBv2 throttled the request: {0}")]
    Throttled(String),
    #[error("target group not found: {0}")]
    TargetGroupNotFound(String),
    #[error("ELBv2 server error: {0}")]
    Server(String),
    #[error("ELBv2 call timed out: {0}")]
    Timeout(String),
    #[error("ELBv2 request failed: {0}")]
    Other(String),
}

impl ElbError {
    fn outcome(&self) -> ElbOutcome {
        match self {
            ElbError::Throttled(_) => ElbOutcome::Throttled,
            ElbError::TargetGroupNotFound(_) => ElbOutcome::NotFound,
            ElbError::Server(_) => ElbOutcome::ServerError,
            ElbError::Timeout(_) => ElbOutcome::Timeout,
            ElbError::Other(_) => ElbOutcome::Error,
        }
    }
}

fn classify<E>(err: SdkError<E, HttpResponse>) -> ElbError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let text = aws_sdk_elasticloadbalancingv2::error::DisplayErrorContext(&err).to_string();
    let status = err.raw_response().map(|r| r.status().as_u16());
    let timed_out = match &err {
        SdkError::TimeoutError(_) => true,
        SdkError::DispatchFailure(f) => f.is_timeout(),
        _ => false,
    };
    if timed_out {
        return ElbError::Timeout(text);
    }
    match err.code() {
        Some(
            "Throttling"
            | "ThrottlingException"
            | "RequestLimitExceeded"
            | "TooManyRequestsException",
        ) => ElbError::Throttled(text),
        Some("TargetGroupNotFound" | "TargetGroupNotFoundException") => {
            ElbError::TargetGroupNotFound(text)
        }
        _ if status.is_some_and(|s| s >= 500) => ElbError::Server(text),
        _ => ElbError::Other(text),
    }
}

/// Health-check settings of a group: a new target can be healthy no sooner than their product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupSettings {
    pub interval_seconds: i32,
    pub healthy_threshold: i32,
    /// The group is attached to at least one load balancer (`LoadBalancerArns`): a target
    /// reported `unused` / `Target.NotInUse` then sits in an Availability Zone the load
    /// balancer does not enable, rather than in a group no traffic goes through.
    pub attached: bool,
}

impl GroupSettings {
    pub fn healthy_after(&self) -> Duration {
        Duration::from_secs(
            (self.interval_seconds.max(0) as u64) * (self.healthy_threshold.max(0) as u64),
        )
    }
}

/// Default bound on one ELBv2 call (a Describe* answers in well under a second).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The SDK's timeouts for calls bounded by `timeout`: one attempt per call (the SDK's retries
/// are off), so the attempt and the operation share the bound.
fn timeouts(timeout: Duration) -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT.min(timeout))
        .operation_attempt_timeout(timeout)
        .operation_timeout(timeout)
        .build()
}

#[derive(Clone)]
pub struct Elbv2 {
    client: Client,
    budget: Arc<Budget>,
    metrics: Arc<Metrics>,
    timeout: Duration,
}

impl Elbv2 {
    /// A client from the standard AWS configuration chain.
    pub async fn from_env(budget: Arc<Budget>, metrics: Arc<Metrics>) -> Self {
        Self::load(
            aws_config::defaults(BehaviorVersion::latest()),
            budget,
            metrics,
        )
        .await
    }

    /// A client for a fixed endpoint and region with static credentials (tests, local rigs).
    pub async fn with_endpoint(
        endpoint: &str,
        region: &str,
        budget: Arc<Budget>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let loader = aws_config::defaults(BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .region(aws_config::Region::new(region.to_string()))
            .credentials_provider(aws_sdk_elasticloadbalancingv2::config::Credentials::new(
                "testing", "testing", None, None, "static",
            ));
        Self::load(loader, budget, metrics).await
    }

    async fn load(
        loader: aws_config::ConfigLoader,
        budget: Arc<Budget>,
        metrics: Arc<Metrics>,
    ) -> Self {
        // The SDK's own retries would spend calls outside the budget; the controller retries.
        let config = loader
            .retry_config(RetryConfig::disabled())
            .timeout_config(timeouts(DEFAULT_TIMEOUT))
            .load()
            .await;
        Self {
            client: Client::new(&config),
            budget,
            metrics,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same client with every call bounded by `timeout`.
    pub fn with_timeout(self, timeout: Duration) -> Self {
        let config = self
            .client
            .config()
            .to_builder()
            .timeout_config(timeouts(timeout))
            .build();
        Self {
            client: Client::from_conf(config),
            timeout,
            ..self
        }
    }

    /// Bounds `call` by the timeout, whatever it is doing: the SDK's own timeouts should end it
    /// first, this is the guarantee that the group is never held.
    async fn bounded<T, E>(
        &self,
        call: impl std::future::Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    ) -> Result<T, ElbError>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        match tokio::time::timeout(self.timeout + Duration::from_secs(1), call).await {
            Ok(r) => r.map_err(classify),
            Err(_) => Err(ElbError::Timeout(format!(
                "no answer within {:?}",
                self.timeout
            ))),
        }
    }

    fn count(&self, operation: ElbOperation, result: Result<(), &ElbError>) {
        let outcome = match result {
            Ok(()) => ElbOutcome::Ok,
            Err(e) => e.outcome(),
        };
        self.metrics.elbv2_call(operation, outcome);
        if matches!(result, Err(ElbError::Throttled(_))) {
            self.metrics.elbv2_throttles.inc();
        }
    }

    /// Health of every registered target of the group. A target absent from the answer is not
    /// registered.
    pub async fn target_health(&self, arn: &str) -> Result<HashMap<Target, Health>, ElbError> {
        self.budget.acquire().await;
        let result = self
            .bounded(
                self.client
                    .describe_target_health()
                    .target_group_arn(arn)
                    .send(),
            )
            .await;
        self.count(
            ElbOperation::DescribeTargetHealth,
            result.as_ref().map(|_| ()),
        );
        let out = result?;
        Ok(out
            .target_health_descriptions()
            .iter()
            .filter_map(|d| {
                let t = d.target()?;
                let h = d.target_health()?;
                // IP targets only: an instance id does not parse and is no pod's target.
                let target = Target {
                    ip: t.id()?.parse().ok()?,
                    port: t.port()?,
                };
                let health = Health {
                    state: h
                        .state()
                        .map(|s| s.as_str().to_string())
                        .unwrap_or_default(),
                    reason: h.reason().map(|r| r.as_str().to_string()),
                    description: h.description().map(str::to_string),
                };
                Some((target, health))
            })
            .collect())
    }

    /// The group's health-check interval and healthy threshold.
    pub async fn group_settings(&self, arn: &str) -> Result<GroupSettings, ElbError> {
        self.groups_settings(&[arn.to_string()])
            .await?
            .remove(arn)
            .ok_or_else(|| {
                ElbError::TargetGroupNotFound(format!(
                    "{arn} not in the DescribeTargetGroups answer"
                ))
            })
    }

    /// The settings of several groups in one call. ELB fails the whole call with
    /// TargetGroupNotFound if any one ARN is unknown.
    pub async fn groups_settings(
        &self,
        arns: &[String],
    ) -> Result<HashMap<String, GroupSettings>, ElbError> {
        self.budget.acquire().await;
        let result = self
            .bounded(
                self.client
                    .describe_target_groups()
                    .set_target_group_arns(Some(arns.to_vec()))
                    .send(),
            )
            .await;
        self.count(
            ElbOperation::DescribeTargetGroups,
            result.as_ref().map(|_| ()),
        );
        Ok(result?
            .target_groups()
            .iter()
            .filter_map(|g| {
                let settings = GroupSettings {
                    interval_seconds: g.health_check_interval_seconds().unwrap_or(30),
                    healthy_threshold: g.healthy_threshold_count().unwrap_or(5),
                    attached: !g.load_balancer_arns().is_empty(),
                };
                Some((g.target_group_arn()?.to_string(), settings))
            })
            .collect())
    }

    /// The budget every call of this client takes from.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }
}
