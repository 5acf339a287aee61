//! Where the load balancer sends a gated pod's traffic: (pod, binding, service) → target.

use crate::domain::{Binding, Pod, PortRef, Service};

/// An ELBv2 IP target.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub ip: String,
    pub port: i32,
}

/// Why a gate has no target (yet, or at all).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("pod has no IP yet")]
    NoPodIp,
    #[error("service has no port {0}")]
    NoServicePort(String),
    #[error("pod has no container port named {0:?}")]
    NoContainerPort(String),
}

fn describe(port: &PortRef) -> String {
    match port {
        PortRef::Number(n) => n.to_string(),
        PortRef::Name(s) => format!("{s:?}"),
    }
}

/// The container port the binding's Service port forwards to.
///
/// `serviceRef.port` names a Service port by number or name; its `targetPort` is a number, a
/// name resolved against the pod's container ports, or absent (same as the Service port).
pub fn resolve_port(pod: &Pod, binding: &Binding, service: &Service) -> Result<i32, TargetError> {
    let sp = service
        .ports
        .iter()
        .find(|p| match &binding.service_port {
            PortRef::Number(n) => p.port == *n,
            PortRef::Name(name) => p.name.as_deref() == Some(name),
        })
        .ok_or_else(|| TargetError::NoServicePort(describe(&binding.service_port)))?;
    match &sp.target_port {
        None => Ok(sp.port),
        Some(PortRef::Number(n)) => Ok(*n),
        Some(PortRef::Name(name)) => pod
            .container_ports
            .iter()
            .find(|c| &c.name == name)
            .map(|c| c.port)
            .ok_or_else(|| TargetError::NoContainerPort(name.clone())),
    }
}

/// The pod's target for the binding.
pub fn resolve(pod: &Pod, binding: &Binding, service: &Service) -> Result<Target, TargetError> {
    let ip = pod.ip.clone().ok_or(TargetError::NoPodIp)?;
    Ok(Target {
        ip,
        port: resolve_port(pod, binding, service)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ContainerPort, ServicePort, TargetType};

    fn binding(port: PortRef) -> Binding {
        Binding {
            name: "b".into(),
            target_group_arn: "arn".into(),
            target_type: TargetType::Ip,
            service_name: "svc".into(),
            service_port: port,
        }
    }

    fn svc() -> Service {
        Service {
            selector: [("app".to_string(), "web".to_string())].into(),
            ports: vec![
                ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    target_port: Some(PortRef::Number(8080)),
                },
                ServicePort {
                    name: Some("admin".into()),
                    port: 9000,
                    target_port: Some(PortRef::Name("admin-port".into())),
                },
                ServicePort {
                    name: Some("plain".into()),
                    port: 7000,
                    target_port: None,
                },
            ],
        }
    }

    fn pod() -> Pod {
        Pod {
            ip: Some("127.0.3.4".into()),
            container_ports: vec![ContainerPort {
                name: "admin-port".into(),
                port: 9901,
            }],
            ..Pod::default()
        }
    }

    #[test]
    fn service_port_by_number_to_numeric_target_port() {
        assert_eq!(
            resolve(&pod(), &binding(PortRef::Number(80)), &svc()),
            Ok(Target {
                ip: "127.0.3.4".into(),
                port: 8080
            })
        );
    }

    #[test]
    fn service_port_by_name_to_named_container_port() {
        assert_eq!(
            resolve_port(&pod(), &binding(PortRef::Name("admin".into())), &svc()),
            Ok(9901)
        );
    }

    #[test]
    fn absent_target_port_means_the_service_port() {
        assert_eq!(
            resolve_port(&pod(), &binding(PortRef::Name("plain".into())), &svc()),
            Ok(7000)
        );
    }

    #[test]
    fn missing_names_are_errors() {
        assert_eq!(
            resolve_port(&pod(), &binding(PortRef::Name("grpc".into())), &svc()),
            Err(TargetError::NoServicePort("\"grpc\"".into()))
        );
        assert_eq!(
            resolve_port(&pod(), &binding(PortRef::Number(81)), &svc()),
            Err(TargetError::NoServicePort("81".into()))
        );
        let mut p = pod();
        p.container_ports.clear();
        assert_eq!(
            resolve_port(&p, &binding(PortRef::Number(9000)), &svc()),
            Err(TargetError::NoContainerPort("admin-port".into()))
        );
    }

    #[test]
    fn no_ip_no_target() {
        let mut p = pod();
        p.ip = None;
        assert_eq!(
            resolve(&p, &binding(PortRef::Number(80)), &svc()),
            Err(TargetError::NoPodIp)
        );
    }
}
