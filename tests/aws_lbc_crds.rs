//! readygate reads the same TargetGroupBindings under the AWS Load Balancer Controller v3.5.0's
//! own CRD (from `../shared/aws-lbc-v3.5.0`, beside the repository here and in CI) as under the
//! rig's minimal one (`rig/manifests/targetgroupbinding-crd.yaml`): the same bindings applied
//! under each, read back through readygate's own type. One test in a binary of its own: it
//! replaces the CRD of the control plane its process runs.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{DeleteParams, ListParams};
use readygate::crd::TargetGroupBinding;
use rig::k8s::aws_lbc::{self, Crds};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const CRD: &str = "targetgroupbindings.elbv2.k8s.aws";
const ARN: &str =
    "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web/0123456789abcdef";

/// The bindings as readygate reads them back, by name: each spec as readygate's type holds it.
async fn read_back(client: &kube::Client, crds: &Crds) -> BTreeMap<String, Value> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    if api.get_opt(CRD).await.unwrap().is_some() {
        api.delete(CRD, &DeleteParams::default()).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while api.get_opt(CRD).await.unwrap().is_some() {
            assert!(Instant::now() < deadline, "the old CRD did not go");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    aws_lbc::install_crds_from(client, crds).await.unwrap();
    let ns = format!(
        "crd-{}",
        if matches!(crds, Crds::Real(_)) {
            "real"
        } else {
            "rig"
        }
    );
    rig::k8s::install::apply(
        client,
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        "",
    )
    .await
    .unwrap();
    let bindings = [
        json!({"metadata": {"name": "by-number"},
            "spec": {"targetGroupARN": ARN, "targetType": "ip",
                     "serviceRef": {"name": "web", "port": 80}}}),
        json!({"metadata": {"name": "by-name"},
            "spec": {"targetGroupARN": ARN, "targetType": "ip", "ipAddressType": "ipv6",
                     "serviceRef": {"name": "web", "port": "http"}}}),
        json!({"metadata": {"name": "instance"},
            "spec": {"targetGroupARN": ARN, "targetType": "instance",
                     "serviceRef": {"name": "web", "port": 80},
                     "nodeSelector": {"matchLabels": {"pool": "a"}}}}),
    ];
    for mut b in bindings {
        b["apiVersion"] = json!("elbv2.k8s.aws/v1beta1");
        b["kind"] = json!("TargetGroupBinding");
        // Discovery follows a new CRD a moment later.
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Err(e) = rig::k8s::install::create(client, &b, &ns).await {
            assert!(Instant::now() < deadline, "creating {b}: {e:#}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let read: Api<TargetGroupBinding> = Api::namespaced(client.clone(), &ns);
    read.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|b| {
            (
                b.metadata.name.clone().unwrap(),
                serde_json::to_value(&b.spec).unwrap(),
            )
        })
        .collect()
}

#[test]
fn readygate_reads_the_same_bindings_under_the_aws_controllers_crd_and_the_rigs() {
    rig::cluster::test(|plane| async move {
        let Some(dir) = aws_lbc::shared_dir() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "../shared/aws-lbc-v3.5.0 is beside the repository under CI"
            );
            println!("SKIPPED: ../shared/aws-lbc-v3.5.0 (the AWS controller's CRDs) is absent");
            return;
        };
        let client = plane.client().await.unwrap();
        let rig_crd = read_back(&client, &Crds::Rig(rig::k8s::install::crd_path())).await;
        let real = read_back(&client, &Crds::Real(dir.join("crds"))).await;
        eprintln!("read back: {real:#?}");
        assert_eq!(real, rig_crd);
        assert_eq!(
            real["by-name"],
            json!({"targetGroupARN": ARN, "targetType": "ip", "ipAddressType": "ipv6",
                   "serviceRef": {"name": "web", "port": "http"}})
        );
        assert_eq!(
            real["by-number"],
            json!({"targetGroupARN": ARN, "targetType": "ip",
                   "serviceRef": {"name": "web", "port": 80}})
        );
        assert_eq!(real["instance"]["targetType"], "instance");
    });
}
