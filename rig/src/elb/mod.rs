//! The load balancer side: target groups whose targets' health comes from real HTTP health
//! checks, the ELBv2 Query API over HTTP, and a listener that proxies traffic to targets the
//! way an ALB does.

pub mod client;
pub mod ec2;
pub mod listener;
pub mod query;
pub mod xml;

use crate::kubelet::reqwest_like::{Client, Failure};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

pub const ACCOUNT: &str = "123456789012";
pub const REGION: &str = "us-east-1";
/// The VPC of the rig's account: its CIDR holds the pod CIDR (see [`ec2`]); target groups are
/// in it. Shaped as AWS shapes them (`vpc-` and 17 hex digits), which the AWS Load Balancer
/// Controller's binding webhook checks.
pub const VPC_ID: &str = "vpc-0a1b2c3d4e5f60718";
/// A caller whose request carried no SigV4 credential.
pub const ANONYMOUS: &str = "-";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetState {
    Initial,
    Healthy,
    Unhealthy,
    Draining,
    Unused,
}

impl TargetState {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Initial => "initial",
            TargetState::Healthy => "healthy",
            TargetState::Unhealthy => "unhealthy",
            TargetState::Draining => "draining",
            TargetState::Unused => "unused",
        }
    }
}

/// A target's health as DescribeTargetHealth reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetHealth {
    pub id: String,
    pub port: u16,
    pub state: TargetState,
    pub reason: Option<&'static str>,
    pub description: Option<String>,
}

#[derive(Debug, Clone)]
pub struct GroupSpec {
    pub name: String,
    pub protocol: String,
    pub port: u16,
    pub vpc_id: String,
    pub target_type: String,
    pub health_check_path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// How long a deregistered target stays `draining`.
    pub deregistration_delay: Duration,
}

impl GroupSpec {
    /// AWS's defaults for an HTTP target group of IP targets.
    pub fn new(name: &str, port: u16) -> Self {
        Self {
            name: name.into(),
            protocol: "HTTP".into(),
            port,
            vpc_id: VPC_ID.into(),
            target_type: "ip".into(),
            health_check_path: "/".into(),
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            healthy_threshold: 5,
            unhealthy_threshold: 2,
            deregistration_delay: Duration::from_secs(300),
        }
    }
}

