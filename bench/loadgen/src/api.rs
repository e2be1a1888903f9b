//! The REST calls of docs/API.md, tolerant of the small differences of the original app
//! (the token may come only as a cookie; the user may sit directly in `responseData`).

use std::borrow::Cow;
use std::time::Duration;

use anyhow::{bail, Context as _};
use futures_util::stream::{self, StreamExt as _};
use reqwest::{header, Client, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::Target;

#[derive(Clone, Debug)]
pub struct User {
    pub id: String,
    pub username: String,
    pub token: String,
}

#[derive(Clone)]
pub struct Api {
    http: Client,
    base: String,
}

impl Api {
    pub fn new(target: &Target) -> anyhow::Result<Self> {
        let http = Client::builder()
            .timeout(Duration::from_secs_f64(target.timeout))
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()
            .context("building the HTTP client")?;
        Ok(Self { http, base: target.url.trim_end_matches('/').to_owned() })
    }

    /// The WebSocket base (`ws://host:port`) of the same server.
    pub fn ws_base(&self) -> String {
        self.base.replacen("http://", "ws://", 1)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn authed(&self, request: reqwest::RequestBuilder, token: &str) -> reqwest::RequestBuilder {
        // Both carriers: this server prefers the header, the original app reads the cookie.
        request
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::COOKIE, format!("token={token}"))
    }

    pub async fn ready(&self) -> bool {
        matches!(self.http.get(self.url("/readyz")).send().await, Ok(r) if r.status().is_success())
    }

    /// The server's `/metrics` (Prometheus text), which it serves when they are enabled.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let response = self.http.get(self.url("/metrics")).send().await?;
        let status = response.status();
        if !status.is_success() {
            bail!("GET /metrics answered {status} (are the metrics enabled?)");
        }
        Ok(response.text().await?)
    }

    /// Registers `username`, or logs in when it exists already.
    pub async fn register(&self, username: &str, password: &str) -> anyhow::Result<User> {
        let body = json!({
            "fullName": format!("Load {username}"),
            "username": username,
            "password": password,
            "confirmPassword": password,
            "gender": "other",
        });
        let response = self.http.post(self.url("/api/v1/user/register")).json(&body).send().await?;
        let status = response.status();
        if status == StatusCode::CONFLICT {
            return self.login_user(username, password).await;
        }
        if !status.is_success() {
            bail!("register {username}: HTTP {status}: {}", response.text().await.unwrap_or_default());
        }
        user_from(username, response).await
    }

    pub async fn login_user(&self, username: &str, password: &str) -> anyhow::Result<User> {
        let body = json!({ "username": username, "password": password });
        let response = self.http.post(self.url("/api/v1/user/login")).json(&body).send().await?;
        if !response.status().is_success() {
            bail!("login {username}: HTTP {}", response.status());
        }
        user_from(username, response).await
    }

    /// One login, for the storm: only the status matters.
    pub async fn login(&self, username: &str, password: &str) -> anyhow::Result<StatusCode> {
        let body = json!({ "username": username, "password": password });
        let response = self.http.post(self.url("/api/v1/user/login")).json(&body).send().await?;
        let status = response.status();
        response.bytes().await?;
        Ok(status)
    }

    pub async fn profile(&self, token: &str) -> anyhow::Result<StatusCode> {
        let request = self.authed(self.http.get(self.url("/api/v1/user/get-profile")), token);
        let response = request.send().await?;
        let status = response.status();
        response.bytes().await?;
        Ok(status)
    }

    /// Sends `text` to `to`; the stored message's id on success.
    pub async fn send(
        &self,
        token: &str,
        to: &str,
        text: &str,
    ) -> anyhow::Result<(StatusCode, Option<String>)> {
        let request = self
            .authed(self.http.post(self.url(&format!("/api/v1/message/send/{to}"))), token)
            .json(&json!({ "message": text }));
        self.sent(request).await
    }

    /// The answer to a send: its status, and the stored message's id on success.
    async fn sent(&self, request: reqwest::RequestBuilder) -> anyhow::Result<(StatusCode, Option<String>)> {
        let response = request.send().await?;
        let status = response.status();
        let bytes = response.bytes().await?;
        if !status.is_success() {
            return Ok((status, None));
        }
        let id = serde_json::from_slice::<Enveloped<Identified>>(&bytes)
            .ok()
            .map(|sent| sent.response_data.id.to_string());
        Ok((status, id))
    }

    /// One page of history: the status and the messages' ids, oldest first.
    pub async fn history(
        &self,
        token: &str,
        other: &str,
        limit: usize,
        before: Option<&str>,
    ) -> anyhow::Result<(StatusCode, Vec<String>)> {
        let mut url = format!("/api/v1/message/get-messages/{other}?limit={limit}");
        if let Some(before) = before {
            url.push_str("&before=");
            url.push_str(before);
        }
        let response = self.authed(self.http.get(self.url(&url)), token).send().await?;
        let status = response.status();
        let bytes = response.bytes().await?;
        if !status.is_success() {
            return Ok((status, Vec::new()));
        }
        // Only the ids are read (into borrowed strings), so that parsing a page costs the load
        // generator little next to the server it measures.
        let page: Enveloped<HistoryPage> =
            serde_json::from_slice(&bytes).context("history body is not JSON")?;
        let ids = page.response_data.messages.iter().map(|m| m.id.to_string()).collect();
        Ok((status, ids))
    }

    /// Creates a group named `name` with `members` (the others; the caller becomes its owner);
    /// the new conversation's id.
    pub async fn create_group(&self, token: &str, name: &str, members: &[String]) -> anyhow::Result<String> {
        let request = self
            .authed(self.http.post(self.url("/api/v1/conversations")), token)
            .json(&json!({ "name": name, "members": members }));
        let (status, body) = self.answer(request).await?;
        if !status.is_success() {
            bail!("creating group {name:?} with {} members: HTTP {status}: {body}", members.len());
        }
        conversation_id(&body).with_context(|| format!("no conversation _id in the created group: {body}"))
    }

    /// Adds `users` to group `conversation`.
    pub async fn add_members(&self, token: &str, conversation: &str, users: &[String]) -> anyhow::Result<()> {
        let request = self
            .authed(self.http.post(self.url(&format!("/api/v1/conversations/{conversation}/members"))), token)
            .json(&json!({ "userIds": users }));
        let (status, body) = self.answer(request).await?;
        if !status.is_success() {
            bail!("adding {} members to {conversation}: HTTP {status}: {body}", users.len());
        }
        Ok(())
    }

    /// Sends `text` into a conversation (group or direct) by its id; the stored message's id
    /// on success.
    pub async fn send_to_conversation(
        &self,
        token: &str,
        conversation: &str,
        text: &str,
    ) -> anyhow::Result<(StatusCode, Option<String>)> {
        let request = self
            .authed(
                self.http.post(self.url(&format!("/api/v1/conversations/{conversation}/messages"))),
                token,
            )
            .json(&json!({ "message": text }));
        self.sent(request).await
    }

    /// Adds (`add`) or takes back my reaction `emoji` to `message` of `conversation`: the
    /// status (200 whether or not it changed anything).
    pub async fn react(
        &self,
        token: &str,
        conversation: &str,
        message: &str,
        emoji: &str,
        add: bool,
    ) -> anyhow::Result<StatusCode> {
        let url = self.url(&format!(
            "/api/v1/conversations/{conversation}/messages/{message}/reactions/{}",
            percent_encoded(emoji)
        ));
        let request = if add { self.http.put(url) } else { self.http.delete(url) };
        let response = self.authed(request, token).send().await?;
        let status = response.status();
        response.bytes().await?;
        Ok(status)
    }

    /// Replaces the text of my `message` of `conversation`: the status.
    pub async fn edit(
        &self,
        token: &str,
        conversation: &str,
        message: &str,
        text: &str,
    ) -> anyhow::Result<StatusCode> {
        let url = self.url(&format!("/api/v1/conversations/{conversation}/messages/{message}"));
        let response =
            self.authed(self.http.patch(url), token).json(&json!({ "message": text })).send().await?;
        let status = response.status();
        response.bytes().await?;
        Ok(status)
    }

    /// The messages of `conversation` before the message `before` (at most `limit`, oldest
    /// first), whole.
    pub async fn conversation_page(
        &self,
        token: &str,
        conversation: &str,
        before: &str,
        limit: usize,
    ) -> anyhow::Result<Vec<Value>> {
        let url = format!("/api/v1/conversations/{conversation}/messages?limit={limit}&before={before}");
        let (status, body) = self.answer(self.authed(self.http.get(self.url(&url)), token)).await?;
        if !status.is_success() {
            bail!("history of {conversation} before {before}: HTTP {status}: {body}");
        }
        match body.get("responseData") {
            Some(Value::Array(messages)) => Ok(messages.clone()),
            _ => bail!("a history page of {conversation} is not a list: {body}"),
        }
    }

    /// Sends `text` to user `to` (setup): the conversation's id; fails unless stored.
    pub async fn send_in_conversation(&self, token: &str, to: &str, text: &str) -> anyhow::Result<String> {
        let request = self
            .authed(self.http.post(self.url(&format!("/api/v1/message/send/{to}"))), token)
            .json(&json!({ "message": text }));
        let (status, body) = self.answer(request).await?;
        if !status.is_success() {
            bail!("send to {to}: HTTP {status}: {body}");
        }
        body.get("responseData")
            .and_then(|m| m.get("conversationId"))
            .and_then(id_string)
            .with_context(|| format!("no conversationId in the sent message: {body}"))
    }

    /// Marks `conversation` read up to the message `up_to` (inclusive).
    pub async fn mark_read(&self, token: &str, conversation: &str, up_to: &str) -> anyhow::Result<()> {
        let request = self
            .authed(self.http.post(self.url(&format!("/api/v1/conversations/{conversation}/read"))), token)
            .json(&json!({ "upTo": up_to }));
        let (status, body) = self.answer(request).await?;
        if !status.is_success() {
            bail!("marking {conversation} read up to {up_to}: HTTP {status}: {body}");
        }
        Ok(())
    }

    /// One page of my conversation list: the status, the entries, and the cursor of the next
    /// page (the `X-Next-Cursor` header) when more follow.
    pub async fn conversations(
        &self,
        token: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> anyhow::Result<(StatusCode, Vec<ListedConversation>, Option<String>)> {
        let mut request = self
            .authed(self.http.get(self.url("/api/v1/message/conversations")), token)
            .query(&[("limit", limit.to_string())]);
        if let Some(cursor) = cursor {
            request = request.query(&[("cursor", cursor)]);
        }
        let response = request.send().await?;
        let status = response.status();
        let next = response
            .headers()
            .get("x-next-cursor")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
        let bytes = response.bytes().await?;
        if !status.is_success() {
            return Ok((status, Vec::new(), None));
        }
        let page: Enveloped<Vec<ListedEntry>> =
            serde_json::from_slice(&bytes).context("conversation list body is not the expected JSON")?;
        let entries = page
            .response_data
            .into_iter()
            .map(|e| ListedConversation { id: e.id.to_string(), unread: e.unread_count })
            .collect();
        Ok((status, entries, next))
    }

    /// The status and JSON body of a request (an empty or non-JSON body reads as `null`).
    async fn answer(&self, request: reqwest::RequestBuilder) -> anyhow::Result<(StatusCode, Value)> {
        let response = request.send().await?;
        let status = response.status();
        let bytes = response.bytes().await?;
        Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
    }

    /// Registers `count` users named `{prefix}{index}`, a few at a time (setup, not timed).
    pub async fn register_many(
        &self,
        prefix: &str,
        count: usize,
        password: &str,
        concurrency: usize,
    ) -> anyhow::Result<Vec<User>> {
        let results: Vec<anyhow::Result<User>> = stream::iter(0..count)
            .map(|i| async move { self.register(&format!("{prefix}{i}"), password).await })
            .buffered(concurrency.max(1))
            .collect()
            .await;
        eprintln!("  registered {count} users");
        results.into_iter().collect()
    }
}

async fn user_from(username: &str, response: reqwest::Response) -> anyhow::Result<User> {
    let cookie_token = response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("token=").map(|rest| rest.split(';').next().unwrap_or("").to_owned()))
        .filter(|t| !t.is_empty());
    let body: Value = response.json().await.context("auth response is not JSON")?;
    let data = body.get("responseData").unwrap_or(&body);
    let token = data
        .get("token")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or(cookie_token)
        .with_context(|| format!("no token for {username} in the body or a cookie"))?;
    let user = data.get("newUser").or_else(|| data.get("user")).unwrap_or(data);
    let id = user.get("_id").and_then(id_string).with_context(|| format!("no user _id for {username}"))?;
    Ok(User { id, username: username.to_owned(), token })
}

