//! The fault proxy in front of the real API server: a ServiceAccount's client lists and watches
//! through it with its own token, and the proxy's outage and watch cuts do what a restarting API
//! server does to that client.

use futures::{Stream, StreamExt};
use http::Method;
use http_body_util::BodyExt;
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams};
use kube::core::WatchEvent;
use kube::{Api, Client};
use rig::cluster::ControlPlane;
use rig::fault_proxy::FaultProxy;
use serde_json::json;
use std::time::{Duration, Instant};

const TGB_PREFIX: &str = "/apis/elbv2.k8s.aws/";

fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("a valid object")
}

/// A ServiceAccount in a fresh namespace that may list and watch namespaces, and configmaps and
/// TargetGroupBindings in its own namespace only; its client talks to the API server through
/// `proxy` with a token from the TokenRequest API.
struct Account {
    ns: String,
    user: String,
    client: Client,
}

async fn account(plane: &ControlPlane, proxy: &FaultProxy) -> Account {
    let admin = plane.client().await.unwrap();
    let ns = Api::<Namespace>::all(admin.clone())
        .create(
            &PostParams::default(),
            &from_json(json!({"metadata": {"generateName": "proxy-"}})),
        )
        .await
        .unwrap()
        .metadata
        .name
        .unwrap();
    let pp = PostParams::default();
    let sa: Api<ServiceAccount> = Api::namespaced(admin.clone(), &ns);
    sa.create(&pp, &from_json(json!({"metadata": {"name": "reader"}})))
        .await
        .unwrap();
    let subject = json!([{"kind": "ServiceAccount", "name": "reader", "namespace": ns}]);
    let verbs = json!(["get", "list", "watch"]);
    Api::<ClusterRole>::all(admin.clone())
        .create(
            &pp,
            &from_json(json!({
                "metadata": {"name": format!("{ns}-namespaces")},
                "rules": [{"apiGroups": [""], "resources": ["namespaces"], "verbs": verbs}],
            })),
        )
        .await
        .unwrap();
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(
            &pp,
            &from_json(json!({
                "metadata": {"name": format!("{ns}-namespaces")},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": format!("{ns}-namespaces")},
                "subjects": subject,
            })),
        )
        .await
        .unwrap();
    Api::<Role>::namespaced(admin.clone(), &ns)
        .create(
            &pp,
            &from_json(json!({
                "metadata": {"name": "reader"},
                "rules": [
                    {"apiGroups": [""], "resources": ["configmaps"], "verbs": verbs},
                    {"apiGroups": ["elbv2.k8s.aws"], "resources": ["targetgroupbindings"], "verbs": verbs},
                ],
            })),
        )
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), &ns)
        .create(
            &pp,
            &from_json(json!({
                "metadata": {"name": "reader"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
                "subjects": subject,
            })),
        )
        .await
        .unwrap();
    let token = sa
        .create_token_request(
            "reader",
            &pp,
            &TokenRequest {
                spec: TokenRequestSpec {
                    expiration_seconds: Some(3600),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&proxy.kubeconfig_for_token(&token))
        .expect("the proxy's kubeconfig parses");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    assert_eq!(config.cluster_url.to_string(), format!("{}/", proxy.url()));
    let client = Client::try_from(config).unwrap();
    // RBAC's cache learns of the bindings a moment after they are written.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    eventually("the service account may list configmaps", || async {
        cms.list(&ListParams::default()).await.is_ok()
    })
    .await;
    Account {
        user: format!("system:serviceaccount:{ns}:reader"),
        ns,
        client,
    }
}

async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(Instant::now() < deadline, "{what}: not within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The TargetGroupBinding CRD, established (created once per control plane).
async fn tgb_crd(plane: &ControlPlane) -> ApiResource {
    let admin = plane.client().await.unwrap();
    let crd: CustomResourceDefinition =
        serde_yaml::from_str(include_str!("../manifests/targetgroupbinding-crd.yaml")).unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(admin);
    match crds.create(&PostParams::default(), &crd).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("creating the TargetGroupBinding CRD: {e}"),
    }
    eventually("the TargetGroupBinding CRD is established", || async {
        crds.get("targetgroupbindings.elbv2.k8s.aws")
            .await
            .ok()
            .and_then(|c| c.status?.conditions)
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            })
    })
    .await;
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("elbv2.k8s.aws", "v1beta1", "TargetGroupBinding"),
        "targetgroupbindings",
    )
}

