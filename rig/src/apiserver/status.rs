//! The API server's error answers: real `Status` objects (kind Status, apiVersion v1,
//! status Failure) with the reason and code the real kube-apiserver uses.

use serde_json::{Value, json};

/// An API error, rendered as a `metav1.Status`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Value,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: String, details: Value) -> Self {
        Self {
            code,
            reason,
            message,
            details,
        }
    }

    pub fn not_found(resource: &str, group: &str, name: &str) -> Self {
        let qualified = qualified(resource, group);
        Self::new(
            404,
            "NotFound",
            format!("{qualified} \"{name}\" not found"),
            json!({"name": name, "group": group, "kind": resource}),
        )
    }

    /// What kube-apiserver answers for a path it serves no resource at (a CRD not installed,
    /// or not yet served again after a restart).
    pub fn resource_not_served() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource".to_string(),
            json!({}),
        )
    }

    pub fn already_exists(resource: &str, group: &str, name: &str) -> Self {
        let qualified = qualified(resource, group);
        Self::new(
            409,
            "AlreadyExists",
            format!("{qualified} \"{name}\" already exists"),
            json!({"name": name, "group": group, "kind": resource}),
        )
    }

    pub fn conflict(resource: &str, group: &str, name: &str, why: &str) -> Self {
        let qualified = qualified(resource, group);
        Self::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {qualified} \"{name}\": {why}"),
            json!({"name": name, "group": group, "kind": resource}),
        )
    }

    /// 409 for a server-side apply that would take fields another manager owns.
    pub fn apply_conflict(
        resource: &str,
        group: &str,
        name: &str,
        causes: Vec<(String, String)>,
    ) -> Self {
        let list: Vec<String> = causes
            .iter()
            .map(|(m, f)| format!("conflict with \"{m}\": {f}"))
            .collect();
        let n = list.len();
        let causes: Vec<Value> = causes
            .into_iter()
            .map(|(m, f)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{m}\""), "field": f}))
            .collect();
        Self::new(
            409,
            "Conflict",
            format!(
                "Apply failed with {n} conflict{}: {}",
                if n == 1 { "" } else { "s" },
                list.join(", ")
            ),
            json!({"name": name, "group": group, "kind": qualified(resource, group), "causes": causes}),
        )
    }

    pub fn invalid(kind: &str, group: &str, name: &str, field: &str, why: &str) -> Self {
        let gk = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        Self::new(
            422,
            "Invalid",
            format!("{gk} \"{name}\" is invalid: {field}: {why}"),
            json!({"name": name, "group": group, "kind": kind, "causes": [{"reason": "FieldValueInvalid", "message": why, "field": field}]}),
        )
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message.into(), Value::Null)
    }

    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(415, "UnsupportedMediaType", message.into(), Value::Null)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message.into(), Value::Null)
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message.into(), Value::Null)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message.into(), Value::Null)
    }

    /// The pod proxy could not reach the pod (kube-apiserver: 503 "error trying to reach
    /// service").
    pub fn unreachable(message: impl Into<String>) -> Self {
        Self::new(
            503,
            "ServiceUnavailable",
            format!("error trying to reach service: {}", message.into()),
            Value::Null,
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {}", message.into()),
            Value::Null,
        )
    }

    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if !self.details.is_null() {
            status["details"] = self.details.clone();
        }
        status
    }
}

fn qualified(resource: &str, group: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_is_a_real_status() {
        let status = ApiError::not_found("pods", "", "web-1").to_status();
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["status"], "Failure");
        assert_eq!(status["reason"], "NotFound");
        assert_eq!(status["code"], 404);
        assert_eq!(status["message"], "pods \"web-1\" not found");
    }

    #[test]
    fn group_is_part_of_the_qualified_resource() {
        let e = ApiError::already_exists("targetgroupbindings", "elbv2.k8s.aws", "tgb");
        assert_eq!(
            e.message,
            "targetgroupbindings.elbv2.k8s.aws \"tgb\" already exists"
        );
        assert_eq!(e.code, 409);
    }
}