/// `{"responseData": ...}`: the part of an answer the load generator reads.
#[derive(Deserialize)]
struct Enveloped<T> {
    #[serde(rename = "responseData")]
    response_data: T,
}

#[derive(Deserialize)]
struct HistoryPage<'a> {
    #[serde(borrow)]
    messages: Vec<Identified<'a>>,
}

/// One entry of the conversation list as the load generator reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedConversation {
    pub id: String,
    /// `unreadCount`, when the server gives it.
    pub unread: Option<u64>,
}

#[derive(Deserialize)]
struct ListedEntry<'a> {
    #[serde(rename = "_id", borrow)]
    id: IdRef<'a>,
    #[serde(rename = "unreadCount", default)]
    unread_count: Option<u64>,
}

/// The `_id` of a created conversation: the answer's own, or that of a `conversation` or
/// `group` object inside it.
fn conversation_id(body: &Value) -> Option<String> {
    let data = body.get("responseData").unwrap_or(body);
    [data, data.get("conversation").unwrap_or(&Value::Null), data.get("group").unwrap_or(&Value::Null)]
        .into_iter()
        .find_map(|v| v.get("_id").and_then(id_string))
}

/// Anything with an `_id`; every other field is skipped unread.
#[derive(Deserialize)]
struct Identified<'a> {
    #[serde(rename = "_id", borrow)]
    id: IdRef<'a>,
}

