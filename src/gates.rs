//! Which readiness gates a new pod needs, and the JSON Patch that adds them.
//!
//! Pure functions over plain data: (pod labels, bindings, services) → gates; (raw pod JSON,
//! gates) → patch. The patch is built from the request's raw JSON and only ever touches
//! `/spec/readinessGates`, so fields our types do not know pass through untouched.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation};
use serde_json::{Value, json};

use crate::domain::{Binding, LEGACY_GATE_PREFIX, Labels, Service, TargetType, gate_type};

/// The gate condition types a pod with `labels` needs, sorted and unique: one per `ip`
/// binding whose Service selects the pod.
pub fn gates_for<'a, L: Labels + ?Sized>(
    labels: &L,
    bindings: impl IntoIterator<Item = &'a Binding>,
    service: impl Fn(&str) -> Option<&'a Service>,
) -> Vec<String> {
    let mut gates: Vec<String> = bindings
        .into_iter()
        .filter(|b| b.target_type == TargetType::Ip)
        .filter(|b| service(&b.service_name).is_some_and(|s| s.selects(labels)))
        .map(|b| gate_type(&b.name))
        .collect();
    gates.sort();
    gates.dedup();
    gates
}

/// What admission adds to a pod.
#[derive(Clone, Debug, PartialEq)]
pub struct Injection {
    pub patch: Patch,
    /// The gate condition types the pod did not have.
    pub added: Vec<String>,
}

