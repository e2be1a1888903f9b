//! `server export` / `server import`: the store's content as newline-delimited JSON, one
//! record per line, the same whatever the backend, so data moves between backends intact
//! (ids, password hashes, timestamps).

use std::io::{BufRead, Write};

use anyhow::Context as _;
use application::{Record, TransferService, TransferStats};
use chrono::{DateTime, SecondsFormat, Utc};
use domain::{
    Avatar, ClientMessageId, Conversation, ConversationId, FullName, Gender, Message, MessageBody, MessageId,
    ParticipantPair, PasswordHash, User, UserId, Username,
};
use serde::{Deserialize, Serialize};

use crate::Storage;

/// One line of a dump.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Line {
    #[serde(rename_all = "camelCase")]
    User {
        id: String,
        username: String,
        full_name: String,
        gender: Option<Gender>,
        avatar: String,
        password_hash: String,
        created_at: String,
        updated_at: String,
    },
    #[serde(rename_all = "camelCase")]
    Conversation { id: String, participants: [String; 2], created_at: String, updated_at: String },
    #[serde(rename_all = "camelCase")]
    Message {
        id: String,
        conversation_id: String,
        sender_id: String,
        receiver_id: String,
        message: String,
        created_at: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_message_id: Option<String>,
    },
}

fn time(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn parse_time(raw: &str) -> anyhow::Result<DateTime<Utc>> {
    Ok(DateTime::parse_from_rfc3339(raw)
        .with_context(|| format!("invalid timestamp {raw:?}"))?
        .with_timezone(&Utc))
}

impl From<Record> for Line {
    fn from(record: Record) -> Self {
        match record {
            Record::User(u) => Line::User {
                id: u.id.into(),
                username: u.username.into(),
                full_name: u.full_name.into(),
                gender: u.gender,
                avatar: u.avatar.into(),
                password_hash: u.password_hash.as_str().to_owned(),
                created_at: time(&u.created_at),
                updated_at: time(&u.updated_at),
            },
            Record::Conversation(c) => Line::Conversation {
                participants: [c.participants.first().to_string(), c.participants.second().to_string()],
                id: c.id.into(),
                created_at: time(&c.created_at),
                updated_at: time(&c.updated_at),
            },
            Record::Message(m) => Line::Message {
                id: m.id.into(),
                conversation_id: m.conversation_id.into(),
                sender_id: m.sender_id.into(),
                // Dumps carry direct conversations only (see `TransferService::export`).
                receiver_id: m.receiver_id.map(String::from).unwrap_or_default(),
                message: m.body.into(),
                created_at: time(&m.created_at),
                client_message_id: m.client_id.map(Into::into),
            },
        }
    }
}

impl TryFrom<Line> for Record {
    type Error = anyhow::Error;
    fn try_from(line: Line) -> anyhow::Result<Self> {
        Ok(match line {
            Line::User { id, username, full_name, gender, avatar, password_hash, created_at, updated_at } => {
                Record::User(User {
                    id: UserId::parse(&id).context("user id")?,
                    username: Username::parse(&username).context("username")?,
                    // Names and messages are taken under the rules they were made with.
                    full_name: FullName::stored(&full_name).context("fullName")?,
                    gender,
                    avatar: Avatar::stored(&avatar).context("avatar")?,
                    password_hash: PasswordHash::new(password_hash),
                    created_at: parse_time(&created_at)?,
                    updated_at: parse_time(&updated_at)?,
                })
            }
            Line::Conversation { id, participants: [a, b], created_at, updated_at } => {
                Record::Conversation(Conversation {
                    id: ConversationId::parse(&id).context("conversation id")?,
                    participants: ParticipantPair::new(
                        UserId::parse(&a).context("participant")?,
                        UserId::parse(&b).context("participant")?,
                    )?,
                    created_at: parse_time(&created_at)?,
                    updated_at: parse_time(&updated_at)?,
                    // The store numbers the imported messages.
                    last_seq: 0,
                })
            }
            Line::Message {
                id,
                conversation_id,
                sender_id,
                receiver_id,
                message,
                created_at,
                client_message_id,
            } => Record::Message(Message {
                id: MessageId::parse(&id).context("message id")?,
                conversation_id: ConversationId::parse(&conversation_id).context("conversationId")?,
                sender_id: UserId::parse(&sender_id).context("senderId")?,
                receiver_id: Some(UserId::parse(&receiver_id).context("receiverId")?),
                body: MessageBody::stored(&message).context("message")?,
                system: None,
                seq: 0,
                created_at: parse_time(&created_at)?,
                client_id: client_message_id
                    .map(|id| ClientMessageId::parse(&id))
                    .transpose()
                    .context("clientMessageId")?,
            }),
        })
    }
}

/// `hash_cost` is `auth.bcrypt_cost`: imported password hashes may cost a little more.
fn service(storage: &Storage, hash_cost: u32) -> TransferService {
    TransferService::new(
        storage.users.clone(),
        storage.conversations.clone(),
        storage.messages.clone(),
        hash_cost,
    )
}

/// Writes every record of `storage` to `out`, one JSON object per line.
pub async fn export(storage: &Storage, out: &mut (dyn Write + Send)) -> anyhow::Result<TransferStats> {
    // Export checks no hash: the cost limit of imports plays no part.
    let stats = service(storage, *PasswordHash::BCRYPT_COSTS.end())
        .export(&mut |record| {
            serde_json::to_writer(&mut *out, &Line::from(record))?;
            out.write_all(b"\n")?;
            Ok(())
        })
        .await?;
    out.flush()?;
    Ok(stats)
}

/// Reads a dump from `input` into `storage`. Records already present are skipped, so an
/// interrupted import can be run again. Users whose password hash is no bcrypt hash or costs
/// more than `hash_cost` (`auth.bcrypt_cost`) + 2 are refused with their conversations and
/// messages: each is named on stderr, and all are in the returned stats.
pub async fn import(storage: &Storage, hash_cost: u32, input: impl BufRead) -> anyhow::Result<TransferStats> {
    let service = service(storage, hash_cost);
    let mut stats = TransferStats::default();
    for (index, line) in input.lines().enumerate() {
        let number = index + 1;
        let line = line.with_context(|| format!("reading line {number}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: Line =
            serde_json::from_str(&line).with_context(|| format!("line {number} is not a dump record"))?;
        let record = Record::try_from(parsed).with_context(|| format!("line {number} is invalid"))?;
        let user = match &record {
            Record::User(user) => Some(user.id.clone()),
            _ => None,
        };
        service.import(record, &mut stats).await.with_context(|| format!("importing line {number}"))?;
        if let Some((id, rejected)) = user.and_then(|id| stats.rejected_users.get(&id).map(|r| (id, r))) {
            eprintln!("line {number}: user {id} ({}) not imported: {}", rejected.username, rejected.reason);
        }
    }
    Ok(stats)
}
