//! A subset of the Kubernetes API server: enough for readygate's kube-rs client, watchers,
//! status writes, events and leader election to run unmodified against it.

pub mod admission;
pub mod http;
pub mod patch;
pub mod resources;
pub mod selector;
pub mod status;
pub mod store;
