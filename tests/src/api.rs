//! A client of one running server, wherever it runs ([`crate::TestApp`] in this process,
//! [`crate::ServerProcess`] or a [`crate::cluster::Cluster`] instance): one method per route,
//! the user helpers every suite needs, `/ws` connections, and the typed [`Reply`] with its
//! envelope assertions.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_TYPE, COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::ws::{WsClient, WsRefused, EVENT_TIMEOUT};

/// The password every [`Api::create_user`] account gets.
pub const PASSWORD: &str = "correct horse battery";
/// How long one request may take before the test fails: long enough for a busy store under
/// the stress suites, short enough that a hung server fails the test rather than the run.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// A registered account and a valid token for it.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: String,
    pub username: String,
    pub password: String,
    pub token: String,
}

/// A response, its body read and parsed (`Null` when it is not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
    pub body: Value,
}

impl Reply {
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

    /// Asserts a 429 envelope with a usable `Retry-After`.
    #[track_caller]
    pub fn rate_limited(&self) {
        self.error(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED");
        let retry = self.header("retry-after").unwrap_or_else(|| panic!("no Retry-After: {self:?}"));
        let seconds: u64 = retry.parse().unwrap_or_else(|_| panic!("Retry-After {retry:?}"));
        assert!(seconds >= 1, "Retry-After {seconds}");
    }

    #[track_caller]
    fn assert_json(&self) {
        let content_type = self.header(CONTENT_TYPE.as_str()).unwrap_or_default();
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
        self.headers.get_all(reqwest::header::SET_COOKIE).iter().filter_map(|v| v.to_str().ok()).collect()
    }

    /// The single `Set-Cookie` for `token`.
    #[track_caller]
    pub fn token_cookie(&self) -> &str {
        let cookies: Vec<&str> = self.set_cookies().into_iter().filter(|c| c.starts_with("token=")).collect();
        assert_eq!(cookies.len(), 1, "expected one token cookie, got {cookies:?}");
        cookies[0]
    }
}

/// The HTTP client of the suites: no redirects followed (a test sees what the server
/// answered), every request bounded by [`REQUEST_TIMEOUT`].
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("a plain HTTP client builds")
}

/// Calls against the server on `port`; cheap to clone into tasks (the clones share the
/// client and the transcript).
#[derive(Clone)]
pub struct Api {
    pub port: u16,
    pub client: reqwest::Client,
    /// Every response body and event frame seen so far, for checks across whole flows.
    transcript: Arc<Mutex<Vec<String>>>,
}

impl Api {
    /// A client of the server on `port` with [`http_client`].
    pub fn new(port: u16) -> Self {
        Self::with_client(port, http_client())
    }

