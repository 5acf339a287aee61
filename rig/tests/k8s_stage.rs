//! readygate installed on the real control plane from the project's manifests: the real API
//! server calls its webhook through the webhook Service and applies its patch, and readygate's
//! ServiceAccount is judged by RBAC.

use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use kube::api::{DynamicObject, PostParams};
use kube::discovery::ApiResource;
use kube::{Api, Client};
use rig::stage::Stage;
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

async fn labelled_namespace(client: &Client) -> String {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"generateName": "gated-",
        "labels": {"elbv2.k8s.aws/pod-readiness-gate-inject": "enabled"}}}))
    .unwrap();
    let name = Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap()
        .metadata
        .name
        .unwrap();
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
    let deadline = Instant::now() + Duration::from_secs(20);
    while sas.get_opt("default").await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "no default ServiceAccount");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    name
}

#[test]
fn the_real_api_server_calls_readygate_through_its_service_and_applies_the_gate() {
    rig::cluster::test(|plane| async move {
        let Some(bin) = rig::readygate::find_binary(None) else {
            assert!(
                std::env::var_os("CI").is_none(),
                "the readygate binary is not built"
            );
            println!("SKIPPED: the readygate binary is not built");
            return;
        };
        let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
        let stage = Stage::start(&bin, &manifests, &[])
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let admin = stage.rig.client.clone();
        let ns = labelled_namespace(&admin).await;
        let svc: Service = serde_json::from_value(json!({"metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}))
        .unwrap();
        Api::<Service>::namespaced(admin.clone(), &ns)
            .create(&PostParams::default(), &svc)
            .await
            .unwrap();
        let ar = ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("elbv2.k8s.aws", "v1beta1", "TargetGroupBinding"),
            "targetgroupbindings",
        );
        let tgb: DynamicObject = serde_json::from_value(json!({"apiVersion": "elbv2.k8s.aws/v1beta1",
            "kind": "TargetGroupBinding", "metadata": {"name": "web"},
            "spec": {"targetGroupARN": "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/web/0123456789abcdef",
                "targetType": "ip", "serviceRef": {"name": "web", "port": 80}}}))
        .unwrap();
        Api::<DynamicObject>::namespaced_with(admin.clone(), &ns, &ar)
            .create(&PostParams::default(), &tgb)
            .await
            .unwrap();
        // readygate's cache sees the binding a moment later.
        let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut i = 0;
        let gates = loop {
            i += 1;
            let pod: Pod = serde_json::from_value(json!({"metadata": {"name": format!("web-{i}"), "labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "rig/web:1", "ports": [{"containerPort": 8080}]}]}}))
            .unwrap();
            let created = pods.create(&PostParams::default(), &pod).await.unwrap();
            let gates: Vec<String> = created
                .spec
                .unwrap()
                .readiness_gates
                .unwrap_or_default()
                .into_iter()
                .map(|g| g.condition_type)
                .collect();
            if !gates.is_empty() || Instant::now() > deadline {
                break gates;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let log = stage.log_tail(40);
        stage.stop().await.unwrap();
        assert_eq!(
            gates,
            vec!["target-health.elbv2.k8s.aws/web".to_string()],
            "readygate's log:\n{log}"
        );
        // The API server measured the webhook call, and RBAC denied readygate nothing.
        let latency = rig::k8s::audit::admission_latency(&admin).await.unwrap();
        assert!(latency.count >= 1.0, "{latency:?}");
        let rbac = std::fs::read_to_string(manifests.join("base/rbac.yaml")).unwrap();
        let used = rig::k8s::audit::rbac_use(
            &rig::k8s::audit::requests(&plane.audit_log).unwrap(),
            &rig::k8s::audit::granted(&rbac).unwrap(),
        );
        assert!(used.denied.is_empty(), "{}", used.report());
        assert!(!used.used.is_empty(), "{}", used.report());
    });
}