/// Something that happened to a target, for timelines.
#[derive(Debug, Clone)]
pub struct TargetEvent {
    pub at: Instant,
    pub arn: String,
    pub id: String,
    pub port: u16,
    pub kind: TargetEventKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetEventKind {
    Registered,
    Healthy,
    Unhealthy,
    Deregistered,
    Removed,
}

struct Target {
    state: TargetState,
    reason: Option<&'static str>,
    description: Option<String>,
    successes: u32,
    failures: u32,
    /// Bumped on each (re)registration so stale health-check tasks stop.
    generation: u64,
    /// A deregistered target still gets new requests until then (propagation delay).
    routable_until: Option<Instant>,
    checker: Option<tokio::task::AbortHandle>,
}

struct Group {
    arn: String,
    spec: GroupSpec,
    load_balancers: Vec<String>,
    targets: BTreeMap<(String, u16), Target>,
    next: usize,
}

#[derive(Debug, Clone)]
pub struct ElbConfig {
    /// How long a listener keeps sending new requests to a deregistered target.
    pub deregistration_lag: Duration,
    /// Describe* token bucket: (burst, refill per second). AWS: 40, 10/s.
    pub describe_budget: Option<(f64, f64)>,
}

impl Default for ElbConfig {
    fn default() -> Self {
        Self {
            deregistration_lag: Duration::from_millis(1000),
            describe_budget: Some((40.0, 10.0)),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ElbError {
    #[error("One or more target groups not found")]
    TargetGroupNotFound,
    #[error("{0}")]
    Validation(String),
    #[error("A target group with the same name '{0}' exists, but with different settings")]
    DuplicateTargetGroupName(String),
    #[error("Rate exceeded")]
    Throttling,
}

impl ElbError {
    pub fn code(&self) -> &'static str {
        match self {
            ElbError::TargetGroupNotFound => "TargetGroupNotFound",
            ElbError::Validation(_) => "ValidationError",
            ElbError::DuplicateTargetGroupName(_) => "DuplicateTargetGroupName",
            ElbError::Throttling => "Throttling",
        }
    }
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

pub struct Elb {
    groups: Mutex<BTreeMap<String, Group>>,
    config: ElbConfig,
    /// Calls received on the Query API by (caller's access key, action).
    calls: Mutex<BTreeMap<(String, String), u64>>,
    /// Calls of in-process callers (the load balancer controller model), per caller and action.
    calls_by: Mutex<BTreeMap<String, BTreeMap<String, u64>>>,
    /// Calls per (caller, action) that the Query API will swallow: it never answers them.
    black_holes: Mutex<BTreeMap<(String, String), u32>>,
    bucket: Mutex<Bucket>,
    events: broadcast::Sender<TargetEvent>,
    checks: Client,
}

/// A target picked by a listener.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pick {
    Target(SocketAddr),
    /// Nothing routable: an ALB answers 503.
    Nothing,
}

impl Elb {
    pub fn new(config: ElbConfig) -> Arc<Self> {
        let (events, _) = broadcast::channel(4096);
        let burst = config.describe_budget.map(|b| b.0).unwrap_or(0.0);
        Arc::new(Self {
            groups: Mutex::new(BTreeMap::new()),
            config,
            calls: Mutex::new(BTreeMap::new()),
            calls_by: Mutex::new(BTreeMap::new()),
            black_holes: Mutex::new(BTreeMap::new()),
            bucket: Mutex::new(Bucket {
                tokens: burst,
                last: Instant::now(),
            }),
            events,
            checks: Client,
        })
    }

    pub fn events(&self) -> broadcast::Receiver<TargetEvent> {
        self.events.subscribe()
    }

    fn emit(&self, arn: &str, id: &str, port: u16, kind: TargetEventKind) {
        let _ = self.events.send(TargetEvent {
            at: Instant::now(),
            arn: arn.into(),
            id: id.into(),
            port,
            kind,
        });
    }

    /// Counts one API call (as received on the Query endpoint) of `caller` (the access key
    /// that signed it, [`ANONYMOUS`] when unsigned).
    pub fn count_call(&self, caller: &str, action: &str) {
        *self
            .calls
            .lock()
            .expect("calls lock")
            .entry((caller.into(), action.into()))
            .or_default() += 1;
    }

    /// Counts one call of `action` by an in-process `caller`: apart from the Query API's
    /// ([`Self::calls`]), so that each caller's figures stay its own.
    pub fn count_call_by(&self, caller: &str, action: &str) {
        *self
            .calls_by
            .lock()
            .expect("calls lock")
            .entry(caller.into())
            .or_default()
            .entry(action.into())
            .or_default() += 1;
    }

    /// The calls `caller` made, per action: in-process, and on the Query API signed with
    /// `caller` as access key (the real AWS Load Balancer Controller's, whose key is the
    /// model's caller name).
    pub fn calls_by(&self, caller: &str) -> BTreeMap<String, u64> {
        let mut out = self
            .calls_by
            .lock()
            .expect("calls lock")
            .get(caller)
            .cloned()
            .unwrap_or_default();
        for ((key, action), n) in self.calls.lock().expect("calls lock").iter() {
            if key == caller {
                *out.entry(action.clone()).or_default() += n;
            }
        }
        out
    }

    /// The Query API's calls by action of every caller but `caller`.
    pub fn calls_but(&self, caller: &str) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for ((key, action), n) in self.calls.lock().expect("calls lock").iter() {
            if key != caller {
                *out.entry(action.clone()).or_default() += n;
            }
        }
        out
    }

    /// The next `calls` calls of `action` signed by `caller` (an access key) get no answer at
    /// all (the connection stays open and silent), as a call lost in the network or a stuck
    /// endpoint does. Other callers' calls are answered: with the real AWS Load Balancer
    /// Controller beside readygate, a hole meant for one would otherwise catch the other.
    pub fn black_hole(&self, caller: &str, action: &str, calls: u32) {
        *self
            .black_holes
            .lock()
            .expect("black holes lock")
            .entry((caller.into(), action.into()))
            .or_default() += calls;
    }

    /// Whether this call of `action` by `caller` falls into a black hole (and uses it up).
    pub fn swallows(&self, caller: &str, action: &str) -> bool {
        let mut holes = self.black_holes.lock().expect("black holes lock");
        match holes.get_mut(&(caller.to_string(), action.to_string())) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }

    /// Calls by action, every caller together.
    pub fn calls(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for ((_, action), n) in self.calls.lock().expect("calls lock").iter() {
            *out.entry(action.clone()).or_default() += n;
        }
        out
    }

    /// Calls by (caller's access key, action).
    pub fn calls_by_caller(&self) -> BTreeMap<(String, String), u64> {
        self.calls.lock().expect("calls lock").clone()
    }

    /// Takes a token from the Describe* bucket, or says Throttling.
    pub fn take_describe_token(&self) -> Result<(), ElbError> {
        let Some((burst, rate)) = self.config.describe_budget else {
            return Ok(());
        };
        let mut b = self.bucket.lock().expect("bucket lock");
        let now = Instant::now();
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(burst);
        b.last = now;
        if b.tokens < 1.0 {
            return Err(ElbError::Throttling);
        }
        b.tokens -= 1.0;
        Ok(())
    }

    pub fn create_target_group(&self, spec: GroupSpec) -> Result<String, ElbError> {
        if spec.name.is_empty() || spec.name.len() > 32 {
            return Err(ElbError::Validation(
                "Target group name must be 1 to 32 characters".into(),
            ));
        }
        let mut groups = self.groups.lock().expect("groups lock");
        if let Some(g) = groups.values().find(|g| g.spec.name == spec.name) {
            if g.spec.port == spec.port && g.spec.protocol == spec.protocol {
                return Ok(g.arn.clone()); // idempotent, as AWS is for identical settings
            }
            return Err(ElbError::DuplicateTargetGroupName(spec.name));
        }
        let id: u64 = rand::random();
        let arn = format!(
            "arn:aws:elasticloadbalancing:{REGION}:{ACCOUNT}:targetgroup/{}/{:016x}",
            spec.name, id
        );
        groups.insert(
            arn.clone(),
            Group {
                arn: arn.clone(),
                spec,
                load_balancers: Vec::new(),
                targets: BTreeMap::new(),
                next: 0,
            },
        );
        Ok(arn)
    }

    /// Attaches the group to a load balancer (a listener forwards to it).
    pub fn attach(&self, arn: &str, load_balancer_arn: &str) -> Result<(), ElbError> {
        let mut groups = self.groups.lock().expect("groups lock");
        let g = groups.get_mut(arn).ok_or(ElbError::TargetGroupNotFound)?;
        if !g.load_balancers.iter().any(|l| l == load_balancer_arn) {
            g.load_balancers.push(load_balancer_arn.into());
        }
        Ok(())
    }

    /// Detaches the group from a load balancer (its listener rule removed): a group attached to
    /// none reports its targets `unused` / `Target.NotInUse`.
    pub fn detach(&self, arn: &str, load_balancer_arn: &str) -> Result<(), ElbError> {
        let mut groups = self.groups.lock().expect("groups lock");
        let g = groups.get_mut(arn).ok_or(ElbError::TargetGroupNotFound)?;
        g.load_balancers.retain(|l| l != load_balancer_arn);
        Ok(())
    }

    pub fn describe_target_groups(
        &self,
        arns: &[String],
        names: &[String],
    ) -> Result<Vec<(String, GroupSpec, Vec<String>)>, ElbError> {
        let groups = self.groups.lock().expect("groups lock");
        let mut out = Vec::new();
        if arns.is_empty() && names.is_empty() {
            out.extend(
                groups
                    .values()
                    .map(|g| (g.arn.clone(), g.spec.clone(), g.load_balancers.clone())),
            );
        }
        for arn in arns {
            let g = groups.get(arn).ok_or(ElbError::TargetGroupNotFound)?;
            out.push((g.arn.clone(), g.spec.clone(), g.load_balancers.clone()));
        }
        for name in names {
            let g = groups
                .values()
                .find(|g| &g.spec.name == name)
                .ok_or(ElbError::TargetGroupNotFound)?;
            out.push((g.arn.clone(), g.spec.clone(), g.load_balancers.clone()));
        }
        Ok(out)
    }

    pub fn register(
        self: &Arc<Self>,
        arn: &str,
        targets: &[(String, Option<u16>)],
    ) -> Result<(), ElbError> {
        let mut groups = self.groups.lock().expect("groups lock");
        let g = groups.get_mut(arn).ok_or(ElbError::TargetGroupNotFound)?;
        for (id, port) in targets {
            let ip: IpAddr = id.parse().map_err(|_| {
                ElbError::Validation(format!("The IP address '{id}' is not a valid IPv4 address"))
            })?;
            let port = port.unwrap_or(g.spec.port);
            let key = (id.clone(), port);
            if let Some(t) = g.targets.get(&key)
                && t.state != TargetState::Draining
            {
                continue; // already registered: a no-op, as in AWS
            }
            let generation = g.targets.get(&key).map(|t| t.generation + 1).unwrap_or(0);
            if let Some(old) = g.targets.get(&key).and_then(|t| t.checker.clone()) {
                old.abort();
            }
            let checker = tokio::spawn(self.clone().health_checks(
                arn.to_string(),
                key.clone(),
                generation,
                SocketAddr::new(ip, port),
            ));
            g.targets.insert(
                key,
                Target {
                    state: TargetState::Initial,
                    reason: Some("Elb.RegistrationInProgress"),
                    description: Some("Target registration is in progress".into()),
                    successes: 0,
                    failures: 0,
                    generation,
                    routable_until: None,
                    checker: Some(checker.abort_handle()),
                },
            );
            self.emit(arn, id, port, TargetEventKind::Registered);
        }
        Ok(())
    }

    pub fn deregister(
        self: &Arc<Self>,
        arn: &str,
        targets: &[(String, Option<u16>)],
    ) -> Result<(), ElbError> {
        let mut groups = self.groups.lock().expect("groups lock");
        let g = groups.get_mut(arn).ok_or(ElbError::TargetGroupNotFound)?;
        let delay = g.spec.deregistration_delay;
        for (id, port) in targets {
            let key = (id.clone(), port.unwrap_or(g.spec.port));
            let Some(t) = g.targets.get_mut(&key) else {
                continue;
            };
            if t.state == TargetState::Draining {
                continue;
            }
            if t.state == TargetState::Healthy {
                t.routable_until = Some(Instant::now() + self.config.deregistration_lag);
            }
            t.state = TargetState::Draining;
            t.reason = Some("Target.DeregistrationInProgress");
            t.description = Some("Target deregistration is in progress".into());
            if let Some(c) = t.checker.take() {
                c.abort();
            }
            let generation = t.generation;
            self.emit(arn, id, key.1, TargetEventKind::Deregistered);
            let elb = self.clone();
            let arn = arn.to_string();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let mut groups = elb.groups.lock().expect("groups lock");
                if let Some(g) = groups.get_mut(&arn)
                    && g.targets.get(&key).is_some_and(|t| {
                        t.generation == generation && t.state == TargetState::Draining
                    })
                {
                    g.targets.remove(&key);
                    elb.emit(&arn, &key.0, key.1, TargetEventKind::Removed);
                }
            });
        }
        Ok(())
    }

