//! The Helm chart (`deploy/helm/audience-operator`): `helm lint` in both watch scopes, and
//! `helm template` applied with a server-side dry run against the real kube-apiserver (every
//! object valid as the API server sees it, CRDs included); the chart grants exactly the rules the
//! kustomize install grants, and its CRDs are the committed ones. Helm comes from its pinned Go
//! module (`hack/helm/build.sh`).

mod support;

use std::process::Command;

use serde_yaml_ng::Value;
use support::{
    helm,
    operator::{install_crd_and_rbac, kubectl},
};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/helm/audience-operator");

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The documents of a multi-document YAML stream.
fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .filter_map(|d| serde::Deserialize::deserialize(d).ok())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// Helm's `fromYaml | toYaml` writes `1.0` as `1`: the same number to the API server, so the
/// comparison is by value.
fn numbers_as_floats(v: Value) -> Value {
    match v {
        Value::Number(n) => Value::Number(n.as_f64().expect("a finite number").into()),
        Value::Sequence(s) => Value::Sequence(s.into_iter().map(numbers_as_floats).collect()),
        Value::Mapping(m) => Value::Mapping(m.into_iter().map(|(k, v)| (k, numbers_as_floats(v))).collect()),
        other => other,
    }
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"].as_str() == Some(kind)).collect()
}

/// A role's rules as a sorted set of (group, resource, verb) triples.
fn grants(rules: &Value) -> std::collections::BTreeSet<(String, String, String)> {
    let mut out = std::collections::BTreeSet::new();
    for rule in rules.as_sequence().into_iter().flatten() {
        let list = |k: &str| -> Vec<String> {
            rule[k]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        };
        for g in list("apiGroups") {
            for r in list("resources") {
                for v in list("verbs") {
                    out.insert((g.clone(), r.clone(), v.clone()));
                }
            }
        }
    }
    out
}

#[test]
fn the_chart_lints_in_every_watch_scope() {
    let helm = helm();
    run(Command::new(&helm).args(["lint", "--strict", CHART]));
    run(Command::new(&helm).args(["lint", "--strict", CHART, "--set", "watchAllNamespaces=true"]));
    run(Command::new(&helm).args(["lint", "--strict", CHART, "--set", "watchNamespaces={marketing,sales}"]));
}

