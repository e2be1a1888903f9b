//! The OpenAPI document (`GET /api-docs/openapi.json`) as a contract the server keeps:
//! Schemathesis, a schema-driven fuzzer, calls every documented operation with valid and
//! invalid requests and checks every answer: never a 5xx, no status the document doesn't
//! list, every body and header matching its schema, valid requests accepted, invalid ones
//! refused, authentication enforced, and `Allow` on 405s.
//!
//! Schemathesis comes from `scripts/install-schemathesis.sh` (run by
//! `scripts/start-services.sh`) into `.venv/`, or from `SCHEMATHESIS`. Without it the test
//! fails, saying how to install it: there is no silent skip.
//!
//! Operations run twice: with ASCII strings and every check, then with any Unicode and every
//! check but the acceptance/refusal ones (the document counts byte limits in characters,
//! exact in ASCII only). Logout runs on a session of its own, as it revokes its token.
//!
//! To reproduce a run by hand: start a server, register two users, then run the command this
//! test prints (the configuration file it writes names the ids it used).
//! `CHAT_FUZZ_SEED` changes the seed (fixed by default, so that CI runs are repeatable);
//! `CHAT_FUZZ_EXAMPLES` the number of cases per operation.
//!
//! Also here: `/metrics` can be switched off, and the document and its page are served.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use reqwest::header::{CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use reqwest::StatusCode;
use serde_json::Value;
use tests::{Backend, TempDir, TestApp, PASSWORD};

/// Cases per operation and phase; enough to reach every branch of the validation, small
/// enough to stay well under a minute.
const DEFAULT_EXAMPLES: &str = "50";
const DEFAULT_SEED: &str = "20261125";
/// A Schemathesis run is stopped, and fails, past this.
const RUN_LIMIT: Duration = Duration::from_secs(150);

/// The Schemathesis executable, or a failure that says how to install it.
fn schemathesis() -> PathBuf {
    let path = std::env::var_os("SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| tests::workspace_dir().join(".venv/bin/schemathesis"));
    assert!(
        path.is_file(),
        "Schemathesis is not installed at {}: run scripts/install-schemathesis.sh \
         (or scripts/start-services.sh), or point SCHEMATHESIS at the executable",
        path.display()
    );
    path
}

/// The Schemathesis configuration of the runs: which values to try for ids and cursors (real
/// ones most of the time, so that the fuzzing reaches past "no such user").
fn write_config(dir: &Path, peer_id: &str, message_id: &str, conversation_ids: [&str; 2]) -> PathBuf {
    let [group_id, direct_id] = conversation_ids;
    let config = format!(
        r#"# Written by tests/tests/openapi.rs for one test.
[dictionaries.peers]
values = ["{peer_id}"]

[dictionaries.conversations]
values = ["{group_id}", "{direct_id}"]

[dictionaries.messages]
values = ["{message_id}"]

[dictionaries.cursors]
values = ["fuzz_me", "fuzz_peer"]

[dictionaries.stream_cursors]
values = ["0", "1"]

[parameters]
"path.receiverId" = {{ dictionary = "peers", probability = 0.8 }}
"path.otherId" = {{ dictionary = "peers", probability = 0.8 }}
"query.before" = {{ dictionary = "messages", probability = 0.3 }}
"query.cursor" = {{ dictionary = "cursors", probability = 0.3 }}
"query.since" = {{ dictionary = "stream_cursors", probability = 0.5 }}
"path.id" = {{ dictionary = "conversations", probability = 0.8 }}
"path.userId" = {{ dictionary = "peers", probability = 0.8 }}

# A send's key may travel in the body and in a header, which must then be equal (400
# otherwise), and a key reused for another text is refused (422): answers to well-formed
# sends that no schema can rule out. The message text's own rules stay checked by the unit
# tests of adapters/http/src/openapi.rs.
[[operations]]
include-operation-id = "sendMessage"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "422", "429"]

# A well-formed cursor beyond the end of the caller's stream is refused (400): how far a
# stream reaches is no schema's business.
[[operations]]
include-operation-id = "syncMessages"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401"]

# Groups: what a well-formed request may meet depends on the group as it stands (the caller
# listed among the members, a role that may not, members already, the owner's own role) and,
# for sends, on keys as above.
[[operations]]
include-tag = "conversation"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "422", "429"]
"#
    );
    let path = dir.join("schemathesis.toml");
    std::fs::write(&path, config).expect("writing the Schemathesis configuration");
    path
}

