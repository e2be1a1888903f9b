//! Request and response bodies of API.md.

use application::ports::ConversationSummary;
use application::ConversationView;
use domain::{User, UserId};
use serde::{Deserialize, Serialize};
use ws_notifier::wire::{timestamp, MessageDto};

/// The success envelope.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope<T> {
    pub success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<&'static str>,
    pub response_data: T,
}

impl<T> Envelope<T> {
    pub fn data(data: T) -> Self {
        Self { success: true, message: None, response_data: data }
    }

    pub fn with_message(message: &'static str, data: T) -> Self {
        Self { success: true, message: Some(message), response_data: data }
    }
}

/// A user as the world sees it: never the password or its hash.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserDto {
    #[serde(rename = "_id")]
    pub id: String,
    pub full_name: String,
    pub username: String,
    pub gender: Option<&'static str>,
    pub avatar: String,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&User> for UserDto {
    fn from(u: &User) -> Self {
        Self {
            id: u.id.to_string(),
            full_name: u.full_name.as_str().to_owned(),
            username: u.username.as_str().to_owned(),
            gender: u.gender.map(|g| g.as_str()),
            avatar: u.avatar.as_str().to_owned(),
            created_at: timestamp(&u.created_at),
            updated_at: timestamp(&u.updated_at),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisteredDto {
    pub new_user: UserDto,
    pub token: String,
}

#[derive(Serialize)]
pub struct LoggedInDto {
    pub user: UserDto,
    pub token: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationDto {
    #[serde(rename = "_id", skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub participants: [String; 2],
    pub messages: Vec<MessageDto>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

impl ConversationDto {
    pub fn new(view: &ConversationView, me: &UserId, other: &str) -> Self {
        let messages = view.messages.iter().map(MessageDto::from).collect();
        match &view.conversation {
            Some(c) => Self {
                id: Some(c.id.to_string()),
                participants: [c.participants.first().to_string(), c.participants.second().to_string()],
                messages,
                created_at: Some(timestamp(&c.created_at)),
                updated_at: Some(timestamp(&c.updated_at)),
            },
            None => Self {
                id: None,
                participants: [me.to_string(), other.to_owned()],
                messages,
                created_at: None,
                updated_at: None,
            },
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationSummaryDto {
    #[serde(rename = "_id")]
    pub id: String,
    pub participants: [String; 2],
    pub last_message: Option<MessageDto>,
    pub updated_at: String,
}

impl From<&ConversationSummary> for ConversationSummaryDto {
    fn from(s: &ConversationSummary) -> Self {
        let c = &s.conversation;
        Self {
            id: c.id.to_string(),
            participants: [c.participants.first().to_string(), c.participants.second().to_string()],
            last_message: s.last_message.as_ref().map(MessageDto::from),
            updated_at: timestamp(&c.updated_at),
        }
    }
}

// Request bodies: every field optional so that a missing one gets a precise message rather
// than serde's; a wrong type (an object where a string belongs) is still refused by serde.

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterRequest {
    pub full_name: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Sent by the original app's sign-up form; checked when present.
    pub confirm_password: Option<String>,
    pub gender: Option<String>,
    pub avatar: Option<String>,
}

#[derive(Deserialize)]
pub struct LoginRequest {
    pub username: Option<String>,
    pub password: Option<String>,
}

#[derive(Deserialize)]
pub struct SendRequest {
    pub message: Option<String>,
}

#[derive(Deserialize)]
pub struct UsersQuery {
    pub search: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

#[derive(Deserialize)]
pub struct HistoryQuery {
    pub limit: Option<u32>,
    pub before: Option<String>,
}

#[derive(Deserialize)]
pub struct TokenQuery {
    pub token: Option<String>,
}
