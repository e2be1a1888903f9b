//! The compiled `server` binary as an operator runs it: configuration from files and
//! `CHAT__*` variables, start-up errors, and a graceful stop on SIGTERM.

use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tests::process::server_command;
use tests::{free_port, server_binary, ServerProcess, TempDir};
use tokio::process::Command;
use tokio_tungstenite::tungstenite::Message as Frame;

const SECRET: &str = "binary-test-secret-0123456789-abcdefghijkl";
const DEADLINE: Duration = Duration::from_secs(20);

struct Finished {
    status: ExitStatus,
    stderr: String,
}

/// Runs a server that must stop by itself (a start-up error), within the deadline.
async fn run_to_exit(mut command: Command) -> Finished {
    let child = command.spawn().expect("the server starts");
    match tokio::time::timeout(DEADLINE, child.wait_with_output()).await {
        Ok(output) => {
            let output = output.expect("the server's output is readable");
            Finished { status: output.status, stderr: String::from_utf8_lossy(&output.stderr).into_owned() }
        }
        Err(_) => panic!("the server kept running: it should have refused to start"),
    }
}

#[track_caller]
fn assert_one_line_error(finished: &Finished, mentions: &str) {
    assert!(!finished.status.success(), "exit status {:?}", finished.status);
    assert!(finished.status.code().is_some(), "an exit, not a signal: {:?}", finished.status);
    let lines: Vec<&str> = finished.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line on stderr, got: {:?}", finished.stderr);
    let line = lines[0];
    assert!(line.starts_with("error:"), "{line}");
    assert!(line.contains(mentions), "the error names {mentions:?}: {line}");
    for noise in ["panicked", "RUST_BACKTRACE", "stack backtrace", "src/"] {
        assert!(!finished.stderr.contains(noise), "{noise:?} on stderr: {}", finished.stderr);
    }
}

#[tokio::test]
async fn an_unknown_storage_backend_is_a_one_line_error() {
    let dir = TempDir::new("binary");
    let command = server_command(
        dir.path(),
        &[("APP_ENV", "test"), ("CHAT__STORAGE__BACKEND", "cassandra"), ("CHAT__SERVER__PORT", "0")],
    );

    let finished = run_to_exit(command).await;

    assert_one_line_error(&finished, "cassandra");
}

#[tokio::test]
async fn production_without_a_secret_refuses_to_start() {
    let dir = TempDir::new("binary");
    let storage = format!("sqlite://{}/chat.db", dir.path().display());
    let common =
        [("APP_ENV", "production"), ("CHAT__SERVER__PORT", "0"), ("CHAT__STORAGE__URL", storage.as_str())];

    let unset = run_to_exit(server_command(dir.path(), &common)).await;
    assert_one_line_error(&unset, "jwt_secret");

    let mut short = common.to_vec();
    short.push(("CHAT__AUTH__JWT_SECRET", "too-short"));
    let short = run_to_exit(server_command(dir.path(), &short)).await;
    assert_one_line_error(&short, "jwt_secret");
    assert!(!short.stderr.contains("too-short"), "the secret is never printed: {}", short.stderr);
}

/// Starts the server on `port` with its SQLite file under `data`, and waits for it to say
/// it is listening.
async fn start(dir: &Path, port: u16, data: &Path) -> ServerProcess {
    let port_text = port.to_string();
    let storage = format!("sqlite://{}", data.join("chat.db").display());
    ServerProcess::spawn(server_command(
        dir,
        &[
            ("APP_ENV", "test"),
            ("CHAT__SERVER__PORT", &port_text),
            ("CHAT__STORAGE__URL", &storage),
            ("CHAT__AUTH__JWT_SECRET", SECRET),
            ("CHAT__LOG__LEVEL", "info"),
            ("CHAT__LOG__FORMAT", "json"),
            ("CHAT__SERVER__SHUTDOWN_TIMEOUT", "2"),
        ],
    ))
    .await
}

#[tokio::test]
async fn port_and_storage_come_from_the_environment() {
    let dir = TempDir::new("binary");
    let data = dir.path().join("nested").join("data");
    let port = free_port();

    let mut server = start(dir.path(), port, &data).await;

    assert_eq!(server.port, port);
    let api = server.api();
    let health = api.get("/healthz", None).await;
    assert_eq!(health.status, 200);
    assert_eq!(health.body["success"], true);
    assert_eq!(api.get("/readyz", None).await.status, 200);
    assert!(data.join("chat.db").is_file(), "the SQLite file is created under {}", data.display());
    assert!(!dir.path().join("data").exists(), "nothing is written to the default place");

    server.terminate();
    assert!(server.wait_for_exit().await.success());
}

