//! The readygate rollout rig: a local cluster and load balancer on loopback that runs the
//! real `readygate serve` binary through rolling updates and counts lost requests.

pub mod apiserver;
pub mod certs;
pub mod cluster;
pub mod demo;
pub mod deploy;
pub mod elb;
pub mod fault_proxy;
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