/// The patch that gives `pod` (raw JSON) every gate in `wanted`, or `None` when it has them all.
///
/// Existing gates are kept as they are (entries are copied raw); legacy
/// `target-health.alb.ingress.k8s.aws/*` gates are dropped when a gate is added.
pub fn gate_patch(pod: &Value, wanted: &[String]) -> Option<Injection> {
    let spec = pod.get("spec")?.as_object()?;
    let existing: &[Value] = match spec.get("readinessGates") {
        Some(Value::Array(gates)) => gates,
        _ => &[],
    };
    let has = |t: &str| {
        existing
            .iter()
            .any(|g| g.get("conditionType").and_then(Value::as_str) == Some(t))
    };
    let added: Vec<String> = wanted.iter().filter(|t| !has(t)).cloned().collect();
    if added.is_empty() {
        return None;
    }
    let missing: Vec<Value> = added
        .iter()
        .map(|t| json!({ "conditionType": t }))
        .collect();

    let is_legacy = |g: &Value| {
        g.get("conditionType")
            .and_then(Value::as_str)
            .is_some_and(|t| t.starts_with(LEGACY_GATE_PREFIX))
    };
    let gates_path = PointerBuf::from_tokens(["spec", "readinessGates"]);
    let ops = match spec.get("readinessGates") {
        // Absent (or null): create the array.
        None | Some(Value::Null) => vec![PatchOperation::Add(AddOperation {
            path: gates_path,
            value: Value::Array(missing),
        })],
        // Only additions: append, leaving every existing entry in place.
        Some(Value::Array(_)) if !existing.iter().any(is_legacy) => missing
            .into_iter()
            .map(|value| {
                PatchOperation::Add(AddOperation {
                    path: gates_path.with_trailing_token("-"),
                    value,
                })
            })
            .collect(),
        // Legacy gates to drop (or a malformed value): write the whole list.
        Some(_) => {
            let mut gates: Vec<Value> =
                existing.iter().filter(|g| !is_legacy(g)).cloned().collect();
            gates.extend(missing);
            vec![PatchOperation::Replace(ReplaceOperation {
                path: gates_path,
                value: Value::Array(gates),
            })]
        }
    };
    Some(Injection {
        patch: Patch(ops),
        added,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{PortRef, ServicePort};
    use serde_json::json;
    use std::collections::BTreeMap;

    fn binding(name: &str, svc: &str, tt: TargetType) -> Binding {
        Binding {
            name: name.into(),
            target_group_arn: format!(
                "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/{name}/0123456789abcdef"
            ),
            target_type: tt,
            service_name: svc.into(),
            service_port: PortRef::Number(80),
            ip_family: Default::default(),
            aws_controller: false,
        }
    }

    fn service(selector: &[(&str, &str)]) -> Service {
        Service {
            selector: selector
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ports: vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(PortRef::Number(8080)),
            }],
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn pod(labels: Value, gates: Option<Value>) -> Value {
        let mut p = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": { "generateName": "web-7d4b9c-", "namespace": "shop", "labels": labels },
            "spec": {
                "containers": [{ "name": "web", "image": "nginx", "ports": [{ "name": "http", "containerPort": 8080 }] }],
                "initContainers": [{ "name": "proxy", "image": "envoy", "restartPolicy": "Always" }]
            }
        });
        if let Some(g) = gates {
            p["spec"]["readinessGates"] = g;
        }
        p
    }

    /// Runs the whole decision for a pod and returns the pod after the patch.
    fn admit(
        pod: &Value,
        bindings: &[Binding],
        services: &BTreeMap<&str, Service>,
    ) -> (Option<Patch>, Value) {
        let labels: BTreeMap<String, String> = pod["metadata"]["labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let gates = gates_for(&labels, bindings, |name| services.get(name));
        let patch = gate_patch(pod, &gates).map(|i| i.patch);
        let mut out = pod.clone();
        if let Some(p) = &patch {
            json_patch::patch(&mut out, p).expect("patch applies");
        }
        (patch, out)
    }

    fn gate_list(pod: &Value) -> Vec<String> {
        pod["spec"]["readinessGates"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|g| g["conditionType"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn no_binding_no_patch() {
        let p = pod(json!({"app": "web"}), None);
        let (patch, out) = admit(&p, &[], &BTreeMap::new());
        assert!(patch.is_none());
        assert_eq!(out, p);
    }

    #[test]
    fn one_binding_creates_the_gate_array() {
        let p = pod(json!({"app": "web"}), None);
        let services = BTreeMap::from([("web", service(&[("app", "web")]))]);
        let (patch, out) = admit(&p, &[binding("web-tgb", "web", TargetType::Ip)], &services);
        let patch = patch.expect("a patch");
        assert_eq!(patch.0.len(), 1);
        assert_eq!(patch.0[0].path().as_str(), "/spec/readinessGates");
        assert_eq!(gate_list(&out), ["target-health.elbv2.k8s.aws/web-tgb"]);
    }

    #[test]
    fn several_bindings_give_several_gates() {
        let p = pod(json!({"app": "web", "tier": "front"}), None);
        let services = BTreeMap::from([
            ("web", service(&[("app", "web")])),
            ("front", service(&[("tier", "front")])),
            ("other", service(&[("app", "api")])),
        ]);
        let bindings = [
            binding("web-b", "web", TargetType::Ip),
            binding("front-a", "front", TargetType::Ip),
            binding("web-a", "web", TargetType::Ip),
            binding("other", "other", TargetType::Ip),
        ];
        let (_, out) = admit(&p, &bindings, &services);
        assert_eq!(
            gate_list(&out),
            [
                "target-health.elbv2.k8s.aws/front-a",
                "target-health.elbv2.k8s.aws/web-a",
                "target-health.elbv2.k8s.aws/web-b"
            ]
        );
    }

    #[test]
    fn existing_gates_are_kept_and_never_duplicated() {
        let existing = json!([
            { "conditionType": "example.com/feature-ready" },
            { "conditionType": "target-health.elbv2.k8s.aws/web-a" }
        ]);
        let p = pod(json!({"app": "web"}), Some(existing));
        let services = BTreeMap::from([("web", service(&[("app", "web")]))]);
        let bindings = [
            binding("web-a", "web", TargetType::Ip),
            binding("web-b", "web", TargetType::Ip),
        ];
        let (patch, out) = admit(&p, &bindings, &services);
        // Only an append: existing entries are not rewritten.
        let patch = patch.unwrap();
        assert_eq!(patch.0.len(), 1);
        assert_eq!(patch.0[0].path().as_str(), "/spec/readinessGates/-");
        assert_eq!(
            gate_list(&out),
            [
                "example.com/feature-ready",
                "target-health.elbv2.k8s.aws/web-a",
                "target-health.elbv2.k8s.aws/web-b"
            ]
        );
        // All present already: nothing to do.
        assert!(
            gate_patch(
                &out,
                &gates_for(&labels(&[("app", "web")]), &bindings, |n| services.get(n))
            )
            .is_none()
        );
    }

    #[test]
    fn legacy_gates_are_removed_when_adding() {
        let existing = json!([
            { "conditionType": "target-health.alb.ingress.k8s.aws/old-ingress_web_80" },
            { "conditionType": "example.com/feature-ready" }
        ]);
        let p = pod(json!({"app": "web"}), Some(existing));
        let services = BTreeMap::from([("web", service(&[("app", "web")]))]);
        let (_, out) = admit(&p, &[binding("web-a", "web", TargetType::Ip)], &services);
        assert_eq!(
            gate_list(&out),
            [
                "example.com/feature-ready",
                "target-health.elbv2.k8s.aws/web-a"
            ]
        );
    }

    #[test]
    fn added_names_only_the_gates_the_pod_lacked() {
        // A whole-list replace (legacy gate dropped) still reports just the new gate.
        let existing = json!([
            { "conditionType": "target-health.alb.ingress.k8s.aws/old" },
            { "conditionType": "target-health.elbv2.k8s.aws/web-a" }
        ]);
        let p = pod(json!({"app": "web"}), Some(existing));
        let wanted = [
            "target-health.elbv2.k8s.aws/web-a".to_string(),
            "target-health.elbv2.k8s.aws/web-b".to_string(),
        ];
        let injection = gate_patch(&p, &wanted).unwrap();
        assert!(matches!(injection.patch.0[0], PatchOperation::Replace(_)));
        assert_eq!(injection.added, ["target-health.elbv2.k8s.aws/web-b"]);
    }

    #[test]
    fn legacy_gates_stay_when_nothing_is_added() {
        let existing = json!([{ "conditionType": "target-health.alb.ingress.k8s.aws/old" }]);
        let p = pod(json!({"app": "web"}), Some(existing));
        let (patch, _) = admit(&p, &[], &BTreeMap::new());
        assert!(patch.is_none());
    }

    #[test]
    fn instance_and_unspecified_bindings_are_ignored() {
        let p = pod(json!({"app": "web"}), None);
        let services = BTreeMap::from([("web", service(&[("app", "web")]))]);
        let bindings = [
            binding("inst", "web", TargetType::Instance),
            binding("unset", "web", TargetType::Unspecified),
        ];
        let (patch, out) = admit(&p, &bindings, &services);
        assert!(patch.is_none());
        assert_eq!(out, p);
    }

    #[test]
    fn empty_selector_matches_nothing() {
        let p = pod(json!({"app": "web"}), None);
        let services = BTreeMap::from([("web", service(&[]))]);
        let (patch, _) = admit(&p, &[binding("web", "web", TargetType::Ip)], &services);
        assert!(patch.is_none());
    }

    #[test]
    fn selector_mismatch_and_missing_service() {
        let p = pod(json!({"app": "web"}), None);
        let services = BTreeMap::from([("web", service(&[("app", "web"), ("track", "canary")]))]);
        let bindings = [
            binding("web", "web", TargetType::Ip),
            binding("ghost", "no-such-svc", TargetType::Ip),
        ];
        let (patch, _) = admit(&p, &bindings, &services);
        assert!(patch.is_none());
    }

    #[test]
    fn pod_without_labels_gets_nothing() {
        let mut p = pod(json!({}), None);
        p["metadata"].as_object_mut().unwrap().remove("labels");
        let services = BTreeMap::from([("web", service(&[("app", "web")]))]);
        let (patch, _) = admit(&p, &[binding("web", "web", TargetType::Ip)], &services);
        assert!(patch.is_none());
    }

    #[test]
    fn unknown_pod_fields_are_preserved() {
        let mut p = pod(json!({"app": "web"}), None);
        p["spec"]["someFutureField"] = json!({"nested": [1, 2, {"x": null}]});
        p["spec"]["containers"][0]["unknownKnob"] = json!(true);
        p["status"] = json!({"phase": "Pending"});
        let services = BTreeMap::from([("web", service(&[("app", "web")]))]);
        let (_, out) = admit(&p, &[binding("web", "web", TargetType::Ip)], &services);
        let mut expected = p.clone();
        expected["spec"]["readinessGates"] =
            json!([{ "conditionType": "target-health.elbv2.k8s.aws/web" }]);
        assert_eq!(out, expected);
        // The native sidecar's restartPolicy, once dropped by a typed round trip, is still there.
        assert_eq!(out["spec"]["initContainers"][0]["restartPolicy"], "Always");
    }

    #[test]
    fn pointer_tokens_are_escaped() {
        // Gate types contain '/', so a path naming one must escape it as '~1'.
        let ptr =
            PointerBuf::from_tokens(["metadata", "annotations", "target-health.elbv2.k8s.aws/a~b"]);
        assert_eq!(
            ptr.as_str(),
            "/metadata/annotations/target-health.elbv2.k8s.aws~1a~0b"
        );
        // A binding name with unusual characters still ends up verbatim in the value.
        let p = pod(json!({"app": "web"}), Some(json!([])));
        let services = BTreeMap::from([("web", service(&[("app", "web")]))]);
        let (patch, out) = admit(&p, &[binding("a~b/c", "web", TargetType::Ip)], &services);
        let patch = patch.unwrap();
        let wire = serde_json::to_value(&patch).unwrap();
        assert_eq!(
            wire,
            json!([{ "op": "add", "path": "/spec/readinessGates/-", "value": { "conditionType": "target-health.elbv2.k8s.aws/a~b/c" } }])
        );
        assert_eq!(gate_list(&out), ["target-health.elbv2.k8s.aws/a~b/c"]);
    }
}
