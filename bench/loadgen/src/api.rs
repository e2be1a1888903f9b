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
    fn a_sent_message_yields_its_id() {
        let body = br#"{"success":true,"responseData":{"_id":"m9","message":"x"}}"#;
        let sent: Enveloped<Identified> = serde_json::from_slice(body).unwrap();
        assert_eq!(sent.response_data.id.to_string(), "m9");
    }
}
