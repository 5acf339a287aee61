//! The status controller: ELBv2 target health → pod readiness-gate conditions.
//!
//! A decision core and a thin shell. The core (`Controller`) takes the index, ELB's answers and
//! the time as inputs and returns `Actions`: what each pending gate should say (`plan`, pure),
//! which condition writes and events go to the writer, which target groups to poll — one
//! DescribeTargetHealth per group, shared by every binding and pod on it — and when to wake
//! next; per-group poll state lives in `poller`. The shell (`run_loop`), active only on the
//! leader, carries the actions out and feeds the answers back.
//!
//! A pass follows what changed: the index journals the pods the watch changed (`Changes`), an
//! answer marks its group's pods, and timers (a group's next poll, a pod's failsafe deadline, a
//! write to re-send) mark theirs; only those are planned and decided again, so a pod event costs
//! work for that pod. A binding or Service change plans its namespace's pods again; every pod
//! is planned again only when a kind was listed or leadership changed hands.

use std::collections::{BTreeSet, HashMap, HashSet};

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use tokio::sync::{mpsc, watch};

use crate::budget::{Backoff, Budget};
use crate::cache::Cache;
use crate::cli::ControllerArgs;
use crate::condition::{self, Desired, Health, Policy};
use crate::domain::{ConditionStatus, Pod, TargetType, gate_type};
use crate::elbv2::{ElbError, Elbv2, GroupSettings};
use crate::gates_view::{ElbAnswer, GatesBoard, GatesView, PendingGate, PolicyView};
use crate::index::Index;
use crate::metrics::{Deferral, DeferralLabels, Metrics};
use crate::poller::{self, Group, Settings};
use crate::schedule::{self, Pending, Timing};
use crate::target::{self, Target};
use crate::writer::{self, ConditionWrite, Done, Job, Outcome, PodEvent, Writer};

/// Wall-clock milliseconds (pod timestamps are wall-clock too).
fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.round(jiff::Unit::Second).unwrap_or(t).to_string())
        .unwrap_or_default()
}

/// A gate waiting on its target's health.
#[derive(Clone, Debug, PartialEq)]
pub struct Waiting {
    pub arn: String,
    pub target: Target,
    pub ready_since_ms: Option<i64>,
    /// The AWS Load Balancer Controller reconciles the binding and writes this condition too,
    /// from its own ELB answers: readygate writes what it would, and releases nothing it
    /// would not (no `unused`/`unavailable` release, no failsafe), since a True it would not
    /// write comes back False within milliseconds — the pod flips Ready and back.
    pub aws_controller: bool,
    /// The failsafe timeout has passed, but the AWS controller holds the gate.
    pub failsafe_due: bool,
}

/// What a pending gate needs, decided from the index alone.
#[derive(Clone, Debug, PartialEq)]
pub enum Need {
    /// Release the gate now (True) for a reason of our own.
    Release(Desired),
    /// Say False for a reason of our own and keep waiting (no target to ask ELB about).
    Hold(Desired),
    /// Ask ELB about the target.
    Health(Waiting),
}

/// One gate of one pod that is not True yet.
#[derive(Clone, Debug, PartialEq)]
pub struct GateWork {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub created: Option<i64>,
    pub binding: String,
    pub current: Option<crate::domain::Condition>,
    /// The gate was True, then the containers restarted: it follows ELB again.
    pub reopened: bool,
    pub need: Need,
}

/// Every pending gate in the index, and what it needs. Pods without an IP are left alone until
/// they get one.
pub fn plan(ix: &Index, now_ms: i64, failsafe: Option<Duration>) -> Vec<GateWork> {
    let mut work = Vec::new();
    for (ns, name, pod) in ix.pods() {
        plan_pod(ix, ns, name, pod, now_ms, failsafe, &mut work);
    }
    work
}

/// The pending gates of one pod, and what each needs.
fn plan_pod(
    ix: &Index,
    ns: &str,
    name: &str,
    pod: &Pod,
    now_ms: i64,
    failsafe: Option<Duration>,
    work: &mut Vec<GateWork>,
) {
    if pod.finished || pod.ips.is_empty() {
        return;
    }
    for binding in &pod.gates {
        let reopened = restarted_since_true(pod, binding);
        if pod.gate_is_true(binding) && !reopened {
            continue;
        }
        work.push(GateWork {
            namespace: ns.to_string(),
            pod: name.to_string(),
            uid: pod.uid.clone(),
            created: pod.created,
            binding: binding.clone(),
            current: pod.condition(binding).cloned(),
            reopened,
            need: need(ix, ns, pod, binding, now_ms, failsafe),
        });
    }
}

/// The gate is True but the containers turned ready after it did (a container restarted, and
/// its target was re-registered and is checked from scratch): as the AWS Load Balancer
/// Controller does, the gate must follow ELB again.
pub fn restarted_since_true(pod: &Pod, binding: &str) -> bool {
    let Some(c) = pod.condition(binding) else {
        return false;
    };
    let gate_since = c
        .last_transition_time
        .as_deref()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map(|t| t.as_second());
    c.status == ConditionStatus::True
        && matches!((pod.containers_ready_since, gate_since), (Some(ready), Some(gate)) if ready > gate)
}

fn need(
    ix: &Index,
    ns: &str,
    pod: &Pod,
    binding_name: &str,
    now_ms: i64,
    failsafe: Option<Duration>,
) -> Need {
    let Some(binding) = ix.binding(ns, binding_name) else {
        return Need::Release(Desired::released(
            condition::REASON_BINDING_DELETED,
            &format!(
                "TargetGroupBinding {binding_name} does not exist (deleted, or never created); gate released"
            ),
        ));
    };
    if binding.target_type != TargetType::Ip {
        return Need::Release(Desired::released(
            condition::REASON_NOT_IP,
            &format!(
                "TargetGroupBinding {binding_name} does not register pod IPs (targetType is not ip); gate released"
            ),
        ));
    }
    let Some(service) = ix.service(ns, &binding.service_name) else {
        return Need::Release(Desired::released(
            condition::REASON_SERVICE_DELETED,
            &format!(
                "Service {} of TargetGroupBinding {binding_name} does not exist; gate released",
                binding.service_name
            ),
        ));
    };
    // The Service's selector or labels changed, or the binding now names another Service: the
    // load balancer no longer registers this pod, so nothing will ever say healthy.
    if !service.selects(pod.labels.as_slice()) {
        return Need::Release(Desired::released(
            condition::REASON_NOT_SELECTED,
            &format!(
                "Service {} of TargetGroupBinding {binding_name} no longer selects this pod; gate released",
                binding.service_name
            ),
        ));
    }
    let failsafe_due = matches!((failsafe, pod.created),
        (Some(limit), Some(created)) if now_ms >= created * 1000 + limit.as_millis() as i64);
    if failsafe_due && !binding.aws_controller {
        return Need::Release(Desired::released(
            condition::REASON_FAILSAFE,
            &format!(
                "target not healthy {}s after pod creation; gate released by the failsafe timeout",
                failsafe.map_or(0, |l| l.as_secs())
            ),
        ));
    }
    if binding.target_group_arn.is_empty() {
        return Need::Hold(Desired::new(
            ConditionStatus::False,
            condition::REASON_NO_TARGET,
            &format!("TargetGroupBinding {binding_name} has no targetGroupARN yet"),
        ));
    }
    match target::resolve(pod, binding, service) {
        Ok(target) => Need::Health(Waiting {
            arn: binding.target_group_arn.clone(),
            target,
            ready_since_ms: pod.containers_ready_since.map(|s| s * 1000),
            aws_controller: binding.aws_controller,
            failsafe_due,
        }),
        Err(e) => Need::Hold(Desired::new(
            ConditionStatus::False,
            condition::REASON_NO_TARGET,
            &format!("cannot resolve the target: {e}"),
        )),
    }
}

/// An ELBv2 answer, fed back into the controller.
pub enum Reply {
    Settings(
        Vec<String>,
        Result<HashMap<String, GroupSettings>, ElbError>,
    ),
    Health(String, Result<HashMap<Target, Health>, ElbError>, i64),
}

/// The ELBv2 call a failure came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Settings,
    Health,
}

type Key = (String, String);

/// What the decisions ask the shell to do. The core never calls ELBv2 or the writer itself,
/// so it runs on any clock: tests feed it `now` and replies, and read these.
#[derive(Debug, Default)]
pub struct Actions {
    /// Groups to poll, one DescribeTargetHealth each.
    pub polls: Vec<String>,
    /// Groups whose settings to read, one DescribeTargetGroups per batch.
    pub settings: Vec<Vec<String>>,
    /// Condition writes (each with the event to publish once written) and events, in order.
    pub jobs: Vec<Job>,
    /// ELB throttled the account: hold every call this long.
    pub hold_budget: Option<Duration>,
    /// The next pass is due at the latest then (ms).
    pub wake_at: Option<i64>,
}

/// A condition handed to the writer.
struct Sent {
    desired: Desired,
    at_ms: i64,
    pod_created: Option<i64>,
}

/// The decision core: index and ELB answers in, actions out, with time as an input.
pub struct Controller {
    cache: Arc<Cache>,
    metrics: Arc<Metrics>,
    policy: Policy,
    poll_interval_ms: i64,
    fast_poll_interval_ms: i64,
    max_poll_interval_ms: i64,
    settings_ttl_ms: i64,
    failsafe: Option<Duration>,
    groups: HashMap<String, Group>,
    /// Health-check settings by group, kept while idle and read again when stale or doubted.
    settings: HashMap<String, Settings>,
    /// What the decisions so far ask for, until the shell takes it.
    out: Actions,
    /// Conditions handed to the writer and not yet seen in the cache, by (uid, binding).
    sent: HashMap<Key, Sent>,
    /// When a target was first seen healthy, for the lag metric.
    healthy_seen: HashMap<Key, i64>,
    /// The same moment for True writes on their way: the watch may bring the True condition
    /// back, and a pass drop the gate from `healthy_seen`, before the writer reports.
    healthy_in_flight: HashMap<Key, i64>,
    warned_missing: HashSet<String>,
    /// Gates warned about a `Target.NotInUse` target in an attached group, by (uid, binding).
    warned_not_in_use: HashSet<Key>,
    /// Gates whose release was left to the AWS controller, by (uid, binding, reason).
    deferred: HashSet<(String, String, Deferral)>,
    last_missing_check: i64,
    /// The pending gates of each pod, as its last plan left them (only pods that have some).
    work: HashMap<PodKey, Vec<GateWork>>,
    /// The pods waiting on each group's answers.
    members: HashMap<String, HashSet<PodKey>>,
    /// What the next pass looks at: pods to plan and decide again, groups to schedule again.
    dirty_pods: HashSet<PodKey>,
    dirty_groups: BTreeSet<String>,
    /// Every pod is planned again on the next pass (first pass, new leadership).
    full_due: bool,
    /// Plan every pod on every pass (the reference the incremental passes are tested against).
    always_full: bool,
    timers: Timers,
    /// Groups whose settings to read, batched at the end of the pass.
    need_settings: Vec<String>,
    passes: Passes,
    /// When each group is polled next, for `/debug/gates`.
    next_poll: HashMap<String, i64>,
    /// `now` as a condition's time, formatted once per pass.
    now_text: (i64, Arc<str>),
}

