//! The protections against abuse and failure, each shown to hold: rate limits, input limits,
//! security headers and CORS, token forgery, secrets kept out of logs, storage outages,
//! durability of acknowledged messages across a crash, and slow WebSocket consumers.
//! `docs/SECURITY.md` maps every threat to its defence, its setting and its test here.
//!
//! Most tests run the server in process (`server::build`) with explicit settings; the log
//! and crash tests run the compiled `server` binary.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde_json::{json, Value};
use server::settings::{Environment, SameSite, StorageSettings};
use server::Settings;
use tests::{Backend, TempDir, TestDatabase};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const SECRET: &str = tests::JWT_SECRET;
const PASSWORD: &str = "correct horse battery";
const WAIT: Duration = Duration::from_secs(10);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

mod rate_limits;
mod input;
mod browser;
mod tokens;
mod logs;
mod outages;
mod durability;
mod slow_consumers;
mod sessions;
mod engineio;
mod accounts;
mod reads;
mod origins;
mod http_edge;

// ---------------------------------------------------------------------------------------
// An in-process server with explicit settings.

struct App {
    port: u16,
    client: reqwest::Client,
    database: Option<TestDatabase>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// A server over a fresh database of `backend`, with `adjust` applied to its settings.
async fn spawn_with(backend: Backend, adjust: impl FnOnce(&mut Settings)) -> App {
    let database = TestDatabase::create(backend).await;
    let mut settings = tests::test_settings(&database);
    adjust(&mut settings);
    let app = server::build(settings).await.expect("the server builds");
    let port = app.port();
    let server = tokio::spawn(app.run_until_stopped());
    App {
        port,
        client: http_client(),
        database: Some(database),
        server,
    }
}

async fn spawn(adjust: impl FnOnce(&mut Settings)) -> App {
    spawn_with(Backend::Sqlite, adjust).await
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(WAIT)
        .build()
        .expect("a plain HTTP client builds")
}

impl Drop for App {
    fn drop(&mut self) {
        self.server.abort();
        let Some(database) = self.database.take() else {
            return;
        };
        database.remove_blocking();
    }
}

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    text: String,
    body: Value,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    #[track_caller]
    fn data(&self, status: StatusCode) -> &Value {
        assert_eq!(self.status, status, "body: {}", self.text);
        assert_eq!(self.body["success"], json!(true), "body: {}", self.text);
        &self.body["responseData"]
    }

    #[track_caller]
    fn error(&self, status: StatusCode, code: &str) {
        assert_eq!(self.status, status, "body: {}", self.text);
        assert_eq!(self.body["success"], json!(false), "body: {}", self.text);
        assert_eq!(self.body["code"], json!(code), "body: {}", self.text);
        assert!(
            self.body["errMessage"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{}",
            self.text
        );
    }

    /// Asserts a 429 envelope with a usable `Retry-After`.
    #[track_caller]
    fn rate_limited(&self) {
        self.error(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED");
        let retry = self
            .header("retry-after")
            .unwrap_or_else(|| panic!("no Retry-After: {self:?}"));
        let seconds: u64 = retry
            .parse()
            .unwrap_or_else(|_| panic!("Retry-After {retry:?}"));
        assert!(seconds >= 1, "Retry-After {seconds}");
    }
}

#[derive(Debug, Clone)]
struct User {
    id: String,
    username: String,
    token: String,
}

async fn read(response: reqwest::Response) -> Reply {
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("the body is readable");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        text,
        body,
    }
}

/// Client calls against a server on `port`, in process or not.
#[derive(Clone)]
struct Api {
    port: u16,
    client: reqwest::Client,
}

impl Api {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn request(&self, method: Method, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        let request = self.client.request(method, self.url(path));
        match token {
            Some(token) => request.header(AUTHORIZATION, format!("Bearer {token}")),
            None => request,
        }
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> Reply {
        read(request.send().await.expect("the server answers")).await
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.call(self.request(Method::GET, path, token)).await
    }

    async fn post(&self, path: &str, body: &Value, token: Option<&str>) -> Reply {
        self.call(self.request(Method::POST, path, token).json(body))
            .await
    }

    async fn register(&self, username: &str) -> Reply {
        self.post(
            "/api/v1/user/register",
            &json!({ "fullName": "Test User", "username": username, "password": PASSWORD }),
            None,
        )
        .await
    }

    async fn create_user(&self, username: &str) -> User {
        let reply = self.register(username).await;
        let data = reply.data(StatusCode::CREATED);
        User {
            id: data["newUser"]["_id"]
                .as_str()
                .expect("newUser._id")
                .to_owned(),
            username: username.to_owned(),
            token: data["token"].as_str().expect("token").to_owned(),
        }
    }

    async fn login(&self, username: &str, password: &str) -> Reply {
        self.post(
            "/api/v1/user/login",
            &json!({ "username": username, "password": password }),
            None,
        )
        .await
    }

    async fn send(&self, from: &User, to: &User, text: &str) -> Reply {
        self.post(
            &format!("/api/v1/message/send/{}", to.id),
            &json!({ "message": text }),
            Some(&from.token),
        )
        .await
    }

    /// Every message id of the conversation of `me` with `other`, through all pages.
    async fn all_message_ids(&self, me: &User, other: &User) -> Vec<String> {
        let mut ids = Vec::new();
        let mut before: Option<String> = None;
        loop {
            let mut path = format!("/api/v1/message/get-messages/{}?limit=200", other.id);
            if let Some(before) = &before {
                path.push_str(&format!("&before={before}"));
            }
            let reply = self.get(&path, Some(&me.token)).await;
            let page: Vec<String> = reply.data(StatusCode::OK)["messages"]
                .as_array()
                .expect("messages")
                .iter()
                .map(|m| m["_id"].as_str().expect("_id").to_owned())
                .collect();
            let Some(oldest) = page.first().cloned() else {
                break;
            };
            ids.extend(page);
            before = Some(oldest);
        }
        ids
    }

    fn ws_url(&self, token: &str) -> String {
        format!("ws://127.0.0.1:{}/ws?token={token}", self.port)
    }

    /// A `/ws` connection, or the HTTP status the handshake was refused with.
    async fn try_ws(&self, token: &str) -> Result<Ws, Option<u16>> {
        let request = self.ws_url(token).into_client_request().unwrap();
        match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request)).await {
            Err(_) => Err(None),
            Ok(Ok((stream, _))) => Ok(stream),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
                Err(Some(response.status().as_u16()))
            }
            Ok(Err(_)) => Err(None),
        }
    }

    /// A `/ws` connection that has received its presence list (so it is registered).
    async fn ws(&self, token: &str) -> Ws {
        let mut ws = self.try_ws(token).await.expect("the handshake succeeds");
        next_event(&mut ws, "getOnlineUsers", WAIT).await;
        ws
    }
}

