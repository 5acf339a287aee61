//! The rig's node agent against the real control plane: the scheduler binds pods to its Node,
//! it runs them on their own IPs, reports Ready as the kubelet does (readiness gates included),
//! and terminates them as the kubelet does; the real EndpointSlice controller follows.

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use rig::k8s::node::NodeAgent;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const GATE: &str = "target-health.elbv2.k8s.aws/web";

async fn namespace(client: &Client, prefix: &str) -> String {
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"generateName": format!("{prefix}-")}}))
            .unwrap();
    let name = Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap()
        .metadata
        .name
        .unwrap();
    // Pods need the namespace's `default` ServiceAccount, which its controller makes.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
    wait(
        "the default ServiceAccount",
        Duration::from_secs(20),
        || async { sas.get_opt("default").await.ok().flatten().map(|_| ()) },
    )
    .await;
    name
}

async fn wait<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn condition(pod: &Value, t: &str) -> Option<Value> {
    pod.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == t)
        .cloned()
}

async fn get(pods: &Api<Pod>, name: &str) -> Option<Value> {
    let pod = pods.get_opt(name).await.ok()??;
    serde_json::to_value(pod).ok()
}

async fn http_get(addr: &str) -> Option<String> {
    let addr = addr.parse().ok()?;
    rig::kubelet::reqwest_like::Client
        .get_ok(addr, "/", Duration::from_millis(500))
        .await
        .ok()
        .map(|c| c.to_string())
}