/// A pod by namespace and name.
type PodKey = (String, String);

/// How many passes planned every pod, and how many only what changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Passes {
    pub full: u64,
    pub incremental: u64,
    /// Pods planned and decided again, over all passes.
    pub pods_planned: u64,
}

/// What a timer looks at again when it fires.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Timer {
    /// A pod's failsafe deadline, or a write to re-send.
    Pod(PodKey),
    /// A group's next poll, settings refresh or end of backoff.
    Group(String),
}

/// Moves `key`'s timer to `at` (none: cleared) in `queue` and `times`; `owned` makes the owned
/// key and the timer, only when something changes.
fn reschedule<K, Q>(
    queue: &mut BTreeSet<(i64, Timer)>,
    times: &mut HashMap<K, i64>,
    key: &Q,
    at: Option<i64>,
    owned: impl Fn() -> (K, Timer),
) where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: std::hash::Hash + Eq + ?Sized,
{
    if times.get(key) == at.as_ref() {
        return;
    }
    if let Some(old) = times.remove(key) {
        queue.remove(&(old, owned().1));
    }
    if let Some(at) = at {
        let (k, timer) = owned();
        queue.insert((at, timer));
        times.insert(k, at);
    }
}

/// At most one pending time per timer, in time order.
#[derive(Debug, Default)]
struct Timers {
    queue: BTreeSet<(i64, Timer)>,
    pods: HashMap<PodKey, i64>,
    groups: HashMap<String, i64>,
}

impl Timers {
    /// Sets (or with `None` clears) a pod's timer; costs nothing when it stays the same.
    fn set_pod(&mut self, key: &PodKey, at: Option<i64>) {
        reschedule(&mut self.queue, &mut self.pods, key, at, || {
            (key.clone(), Timer::Pod(key.clone()))
        });
    }
    fn set_group(&mut self, arn: &str, at: Option<i64>) {
        reschedule(&mut self.queue, &mut self.groups, arn, at, || {
            (arn.to_string(), Timer::Group(arn.to_string()))
        });
    }
    fn next(&self) -> Option<i64> {
        self.queue.first().map(|(at, _)| *at)
    }
    /// The timers due at `now`, removed.
    fn due(&mut self, now: i64) -> Vec<Timer> {
        let mut due = Vec::new();
        while let Some((at, _)) = self.queue.first()
            && *at <= now
        {
            let (_, timer) = self.queue.pop_first().expect("first exists");
            match &timer {
                Timer::Pod(key) => self.pods.remove(key),
                Timer::Group(arn) => self.groups.remove(arn),
            };
            due.push(timer);
        }
        due
    }
}

const RESEND_AFTER_MS: i64 = 10_000;
const NOT_FOUND_RETRY: Duration = Duration::from_secs(60);
const MISSING_CHECK_EVERY_MS: i64 = 10_000;
/// Target groups per DescribeTargetGroups call.
const SETTINGS_BATCH: usize = 20;

fn jitter() -> f64 {
    rand::random::<f64>()
}

impl Controller {
    pub fn new(cache: Arc<Cache>, metrics: Arc<Metrics>, args: &ControllerArgs) -> Self {
        Self {
            cache,
            metrics,
            policy: Policy {
                unused_is_ready: args.unused_is_ready,
                unavailable_is_ready: args.unavailable_is_ready,
            },
            poll_interval_ms: args.poll_interval.as_millis() as i64,
            fast_poll_interval_ms: args.fast_poll_interval.as_millis() as i64,
            max_poll_interval_ms: args.max_poll_interval.as_millis() as i64,
            settings_ttl_ms: args.settings_ttl.as_millis() as i64,
            failsafe: args.failsafe_timeout,
            groups: HashMap::new(),
            settings: HashMap::new(),
            out: Actions::default(),
            sent: HashMap::new(),
            healthy_seen: HashMap::new(),
            healthy_in_flight: HashMap::new(),
            warned_missing: HashSet::new(),
            warned_not_in_use: HashSet::new(),
            deferred: HashSet::new(),
            last_missing_check: i64::MIN / 2,
            work: HashMap::new(),
            members: HashMap::new(),
            dirty_pods: HashSet::new(),
            dirty_groups: BTreeSet::new(),
            full_due: true,
            always_full: false,
            timers: Timers::default(),
            need_settings: Vec::new(),
            passes: Passes::default(),
            next_poll: HashMap::new(),
            now_text: (i64::MIN, Arc::from("")),
        }
    }

    /// What the decisions since the last call ask for.
    pub fn take_actions(&mut self) -> Actions {
        std::mem::take(&mut self.out)
    }

    /// Not the leader: forget what was handed to the writer (the next leader decides anew), and
    /// stop reporting the leader's gauges, so alerts read the new leader's figures only.
    pub fn step_down(&mut self) {
        self.full_due = true;
        self.sent.clear();
        self.healthy_in_flight.clear();
        self.metrics.pending_pods.set(0);
        self.metrics.pods_missing_gates.set(0);
    }

    /// The writer could not take a condition: decide again next pass.
    pub fn unsent(&mut self, w: &ConditionWrite) {
        self.sent.remove(&(w.uid.clone(), w.binding.clone()));
        self.dirty_pods.insert((w.namespace.clone(), w.pod.clone()));
    }

    /// Plan every pod on every pass, as the reference for the incremental passes.
    pub fn always_full(mut self) -> Self {
        self.always_full = true;
        self
    }

    /// How many passes so far planned every pod, and how many only what changed.
    pub fn passes(&self) -> Passes {
        self.passes
    }

    /// A group's state changed (an answer, a failure): its pods are decided again and it is
    /// scheduled again on the next pass.
    fn group_changed(&mut self, arn: &str) {
        if let Some(m) = self.members.get(arn) {
            self.dirty_pods.extend(m.iter().cloned());
        }
        self.dirty_groups.insert(arn.to_string());
    }

    fn group(&mut self, arn: &str) -> &mut Group {
        self.groups.entry(arn.to_string()).or_default()
    }

    /// One pass at `now` (ms); the actions it decided, with the time of the next pass.
    pub fn pass(&mut self, now: i64) -> Actions {
        let wake_at = self.decide(now);
        Actions {
            wake_at,
            ..self.take_actions()
        }
    }

    /// Returns when the next pass is due at the latest (ms).
    ///
    /// A pass looks only at what changed: pods the watch changed, pods whose group ELB just
    /// answered about, groups and pods whose timer is due, the pods of a namespace whose bindings
    /// or Services changed. Every pod is planned again only when a kind was listed or after
    /// leadership changed hands.
    fn decide(&mut self, now: i64) -> Option<i64> {
        let cache = self.cache.clone();
        let s = cache.read().synced();
        if !(s.bindings && s.services && s.pods) {
            self.full_due = true;
            return None;
        }
        let changes = cache.write().take_changes();
        {
            let ix = cache.read();
            if s.namespaces && now - self.last_missing_check >= MISSING_CHECK_EVERY_MS {
                self.last_missing_check = now;
                self.check_missing(&ix);
            }
            for timer in self.timers.due(now) {
                match timer {
                    Timer::Pod(key) => {
                        self.dirty_pods.insert(key);
                    }
                    Timer::Group(arn) => {
                        self.dirty_groups.insert(arn);
                    }
                }
            }
            if self.full_due || self.always_full || changes.shape {
                self.full_due = false;
                self.passes.full += 1;
                self.dirty_pods.clear();
                self.dirty_groups.extend(self.groups.keys().cloned());
                self.refresh_every(&ix, None, now);
            } else {
                self.passes.incremental += 1;
                self.dirty_pods.extend(changes.pods);
                // A binding or Service changed: every pod of the namespace.
                for ns in &changes.namespaces {
                    self.dirty_pods.retain(|(n, _)| n != ns);
                    self.refresh_every(&ix, Some(ns), now);
                }
                for key in std::mem::take(&mut self.dirty_pods) {
                    let pod = ix.pod(&key.0, &key.1);
                    self.refresh(&ix, &key, pod, now);
                    self.passes.pods_planned += 1;
                }
            }
        }
        for arn in std::mem::take(&mut self.dirty_groups) {
            self.schedule_group(arn, now);
        }
        for batch in std::mem::take(&mut self.need_settings).chunks(SETTINGS_BATCH) {
            self.out.settings.push(batch.to_vec());
        }
        self.metrics.pending_pods.set(self.work.len() as i64);
        self.timers.next()
    }

    /// Refreshes every pod of the index, or of namespace `only`: straight from the index, then
    /// those planned before that are gone from it.
    fn refresh_every(&mut self, ix: &Index, only: Option<&str>, now: i64) {
        let in_scope = |ns: &str| only.is_none_or(|o| o == ns);
        let before = self.work.keys().filter(|(ns, _)| in_scope(ns)).count();
        let mut again = 0;
        let pods: Box<dyn Iterator<Item = (&str, &str, &Pod)>> = match only {
            None => Box::new(ix.pods()),
            Some(ns) => Box::new(ix.pods_in(ns).map(move |(name, p)| (ns, name, p))),
        };
        for (ns, name, pod) in pods {
            if pod.gates.is_empty() {
                continue;
            }
            let key = (ns.to_string(), name.to_string());
            again += usize::from(self.refresh(ix, &key, Some(pod), now));
            self.passes.pods_planned += 1;
        }
        if again < before {
            let gone: Vec<PodKey> = self
                .work
                .keys()
                .filter(|(ns, name)| {
                    in_scope(ns) && ix.pod(ns, name).is_none_or(|p| p.gates.is_empty())
                })
                .cloned()
                .collect();
            for key in gone {
                self.refresh(ix, &key, None, now);
                self.passes.pods_planned += 1;
            }
        }
    }

