//! The rig's pieces that run against the real Kubernetes control plane ([`crate::cluster`]).

pub mod audit;
pub mod aws_lbc;
pub mod containers;
pub mod install;
pub mod node;
pub mod runtime;
pub mod volumes;
