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
// 1. Rate limits.

#[tokio::test]
async fn logins_for_one_username_are_rate_limited() {
    let app = spawn(|s| s.limits.requests.login_per_minute_per_username = 3).await;
    let api = app.api();
    let user = api.create_user(&unique("victim")).await;

    for _ in 0..3 {
        api.login(&user.username, "wrong password")
            .await
            .error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    }
    api.login(&user.username, "wrong password")
        .await
        .rate_limited();
    // Even the right password waits: the limit is on attempts, not on failures.
    api.login(&user.username.to_uppercase(), PASSWORD)
        .await
        .rate_limited();
    // Other accounts are not locked out by it.
    let other = api.create_user(&unique("other")).await;
    api.login(&other.username, PASSWORD)
        .await
        .data(StatusCode::OK);
}

#[tokio::test]
async fn logins_from_one_address_are_rate_limited() {
    let app = spawn(|s| s.limits.requests.login_per_minute_per_ip = 3).await;
    let api = app.api();
    for _ in 0..3 {
        api.login(&unique("nobody"), "wrong password")
            .await
            .error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    }
    api.login(&unique("nobody"), "wrong password")
        .await
        .rate_limited();
}

#[tokio::test]
async fn message_sends_are_rate_limited_per_user() {
    let app = spawn(|s| s.limits.requests.sends_per_second_per_user = 2).await;
    let api = app.api();
    let alice = api.create_user(&unique("alice")).await;
    let bob = api.create_user(&unique("bob")).await;

    let sends = (0..8).map(|i| {
        let (api, alice, bob) = (api.clone(), alice.clone(), bob.clone());
        tokio::spawn(async move { api.send(&alice, &bob, &format!("burst {i}")).await })
    });
    let replies: Vec<Reply> = futures_util::future::join_all(sends)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let limited: Vec<&Reply> = replies
        .iter()
        .filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert!(
        !limited.is_empty(),
        "8 sends at once with 2 allowed per second: {replies:?}"
    );
    limited[0].rate_limited();
    assert!(
        replies.iter().any(|r| r.status == StatusCode::CREATED),
        "the first sends pass"
    );
    // Bob has an allowance of his own.
    api.send(&bob, &alice, "reply")
        .await
        .data(StatusCode::CREATED);
}

#[tokio::test]
async fn socket_connects_are_rate_limited_per_user() {
    let app = spawn(|s| s.limits.requests.socket_connects_per_minute_per_user = 2).await;
    let api = app.api();
    let user = api.create_user(&unique("sockets")).await;
    let _first = api.ws(&user.token).await;
    let _second = api.ws(&user.token).await;
    match api.try_ws(&user.token).await {
        Err(Some(status)) => assert_eq!(status, 429),
        Err(None) => panic!("the handshake failed without a status"),
        Ok(_) => panic!("a third connect within the minute was accepted"),
    }
    // The refusal is the usual envelope for plain HTTP clients.
    let reply = api.get(&format!("/ws?token={}", user.token), None).await;
    reply.rate_limited();
}

#[tokio::test]
async fn a_socket_sending_too_many_frames_is_closed_with_a_policy_code() {
    let app = spawn(|s| s.limits.socket_frames_per_second = 5).await;
    let api = app.api();
    let user = api.create_user(&unique("chatty")).await;
    let other = api.create_user(&unique("quiet")).await;
    let mut ws = api.ws(&user.token).await;
    let typing =
        json!({ "event": "typing", "data": { "to": other.id, "isTyping": true } }).to_string();
    for _ in 0..50 {
        if ws.send(Frame::text(typing.clone())).await.is_err() {
            break;
        }
    }
    let (code, reason) = close_frame(&mut ws, WAIT).await;
    assert_eq!(code, CloseCode::Policy, "{reason}");
    assert!(!reason.is_empty());
}