    /// Plans `key`'s pod again (`pod`: what the index holds of it now) and decides its pending
    /// gates: the groups it waits on, what is remembered for gates no longer pending, and when
    /// to look at it again on its own. Returns whether it had pending gates before.
    fn refresh(&mut self, ix: &Index, key: &PodKey, pod: Option<&Pod>, now: i64) -> bool {
        let mut new = Vec::new();
        if let Some(pod) = pod {
            plan_pod(ix, &key.0, &key.1, pod, now, self.failsafe, &mut new);
        }
        let old = self.work.get_mut(key).map(std::mem::take);
        let had = old.is_some();
        let old = old.unwrap_or_default();
        // A group's schedule depends on its pending targets: look at it again only when this
        // pod's share of them changed.
        fn waits(work: &[GateWork]) -> impl Iterator<Item = &Waiting> {
            work.iter().filter_map(|w| match &w.need {
                Need::Health(wait) => Some(wait),
                _ => None,
            })
        }
        if !waits(&old).eq(waits(&new)) {
            for wait in waits(&old) {
                if let Some(m) = self.members.get_mut(&wait.arn) {
                    m.remove(key);
                    if m.is_empty() {
                        self.members.remove(&wait.arn);
                    }
                }
                self.dirty_groups.insert(wait.arn.clone());
            }
            for wait in waits(&new) {
                self.members
                    .entry(wait.arn.clone())
                    .or_default()
                    .insert(key.clone());
                self.dirty_groups.insert(wait.arn.clone());
            }
        }
        for w in &old {
            if !new.iter().any(|n| n.uid == w.uid && n.binding == w.binding) {
                let k = (w.uid.clone(), w.binding.clone());
                self.sent.remove(&k);
                self.healthy_seen.remove(&k);
                self.warned_not_in_use.remove(&k);
                self.deferred
                    .retain(|(uid, binding, _)| (uid, binding) != (&k.0, &k.1));
            }
        }
        let wake = self.decide_gates(&new, now);
        self.timers.set_pod(key, wake);
        match (new.is_empty(), had) {
            (true, true) => {
                self.work.remove(key);
            }
            (true, false) => {}
            (false, true) => {
                if let Some(slot) = self.work.get_mut(key) {
                    *slot = new;
                }
            }
            (false, false) => {
                self.work.insert(key.clone(), new);
            }
        }
        had
    }

    /// Decides what each of a pod's pending gates should say; returns when to look at the pod
    /// again on its own (failsafe deadline, re-sending a write that got lost).
    fn decide_gates(&mut self, work: &[GateWork], now: i64) -> Option<i64> {
        let mut wake: Option<i64> = None;
        for w in work {
            let desired = match &w.need {
                Need::Release(d) | Need::Hold(d) => Some(d.clone()),
                Need::Health(wait) => {
                    let seen = self
                        .groups
                        .get(&wait.arn)
                        .and_then(|g| g.checks_began.get(&wait.target))
                        .map(|(_, seen)| *seen);
                    if self.doubt_settings(wait, seen) {
                        self.dirty_groups.insert(wait.arn.clone());
                    }
                    self.health_condition(w, wait, now)
                }
            };
            let deferred_failsafe = matches!(&w.need, Need::Health(wait) if wait.failsafe_due);
            if deferred_failsafe
                && desired
                    .as_ref()
                    .is_none_or(|d| d.status != ConditionStatus::True)
            {
                self.defer(w, Deferral::Failsafe);
            }
            if let Some(desired) = desired {
                self.write(w, &desired, now);
            }
            // A deadline that has passed without a release wakes no one.
            if let (Some(limit), Some(created), false) = (
                self.failsafe,
                w.created,
                matches!(w.need, Need::Release(_)) || deferred_failsafe,
            ) {
                wake = min_opt(wake, Some(created * 1000 + limit.as_millis() as i64));
            }
            if let Some(sent) = self.sent.get(&(w.uid.clone(), w.binding.clone())) {
                wake = min_opt(wake, Some(sent.at_ms + RESEND_AFTER_MS));
            }
        }
        wake
    }

    /// Reads, refreshes or polls one group as its pending targets and times say, and sets when
    /// to look at it again; forgets it when nothing waits on it.
    fn schedule_group(&mut self, arn: String, now: i64) {
        self.next_poll.remove(&arn);
        let mut targets: Vec<Pending> = Vec::new();
        let mut pending: HashSet<Target> = HashSet::new();
        for key in self.members.get(&arn).into_iter().flatten() {
            for w in self.work.get(key).into_iter().flatten() {
                if let Need::Health(wait) = &w.need
                    && wait.arn == arn
                {
                    targets.push(Pending {
                        ready_since_ms: wait.ready_since_ms,
                        checks_began_between: self
                            .groups
                            .get(&arn)
                            .and_then(|g| g.checks_began.get(&wait.target))
                            .copied(),
                    });
                    pending.insert(wait.target.clone());
                }
            }
        }
        if targets.is_empty() {
            // Forget a group nothing waits on, once no call of its own is out.
            if self
                .groups
                .get(&arn)
                .is_some_and(|g| !(g.in_flight || g.settings_in_flight))
            {
                self.groups.remove(&arn);
            }
            self.timers.set_group(&arn, None);
            return;
        }
        let mut next: Option<i64> = None;
        let settings = self.settings.get(&arn).copied();
        let ttl = self.settings_ttl_ms;
        let g = self.groups.entry(arn.clone()).or_default();
        g.set_pending(pending);
        let backing_off = g.times.not_before_ms.is_some_and(|t| t > now);
        // Settings: read them first; later, refresh them beside the polls.
        let refresh = match settings {
            None => !backing_off,
            Some(s) => s.refresh_due(now, ttl),
        };
        if refresh && !g.settings_in_flight {
            g.settings_in_flight = true;
            self.need_settings.push(arn.clone());
        }
        match settings {
            None => {
                if backing_off {
                    next = g.times.not_before_ms;
                }
            }
            Some(settings) => {
                if !g.settings_in_flight {
                    next = Some(settings.refresh_at(ttl));
                }
                if !g.in_flight {
                    let timing = Timing {
                        check_interval_ms: i64::from(settings.value.interval_seconds.max(0)) * 1000,
                        healthy_threshold: i64::from(settings.value.healthy_threshold.max(0)),
                        poll_interval_ms: self.poll_interval_ms,
                        fast_interval_ms: self.fast_poll_interval_ms,
                        max_poll_interval_ms: self.max_poll_interval_ms,
                    };
                    match schedule::next_poll(&targets, timing, g.times) {
                        Some(t) if t <= now => {
                            g.in_flight = true;
                            self.out.polls.push(arn.clone());
                        }
                        Some(t) => {
                            next = min_opt(next, Some(t));
                            self.next_poll.insert(arn.clone(), t);
                        }
                        None => {}
                    }
                }
            }
        }
        self.timers.set_group(&arn, next);
    }

    /// Marks the group's settings for a re-read when its last answer about `wait`'s target
    /// contradicts them (the interval or threshold changed since they were read).
    fn doubt_settings(&mut self, wait: &Waiting, checks_seen_ms: Option<i64>) -> bool {
        let Some(s) = self.settings.get_mut(&wait.arn) else {
            return false;
        };
        let Some((targets, at)) = self.groups.get(&wait.arn).and_then(|g| g.health.as_ref()) else {
            return false;
        };
        // Only answers given after the settings were read can contradict them.
        if s.doubted || *at < s.read_at_ms {
            return false;
        }
        if let Some(h) = targets.get(&wait.target)
            && poller::contradicts(s.value, wait.ready_since_ms, checks_seen_ms, h, *at)
        {
            tracing::info!(arn = %wait.arn, state = %h.state, "an answer contradicts the group's health-check settings; reading them again");
            s.doubted = true;
            return true;
        }
        false
    }

    /// The condition ELB's last answer implies for a waiting gate.
    /// `None` when there is nothing new to say: no answer yet, and the pod already has a
    /// condition (after a restart, say, its last reason stands until the next answer).
    fn health_condition(&mut self, w: &GateWork, wait: &Waiting, now: i64) -> Option<Desired> {
        let g = self.groups.get(&wait.arn);
        if let Some(msg) = g.and_then(|g| g.not_found.as_ref()) {
            return Some(Desired::new(
                ConditionStatus::False,
                "Readygate.TargetGroupNotFound",
                msg,
            ));
        }
        // Only an answer given after the containers were ready speaks for this pod's target
        // (an earlier one may describe a previous pod with the same IP).
        let answer = g
            .and_then(|g| g.health.as_ref())
            .filter(|(_, at)| wait.ready_since_ms.is_some_and(|r| *at >= r));
        let (health, at) = match answer {
            // A reopened gate must not stay True until the first answer: the target is new.
            None => return (w.current.is_none() || w.reopened).then(condition::not_registered),
            Some((targets, at)) => (targets.get(&wait.target).cloned(), *at),
        };
        let Some(h) = health else {
            return Some(condition::not_registered());
        };
        let attached = self.settings.get(&wait.arn).map(|s| s.value.attached);
        if condition::not_in_use_while_attached(&h, attached) {
            self.warn_not_in_use(w, &wait.arn);
        }
        let policy = if wait.aws_controller {
            Policy::AS_AWS_CONTROLLER
        } else {
            self.policy
        };
        let d = condition::from_health_in_group(&h, policy, attached);
        if d.status != ConditionStatus::True
            && condition::from_health_in_group(&h, self.policy, attached).status
                == ConditionStatus::True
        {
            self.defer(
                w,
                if h.state == "unused" {
                    Deferral::Unused
                } else {
                    Deferral::Unavailable
                },
            );
        }
        if d.status == ConditionStatus::True {
            self.healthy_seen
                .entry((w.uid.clone(), w.binding.clone()))
                .or_insert(at.min(now));
        }
        Some(d)
    }

