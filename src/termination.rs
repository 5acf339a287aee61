//! Drain-aware termination: the preStop sleep that keeps a deleted pod serving while the load
//! balancer stops sending it new requests, and the grace period that keeps the application's
//! own shutdown time.
//!
//! After a pod is deleted, the AWS Load Balancer Controller takes a second or more to
//! deregister its target, and ELB keeps routing new requests to it for seconds more (an NLB
//! 10–30 s); a pod that stops listening at SIGTERM loses them. Pure functions: (pod annotation,
//! namespace annotation, flag) → the sleep and where it came from; (raw pod JSON, sleep) → JSON
//! Patch operations, built from the raw JSON like the gates so unknown fields pass through.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use json_patch::jsonptr::{PointerBuf, Token};
use json_patch::{AddOperation, Patch, PatchOperation};
use serde_json::{Value, json};

use crate::gates::Injection;

/// Annotation on a namespace or a pod that sets the preStop sleep: a duration, or `off`.
pub const PRESTOP_SLEEP_ANNOTATION: &str = "readygate.io/prestop-sleep";
/// Kubernetes' terminationGracePeriodSeconds when the pod sets none.
pub const DEFAULT_GRACE_SECONDS: i64 = 30;
/// The longest sleep accepted: more is a typo, not a drain.
pub const MAX_PRESTOP_SLEEP: Duration = Duration::from_secs(3600);

/// The preStop sleep for a pod: off, or whole seconds (the sleep action takes no fractions).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PrestopSleep {
    #[default]
    Off,
    Seconds(NonZeroU32),
}

impl PrestopSleep {
    /// Whole seconds, a sub-second remainder rounded up so the pod sleeps at least as long as
    /// asked; zero is off.
    pub fn from_duration(d: Duration) -> Result<Self, InvalidSleep> {
        if d > MAX_PRESTOP_SLEEP {
            return Err(InvalidSleep::TooLong(d));
        }
        let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        // At most 3600 here, so the conversion cannot fail.
        let secs = u32::try_from(secs).map_err(|_| InvalidSleep::TooLong(d))?;
        Ok(NonZeroU32::new(secs).map_or(Self::Off, Self::Seconds))
    }

    pub fn seconds(self) -> Option<NonZeroU32> {
        match self {
            Self::Off => None,
            Self::Seconds(s) => Some(s),
        }
    }
}

impl FromStr for PrestopSleep {
    type Err = InvalidSleep;

    fn from_str(s: &str) -> Result<Self, InvalidSleep> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("off") {
            return Ok(Self::Off);
        }
        let d =
            humantime::parse_duration(s).map_err(|e| InvalidSleep::Unparsable(e.to_string()))?;
        Self::from_duration(d)
    }
}

impl fmt::Display for PrestopSleep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Off => f.write_str("off"),
            Self::Seconds(s) => write!(f, "{s}s"),
        }
    }
}

/// Why a preStop sleep value was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSleep {
    #[error("not a duration or `off` ({0})")]
    Unparsable(String),
    #[error("{} is longer than the 1h limit", humantime::format_duration(*.0))]
    TooLong(Duration),
}

/// Where the setting that applies to a pod came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    Pod,
    Namespace,
    Flag,
}

impl Source {
    /// Where an annotation sets the sleep, the first found winning: the only sources an
    /// [`InvalidAnnotation`] names.
    pub const ANNOTATIONS: [Source; 2] = [Source::Pod, Source::Namespace];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pod => "pod",
            Self::Namespace => "namespace",
            Self::Flag => "flag",
        }
    }
}

/// The sleep that applies to a pod, and where it was set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SleepSetting {
    pub sleep: PrestopSleep,
    pub source: Source,
}

