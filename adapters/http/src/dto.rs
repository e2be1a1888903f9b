//! Request and response bodies of API.md, with their JSON schemas for the OpenAPI document
//! (`crate::openapi`): the request schemas state exactly what the handlers accept, so that
//! the schema-driven fuzz test (tests/tests/openapi.rs) can tell a wrong answer from a right one.

pub mod conversations;

use application::ports::{ConversationSummary, MembersPreview};
use application::{ConversationView, SyncEvent, SyncPage};
use chat_realtime::wire::{names, timestamp, ConversationReadDto, MessageDto, MessageUpdatedDto};
use domain::{Chat, User, UserId};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::openapi::fields;

/// The success envelope.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Envelope<T> {
    /// Always `true`.
    #[schema(schema_with = fields::always_true)]
    pub success: bool,
    /// A short note on what was done (register, login, logout).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, nullable = false)]
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

/// `null`, as JSON: the data of an answer that has none (logout).
#[derive(Serialize)]
pub struct Null;

impl utoipa::PartialSchema for Null {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new().schema_type(utoipa::openapi::schema::Type::Null).into()
    }
}

impl ToSchema for Null {}

/// `{"status": …}`: what the health probes answer.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusDto {
    /// `up` (`/healthz`) or `ready` (`/readyz`).
    #[schema(value_type = String, example = "up")]
    pub status: &'static str,
}

/// A user as the world sees it: never the password or its hash.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = User)]
pub struct UserDto {
    #[serde(rename = "_id")]
    pub id: String,
    pub full_name: String,
    /// As registered (unique case-insensitively).
    pub username: String,
    #[schema(value_type = Option<fields::Gender>)]
    pub gender: Option<&'static str>,
    /// A picture URL: the one given at registration, or a generated default.
    pub avatar: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

impl From<&User> for UserDto {
    fn from(u: &User) -> Self {
        Self {
            id: u.id.to_string(),
            full_name: u.full_name.as_str().to_owned(),
            username: u.username.as_str().to_owned(),
            gender: u.gender.map(|g| g.as_str()),
            avatar: u.avatar.shown_for(&u.id).as_str().to_owned(),
            created_at: timestamp(&u.created_at),
            updated_at: timestamp(&u.updated_at),
        }
    }
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = Registered)]
pub struct RegisteredDto {
    pub new_user: UserDto,
    /// The session token (JWT), also set as the `token` cookie.
    pub token: String,
}

#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = LoggedIn)]
pub struct LoggedInDto {
    pub user: UserDto,
    /// The session token (JWT), also set as the `token` cookie.
    pub token: String,
}

/// A conversation with one page of its messages. Before the first message there is no
/// conversation yet: no `_id`, no timestamps, and `messages: []`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = Conversation)]
pub struct ConversationDto {
    #[serde(rename = "_id", skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub id: Option<String>,
    /// The two user ids.
    #[schema(min_items = 2, max_items = 2)]
    pub participants: [String; 2],
    /// Oldest first.
    pub messages: Vec<MessageDto>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, format = DateTime)]
    pub created_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, format = DateTime)]
    pub updated_at: Option<String>,
}

impl ConversationDto {
    pub fn new(view: &ConversationView, me: &UserId, other: &UserId) -> Self {
        let messages = view.messages.iter().map(|m| MessageDto::seen_by(m, me)).collect();
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
                participants: [me.to_string(), other.to_string()],
                messages,
                created_at: None,
                updated_at: None,
            },
        }
    }
}

/// One of my conversations (direct or group), with its last entry and my read state.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = ConversationSummary)]
pub struct ConversationSummaryDto {
    #[serde(rename = "_id")]
    pub id: String,
    /// `direct` or `group`.
    #[schema(schema_with = fields::conversation_kind)]
    pub kind: &'static str,
    /// Direct: the two user ids. Group: the same ids as `members` (for clients that know
    /// direct conversations only).
    #[schema(min_items = 1, max_items = 100)]
    pub participants: Vec<String>,
    /// Groups only: the group's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub name: Option<String>,
    /// Groups only: the first 100 member ids, in joining order.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, max_items = 100)]
    pub members: Option<Vec<String>>,
    pub member_count: u64,
    /// `null` before the first entry.
    pub last_message: Option<MessageDto>,
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// Entries after my read position.
    pub unread_count: u64,
    /// The message I have read up to; `null` before any.
    pub last_read_message_id: Option<String>,
    /// The `seq` of the last entry (0 before the first).
    pub last_seq: u64,
}

