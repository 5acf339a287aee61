//! readygate installed as a user installs it: `manifests/base` applied whole, its Deployment
//! included (patched only to name the rig's ELBv2 endpoint), the Secret of its serving
//! certificate made by the rig. The real Deployment controller makes its two pods, and the
//! rig's node agent runs each as the readygate binary in a container, as a kubelet would:
//! in-cluster configuration from the projected ServiceAccount token, the Secret mounted at
//! /tls, Ready by its own probes, restarted when it dies, stopped as a kubelet stops it.

mod common;

use rig::demo::{Mode, ModeOptions, prestop_sleep_arg, run_mode, summary_line, timeline_table};
use rig::k8s::audit::{READYGATE_USER, requests};
use rig::rig::RigConfig;
use rig::stage::Deployed;
use rig::timeline::Milestone;
use serde_json::Value;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The readygate binary; None (the test then passes with a SKIPPED line) only outside CI and
/// scripts/test.
fn binary() -> Option<PathBuf> {
    common::crypto();
    let bin = rig::readygate::find_binary(None);
    if bin.is_none() {
        assert!(
            std::env::var_os("CI").is_none() && std::env::var_os("READYGATE_BIN").is_none(),
            "the readygate binary was not found (READYGATE_BIN={:?})",
            std::env::var_os("READYGATE_BIN")
        );
        println!("SKIPPED: the readygate binary is not built (cargo build --bin readygate)");
    }
    bin
}

async fn deployed(args: &[String]) -> Option<Deployed> {
    let bin = binary()?;
    Some(
        Deployed::start(&bin, &common::manifests_dir(), args)
            .await
            .unwrap_or_else(|e| panic!("installing readygate with its Deployment: {e:#}")),
    )
}

fn s(v: &Value, pointer: &str) -> String {
    rig::str_at(v, pointer)
}

/// A field of /proc/PID/status (`Uid`, `Gid`, `Groups`), its first column or all of them.
fn proc_status(pid: u32, field: &str) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// A file as the container sees it.
fn in_container(pid: u32, path: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root{path}"))
}

/// The claims of a JWT (unverified: the API server verified it).
fn claims(jwt: &str) -> Value {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).expect("a JWT has three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url claims");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

/// The body of a plain-HTTP GET.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).to_string();
        let (head, body) = text.split_once("\r\n\r\n")?;
        head.contains(" 200 ").then(|| body.to_string())
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .ok()
        .flatten()
}

/// The leaf certificate the webhook at `addr` serves, verified against `ca_pem` for the
/// webhook Service's name.
async fn served_cert(addr: std::net::SocketAddr, ca_pem: &str, name: &str) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect timeout")
        .expect("connecting to the webhook");
    let server_name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let tls = tokio::time::timeout(Duration::from_secs(2), connector.connect(server_name, tcp))
        .await
        .expect("handshake timeout")
        .expect("a TLS handshake the CA verifies");
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn der(pem: &str) -> Vec<u8> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

fn alive(pid: u32) -> bool {
    // A reaped process has no /proc entry; a zombie's state is Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.split(") ").nth(1).is_some_and(|r| !r.starts_with('Z')))
}

