//! The protections against abuse and failure, each shown to hold: rate limits, input limits,
//! security headers and CORS, token forgery, secrets kept out of logs, storage outages,
//! durability of acknowledged messages across a crash, and slow WebSocket consumers.
//! `docs/SECURITY.md` maps every threat to its defence, its setting and its test here.
//!
//! Most tests run the server in process (`tests::TestApp`) with explicit settings; the log
//! and crash tests run the compiled `server` binary.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde_json::{json, Value};
use server::settings::{Environment, SameSite, StorageSettings};
use server::Settings;
use tests::ws::Ws;
use tests::{
    Api, Backend, Reply, ServerProcess, TempDir, TestApp, TestDatabase, TestUser, WsRefused, PASSWORD,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::MaybeTlsStream;

const SECRET: &str = tests::JWT_SECRET;
const WAIT: Duration = Duration::from_secs(10);

mod accounts;
mod browser;
mod durability;
mod engineio;
mod http_edge;
mod input;
mod logs;
mod origins;
mod outages;
mod rate_limits;
mod reads;
mod sessions;
mod slow_consumers;
mod tokens;
mod upgrades;

/// A server over a fresh SQLite database with `adjust` applied to its settings: the
/// defences under test don't depend on the store (the outage and durability tests name
/// theirs).
async fn spawn(adjust: impl FnOnce(&mut Settings)) -> TestApp {
    TestApp::spawn_with(Backend::Sqlite, adjust).await
}

/// A token signed with `secret` carrying `claims`.
fn sign(algorithm: jsonwebtoken::Algorithm, secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(algorithm),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("signing works")
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}
