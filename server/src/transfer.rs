//! `server export` / `server import`: the store's content as newline-delimited JSON, one
//! record per line, the same whatever the backend, so data moves between backends intact
//! (ids, password hashes, timestamps, seqs, roles, read positions).
//!
//! The lines, in order: every `user`; then each conversation — a `conversation` (direct) or a
//! `group` — followed by its entries in seq order — `message`s (a group's system entries among
//! them) and `change`s (edits, deletions, reactions added and taken back) — and then its
//! `member`s. A message carries its current text, or `deleted` and no text; `replyTo` names the
//! message it answers; `lastEditSeq` the seq of its last edit, which gives it that text back on
//! import (earlier texts are not kept). Dumps written before groups (no `group` or `member`
//! lines, no `seq` on messages) or before message changes (no `change` lines) import as
//! before.

use std::io::{BufRead, Write};

use anyhow::Context as _;
use application::transfer::{ExportedGroup, ExportedMessage};
use application::{Record, TransferService, TransferStats};
use chrono::{DateTime, SecondsFormat, Utc};
use domain::{
    Avatar, ChangeKind, ClientMessageId, Conversation, ConversationId, Emoji, FullName, Gender, Group,
    GroupName, Member, Message, MessageBody, MessageChange, MessageId, ParticipantPair, PasswordHash, Role,
    Seq, SystemEvent, User, UserId, Username,
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
    /// A group as it stands; `users` names everyone its members and history name.
    #[serde(rename_all = "camelCase")]
    Group {
        id: String,
        name: String,
        created_by: String,
        created_at: String,
        updated_at: String,
        last_seq: Seq,
        version: u64,
        users: Vec<String>,
    },
    /// A direct message, or a group's entry (no `receiverId`; `system` in system entries).
    #[serde(rename_all = "camelCase")]
    Message {
        id: String,
        conversation_id: String,
        sender_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        receiver_id: Option<String>,
        /// The text as it stands; none once deleted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        deleted: bool,
        /// The seq of its last edit (a `change` line further on).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_edit_seq: Option<Seq>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<String>,
        created_at: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_message_id: Option<String>,
        /// Absent in dumps from before seqs: the import numbers the messages in dump order.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<Seq>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        system: Option<SystemEvent>,
    },
    /// A change entry of a conversation of either kind: `kind` is `edited`, `deleted`,
    /// `reactionAdded` or `reactionRemoved`, the last two with their `emoji`.
    #[serde(rename_all = "camelCase")]
    Change {
        conversation_id: String,
        seq: Seq,
        message_id: String,
        actor_id: String,
        kind: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        emoji: Option<String>,
        at: String,
    },
    /// A member of a conversation of either kind, with their read position.
    #[serde(rename_all = "camelCase")]
    Member {
        conversation_id: String,
        user_id: String,
        role: Role,
        joined_at: String,
        joined_seq: Seq,
        read_seq: Seq,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_read_message_id: Option<String>,
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
            Record::Group(ExportedGroup { group, version, users }) => Line::Group {
                id: group.id.into(),
                name: group.name.into(),
                created_by: group.created_by.into(),
                created_at: time(&group.created_at),
                updated_at: time(&group.updated_at),
                last_seq: group.last_seq,
                version,
                users: users.into_iter().map(String::from).collect(),
            },
            Record::Message(ExportedMessage { message: m, reply_to, deleted, last_edit }) => Line::Message {
                id: m.id.into(),
                conversation_id: m.conversation_id.into(),
                sender_id: m.sender_id.into(),
                receiver_id: m.receiver_id.map(String::from),
                // Of a deleted message, `body` holds only a stand-in: no text is written.
                message: (!deleted).then(|| m.body.into()),
                deleted,
                last_edit_seq: last_edit,
                reply_to: reply_to.map(String::from),
                created_at: time(&m.created_at),
                client_message_id: m.client_id.map(Into::into),
                seq: Some(m.seq),
                system: m.system,
            },
            Record::Change(c) => Line::Change {
                conversation_id: c.conversation_id.into(),
                seq: c.seq,
                message_id: c.message_id.into(),
                actor_id: c.actor.into(),
                kind: c.kind.as_str().to_owned(),
                emoji: c.kind.emoji().map(|emoji| emoji.as_str().to_owned()),
                at: time(&c.at),
            },
            Record::Member { conversation, member } => Line::Member {
                conversation_id: conversation.into(),
                user_id: member.user_id.into(),
                role: member.role,
                joined_at: time(&member.joined_at),
                joined_seq: member.joined_seq,
                read_seq: member.read_seq,
                last_read_message_id: member.last_read_message_id.map(String::from),
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
            Line::Group { id, name, created_by, created_at, updated_at, last_seq, version, users } => {
                Record::Group(ExportedGroup {
                    group: Group {
                        id: ConversationId::parse(&id).context("group id")?,
                        name: GroupName::stored(&name).context("name")?,
                        created_by: UserId::parse(&created_by).context("createdBy")?,
                        created_at: parse_time(&created_at)?,
                        updated_at: parse_time(&updated_at)?,
                        last_seq,
                    },
                    version,
                    users: users
                        .iter()
                        .map(|u| UserId::parse(u))
                        .collect::<Result<_, _>>()
                        .context("users")?,
                })
            }
            Line::Message {
                id,
                conversation_id,
                sender_id,
                receiver_id,
                message,
                deleted,
                last_edit_seq,
                reply_to,
                created_at,
                client_message_id,
                seq,
                system,
            } => {
                if receiver_id.is_none() && seq.is_none() {
                    anyhow::bail!("a message needs a receiverId, or a seq as a group's entry");
                }
                if receiver_id.is_some() && system.is_some() {
                    anyhow::bail!("a direct message is no system entry");
                }
                let body = match (message, deleted) {
                    (Some(text), false) => MessageBody::stored(&text).context("message")?,
                    (None, true) => MessageBody::withdrawn(),
                    (Some(_), true) => anyhow::bail!("a deleted message has no text"),
                    (None, false) => anyhow::bail!("a message needs its text, or to be deleted"),
                };
                if deleted && last_edit_seq.is_some() {
                    anyhow::bail!("a deleted message has no edit to give its text back");
                }
                if (deleted || last_edit_seq.is_some() || reply_to.is_some()) && seq.is_none() {
                    anyhow::bail!("a changed or replying message needs its seq");
                }
                Record::Message(ExportedMessage {
                    message: Message {
                        reply_to: None,
                        changed: None,
                        id: MessageId::parse(&id).context("message id")?,
                        conversation_id: ConversationId::parse(&conversation_id).context("conversationId")?,
                        sender_id: UserId::parse(&sender_id).context("senderId")?,
                        receiver_id: receiver_id
                            .map(|r| UserId::parse(&r))
                            .transpose()
                            .context("receiverId")?,
                        body,
                        system,
                        // 0: not known, in dumps from before seqs.
                        seq: seq.unwrap_or(0),
                        created_at: parse_time(&created_at)?,
                        client_id: client_message_id
                            .map(|id| ClientMessageId::parse(&id))
                            .transpose()
                            .context("clientMessageId")?,
                    },
                    reply_to: reply_to.map(|id| MessageId::parse(&id)).transpose().context("replyTo")?,
                    deleted,
                    last_edit: last_edit_seq,
                })
            }
            Line::Change { conversation_id, seq, message_id, actor_id, kind, emoji, at } => {
                let emoji = emoji.map(|e| Emoji::stored(&e)).transpose().context("emoji")?;
                let kind = match (kind.as_str(), emoji) {
                    ("edited", None) => ChangeKind::Edited,
                    ("deleted", None) => ChangeKind::Deleted,
                    ("reactionAdded", Some(emoji)) => ChangeKind::ReactionAdded { emoji },
                    ("reactionRemoved", Some(emoji)) => ChangeKind::ReactionRemoved { emoji },
                    ("edited" | "deleted", Some(_)) => anyhow::bail!("an {kind:?} change has no emoji"),
                    ("reactionAdded" | "reactionRemoved", None) => {
                        anyhow::bail!("a {kind:?} change needs its emoji")
                    }
                    _ => anyhow::bail!(
                        "unknown change kind {kind:?}: edited, deleted, reactionAdded or reactionRemoved"
                    ),
                };
                if seq == 0 {
                    anyhow::bail!("a change needs its seq");
                }
                Record::Change(MessageChange {
                    conversation_id: ConversationId::parse(&conversation_id).context("conversationId")?,
                    message_id: MessageId::parse(&message_id).context("messageId")?,
                    actor: UserId::parse(&actor_id).context("actorId")?,
                    kind,
                    at: parse_time(&at)?,
                    seq,
                })
            }
            Line::Member {
                conversation_id,
                user_id,
                role,
                joined_at,
                joined_seq,
                read_seq,
                last_read_message_id,
            } => Record::Member {
                conversation: ConversationId::parse(&conversation_id).context("conversationId")?,
                member: Member {
                    user_id: UserId::parse(&user_id).context("userId")?,
                    role,
                    joined_at: parse_time(&joined_at)?,
                    joined_seq,
                    read_seq,
                    last_read_message_id: last_read_message_id
                        .map(|id| MessageId::parse(&id))
                        .transpose()
                        .context("lastReadMessageId")?,
                },
            },
        })
    }
}