    pub fn with_client(port: u16, client: reqwest::Client) -> Self {
        Self { port, client, transcript: Arc::default() }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The `/ws` endpoint, without a query.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    /// Sends `request` and reads the whole response.
    pub async fn execute(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("the server answers");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("the body is readable");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        self.record(&text);
        Reply { status, headers, text, body }
    }

    pub fn record(&self, text: &str) {
        // A poisoned lock means another assertion already failed the test.
        self.transcript.lock().unwrap().push(text.to_owned());
    }

    pub fn transcript(&self) -> Vec<String> {
        self.transcript.lock().unwrap().clone()
    }

    /// A request to `path`, with `token` as a bearer token if given.
    pub fn request(&self, method: Method, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        let request = self.client.request(method, self.url(path));
        match token {
            Some(token) => request.header(AUTHORIZATION, format!("Bearer {token}")),
            None => request,
        }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.execute(self.request(Method::GET, path, token)).await
    }

    pub async fn post_json(&self, path: &str, body: &Value, token: Option<&str>) -> Reply {
        self.execute(self.request(Method::POST, path, token).json(body)).await
    }

    /// A `method` request with `body` as JSON.
    pub async fn send_json(&self, method: Method, path: &str, body: &Value, token: Option<&str>) -> Reply {
        self.execute(self.request(method, path, token).json(body)).await
    }

    /// A GET carrying the token as the `token` cookie instead of a header.
    pub async fn get_with_cookie(&self, path: &str, token: &str) -> Reply {
        self.execute(self.client.get(self.url(path)).header(COOKIE, format!("token={token}"))).await
    }

    pub async fn register(&self, body: &Value) -> Reply {
        self.post_json("/api/v1/user/register", body, None).await
    }

    /// Registers `username` as [`Api::create_user`] does, and returns the answer as it is.
    pub async fn register_user(&self, username: &str) -> Reply {
        self.register(&json!({
            "fullName": format!("{username} Example"),
            "username": username,
            "password": PASSWORD,
            "gender": "other",
        }))
        .await
    }

    pub async fn login(&self, username: &str, password: &str) -> Reply {
        self.post_json("/api/v1/user/login", &json!({ "username": username, "password": password }), None)
            .await
    }

    pub async fn logout(&self, token: &str) -> Reply {
        self.execute(self.request(Method::POST, "/api/v1/user/logout", Some(token))).await
    }

    pub async fn profile(&self, token: &str) -> Reply {
        self.get("/api/v1/user/get-profile", Some(token)).await
    }

    pub async fn other_users(&self, token: &str, query: &[(&str, &str)]) -> Reply {
        self.execute(self.request(Method::GET, "/api/v1/user/get-other-users", Some(token)).query(query))
            .await
    }

    pub async fn send(&self, token: &str, receiver: &str, message: &str) -> Reply {
        self.post_json(
            &format!("/api/v1/message/send/{receiver}"),
            &json!({ "message": message }),
            Some(token),
        )
        .await
    }

    pub async fn get_messages(&self, token: &str, other: &str, query: &[(&str, &str)]) -> Reply {
        self.execute(
            self.request(Method::GET, &format!("/api/v1/message/get-messages/{other}"), Some(token))
                .query(query),
        )
        .await
    }

    pub async fn conversations(&self, token: &str) -> Reply {
        self.get("/api/v1/message/conversations", Some(token)).await
    }

    pub async fn sync(&self, token: &str, query: &[(&str, &str)]) -> Reply {
        self.execute(self.request(Method::GET, "/api/v1/message/sync", Some(token)).query(query)).await
    }

    /// Creates a group named `name` with the users `members` (ids) besides the caller.
    pub async fn create_group(&self, token: &str, name: &str, members: &[&str]) -> Reply {
        self.post_json("/api/v1/conversations", &json!({ "name": name, "members": members }), Some(token))
            .await
    }

    pub async fn group(&self, token: &str, conversation: &str) -> Reply {
        self.get(&format!("/api/v1/conversations/{conversation}"), Some(token)).await
    }

    pub async fn rename_group(&self, token: &str, conversation: &str, name: &str) -> Reply {
        let path = format!("/api/v1/conversations/{conversation}");
        self.send_json(Method::PATCH, &path, &json!({ "name": name }), Some(token)).await
    }

    pub async fn add_members(&self, token: &str, conversation: &str, users: &[&str]) -> Reply {
        let path = format!("/api/v1/conversations/{conversation}/members");
        self.post_json(&path, &json!({ "userIds": users }), Some(token)).await
    }

    pub async fn remove_member(&self, token: &str, conversation: &str, user: &str) -> Reply {
        let path = format!("/api/v1/conversations/{conversation}/members/{user}");
        self.execute(self.request(Method::DELETE, &path, Some(token))).await
    }

    pub async fn set_role(&self, token: &str, conversation: &str, user: &str, role: &str) -> Reply {
        let path = format!("/api/v1/conversations/{conversation}/members/{user}/role");
        self.send_json(Method::PUT, &path, &json!({ "role": role }), Some(token)).await
    }

    pub async fn transfer_ownership(&self, token: &str, conversation: &str, to: &str) -> Reply {
        let path = format!("/api/v1/conversations/{conversation}/owner");
        self.post_json(&path, &json!({ "userId": to }), Some(token)).await
    }

    pub async fn leave_group(&self, token: &str, conversation: &str) -> Reply {
        let path = format!("/api/v1/conversations/{conversation}/leave");
        self.execute(self.request(Method::POST, &path, Some(token))).await
    }

    /// Sends `text` to a conversation of either kind, by its id.
    pub async fn post_message(&self, token: &str, conversation: &str, text: &str) -> Reply {
        let path = format!("/api/v1/conversations/{conversation}/messages");
        self.post_json(&path, &json!({ "message": text }), Some(token)).await
    }

    pub async fn conversation_messages(
        &self,
        token: &str,
        conversation: &str,
        query: &[(&str, &str)],
    ) -> Reply {
        let path = format!("/api/v1/conversations/{conversation}/messages");
        self.execute(self.request(Method::GET, &path, Some(token)).query(query)).await
    }

    pub async fn mark_read(&self, token: &str, conversation: &str, up_to: &str) -> Reply {
        let path = format!("/api/v1/conversations/{conversation}/read");
        self.post_json(&path, &json!({ "upTo": up_to }), Some(token)).await
    }

    /// Creates a group that must be accepted; returns it.
    pub async fn create_group_ok(&self, owner: &TestUser, name: &str, members: &[&TestUser]) -> Value {
        let ids: Vec<&str> = members.iter().map(|m| m.id.as_str()).collect();
        self.create_group(&owner.token, name, &ids).await.data(StatusCode::CREATED).clone()
    }

    /// Sends to a conversation by id; the message must be stored.
    pub async fn post_message_ok(&self, from: &TestUser, conversation: &str, text: &str) -> Value {
        self.post_message(&from.token, conversation, text).await.data(StatusCode::CREATED).clone()
    }

    /// Registers `username` with [`PASSWORD`]; the registration must succeed.
    pub async fn create_user(&self, username: &str) -> TestUser {
        let response = self.register_user(username).await;
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

    /// Every message id of the conversation of `me` with `other`, through all pages.
    pub async fn all_message_ids(&self, me: &TestUser, other: &TestUser) -> Vec<String> {
        let mut ids = Vec::new();
        let mut before: Option<String> = None;
        loop {
            let mut query = vec![("limit", "200")];
            if let Some(before) = &before {
                query.push(("before", before));
            }
            let reply = self.get_messages(&me.token, &other.id, &query).await;
            let page: Vec<String> = reply.data(StatusCode::OK)["messages"]
                .as_array()
                .expect("messages")
                .iter()
                .map(|m| m["_id"].as_str().expect("_id").to_owned())
                .collect();
            let Some(oldest) = page.first().cloned() else {
                return ids;
            };
            ids.extend(page);
            before = Some(oldest);
        }
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
        self.try_ws(token).await.unwrap_or_else(|refused| panic!("the handshake failed: {}", refused.error))
    }

    /// A `/ws` handshake with `?token=`: the connection, or why it was refused.
    pub async fn try_ws(&self, token: &str) -> Result<WsClient, WsRefused> {
        self.try_connect_ws(&format!("{}?token={token}", self.ws_url())).await
    }

    /// A `/ws` handshake carrying `header: value`, as soon as the handshake is done.
    pub async fn connect_ws_with_header(
        &self,
        header: &'static str,
        value: &str,
    ) -> Result<WsClient, WsRefused> {
        let mut request = self.ws_url().into_client_request().expect("a valid WebSocket URL");
        request.headers_mut().insert(header, HeaderValue::from_str(value).expect("a header value"));
        WsClient::connect(request).await
    }

    /// A `/ws` handshake at `url` (query and all).
    pub async fn try_connect_ws(&self, url: &str) -> Result<WsClient, WsRefused> {
        WsClient::connect(url.into_client_request().expect("a valid WebSocket URL")).await
    }
}
