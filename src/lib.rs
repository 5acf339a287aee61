//! readygate: ELBv2 target-health readiness gates for Kubernetes pods.
//!
//! The decision core (`domain`, `gates`, `termination`, `target`, `condition`, `schedule`,
//! `poller`, `index`, `crd_presence`, `budget`) is pure; `cache`, `webhook` (with `review`, its
//! one-pass read of a request), `server`, `tls`, `elbv2`, `controller` and `writer` are thin
//! shells around it; `app` wires them together.

pub mod app;
pub mod budget;
pub mod cache;
pub mod certs;
pub mod cli;
pub mod condition;
pub mod controller;
pub mod crd;
pub mod crd_presence;
pub mod domain;
pub mod elbv2;
pub mod gates;
pub mod index;
pub mod leader;
pub mod metrics;
pub mod poller;
pub mod review;
pub mod schedule;
pub mod server;
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
