//! The rig's pieces that run against the real Kubernetes control plane ([`crate::cluster`]).

pub mod node;
