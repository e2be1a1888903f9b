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

/// Runs `loadgen send` for a few seconds against a fresh server; returns its JSON line.
async fn send_smoke(transport: &str) -> Value {
    let app = TestApp::spawn().await;
    let url = app.base_url();

    let binary = loadgen_binary();
    // Paced well under the default per-user send limit: 4 senders at 10 sends/s each.
    let run = tokio::process::Command::new(binary)
        .args(["--url", &url, "--transport", transport, "--setup-concurrency", "2"])
        .args(["send", "--pairs", "4", "--duration", "3", "--rate", "40", "--grace", "5"])
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("loadgen finishes within a minute")
        .expect("loadgen runs");
    app.stop().await;

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "loadgen failed:\n{stdout}");
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).expect("loadgen prints a JSON line");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
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