/// The annotation that applies to a pod does not parse. The pod then gets no sleep: a typo in
/// an annotation must never block pod creation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {PRESTOP_SLEEP_ANNOTATION} annotation on the {} ({value:?}): {error}", .on.as_str())]
pub struct InvalidAnnotation {
    /// `Pod` or `Namespace` (the flag is checked at start).
    pub on: Source,
    pub value: String,
    pub error: InvalidSleep,
}

/// The setting for a pod: its own annotation, else its namespace's, else the flag.
pub fn resolve(
    pod: Option<&str>,
    namespace: Option<&str>,
    flag: PrestopSleep,
) -> Result<SleepSetting, InvalidAnnotation> {
    let found = Source::ANNOTATIONS
        .into_iter()
        .zip([pod, namespace])
        .find_map(|(on, value)| Some((on, value?)));
    let Some((on, value)) = found else {
        return Ok(SleepSetting {
            sleep: flag,
            source: Source::Flag,
        });
    };
    match value.parse() {
        Ok(sleep) => Ok(SleepSetting { sleep, source: on }),
        Err(error) => Err(InvalidAnnotation {
            on,
            value: value.to_string(),
            error,
        }),
    }
}

/// What the preStop injection adds to one pod.
#[derive(Clone, Debug, PartialEq)]
pub struct PrestopInjection {
    pub ops: Vec<PatchOperation>,
    /// The containers that got the sleep.
    pub containers: Vec<String>,
    /// terminationGracePeriodSeconds after the patch.
    pub grace_seconds: i64,
}

/// The operations that give every regular container of `pod` (raw JSON) without a preStop hook
/// of its own the sleep, and extend the grace period by it; `None` when the pod needs no gate
/// (`wanted` is empty: it is not behind a load balancer of ours), the sleep is off, or every
/// container has its own preStop.
///
/// Init containers are left alone: Kubernetes stops native sidecars only after the regular
/// containers exit. The grace period grows only when a container got the sleep in this call,
/// so a second pass over an already patched pod changes nothing.
pub fn prestop_patch(
    pod: &Value,
    wanted: &[String],
    sleep: PrestopSleep,
) -> Option<PrestopInjection> {
    if wanted.is_empty() {
        return None;
    }
    let seconds = sleep.seconds()?;
    let spec = pod.get("spec")?.as_object()?;
    let hook = json!({ "sleep": { "seconds": seconds.get() } });
    let mut ops = Vec::new();
    let mut containers = Vec::new();
    for (i, container) in spec.get("containers")?.as_array()?.iter().enumerate() {
        let Some(container) = container.as_object() else {
            continue;
        };
        let at = |tail: &[&'static str]| {
            let head = [Token::new("spec"), Token::new("containers"), Token::from(i)];
            PointerBuf::from_tokens(head.into_iter().chain(tail.iter().map(|t| Token::new(*t))))
        };
        // `add` sets a member whether it is absent or null (RFC 6902 §4.1).
        let op = match container.get("lifecycle") {
            None | Some(Value::Null) => AddOperation {
                path: at(&["lifecycle"]),
                value: json!({ "preStop": hook }),
            },
            Some(Value::Object(lifecycle)) => match lifecycle.get("preStop") {
                None | Some(Value::Null) => AddOperation {
                    path: at(&["lifecycle", "preStop"]),
                    value: hook.clone(),
                },
                // The container drains in its own way.
                Some(_) => continue,
            },
            // Not an object: the API server rejects such a pod anyway.
            Some(_) => continue,
        };
        ops.push(PatchOperation::Add(op));
        containers.push(
            container
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        );
    }
    if ops.is_empty() {
        return None;
    }
    // The application keeps its whole shutdown time after the sleep.
    let own = spec
        .get("terminationGracePeriodSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(DEFAULT_GRACE_SECONDS);
    let grace_seconds = own.saturating_add(i64::from(seconds.get()));
    ops.push(PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(["spec", "terminationGracePeriodSeconds"]),
        value: json!(grace_seconds),
    }));
    Some(PrestopInjection {
        ops,
        containers,
        grace_seconds,
    })
}