#[test]
fn readygate_deployed_from_its_manifests_runs_in_cluster_and_gates_a_rollout_losing_nothing() {
    rig::cluster::test(|plane| async move {
        let _serial = rig::serial::exclusive().await;
        let args = [prestop_sleep_arg(&RigConfig::default())];
        // Under `cargo test` the control plane (and its audit log) is the binary's: only what
        // happened since this install counts.
        let since = rig::time::now_micro();
        let Some(stage) = deployed(&args).await else {
            return;
        };
        let ns = stage.namespace.clone();
        let pods = stage.pods().await.unwrap();
        assert_eq!(pods.len(), 2, "the Deployment's replicas");
        let mut ips: Vec<String> = pods.iter().map(|p| s(p, "/status/podIP")).collect();
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), 2, "each pod its own IP: {ips:?}");
        assert_eq!(
            stage.ready_endpoints().await.unwrap(),
            ips,
            "both behind the webhook Service"
        );

        // The API server's own endpoint, which the containers were given.
        let slices: kube::Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
            kube::Api::namespaced(stage.client.clone(), "default");
        let api_slice = slices.get("kubernetes").await.unwrap();
        let api_ep = (
            api_slice.endpoints[0].addresses[0].clone(),
            api_slice.ports.as_ref().unwrap()[0].port.unwrap(),
        );

        let self_mnt = std::fs::read_link("/proc/self/ns/mnt").unwrap();
        let self_net = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        let mut names = Vec::new();
        for p in &pods {
            let name = s(p, "/metadata/name");
            let c = &p["status"]["containerStatuses"][0];
            assert_eq!(c["ready"], true, "{name}: {c}");
            assert_eq!(c["restartCount"], 0, "{name}: {c}");
            assert!(c["state"]["running"].is_object(), "{name}: {c}");
            let info = stage
                .rig
                .node()
                .container(&ns, &name)
                .expect("its container");
            let pid = info.pid;
            // Its own mount and network namespaces, its user and fsGroup.
            assert_ne!(
                std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap(),
                self_mnt
            );
            assert_ne!(
                std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap(),
                self_net
            );
            assert_eq!(proc_status(pid, "Uid")[0], "65532");
            assert_eq!(proc_status(pid, "Gid")[0], "65532");
            assert!(proc_status(pid, "Groups").contains(&"65532".to_string()));
            assert_eq!(proc_status(pid, "NoNewPrivs"), ["1"]);
            let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
            assert_eq!(
                cmdline
                    .split('\0')
                    .filter(|a| !a.is_empty())
                    .collect::<Vec<_>>(),
                ["/readygate", "serve", args[0].as_str()],
                "the image's entrypoint with the manifests' args (and the overlay's)"
            );
            let environ = std::fs::read_to_string(format!("/proc/{pid}/environ")).unwrap();
            let env: Vec<&str> = environ.split('\0').collect();
            for want in [
                format!("KUBERNETES_SERVICE_HOST={}", api_ep.0),
                format!("KUBERNETES_SERVICE_PORT={}", api_ep.1),
                format!("POD_NAME={name}"),
                format!("POD_NAMESPACE={ns}"),
                "READYGATE_LOG_FORMAT=json".to_string(),
                format!("AWS_ENDPOINT_URL={}", stage.rig.elb_api.url()),
            ] {
                assert!(env.contains(&want.as_str()), "{want} in {env:?}");
            }
            assert!(!env.iter().any(|e| e.starts_with("KUBECONFIG=")));
            // The projected ServiceAccount volume: a token bound to this pod, the cluster CA,
            // the namespace.
            let sa = "/var/run/secrets/kubernetes.io/serviceaccount";
            let token = std::fs::read_to_string(in_container(pid, &format!("{sa}/token"))).unwrap();
            let cl = claims(&token);
            assert_eq!(cl["kubernetes.io"]["pod"]["name"], name.as_str(), "{cl}");
            assert_eq!(
                cl["kubernetes.io"]["serviceaccount"]["name"], "readygate",
                "{cl}"
            );
            assert_eq!(
                std::fs::read_to_string(in_container(pid, &format!("{sa}/ca.crt"))).unwrap(),
                plane.pki.ca_pem
            );
            assert_eq!(
                std::fs::read_to_string(in_container(pid, &format!("{sa}/namespace"))).unwrap(),
                ns
            );
            // The Secret at /tls, as the atomic writer leaves it: ..data, per-key symlinks,
            // defaultMode 0440, group 65532.
            let data = std::fs::read_link(in_container(pid, "/tls/..data")).unwrap();
            assert!(data.to_string_lossy().starts_with("..2"), "{data:?}");
            assert_eq!(
                std::fs::read_link(in_container(pid, "/tls/tls.key")).unwrap(),
                PathBuf::from("..data/tls.key")
            );
            let key = std::fs::metadata(in_container(pid, "/tls/tls.key")).unwrap();
            assert_eq!((key.mode() & 0o777, key.gid()), (0o440, 65532));
            assert_eq!(
                std::fs::read_to_string(in_container(pid, "/tls/tls.crt")).unwrap(),
                stage.certs.cert_pem
            );
            names.push(name);
        }

        // A gated rollout of the application, readygate injecting its preStop sleep.
        let mode = run_mode(&stage.rig, Mode::Readygate, &ModeOptions::default(), |r| {
            println!("{}\n{}", summary_line(r), timeline_table(r))
        })
        .await
        .unwrap();
        let log = stage.log_tail(30);
        let r = &mode.rollouts[0];
        assert!(
            r.rollout.complete() && r.drained.is_some(),
            "the rollout completed; readygate's logs:\n{log}"
        );
        assert_eq!(r.failed(), 0, "{:?}", r.failure_kinds());
        assert!(r.sent() > 200);
        assert_eq!(
            mode.ungated_new_pods(),
            0,
            "the webhook gave every new pod its gate"
        );
        for p in r.pods.iter().filter(|p| p.revision == r.revision) {
            assert!(
                p.at[&Milestone::GateTrue] >= p.at[&Milestone::ElbHealthy],
                "{}: gate True only once the load balancer said healthy",
                p.name
            );
        }

        // The API server saw readygate as its ServiceAccount, with a token bound to one of its
        // pods, from that pod's IP; and wrote the gates (pods/status) that way.
        let all = requests(&plane.audit_log).unwrap();
        let by_readygate: Vec<_> = all
            .iter()
            .filter(|q| q.user == READYGATE_USER && q.at >= since)
            .collect();
        assert!(!by_readygate.is_empty());
        for q in &by_readygate {
            assert!(
                names.contains(&q.pod) && ips.contains(&q.source_ip),
                "a request not made with a pod's projected token from its IP: {q:?}"
            );
        }
        assert!(
            by_readygate
                .iter()
                .any(|q| q.verb == "patch" && q.subresource == "status" && q.code == 200),
            "readygate wrote the gates' conditions"
        );
        let rbac = std::fs::read_to_string(common::manifests_dir().join("base/rbac.yaml")).unwrap();
        let used = rig::k8s::audit::rbac_use(&all, &rig::k8s::audit::granted(&rbac).unwrap());
        assert!(used.denied.is_empty(), "{}", used.report());

        let pids: Vec<u32> = names
            .iter()
            .map(|n| stage.rig.node().container(&ns, n).unwrap().pid)
            .collect();
        let uids: Vec<String> = pods.iter().map(|p| s(p, "/metadata/uid")).collect();
        for u in &uids {
            assert!(
                stage
                    .rig
                    .dir
                    .path()
                    .join("pods")
                    .join(u)
                    .join("volumes")
                    .is_dir()
            );
        }
        stage.stop().await.unwrap();
        assert!(pids.iter().all(|p| !alive(*p)), "the containers stopped");
        // Removed right after the final delete, as the kubelet cleans up a deleted pod.
        let deadline = Instant::now() + Duration::from_secs(5);
        while uids
            .iter()
            .any(|u| stage.rig.dir.path().join("pods").join(u).exists())
        {
            assert!(
                Instant::now() < deadline,
                "a deleted pod's volumes (its token, its key) are removed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

#[test]
fn a_rotated_secret_reaches_the_running_readygate() {
    rig::cluster::test(|_| async {
        let _serial = rig::serial::exclusive().await;
        let Some(mut stage) = deployed(&[]).await else {
            return;
        };
        let ns = stage.namespace.clone();
        let sni = format!("{}.{}.svc", stage.service, ns);
        let ca = stage.certs.ca_pem.clone();
        let old = der(&stage.certs.cert_pem);
        let mut pods = Vec::new();
        for p in stage.pods().await.unwrap() {
            let name = s(&p, "/metadata/name");
            let ip: std::net::IpAddr = s(&p, "/status/podIP").parse().unwrap();
            let pid = stage.rig.node().container(&ns, &name).unwrap().pid;
            let data = std::fs::read_link(in_container(pid, "/tls/..data")).unwrap();
            assert_eq!(
                served_cert((ip, 9443).into(), &ca, &sni).await,
                old,
                "{name} serves the installed certificate"
            );
            pods.push((name, ip, pid, data));
        }
        let new_pem = stage.rotate().await.unwrap().cert_pem.clone();
        let new = der(&new_pem);
        assert_ne!(old, new);

        // The node agent's next volume sync swaps ..data; readygate's next reload serves it.
        let started = Instant::now();
        for (name, ip, pid, data) in &pods {
            let deadline = started + Duration::from_secs(40);
            loop {
                if served_cert((*ip, 9443).into(), &ca, &sni).await == new {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{name} still serves the old certificate 40 s after the Secret changed; logs:\n{}",
                    stage.log_tail(10)
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            assert_eq!(
                std::fs::read_to_string(in_container(*pid, "/tls/tls.crt")).unwrap(),
                new_pem
            );
            assert_ne!(
                &std::fs::read_link(in_container(*pid, "/tls/..data")).unwrap(),
                data,
                "a new timestamped directory behind ..data"
            );
            let metrics = http_get((*ip, 8080).into(), "/metrics").await.unwrap();
            let reloads = rig::k8s::audit::counter(
                &metrics,
                "readygate_tls_reloads_total",
                &[("outcome", "ok")],
            );
            assert_eq!(reloads, 1.0, "{name}: one reload\n{metrics}");
            assert_eq!(
                stage.rig.node().container(&ns, name).unwrap().pid,
                *pid,
                "reloaded, not restarted"
            );
        }
        println!(
            "rotation served by both replicas after {:?}",
            started.elapsed()
        );
        let log = stage.log_tail(50);
        assert!(log.contains("serving certificate reloaded"), "{log}");
        stage.stop().await.unwrap();
    })
}

#[test]
fn a_readygate_container_is_restarted_when_it_dies_and_stopped_as_a_kubelet_stops_it() {
    rig::cluster::test(|_| async {
        let _serial = rig::serial::exclusive().await;
        let Some(stage) = deployed(&[]).await else {
            return;
        };
        let ns = stage.namespace.clone();
        let pods = stage.pods().await.unwrap();
        let name = s(&pods[0], "/metadata/name");
        let ip: std::net::IpAddr = s(&pods[0], "/status/podIP").parse().unwrap();
        let first = stage.rig.node().container(&ns, &name).unwrap();

        // Killed: restartPolicy Always restarts it at once (the kubelet's first restart has no
        // back-off), in the same pod, and its probes make it Ready again.
        // SAFETY: signalling the container process by PID.
        unsafe { libc::kill(first.pid as i32, libc::SIGKILL) };
        let api: kube::Api<k8s_openapi::api::core::v1::Pod> =
            kube::Api::namespaced(stage.client.clone(), &ns);
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            let p = serde_json::to_value(api.get(&name).await.unwrap()).unwrap();
            let c = p["status"]["containerStatuses"][0].clone();
            if c["restartCount"] == 1 && c["ready"] == true {
                break c;
            }
            assert!(
                Instant::now() < deadline,
                "not restarted and Ready within 30 s: {c}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(
            status["lastState"]["terminated"]["exitCode"], 137,
            "{status}"
        );
        assert_eq!(
            status["lastState"]["terminated"]["reason"], "Error",
            "{status}"
        );
        assert!(
            status["state"]["running"].is_object() && status["state"].get("terminated").is_none(),
            "{status}"
        );
        let second = stage.rig.node().container(&ns, &name).unwrap();
        assert_ne!(second.pid, first.pid);
        assert_eq!(second.restart_count, 1);
        assert!(second.log.ends_with("1.log") && first.log.ends_with("0.log"));
        assert!(
            std::fs::read_to_string(&second.log)
                .unwrap()
                .contains("readygate serving")
        );

        // Deleted: the preStop sleep (5 s) with readygate still serving, then SIGTERM; readygate
        // keeps serving its shutdown delay (10 s), drains and exits; then the pod object goes,
        // within its 40 s grace period. The Deployment replaces it.
        let deleted = Instant::now();
        api.delete(&name, &Default::default()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(alive(second.pid), "SIGTERM only after the preStop sleep");
        assert!(
            http_get((ip, 8080).into(), "/healthz").await.is_some(),
            "serving during the preStop sleep"
        );
        let gone = loop {
            if api.get_opt(&name).await.unwrap().is_none() {
                break deleted.elapsed();
            }
            assert!(
                deleted.elapsed() < Duration::from_secs(45),
                "the pod outlived its grace period"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(!alive(second.pid));
        println!("deleted pod gone after {gone:?}");
        assert!(
            gone >= Duration::from_secs(15) && gone < Duration::from_secs(40),
            "preStop 5 s + readygate's shutdown delay 10 s, within the grace period: {gone:?}"
        );
        stage.wait_ready(Duration::from_secs(60)).await.unwrap();
        stage.stop().await.unwrap();
    })
}