/// `hash_cost` is `auth.bcrypt_cost`: imported password hashes may cost a little more.
fn service(storage: &Storage, hash_cost: u32) -> TransferService {
    TransferService::new(
        storage.users.clone(),
        storage.conversations.clone(),
        storage.messages.clone(),
        storage.groups.clone(),
        storage.changes.clone(),
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
/// more than `hash_cost` (`auth.bcrypt_cost`) + 2 are refused with their conversations,
/// messages and groups: each is named on stderr, and all are in the returned stats.
pub async fn import(storage: &Storage, hash_cost: u32, input: impl BufRead) -> anyhow::Result<TransferStats> {
    let service = service(storage, hash_cost);
    let mut import = service.importer();
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
        import.record(record).await.with_context(|| format!("importing line {number}"))?;
        let rejected = user.and_then(|id| import.stats().rejected_users.get(&id).map(|r| (id, r)));
        if let Some((id, rejected)) = rejected {
            eprintln!("line {number}: user {id} ({}) not imported: {}", rejected.username, rejected.reason);
        }
    }
    import.finish().await.context("importing the last group")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(line: serde_json::Value) -> anyhow::Result<Record> {
        Record::try_from(serde_json::from_value::<Line>(line)?)
    }

    fn round_trip(record: Record) -> Record {
        let text = serde_json::to_string(&Line::from(record)).unwrap();
        Record::try_from(serde_json::from_str::<Line>(&text).unwrap()).unwrap()
    }

    #[test]
    fn group_entries_members_and_old_messages_read_back_as_written() {
        let (alice, bob) = (UserId::generate(), UserId::generate());
        let group = ConversationId::generate();
        let at = parse_time("2024-05-01T10:00:00.123Z").unwrap();
        let exported = Record::Group(ExportedGroup {
            group: Group {
                id: group.clone(),
                name: GroupName::parse("Team").unwrap(),
                created_by: alice.clone(),
                created_at: at,
                updated_at: at,
                last_seq: 2,
            },
            version: 2,
            users: [alice.clone(), bob.clone()].into_iter().collect(),
        });
        assert_eq!(round_trip(exported.clone()), exported);
        let entry = Record::Message(ExportedMessage::unchanged(Message {
            reply_to: None,
            changed: None,
            id: MessageId::generate(),
            conversation_id: group.clone(),
            sender_id: alice.clone(),
            receiver_id: None,
            body: MessageBody::parse("Alice added Bob").unwrap(),
            system: Some(SystemEvent::Added { actor: alice.clone(), users: vec![bob.clone()] }),
            seq: 2,
            created_at: at,
            client_id: None,
        }));
        assert_eq!(round_trip(entry.clone()), entry);
        let member = Record::Member {
            conversation: group,
            member: Member { read_seq: 1, ..Member::joining(bob.clone(), Role::Admin, at, 2) },
        };
        assert_eq!(round_trip(member.clone()), member);

        // A message line of a dump from before seqs: a direct message, seq not known (0).
        let old = record(serde_json::json!({
            "type": "message", "id": MessageId::generate().to_string(),
            "conversationId": ConversationId::generate().to_string(), "senderId": alice.to_string(),
            "receiverId": bob.to_string(), "message": "hi", "createdAt": "2024-01-01T00:00:00Z",
        }))
        .unwrap();
        let Record::Message(ExportedMessage { message: old, .. }) = old else { panic!("a message: {old:?}") };
        assert_eq!((old.receiver_id, old.seq, old.system), (Some(bob), 0, None));
    }

    #[test]
    fn a_message_line_must_say_which_conversation_kind_it_belongs_to() {
        let line = |extra: serde_json::Value| {
            let mut line = serde_json::json!({
                "type": "message", "id": MessageId::generate().to_string(),
                "conversationId": ConversationId::generate().to_string(),
                "senderId": UserId::generate().to_string(), "message": "hi",
                "createdAt": "2024-01-01T00:00:00Z",
            });
            line.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            record(line)
        };
        let error = line(serde_json::json!({})).unwrap_err();
        assert!(error.to_string().contains("needs a receiverId, or a seq"), "{error}");
        let system =
            serde_json::json!({ "action": "renamed", "actor": UserId::generate().to_string(), "name": "x" });
        let direct =
            serde_json::json!({ "receiverId": UserId::generate().to_string(), "seq": 1, "system": system });
        let error = line(direct).unwrap_err();
        assert!(error.to_string().contains("no system entry"), "{error}");
        assert!(line(serde_json::json!({ "seq": 3, "system": system })).is_ok());
    }

    #[test]
    fn changes_and_changed_messages_read_back_as_written() {
        let (alice, bob) = (UserId::generate(), UserId::generate());
        let conversation = ConversationId::generate();
        let at = parse_time("2024-05-01T10:00:00.123456Z").unwrap();
        let message = |seq: Seq, text: &str| Message {
            reply_to: None,
            changed: None,
            id: MessageId::generate(),
            conversation_id: conversation.clone(),
            sender_id: alice.clone(),
            receiver_id: Some(bob.clone()),
            body: MessageBody::parse(text).unwrap(),
            system: None,
            seq,
            created_at: at,
            client_id: None,
        };
        let first = message(1, "first");
        let edited = Record::Message(ExportedMessage {
            reply_to: Some(first.id.clone()),
            deleted: false,
            last_edit: Some(4),
            message: message(2, "the text as it stands"),
        });
        assert_eq!(round_trip(edited.clone()), edited);
        let deleted = Record::Message(ExportedMessage {
            reply_to: None,
            deleted: true,
            last_edit: None,
            message: Message { body: MessageBody::withdrawn(), ..message(3, "x") },
        });
        assert_eq!(round_trip(deleted.clone()), deleted);
        // No text at all for a deleted message: not even the stand-in its body holds.
        let line = serde_json::to_value(Line::from(deleted)).unwrap();
        assert_eq!((line.get("message"), &line["deleted"]), (None, &serde_json::json!(true)), "{line}");
        assert!(!line.to_string().contains(MessageBody::WITHDRAWN), "{line}");

        let emoji = Emoji::parse("👍").unwrap();
        for kind in [
            ChangeKind::Edited,
            ChangeKind::Deleted,
            ChangeKind::ReactionAdded { emoji: emoji.clone() },
            ChangeKind::ReactionRemoved { emoji: emoji.clone() },
        ] {
            let change = Record::Change(MessageChange {
                conversation_id: conversation.clone(),
                message_id: first.id.clone(),
                actor: bob.clone(),
                kind: kind.clone(),
                at,
                seq: 5,
            });
            assert_eq!(round_trip(change.clone()), change);
            let line = serde_json::to_value(Line::from(change)).unwrap();
            assert_eq!(
                (&line["type"], &line["kind"]),
                (&serde_json::json!("change"), &serde_json::json!(kind.as_str()))
            );
        }
    }

    #[test]
    fn a_change_or_changed_message_line_that_does_not_add_up_is_refused() {
        let id = || serde_json::json!(MessageId::generate().to_string());
        let message = |extra: serde_json::Value| {
            let mut line = serde_json::json!({
                "type": "message", "id": id(), "conversationId": ConversationId::generate().to_string(),
                "senderId": UserId::generate().to_string(), "receiverId": UserId::generate().to_string(),
                "createdAt": "2024-01-01T00:00:00Z", "seq": 2,
            });
            line.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            record(line).map_err(|e| e.to_string())
        };
        assert!(message(serde_json::json!({ "message": "hi", "replyTo": id() })).is_ok());
        assert!(message(serde_json::json!({ "deleted": true })).is_ok());
        let refused = [
            (serde_json::json!({}), "needs its text"),
            (serde_json::json!({ "message": "hi", "deleted": true }), "has no text"),
            (serde_json::json!({ "deleted": true, "lastEditSeq": 3 }), "no edit"),
            (serde_json::json!({ "message": "hi", "replyTo": "nope" }), "replyTo"),
        ];
        for (extra, expected) in refused {
            let error = message(extra.clone()).unwrap_err();
            assert!(error.contains(expected), "{extra}: {error}");
        }

        let change = |kind: &str, emoji: Option<&str>, seq: Seq| {
            record(serde_json::json!({
                "type": "change", "conversationId": ConversationId::generate().to_string(), "seq": seq,
                "messageId": id(), "actorId": UserId::generate().to_string(), "kind": kind,
                "emoji": emoji, "at": "2024-01-01T00:00:00Z",
            }))
            .map_err(|e| e.to_string())
        };
        assert!(change("reactionAdded", Some("👍"), 3).is_ok());
        let refused = [
            (change("reactionAdded", None, 3), "needs its emoji"),
            (change("edited", Some("👍"), 3), "has no emoji"),
            (change("reactionRemoved", Some("not an emoji"), 3), "emoji"),
            (change("renamed", None, 3), "unknown change kind"),
            (change("deleted", None, 0), "needs its seq"),
        ];
        for (result, expected) in refused {
            let error = result.unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
    }
}
