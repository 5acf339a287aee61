//! Patch semantics of the API server: JSON patch (RFC 6902, via json-patch 4), JSON merge
//! patch (RFC 7386), and strategic merge patch with the merge keys of the built-in types the
//! rig serves (`status.conditions` by `type`, `spec.readinessGates` by `conditionType`, ...).

use serde_json::{Map, Value};

/// How a list at a given path of a built-in type is patched.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ListStrategy {
    /// `patchStrategy: merge` with `patchMergeKey`.
    MergeByKey(&'static str),
    /// `patchStrategy: merge` on a list of primitives (a set union), e.g. `metadata.finalizers`.
    MergePrimitives,
}

/// The strategic-merge list strategy of `path` in the resource `plural`, from the Go struct tags
/// of k8s.io/api. Lists not named here are atomic (replaced whole).
pub fn list_strategy(plural: &str, path: &[&str]) -> Option<ListStrategy> {
    use ListStrategy::*;
    let container = |rest: &[&str]| match rest {
        ["ports"] => Some(MergeByKey("containerPort")),
        ["env"] => Some(MergeByKey("name")),
        ["volumeMounts"] => Some(MergeByKey("mountPath")),
        ["volumeDevices"] => Some(MergeByKey("devicePath")),
        _ => None,
    };
    match (plural, path) {
        (_, ["metadata", "ownerReferences"]) => Some(MergeByKey("uid")),
        (_, ["metadata", "finalizers"]) => Some(MergePrimitives),
        (
            "pods",
            [
                "spec",
                "containers" | "initContainers" | "ephemeralContainers",
            ],
        ) => Some(MergeByKey("name")),
        (
            "pods",
            [
                "spec",
                "containers" | "initContainers" | "ephemeralContainers",
                rest @ ..,
            ],
        ) => container(rest),
        ("pods", ["spec", "readinessGates"]) => Some(MergeByKey("conditionType")),
        ("pods", ["spec", "volumes"]) => Some(MergeByKey("name")),
        ("pods", ["spec", "imagePullSecrets"]) => Some(MergeByKey("name")),
        ("pods", ["spec", "hostAliases"]) => Some(MergeByKey("ip")),
        ("pods", ["status", "conditions"]) => Some(MergeByKey("type")),
        ("pods", ["status", "podIPs"]) => Some(MergeByKey("ip")),
        ("pods", ["status", "hostIPs"]) => Some(MergeByKey("ip")),
        ("services", ["spec", "ports"]) => Some(MergeByKey("port")),
        ("namespaces", ["status", "conditions"]) => Some(MergeByKey("type")),
        _ => None,
    }
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum PatchError {
    #[error("{0}")]
    Invalid(String),
}

/// Applies a strategic merge patch to `doc` (a built-in object of resource `plural`).
pub fn strategic_merge(plural: &str, doc: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let Some(patch) = patch.as_object() else {
        return Err(PatchError::Invalid(
            "strategic merge patch must be a JSON object".into(),
        ));
    };
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    let mut path = Vec::new();
    merge_map(
        plural,
        doc.as_object_mut().expect("object"),
        patch,
        &mut path,
    )
}

fn merge_map(
    plural: &str,
    orig: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    path: &mut Vec<String>,
) -> Result<(), PatchError> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            *orig = clean_map(patch);
            return Ok(());
        }
        Some("delete") => {
            orig.clear();
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => return Err(PatchError::Invalid(format!("unknown patch type: {other}"))),
    }
    if let Some(retain) = patch.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = retain.iter().filter_map(Value::as_str).collect();
        orig.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            let remove = value.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(items)) = orig.get_mut(field) {
                items.retain(|i| !remove.contains(i));
            }
            continue;
        }
        if key.starts_with('$') {
            continue; // $setElementOrder/..., $retainKeys, $patch: ordering hints and handled directives
        }
        if value.is_null() {
            orig.remove(key);
            continue;
        }
        path.push(key.clone());
        let strategy = {
            let p: Vec<&str> = path.iter().map(String::as_str).collect();
            list_strategy(plural, &p)
        };
        match (orig.get_mut(key), value) {
            (Some(Value::Object(o)), Value::Object(p)) => {
                if p.get("$patch").and_then(Value::as_str) == Some("delete") {
                    orig.remove(key);
                } else {
                    merge_map(plural, o, p, path)?;
                }
            }
            (Some(Value::Array(o)), Value::Array(p)) if strategy.is_some() => {
                merge_list(plural, o, p, strategy.expect("checked"), path)?;
            }
            _ => {
                let cleaned = clean(value);
                if matches!(&cleaned, Value::Object(m) if m.is_empty())
                    && value.get("$patch").is_some()
                {
                    orig.remove(key);
                } else {
                    orig.insert(key.clone(), cleaned);
                }
            }
        }
        path.pop();
    }
    Ok(())
}

