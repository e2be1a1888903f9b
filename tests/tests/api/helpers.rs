//! A real server on a free port over a fresh database, and clients for it: one method per
//! route, plus a WebSocket client that waits for events with a deadline.

use std::sync::Mutex;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_TYPE, COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tests::{Backend, TestDatabase};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The signing secret of every test server, so tests can forge tokens with it.
pub use tests::JWT_SECRET;
/// The token lifetime of `config/default.toml`, which the cookie's `Max-Age` follows.
pub const TOKEN_TTL_SECS: u64 = 604_800;
/// The password every [`TestApp::create_user`] account gets.
pub const PASSWORD: &str = "correct horse battery";
/// How long to wait for an event that must arrive.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to watch for an event that must not arrive.
pub const QUIET_PERIOD: Duration = Duration::from_millis(300);

pub struct TestApp {
    pub address: String,
    pub port: u16,
    pub client: reqwest::Client,
    database: Option<TestDatabase>,
    /// Every response body and event frame seen so far, for checks across whole flows.
    transcript: Mutex<Vec<String>>,
}

/// A registered account and a valid token for it.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: String,
    pub username: String,
    pub password: String,
    pub token: String,
}

/// A response, its body read and parsed.
#[derive(Debug)]
pub struct ApiResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
    pub body: Value,
}

impl ApiResponse {
    /// Asserts a success envelope with `status`; returns `responseData`.
    #[track_caller]
    pub fn data(&self, status: StatusCode) -> &Value {
        assert_eq!(self.status, status, "unexpected status, body: {}", self.text);
        self.assert_json();
        assert_eq!(self.body["success"], json!(true), "body: {}", self.text);
        assert!(self.body.get("errMessage").is_none(), "body: {}", self.text);
        assert!(self.body.get("responseData").is_some(), "no responseData: {}", self.text);
        &self.body["responseData"]
    }

    /// Asserts an error envelope with `status` and `code`; returns `errMessage`.
    #[track_caller]
    pub fn error(&self, status: StatusCode, code: &str) -> &str {
        assert_eq!(self.status, status, "unexpected status, body: {}", self.text);
        self.assert_json();
        assert_eq!(self.body["success"], json!(false), "body: {}", self.text);
        assert_eq!(self.body["code"], json!(code), "body: {}", self.text);
        assert!(self.body.get("responseData").is_none(), "body: {}", self.text);
        let message = self.body["errMessage"].as_str().unwrap_or_else(|| {
            panic!("errMessage must be a string: {}", self.text);
        });
        assert!(!message.trim().is_empty(), "empty errMessage: {}", self.text);
        message
    }

    #[track_caller]
    fn assert_json(&self) {
        let content_type =
            self.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert!(
            content_type.starts_with("application/json"),
            "Content-Type {content_type:?}, body: {}",
            self.text
        );
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every `Set-Cookie` header value.
    pub fn set_cookies(&self) -> Vec<&str> {
        self.headers
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    }

    /// The single `Set-Cookie` for `token`.
    #[track_caller]
    pub fn token_cookie(&self) -> &str {
        let cookies: Vec<&str> =
            self.set_cookies().into_iter().filter(|c| c.starts_with("token=")).collect();
        assert_eq!(cookies.len(), 1, "expected one token cookie, got {cookies:?}");
        cookies[0]
    }
}

/// Splits a `Set-Cookie` value into its value and its attributes (lower-cased names).
pub fn parse_cookie(header: &str) -> (String, Vec<(String, String)>) {
    let mut parts = header.split(';').map(str::trim);
    let first = parts.next().unwrap_or_default();
    let value = first.split_once('=').map(|(_, v)| v.to_owned()).unwrap_or_default();
    let attributes = parts
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), v.trim().to_owned()),
            None => (p.to_ascii_lowercase(), String::new()),
        })
        .collect();
    (value, attributes)
}