#[tokio::test]
async fn sigterm_closes_websockets_and_exits_cleanly() {
    let dir = TempDir::new("binary");
    let port = free_port();
    let mut server = start(dir.path(), port, dir.path()).await;
    let api = server.api();
    let token = api.create_user("ada").await.token;
    let mut socket = api.connect_ws_with_query(&token).await.stream;
    // Registered for events once the presence list has come in.
    let first = tokio::time::timeout(DEADLINE, socket.next()).await.expect("a first frame");
    let first: Value = match first {
        Some(Ok(Frame::Text(text))) => serde_json::from_str(text.as_str()).unwrap(),
        other => panic!("expected the online users, got {other:?}"),
    };
    assert_eq!(first["event"], "onlineUsers");

    server.terminate();

    let close = tokio::time::timeout(DEADLINE, async {
        loop {
            match socket.next().await {
                Some(Ok(Frame::Close(frame))) => return Some(frame),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
    .expect("the connection ends within the deadline");
    let close = close.expect("a close frame, not a dropped connection");
    assert_eq!(close.map(|c| u16::from(c.code)), Some(1001), "closed as going away");
    let _ = socket.close(None).await;
    let status = server.wait_for_exit().await;
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// The next text frame, within the deadline.
async fn next_text(socket: &mut tests::ws::Ws) -> String {
    loop {
        match tokio::time::timeout(DEADLINE, socket.next()).await.expect("a frame within the deadline") {
            Some(Ok(Frame::Text(text))) => return text.to_string(),
            Some(Ok(_)) => continue,
            other => panic!("the socket ended: {other:?}"),
        }
    }
}

#[tokio::test]
async fn sigterm_closes_socket_io_websockets_and_exits_within_the_shutdown_timeout() {
    let dir = TempDir::new("binary");
    let port = free_port();
    let mut server = start(dir.path(), port, dir.path()).await;
    let token = server.api().create_user("ada").await.token;
    let url = format!("ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket");
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.expect("the Engine.IO handshake");
    let open = next_text(&mut socket).await;
    assert!(open.starts_with('0'), "{open}");
    socket.send(Frame::text(format!(r#"40{{"token":"{token}"}}"#))).await.unwrap();
    let connected = next_text(&mut socket).await;
    assert!(connected.starts_with("40"), "{connected}");

    let stopping = Instant::now();
    server.terminate();

    // Engine.IO's close packet, then the close frame (docs/SOCKETIO.md).
    let mut packets = Vec::new();
    let close = tokio::time::timeout(DEADLINE, async {
        loop {
            match socket.next().await {
                Some(Ok(Frame::Close(frame))) => return Some(frame),
                Some(Ok(Frame::Text(text))) => packets.push(text.to_string()),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
    .expect("the connection ends within the deadline");
    assert!(close.is_some(), "a close frame, not a dropped connection; packets before: {packets:?}");
    assert_eq!(packets.last().map(String::as_str), Some("1"), "Engine.IO's close packet first: {packets:?}");
    let _ = socket.close(None).await;
    let status = server.wait_for_exit().await;
    assert_eq!(status.code(), Some(0), "{status:?}");
    // CHAT__SERVER__SHUTDOWN_TIMEOUT is 2 s: nothing was left to wait for.
    assert!(stopping.elapsed() < Duration::from_secs(2), "exited after {:?}", stopping.elapsed());
}

#[tokio::test]
async fn a_logout_still_holds_after_a_restart() {
    let dir = TempDir::new("binary");
    let port = free_port();
    let mut server = start(dir.path(), port, dir.path()).await;
    let token = server.api().create_user("ada").await.token;
    let logout = server.api().logout(&token).await;
    assert_eq!(logout.status, 200);
    server.terminate();
    assert!(server.wait_for_exit().await.success());

    // The revocations held in memory are read back from the database at start.
    let mut server = start(dir.path(), port, dir.path()).await;
    let refused = server.api().profile(&token).await;
    assert_eq!(refused.status, 401, "a token logged out before the restart is refused after it");
    server.terminate();
    assert!(server.wait_for_exit().await.success());
}

#[test]
fn an_unknown_subcommand_is_refused_with_usage() {
    let output = std::process::Command::new(server_binary())
        .arg("frobnicate")
        .env_clear()
        .output()
        .expect("the server runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("error:"), "{stderr}");
    assert!(stderr.contains("usage"), "{stderr}");
}