#[tokio::test]
async fn a_user_holds_at_most_the_allowed_sockets() {
    let app = spawn(|s| s.limits.sockets_per_user = 2).await;
    let api = app.api();
    let user = api.create_user(&unique("tabs")).await;
    let _first = api.ws(&user.token).await;
    let second = api.ws(&user.token).await;
    let mut third = api
        .try_ws(&user.token)
        .await
        .expect("the handshake itself completes");
    let (code, reason) = close_frame(&mut third, WAIT).await;
    assert_eq!(code, CloseCode::Policy, "{reason}");

    // Another user is not affected, and a closed socket frees its place.
    let other = api.create_user(&unique("elsewhere")).await;
    let _theirs = api.ws(&other.token).await;
    drop(second);
    let deadline = Instant::now() + WAIT;
    loop {
        let mut again = api
            .try_ws(&user.token)
            .await
            .expect("the handshake completes");
        match tokio::time::timeout(Duration::from_secs(2), again.next()).await {
            Ok(Some(Ok(Frame::Text(_)))) => break,
            _ if Instant::now() < deadline => continue,
            other => panic!("the freed place was not given back: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// 2. Limits on input.

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let app = spawn(|s| s.http.body_limit = 2048).await;
    let api = app.api();
    let body =
        json!({ "fullName": "x".repeat(4096), "username": unique("big"), "password": PASSWORD });
    api.post("/api/v1/user/register", &body, None)
        .await
        .error(StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE");
    // Without a Content-Length (chunked), the limit holds as well.
    let mut stream = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    let mut request = String::from(
        "POST /api/v1/user/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    );
    for _ in 0..8 {
        request.push_str(&format!("400\r\n{}\r\n", " ".repeat(1024)));
    }
    request.push_str("0\r\n\r\n");
    // The server may answer and close before it has read everything.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("PAYLOAD_TOO_LARGE"), "{response}");
}

#[tokio::test]
async fn deeply_nested_json_is_400_and_the_server_keeps_answering() {
    let app = spawn(|_| {}).await;
    let api = app.api();
    for path in ["/api/v1/user/register", "/api/v1/user/login"] {
        let reply = api
            .call(
                api.request(Method::POST, path, None)
                    .header(CONTENT_TYPE, "application/json")
                    .body("[".repeat(10_000)),
            )
            .await;
        reply.error(StatusCode::BAD_REQUEST, "VALIDATION");
        let nested = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
        let reply = api
            .call(
                api.request(Method::POST, path, None)
                    .header(CONTENT_TYPE, "application/json")
                    .body(nested),
            )
            .await;
        reply.error(StatusCode::BAD_REQUEST, "VALIDATION");
    }
    api.get("/healthz", None).await.data(StatusCode::OK);
}

#[tokio::test]
async fn a_huge_page_size_is_capped_at_200() {
    let app = spawn(|_| {}).await;
    let api = app.api();
    let alice = api.create_user(&unique("alice")).await;
    let bob = api.create_user(&unique("bob")).await;
    let sends = (0..8).map(|task| {
        let (api, alice, bob) = (api.clone(), alice.clone(), bob.clone());
        tokio::spawn(async move {
            for i in 0..26 {
                api.send(&alice, &bob, &format!("{task}-{i}"))
                    .await
                    .data(StatusCode::CREATED);
            }
        })
    });
    for send in futures_util::future::join_all(sends).await {
        send.unwrap();
    }
    let reply = api
        .get(
            &format!("/api/v1/message/get-messages/{}?limit=100000", bob.id),
            Some(&alice.token),
        )
        .await;
    let messages = reply.data(StatusCode::OK)["messages"]
        .as_array()
        .expect("messages")
        .len();
    assert_eq!(messages, 200, "208 stored, limit=100000 asked");
}

#[tokio::test]
async fn a_frame_over_the_size_limit_closes_the_socket_with_a_reason() {
    let app = spawn(|s| s.websocket.max_frame_bytes = 1024).await;
    let api = app.api();
    let user = api.create_user(&unique("big_frames")).await;
    let mut ws = api.ws(&user.token).await;
    let frame = json!({ "event": "typing", "data": { "to": "x".repeat(4096), "isTyping": true } });
    let _ = ws.send(Frame::text(frame.to_string())).await;
    let (code, reason) = close_frame(&mut ws, WAIT).await;
    assert_eq!(code, CloseCode::Size, "{reason}");
    assert!(!reason.is_empty(), "the close frame says why");
    // The server, and the same user's new sockets, are fine.
    api.get("/healthz", None).await.data(StatusCode::OK);
    let _again = api.ws(&user.token).await;
}

// ---------------------------------------------------------------------------------------
// 3. Headers, CORS and cookies.

#[tokio::test]
async fn responses_carry_the_security_headers() {
    let app = spawn(|_| {}).await;
    let api = app.api();
    let user = api.create_user(&unique("headers")).await;
    let replies = [
        api.get("/healthz", None).await,
        api.get("/api/v1/user/get-profile", Some(&user.token)).await,
        api.get("/api/v1/user/get-profile", None).await,
        api.get("/no/such/route", None).await,
    ];
    for reply in &replies {
        assert_eq!(
            reply.header("x-content-type-options"),
            Some("nosniff"),
            "{reply:?}"
        );
        assert_eq!(reply.header("x-frame-options"), Some("DENY"), "{reply:?}");
        assert_eq!(
            reply.header("referrer-policy"),
            Some("no-referrer"),
            "{reply:?}"
        );
    }
}

async fn preflight(api: &Api, origin: &str) -> Reply {
    api.call(
        api.request(Method::OPTIONS, "/api/v1/user/login", None)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type"),
    )
    .await
}

#[tokio::test]
async fn cors_is_closed_unless_an_origin_is_configured() {
    let closed = spawn(|_| {}).await;
    let reply = preflight(&closed.api(), "https://evil.example").await;
    assert!(
        reply.header("access-control-allow-origin").is_none(),
        "{reply:?}"
    );
    let reply = closed
        .api()
        .call(
            closed
                .api()
                .request(Method::GET, "/healthz", None)
                .header("origin", "https://evil.example"),
        )
        .await;
    assert!(
        reply.header("access-control-allow-origin").is_none(),
        "{reply:?}"
    );

    let open = spawn(|s| s.cors.allowed_origins = vec!["https://app.example".into()]).await;
    let api = open.api();
    let reply = preflight(&api, "https://app.example").await;
    assert!(reply.status.is_success(), "{reply:?}");
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(
        reply.header("access-control-allow-credentials"),
        Some("true")
    );
    let reply = api
        .call(
            api.request(Method::GET, "/healthz", None)
                .header("origin", "https://app.example"),
        )
        .await;
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(
        reply.header("access-control-allow-credentials"),
        Some("true")
    );
    // Other origins still get nothing.
    let reply = preflight(&api, "https://evil.example").await;
    assert!(
        reply.header("access-control-allow-origin").is_none(),
        "{reply:?}"
    );
}

fn token_cookie(reply: &Reply) -> String {
    let cookies: Vec<&str> = reply
        .headers
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter(|c| c.starts_with("token="))
        .collect();
    assert_eq!(cookies.len(), 1, "{reply:?}");
    cookies[0].to_owned()
}

fn cookie_attributes(cookie: &str) -> Vec<String> {
    cookie
        .split(';')
        .skip(1)
        .map(|a| a.trim().to_ascii_lowercase())
        .collect()
}

#[tokio::test]
async fn the_production_cookie_is_secure() {
    let app = spawn(|s| {
        s.cookie.secure = true;
        s.cookie.same_site = SameSite::None;
    })
    .await;
    let reply = app.api().register(&unique("prod")).await;
    reply.data(StatusCode::CREATED);
    let attributes = cookie_attributes(&token_cookie(&reply));
    for expected in ["secure", "httponly", "samesite=none", "path=/"] {
        assert!(
            attributes.iter().any(|a| a == expected),
            "{expected} missing: {attributes:?}"
        );
    }

    // Cross-site cookies are Secure even if `cookie.secure` was forgotten.
    let app = spawn(|s| s.cookie.same_site = SameSite::None).await;
    let reply = app.api().register(&unique("crosssite")).await;
    let attributes = cookie_attributes(&token_cookie(&reply));
    assert!(attributes.iter().any(|a| a == "secure"), "{attributes:?}");

    // The production profile turns it on by itself.
    let production = Settings::load_from(&tests::workspace_dir().join("config"), Environment::Production);
    assert!(production.is_err(), "production needs a secret");
    let text = std::fs::read_to_string(tests::workspace_dir().join("config/production.toml")).unwrap();
    assert!(
        text.contains("secure = true"),
        "config/production.toml sets cookie.secure"
    );
}

// ---------------------------------------------------------------------------------------
// 4. Forged and stale tokens.

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn sign(algorithm: jsonwebtoken::Algorithm, secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(algorithm),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("signing works")
}

#[tokio::test]
async fn forged_and_expired_tokens_are_refused() {
    let app = spawn(|_| {}).await;
    let api = app.api();
    let user = api.create_user(&unique("target")).await;
    let now = chrono::Utc::now().timestamp();
    let claims =
        json!({ "sub": user.id, "jti": "0123456789abcdef", "iat": now, "exp": now + 3600 });

    // The genuine shape signed with the real secret passes: the forgeries below differ in
    // one thing each.
    let genuine = sign(jsonwebtoken::Algorithm::HS256, SECRET, &claims);
    api.get("/api/v1/user/get-profile", Some(&genuine))
        .await
        .data(StatusCode::OK);

    let payload = base64url(claims.to_string().as_bytes());
    let none_header = base64url(br#"{"alg":"none","typ":"JWT"}"#);
    let forgeries = [
        ("alg none", format!("{none_header}.{payload}.")),
        (
            "alg none, no signature part",
            format!("{none_header}.{payload}"),
        ),
        (
            "HS512 with the real secret",
            sign(jsonwebtoken::Algorithm::HS512, SECRET, &claims),
        ),
        (
            "HS384 with the real secret",
            sign(jsonwebtoken::Algorithm::HS384, SECRET, &claims),
        ),
        (
            "another secret",
            sign(
                jsonwebtoken::Algorithm::HS256,
                "another-secret-0123456789-abcdefghijklmn",
                &claims,
            ),
        ),
        (
            "expired",
            sign(
                jsonwebtoken::Algorithm::HS256,
                SECRET,
                &json!({ "sub": user.id, "jti": "fedcba9876543210", "iat": now - 7200, "exp": now - 60 }),
            ),
        ),
    ];
    for (what, token) in forgeries {
        let reply = api.get("/api/v1/user/get-profile", Some(&token)).await;
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{what}: {}",
            reply.text
        );
        reply.error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
        assert!(
            matches!(api.try_ws(&token).await, Err(Some(401))),
            "{what} opens a socket"
        );
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

// ---------------------------------------------------------------------------------------
// 5. Secrets never reach the log.

#[tokio::test]
async fn passwords_tokens_and_hashes_never_reach_the_log() {
    let dir = TempDir::new("hardening");
    let storage = format!("sqlite://{}", dir.path().join("chat.db").display());
    let mut process =
        Process::start(&[("CHAT__STORAGE__URL", &storage), ("RUST_LOG", "debug")]).await;
    let api = process.api();
    let password = "Sup3r-Secret-Passw0rd!";
    let username = unique("logged");

    let reply = api
        .post(
            "/api/v1/user/register",
            &json!({ "fullName": "Logged User", "username": username, "password": password }),
            None,
        )
        .await;
    let register_token = reply.data(StatusCode::CREATED)["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let reply = api.login(&username, password).await;
    let token = reply.data(StatusCode::OK)["token"]
        .as_str()
        .unwrap()
        .to_owned();
    api.login(&username, "a wrong password here")
        .await
        .error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    api.get("/api/v1/user/get-profile", Some(&token))
        .await
        .data(StatusCode::OK);
    let reply = api
        .call(
            api.client
                .get(api.url("/api/v1/user/get-profile"))
                .header("cookie", format!("token={token}")),
        )
        .await;
    reply.data(StatusCode::OK);
    let mut ws = api.ws(&token).await;
    let _ = ws.close(None).await;
    api.call(api.request(Method::POST, "/api/v1/user/logout", Some(&token)))
        .await
        .data(StatusCode::OK);
    api.get("/api/v1/user/get-profile", Some(&token))
        .await
        .error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");

    // The requests were logged at all (the check below is not vacuous).
    let deadline = Instant::now() + WAIT;
    while !process.log().contains("/api/v1/user/logout") {
        assert!(
            Instant::now() < deadline,
            "no access log line for logout:\n{}",
            process.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    process.kill().await;
    let log = process.log();
    assert!(log.contains("DEBUG"), "debug logging was on");
    assert!(
        log.contains("/api/v1/user/get-profile"),
        "requests are logged"
    );
    for (what, secret) in [
        ("the password", password),
        ("the wrong password", "a wrong password here"),
        ("the login token", token.as_str()),
        ("the register token", register_token.as_str()),
        ("a token's signature", token.rsplit('.').next().unwrap()),
        ("a bcrypt hash", "$2b$"),
        ("a bcrypt hash", "$2a$"),
        ("the secret", SECRET),
    ] {
        assert!(!log.contains(secret), "{what} is in the log:\n{log}");
    }
}

// ---------------------------------------------------------------------------------------
// 6. A storage outage: 503 within a bounded time, then recovery without a restart.

/// How the proxy treats traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Open,
    /// Every connection closed; new ones accepted and left hanging.
    Cut,
    /// Connections kept open but nothing forwarded (a stalled network or server); new ones
    /// accepted and left hanging.
    Stalled,
}

/// A TCP proxy to `target` whose link can be cut, stalled and restored.
struct Proxy {
    port: u16,
    link: tokio::sync::watch::Sender<Link>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl Proxy {
    async fn start(target: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (link, _) = tokio::sync::watch::channel(Link::Open);
        let connections: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (links, tasks) = (link.clone(), connections.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let mut link = links.subscribe();
                let task = tokio::spawn(async move {
                    if *link.borrow_and_update() != Link::Open {
                        // A black hole: the connection stays open and nothing answers.
                        std::future::pending::<()>().await;
                    }
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let stalled = async { link.wait_for(|l| *l == Link::Stalled).await.is_ok() };
                    let stalled = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
                        stalled = stalled => stalled,
                    };
                    if stalled {
                        // Both ends stay open; nothing moves.
                        std::future::pending::<()>().await;
                    }
                });
                let mut tasks = tasks.lock().unwrap();
                tasks.retain(|t| !t.is_finished());
                tasks.push(task.abort_handle());
            }
        })
        .abort_handle();
        Self {
            port,
            link,
            connections,
            accept,
        }
    }

    /// Closes every connection, proxied or held.
    fn drop_connections(&self) {
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    fn set(&self, link: Link) {
        self.link.send_replace(link);
        if link != Link::Stalled {
            self.drop_connections();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.drop_connections();
    }
}

/// Polls `/readyz` until it answers `status`; panics after `timeout`.
async fn wait_ready(api: &Api, status: StatusCode, timeout: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let reply = api.get("/readyz", None).await;
        if reply.status == status {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "/readyz still {} after {timeout:?}",
            reply.status
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn outage_and_recovery(backend: Backend) {
    let target = match backend {
        Backend::Postgres => "127.0.0.1:5432",
        Backend::Mongodb => "127.0.0.1:27017",
        Backend::Sqlite => unreachable!("SQLite has no network"),
    };
    let proxy = Proxy::start(target).await;
    let proxied = |url: &str| {
        let url = url.replacen(target, &format!("127.0.0.1:{}", proxy.port), 1);
        assert!(
            url.contains(&proxy.port.to_string()),
            "the URL names {target}: {url}"
        );
        url
    };
    let app = spawn_with(backend, |s| {
        s.storage = match s.storage.clone() {
            StorageSettings::Postgres {
                url,
                run_migrations,
                ..
            } => StorageSettings::Postgres {
                url: SecretString::from(proxied(secrecy::ExposeSecret::expose_secret(&url))),
                max_connections: 4,
                acquire_timeout_ms: 1000,
                run_migrations,
            },
            StorageSettings::Mongodb { url, .. } => {
                let url = proxied(secrecy::ExposeSecret::expose_secret(&url));
                let separator = if url.contains('?') { '&' } else { '?' };
                StorageSettings::Mongodb {
                    // One server behind the proxy: never follow the addresses it advertises.
                    url: SecretString::from(format!("{url}{separator}directConnection=true")),
                    acquire_timeout_ms: 1000,
                }
            }
            other => other,
        };
    })
    .await;
    let api = app.api();
    let alice = api.create_user(&unique("alice")).await;
    let bob = api.create_user(&unique("bob")).await;
    api.send(&alice, &bob, "before")
        .await
        .data(StatusCode::CREATED);
    wait_ready(&api, StatusCode::OK, WAIT).await;

    for outage in [Link::Cut, Link::Stalled] {
        proxy.set(outage);
        for (what, request) in [
            (
                "get-profile",
                api.request(Method::GET, "/api/v1/user/get-profile", Some(&alice.token)),
            ),
            (
                "send",
                api.request(
                    Method::POST,
                    &format!("/api/v1/message/send/{}", bob.id),
                    Some(&alice.token),
                )
                .json(&json!({ "message": "during" })),
            ),
            (
                "login",
                api.request(Method::POST, "/api/v1/user/login", None)
                    .json(&json!({ "username": alice.username, "password": PASSWORD })),
            ),
        ] {
            let started = Instant::now();
            let reply = api.call(request).await;
            let elapsed = started.elapsed();
            assert_eq!(
                reply.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "{what} ({outage:?}): {reply:?}"
            );
            reply.error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE");
            assert!(
                elapsed < Duration::from_secs(3),
                "{what} ({outage:?}) took {elapsed:?}"
            );
            assert!(reply.header("retry-after").is_some(), "{reply:?}");
        }
        let started = Instant::now();
        let reply = api.get("/readyz", None).await;
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{outage:?}: {reply:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "/readyz took {:?}",
            started.elapsed()
        );
        api.get("/healthz", None).await.data(StatusCode::OK);

        proxy.set(Link::Open);
        let recovered = wait_ready(&api, StatusCode::OK, Duration::from_secs(30)).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let reply = api.send(&alice, &bob, "after").await;
            if reply.status == StatusCode::CREATED {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no recovery after {outage:?}: {reply:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        api.get("/api/v1/user/get-profile", Some(&alice.token))
            .await
            .data(StatusCode::OK);
        eprintln!("{backend:?}: ready {recovered:?} after the {outage:?} link was restored");
    }
    let messages = api.all_message_ids(&alice, &bob).await;
    assert!(messages.len() >= 3, "{messages:?}");
}

#[tokio::test]
async fn a_postgres_outage_is_503_and_recovers_by_itself() {
    outage_and_recovery(Backend::Postgres).await;
}

#[tokio::test]
async fn a_mongodb_outage_is_503_and_recovers_by_itself() {
    outage_and_recovery(Backend::Mongodb).await;
}

// ---------------------------------------------------------------------------------------
// 7. No acknowledged message is lost when the process is killed.

async fn acknowledged_messages_survive_kill_9(env: &[(&str, &str)]) {
    let mut process = Process::start(env).await;
    let api = process.api();
    let alice = api.create_user(&unique("alice")).await;
    let bob = api.create_user(&unique("bob")).await;

    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
    let (enough_tx, mut enough_rx) = tokio::sync::mpsc::channel::<()>(1);
    let tasks: Vec<_> = (0..16)
        .map(|task| {
            let (api, alice, bob, acknowledged, enough) = (
                api.clone(),
                alice.clone(),
                bob.clone(),
                acknowledged.clone(),
                enough_tx.clone(),
            );
            tokio::spawn(async move {
                for i in 0..13 {
                    let request = api
                        .request(
                            Method::POST,
                            &format!("/api/v1/message/send/{}", bob.id),
                            Some(&alice.token),
                        )
                        .json(&json!({ "message": format!("burst {task}-{i}") }));
                    // Once the process is gone, requests fail: those were never acknowledged.
                    let Ok(response) = request.send().await else {
                        return;
                    };
                    if response.status() != StatusCode::CREATED {
                        return;
                    }
                    let Ok(body) = response.json::<Value>().await else {
                        return;
                    };
                    let id = body["responseData"]["_id"]
                        .as_str()
                        .expect("_id")
                        .to_owned();
                    let count = {
                        let mut acknowledged = acknowledged.lock().unwrap();
                        acknowledged.push(id);
                        acknowledged.len()
                    };
                    if count >= 150 {
                        let _ = enough.try_send(());
                    }
                }
            })
        })
        .collect();
    drop(enough_tx);
    // Killed while the burst is still going: some requests are in flight.
    let _ = tokio::time::timeout(Duration::from_secs(60), enough_rx.recv()).await;
    process.kill().await;
    for task in tasks {
        task.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() >= 150,
        "only {} sends acknowledged",
        acknowledged.len()
    );

    let process = Process::start(env).await;
    let api = process.api();
    let stored = api.all_message_ids(&alice, &bob).await;
    let missing: Vec<&String> = acknowledged
        .iter()
        .filter(|id| !stored.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged messages lost: {missing:?}",
        missing.len(),
        acknowledged.len()
    );
}

#[tokio::test]
async fn acknowledged_messages_survive_kill_9_on_sqlite() {
    let dir = TempDir::new("hardening");
    let storage = format!("sqlite://{}", dir.path().join("chat.db").display());
    acknowledged_messages_survive_kill_9(&[
        ("CHAT__STORAGE__URL", &storage),
        ("CHAT__STORAGE__SYNCHRONOUS", "full"),
    ])
    .await;
}

#[tokio::test]
async fn acknowledged_messages_survive_kill_9_on_postgres() {
    let database = TestDatabase::create(Backend::Postgres).await;
    let StorageSettings::Postgres { url, .. } = &database.settings else {
        unreachable!()
    };
    let url = secrecy::ExposeSecret::expose_secret(url).to_owned();
    acknowledged_messages_survive_kill_9(&[
        ("CHAT__STORAGE__BACKEND", "postgres"),
        ("CHAT__STORAGE__URL", &url),
    ])
    .await;
    database.remove().await;
}

// ---------------------------------------------------------------------------------------
// 8. A consumer that stops reading is evicted without slowing anyone else.

/// A `/ws` connection over a socket with a small receive buffer, so that a client that
/// stops reading backs up into the server quickly.
async fn stalled_ws(api: &Api, token: &str) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket
        .connect(format!("127.0.0.1:{}", api.port).parse().unwrap())
        .await
        .unwrap();
    let (ws, _) = tokio_tungstenite::client_async(api.ws_url(token), MaybeTlsStream::Plain(stream))
        .await
        .expect("the handshake succeeds");
    ws
}

#[tokio::test]
async fn a_stalled_socket_is_evicted_while_live_delivery_stays_fast() {
    let app = spawn(|s| s.websocket.queue_capacity = 8).await;
    let api = app.api();
    let stalled_user = api.create_user(&unique("stalled")).await;
    let live_user = api.create_user(&unique("live")).await;

    let mut stalled = stalled_ws(&api, &stalled_user.token).await;
    // The stalled client reads nothing from here on (until the end of the test).
    let mut live = api.ws(&live_user.token).await;
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel::<(Value, Instant)>();
    let reader = tokio::spawn(async move {
        while let Some(Ok(frame)) = live.next().await {
            if let Frame::Text(text) = frame {
                let value: Value = serde_json::from_str(text.as_str()).unwrap();
                let _ = events_tx.send((value, Instant::now()));
            }
        }
    });

    // 5000 four-byte characters: 20 kB a frame, so that the socket buffers fill quickly.
    let text = "\u{1F600}".repeat(5000);
    let stalled_id = json!(stalled_user.id);
    let mut worst = Duration::ZERO;
    let mut sent = 0usize;
    let mut evicted_at: Option<usize> = None;
    // Past the eviction, a few more sends show delivery to others is unaffected.
    while evicted_at.is_none_or(|at| sent < at + 20) {
        assert!(
            sent < 1500,
            "{sent} messages sent and the stalled socket is still registered"
        );
        let started = Instant::now();
        let reply = api.send(&live_user, &stalled_user, &text).await;
        let id = reply.data(StatusCode::CREATED)["_id"]
            .as_str()
            .unwrap()
            .to_owned();
        sent += 1;
        let arrived = loop {
            match tokio::time::timeout(Duration::from_secs(1), events.recv()).await {
                Ok(Some((event, at)))
                    if event["event"] == "newMessage" && event["data"]["_id"] == id.as_str() =>
                {
                    break at
                }
                // The stalled user going offline is how its eviction shows from outside.
                Ok(Some((event, _))) if event["event"] == "onlineUsers" => {
                    let online = event["data"].as_array().expect("ids");
                    if !online.contains(&stalled_id) && evicted_at.is_none() {
                        evicted_at = Some(sent);
                    }
                }
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the live client's socket ended at message {sent}"),
                Err(_) => panic!("message {sent} did not reach the live client within 1 s"),
            }
        };
        let latency = arrived - started;
        assert!(
            latency < Duration::from_secs(1),
            "message {sent} took {latency:?}"
        );
        worst = worst.max(latency);
    }
    reader.abort();

    // The stalled client now reads: what was buffered, then the end of the connection.
    let mut received = 0usize;
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match stalled.next().await {
                Some(Ok(Frame::Close(frame))) => {
                    if let Some(frame) = frame {
                        assert_eq!(frame.code, CloseCode::Policy, "{frame:?}");
                    }
                    return;
                }
                Some(Ok(Frame::Text(_))) => received += 1,
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return,
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the stalled socket was never closed ({received} frames read)"
    );
    assert!(
        received < sent,
        "the stalled socket got all {sent} messages: it was never evicted"
    );
    eprintln!("evicted after {evicted_at:?} of {sent} messages; worst live latency {worst:?}");
}
