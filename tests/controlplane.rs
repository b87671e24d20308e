//! Proves the local control plane is a real kube-apiserver: CRD schema + CEL validation, the
//! status subresource, finalizers, optimistic concurrency and RBAC all behave as in a cluster.

mod support;

use std::time::Duration;

use k8s_openapi::{
    api::core::v1::Secret, apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client,
    api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams},
    core::Status,
};
use serde_json::json;

const GROUP: &str = "envtest.audience-operator.dev";

fn widget_crd() -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("widgets.{GROUP}")},
        "spec": {
            "group": GROUP,
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {
                            "type": "object",
                            "required": ["size"],
                            "properties": {
                                "size": {"type": "integer"},
                                "max": {"type": "integer"}
                            },
                            "x-kubernetes-validations": [{
                                "rule": "!has(self.max) || self.size <= self.max",
                                "message": "spec.size must not exceed spec.max"
                            }]
                        },
                        "status": {"type": "object", "properties": {"phase": {"type": "string"}}}
                    }
                }}
            }]
        }
    }))
    .expect("crd json")
}

fn widget_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(GROUP, "v1", "Widget"))
}

async fn install_widget_crd(client: &Client) -> Api<DynamicObject> {
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let ssapply = PatchParams::apply("envtest-tests").force();
    crds.patch(&format!("widgets.{GROUP}"), &ssapply, &Patch::Apply(widget_crd()))
        .await
        .expect("apply crd");
    kube::runtime::wait::await_condition(
        crds,
        &format!("widgets.{GROUP}"),
        kube::runtime::conditions::is_crd_established(),
    )
    .await
    .expect("crd established");
    Api::all_with(client.clone(), &widget_resource())
}

fn widget(name: &str, spec: serde_json::Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": format!("{GROUP}/v1"), "kind": "Widget",
        "metadata": {"name": name}, "spec": spec
    }))
    .expect("widget json")
}

fn api_error(e: kube::Error) -> Status {
    match e {
        kube::Error::Api(resp) => *resp,
        other => panic!("expected an API error, got {other}"),
    }
}