    /// Once per gate and reason: readygate would release it, and leaves it False because the AWS
    /// Load Balancer Controller reconciles its binding and writes the condition too (False
    /// here): a True of readygate's would come back False within milliseconds.
    fn defer(&mut self, w: &GateWork, why: Deferral) {
        if !self
            .deferred
            .insert((w.uid.clone(), w.binding.clone(), why))
        {
            return;
        }
        self.metrics
            .releases_deferred
            .get_or_create(&DeferralLabels { reason: why })
            .inc();
        let (what, fix) = match why {
            Deferral::Unused => (
                "its target group is attached to no load balancer (unused, Target.NotInUse), which readygate would take as ready",
                "attach the target group to a load balancer, or delete the binding",
            ),
            Deferral::Unavailable => (
                "health checks of its target group are disabled (unavailable, Target.HealthCheckDisabled), which readygate would take as ready",
                "enable the target group's health checks, or delete the binding",
            ),
            Deferral::Failsafe => (
                "its target is still not healthy after readygate's --failsafe-timeout",
                "find out why the target is not healthy (`readygate status`), or delete the binding",
            ),
        };
        tracing::warn!(namespace = %w.namespace, pod = %w.pod, binding = %w.binding, reason = why.label(), "gate left False: the AWS Load Balancer Controller reconciles the binding and writes its condition too");
        self.out.jobs.push(Job::Event(PodEvent {
            namespace: w.namespace.clone(),
            pod: w.pod.clone(),
            uid: w.uid.clone(),
            warning: true,
            reason: "GateLeftToAwsLoadBalancerController",
            note: format!(
                "{}: {what}; but the AWS Load Balancer Controller reconciles TargetGroupBinding {} (finalizer {}) and writes this condition too, False, so readygate leaves it False rather than flip the pod Ready and back: {fix}",
                gate_type(&w.binding),
                w.binding,
                crate::domain::AWS_CONTROLLER_FINALIZER,
            ),
        }));
    }

    /// Once per gate: the target is `unused` / `Target.NotInUse` although its group serves a
    /// load balancer, which only an Availability Zone the load balancer does not enable explains.
    fn warn_not_in_use(&mut self, w: &GateWork, arn: &str) {
        if !self
            .warned_not_in_use
            .insert((w.uid.clone(), w.binding.clone()))
        {
            return;
        }
        tracing::warn!(namespace = %w.namespace, pod = %w.pod, %arn, "target unused (Target.NotInUse) in a target group attached to a load balancer; gate kept False");
        self.out.jobs.push(Job::Event(PodEvent {
            namespace: w.namespace.clone(),
            pod: w.pod.clone(),
            uid: w.uid.clone(),
            warning: true,
            reason: "TargetNotInUse",
            note: format!(
                "ELB reports the target of {} unused (Target.NotInUse) although target group {arn} is attached to a load balancer: \
                 the pod's Availability Zone is most likely not enabled on the load balancer, so it gets no traffic; gate kept False",
                gate_type(&w.binding)
            ),
        }));
    }

    fn now_text(&mut self, now: i64) -> Arc<str> {
        if self.now_text.0 != now {
            self.now_text = (now, Arc::from(rfc3339(now)));
        }
        self.now_text.1.clone()
    }

    fn write(&mut self, w: &GateWork, desired: &Desired, now: i64) {
        let now_text = self.now_text(now);
        let condition = if w.reopened {
            Some(condition::recheck(desired, &now_text))
        } else {
            condition::next(w.current.as_ref(), desired, &now_text)
        };
        let Some(condition) = condition else {
            self.sent.remove(&(w.uid.clone(), w.binding.clone()));
            return;
        };
        let key = (w.uid.clone(), w.binding.clone());
        if let Some(sent) = self.sent.get(&key)
            && sent.desired == *desired
            && now - sent.at_ms < RESEND_AFTER_MS
        {
            return;
        }
        if desired.status == ConditionStatus::True
            && let Some(seen) = self.healthy_seen.get(&key)
        {
            self.healthy_in_flight.insert(key.clone(), *seen);
        }
        self.sent.insert(
            key,
            Sent {
                desired: desired.clone(),
                at_ms: now,
                pod_created: w.created,
            },
        );
        let event = (desired.status == ConditionStatus::True).then(|| PodEvent {
            namespace: w.namespace.clone(),
            pod: w.pod.clone(),
            uid: w.uid.clone(),
            warning: false,
            reason: "ReadinessGateReady",
            note: format!(
                "{} True ({}) {}s after pod creation",
                gate_type(&w.binding),
                if desired.reason.is_empty() {
                    "healthy in ELB"
                } else {
                    &desired.reason
                },
                w.created.map_or(0, |c| (now / 1000 - c).max(0))
            ),
        });
        let write = ConditionWrite {
            namespace: w.namespace.clone(),
            pod: w.pod.clone(),
            uid: w.uid.clone(),
            binding: w.binding.clone(),
            condition,
        };
        self.out.jobs.push(Job::Condition(write, event));
    }

    /// What became of a condition write, learnt at `now`.
    pub fn written(&mut self, done: Done, now: i64) {
        let key = (done.write.uid.clone(), done.write.binding.clone());
        // Every write reports once: the entry goes whatever the outcome.
        let healthy_since = self.healthy_in_flight.remove(&key);
        match done.outcome {
            Outcome::Written if done.write.condition.status == ConditionStatus::True => {
                self.healthy_seen.remove(&key);
                if let Some(seen) = healthy_since {
                    self.metrics
                        .healthy_to_written_seconds
                        .observe((now - seen).max(0) as f64 / 1000.0);
                }
                // The pass that saw the pod's new condition may already have dropped the entry.
                let created = match self.sent.get(&key) {
                    Some(sent) => sent.pod_created,
                    None => self
                        .cache
                        .read()
                        .pod(&done.write.namespace, &done.write.pod)
                        .filter(|p| p.uid == done.write.uid)
                        .and_then(|p| p.created),
                };
                if let Some(c) = created {
                    self.metrics
                        .gate_ready_seconds
                        .observe((now / 1000 - c).max(0) as f64);
                }
            }
            // Meant for a pod that no longer exists: resending could only fail again.
            Outcome::Written | Outcome::Gone | Outcome::Replaced => {}
            // Decide again on the next pass.
            Outcome::Conflict | Outcome::NotLeader | Outcome::Timeout | Outcome::Failed => {
                self.sent.remove(&key);
                self.dirty_pods
                    .insert((done.write.namespace.clone(), done.write.pod.clone()));
            }
        }
    }

    fn check_missing(&mut self, ix: &Index) {
        let mut missing = 0;
        let mut seen = HashSet::new();
        for (ns, name, pod) in ix.pods() {
            if pod.finished || !ix.is_opted_in(ns) {
                continue;
            }
            let lacking: Vec<String> = ix
                .gates_for(ns, pod.labels.as_slice())
                .into_iter()
                .filter(|g| !pod.gates.iter().any(|b| gate_type(b) == *g))
                .collect();
            if lacking.is_empty() {
                continue;
            }
            missing += 1;
            seen.insert(pod.uid.clone());
            if self.warned_missing.insert(pod.uid.clone()) {
                tracing::warn!(namespace = ns, pod = name, gates = ?lacking, "pod lacks readiness gates it should have; restart it");
                self.out.jobs.push(Job::Event(PodEvent {
                    namespace: ns.to_string(),
                    pod: name.to_string(),
                    uid: pod.uid.clone(),
                    warning: true,
                    reason: "ReadinessGateMissing",
                    note: format!(
                        "pod lacks readiness gate(s) {} (created before its TargetGroupBinding, or while the webhook was unavailable): \
                         the load balancer does not hold its readiness; delete the pod to have it recreated with the gate",
                        lacking.join(", ")
                    ),
                }));
            }
        }
        self.warned_missing.retain(|uid| seen.contains(uid));
        self.metrics.pods_missing_gates.set(missing);
    }

    /// An ELBv2 answer, received at `now`.
    pub fn reply(&mut self, reply: Reply, now: i64) {
        match &reply {
            Reply::Settings(arns, _) => arns.iter().for_each(|a| self.group_changed(a)),
            Reply::Health(arn, _, _) => self.group_changed(arn),
        }
        match reply {
            Reply::Settings(arns, Ok(mut found)) => {
                for arn in arns {
                    match found.remove(&arn) {
                        Some(s) => {
                            let changed = self.settings.get(&arn).is_none_or(|old| old.value != s);
                            if changed {
                                tracing::info!(%arn, interval = s.interval_seconds, healthy_threshold = s.healthy_threshold, attached = s.attached, "target group settings read");
                            }
                            self.settings.insert(arn.clone(), Settings::new(s, now));
                            let g = self.group(&arn);
                            g.settings_in_flight = false;
                            g.not_found = None;
                        }
                        None => self.failed(
                            arn,
                            ElbError::TargetGroupNotFound(
                                "not in the DescribeTargetGroups answer".into(),
                            ),
                            Call::Settings,
                            now,
                        ),
                    }
                }
            }
            // One unknown ARN fails the whole batch: ask for each on its own to find it.
            Reply::Settings(arns, Err(ElbError::TargetGroupNotFound(_))) if arns.len() > 1 => {
                for arn in arns {
                    self.out.settings.push(vec![arn]);
                }
            }
            Reply::Settings(arns, Err(e)) => {
                for arn in arns {
                    self.failed(arn, e.clone(), Call::Settings, now);
                }
            }
            Reply::Health(arn, Ok(targets), at) => {
                let poll_interval = self.poll_interval_ms;
                self.group(&arn).answered(targets, at, poll_interval);
            }
            Reply::Health(arn, Err(e), _) => self.failed(arn, e, Call::Health, now),
        }
    }

    /// Backs the group off after a failed call.
    fn failed(&mut self, arn: String, e: ElbError, call: Call, now: i64) {
        let budget_hold = {
            let g = self.groups.entry(arn.clone()).or_default();
            match call {
                Call::Settings => g.settings_in_flight = false,
                Call::Health => g.in_flight = false,
            }
            let backoff = g.backoff.get_or_insert_with(|| {
                Backoff::new(Duration::from_secs(1), Duration::from_secs(60))
            });
            let delay = match &e {
                ElbError::TargetGroupNotFound(msg) => {
                    g.not_found = Some(format!("target group {arn} not found: {msg}"));
                    NOT_FOUND_RETRY.mul_f64(1.0 + 0.2 * jitter())
                }
                _ => backoff.failure(jitter()),
            };
            let until = now + delay.as_millis() as i64;
            // A failed refresh keeps the settings in use and only delays the next refresh;
            // polls back off only when the call that failed was theirs, or nothing can poll yet.
            match self.settings.get_mut(&arn) {
                Some(s) if call == Call::Settings => s.retry_at_ms = Some(until),
                _ => g.times.not_before_ms = Some(until),
            }
            matches!(e, ElbError::Throttled(_)).then_some(delay)
        };
        if let Some(delay) = budget_hold {
            self.out.hold_budget = Some(self.out.hold_budget.map_or(delay, |d| d.max(delay)));
        }
        tracing::warn!(%arn, error = %e, "ELBv2 call failed; backing off");
    }
}