/// How strings are generated, and so which checks can hold.
#[derive(Clone, Copy)]
enum Strings {
    /// ASCII only, every check: the document states byte limits (passwords, avatars, the
    /// raw message) as character counts, which are the same thing in ASCII.
    Ascii,
    /// Any Unicode (NUL included), every check but the acceptance of valid and the refusal
    /// of invalid data, which byte limits make inexact beyond ASCII: no 5xx, documented
    /// statuses, conforming answers.
    Unicode,
}

/// Runs Schemathesis on the server's document with `token`, limited to `operations`
/// (`--include-…`/`--exclude-…` arguments); panics with its report unless it passed.
async fn fuzz(server: &TestApp, config: &Path, token: &str, strings: Strings, operations: &[&str]) {
    let examples = std::env::var("CHAT_FUZZ_EXAMPLES").unwrap_or_else(|_| DEFAULT_EXAMPLES.into());
    let seed = std::env::var("CHAT_FUZZ_SEED").unwrap_or_else(|_| DEFAULT_SEED.into());
    let dir = config.parent().unwrap();
    let mut command = tokio::process::Command::new(schemathesis());
    command
        .current_dir(dir)
        .arg("--config-file")
        .arg(config)
        .arg("run")
        .arg(server.url("/api-docs/openapi.json"))
        .arg("--no-color")
        .args(["--checks", "all"])
        .args(match strings {
            Strings::Ascii => ["--generation-codec", "ascii"].as_slice(),
            Strings::Unicode => &[
                "--generation-codec",
                "utf-8",
                "--exclude-checks",
                "positive_data_acceptance,negative_data_rejection",
            ],
        })
        .args(["--max-examples", &examples])
        .args(["--seed", &seed])
        // One worker: CPython 3.11 before 3.11.8 may fail `ast.parse` run from two threads at
        // once ("AST constructor recursion depth mismatch"), which Hypothesis does.
        .args(["--workers", "1"])
        .args(["--request-timeout", "10"])
        .args(["--generation-database", "none"])
        .args(["--max-failures", "20"])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(operations)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let shown = format!("{command:?}").replace(token, "<token>");
    println!("running {shown}");
    let output = tokio::time::timeout(RUN_LIMIT, command.output())
        .await
        .unwrap_or_else(|_| panic!("Schemathesis ran longer than {RUN_LIMIT:?}: {shown}"))
        .expect("Schemathesis starts");
    let report =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
            .replace(token, "<token>");
    println!("{report}");
    assert!(
        output.status.success(),
        "Schemathesis found the server breaking its OpenAPI document ({}):\n{report}",
        output.status
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_keeps_the_contract_of_its_openapi_document() {
    // Before anything starts: a missing fuzzer fails here, with the remedy.
    schemathesis();
    let server = TestApp::spawn().await;
    let me = server.create_user("fuzz_me").await;
    let peer = server.create_user("fuzz_peer").await;
    // A conversation to page through, and a real `before`; a group of the two.
    let sent = server.send_ok(&me, &peer, "hello").await;
    let group = server.create_group_ok(&me, "Fuzzers", &[&peer]).await;
    let (me_token, peer_id) = (me.token, peer.id);
    let message_id = sent["_id"].as_str().unwrap().to_owned();
    let ids = [group["_id"].as_str().unwrap(), sent["conversationId"].as_str().unwrap()];

    let dir = TempDir::new("openapi");
    let config = write_config(dir.path(), &peer_id, &message_id, ids);

    // Everything but logout, which would revoke the token the other operations run with, and
    // leaving the group, which would close it to the others; each runs on its own after.
    let all_but_logout = ["--exclude-operation-id", "logout", "--exclude-operation-id", "leaveGroup"];
    fuzz(&server, &config, &me_token, Strings::Ascii, &all_but_logout).await;
    fuzz(&server, &config, &me_token, Strings::Unicode, &all_but_logout).await;
    fuzz(&server, &config, &me_token, Strings::Ascii, &["--include-operation-id", "leaveGroup"]).await;
    // Logout on its own session: the first call revokes it, the rest are 401s.
    let logout_token =
        server.login("fuzz_me", PASSWORD).await.data(StatusCode::OK)["token"].as_str().unwrap().to_owned();
    fuzz(&server, &config, &logout_token, Strings::Ascii, &["--include-operation-id", "logout"]).await;

    server.stop().await;
}

#[tokio::test]
async fn the_document_and_its_page_are_served_to_anyone() {
    let server = TestApp::spawn().await;
    let response = server.client.get(server.url("/api-docs/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()[CONTENT_TYPE].to_str().unwrap().starts_with("application/json"));
    let document: Value = response.json().await.unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    assert!(document["paths"]["/api/v1/user/register"]["post"].is_object());

    let page = server.client.get(server.url("/api-docs/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let policy = page.headers()[CONTENT_SECURITY_POLICY].to_str().unwrap().to_owned();
    assert!(policy.contains("default-src 'none'") && policy.contains("frame-ancestors 'none'"), "{policy}");
    // Everything the page runs comes from this server: it works offline and the policy names
    // no other host.
    assert!(!policy.contains("http"), "{policy}");
    let html = page.text().await.unwrap();
    assert!(html.contains("/api-docs/openapi.json") && !html.contains("http"), "{html}");
    let script = html
        .split("<script type=\"module\" src=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no script in {html}"));
    let script = server.client.get(server.url(script)).send().await.unwrap();
    assert_eq!(script.status(), StatusCode::OK);
    assert!(script.headers()[CONTENT_TYPE].to_str().unwrap().starts_with("text/javascript"));
    assert!(script.bytes().await.unwrap().len() > 100_000, "the Redoc bundle itself");

    // The page's policy is its own: the API keeps none, the web client its stricter one.
    let api = server.client.get(server.url("/healthz")).send().await.unwrap();
    assert!(api.headers().get(CONTENT_SECURITY_POLICY).is_none());
    server.stop().await;
}

#[tokio::test]
async fn a_refused_method_names_the_allowed_ones() {
    let server = TestApp::spawn().await;
    for (method, path, allow) in [
        (reqwest::Method::GET, "/api/v1/user/register", "POST"),
        (reqwest::Method::DELETE, "/api/v1/user/get-profile", "GET"),
        (reqwest::Method::PUT, "/api-docs/openapi.json", "GET"),
    ] {
        let response = server.client.request(method.clone(), server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_eq!(response.headers()["allow"], allow, "{method} {path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "METHOD_NOT_ALLOWED");
    }
    server.stop().await;
}

#[tokio::test]
async fn metrics_are_served_by_default_and_can_be_switched_off() {
    let on = TestApp::spawn().await;
    on.client.get(on.url("/healthz")).send().await.unwrap();
    let response = on.client.get(on.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    assert!(text.contains(r#"http_requests_total{method="GET",route="/healthz",status="200"} 1"#), "{text}");
    on.stop().await;

    let off = TestApp::spawn_with(Backend::from_env(), |settings| settings.metrics.enabled = false).await;
    let response = off.client.get(off.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "NOT_FOUND", "{body}");
    // Only the metrics are gone.
    let health = off.client.get(off.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    off.stop().await;
}

#[test]
fn the_metrics_switch_is_a_setting_on_by_default() {
    let config = tests::workspace_dir().join("config");
    let settings = server::Settings::load_from(&config, server::settings::Environment::Development).unwrap();
    assert!(settings.metrics.enabled, "metrics.enabled defaults to true");
    let defaults = std::fs::read_to_string(config.join("default.toml")).unwrap();
    assert!(defaults.contains("[metrics]"), "config/default.toml documents the switch");
}
