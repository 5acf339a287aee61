//! readygate: ELBv2 target-health readiness gates for Kubernetes pods.
//!
//! The decision core (`domain`, `gates`, `termination`, `target`, `condition`, `schedule`,
//! `poller`, `index`, `crd_presence`, `budget`) is pure; `cache`, `webhook` (with `review`, its
//! one-pass read of a request), `server`, `tls`, `elbv2`, `controller` and `writer` are thin
//! shells around it; `app` wires them together. The operator commands follow the same split:
//! `status` and `doctor` decide, `operate` fetches and prints; `gates_view` is what the leader
//! serves at `/debug/gates`.

pub mod app;
pub mod budget;
pub mod cache;
pub mod certs;
pub mod cli;
pub mod condition;
pub mod controller;
pub mod crd;
pub mod crd_presence;
pub mod doctor;
pub mod domain;
pub mod elbv2;
pub mod gates;
pub mod gates_view;
pub mod index;
pub mod leader;
pub mod metrics;
pub mod operate;
pub mod poller;
pub mod review;
pub mod schedule;
pub mod server;
pub mod status;
pub mod target;
pub mod termination;
pub mod tls;
pub mod webhook;
pub mod writer;

/// Installs aws-lc-rs as the process-wide rustls provider (the AWS SDK, kube and the webhook
/// all use it). Safe to call more than once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