#[test]
fn a_bad_watch_namespace_is_refused_with_the_value_named() {
    let helm = helm();
    for (bad, says) in [
        ("watchNamespaces={Marketing}", "does not match pattern"),
        ("watchNamespaces={sales,sales}", "are equal"),
        ("watchAllNamespaces=true,watchNamespaces={sales}", "not both"),
    ] {
        let out = Command::new(&helm)
            .args(["template", "audience-operator", CHART, "--set", bad])
            .output()
            .expect("helm runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad} is refused");
        assert!(err.contains("watchNamespaces") && err.contains(says), "{bad}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rendered_chart_passes_a_server_side_dry_run_and_grants_what_the_kustomize_install_grants() {
    let helm = helm();
    install_crd_and_rbac();
    let client = support::admin().await;
    let ns = support::namespace(&client, "helm").await;
    let watched = support::namespace(&client, "helm-watched").await;
    let also = support::namespace(&client, "helm-also").await;
    for (scope, extra) in [
        (
            "cluster",
            vec!["--set".to_owned(), "watchAllNamespaces=true".to_owned()],
        ),
        // The default: the release's own namespace, Roles only.
        ("release", Vec::<String>::new()),
        (
            "namespaces",
            vec!["--set".to_owned(), format!("watchNamespaces={{{watched},{also}}}")],
        ),
    ] {
        let rendered = run(Command::new(&helm)
            .args(["template", "audience-operator", CHART, "--namespace", &ns])
            .args(&extra));
        let (ok, out) = kubectl(
            &[
                "apply",
                "--server-side",
                "--dry-run=server",
                "--force-conflicts",
                "-f",
                "-",
            ],
            Some(&rendered),
        );
        assert!(ok, "{scope}: the API server refuses the rendered chart:\n{out}");
        let rendered_docs = docs(&rendered);
        // The CRDs are the committed ones, kept on uninstall.
        let crds = of_kind(&rendered_docs, "CustomResourceDefinition");
        assert_eq!(crds.len(), 2, "{scope}: both CRDs");
        for crd in crds {
            let name = crd["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            let file = if name.starts_with("externalaudiences") {
                "externalaudience.yaml"
            } else {
                "audienceactivation.yaml"
            };
            let committed: Value =
                serde_yaml_ng::from_str(&std::fs::read_to_string(format!("{ROOT}/crds/{file}")).expect("crd"))
                    .expect("crd yaml");
            assert_eq!(
                numbers_as_floats(crd["spec"].clone()),
                numbers_as_floats(committed["spec"].clone()),
                "{scope}: {name} is the committed CRD"
            );
            assert_eq!(
                crd["metadata"]["annotations"]["helm.sh/resource-policy"].as_str(),
                Some("keep")
            );
        }
        // The Deployment: two replicas with leader election, the restricted security context.
        let deploy = of_kind(&rendered_docs, "Deployment")[0];
        assert_eq!(deploy["spec"]["replicas"].as_u64(), Some(2));
        let args: Vec<&str> = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_sequence()
            .expect("args")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(args.contains(&"--leader-elect"), "{args:?}");
        let c = &deploy["spec"]["template"]["spec"]["containers"][0]["securityContext"];
        assert_eq!(c["readOnlyRootFilesystem"].as_bool(), Some(true));
        assert_eq!(c["allowPrivilegeEscalation"].as_bool(), Some(false));
        // The rules: the same as the kustomize install's, in its scope.
        let chart_rules = match scope {
            "cluster" => {
                let roles = of_kind(&rendered_docs, "ClusterRole");
                assert_eq!(roles.len(), 1, "one ClusterRole");
                grants(&roles[0]["rules"])
            }
            _ => {
                assert!(
                    of_kind(&rendered_docs, "ClusterRole").is_empty(),
                    "nothing cluster-wide"
                );
                let list = match scope {
                    "release" => vec![ns.clone()],
                    _ => vec![watched.clone(), also.clone()],
                };
                assert!(
                    args.contains(&format!("--namespace={}", list.join(",")).as_str()),
                    "{args:?}"
                );
                // The same Role, bound to the operator, in each watched namespace.
                let in_ns = |kind: &str, ns: &str| -> Vec<&Value> {
                    of_kind(&rendered_docs, kind)
                        .into_iter()
                        .filter(|r| r["metadata"]["namespace"].as_str() == Some(ns))
                        .filter(|r| {
                            !r["metadata"]["name"]
                                .as_str()
                                .is_some_and(|n| n.ends_with("leader-election"))
                        })
                        .collect()
                };
                let first = grants(&in_ns("Role", &list[0])[0]["rules"]);
                for n in &list {
                    assert_eq!(in_ns("Role", n).len(), 1, "{scope}: one Role in {n}");
                    assert_eq!(grants(&in_ns("Role", n)[0]["rules"]), first, "{n}");
                    let binding = in_ns("RoleBinding", n);
                    assert_eq!(binding.len(), 1, "{scope}: one RoleBinding in {n}");
                    assert_eq!(binding[0]["subjects"][0]["namespace"].as_str(), Some(ns.as_str()));
                }
                first
            }
        };
        let kustomize = match scope {
            "cluster" => support::operator::rendered_install("deploy"),
            _ => support::operator::rendered_install("deploy/overlays/namespaced"),
        };
        let kdocs = docs(&kustomize);
        let mut want = std::collections::BTreeSet::new();
        for role in of_kind(&kdocs, if scope == "cluster" { "ClusterRole" } else { "Role" }) {
            if role["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.ends_with("leader-election"))
            {
                continue;
            }
            want.extend(grants(&role["rules"]));
        }
        assert_eq!(
            chart_rules, want,
            "{scope}: the chart grants what the kustomize install grants"
        );
    }
}
