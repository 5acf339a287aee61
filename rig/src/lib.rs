//! The readygate rollout rig: a local cluster and load balancer on loopback that runs the
//! real `readygate serve` binary through rolling updates and counts lost requests.

pub mod aws_lbc;
pub mod certs;
pub mod cluster;
pub mod demo;
pub mod deploy;
pub mod elb;
pub mod fault_proxy;
pub mod helm;
pub mod html;
pub mod k8s;
pub mod kubelet;
pub mod lbc;
pub mod load;
pub mod netns;
pub mod readygate;
pub mod rig;
pub mod serial;
pub mod stage;
pub mod time;
pub mod timeline;

/// The string at JSON pointer `pointer` in `v`, or "".
pub fn str_at(v: &serde_json::Value, pointer: &str) -> String {
    v.pointer(pointer)
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_string()
}