pub async fn spawn_app() -> TestApp {
    let database = TestDatabase::create(Backend::from_env()).await;
    let mut settings = tests::test_settings(&database);
    settings.auth.token_ttl = TOKEN_TTL_SECS;
    // The suite searches in bursts; the search limit has tests of its own (hardening).
    settings.limits.requests.searches_per_second_per_user = 0;
    let port = tests::start_server(settings).await;
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        port,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a plain HTTP client builds"),
        database: Some(database),
        transcript: Mutex::new(Vec::new()),
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let Some(database) = self.database.take() else { return };
        database.remove_blocking();
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    /// Sends `request` and reads the whole response.
    pub async fn execute(&self, request: reqwest::RequestBuilder) -> ApiResponse {
        let response = request.send().await.expect("the server answers");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("the body is readable");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        self.record(&text);
        ApiResponse { status, headers, text, body }
    }

    pub fn record(&self, text: &str) {
        self.transcript.lock().unwrap().push(text.to_owned());
    }

    pub fn transcript(&self) -> Vec<String> {
        self.transcript.lock().unwrap().clone()
    }

    pub fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let request = self.client.request(method, self.url(path));
        match token {
            Some(token) => request.header(AUTHORIZATION, format!("Bearer {token}")),
            None => request,
        }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> ApiResponse {
        self.execute(self.request(Method::GET, path, token)).await
    }

    pub async fn post_json(&self, path: &str, body: &Value, token: Option<&str>) -> ApiResponse {
        self.execute(self.request(Method::POST, path, token).json(body)).await
    }

    /// A GET carrying the token as the `token` cookie instead of a header.
    pub async fn get_with_cookie(&self, path: &str, token: &str) -> ApiResponse {
        self.execute(self.client.get(self.url(path)).header(COOKIE, format!("token={token}"))).await
    }

    pub async fn register(&self, body: &Value) -> ApiResponse {
        self.post_json("/api/v1/user/register", body, None).await
    }

    pub async fn login(&self, username: &str, password: &str) -> ApiResponse {
        self.post_json(
            "/api/v1/user/login",
            &json!({ "username": username, "password": password }),
            None,
        )
        .await
    }

    pub async fn logout(&self, token: &str) -> ApiResponse {
        self.execute(self.request(Method::POST, "/api/v1/user/logout", Some(token))).await
    }

    pub async fn profile(&self, token: &str) -> ApiResponse {
        self.get("/api/v1/user/get-profile", Some(token)).await
    }

    pub async fn other_users(&self, token: &str, query: &[(&str, &str)]) -> ApiResponse {
        self.execute(
            self.request(Method::GET, "/api/v1/user/get-other-users", Some(token)).query(query),
        )
        .await
    }

    pub async fn send(&self, token: &str, receiver: &str, message: &str) -> ApiResponse {
        self.post_json(
            &format!("/api/v1/message/send/{receiver}"),
            &json!({ "message": message }),
            Some(token),
        )
        .await
    }

    pub async fn get_messages(
        &self,
        token: &str,
        other: &str,
        query: &[(&str, &str)],
    ) -> ApiResponse {
        self.execute(
            self.request(
                Method::GET,
                &format!("/api/v1/message/get-messages/{other}"),
                Some(token),
            )
            .query(query),
        )
        .await
    }

    pub async fn conversations(&self, token: &str) -> ApiResponse {
        self.get("/api/v1/message/conversations", Some(token)).await
    }

    /// Registers `username` with [`PASSWORD`].
    pub async fn create_user(&self, username: &str) -> TestUser {
        let response = self
            .register(&json!({
                "fullName": format!("{username} Example"),
                "username": username,
                "password": PASSWORD,
                "gender": "other",
            }))
            .await;
        let data = response.data(StatusCode::CREATED);
        TestUser {
            id: data["newUser"]["_id"].as_str().expect("newUser._id").to_owned(),
            username: username.to_owned(),
            password: PASSWORD.to_owned(),
            token: data["token"].as_str().expect("token").to_owned(),
        }
    }

    /// Sends a message that must be accepted; returns the stored message.
    pub async fn send_ok(&self, from: &TestUser, to: &TestUser, text: &str) -> Value {
        self.send(&from.token, &to.id, text).await.data(StatusCode::CREATED).clone()
    }

    /// A `/ws` connection with the token in the query, ready once its presence list came in
    /// (by then it is registered for every later event).
    pub async fn connect_ws(&self, token: &str) -> WsClient {
        let mut client = self.connect_ws_with_query(token).await;
        client.next_event("onlineUsers", EVENT_TIMEOUT).await;
        client.next_event("getOnlineUsers", EVENT_TIMEOUT).await;
        client
    }

    /// A `/ws` connection with `?token=`, as soon as the handshake is done.
    pub async fn connect_ws_with_query(&self, token: &str) -> WsClient {
        let request = format!("{}?token={token}", self.ws_url()).into_client_request().unwrap();
        WsClient::connect(request)
            .await
            .unwrap_or_else(|refused| panic!("the handshake failed: {}", refused.error))
    }

    /// A `/ws` handshake carrying `header: value`, as soon as the handshake is done.
    pub async fn connect_ws_with_header(
        &self,
        header: &'static str,
        value: &str,
    ) -> Result<WsClient, WsRefused> {
        let mut request = self.ws_url().into_client_request().unwrap();
        request.headers_mut().insert(header, HeaderValue::from_str(value).unwrap());
        WsClient::connect(request).await
    }

    /// A `/ws` handshake at `url` (query and all).
    pub async fn try_connect_ws(&self, url: &str) -> Result<WsClient, WsRefused> {
        WsClient::connect(url.into_client_request().unwrap()).await
    }
}