/// An id as a string, or as `{"$oid": ...}` as some stores serialise it.
#[derive(Deserialize)]
#[serde(untagged)]
enum IdRef<'a> {
    Plain(#[serde(borrow)] Cow<'a, str>),
    Object {
        #[serde(rename = "$oid", borrow)]
        oid: Cow<'a, str>,
    },
}

impl std::fmt::Display for IdRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdRef::Plain(id) | IdRef::Object { oid: id } => f.write_str(id),
        }
    }
}

/// Ids are strings here; some stores serialise them as `{"$oid": ...}`.
fn id_string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("$oid").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

/// `text` as a URL path segment: every byte percent-encoded (an emoji is several bytes of
/// UTF-8).
pub fn percent_encoded(text: &str) -> String {
    text.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// A short prefix that keeps this run's usernames apart from earlier runs'.
pub fn run_prefix(scenario: &str) -> String {
    let tag: u32 = rand::random::<u32>() % 1_000_000;
    format!("lg{scenario}{tag}_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_page_yields_its_ids_in_either_form() {
        let body = br#"{"success":true,"responseData":{"_id":"c","participants":["a","b"],
            "messages":[{"_id":"m1","message":"hi \"there\""},{"_id":{"$oid":"m2"},"senderId":"a"}]}}"#;
        let page: Enveloped<HistoryPage> = serde_json::from_slice(body).unwrap();
        let ids: Vec<String> = page.response_data.messages.iter().map(|m| m.id.to_string()).collect();
        assert_eq!(ids, ["m1", "m2"]);
    }

    #[test]
    fn a_conversation_list_page_yields_ids_and_unread_counts() {
        let body = br#"{"success":true,"responseData":[
            {"_id":"g1","kind":"group","name":"x","members":["a","b"],"memberCount":2,"unreadCount":3,
             "lastMessage":{"_id":"m","message":"hi"}},
            {"_id":{"$oid":"d1"},"kind":"direct","participants":["a","c"],"unreadCount":0},
            {"_id":"old","participants":["a","d"]}]}"#;
        let page: Enveloped<Vec<ListedEntry>> = serde_json::from_slice(body).unwrap();
        let entries: Vec<(String, Option<u64>)> =
            page.response_data.iter().map(|e| (e.id.to_string(), e.unread_count)).collect();
        assert_eq!(
            entries,
            [("g1".to_owned(), Some(3)), ("d1".to_owned(), Some(0)), ("old".to_owned(), None)]
        );
    }

    #[test]
    fn a_created_group_yields_its_id_wherever_the_answer_puts_it() {
        let flat = json!({"success": true, "responseData": {"_id": "g1", "name": "x"}});
        let nested = json!({"success": true, "responseData": {"conversation": {"_id": {"$oid": "g2"}}}});
        assert_eq!(conversation_id(&flat).as_deref(), Some("g1"));
        assert_eq!(conversation_id(&nested).as_deref(), Some("g2"));
        assert_eq!(conversation_id(&json!({"success": true, "responseData": {}})), None);
    }

    #[test]
    fn an_emoji_is_percent_encoded_byte_by_byte() {
        assert_eq!(percent_encoded("👍"), "%F0%9F%91%8D");
        assert_eq!(percent_encoded("❤️"), "%E2%9D%A4%EF%B8%8F");
    }

    #[test]
    fn a_sent_message_yields_its_id() {
        let body = br#"{"success":true,"responseData":{"_id":"m9","message":"x"}}"#;
        let sent: Enveloped<Identified> = serde_json::from_slice(body).unwrap();
        assert_eq!(sent.response_data.id.to_string(), "m9");
    }
}