impl ConversationSummaryDto {
    /// `preview`: a group's members (unused for a direct conversation).
    pub fn new(s: &ConversationSummary, preview: Option<&MembersPreview>) -> Self {
        let (kind, participants, name, members, member_count) = match &s.conversation {
            Chat::Direct(c) => {
                let pair = vec![c.participants.first().to_string(), c.participants.second().to_string()];
                ("direct", pair, None, None, 2)
            }
            Chat::Group(g) => {
                let ids: Vec<String> =
                    preview.map(|p| p.members.iter().map(UserId::to_string).collect()).unwrap_or_default();
                let count = preview.map_or(ids.len() as u64, |p| p.count);
                ("group", ids.clone(), Some(g.name.to_string()), Some(ids), count)
            }
        };
        Self {
            id: s.conversation.id().to_string(),
            kind,
            participants,
            name,
            members,
            member_count,
            last_message: s.last_message.as_ref().map(|m| MessageDto::seen_by(m, &s.me.user_id)),
            updated_at: timestamp(&s.conversation.updated_at()),
            unread_count: s.unread(),
            last_read_message_id: s.me.last_read_message_id.as_ref().map(ToString::to_string),
            last_seq: s.conversation.last_seq(),
        }
    }
}

// Request bodies: every field optional so that a missing one gets a precise message rather
// than serde's; a wrong type (an object where a string belongs) is still refused by serde.
// Their schemas say what is required and what passes validation; unknown fields are ignored.

