//! The load generator against a real server for a few seconds, on both real-time endpoints:
//! every accepted message is delivered exactly once. No timing is asserted; this keeps the
//! benchmark tool honest (a tool that miscounts would make every figure wrong).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use tests::TestApp;

/// The `loadgen` executable: `CHAT_LOADGEN_BIN`, or built once per run.
fn loadgen_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| tests::workspace_binary("loadgen", "CHAT_LOADGEN_BIN"))
}

/// Runs `loadgen` with `args` (a scenario and its options, separated by spaces) against
/// `url`; its JSON line.
async fn loadgen(url: &str, transport: &str, args: &str) -> Value {
    let run = tokio::process::Command::new(loadgen_binary())
        .args(["--url", url, "--transport", transport, "--setup-concurrency", "2"])
        .args(args.split_whitespace())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("loadgen finishes within a minute")
        .expect("loadgen runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "loadgen {args} failed:\n{stdout}");
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).expect("loadgen prints a JSON line");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

/// Runs `loadgen send` for a few seconds against a fresh server; returns its JSON line.
async fn send_smoke(transport: &str) -> Value {
    let app = TestApp::spawn().await;
    // Paced well under the default per-user send limit: 4 senders at 10 sends/s each.
    let report = loadgen(&app.base_url(), transport, "send --pairs 4 --duration 3 --rate 40 --grace 5").await;
    app.stop().await;
    report
}

#[track_caller]
fn assert_every_message_delivered_once(report: &Value) {
    assert_eq!(report["scenario"], "send", "{report}");
    let accepted = report["accepted"].as_u64().expect("accepted is a count");
    assert!(accepted > 0, "no send was accepted: {report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["duplicated"], 0, "{report}");
    assert_eq!(report["out_of_order"], 0, "{report}");
    assert_eq!(report["delivered"].as_u64(), Some(accepted), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_send_over_the_native_websocket_loses_nothing() {
    assert_every_message_delivered_once(&send_smoke("ws").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_send_over_socketio_loses_nothing() {
    assert_every_message_delivered_once(&send_smoke("socketio").await);
}

/// The group scenarios at a tiny scale: they run end to end against the real routes, and
/// what they count is exact (every group message on every online socket once, in seq order;
/// every seeded unread count listed as seeded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_group_scenarios_count_exactly() {
    let app = TestApp::spawn().await;
    let url = app.base_url();

    let sent =
        loadgen(&url, "ws", "group-send --members 6 --concurrency 4 --senders 2 --online 3 --duration 1")
            .await;
    assert_eq!(sent["scenario"], "group-send", "{sent}");
    let group = &sent["rounds"][0]["group"];
    let accepted = group["accepted"].as_u64().expect("accepted is a count");
    assert!(accepted > 0 && sent["direct_sends_per_s"].as_f64() > Some(0.0), "{sent}");
    assert_eq!(group["delivery"]["delivered"].as_u64(), Some(3 * accepted), "{sent}");
    for count in ["lost", "duplicated", "out_of_order", "unexpected", "silent_sockets"] {
        assert_eq!(group["delivery"][count], 0, "{count}: {sent}");
    }
    assert_eq!(sent["rounds"][0]["direct"]["lost"], 0, "{sent}");

    let fanout = loadgen(&url, "ws", "group-fanout --members 8 --rate 10 --duration 2 --settle 0.5").await;
    assert_eq!(fanout["scenario"], "group-fanout", "{fanout}");
    assert_eq!(fanout["sent"], 20, "{fanout}");
    assert_eq!(fanout["accepted"], 20, "{fanout}");
    assert_eq!(fanout["delivered"], 8 * 20, "{fanout}");
    for count in ["lost", "duplicated", "out_of_order", "unexpected", "sockets_lost"] {
        assert_eq!(fanout[count], 0, "{count}: {fanout}");
    }

    let listed = loadgen(&url, "ws", "unread-list --conversations 40 --direct 6 --page 7 --walks 2").await;
    assert_eq!(listed["scenario"], "unread-list", "{listed}");
    assert_eq!(listed["listed"], 40, "{listed}");
    assert_eq!(listed["pages_per_walk"], 6, "{listed}");
    assert_eq!(listed["unread_exact"], true, "{listed}");
    assert!(listed["unread_total"].as_u64() > Some(0), "{listed}");
    app.stop().await;
}

/// The message-changes scenario at a tiny scale: every phase gets answers, none fails, and
/// the hot message's reactions count exactly the users whose last answer left theirs there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_changes_counts_the_hot_messages_reactions_exactly() {
    let app = TestApp::spawn().await;
    let report =
        loadgen(&app.base_url(), "ws", "changes --users 6 --emojis 2 --own 2 --duration 0.5 --rounds 2")
            .await;
    app.stop().await;
    assert_eq!(report["scenario"], "changes", "{report}");
    assert_eq!(report["users"], 6, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    for round in report["rounds"].as_array().expect("rounds") {
        for phase in ["sends", "reactions", "edits"] {
            assert!(round[phase]["accepted"].as_u64() > Some(0), "{phase}: {report}");
        }
    }
    assert_eq!(report["hot_reactions_exact"], true, "{report}");
    assert_eq!(report["hot_reactions"], report["hot_reactions_expected"], "{report}");
    let counted: u64 =
        report["hot_reactions"].as_object().expect("counts").values().filter_map(Value::as_u64).sum();
    assert!(counted <= 6, "at most one reaction per user: {report}");
}
