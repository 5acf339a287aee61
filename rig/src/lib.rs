//! The readygate rollout rig: a local cluster and load balancer on loopback that runs the
//! real `readygate serve` binary through rolling updates and counts lost requests.

pub mod apiserver;
pub mod certs;
pub mod elb;
pub mod kubelet;
pub mod time;