/// Creates a namespaced object, retrying while the freshly established CRD is not yet served.
async fn create_widget(api: &Api<DynamicObject>, obj: &DynamicObject) -> Result<DynamicObject, kube::Error> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match api.create(&PostParams::default(), obj).await {
            Err(kube::Error::Api(r)) if r.code == 404 && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

#[tokio::test]
async fn cel_rule_rejects_invalid_object_with_its_message_and_accepts_valid_one() {
    let client = support::admin().await;
    install_widget_crd(&client).await;
    let ns = support::namespace(&client, "cel").await;
    let api = Api::<DynamicObject>::namespaced_with(client, &ns, &widget_resource());

    let err = api_error(
        create_widget(&api, &widget("too-big", json!({"size": 5, "max": 3})))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 422, "{err:?}");
    assert!(
        err.message.contains("spec.size must not exceed spec.max"),
        "{}",
        err.message
    );

    let err = api_error(
        create_widget(&api, &widget("wrong-type", json!({"size": "big"})))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 422, "{err:?}");
    assert!(err.message.contains("spec.size"), "{}", err.message);

    let ok = create_widget(&api, &widget("fits", json!({"size": 2, "max": 3})))
        .await
        .expect("valid widget");
    assert_eq!(ok.data["spec"]["size"], 2);
}

#[tokio::test]
async fn status_subresource_is_the_only_way_to_write_status() {
    let client = support::admin().await;
    install_widget_crd(&client).await;
    let ns = support::namespace(&client, "status").await;
    let api = Api::<DynamicObject>::namespaced_with(client, &ns, &widget_resource());
    create_widget(&api, &widget("w", json!({"size": 1})))
        .await
        .expect("create");

    // Status sent to the main resource is dropped...
    let merge = PatchParams::default();
    api.patch("w", &merge, &Patch::Merge(json!({"status": {"phase": "Main"}})))
        .await
        .expect("patch");
    assert!(
        api.get("w")
            .await
            .expect("get")
            .data
            .get("status")
            .is_none_or(|s| s.get("phase").is_none())
    );
    // ...and is written through /status.
    api.patch_status("w", &merge, &Patch::Merge(json!({"status": {"phase": "Done"}})))
        .await
        .expect("patch status");
    assert_eq!(api.get("w").await.expect("get").data["status"]["phase"], "Done");
}

#[tokio::test]
async fn finalizer_blocks_deletion_until_removed() {
    let client = support::admin().await;
    install_widget_crd(&client).await;
    let ns = support::namespace(&client, "finalizer").await;
    let api = Api::<DynamicObject>::namespaced_with(client, &ns, &widget_resource());
    let mut w = widget("held", json!({"size": 1}));
    w.metadata.finalizers = Some(vec!["envtest.audience-operator.dev/hold".into()]);
    create_widget(&api, &w).await.expect("create");

    api.delete("held", &DeleteParams::default()).await.expect("delete");
    let still = api.get("held").await.expect("object still present");
    assert!(still.metadata.deletion_timestamp.is_some());

    api.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("remove finalizer");
    support::wait_for("widget to be gone", Duration::from_secs(10), || async {
        matches!(api.get_opt("held").await, Ok(None)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn stale_resource_version_update_is_a_conflict() {
    let client = support::admin().await;
    install_widget_crd(&client).await;
    let ns = support::namespace(&client, "conflict").await;
    let api = Api::<DynamicObject>::namespaced_with(client, &ns, &widget_resource());
    let created = create_widget(&api, &widget("c", json!({"size": 1})))
        .await
        .expect("create");

    let mut first = created.clone();
    first.data["spec"]["size"] = json!(2);
    api.replace("c", &PostParams::default(), &first)
        .await
        .expect("first update");

    let mut stale = created;
    stale.data["spec"]["size"] = json!(3);
    let err = api_error(api.replace("c", &PostParams::default(), &stale).await.unwrap_err());
    assert_eq!(err.code, 409, "{err:?}");
    assert_eq!(err.reason, "Conflict");
}

#[tokio::test]
async fn operator_identity_reads_secrets_only_where_a_role_grants_it() {
    let admin = support::admin().await;
    let granted = support::namespace(&admin, "rbac-granted").await;
    let denied = support::namespace(&admin, "rbac-denied").await;
    let cp = support::control_plane();
    let (sa_ns, sa_name) = {
        let parts: Vec<&str> = cp.operator_username().split(':').collect();
        (parts[2].to_owned(), parts[3].to_owned())
    };

    for ns in [&granted, &denied] {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "creds"}, "stringData": {"k": "v"}
        }))
        .expect("secret json");
        Api::<Secret>::namespaced(admin.clone(), ns)
            .create(&PostParams::default(), &secret)
            .await
            .expect("secret");
    }
    let rbac = serde_json::json!([
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "read-secrets", "namespace": granted},
         "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "read-secrets", "namespace": granted},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-secrets"},
         "subjects": [{"kind": "ServiceAccount", "name": sa_name, "namespace": sa_ns}]}
    ]);
    let role: k8s_openapi::api::rbac::v1::Role = serde_json::from_value(rbac[0].clone()).expect("role");
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(rbac[1].clone()).expect("binding");
    Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(admin.clone(), &granted)
        .create(&PostParams::default(), &role)
        .await
        .expect("role");
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(admin.clone(), &granted)
        .create(&PostParams::default(), &binding)
        .await
        .expect("binding");

    let operator = support::operator().await;
    let err = api_error(
        Api::<Secret>::namespaced(operator.clone(), &denied)
            .get("creds")
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 403, "{err:?}");
    assert!(err.message.contains(cp.operator_username()), "{}", err.message);

    // RBAC bindings take effect within moments; wait with a deadline.
    let secrets = Api::<Secret>::namespaced(operator, &granted);
    support::wait_for("the RoleBinding to grant access", Duration::from_secs(10), || async {
        secrets.get("creds").await.ok()
    })
    .await;
}

#[tokio::test]
async fn status_json_patch_with_a_stale_resource_version_is_a_conflict() {
    // The controller relies on this to write its pending markers only from a fresh copy.
    let client = support::admin().await;
    install_widget_crd(&client).await;
    let ns = support::namespace(&client, "status-rv").await;
    let api = Api::<DynamicObject>::namespaced_with(client, &ns, &widget_resource());
    let created = create_widget(&api, &widget("m", json!({"size": 1})))
        .await
        .expect("create");
    let rv = created.metadata.resource_version.clone().expect("rv");
    let patch = |rv: &str, phase: &str| {
        let ops = json!([
            {"op": "replace", "path": "/metadata/resourceVersion", "value": rv},
            {"op": "add", "path": "/status", "value": {"phase": phase}}
        ]);
        Patch::Json::<()>(serde_json::from_value(ops).expect("json patch"))
    };
    let first = api
        .patch_status("m", &PatchParams::default(), &patch(&rv, "One"))
        .await
        .expect("fresh write");
    assert_eq!(first.data["status"]["phase"], "One");
    let err = api_error(
        api.patch_status("m", &PatchParams::default(), &patch(&rv, "Two"))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 409, "{err:?}");
    assert_eq!(api.get("m").await.expect("get").data["status"]["phase"], "One");
}