#[test]
fn a_scheduled_pod_serves_on_its_ip_is_ready_only_with_its_gate_and_terminates_as_the_kubelet_does()
{
    rig::cluster::test(|plane| async move {
        let admin = plane.client().await.unwrap();
        let node = "node-lifecycle";
        let _agent = NodeAgent::start(NodeAgent::client(plane, node).await.unwrap(), node)
            .await
            .unwrap();
        let nodes: Api<Node> = Api::all(admin.clone());
        let n = serde_json::to_value(nodes.get(node).await.unwrap()).unwrap();
        assert_eq!(condition(&n, "Ready").unwrap()["status"], "True");

        let ns = namespace(&admin, "node").await;
        let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
        let svc = json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}});
        Api::<k8s_openapi::api::core::v1::Service>::namespaced(admin.clone(), &ns)
            .create(
                &PostParams::default(),
                &serde_json::from_value(svc).unwrap(),
            )
            .await
            .unwrap();
        let pod = json!({
            "metadata": {"name": "web-1", "labels": {"app": "web"}, "annotations": {
                rig::kubelet::START_DELAY_ANNOTATION: "100", rig::kubelet::PROBE_PERIOD_ANNOTATION: "100"}},
            "spec": {
                "nodeSelector": {"kubernetes.io/hostname": node},
                "readinessGates": [{"conditionType": GATE}],
                "terminationGracePeriodSeconds": 5,
                "containers": [{"name": "web", "image": "rig/web:1",
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1},
                    "lifecycle": {"preStop": {"sleep": {"seconds": 1}}}}]}
        });
        pods.create(
            &PostParams::default(),
            &serde_json::from_value(pod).unwrap(),
        )
        .await
        .unwrap();

        // Bound by the real scheduler, running on its own pod IP, containers ready, not Ready.
        let p = wait("ContainersReady", Duration::from_secs(20), || async {
            let p = get(&pods, "web-1").await?;
            (condition(&p, "ContainersReady")?["status"] == "True").then_some(p)
        })
        .await;
        assert_eq!(p["spec"]["nodeName"], node);
        let ip = p["status"]["podIP"].as_str().unwrap().to_string();
        assert!(ip.starts_with("10.244."), "{ip}");
        assert_eq!(p["status"]["podIPs"], json!([{"ip": ip}]));
        assert_eq!(p["status"]["hostIP"], rig::netns::NODE_IP.to_string());
        assert_eq!(p["status"]["phase"], "Running");
        assert_eq!(p["status"]["containerStatuses"][0]["ready"], true);
        let ready = condition(&p, "Ready").unwrap();
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["reason"], "ReadinessGatesNotReady");
        assert!(http_get(&format!("{ip}:8080")).await.is_some());

        // The real EndpointSlice controller: a not-Ready pod is an endpoint with ready false.
        let slices: Api<EndpointSlice> = Api::namespaced(admin.clone(), &ns);
        let endpoint = |want: Value| {
            let slices = slices.clone();
            let ip = ip.clone();
            async move {
                let list = slices
                    .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
                    .await
                    .ok()?;
                let eps: Vec<Value> = list
                    .items
                    .iter()
                    .flat_map(|s| s.endpoints.iter())
                    .map(|e| serde_json::to_value(e).unwrap())
                    .filter(|e| e["addresses"][0] == ip.as_str())
                    .collect();
                let c = &eps.first()?["conditions"];
                (want
                    .as_object()?
                    .iter()
                    .all(|(k, v)| c.get(k).unwrap_or(&json!(false)) == v))
                .then_some(())
            }
        };
        wait("a not-ready endpoint", Duration::from_secs(10), || {
            endpoint(json!({"ready": false, "serving": false}))
        })
        .await;

        // The gate's condition True: the node agent recomputes Ready.
        let patch = json!({"status": {"conditions": [{"type": GATE, "status": "True",
            "lastTransitionTime": rig::time::now_time()}]}});
        pods.patch_status("web-1", &PatchParams::default(), &Patch::Strategic(patch))
            .await
            .unwrap();
        let p = wait("Ready", Duration::from_secs(10), || async {
            let p = get(&pods, "web-1").await?;
            (condition(&p, "Ready")?["status"] == "True").then_some(p)
        })
        .await;
        // The reasons of the False conditions are gone with them.
        for t in ["Ready", "ContainersReady"] {
            let c = condition(&p, t).unwrap();
            assert!(
                c.get("reason").is_none() && c.get("message").is_none(),
                "{t} True keeps no reason: {c}"
            );
        }
        wait("a ready endpoint", Duration::from_secs(10), || {
            endpoint(json!({"ready": true, "serving": true}))
        })
        .await;

        // Deletion: the preStop sleep (1 s) keeps the server answering, then SIGTERM stops it,
        // then the pod object goes.
        let deleted = Instant::now();
        pods.delete("web-1", &DeleteParams::default())
            .await
            .unwrap();
        wait("a terminating endpoint", Duration::from_secs(5), || {
            endpoint(json!({"ready": false, "terminating": true}))
        })
        .await;
        assert!(
            deleted.elapsed() < Duration::from_millis(800),
            "endpoint update too slow to check the preStop sleep"
        );
        assert!(
            http_get(&format!("{ip}:8080")).await.is_some(),
            "the pod stopped serving during its preStop sleep"
        );
        wait("the pod's removal", Duration::from_secs(10), || async {
            get(&pods, "web-1").await.is_none().then_some(())
        })
        .await;
        let took = deleted.elapsed();
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_secs(5),
            "{took:?}"
        );
        assert!(http_get(&format!("{ip}:8080")).await.is_none());
    });
}