impl Controller {
    /// What this controller knows about its pending gates, as `/debug/gates` serves it.
    pub fn view(&self, now: i64, leader: bool) -> GatesView {
        let gates = if leader {
            self.work
                .values()
                .flatten()
                .map(|w| self.pending_gate(w))
                .collect()
        } else {
            Vec::new()
        };
        GatesView {
            controller: true,
            leader,
            generated_at: rfc3339(now),
            policy: PolicyView {
                unused_is_ready: self.policy.unused_is_ready,
                unavailable_is_ready: self.policy.unavailable_is_ready,
                failsafe_timeout_seconds: self.failsafe.map(|d| d.as_secs()),
            },
            gates,
        }
    }

    fn pending_gate(&self, w: &GateWork) -> PendingGate {
        let mut p = PendingGate {
            namespace: w.namespace.clone(),
            pod: w.pod.clone(),
            binding: w.binding.clone(),
            failsafe_at: self
                .failsafe
                .zip(w.created)
                .map(|(f, c)| rfc3339(c * 1000 + f.as_millis() as i64)),
            ..PendingGate::default()
        };
        match &w.need {
            Need::Release(d) | Need::Hold(d) => {
                p.decision = if matches!(w.need, Need::Release(_)) {
                    "release"
                } else {
                    "hold"
                }
                .into();
                p.reason = Some(d.reason.clone());
                p.message = Some(d.message.clone());
            }
            Need::Health(wait) => {
                p.decision = "waiting".into();
                p.target = Some(wait.target.to_string());
                p.target_group_arn = Some(wait.arn.clone());
                p.next_poll_at = self.next_poll.get(&wait.arn).map(|t| rfc3339(*t));
                if let Some(g) = self.groups.get(&wait.arn) {
                    p.poll_in_flight = g.in_flight;
                    p.backing_off_until = g.times.not_before_ms.map(rfc3339);
                    // As `health_condition`: only an answer after the containers turned ready
                    // speaks for this pod.
                    p.elb = g
                        .health
                        .as_ref()
                        .filter(|(_, at)| wait.ready_since_ms.is_some_and(|r| *at >= r))
                        .map(|(targets, at)| match targets.get(&wait.target) {
                            Some(h) => ElbAnswer {
                                state: h.state.clone(),
                                reason: h.reason.clone(),
                                description: h.description.clone(),
                                at: rfc3339(*at),
                            },
                            None => ElbAnswer {
                                state: "notRegistered".into(),
                                reason: None,
                                description: Some(
                                    "the target group's answer does not list this target".into(),
                                ),
                                at: rfc3339(*at),
                            },
                        });
                    if let Some(msg) = &g.not_found {
                        p.reason = Some("Readygate.TargetGroupNotFound".into());
                        p.message = Some(msg.clone());
                    }
                }
            }
        }
        p
    }
}

fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Runs the controller — leader election, writer, decision loop — until `shutdown` resolves,
/// then gives up the lease.
pub async fn run(
    client: Client,
    cache: Arc<Cache>,
    metrics: Arc<Metrics>,
    args: ControllerArgs,
    board: GatesBoard,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("POD_NAME").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("readygate-{}", std::process::id()));
    let namespace = args
        .lease_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or_else(|| "readygate-system".into());
    let leadership = crate::leader::elect(
        client.clone(),
        crate::leader::Election::new(&args.lease_name, &namespace, &identity),
        metrics.clone(),
    );
    // Only the leader reads pods: they are watched while it leads, and forgotten when it does not.
    let pods = crate::cache::watch_pods_while_leading(
        client.clone(),
        cache.clone(),
        leadership.leading.clone(),
    );

    let budget = Arc::new(Budget::new(args.elbv2_rate, args.elbv2_burst));
    let elb = Elbv2::from_env(budget, metrics.clone())
        .await
        .with_timeout(args.elbv2_timeout);
    let (jobs_tx, jobs_rx) = mpsc::channel(4096);
    let (done_tx, done_rx) = mpsc::channel(4096);
    let writer = Arc::new(Writer::new(
        client,
        leadership.leading.clone(),
        metrics.clone(),
        args.write_timeout,
        identity,
    ));
    let writer_task = tokio::spawn(writer::run(writer, jobs_rx, done_tx, 16));
    tokio::select! {
        () = run_loop(cache, elb, metrics, &args, leadership.leading.clone(), jobs_tx, done_rx, board) => {}
        () = shutdown => {}
    }
    // The loop is gone, so the writer's queue is closed: let queued writes finish, then step down.
    let _ = tokio::time::timeout(args.write_timeout * 2, writer_task).await;
    pods.stop().await;
    leadership.release(Duration::from_secs(5)).await;
    Ok(())
}

/// The decision loop, separate from the wiring so tests can drive it. It publishes its view of
/// the pending gates on `board` when asked (`/debug/gates`).
#[allow(clippy::too_many_arguments)] // the loop's inputs and outputs, each its own channel
pub async fn run_loop(
    cache: Arc<Cache>,
    elb: Elbv2,
    metrics: Arc<Metrics>,
    args: &ControllerArgs,
    mut leader: watch::Receiver<bool>,
    jobs: mpsc::Sender<Job>,
    mut done: mpsc::Receiver<Done>,
    board: GatesBoard,
) {
    let (replies_tx, mut replies) = mpsc::channel(1024);
    let mut c = Controller::new(cache.clone(), metrics, args);
    board.attach();
    let shell = Shell {
        elb,
        replies: replies_tx,
        jobs,
    };
    loop {
        if !*leader.borrow_and_update() {
            c.step_down();
            board.publish(c.view(now_ms(), false));
            tokio::select! {
                r = leader.changed() => if r.is_err() { return },
                () = board.requested() => board.publish(c.view(now_ms(), false)),
            }
            continue;
        }
        let actions = c.pass(now_ms());
        let sleep = actions.wake_at.map_or(Duration::from_secs(3600), |t| {
            Duration::from_millis((t - now_ms()).max(0) as u64)
        });
        shell.execute(&mut c, actions);
        tokio::select! {
            () = board.requested() => board.publish(c.view(now_ms(), true)),
            _ = cache.changed() => {
                // Let a burst of watch events land before the next pass.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Some(r) = replies.recv() => {
                c.reply(r, now_ms());
                while let Ok(r) = replies.try_recv() { c.reply(r, now_ms()); }
            }
            Some(d) = done.recv() => {
                c.written(d, now_ms());
                while let Ok(d) = done.try_recv() { c.written(d, now_ms()); }
            }
            _ = tokio::time::sleep(sleep) => {}
            r = leader.changed() => if r.is_err() { return },
        }
        let actions = c.take_actions();
        shell.execute(&mut c, actions);
    }
}

/// Carries out the core's actions: ELBv2 calls (their answers come back as replies), the
/// account-wide budget hold, and the writer's jobs.
struct Shell {
    elb: Elbv2,
    replies: mpsc::Sender<Reply>,
    jobs: mpsc::Sender<Job>,
}

