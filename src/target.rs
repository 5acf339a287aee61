//! Where the load balancer sends a gated pod's traffic: (pod, binding, service) → target.

use std::net::IpAddr;

use crate::domain::{Binding, IpFamily, Pod, PortRef, Service};

/// An ELBv2 IP target. The address is parsed, so ELB's and Kubernetes' spellings of one IPv6
/// address (`2001:db8::1`, `2001:0db8:0:0:0:0:0:1`) are the same target.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub ip: IpAddr,
    pub port: i32,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}",
            std::net::SocketAddr::new(self.ip, self.port as u16)
        )
    }
}

/// Why a gate has no target (yet, or at all).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("pod has no IP yet")]
    NoPodIp,
    #[error("pod has no IPv6 address (the binding's ipAddressType is ipv6)")]
    NoPodIpv6,
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

/// The pod's address a target group of `family` holds.
pub fn pod_ip(pod: &Pod, family: IpFamily) -> Result<IpAddr, TargetError> {
    match pod.ips.iter().find(|ip| IpFamily::of(ip) == family) {
        Some(ip) => Ok(*ip),
        None if pod.ips.is_empty() => Err(TargetError::NoPodIp),
        // An IPv4 group and an IPv6-only pod has no target either: say "no IP" as for IPv4.
        None if family == IpFamily::V4 => Err(TargetError::NoPodIp),
        None => Err(TargetError::NoPodIpv6),
    }
}

/// The pod's target for the binding.
pub fn resolve(pod: &Pod, binding: &Binding, service: &Service) -> Result<Target, TargetError> {
    Ok(Target {
        ip: pod_ip(pod, binding.ip_family)?,
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
            ip_family: IpFamily::V4,
            aws_controller: false,
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
            ips: vec!["127.0.3.4".parse().unwrap()],
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
                ip: "127.0.3.4".parse().unwrap(),
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
        p.ips.clear();
        assert_eq!(
            resolve(&p, &binding(PortRef::Number(80)), &svc()),
            Err(TargetError::NoPodIp)
        );
    }

    #[test]
    fn an_ipv6_binding_targets_the_pods_ipv6_address() {
        // A dual-stack pod: IPv4 first in status.podIPs, as on a cluster whose primary family
        // is IPv4; an IPv6 target group holds the other one.
        let mut p = pod();
        p.ips = vec![
            "10.0.3.4".parse().unwrap(),
            "2001:db8:0:0:0:0:0:7".parse().unwrap(),
        ];
        let mut b = binding(PortRef::Number(80));
        assert_eq!(
            resolve(&p, &b, &svc()).unwrap().ip,
            "10.0.3.4".parse::<IpAddr>().unwrap()
        );
        b.ip_family = IpFamily::V6;
        let t = resolve(&p, &b, &svc()).unwrap();
        // Parsed: ELB's compressed spelling names the same target.
        assert_eq!(t.ip, "2001:db8::7".parse::<IpAddr>().unwrap());
        assert_eq!(t.to_string(), "[2001:db8::7]:8080");
        p.ips.truncate(1);
        assert_eq!(resolve(&p, &b, &svc()), Err(TargetError::NoPodIpv6));
    }
}