/// A live watch of `api` from its current list.
async fn watch<K>(api: &Api<K>) -> impl Stream<Item = kube::Result<WatchEvent<K>>> + use<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let rv = api
        .list_metadata(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let wp = kube::api::WatchParams::default().timeout(290);
    Box::pin(api.watch(&wp, &rv).await.unwrap())
}

/// Waits for an ADDED event of `name`.
async fn added<K: kube::Resource>(
    events: &mut (impl Stream<Item = kube::Result<WatchEvent<K>>> + Unpin),
    name: &str,
) {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.next().await {
                Some(Ok(WatchEvent::Added(o))) if o.meta().name.as_deref() == Some(name) => {
                    return;
                }
                Some(Ok(_)) => {}
                other => panic!("the watch ended before {name} was added: {other:?}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no ADDED event for {name} within 10 s"));
}

/// Waits for a watch to end or fail, as a client sees a cut connection.
async fn ends<K: std::fmt::Debug>(
    events: &mut (impl Stream<Item = kube::Result<WatchEvent<K>>> + Unpin),
) -> Option<kube::Error> {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.next().await {
                None => return None,
                Some(Err(e)) => return Some(e),
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .expect("the watch was still open 5 s after the cut")
}

async fn create_configmap(plane: &ControlPlane, ns: &str, name: &str) {
    Api::<ConfigMap>::namespaced(plane.client().await.unwrap(), ns)
        .create(
            &PostParams::default(),
            &from_json(json!({"metadata": {"name": name}})),
        )
        .await
        .unwrap();
}

#[test]
fn lists_and_watches_go_through_with_the_service_accounts_own_token() {
    rig::cluster::test(|plane| async move {
        let proxy = FaultProxy::start(plane).await.unwrap();
        let sa = account(plane, &proxy).await;
        let cms: Api<ConfigMap> = Api::namespaced(sa.client.clone(), &sa.ns);

        // The API server sees the service account: the proxy passed its token on, unchanged,
        // and added nothing of its own.
        let review = Api::<SelfSubjectReview>::all(sa.client.clone())
            .create(&PostParams::default(), &SelfSubjectReview::default())
            .await
            .unwrap();
        assert_eq!(
            review
                .status
                .unwrap()
                .user_info
                .unwrap()
                .username
                .as_deref(),
            Some(sa.user.as_str())
        );
        let denied = Api::<ConfigMap>::namespaced(sa.client.clone(), "kube-system")
            .list(&ListParams::default())
            .await
            .unwrap_err();
        match &denied {
            kube::Error::Api(s) => {
                assert_eq!(s.code, 403, "{denied}");
                assert!(s.message.contains(&sa.user), "{}", s.message);
            }
            other => panic!("expected a 403 from RBAC, got {other}"),
        }

        // A watch streams: an object created after it opened arrives on it.
        let mut events = watch(&cms).await;
        create_configmap(plane, &sa.ns, "after-the-watch").await;
        added(&mut events, "after-the-watch").await;
        let listed = cms.list(&ListParams::default()).await.unwrap();
        assert!(
            listed
                .items
                .iter()
                .any(|c| c.metadata.name.as_deref() == Some("after-the-watch"))
        );

        let cm_path = format!("/api/v1/namespaces/{}/configmaps", sa.ns);
        assert!(proxy.count(&Method::GET, &cm_path, Some(200)) >= 3);
        assert_eq!(
            proxy.count(&Method::GET, "/api/v1/namespaces/kube-system/", Some(403)),
            1
        );

        // Dropped, the proxy stops listening and its open watches end.
        let mut events = watch(&cms).await;
        let addr = proxy.url().trim_start_matches("https://").to_string();
        drop(proxy);
        ends(&mut events).await;
        assert!(tokio::net::TcpStream::connect(&addr).await.is_err());
    });
}

#[test]
fn an_outage_404s_its_prefix_cuts_its_watches_and_ends_on_time() {
    rig::cluster::test(|plane| async move {
        let tgb = tgb_crd(plane).await;
        let proxy = FaultProxy::start(plane).await.unwrap();
        let sa = account(plane, &proxy).await;
        let tgbs: Api<DynamicObject> = Api::namespaced_with(sa.client.clone(), &sa.ns, &tgb);
        let cms: Api<ConfigMap> = Api::namespaced(sa.client.clone(), &sa.ns);
        tgbs.list(&ListParams::default()).await.unwrap();
        let mut tgb_events = watch(&tgbs).await;
        let mut cm_events = watch(&cms).await;

        let duration = Duration::from_secs(6);
        let started = Instant::now();
        proxy.outage(vec![TGB_PREFIX.into()], duration);

        // The open TargetGroupBinding watch is cut...
        let cut = ends(&mut tgb_events).await;
        // ...and lists and new watches get kube-apiserver's 404 for an unknown resource.
        let not_found = |e: kube::Error| match e {
            kube::Error::Api(s) => {
                s.code == 404
                    && s.reason == "NotFound"
                    && s.message == "the server could not find the requested resource"
            }
            _ => false,
        };
        let listed = tgbs.list(&ListParams::default()).await.unwrap_err();
        let rewatched = tgbs
            .watch(&Default::default(), "0")
            .await
            .err()
            .expect("a watch during the outage fails");
        assert!(
            started.elapsed() < duration,
            "the checks took longer than the outage"
        );
        assert!(not_found(listed));
        assert!(not_found(rewatched));

        // Other paths keep working, their open watches included.
        cms.list(&ListParams::default()).await.unwrap();
        create_configmap(plane, &sa.ns, "during-the-outage").await;
        added(&mut cm_events, "during-the-outage").await;

        // The outage ends on time.
        eventually("TargetGroupBindings are served again", || async {
            tgbs.list(&ListParams::default()).await.is_ok()
        })
        .await;
        let back = started.elapsed();
        assert!(back >= duration, "served again after {back:?}");
        assert!(
            back < duration + Duration::from_secs(3),
            "served again only after {back:?}"
        );
        assert!(proxy.count(&Method::GET, TGB_PREFIX, Some(404)) >= 2);
        eprintln!("the cut watch ended with {cut:?}; served again after {back:?}");
    });
}

#[test]
fn cut_watches_ends_every_open_watch_and_new_ones_work() {
    rig::cluster::test(|plane| async move {
        let proxy = FaultProxy::start(plane).await.unwrap();
        let sa = account(plane, &proxy).await;
        let cms: Api<ConfigMap> = Api::namespaced(sa.client.clone(), &sa.ns);
        let nss: Api<Namespace> = Api::all(sa.client.clone());
        let mut cm_events = watch(&cms).await;
        let mut ns_events = watch(&nss).await;
        // The same watch below kube-rs's decoder, which reads a connection closed mid-chunk as
        // the end of the stream (as it reads an API server going away).
        let rv = cms
            .list_metadata(&ListParams::default())
            .await
            .unwrap()
            .metadata
            .resource_version
            .unwrap();
        let raw = sa
            .client
            .send(
                http::Request::get(format!(
                    "/api/v1/namespaces/{}/configmaps?watch=true&resourceVersion={rv}",
                    sa.ns
                ))
                .body(kube::client::Body::empty())
                .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(raw.status(), 200);
        let mut raw = raw.into_body();

        proxy.cut_watches();
        ends(&mut cm_events).await;
        ends(&mut ns_events).await;
        let last = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match raw.frame().await {
                    Some(Ok(_)) => {}
                    other => return other.map(|r| r.map(|_| ())),
                }
            }
        })
        .await
        .expect("the raw watch was still open 5 s after the cut");
        assert!(
            matches!(last, Some(Err(_))),
            "the watch ended cleanly ({last:?}), not with its connection cut"
        );

        // Only the watches were cut: the client lists and watches again at once.
        cms.list(&ListParams::default()).await.unwrap();
        let mut again = watch(&cms).await;
        create_configmap(plane, &sa.ns, "after-the-cut").await;
        added(&mut again, "after-the-cut").await;
    });
}