#[test]
fn a_container_failing_its_liveness_probe_is_restarted_with_the_kubelets_back_off() {
    rig::cluster::test(|plane| async move {
        let Some(bin) = rig::readygate::find_binary(None) else {
            assert!(
                std::env::var_os("CI").is_none(),
                "the readygate binary is not built"
            );
            println!("SKIPPED: the readygate binary is not built");
            return;
        };
        let admin = plane.client().await.unwrap();
        let node = "node-containers";
        let opts = rig::k8s::node::NodeOpts {
            readygate_bin: Some(bin),
            ..Default::default()
        };
        let agent =
            NodeAgent::start_with(NodeAgent::client(plane, node).await.unwrap(), node, opts)
                .await
                .unwrap();
        let ns = namespace(&admin, "containers").await;
        let certs = rig::certs::Certs::generate(&["rg.example".into()]).unwrap();
        rig::k8s::install::apply(
            &admin,
            &rig::k8s::install::tls_secret("tls", &ns, &certs),
            &ns,
        )
        .await
        .unwrap();
        rig::k8s::install::apply(
            &admin,
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
                "data": {"drain": "1s"}}),
            &ns,
        )
        .await
        .unwrap();
        // readygate as a container whose liveness probe asks for a path it does not serve:
        // killed (SIGTERM) a second after each start.
        let pod = json!({
            "metadata": {"name": "rg"},
            "spec": {
                "nodeSelector": {"kubernetes.io/hostname": node},
                "terminationGracePeriodSeconds": 5,
                "containers": [{"name": "readygate", "image": "example.com/team/readygate:v0",
                    "args": ["serve", "--identity=$(POD_NAME)", "--controller=false"],
                    "env": [
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        {"name": "READYGATE_SHUTDOWN_DELAY", "value": "0s"},
                        {"name": "READYGATE_DRAIN_TIMEOUT", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "drain"}}},
                        {"name": "CA_PEM", "valueFrom": {"secretKeyRef": {"name": "tls", "key": "ca.crt"}}},
                        {"name": "ADDR", "value": "$(POD_IP):8080"}],
                    "ports": [{"name": "admin", "containerPort": 8080}],
                    "livenessProbe": {"httpGet": {"path": "/not-served", "port": "admin"},
                        "initialDelaySeconds": 1, "periodSeconds": 1, "failureThreshold": 1},
                    "volumeMounts": [{"name": "tls", "mountPath": "/tls", "readOnly": true}]}],
                "volumes": [{"name": "tls", "secret": {"secretName": "tls"}}]}
        });
        let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
        pods.create(
            &PostParams::default(),
            &serde_json::from_value(pod).unwrap(),
        )
        .await
        .unwrap();
        let info = wait("the container", Duration::from_secs(20), || async {
            agent.container(&ns, "rg")
        })
        .await;
        let environ = std::fs::read_to_string(format!("/proc/{}/environ", info.pid)).unwrap();
        let env: Vec<&str> = environ.split('\0').collect();
        let ip = info.pod_ip.to_string();
        for want in [
            "POD_NAME=rg".to_string(),
            format!("POD_IP={ip}"),
            format!("ADDR={ip}:8080"),
            "READYGATE_DRAIN_TIMEOUT=1s".into(),
            format!("CA_PEM={}", certs.ca_pem),
        ] {
            assert!(env.contains(&want.as_str()), "{want} in {env:?}");
        }
        let cmdline = std::fs::read_to_string(format!("/proc/{}/cmdline", info.pid)).unwrap();
        assert!(cmdline.contains("--identity=rg\0"), "{cmdline:?}");

        // Killed by its liveness probe, restarted at once; killed again, then it waits out the
        // kubelet's back-off (10 s) in CrashLoopBackOff before its second restart.
        let status = |want: fn(&Value) -> bool| {
            let pods = pods.clone();
            async move {
                let p = get(&pods, "rg").await?;
                let c = p["status"]["containerStatuses"][0].clone();
                want(&c).then_some(c)
            }
        };
        let c = wait("CrashLoopBackOff", Duration::from_secs(30), || {
            status(|c| c["state"]["waiting"]["reason"] == "CrashLoopBackOff")
        })
        .await;
        let at = Instant::now();
        assert_eq!(c["restartCount"], 1, "{c}");
        assert!(
            c["state"]["waiting"]["message"]
                .as_str()
                .unwrap()
                .starts_with("back-off 10s restarting failed container=readygate pod=rg_"),
            "{c}"
        );
        // SIGTERM from the kill: readygate shuts down and exits 0.
        assert_eq!(c["lastState"]["terminated"]["exitCode"], 0, "{c}");
        assert_eq!(c["lastState"]["terminated"]["reason"], "Completed", "{c}");
        let c = wait("the second restart", Duration::from_secs(20), || {
            status(|c| c["restartCount"] == 2 && c["state"]["running"].is_object())
        })
        .await;
        let waited = at.elapsed();
        assert!(
            waited >= Duration::from_secs(8) && waited < Duration::from_secs(13),
            "the back-off: {waited:?} ({c})"
        );
        pods.delete("rg", &DeleteParams::default()).await.unwrap();
        wait("the pod's removal", Duration::from_secs(15), || async {
            get(&pods, "rg").await.is_none().then_some(())
        })
        .await;
    });
}