/// Why a handshake did not upgrade.
#[derive(Debug)]
pub struct WsRefused {
    pub status: Option<StatusCode>,
    pub body: Option<String>,
    pub error: String,
}

pub struct WsClient {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Every text frame received, in order.
    pub received: Vec<Value>,
}

impl WsClient {
    async fn connect(
        request: tokio_tungstenite::tungstenite::handshake::client::Request,
    ) -> Result<Self, WsRefused> {
        match tokio::time::timeout(EVENT_TIMEOUT, tokio_tungstenite::connect_async(request)).await {
            Err(_) => {
                Err(WsRefused { status: None, body: None, error: "handshake timed out".into() })
            }
            Ok(Ok((stream, _))) => Ok(Self { stream, received: Vec::new() }),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => Err(WsRefused {
                status: Some(StatusCode::from_u16(response.status().as_u16()).unwrap()),
                body: response.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()),
                error: format!("HTTP {}", response.status()),
            }),
            Ok(Err(error)) => Err(WsRefused { status: None, body: None, error: error.to_string() }),
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.stream.send(Frame::text(text)).await.expect("the frame is sent");
    }

    pub async fn emit(&mut self, event: &str, data: Value) {
        self.send_text(&json!({ "event": event, "data": data }).to_string()).await;
    }

    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
        // Read until the server acknowledges, so its side has seen the close.
        let _ = tokio::time::timeout(EVENT_TIMEOUT, async {
            while let Some(Ok(_)) = self.stream.next().await {}
        })
        .await;
    }

    /// Whether the server ends the connection within `timeout` (skipping events before).
    pub async fn expect_close(&mut self, timeout: Duration) -> bool {
        let closing = async {
            loop {
                match self.stream.next().await {
                    None | Some(Err(_)) | Some(Ok(Frame::Close(_))) => return,
                    Some(Ok(_)) => continue,
                }
            }
        };
        tokio::time::timeout(timeout, closing).await.is_ok()
    }

    /// The next JSON text frame, or `None` at the deadline. Panics if the connection ends.
    async fn next_frame(&mut self, deadline: tokio::time::Instant) -> Option<Value> {
        loop {
            let frame = match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return None,
                Ok(None) => panic!("the connection ended; frames so far: {:?}", self.received),
                Ok(Some(Err(error))) => panic!("the connection failed: {error}"),
                Ok(Some(Ok(frame))) => frame,
            };
            match frame {
                Frame::Text(text) => {
                    let value: Value = serde_json::from_str(text.as_str())
                        .unwrap_or_else(|e| panic!("a frame that is not JSON ({e}): {text}"));
                    assert!(value["event"].is_string(), "a frame without an event name: {text}");
                    assert!(value.get("data").is_some(), "a frame without data: {text}");
                    self.received.push(value.clone());
                    return Some(value);
                }
                Frame::Close(reason) => {
                    panic!(
                        "the server closed the connection: {reason:?}; frames so far: {:?}",
                        self.received
                    )
                }
                _ => continue,
            }
        }
    }

    /// The `data` of the next `name` event, skipping other events; panics after `timeout`.
    pub async fn next_event(&mut self, name: &str, timeout: Duration) -> Value {
        self.next_event_matching(name, |_| true, timeout).await
    }

    /// The `data` of the next `name` event whose data satisfies `accept`.
    pub async fn next_event_matching(
        &mut self,
        name: &str,
        accept: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        while let Some(frame) = self.next_frame(deadline).await {
            if frame["event"] == name && accept(&frame["data"]) {
                return frame["data"].clone();
            }
        }
        panic!("no matching {name:?} event within {timeout:?}; frames so far: {:?}", self.received)
    }

    /// Fails if a `name` event arrives within `duration`; other events are skipped.
    pub async fn assert_no_event(&mut self, name: &str, duration: Duration) {
        let deadline = tokio::time::Instant::now() + duration;
        while let Some(frame) = self.next_frame(deadline).await {
            assert_ne!(frame["event"], name, "unexpected {name:?} event: {frame}");
        }
    }
}

