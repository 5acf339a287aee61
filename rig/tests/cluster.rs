//! The real control plane the rig runs on: built from Go modules, started in the rig's network
//! namespace, reporting its version, authorising with RBAC and writing its audit log.

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::PostParams;

#[test]
fn the_control_plane_is_kubernetes_v1_37_2_on_etcd_3_7() {
    rig::cluster::test(|plane| async move {
        assert_eq!(plane.version, "v1.37.2");
        assert_eq!(plane.etcd_version, "3.7.0");
        let client = plane.client().await.unwrap();
        let ns: Api<Namespace> = Api::all(client);
        let created = ns
            .create(
                &PostParams::default(),
                &serde_json::from_value(
                    serde_json::json!({"metadata": {"generateName": "smoke-"}}),
                )
                .unwrap(),
            )
            .await
            .unwrap();
        let name = created.metadata.name.unwrap();
        // RBAC judges every user: a user with no binding is denied.
        let nobody = plane.user_client("nobody", &[]).await.unwrap();
        let err = Api::<Namespace>::all(nobody).get(&name).await.unwrap_err();
        assert!(
            matches!(&err, kube::Error::Api(s) if s.code == 403),
            "{err}"
        );
        // The audit log records the user, verb, resource and response code of both requests.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let log = std::fs::read_to_string(&plane.audit_log).unwrap_or_default();
            let events: Vec<serde_json::Value> = log
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            let seen = |user: &str, verb: &str, code: i64| {
                events.iter().any(|e| {
                    e["user"]["username"] == user
                        && e["verb"] == verb
                        && e["objectRef"]["resource"] == "namespaces"
                        && e["responseStatus"]["code"] == code
                })
            };
            if seen("rig-admin", "create", 201) && seen("nobody", "get", 403) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the audit log lacks the requests"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    });
}