    /// DescribeTargetHealth: every registered target, or the ones asked for (`unused` /
    /// `Target.NotRegistered` for those that are not registered).
    pub fn describe_target_health(
        &self,
        arn: &str,
        targets: &[(String, Option<u16>)],
    ) -> Result<Vec<TargetHealth>, ElbError> {
        let groups = self.groups.lock().expect("groups lock");
        let g = groups.get(arn).ok_or(ElbError::TargetGroupNotFound)?;
        let describe = |(id, port): &(String, u16), t: &Target| {
            if g.load_balancers.is_empty() && t.state != TargetState::Draining {
                return TargetHealth {
                    id: id.clone(),
                    port: *port,
                    state: TargetState::Unused,
                    reason: Some("Target.NotInUse"),
                    description: Some(
                        "Target group is not configured to receive traffic from the load balancer"
                            .into(),
                    ),
                };
            }
            TargetHealth {
                id: id.clone(),
                port: *port,
                state: t.state,
                reason: t.reason,
                description: t.description.clone(),
            }
        };
        if targets.is_empty() {
            return Ok(g.targets.iter().map(|(k, t)| describe(k, t)).collect());
        }
        Ok(targets
            .iter()
            .map(|(id, port)| {
                let key = (id.clone(), port.unwrap_or(g.spec.port));
                match g.targets.get(&key) {
                    Some(t) => describe(&key, t),
                    None => TargetHealth {
                        id: key.0,
                        port: key.1,
                        state: TargetState::Unused,
                        reason: Some("Target.NotRegistered"),
                        description: Some("Target is not registered to the target group".into()),
                    },
                }
            })
            .collect())
    }

