//! End to end: a process that serves every tenant treats what a tenant writes (spec, Secret) as
//! untrusted (issue: security for a multi-tenant cluster). Endpoints are the administrator's
//! choice, answers are bounded, secrets and tokens never leak, credentials are not remembered.
//!
//! Nothing here addresses anything outside 127.0.0.0/8.

mod support;

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use aep_emulator::{CredentialSpec, Entitlement};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use support::operator::{Env, condition_is, condition_message, condition_reason, kubectl, wait_gone};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TIMEOUT: Duration = Duration::from_secs(90);

async fn secret(env: &Env, name: &str, data: BTreeMap<&str, String>) {
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data})).expect("secret");
    Api::<Secret>::namespaced(env.client.clone(), &env.ns)
        .create(&PostParams::default(), &secret)
        .await
        .expect("create secret");
}

fn creds_with(env: &Env, extra: &[(&'static str, String)]) -> BTreeMap<&'static str, String> {
    let c = env.emulator.credentials();
    let mut data = BTreeMap::from([
        ("clientId", c.client_id.clone()),
        (
            "clientSecret",
            secrecy::ExposeSecret::expose_secret(&c.client_secret).to_owned(),
        ),
        ("orgId", c.org_id.clone()),
    ]);
    data.extend(extra.iter().cloned());
    data
}

/// An object of the seed example named `name`, using Secret `secret_name`.
fn object(env: &Env, name: &str, secret_name: &str) -> String {
    env.seed_named(name, &format!("Audience {name}")).replace(
        "credentialsSecretRef: {name: aep-credentials}",
        &format!("credentialsSecretRef: {{name: {secret_name}}}"),
    )
}

/// A TCP listener on `ip` that counts connections and answers each with `answer`.
async fn listener(ip: &str, answer: Answer) -> (u16, Arc<AtomicU64>, Arc<AtomicU64>) {
    let l = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    let connections = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let (c, s) = (connections.clone(), sent.clone());
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = l.accept().await {
            c.fetch_add(1, Ordering::Relaxed);
            let s = s.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = conn.read(&mut buf).await;
                let head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n";
                if conn.write_all(head).await.is_err() {
                    return;
                }
                match answer {
                    Answer::Huge => {
                        // 100 MiB of a JSON string, without a content-length.
                        let chunk = vec![b'a'; 64 * 1024];
                        let _ = conn.write_all(b"{\"access_token\":\"").await;
                        for _ in 0..1600 {
                            if conn.write_all(&chunk).await.is_err() {
                                return;
                            }
                            s.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        }
                    }
                    Answer::Drip => {
                        for b in b"{\"access_token\":\"slow".iter().cycle().take(600) {
                            if conn.write_all(&[*b]).await.is_err() {
                                return;
                            }
                            s.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                    Answer::Nothing => {}
                }
            });
        }
    });
    (port, connections, sent)
}

#[derive(Clone, Copy)]
enum Answer {
    Huge,
    Drip,
    Nothing,
}

fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_outside_the_allow_list_are_refused_before_any_connection() {
    let env = Env::start("endpoints", |b| b.zero_latency()).await;
    // A loopback listener the administrator did not list, counting connections.
    let (port, connections, _) = listener("127.0.0.2", Answer::Nothing).await;
    let apiserver = support::control_plane().server().to_owned();
    secret(
        &env,
        "to-127-0-0-2",
        creds_with(&env, &[("platformUrl", format!("http://127.0.0.2:{port}/"))]),
    )
    .await;
    secret(&env, "to-apiserver", creds_with(&env, &[("imsUrl", apiserver.clone())])).await;
    secret(
        &env,
        "plain-http",
        creds_with(&env, &[("platformUrl", "http://internal.example/".into())]),
    )
    .await;
    for (name, secret_name) in [("a", "to-127-0-0-2"), ("b", "to-apiserver"), ("c", "plain-http")] {
        assert!(env.apply_yaml(&object(&env, name, secret_name)).0);
    }
    for (name, key, rule) in [
        ("a", "platformUrl", "not an allowed endpoint"),
        ("b", "imsUrl", "not an allowed endpoint"),
        ("c", "platformUrl", "must use https"),
    ] {
        let obj = env
            .wait_obj(name, "Stalled on the endpoint", TIMEOUT, |o| {
                condition_is(o, "Stalled", "True")
            })
            .await;
        let msg = condition_message(&obj, "Stalled");
        assert!(
            msg.starts_with("CredentialsInvalid") && msg.contains(&format!("key {key}")) && msg.contains(rule),
            "{name}: {msg}"
        );
    }
    assert_eq!(
        connections.load(Ordering::Relaxed),
        0,
        "no connection to the unlisted endpoint"
    );
    assert_eq!(env.emulator.stats().received("create_audience"), 0);
    let log = env.log_text();
    assert!(
        !log.contains(&format!("127.0.0.2:{port}")) || !log.contains("AEP request"),
        "no request logged to it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_answers_are_bounded_and_other_objects_keep_converging() {
    let huge = listener("127.0.0.1", Answer::Huge).await;
    let drip = listener("127.0.0.1", Answer::Drip).await;
    let huge_url = format!("http://127.0.0.1:{}/", huge.0);
    let drip_url = format!("http://127.0.0.1:{}/", drip.0);
    let env = Env::start_with(
        "hostile",
        |b| b.zero_latency(),
        vec![
            format!("--allowed-endpoint={huge_url}"),
            format!("--allowed-endpoint={drip_url}"),
            "--aep-request-timeout=3s".into(),
        ],
        true,
    )
    .await;
    secret(&env, "huge", creds_with(&env, &[("imsUrl", huge_url.clone())])).await;
    secret(&env, "drip", creds_with(&env, &[("imsUrl", drip_url.clone())])).await;
    assert!(env.apply_yaml(&object(&env, "huge", "huge")).0);
    assert!(env.apply_yaml(&object(&env, "drip", "drip")).0);
    for (name, expected) in [("huge", "larger than 2048 KiB"), ("drip", "timed out")] {
        let obj = env
            .wait_obj(name, "failing with a clear reason", TIMEOUT, |o| {
                condition_message(o, "Reconciling").contains(expected)
            })
            .await;
        assert_eq!(condition_reason(&obj, "Reconciling"), "Retrying", "{name}");
    }
    // Meanwhile well-behaved objects converge.
    let yaml: String = (0..3)
        .map(|i| object(&env, &format!("ok-{i}"), "aep-credentials"))
        .collect::<Vec<_>>()
        .join("\n---\n");
    assert!(env.apply_yaml(&yaml).0);
    for i in 0..3 {
        env.wait_ready(&format!("ok-{i}"), TIMEOUT).await;
    }
    let (connections, sent) = (huge.1.load(Ordering::Relaxed), huge.2.load(Ordering::Relaxed));
    assert!(connections > 0);
    let pid = env.operator.as_ref().and_then(|o| o.pid()).expect("operator pid");
    let hwm = vm_hwm_kib(pid);
    assert!(
        hwm > 0 && hwm < 128 * 1024,
        "operator peak RSS {hwm} KiB stays under 128 MiB"
    );
    eprintln!(
        "hostile: {connections} attempts at the 100 MiB answer, {} KiB written per attempt on average before the \
         operator cut it; operator peak RSS {} MiB",
        sent / 1024 / connections,
        hwm / 1024
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_and_token_values_never_reach_logs_events_status_or_metrics() {
    // An allowed IMS endpoint where nothing listens: "IMS down".
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let ims_down = format!("http://127.0.0.1:{closed}/");
    let env = Env::start_with(
        "leak",
        |b| {
            b.zero_latency()
                .credential(CredentialSpec::default())
                .credential(CredentialSpec {
                    client_id: "no-profile".into(),
                    client_secret: "no-profile-secret-value".into(),
                    entitlement: Entitlement::InvalidProfile,
                    ..CredentialSpec::default()
                })
        },
        vec![format!("--allowed-endpoint={ims_down}")],
        true,
    )
    .await;
    // Happy path, wrong secret (IMS 401), 403 from AEP, IMS down, revoked tokens.
    secret(
        &env,
        "wrong",
        creds_with(&env, &[("clientSecret", "wrong-secret-value".into())]),
    )
    .await;
    let mut no_profile = creds_with(&env, &[]);
    no_profile.insert("clientId", "no-profile".into());
    no_profile.insert("clientSecret", "no-profile-secret-value".into());
    secret(&env, "no-profile", no_profile).await;
    secret(&env, "ims-down", creds_with(&env, &[("imsUrl", ims_down.clone())])).await;
    assert!(env.apply_yaml(&object(&env, "ok", "aep-credentials")).0);
    assert!(env.apply_yaml(&object(&env, "imsdown", "ims-down")).0);
    assert!(env.apply_yaml(&object(&env, "wrong", "wrong")).0);
    assert!(env.apply_yaml(&object(&env, "forbidden", "no-profile")).0);
    env.wait_ready("ok", TIMEOUT).await;
    env.wait_obj("wrong", "refused", TIMEOUT, |o| {
        condition_reason(o, "Stalled") == "CredentialsInvalid"
    })
    .await;
    env.wait_obj("forbidden", "refused", TIMEOUT, |o| {
        condition_reason(o, "Stalled") == "PermissionDenied"
    })
    .await;
    env.wait_obj("imsdown", "retrying", TIMEOUT, |o| {
        condition_message(o, "Reconciling").contains("could not connect")
    })
    .await;
    env.emulator.admin().revoke_tokens().await.expect("revoke");
    env.merge_spec("ok", json!({"description": "after the tokens were revoked"}))
        .await;
    env.wait_obj(
        "ok",
        "Ready after a token refresh",
        TIMEOUT,
        support::operator::is_ready_with_current_run,
    )
    .await;

    let log = env.log_text();
    let (_, objects) = kubectl(&["get", "ea", "-n", &env.ns, "-o", "yaml"], None);
    let (_, events) = kubectl(&["get", "events.events.k8s.io", "-n", &env.ns, "-o", "yaml"], None);
    let metrics_addr = log
        .lines()
        .find(|l| l.contains("Serving /metrics"))
        .and_then(|l| l.split("addr=").nth(1))
        .map(|s| s.split_whitespace().next().unwrap_or("").to_owned())
        .expect("metrics address in the log");
    let metrics = reqwest::get(format!("http://{metrics_addr}/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics");
    assert!(log.lines().count() > 50, "debug logging was on");
    let token = regex_lite_find_token;
    for (what, text) in [
        ("operator log", &log),
        ("objects", &objects),
        ("events", &events),
        ("metrics", &metrics),
    ] {
        for secret in ["local-secret", "wrong-secret-value", "no-profile-secret-value"] {
            assert!(!text.contains(secret), "a client secret leaked into the {what}");
        }
        assert!(
            token(text).is_none(),
            "a token value leaked into the {what}: {:?}",
            token(text)
        );
    }
}

#[test]
fn the_token_scanner_finds_a_token_value() {
    let token = format!("emu.{}.{}", "a".repeat(32), "0".repeat(32));
    assert_eq!(regex_lite_find_token(&format!("x Bearer {token} y")), Some(token));
    assert_eq!(regex_lite_find_token("emu.short.token"), None);
}

/// Finds an emulator-issued token value (`emu.<32 hex>.<32 hex>`) in `text`.
fn regex_lite_find_token(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(i) = text[from..].find("emu.") {
        let start = from + i + 4;
        let hex = |s: usize, n: usize| bytes.len() >= s + n && bytes[s..s + n].iter().all(u8::is_ascii_hexdigit);
        if hex(start, 32) && bytes.get(start + 32) == Some(&b'.') && hex(start + 33, 32) {
            return Some(text[from + i..start + 65].to_owned());
        }
        from = start;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_in_use_outlives_its_deletion_until_the_objects_have_cleaned_up() {
    let env = Env::start("protect", |b| b.zero_latency()).await;
    assert!(env.apply_yaml(&env.seed_yaml()).0);
    env.wait_ready("loyalty-members", TIMEOUT).await;
    let secrets = Api::<Secret>::namespaced(env.client.clone(), &env.ns);
    let s = secrets.get("aep-credentials").await.expect("secret");
    assert!(
        s.metadata
            .finalizers
            .unwrap_or_default()
            .iter()
            .any(|f| f == "aep.audience-operator.dev/credentials-in-use"),
        "the Secret carries the in-use finalizer"
    );
    // Deleting the Secret first (as a namespace deletion may) keeps it readable...
    secrets
        .delete("aep-credentials", &DeleteParams::default())
        .await
        .expect("delete secret");
    assert!(secrets.get_opt("aep-credentials").await.expect("get").is_some());
    // ...so the object still deletes its audience, and then the Secret goes.
    env.api()
        .delete("loyalty-members", &DeleteParams::default())
        .await
        .expect("delete object");
    wait_gone(&env.api(), "loyalty-members", TIMEOUT).await;
    assert!(env.emulator.state().audiences.is_empty(), "deleted in AEP");
    support::wait_for("the Secret to be gone", TIMEOUT, || async {
        secrets
            .get_opt("aep-credentials")
            .await
            .ok()
            .flatten()
            .is_none()
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_secret_a_delete_waits_and_says_how_to_release_it() {
    let env = Env::start("nocreds", |b| b.zero_latency()).await;
    assert!(env.apply_yaml(&env.seed_yaml()).0);
    env.wait_ready("loyalty-members", TIMEOUT).await;
    // The Secret disappears for good (its protection removed by hand).
    let secrets = Api::<Secret>::namespaced(env.client.clone(), &env.ns);
    secrets
        .patch(
            "aep-credentials",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("unprotect");
    secrets
        .delete("aep-credentials", &DeleteParams::default())
        .await
        .expect("delete secret");
    env.api()
        .delete("loyalty-members", &DeleteParams::default())
        .await
        .expect("delete object");
    let obj = env
        .wait_obj("loyalty-members", "waiting for its Secret", TIMEOUT, |o| {
            condition_reason(o, "Stalled") == "CredentialsMissing"
        })
        .await;
    let msg = condition_message(&obj, "Stalled");
    assert!(
        msg.contains("Restore the Secret") && msg.contains("deletionPolicy: Orphan"),
        "{msg}"
    );
    assert_eq!(
        env.emulator.state().audiences.len(),
        1,
        "nothing deleted without credentials"
    );
    env.merge_spec("loyalty-members", json!({"deletionPolicy": "Orphan"}))
        .await;
    wait_gone(&env.api(), "loyalty-members", TIMEOUT).await;
    assert_eq!(env.emulator.state().audiences.len(), 1, "orphaned by choice");
}