/// The online user ids of an `onlineUsers` payload.
pub fn ids(data: &Value) -> Vec<String> {
    data.as_array()
        .unwrap_or_else(|| panic!("expected an array of ids: {data}"))
        .iter()
        .map(|id| id.as_str().expect("ids are strings").to_owned())
        .collect()
}

/// A timestamp as API.md writes them: RFC 3339, UTC.
#[track_caller]
pub fn assert_timestamp(value: &Value) {
    let text = value.as_str().unwrap_or_else(|| panic!("a timestamp must be a string: {value}"));
    assert!(text.ends_with('Z'), "not UTC: {text}");
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("not RFC 3339 ({e}): {text}"));
}

/// A public user object: exactly the documented fields.
#[track_caller]
pub fn assert_user(value: &Value, username: &str) {
    let object = value.as_object().unwrap_or_else(|| panic!("a user must be an object: {value}"));
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["_id", "avatar", "createdAt", "fullName", "gender", "updatedAt", "username"],
        "user fields: {value}"
    );
    assert!(value["_id"].as_str().is_some_and(|id| !id.is_empty()), "{value}");
    assert_eq!(value["username"], username);
    assert!(value["avatar"].as_str().is_some_and(|a| a.starts_with("http")), "{value}");
    assert_timestamp(&value["createdAt"]);
    assert_timestamp(&value["updatedAt"]);
}

/// A message object: exactly the documented fields.
#[track_caller]
pub fn assert_message(value: &Value, from: &TestUser, to: &TestUser, text: &str) {
    let object =
        value.as_object().unwrap_or_else(|| panic!("a message must be an object: {value}"));
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["_id", "conversationId", "createdAt", "message", "receiverId", "senderId"],
        "message fields: {value}"
    );
    assert!(value["_id"].as_str().is_some_and(|id| !id.is_empty()), "{value}");
    assert!(value["conversationId"].as_str().is_some_and(|id| !id.is_empty()), "{value}");
    assert_eq!(value["senderId"], from.id.as_str());
    assert_eq!(value["receiverId"], to.id.as_str());
    assert_eq!(value["message"], text);
    assert_timestamp(&value["createdAt"]);
}