impl Shell {
    fn execute(&self, c: &mut Controller, actions: Actions) {
        if let Some(pause) = actions.hold_budget {
            // The account's bucket is shared: every call waits, not just this group's.
            self.elb.budget().hold(pause);
        }
        for arns in actions.settings {
            let (elb, tx) = (self.elb.clone(), self.replies.clone());
            tokio::spawn(async move {
                let r = elb.groups_settings(&arns).await;
                let _ = tx.send(Reply::Settings(arns, r)).await;
            });
        }
        for arn in actions.polls {
            let (elb, tx) = (self.elb.clone(), self.replies.clone());
            tokio::spawn(async move {
                let r = elb.target_health(&arn).await;
                let _ = tx.send(Reply::Health(arn, r, now_ms())).await;
            });
        }
        for job in actions.jobs {
            if let Err(e) = self.jobs.try_send(job)
                && let Job::Condition(w, _) = e.into_inner()
            {
                // The writer is saturated: forget it and decide again next pass.
                c.unsent(&w);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Condition, ContainerPort, PortRef, Service};
    use crate::index::Kind;

    fn index() -> Index {
        crate::index::shop_index(false, "web-tgb", "arn:tg/web", PortRef::Name("http".into()))
    }

    fn pod(uid: &str, ip: Option<&str>) -> Pod {
        Pod {
            uid: uid.into(),
            labels: [("app".to_string(), "web".to_string())].into(),
            created: Some(1_000),
            ips: ip.iter().map(|ip| ip.parse().unwrap()).collect(),
            container_ports: vec![ContainerPort {
                name: "http".into(),
                port: 8080,
            }],
            gates: vec!["web-tgb".into()],
            containers_ready_since: Some(1_005),
            ..Pod::default()
        }
    }

    #[test]
    fn plan_resolves_targets_and_skips_pods_without_ip_or_done() {
        let mut ix = index();
        ix.apply_pod("shop", "a", pod("a", Some("127.0.1.1")));
        ix.apply_pod("shop", "b", pod("b", None));
        let mut done = pod("c", Some("127.0.1.3"));
        done.set_condition(
            "web-tgb",
            Condition {
                status: ConditionStatus::True,
                reason: "Elb.Healthy".into(),
                message: String::new(),
                last_transition_time: None,
            },
        );
        ix.apply_pod("shop", "c", done);
        let mut gone = pod("d", Some("127.0.1.4"));
        gone.finished = true;
        ix.apply_pod("shop", "d", gone);
        let work = plan(&ix, 2_000_000, None);
        assert_eq!(work.len(), 1);
        assert_eq!(
            work[0].need,
            Need::Health(Waiting {
                arn: "arn:tg/web".into(),
                target: Target {
                    ip: "127.0.1.1".parse().unwrap(),
                    port: 8080
                },
                ready_since_ms: Some(1_005_000),
                aws_controller: false,
                failsafe_due: false,
            })
        );
    }

    #[test]
    fn missing_binding_or_service_releases_the_gate() {
        let mut ix = index();
        let mut p = pod("a", Some("127.0.1.1"));
        p.gates.push("ghost".into());
        ix.apply_pod("shop", "a", p);
        let work = plan(&ix, 2_000_000, None);
        let ghost = work.iter().find(|w| w.binding == "ghost").unwrap();
        assert!(
            matches!(&ghost.need, Need::Release(d) if d.reason == condition::REASON_BINDING_DELETED && d.status == ConditionStatus::True)
        );
        ix.delete_service("shop", "web");
        let work = plan(&ix, 2_000_000, None);
        let web = work.iter().find(|w| w.binding == "web-tgb").unwrap();
        assert!(
            matches!(&web.need, Need::Release(d) if d.reason == condition::REASON_SERVICE_DELETED)
        );
    }

    #[test]
    fn a_pod_no_binding_selects_any_more_is_released() {
        let mut ix = index();
        ix.apply_pod("shop", "a", pod("a", Some("127.0.1.1")));
        assert!(matches!(
            plan(&ix, 2_000_000, None)[0].need,
            Need::Health(_)
        ));
        let released = |ix: &Index| match &plan(ix, 2_000_000, None)[0].need {
            Need::Release(d) => d.reason.clone(),
            other => panic!("still waiting: {other:?}"),
        };
        // The Service's selector moved to other pods.
        let mut moved = ix.service("shop", "web").unwrap().clone();
        moved.selector = [("app".to_string(), "web-v2".to_string())].into();
        ix.apply_service("shop", "web", moved);
        assert_eq!(released(&ix), "Readygate.NotSelected");
        // Selector back, but the binding now points at a Service that selects other pods.
        let mut ix = index();
        ix.apply_pod("shop", "a", pod("a", Some("127.0.1.1")));
        ix.apply_service(
            "shop",
            "api",
            Service {
                selector: [("app".to_string(), "api".to_string())].into(),
                ports: ix.service("shop", "web").unwrap().ports.clone(),
            },
        );
        let mut b = ix.binding("shop", "web-tgb").unwrap().clone();
        b.service_name = "api".into();
        ix.apply_binding("shop", b);
        assert_eq!(released(&ix), "Readygate.NotSelected");
    }

    #[test]
    fn failsafe_releases_after_the_timeout_only() {
        let mut ix = index();
        ix.apply_pod("shop", "a", pod("a", Some("127.0.1.1")));
        let limit = Some(Duration::from_secs(300));
        assert!(matches!(
            plan(&ix, 1_299_000, limit)[0].need,
            Need::Health(_)
        ));
        assert!(
            matches!(&plan(&ix, 1_300_000, limit)[0].need, Need::Release(d) if d.reason == condition::REASON_FAILSAFE)
        );
    }

    #[test]
    fn on_a_binding_the_aws_controller_reconciles_the_failsafe_releases_nothing() {
        let mut ix = index();
        let mut b = ix.binding("shop", "web-tgb").unwrap().clone();
        b.aws_controller = true;
        ix.apply_binding("shop", b);
        ix.apply_pod("shop", "a", pod("a", Some("127.0.1.1")));
        let limit = Some(Duration::from_secs(300));
        let need = |now| plan(&ix, now, limit).remove(0).need;
        assert!(matches!(need(1_299_000), Need::Health(w) if w.aws_controller && !w.failsafe_due));
        assert!(matches!(need(1_300_000), Need::Health(w) if w.aws_controller && w.failsafe_due));
    }

    #[test]
    fn a_release_the_aws_controller_would_undo_is_left_to_it_once_with_an_event_and_a_metric() {
        const ARN: &str = "arn:tg/web";
        let unused = Health {
            state: "unused".into(),
            reason: Some("Target.NotInUse".into()),
            description: Some(
                "Target group is not configured to receive traffic from the load balancer".into(),
            ),
        };
        let disabled = Health {
            state: "unavailable".into(),
            reason: Some("Target.HealthCheckDisabled".into()),
            description: Some("Health checks are disabled".into()),
        };
        for (health, label) in [(unused, "unused"), (disabled, "unavailable")] {
            for aws_controller in [false, true] {
                let mut ix = index();
                let mut b = ix.binding("shop", "web-tgb").unwrap().clone();
                b.aws_controller = aws_controller;
                ix.apply_binding("shop", b);
                ix.apply_pod("shop", "a", pod("a", Some("127.0.1.1")));
                let (mut c, cache) = core(ix);
                let t0 = 2_000_000;
                pass_at(&mut c, &cache, t0);
                // Attached to no load balancer.
                reply_nlb_settings(&mut c, t0, false);
                assert_eq!(pass_at(&mut c, &cache, t0).polls, [ARN.to_string()]);
                let answer: HashMap<_, _> = [(target_a(), health.clone())].into();
                c.reply(
                    Reply::Health(ARN.into(), Ok(answer.clone()), t0 + 100),
                    t0 + 100,
                );
                let a = pass_at(&mut c, &cache, t0 + 100);
                let written = conditions(&a);
                assert_eq!(written.len(), 1, "{label}");
                let left = |a: &Actions| {
                    a.jobs
                        .iter()
                        .filter(|j| matches!(j, Job::Event(e) if e.warning && e.reason == "GateLeftToAwsLoadBalancerController"))
                        .count()
                };
                let series = format!(
                    "readygate_gate_releases_deferred_total{{reason=\"{label}\"}} {}",
                    u8::from(aws_controller)
                );
                if aws_controller {
                    // What the AWS controller writes from the same answer: False with ELB's
                    // reason, so neither writer rewrites the other.
                    assert_eq!(
                        (
                            written[0].condition.status,
                            written[0].condition.reason.as_str(),
                            written[0].condition.message.as_str()
                        ),
                        (
                            ConditionStatus::False,
                            health.reason.as_deref().unwrap(),
                            health.description.as_deref().unwrap()
                        ),
                        "{label}"
                    );
                    assert_eq!(left(&a), 1, "{label}");
                    // Once per gate, not on every answer.
                    c.reply(
                        Reply::Health(ARN.into(), Ok(answer), t0 + 2_100),
                        t0 + 2_100,
                    );
                    assert_eq!(left(&pass_at(&mut c, &cache, t0 + 2_100)), 0, "{label}");
                } else {
                    assert_eq!(
                        written[0].condition.status,
                        ConditionStatus::True,
                        "{label}"
                    );
                    assert_eq!(left(&a), 0, "{label}");
                }
                let m = c.metrics.encode();
                assert!(m.contains(&series), "{label}: {m}");
            }
        }
    }

    /// The condition of a gate ELB released at `ms`.
    fn healthy_since(ms: i64) -> Condition {
        Condition {
            status: ConditionStatus::True,
            reason: "Elb.Healthy".into(),
            message: "Target is healthy".into(),
            last_transition_time: Some(rfc3339(ms)),
        }
    }

    #[test]
    fn a_true_gate_follows_elb_again_after_its_containers_restart() {
        let mut ix = index();
        let mut p = pod("a", Some("127.0.1.1"));
        p.set_condition("web-tgb", healthy_since(1_100_000));
        ix.apply_pod("shop", "a", p.clone());
        // Containers ready before the gate turned True: nothing to do.
        assert!(plan(&ix, 2_000_000, None).is_empty());
        // A container restarted and is ready again after the gate turned True.
        p.containers_ready_since = Some(1_200);
        ix.apply_pod("shop", "a", p);
        let work = plan(&ix, 2_000_000, None);
        assert_eq!(work.len(), 1, "the gate must be checked again");
        assert!(
            matches!(&work[0].need, Need::Health(w) if w.ready_since_ms == Some(1_200_000)),
            "{:?}",
            work[0].need
        );
    }

    /// The core on a virtual clock: a synced cache holding `ix`, default flags.
    fn core(ix: Index) -> (Controller, Arc<Cache>) {
        use clap::Parser;
        let cache = Arc::new(Cache::default());
        {
            let mut guard = cache.write();
            *guard = ix;
            for kind in [Kind::Binding, Kind::Service, Kind::Pod, Kind::Namespace] {
                guard.mark_synced(kind);
            }
        }
        let cli = crate::cli::Cli::parse_from(["readygate", "serve"]);
        let crate::cli::Command::Serve(serve) = cli.command else {
            unreachable!()
        };
        let c = Controller::new(cache.clone(), Arc::new(Metrics::new()), &serve.controller);
        (c, cache)
    }

    /// One pass at `now`, with its condition writes applied as the API server and watch would.
    fn pass_at(c: &mut Controller, cache: &Cache, now: i64) -> Actions {
        let actions = c.pass(now);
        for job in &actions.jobs {
            if let Job::Condition(w, _) = job {
                let mut ix = cache.write();
                let mut p = ix.pods().find(|(_, n, _)| *n == w.pod).unwrap().2.clone();
                p.set_condition(&w.binding, w.condition.clone());
                ix.apply_pod(&w.namespace, &w.pod, p);
            }
        }
        actions
    }

    /// DescribeTargetGroups' answer for the test group, as LBC sets up an NLB (10 s × 3).
    fn reply_nlb_settings(c: &mut Controller, at: i64, attached: bool) {
        let nlb = GroupSettings {
            interval_seconds: 10,
            healthy_threshold: 3,
            attached,
        };
        c.reply(
            Reply::Settings(
                vec!["arn:tg/web".into()],
                Ok([("arn:tg/web".to_string(), nlb)].into()),
            ),
            at,
        );
    }

    /// The target of pod `a` (127.0.1.1) on the test binding.
    fn target_a() -> Target {
        Target {
            ip: "127.0.1.1".parse().unwrap(),
            port: 8080,
        }
    }

    #[test]
    fn polls_back_off_while_nothing_changes_and_settings_are_read_again_in_virtual_time() {
        const ARN: &str = "arn:tg/web";
        let mut ix = index();
        ix.apply_pod("shop", "a", pod("a", Some("127.0.1.1")));
        let (mut c, cache) = core(ix);
        let t0 = 2_000_000;
        let first = pass_at(&mut c, &cache, t0);
        assert_eq!(first.settings, [vec![ARN.to_string()]]);
        assert!(first.polls.is_empty(), "no poll before the settings");
        reply_nlb_settings(&mut c, t0, true);
        // Ready long ago: the first poll is due at once; then the same empty answer each time.
        let mut now = t0;
        let mut gaps = Vec::new();
        for _ in 0..7 {
            let a = pass_at(&mut c, &cache, now);
            assert_eq!(a.polls, [ARN.to_string()], "at {now}");
            c.reply(Reply::Health(ARN.into(), Ok(HashMap::new()), now), now);
            let a = pass_at(&mut c, &cache, now);
            assert!(a.polls.is_empty());
            let next = a.wake_at.unwrap();
            gaps.push(next - now);
            now = next;
        }
        assert_eq!(gaps, [2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000]);
        // A new pending target: back to the short interval.
        let mut b = pod("b", Some("127.0.1.2"));
        b.containers_ready_since = Some(1_010);
        cache.write().apply_pod("shop", "b", b);
        let a = pass_at(&mut c, &cache, now - 29_000);
        assert_eq!(a.wake_at, Some(now - 30_000 + 2_000));
        // Past the settings' TTL (5 min by default) they are read again, beside the polls.
        let later = t0 + 300_000;
        let a = pass_at(&mut c, &cache, later);
        assert_eq!(a.settings, [vec![ARN.to_string()]]);
        assert_eq!(
            a.polls,
            [ARN.to_string()],
            "polls go on with the old settings"
        );
    }

    #[test]
    fn the_view_names_each_pending_gates_target_last_answer_and_next_poll() {
        const ARN: &str = "arn:tg/web";
        let mut ix = index();
        ix.apply_pod("shop", "a", pod("a", Some("127.0.1.1")));
        let (mut c, cache) = core(ix);
        let t0 = 2_000_000_000;
        pass_at(&mut c, &cache, t0);
        // Before any answer: waiting on its target, nothing from ELB yet.
        let v = c.view(t0, true);
        assert!(v.leader && v.controller);
        assert_eq!(v.gates.len(), 1);
        let g = &v.gates[0];
        assert_eq!(
            (g.pod.as_str(), g.decision.as_str(), g.target.as_deref()),
            ("a", "waiting", Some("127.0.1.1:8080"))
        );
        assert!(g.elb.is_none());
        reply_nlb_settings(&mut c, t0, true);
        assert_eq!(pass_at(&mut c, &cache, t0).polls, [ARN.to_string()]);
        let initial = Health {
            state: "initial".into(),
            reason: Some("Elb.InitialHealthChecking".into()),
            description: Some("Initial health checks in progress".into()),
        };
        let target = target_a();
        c.reply(
            Reply::Health(ARN.into(), Ok([(target, initial)].into()), t0 + 100),
            t0 + 100,
        );
        let a = pass_at(&mut c, &cache, t0 + 100);
        let g = c.view(t0 + 100, true).gates.remove(0);
        let elb = g.elb.expect("the answer");
        assert_eq!(
            (elb.state.as_str(), elb.reason.as_deref()),
            ("initial", Some("Elb.InitialHealthChecking"))
        );
        assert_eq!(elb.at, rfc3339(t0 + 100));
        assert_eq!(g.next_poll_at, a.wake_at.map(rfc3339));
        assert!(g.next_poll_at.is_some() && !g.poll_in_flight);
        // A replica that does not lead serves no gates.
        assert!(c.view(t0 + 100, false).gates.is_empty());
    }

    fn conditions(a: &Actions) -> Vec<&ConditionWrite> {
        a.jobs
            .iter()
            .filter_map(|j| match j {
                Job::Condition(w, _) => Some(w),
                Job::Event(_) => None,
            })
            .collect()
    }

    #[test]
    fn not_in_use_in_an_attached_group_stays_false_with_one_warning_in_virtual_time() {
        const ARN: &str = "arn:tg/web";
        let not_in_use = Health {
            state: "unused".into(),
            reason: Some("Target.NotInUse".into()),
            description: Some("Target is in an Availability Zone that is not enabled".into()),
        };
        for attached in [true, false] {
            let mut ix = index();
            ix.apply_pod("shop", "a", pod("a", Some("127.0.1.1")));
            let (mut c, cache) = core(ix);
            let t0 = 2_000_000;
            pass_at(&mut c, &cache, t0);
            reply_nlb_settings(&mut c, t0, attached);
            assert_eq!(pass_at(&mut c, &cache, t0).polls, [ARN.to_string()]);
            let target = target_a();
            let answer: HashMap<_, _> = [(target, not_in_use.clone())].into();
            c.reply(
                Reply::Health(ARN.into(), Ok(answer.clone()), t0 + 100),
                t0 + 100,
            );
            let a = pass_at(&mut c, &cache, t0 + 100);
            let written = conditions(&a);
            assert_eq!(written.len(), 1);
            assert_eq!(written[0].condition.reason, "Target.NotInUse");
            let warned = a
                .jobs
                .iter()
                .any(|j| matches!(j, Job::Event(e) if e.warning && e.reason == "TargetNotInUse"));
            if attached {
                assert_eq!(written[0].condition.status, ConditionStatus::False);
                assert!(warned);
                // Once per gate, not on every answer.
                c.reply(
                    Reply::Health(ARN.into(), Ok(answer), t0 + 2_100),
                    t0 + 2_100,
                );
                assert!(pass_at(&mut c, &cache, t0 + 2_100).jobs.is_empty());
            } else {
                assert_eq!(written[0].condition.status, ConditionStatus::True);
                assert!(!warned);
            }
        }
    }

    #[test]
    fn a_replica_that_steps_down_reports_no_leader_gauges() {
        let mut ix = index();
        ix.apply_pod("shop", "a", pod("a", Some("127.0.1.1")));
        let (mut c, cache) = core(ix);
        pass_at(&mut c, &cache, 2_000_000);
        c.metrics.pods_missing_gates.set(3);
        assert!(
            c.metrics
                .encode()
                .contains("readygate_gated_pods_pending 1")
        );
        c.step_down();
        let m = c.metrics.encode();
        assert!(m.contains("readygate_gated_pods_pending 0"), "{m}");
        assert!(m.contains("readygate_pods_missing_gates 0"), "{m}");
    }

    #[test]
    fn healthy_to_written_is_observed_even_when_the_watch_outruns_the_writer() {
        const ARN: &str = "arn:tg/web";
        let mut ix = index();
        ix.apply_pod("shop", "a", pod("a", Some("127.0.1.1")));
        let (mut c, cache) = core(ix);
        let t0 = 2_000_000;
        pass_at(&mut c, &cache, t0);
        reply_nlb_settings(&mut c, t0, true);
        assert_eq!(pass_at(&mut c, &cache, t0).polls, [ARN.to_string()]);
        let healthy = Health {
            state: "healthy".into(),
            reason: None,
            description: None,
        };
        let target = target_a();
        c.reply(
            Reply::Health(ARN.into(), Ok([(target, healthy)].into()), t0 + 100),
            t0 + 100,
        );
        // The write goes out and the API server applies it; the watch brings the True
        // condition back and another pass runs before the writer reports.
        let a = pass_at(&mut c, &cache, t0 + 100);
        let write = conditions(&a)[0].clone();
        assert_eq!(write.condition.status, ConditionStatus::True);
        c.pass(t0 + 150);
        c.written(
            Done {
                write,
                outcome: Outcome::Written,
            },
            t0 + 400,
        );
        let metrics = c.metrics.encode();
        assert!(
            metrics.contains("readygate_healthy_to_written_seconds_count 1"),
            "{metrics}"
        );
        assert!(metrics.contains("readygate_healthy_to_written_seconds_sum 0.3"));
    }

    #[test]
    fn a_restart_turns_a_true_gate_false_at_once_then_it_follows_elb_in_virtual_time() {
        const ARN: &str = "arn:tg/web";
        let mut ix = index();
        let mut p = pod("a", Some("127.0.1.1"));
        p.set_condition("web-tgb", healthy_since(1_100_000));
        p.containers_ready_since = Some(1_200);
        ix.apply_pod("shop", "a", p);
        let (mut c, cache) = core(ix);
        let t0 = 1_201_000;
        let a = pass_at(&mut c, &cache, t0);
        let written = conditions(&a);
        assert_eq!(written.len(), 1, "{:?}", a.jobs);
        assert_eq!(written[0].condition.status, ConditionStatus::False);
        assert_eq!(written[0].condition.reason, condition::REASON_REGISTRATION);
        assert_eq!(written[0].condition.last_transition_time, Some(rfc3339(t0)));
        // ELB says initial, then healthy: the gate follows, and is True again only then.
        reply_nlb_settings(&mut c, t0, true);
        let target = target_a();
        for (at, state, reason, status) in [
            (
                1_230_000,
                "initial",
                Some("Elb.InitialHealthChecking"),
                ConditionStatus::False,
            ),
            (1_232_000, "healthy", None, ConditionStatus::True),
        ] {
            assert_eq!(
                pass_at(&mut c, &cache, at).polls,
                [ARN.to_string()],
                "at {at}"
            );
            let h = Health {
                state: state.into(),
                reason: reason.map(Into::into),
                description: None,
            };
            c.reply(
                Reply::Health(ARN.into(), Ok([(target.clone(), h)].into()), at),
                at,
            );
            let a = pass_at(&mut c, &cache, at);
            assert_eq!(conditions(&a)[0].condition.status, status, "at {at}");
        }
        // Settled: nothing more to write or poll.
        let a = pass_at(&mut c, &cache, 1_240_000);
        assert!(
            a.jobs.is_empty() && a.polls.is_empty() && a.wake_at.is_none(),
            "{a:?}"
        );
    }

    #[test]
    fn unresolvable_port_holds_the_gate_false() {
        let mut ix = index();
        let mut p = pod("a", Some("127.0.1.1"));
        p.container_ports.clear();
        ix.apply_pod("shop", "a", p);
        assert!(
            matches!(&plan(&ix, 2_000_000, None)[0].need, Need::Hold(d) if d.status == ConditionStatus::False)
        );
    }

    /// Incremental passes decide exactly what passes that plan every pod decide: the same
    /// polls, settings reads, writes, events and wake-up times, over random pod changes, ELB
    /// answers, writer outcomes, binding and Service changes and the passing of time.
    mod incremental {
        use super::*;
        use crate::domain::{Binding, ServicePort};
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};

        const APPS: [&str; 3] = ["a", "b", "c"];

        fn service(app: &str) -> Service {
            Service {
                selector: [("app".to_string(), app.to_string())].into(),
                ports: vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    target_port: Some(PortRef::Name("http".into())),
                }],
            }
        }