/// A new account. The original app's sign-up form also sends `confirmPassword`, which is
/// accepted and, when present, must equal `password` (400 otherwise).
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = RegisterRequest)]
pub struct RegisterRequest {
    #[schema(required = true, schema_with = fields::full_name)]
    pub full_name: Option<String>,
    #[schema(required = true, schema_with = fields::username)]
    pub username: Option<String>,
    #[schema(required = true, schema_with = fields::new_password)]
    pub password: Option<String>,
    /// Sent by the original app's sign-up form; checked when present.
    // Left out of the schema: a cross-field rule (equal to `password`) no schema can state.
    #[schema(ignore)]
    pub confirm_password: Option<String>,
    #[schema(schema_with = fields::gender_in)]
    pub gender: Option<String>,
    #[schema(schema_with = fields::avatar)]
    pub avatar: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[schema(as = LoginRequest)]
pub struct LoginRequest {
    /// Any non-empty string; an unknown or impossible name is answered like a wrong
    /// password (401), an empty one is 400.
    #[schema(required = true, nullable = false, min_length = 1)]
    pub username: Option<String>,
    #[schema(required = true, nullable = false, min_length = 1)]
    pub password: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[schema(as = SendRequest)]
pub struct SendRequest {
    #[schema(required = true, schema_with = fields::message_text)]
    pub message: Option<String>,
    /// The sender's key for this message (1–255 visible ASCII characters, e.g. a UUID): a
    /// retry with the same key returns the message stored first (200) instead of storing it
    /// again. The `Idempotency-Key` header does the same.
    #[serde(rename = "clientMessageId")]
    // Nullable: `null` is taken as no key.
    #[schema(min_length = 1, max_length = 255, pattern = "^[!-~]+$")]
    pub client_message_id: Option<String>,
    /// The id of an earlier message of the same conversation this one answers (not deleted,
    /// not a system entry): the message then carries a quote of it.
    #[serde(rename = "replyTo")]
    #[schema(schema_with = fields::id)]
    pub reply_to: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsersQuery {
    /// The start of a username, of a full name or of a word of a full name, matched
    /// case-insensitively and literally (white space around it is ignored; at most 64
    /// characters, no NUL). Searches are rate limited per user.
    #[param(schema_with = fields::search)]
    pub search: Option<String>,
    /// Users per page: default 50, at most 200 (larger values are capped, 0 counts as 1).
    #[param(schema_with = fields::page_limit)]
    pub limit: Option<u32>,
    /// The `X-Next-Cursor` of the previous page; empty or absent for the first page.
    #[param(schema_with = fields::user_cursor)]
    pub cursor: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConversationsQuery {
    /// Conversations per page: default and at most 200 (larger values are capped, 0 counts
    /// as 1).
    #[param(schema_with = fields::conversation_page_limit)]
    pub limit: Option<u32>,
    /// The `X-Next-Cursor` of the previous page; empty or absent for the first page.
    #[param(schema_with = fields::conversation_cursor)]
    pub cursor: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Messages per page: default 50, at most 200 (larger values are capped, 0 counts as 1).
    #[param(schema_with = fields::page_limit)]
    pub limit: Option<u32>,
    /// A message id: only messages older than it (empty or absent: the newest).
    #[param(schema_with = fields::message_id_or_empty)]
    pub before: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SyncQuery {
    /// The last cursor the client processed (a `newMessage` or `conversationRead` event's, or
    /// a previous page's `nextCursor`); empty or absent: from the start.
    #[param(schema_with = fields::sync_cursor_or_empty)]
    pub since: Option<String>,
    /// Messages per page: default 50, at most 200 (larger values are capped, 0 counts as 1).
    #[param(schema_with = fields::page_limit)]
    pub limit: Option<u32>,
}

/// One page of what the caller missed: the messages of their stream and groups, and the
/// other deliveries of their stream (reads on their devices).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyncPageDto {
    /// Messages (direct, group, system entries) after `since`, each with its `cursor`, oldest
    /// first.
    pub messages: Vec<MessageDto>,
    /// The other deliveries after `since`, in stream order, each with its `cursor` in `data`.
    pub events: Vec<SyncEventDto>,
    /// The cursor to sync from next: the one after the last delivery, or `since` when there
    /// is none.
    pub next_cursor: String,
    /// Whether more was already stored after this page.
    pub has_more: bool,
}

/// A delivery of the stream other than a message, as the real-time event of the same name.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SyncEvent)]
pub struct SyncEventDto {
    /// `conversationRead`: my read position in a conversation moved (on some device);
    /// `messageUpdated`: a message was edited, deleted or reacted to.
    #[schema(value_type = String, example = "conversationRead")]
    pub event: &'static str,
    pub data: SyncEventData,
}

/// The data of a [`SyncEventDto`], as the real-time event of its name carries it.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum SyncEventData {
    Read(ConversationReadDto),
    Updated(Box<MessageUpdatedDto>),
}

impl SyncPageDto {
    /// The page as `reader` sees it (whether they reacted).
    pub fn new(page: &SyncPage, reader: &UserId) -> Self {
        let (mut messages, mut events) = (Vec::new(), Vec::new());
        for item in &page.items {
            match &item.event {
                SyncEvent::Message(message) => messages.push(MessageDto::at(message, reader, &item.cursor)),
                SyncEvent::Read { conversation, seq, up_to } => events.push(SyncEventDto {
                    event: names::CONVERSATION_READ,
                    data: SyncEventData::Read(ConversationReadDto {
                        conversation_id: conversation.to_string(),
                        up_to: up_to.to_string(),
                        seq: *seq,
                        cursor: Some(item.cursor.to_string()),
                    }),
                }),
                SyncEvent::Updated(update) => events.push(SyncEventDto {
                    event: names::MESSAGE_UPDATED,
                    data: SyncEventData::Updated(Box::new(MessageUpdatedDto::at(
                        update,
                        reader,
                        &item.cursor,
                    ))),
                }),
            }
        }
        Self { messages, events, next_cursor: page.next.to_string(), has_more: page.has_more }
    }
}

#[derive(Deserialize)]
pub struct TokenQuery {
    pub token: Option<String>,
}