impl App {
    fn api(&self) -> Api {
        Api {
            port: self.port,
            client: self.client.clone(),
        }
    }
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
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// The `data` of the next `name` event; panics at the deadline or if the socket ends.
async fn next_event(ws: &mut Ws, name: &str, timeout: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("no {name:?} event within {timeout:?}"),
            Ok(Some(Ok(Frame::Text(text)))) => {
                let value: Value = serde_json::from_str(text.as_str()).expect("JSON frames");
                if value["event"] == name {
                    return value["data"].clone();
                }
            }
            Ok(Some(Ok(Frame::Close(reason)))) => {
                panic!("closed while waiting for {name}: {reason:?}")
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(error))) => panic!("socket failed while waiting for {name}: {error}"),
            Ok(None) => panic!("socket ended while waiting for {name}"),
        }
    }
}

/// The close frame the server ends `ws` with, skipping other frames; panics at the deadline.
async fn close_frame(ws: &mut Ws, timeout: Duration) -> (CloseCode, String) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("the server did not close the socket within {timeout:?}"),
            Ok(Some(Ok(Frame::Close(Some(frame))))) => {
                return (frame.code, frame.reason.to_string())
            }
            Ok(Some(Ok(Frame::Close(None)))) => panic!("a close frame without a code"),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(error))) => panic!("the socket failed before a close frame: {error}"),
            Ok(None) => panic!("the socket ended without a close frame"),
        }
    }
}


// ---------------------------------------------------------------------------------------
// The compiled server, for the log and crash tests.

/// A running server process, killed on drop; its stderr is collected.
struct Process {
    child: tokio::process::Child,
    port: u16,
    log: Arc<Mutex<String>>,
}

impl Process {
    async fn start(env: &[(&str, &str)]) -> Self {
        let dir = std::env::temp_dir();
        let mut child = tokio::process::Command::new(tests::server_binary())
            .current_dir(&dir)
            .env_clear()
            .env("CHAT_CONFIG_DIR", tests::workspace_dir().join("config"))
            .env("APP_ENV", "test")
            .env("CHAT__SERVER__PORT", "0")
            .env("CHAT__SERVER__WORKERS", "2")
            .env("CHAT__AUTH__JWT_SECRET", SECRET)
            .env("CHAT__LOG__FORMAT", "text")
            .env("CHAT__LOG__LEVEL", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the server starts");
        let log = Arc::new(Mutex::new(String::new()));
        let (port_tx, port_rx) = tokio::sync::oneshot::channel();
        let stderr = child.stderr.take().expect("stderr is piped");
        let collected = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            let mut port_tx = Some(port_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("listening") {
                    if let Some(port) = port_in(&line) {
                        if let Some(tx) = port_tx.take() {
                            let _ = tx.send(port);
                        }
                    }
                }
                let mut log = collected.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let port = match tokio::time::timeout(Duration::from_secs(30), port_rx).await {
            Ok(Ok(port)) => port,
            _ => panic!(
                "the server did not start listening; its log:\n{}",
                log.lock().unwrap()
            ),
        };
        Self { child, port, log }
    }

    fn api(&self) -> Api {
        Api {
            port: self.port,
            client: http_client(),
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGKILL: no graceful anything.
    async fn kill(&mut self) {
        self.child.start_kill().expect("the process can be killed");
        let _ = self.child.wait().await;
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// The `port=…` field of the "listening" line (ANSI colour codes aside).
fn port_in(line: &str) -> Option<u16> {
    let start = line.find("port")? + "port".len();
    let digits: String = line[start..]
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok().filter(|p| *p != 0)
}