/// The one JSON Patch an admission answers with: the gate operations first, then the preStop
/// ones; `None` when neither adds anything.
pub fn admission_patch(
    gates: Option<&Injection>,
    prestop: Option<&PrestopInjection>,
) -> Option<Patch> {
    let ops: Vec<PatchOperation> = gates
        .into_iter()
        .flat_map(|g| g.patch.0.iter().cloned())
        .chain(prestop.into_iter().flat_map(|p| p.ops.iter().cloned()))
        .collect();
    (!ops.is_empty()).then_some(Patch(ops))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gates::gate_patch;

    const GATE: &str = "target-health.elbv2.k8s.aws/web-tgb";

    fn secs(n: u32) -> PrestopSleep {
        PrestopSleep::Seconds(NonZeroU32::new(n).unwrap())
    }

    /// A pod of a Deployment behind `web-tgb`, with a native sidecar and a plain init container.
    fn pod(containers: Value) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": { "generateName": "web-7d4b9c-", "namespace": "shop", "labels": { "app": "web" } },
            "spec": {
                "containers": containers,
                "initContainers": [
                    { "name": "migrate", "image": "migrate:1" },
                    { "name": "proxy", "image": "envoy", "restartPolicy": "Always" }
                ]
            }
        })
    }

    fn web() -> Value {
        json!({ "name": "web", "image": "nginx" })
    }

    fn with_grace(mut pod: Value, grace: i64) -> Value {
        pod["spec"]["terminationGracePeriodSeconds"] = json!(grace);
        pod
    }

    fn annotate(mut pod: Value, value: &str) -> Value {
        pod["metadata"]["annotations"] = json!({ PRESTOP_SLEEP_ANNOTATION: value });
        pod
    }

    /// What the webhook does for a pod that needs `wanted` gates: resolve the sleep (an invalid
    /// annotation is off), build the gate and preStop operations into one patch, apply it.
    fn admit_wanting(
        pod: &Value,
        wanted: &[String],
        namespace: Option<&str>,
        flag: PrestopSleep,
    ) -> (Result<SleepSetting, InvalidAnnotation>, Value) {
        let annotation = pod["metadata"]["annotations"][PRESTOP_SLEEP_ANNOTATION].as_str();
        let setting = resolve(annotation, namespace, flag);
        let sleep = setting.as_ref().map_or(PrestopSleep::Off, |s| s.sleep);
        let gates = gate_patch(pod, wanted);
        let prestop = prestop_patch(pod, wanted, sleep);
        let mut out = pod.clone();
        if let Some(patch) = admission_patch(gates.as_ref(), prestop.as_ref()) {
            json_patch::patch(&mut out, &patch).expect("patch applies");
        }
        (setting, out)
    }

    fn admit(
        pod: &Value,
        namespace: Option<&str>,
        flag: PrestopSleep,
    ) -> (Result<SleepSetting, InvalidAnnotation>, Value) {
        admit_wanting(pod, &[GATE.to_string()], namespace, flag)
    }

    /// `pod` with the gate, as the gates alone would leave it.
    fn gated(pod: &Value) -> Value {
        let mut p = pod.clone();
        p["spec"]["readinessGates"] = json!([{ "conditionType": GATE }]);
        p
    }

    fn prestop_of(pod: &Value, container: usize) -> &Value {
        &pod["spec"]["containers"][container]["lifecycle"]["preStop"]
    }

    #[test]
    fn container_without_prestop_gets_the_sleep_and_the_grace_grows() {
        let p = with_grace(pod(json!([web()])), 45);
        let (setting, out) = admit(&p, None, secs(5));
        assert_eq!(
            setting,
            Ok(SleepSetting {
                sleep: secs(5),
                source: Source::Flag
            })
        );
        let mut expected = gated(&p);
        expected["spec"]["containers"][0]["lifecycle"] =
            json!({ "preStop": { "sleep": { "seconds": 5 } } });
        expected["spec"]["terminationGracePeriodSeconds"] = json!(50);
        assert_eq!(out, expected);
    }

    #[test]
    fn grace_is_30_plus_the_sleep_when_the_pod_sets_none() {
        let (_, out) = admit(&pod(json!([web()])), None, secs(15));
        assert_eq!(out["spec"]["terminationGracePeriodSeconds"], 45);
        assert_eq!(*prestop_of(&out, 0), json!({ "sleep": { "seconds": 15 } }));
    }

    #[test]
    fn a_container_with_its_own_prestop_is_untouched() {
        let mut own = web();
        own["lifecycle"] = json!({ "preStop": { "exec": { "command": ["/bin/drain"] } } });
        let p = with_grace(pod(json!([own])), 60);
        let (_, out) = admit(&p, None, secs(5));
        // Gates only: no sleep, and the grace period stays the application's.
        assert_eq!(out, gated(&p));
    }

    #[test]
    fn several_containers_get_the_sleep_where_they_have_no_prestop() {
        let p = pod(json!([
            web(),
            { "name": "null-lifecycle", "image": "a", "lifecycle": null },
            { "name": "post-start", "image": "b",
              "lifecycle": { "postStart": { "exec": { "command": ["warm-up"] } } } },
            { "name": "own", "image": "c",
              "lifecycle": { "preStop": { "httpGet": { "path": "/drain", "port": 8081 } } } },
            { "name": "null-prestop", "image": "d", "lifecycle": { "preStop": null } }
        ]));
        let (_, out) = admit(&p, None, secs(10));
        let sleep = json!({ "sleep": { "seconds": 10 } });
        for i in [0, 1, 2, 4] {
            assert_eq!(*prestop_of(&out, i), sleep, "container {i}");
        }
        assert_eq!(
            out["spec"]["containers"][2]["lifecycle"]["postStart"],
            json!({ "exec": { "command": ["warm-up"] } })
        );
        assert_eq!(out["spec"]["containers"][3], p["spec"]["containers"][3]);
        // One extension for the pod, not one per container.
        assert_eq!(out["spec"]["terminationGracePeriodSeconds"], 40);

        let injection = prestop_patch(&p, &[GATE.into()], secs(10)).unwrap();
        assert_eq!(
            injection.containers,
            ["web", "null-lifecycle", "post-start", "null-prestop"]
        );
        let paths: Vec<&str> = injection.ops.iter().map(|o| o.path().as_str()).collect();
        assert_eq!(
            paths,
            [
                "/spec/containers/0/lifecycle",
                "/spec/containers/1/lifecycle",
                "/spec/containers/2/lifecycle/preStop",
                "/spec/containers/4/lifecycle/preStop",
                "/spec/terminationGracePeriodSeconds"
            ]
        );
    }

    #[test]
    fn init_containers_and_native_sidecars_are_left_alone() {
        let p = pod(json!([web()]));
        let (_, out) = admit(&p, None, secs(5));
        assert_eq!(out["spec"]["initContainers"], p["spec"]["initContainers"]);
        assert_eq!(out["spec"]["initContainers"][1]["restartPolicy"], "Always");
        assert!(out["spec"]["initContainers"][1].get("lifecycle").is_none());
    }

    #[test]
    fn a_second_pass_changes_nothing() {
        let p = with_grace(pod(json!([web(), { "name": "worker", "image": "w" }])), 20);
        let (_, once) = admit(&p, Some("8s"), PrestopSleep::Off);
        assert_eq!(once["spec"]["terminationGracePeriodSeconds"], 28);
        // A reinvocation of the webhook sees its own work: no sleep added, no second extension.
        assert!(prestop_patch(&once, &[GATE.into()], secs(8)).is_none());
        let (_, twice) = admit(&once, Some("8s"), PrestopSleep::Off);
        assert_eq!(twice, once);
    }

    #[test]
    fn pod_annotation_beats_namespace_beats_flag() {
        let p = pod(json!([web()]));
        let cases = [
            (Some("20s"), Some("10s"), 20, Source::Pod),
            (None, Some("10s"), 10, Source::Namespace),
            (None, None, 5, Source::Flag),
        ];
        for (on_pod, on_namespace, want, source) in cases {
            let p = match on_pod {
                Some(v) => annotate(p.clone(), v),
                None => p.clone(),
            };
            let (setting, out) = admit(&p, on_namespace, secs(5));
            assert_eq!(setting.unwrap().source, source);
            assert_eq!(prestop_of(&out, 0)["sleep"]["seconds"], want, "{source:?}");
            assert_eq!(out["spec"]["terminationGracePeriodSeconds"], 30 + want);
        }
    }

    #[test]
    fn off_at_each_level() {
        let p = pod(json!([web()]));
        // Flag off, nothing else said.
        assert_eq!(admit(&p, None, PrestopSleep::Off).1, gated(&p));
        // The namespace turns the flag off.
        assert_eq!(admit(&p, Some("off"), secs(5)).1, gated(&p));
        // The pod turns its namespace off, with `off` or a zero duration.
        for off in ["off", "OFF", "0s"] {
            let a = annotate(p.clone(), off);
            let (setting, out) = admit(&a, Some("10s"), secs(5));
            assert_eq!(
                setting,
                Ok(SleepSetting {
                    sleep: PrestopSleep::Off,
                    source: Source::Pod
                })
            );
            assert_eq!(out, gated(&a), "{off}");
        }
        // And the other way round: the pod turns it on where the namespace and flag say off.
        let a = annotate(p.clone(), "7s");
        assert_eq!(
            prestop_of(&admit(&a, Some("off"), PrestopSleep::Off).1, 0)["sleep"]["seconds"],
            7
        );
    }

    #[test]
    fn an_invalid_annotation_is_off_and_reported() {
        let p = pod(json!([web()]));
        let bad = annotate(p.clone(), "soon");
        let (setting, out) = admit(&bad, Some("10s"), secs(5));
        let invalid = setting.unwrap_err();
        assert_eq!((invalid.on, invalid.value.as_str()), (Source::Pod, "soon"));
        assert!(matches!(invalid.error, InvalidSleep::Unparsable(_)));
        assert!(
            invalid.to_string().contains("readygate.io/prestop-sleep")
                && invalid.to_string().contains("pod"),
            "{invalid}"
        );
        // Gates only: the bad value neither falls back to the namespace nor blocks the pod.
        assert_eq!(out, gated(&bad));

        let (setting, out) = admit(&p, Some("2h"), secs(5));
        let invalid = setting.unwrap_err();
        assert_eq!(invalid.on, Source::Namespace);
        assert!(matches!(invalid.error, InvalidSleep::TooLong(_)));
        assert_eq!(out, gated(&p));

        // A broken namespace annotation does not matter to a pod that sets its own.
        let (setting, out) = admit(&annotate(p.clone(), "3s"), Some("soon"), secs(5));
        assert_eq!(setting.unwrap().source, Source::Pod);
        assert_eq!(prestop_of(&out, 0)["sleep"]["seconds"], 3);
    }

    #[test]
    fn sub_second_remainders_round_up() {
        for (value, want) in [("1500ms", 2), ("200ms", 1), ("1.5s", 2), ("2s 1ns", 3)] {
            let (_, out) = admit(&pod(json!([web()])), Some(value), PrestopSleep::Off);
            assert_eq!(prestop_of(&out, 0)["sleep"]["seconds"], want, "{value}");
            assert_eq!(out["spec"]["terminationGracePeriodSeconds"], 30 + want);
        }
    }

    #[test]
    fn values_parse_as_durations_off_or_an_error() {
        assert_eq!("5s".parse(), Ok(secs(5)));
        assert_eq!(" 1m ".parse(), Ok(secs(60)));
        assert_eq!("1h".parse(), Ok(secs(3600)));
        assert_eq!("off".parse(), Ok(PrestopSleep::Off));
        assert_eq!("0ms".parse(), Ok(PrestopSleep::Off));
        assert!(matches!(
            "3601s".parse::<PrestopSleep>(),
            Err(InvalidSleep::TooLong(_))
        ));
        assert!(matches!(
            "1h 1ms".parse::<PrestopSleep>(),
            Err(InvalidSleep::TooLong(_))
        ));
        for bad in ["", "5", "-5s", "five seconds", "on"] {
            assert!(
                matches!(
                    bad.parse::<PrestopSleep>(),
                    Err(InvalidSleep::Unparsable(_))
                ),
                "{bad:?}"
            );
        }
        assert_eq!(secs(15).to_string(), "15s");
        assert_eq!(PrestopSleep::Off.to_string(), "off");
    }

    #[test]
    fn unknown_fields_are_preserved() {
        let p = with_grace(
            pod(json!([
                { "name": "web", "image": "nginx", "futureKnob": { "x": [1, null] } },
                { "name": "hooked", "image": "h",
                  "lifecycle": { "postStart": { "sleep": { "seconds": 1 } }, "stopSignal": "SIGUSR1", "futureHook": {} } }
            ])),
            10,
        );
        let mut p = p;
        p["spec"]["someFutureField"] = json!({ "nested": [1, 2, { "x": null }] });
        p["status"] = json!({ "phase": "Pending" });
        let (_, out) = admit(&p, None, secs(5));
        let mut expected = gated(&p);
        expected["spec"]["containers"][0]["lifecycle"] =
            json!({ "preStop": { "sleep": { "seconds": 5 } } });
        expected["spec"]["containers"][1]["lifecycle"]["preStop"] =
            json!({ "sleep": { "seconds": 5 } });
        expected["spec"]["terminationGracePeriodSeconds"] = json!(15);
        assert_eq!(out, expected);
    }

    #[test]
    fn a_pod_that_gets_no_gate_is_not_touched() {
        let p = pod(json!([web()]));
        let (_, out) = admit_wanting(&p, &[], Some("10s"), secs(5));
        assert_eq!(out, p);
        assert!(prestop_patch(&p, &[], secs(5)).is_none());
    }

    #[test]
    fn a_pod_that_already_has_its_gates_still_gets_the_sleep() {
        // It needs a gate; the spec just already carries it (gate ops: none).
        let p = gated(&pod(json!([web()])));
        let (_, out) = admit(&p, None, secs(5));
        let mut expected = p.clone();
        expected["spec"]["containers"][0]["lifecycle"] =
            json!({ "preStop": { "sleep": { "seconds": 5 } } });
        expected["spec"]["terminationGracePeriodSeconds"] = json!(35);
        assert_eq!(out, expected);
    }

    #[test]
    fn gate_operations_come_first_in_the_patch() {
        let p = pod(json!([web()]));
        let gates = gate_patch(&p, &[GATE.into()]);
        let prestop = prestop_patch(&p, &[GATE.into()], secs(5));
        let patch = admission_patch(gates.as_ref(), prestop.as_ref()).unwrap();
        let wire = serde_json::to_value(&patch).unwrap();
        assert_eq!(
            wire,
            json!([
                { "op": "add", "path": "/spec/readinessGates", "value": [{ "conditionType": GATE }] },
                { "op": "add", "path": "/spec/containers/0/lifecycle",
                  "value": { "preStop": { "sleep": { "seconds": 5 } } } },
                { "op": "add", "path": "/spec/terminationGracePeriodSeconds", "value": 35 }
            ])
        );
        assert!(admission_patch(None, None).is_none());
    }
}