        fn binding(name: &str, svc: &str, arn: &str) -> Binding {
            Binding {
                name: name.into(),
                target_group_arn: arn.into(),
                target_type: TargetType::Ip,
                service_name: svc.into(),
                service_port: PortRef::Number(80),
                ip_family: Default::default(),
                aws_controller: false,
            }
        }

        /// Two namespaces, each with three Services with a binding each on groups a, b, c
        /// (shared by both namespaces), and a second binding on Service a that shares group b.
        fn start() -> Index {
            let mut ix = Index::default();
            for ns in NAMESPACES {
                for app in APPS {
                    ix.apply_service(ns, app, service(app));
                    ix.apply_binding(
                        ns,
                        binding(&format!("tgb-{app}"), app, &format!("arn:tg/{app}")),
                    );
                }
                ix.apply_binding(ns, binding("tgb-a2", "a", "arn:tg/b"));
            }
            ix
        }

        const NAMESPACES: [&str; 2] = ["shop", "depot"];

        /// Pods of even slots live in `shop`, of odd ones in `depot`.
        fn ns_of(slot: usize) -> &'static str {
            NAMESPACES[slot % 2]
        }

        fn random_pod(rng: &mut StdRng, slot: usize, now: i64, generation: u32) -> Pod {
            let app = APPS[rng.random_range(0..APPS.len())];
            let mut gates = vec![format!("tgb-{app}")];
            if app == "a" && rng.random_bool(0.5) {
                gates.push("tgb-a2".into());
            }
            if rng.random_bool(0.1) {
                gates.push("ghost".into());
            }
            let created = now / 1000 - rng.random_range(0..400);
            Pod {
                uid: format!("uid-{slot}-{generation}"),
                labels: vec![("app".to_string(), app.to_string())],
                created: Some(created),
                finished: rng.random_bool(0.05),
                ips: if rng.random_bool(0.85) {
                    vec![format!("127.0.2.{slot}").parse().unwrap()]
                } else {
                    vec![]
                },
                container_ports: vec![ContainerPort {
                    name: "http".into(),
                    port: 8080,
                }],
                gates,
                conditions: vec![],
                containers_ready_since: rng
                    .random_bool(0.8)
                    .then(|| created + rng.random_range(0..20)),
            }
        }

        fn random_health(rng: &mut StdRng) -> Health {
            let (state, reason) = [
                ("healthy", None),
                ("initial", Some("Elb.InitialHealthChecking")),
                ("initial", Some("Elb.RegistrationInProgress")),
                ("unhealthy", Some("Target.FailedHealthChecks")),
                ("unused", Some("Target.NotInUse")),
                ("draining", Some("Target.DeregistrationInProgress")),
            ][rng.random_range(0..6)];
            Health {
                state: state.into(),
                reason: reason.map(str::to_string),
                description: None,
            }
        }

        /// The actions, in an order that does not depend on hash order.
        fn normal(a: &Actions) -> (Vec<String>, Vec<String>, Vec<String>, String) {
            let mut polls = a.polls.clone();
            polls.sort();
            let mut settings: Vec<String> = a.settings.iter().flatten().cloned().collect();
            settings.sort();
            let mut jobs: Vec<String> = a.jobs.iter().map(|j| format!("{j:?}")).collect();
            jobs.sort();
            (
                polls,
                settings,
                jobs,
                format!("{:?} {:?}", a.hold_budget, a.wake_at),
            )
        }

        fn view(c: &Controller, now: i64) -> Vec<String> {
            let mut gates: Vec<String> = c
                .view(now, true)
                .gates
                .iter()
                .map(|g| format!("{g:?}"))
                .collect();
            gates.sort();
            gates
        }

        fn run(seed: u64, steps: usize) -> Passes {
            let mut rng = StdRng::seed_from_u64(seed);
            let (mut inc, inc_cache) = core(start());
            let (full, full_cache) = core(start());
            let mut full = full.always_full();
            let caches = [inc_cache.clone(), full_cache.clone()];
            let mut now = 2_000_000_000;
            let mut generation = 0;
            let mut last_writes: Vec<ConditionWrite> = Vec::new();
            for step in 0..steps {
                let both = |f: &dyn Fn(&mut Index)| caches.iter().for_each(|c| f(&mut c.write()));
                match rng.random_range(0..100) {
                    0..30 => {
                        let slot = rng.random_range(0..12);
                        generation += 1;
                        let mut p = random_pod(&mut rng, slot, now, generation);
                        // Most changes keep the pod (same uid, conditions kept).
                        if let Some(old) = inc_cache.read().pod(ns_of(slot), &format!("p{slot}"))
                            && rng.random_bool(0.7)
                        {
                            p.uid = old.uid.clone();
                            p.conditions = old.conditions.clone();
                            p.gates = old.gates.clone();
                            p.labels = old.labels.clone();
                        }
                        both(&|ix| ix.apply_pod(ns_of(slot), &format!("p{slot}"), p.clone()));
                    }
                    30..37 => {
                        let slot = rng.random_range(0..12);
                        both(&|ix| ix.delete_pod(ns_of(slot), &format!("p{slot}")));
                    }
                    37..55 => {
                        let group = APPS[rng.random_range(0..APPS.len())];
                        let arn = format!("arn:tg/{group}");
                        let mut targets = HashMap::new();
                        for slot in 0..12 {
                            if rng.random_bool(0.6) {
                                targets.insert(
                                    Target {
                                        ip: format!("127.0.2.{slot}").parse().unwrap(),
                                        port: 8080,
                                    },
                                    random_health(&mut rng),
                                );
                            }
                        }
                        let at = now - rng.random_range(0..500);
                        for c in [&mut inc, &mut full] {
                            c.reply(Reply::Health(arn.clone(), Ok(targets.clone()), at), now);
                        }
                    }
                    55..63 => {
                        let group = APPS[rng.random_range(0..APPS.len())];
                        let arn = format!("arn:tg/{group}");
                        let settings = GroupSettings {
                            interval_seconds: rng.random_range(1..=10),
                            healthy_threshold: rng.random_range(2..=5),
                            attached: rng.random_bool(0.8),
                        };
                        for c in [&mut inc, &mut full] {
                            c.reply(
                                Reply::Settings(
                                    vec![arn.clone()],
                                    Ok([(arn.clone(), settings)].into()),
                                ),
                                now,
                            );
                        }
                    }
                    63..67 => {
                        // The shape changes: a Service's selector moves, or a binding's group.
                        let app = APPS[rng.random_range(0..APPS.len())];
                        let ns = NAMESPACES[rng.random_range(0..2)];
                        if rng.random_bool(0.5) {
                            let target = APPS[rng.random_range(0..APPS.len())];
                            both(&|ix| ix.apply_service(ns, app, service(target)));
                        } else {
                            let group = APPS[rng.random_range(0..APPS.len())];
                            both(&|ix| {
                                ix.apply_binding(
                                    ns,
                                    binding(&format!("tgb-{app}"), app, &format!("arn:tg/{group}")),
                                )
                            });
                        }
                    }
                    67..80 => {
                        // The writer reports on the last pass's writes.
                        for w in std::mem::take(&mut last_writes) {
                            let outcome = if rng.random_bool(0.8) {
                                both(&|ix| {
                                    if let Some(mut p) = ix.pod(&w.namespace, &w.pod).cloned()
                                        && p.uid == w.uid
                                    {
                                        p.set_condition(&w.binding, w.condition.clone());
                                        ix.apply_pod(&w.namespace, &w.pod, p);
                                    }
                                });
                                Outcome::Written
                            } else {
                                Outcome::Conflict
                            };
                            for c in [&mut inc, &mut full] {
                                let done = Done {
                                    write: w.clone(),
                                    outcome,
                                };
                                c.written(done, now);
                            }
                        }
                    }
                    _ => now += rng.random_range(0..12_000),
                }
                let (a, b) = (inc.pass(now), full.pass(now));
                assert_eq!(
                    normal(&a),
                    normal(&b),
                    "seed {seed} step {step}: incremental (left) and full (right) passes differ"
                );
                assert_eq!(view(&inc, now), view(&full, now), "seed {seed} step {step}");
                last_writes.extend(a.jobs.iter().filter_map(|j| match j {
                    Job::Condition(w, _) => Some(w.clone()),
                    Job::Event(_) => None,
                }));
            }
            inc.passes()
        }

        #[test]
        fn a_pass_plans_the_pods_that_changed_and_every_pod_only_when_the_shape_did() {
            let mut rng = StdRng::seed_from_u64(7);
            let mut ix = start();
            let now = 2_000_000_000;
            for slot in 0..12 {
                let mut p = random_pod(&mut rng, slot, now, 0);
                (p.finished, p.ips) = (false, vec![format!("127.0.2.{slot}").parse().unwrap()]);
                p.labels = vec![("app".to_string(), APPS[slot % 3].to_string())];
                p.gates = vec![format!("tgb-{}", APPS[slot % 3])];
                ix.apply_pod("shop", &format!("p{slot}"), p);
            }
            let (mut c, cache) = core(ix);
            let planned = |c: &mut Controller, now: i64| {
                let before = c.passes().pods_planned;
                c.pass(now);
                c.passes().pods_planned - before
            };
            assert_eq!(planned(&mut c, now), 12, "the first pass plans every pod");
            assert_eq!(planned(&mut c, now + 1), 0, "nothing changed");
            // One pod's status changes: only that pod.
            let mut p = cache.read().pod("shop", "p4").unwrap().clone();
            p.containers_ready_since = p.containers_ready_since.map(|t| t + 1);
            cache.write().apply_pod("shop", "p4", p.clone());
            assert_eq!(planned(&mut c, now + 2), 1);
            // The same pod again, unchanged: nothing.
            cache.write().apply_pod("shop", "p4", p);
            assert_eq!(planned(&mut c, now + 3), 0);
            // ELB answers about group b: its four pods.
            c.reply(
                Reply::Health("arn:tg/b".into(), Ok(HashMap::new()), now + 4),
                now + 4,
            );
            assert_eq!(planned(&mut c, now + 4), 4);
            // A binding changes: the pods of its namespace.
            cache
                .write()
                .apply_binding("shop", binding("tgb-c", "c", "arn:tg/other"));
            assert_eq!(planned(&mut c, now + 5), 12, "every pod of the namespace");
            // A Service of another namespace changes: none of these pods.
            cache.write().apply_service("depot", "a", service("b"));
            assert_eq!(planned(&mut c, now + 6), 0);
            let passes = c.passes();
            assert_eq!((passes.full, passes.incremental), (1, 6));
        }

        #[test]
        fn incremental_passes_decide_what_full_passes_decide() {
            let mut total = Passes::default();
            for seed in 0..40 {
                let p = run(seed, 300);
                total.full += p.full;
                total.incremental += p.incremental;
            }
            // The comparison means something only if most passes were incremental.
            assert!(
                total.incremental > 4 * total.full,
                "incremental {} vs full {}",
                total.incremental,
                total.full
            );
        }
    }
}