fn merge_list(
    plural: &str,
    orig: &mut Vec<Value>,
    patch: &[Value],
    strategy: ListStrategy,
    path: &mut Vec<String>,
) -> Result<(), PatchError> {
    // A `{"$patch": "replace"}` element replaces the whole list with the other elements.
    if patch
        .iter()
        .any(|e| e.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *orig = patch
            .iter()
            .filter(|e| e.get("$patch").is_none())
            .map(clean)
            .collect();
        return Ok(());
    }
    match strategy {
        ListStrategy::MergePrimitives => {
            for item in patch {
                if !orig.contains(item) {
                    orig.push(item.clone());
                }
            }
        }
        ListStrategy::MergeByKey(merge_key) => {
            for item in patch {
                let Some(obj) = item.as_object() else {
                    return Err(PatchError::Invalid(format!(
                        "{}: list item is not an object",
                        path.join(".")
                    )));
                };
                let Some(key_value) = obj.get(merge_key) else {
                    return Err(PatchError::Invalid(format!(
                        "map: {item} does not contain declared merge key: {merge_key}"
                    )));
                };
                let pos = orig
                    .iter()
                    .position(|o| o.get(merge_key) == Some(key_value));
                let delete = obj.get("$patch").and_then(Value::as_str) == Some("delete");
                match (pos, delete) {
                    (Some(i), true) => {
                        orig.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => {
                        if let Value::Object(o) = &mut orig[i] {
                            merge_map(plural, o, obj, path)?;
                        }
                    }
                    (None, false) => orig.push(clean(item)),
                }
            }
        }
    }
    Ok(())
}

/// Removes patch directives from a value that is inserted as is.
fn clean(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(clean_map(m)),
        Value::Array(a) => Value::Array(
            a.iter()
                .filter(|e| e.get("$patch").is_none())
                .map(clean)
                .collect(),
        ),
        other => other.clone(),
    }
}