    async fn health_checks(
        self: Arc<Self>,
        arn: String,
        key: (String, u16),
        generation: u64,
        addr: SocketAddr,
    ) {
        let (interval, timeout, path) = {
            let groups = self.groups.lock().expect("groups lock");
            let Some(g) = groups.get(&arn) else { return };
            (
                g.spec.interval,
                g.spec.timeout.min(g.spec.interval),
                g.spec.health_check_path.clone(),
            )
        };
        // The first check comes one interval after registration, so a target is healthy no
        // sooner than interval × healthy threshold.
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            ticker.tick().await;
            let result = self.checks.get_ok(addr, &path, timeout).await;
            let mut groups = self.groups.lock().expect("groups lock");
            let Some(g) = groups.get_mut(&arn) else {
                return;
            };
            let (healthy_threshold, unhealthy_threshold) =
                (g.spec.healthy_threshold, g.spec.unhealthy_threshold);
            let Some(t) = g.targets.get_mut(&key) else {
                return;
            };
            if t.generation != generation || t.state == TargetState::Draining {
                return;
            }
            let before = t.state;
            match result {
                Ok(_) => {
                    t.successes += 1;
                    t.failures = 0;
                    if t.state != TargetState::Healthy && t.successes >= healthy_threshold {
                        t.state = TargetState::Healthy;
                        t.reason = None;
                        t.description = None;
                    }
                }
                Err(failure) => {
                    t.failures += 1;
                    t.successes = 0;
                    if t.failures >= unhealthy_threshold {
                        let (reason, description) = match failure {
                            Failure::Status(code) => (
                                "Target.ResponseCodeMismatch",
                                format!("Health checks failed with these codes: [{code}]"),
                            ),
                            Failure::Timeout => ("Target.Timeout", "Request timed out".to_string()),
                            _ => (
                                "Target.FailedHealthChecks",
                                "Health checks failed".to_string(),
                            ),
                        };
                        t.state = TargetState::Unhealthy;
                        t.reason = Some(reason);
                        t.description = Some(description);
                    }
                }
            }
            if t.state == TargetState::Initial {
                t.reason = Some("Elb.InitialHealthChecking");
                t.description = Some("Initial health checks in progress".into());
            }
            if t.state != before {
                let kind = if t.state == TargetState::Healthy {
                    TargetEventKind::Healthy
                } else {
                    TargetEventKind::Unhealthy
                };
                self.emit(&arn, &key.0, key.1, kind);
            }
        }
    }

    /// The target for a listener's next request: healthy targets round-robin (plus
    /// deregistered ones within the propagation lag); when every registered target is
    /// unhealthy, all of them (fail open); otherwise nothing.
    pub fn pick(&self, arn: &str) -> Pick {
        let mut groups = self.groups.lock().expect("groups lock");
        let Some(g) = groups.get_mut(arn) else {
            return Pick::Nothing;
        };
        let now = Instant::now();
        let addr = |(id, port): &(String, u16)| {
            id.parse::<IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, *port))
        };
        let mut routable: Vec<SocketAddr> = g
            .targets
            .iter()
            .filter(|(_, t)| {
                t.state == TargetState::Healthy || t.routable_until.is_some_and(|u| u > now)
            })
            .filter_map(|(k, _)| addr(k))
            .collect();
        if routable.is_empty() {
            let registered: Vec<_> = g
                .targets
                .iter()
                .filter(|(_, t)| t.state != TargetState::Draining)
                .collect();
            if !registered.is_empty()
                && registered
                    .iter()
                    .all(|(_, t)| t.state == TargetState::Unhealthy)
            {
                routable = registered.iter().filter_map(|(k, _)| addr(k)).collect();
            }
        }
        if routable.is_empty() {
            return Pick::Nothing;
        }
        g.next = g.next.wrapping_add(1);
        Pick::Target(routable[g.next % routable.len()])
    }
}