fn clean_map(m: &Map<String, Value>) -> Map<String, Value> {
    m.iter()
        .filter(|(k, v)| !k.starts_with('$') && !v.is_null())
        .map(|(k, v)| (k.clone(), clean(v)))
        .collect()
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(doc: &mut Value, patch: &Value) {
    json_patch::merge(doc, patch);
}

/// RFC 6902 JSON patch.
pub fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let ops: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| PatchError::Invalid(format!("invalid JSON patch: {e}")))?;
    json_patch::patch(doc, &ops).map_err(|e| {
        PatchError::Invalid(format!(
            "the server rejected our request due to an error in our request: {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Value {
        json!({
            "metadata": {"name": "p", "labels": {"app": "web"}, "finalizers": ["a"]},
            "spec": {
                "containers": [{"name": "app", "image": "v1", "ports": [{"containerPort": 8080, "name": "http"}]}],
                "readinessGates": [{"conditionType": "target-health.elbv2.k8s.aws/a"}]
            },
            "status": {"conditions": [
                {"type": "Ready", "status": "False"},
                {"type": "target-health.elbv2.k8s.aws/a", "status": "False", "reason": "Elb.InitialHealthChecking", "lastTransitionTime": "2024-01-01T00:00:00Z"}
            ]}
        })
    }

    #[test]
    fn conditions_merge_by_type() {
        let mut doc = pod();
        let patch = json!({"metadata": {"uid": "u"}, "status": {"conditions": [
            {"type": "target-health.elbv2.k8s.aws/a", "status": "True", "reason": null, "message": "ok"},
            {"type": "target-health.elbv2.k8s.aws/b", "status": "False"}
        ]}});
        strategic_merge("pods", &mut doc, &patch).unwrap();
        let conds = doc["status"]["conditions"].as_array().unwrap();
        assert_eq!(conds.len(), 3);
        assert_eq!(conds[0], json!({"type": "Ready", "status": "False"}));
        // Merged into the existing element: the null removed reason, lastTransitionTime kept.
        assert_eq!(
            conds[1],
            json!({"type": "target-health.elbv2.k8s.aws/a", "status": "True", "message": "ok", "lastTransitionTime": "2024-01-01T00:00:00Z"})
        );
        assert_eq!(conds[2]["type"], "target-health.elbv2.k8s.aws/b");
    }

    #[test]
    fn readiness_gates_merge_by_condition_type_and_containers_by_name() {
        let mut doc = pod();
        let patch = json!({"spec": {
            "readinessGates": [{"conditionType": "target-health.elbv2.k8s.aws/b"}, {"conditionType": "target-health.elbv2.k8s.aws/a"}],
            "containers": [{"name": "app", "image": "v2"}]
        }});
        strategic_merge("pods", &mut doc, &patch).unwrap();
        assert_eq!(
            doc["spec"]["readinessGates"],
            json!([{"conditionType": "target-health.elbv2.k8s.aws/a"}, {"conditionType": "target-health.elbv2.k8s.aws/b"}])
        );
        assert_eq!(doc["spec"]["containers"][0]["image"], "v2");
        assert_eq!(
            doc["spec"]["containers"][0]["ports"][0]["containerPort"],
            8080
        );
    }

    #[test]
    fn directives_delete_replace_and_primitive_sets() {
        let mut doc = pod();
        assert!(
            strategic_merge(
                "pods",
                &mut doc.clone(),
                &json!({"metadata": {"$patch": "bogus"}})
            )
            .is_err()
        );
        let patch = json!({
            "metadata": {"finalizers": ["b", "a"], "labels": {"app": null, "$patch": "merge"}},
            "spec": {"readinessGates": [{"conditionType": "target-health.elbv2.k8s.aws/a", "$patch": "delete"}]},
            "status": {"conditions": [{"$patch": "replace"}, {"type": "X", "status": "True"}],
                "$setElementOrder/conditions": [{"type": "X"}]}
        });
        strategic_merge("pods", &mut doc, &patch).unwrap();
        assert_eq!(doc["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(doc["metadata"]["labels"], json!({}));
        assert_eq!(doc["spec"]["readinessGates"], json!([]));
        assert_eq!(
            doc["status"]["conditions"],
            json!([{"type": "X", "status": "True"}])
        );
    }

    #[test]
    fn atomic_lists_are_replaced_and_missing_merge_key_is_an_error() {
        let mut doc = json!({"spec": {"ports": [{"port": 80, "targetPort": "http"}], "selector": {"app": "web"}, "externalIPs": ["1.2.3.4"]}});
        strategic_merge(
            "services",
            &mut doc,
            &json!({"spec": {"ports": [{"port": 80, "name": "web"}], "externalIPs": ["5.6.7.8"]}}),
        )
        .unwrap();
        assert_eq!(
            doc["spec"]["ports"],
            json!([{"port": 80, "targetPort": "http", "name": "web"}])
        );
        assert_eq!(doc["spec"]["externalIPs"], json!(["5.6.7.8"]));
        let err = strategic_merge(
            "pods",
            &mut pod(),
            &json!({"status": {"conditions": [{"status": "True"}]}}),
        );
        assert!(err.is_err());
    }

    #[test]
    fn json_patch_and_merge_patch() {
        let mut doc = pod();
        json_patch(&mut doc, &json!([{"op": "add", "path": "/spec/readinessGates/-", "value": {"conditionType": "x"}}])).unwrap();
        assert_eq!(doc["spec"]["readinessGates"][1]["conditionType"], "x");
        assert!(
            json_patch(
                &mut doc,
                &json!([{"op": "test", "path": "/metadata/name", "value": "q"}])
            )
            .is_err()
        );
        merge_patch(&mut doc, &json!({"spec": {"readinessGates": null}}));
        assert!(doc["spec"].get("readinessGates").is_none());
    }
}
