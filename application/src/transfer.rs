//! Moving a deployment's data between stores: export every user, conversation and message
//! through the ports, and import them into another store with ids, hashes and timestamps
//! intact. Works between any two backends because it only speaks the ports.
//!
//! A dump is data from outside: a password hash that is no bcrypt hash, or one so costly
//! that a login would tie up a core, is refused with its user, and so are that user's
//! conversations and messages (they could not be stored without the user anyway).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use domain::{Chat, Conversation, Message, ParticipantPair, User, UserId, Username};

use crate::ports::{
    Appended, ConversationRepository, MessageRepository, RepoError, UserQuery, UserRepository,
};

/// One exported record.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    User(User),
    Conversation(Conversation),
    Message(Message),
}

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("storage failed while {context}")]
    Storage {
        context: &'static str,
        #[source]
        source: RepoError,
    },
    #[error("the sink refused a record")]
    Sink(#[source] anyhow::Error),
    /// The target already holds a different conversation for the same pair of users.
    #[error("conversation {imported} clashes with existing conversation {existing} of the same users")]
    ConversationClash { imported: String, existing: String },
}

/// What an import did: records stored, records already present (skipped, so an import
/// can be re-run after an interruption), and records refused.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TransferStats {
    pub users: u64,
    pub conversations: u64,
    pub messages: u64,
    pub skipped: u64,
    /// Users not imported, by id, with why.
    pub rejected_users: BTreeMap<UserId, RejectedUser>,
    /// Conversations and messages not imported because one of their users was rejected.
    pub rejected_with_users: u64,
}

/// A user an import refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedUser {
    pub username: Username,
    pub reason: String,
}

pub struct TransferService {
    users: Arc<dyn UserRepository>,
    conversations: Arc<dyn ConversationRepository>,
    messages: Arc<dyn MessageRepository>,
    /// The highest bcrypt cost an imported hash may have.
    max_hash_cost: u32,
}

/// How far above the configured `auth.bcrypt_cost` an imported hash may be: each step
/// doubles the work of a login, so 2 allows 4 times the configured cost (a deployment that
/// lowered its cost keeps its users), not an account whose login takes minutes.
pub const HASH_COST_MARGIN: u32 = 2;

const PAGE: u32 = 200;

fn storage(context: &'static str) -> impl FnOnce(RepoError) -> TransferError {
    move |source| TransferError::Storage { context, source }
}

impl TransferService {
    /// `hash_cost` is the cost new hashes get (`auth.bcrypt_cost`); imported ones may be up
    /// to [`HASH_COST_MARGIN`] above it.
    pub fn new(
        users: Arc<dyn UserRepository>,
        conversations: Arc<dyn ConversationRepository>,
        messages: Arc<dyn MessageRepository>,
        hash_cost: u32,
    ) -> Self {
        Self { users, conversations, messages, max_hash_cost: hash_cost.saturating_add(HASH_COST_MARGIN) }
    }

    /// Hands every record to `sink`: all users, then each conversation followed by its
    /// messages (newest page first; order in the stream carries no meaning, ids do).
    pub async fn export(
        &self,
        sink: &mut (dyn FnMut(Record) -> anyhow::Result<()> + Send),
    ) -> Result<TransferStats, TransferError> {
        let mut stats = TransferStats::default();
        let mut user_ids = Vec::new();
        let mut after_username = None;
        // An id no stored user has: the listing excludes nobody.
        let nobody = UserId::generate();
        loop {
            let query = UserQuery {
                exclude: nobody.clone(),
                search: None,
                after_username: after_username.clone(),
                limit: PAGE,
            };
            let page = self.users.list(&query).await.map_err(storage("listing users"))?;
            let full = page.len() == PAGE as usize;
            after_username = page.last().map(|u| u.username.normalized());
            for user in page {
                user_ids.push(user.id.clone());
                sink(Record::User(user)).map_err(TransferError::Sink)?;
                stats.users += 1;
            }
            if !full {
                break;
            }
        }

        let mut seen = HashSet::new();
        for user in &user_ids {
            let summaries =
                self.conversations.list_for_user(user).await.map_err(storage("listing conversations"))?;
            for summary in summaries {
                // Groups are not carried by a dump yet: direct conversations only.
                let Chat::Direct(conversation) = summary.conversation else {
                    continue;
                };
                if !seen.insert(conversation.id.clone()) {
                    continue;
                }
                let id = conversation.id.clone();
                sink(Record::Conversation(conversation)).map_err(TransferError::Sink)?;
                stats.conversations += 1;
                let mut before = None;
                loop {
                    let page = self
                        .messages
                        .list_by_conversation(&id, 0, before.clone(), PAGE)
                        .await
                        .map_err(storage("listing messages"))?;
                    let full = page.len() == PAGE as usize;
                    before = page.first().map(|m| m.id.clone());
                    for message in page {
                        sink(Record::Message(message)).map_err(TransferError::Sink)?;
                        stats.messages += 1;
                    }
                    if !full {
                        break;
                    }
                }
            }
        }
        Ok(stats)
    }

    /// Stores one record as it is. A record already present is counted as skipped; users must
    /// come before their conversations, and conversations before their messages. A user with
    /// an unusable password hash is not stored but listed in `stats.rejected_users`, and the
    /// records of a rejected user are counted in `stats.rejected_with_users`.
    pub async fn import(&self, record: Record, stats: &mut TransferStats) -> Result<(), TransferError> {
        let of_rejected = |ids: [&UserId; 2]| ids.iter().any(|id| stats.rejected_users.contains_key(id));
        let with_rejected = match &record {
            Record::User(_) => false,
            Record::Conversation(c) => of_rejected([c.participants.first(), c.participants.second()]),
            Record::Message(m) => match &m.receiver_id {
                Some(receiver) => of_rejected([&m.sender_id, receiver]),
                None => of_rejected([&m.sender_id, &m.sender_id]),
            },
        };
        if with_rejected {
            stats.rejected_with_users += 1;
            return Ok(());
        }
        let stored = match record {
            Record::User(user) => {
                if let Err(reason) = self.check_hash(&user) {
                    stats.rejected_users.insert(user.id, RejectedUser { username: user.username, reason });
                    return Ok(());
                }
                let stored = self.users.insert(&user).await;
                skip_conflict(stored, &mut stats.users, &mut stats.skipped, "importing a user")?;
                return Ok(());
            }
            Record::Conversation(conversation) => {
                let existing = self
                    .conversations
                    .find_or_insert(&conversation)
                    .await
                    .map_err(storage("importing a conversation"))?;
                if existing.id != conversation.id {
                    return Err(TransferError::ConversationClash {
                        imported: conversation.id.to_string(),
                        existing: existing.id.to_string(),
                    });
                }
                stats.conversations += 1;
                return Ok(());
            }
            // Each message takes the next position in both participants' streams of the
            // target store, in import order: cursors are per store.
            Record::Message(message) => match self.append_imported(&message).await {
                Ok(Appended::Created(_)) => Ok(()),
                Ok(Appended::Existing(_)) => Err(RepoError::Conflict),
                Err(error) => Err(error),
            },
        };
        skip_conflict(stored, &mut stats.messages, &mut stats.skipped, "importing a message")
    }

    /// Why `user`'s password hash can't be imported, if it can't.
    fn check_hash(&self, user: &User) -> Result<(), String> {
        let cost = user.password_hash.bcrypt_cost().map_err(|e| format!("password hash {e}"))?;
        if cost > self.max_hash_cost {
            return Err(format!(
                "password hash has cost {cost}, above {} (auth.bcrypt_cost + {HASH_COST_MARGIN})",
                self.max_hash_cost
            ));
        }
        Ok(())
    }

    async fn append_imported(&self, message: &Message) -> Result<Appended, RepoError> {
        let receiver = message.receiver_id.clone().ok_or_else(|| {
            RepoError::Unexpected(anyhow::anyhow!(
                "message {}: a group message in a dump of direct ones",
                message.id
            ))
        })?;
        let pair = ParticipantPair::new(message.sender_id.clone(), receiver)
            .map_err(|e| RepoError::Unexpected(anyhow::anyhow!("message {}: {e}", message.id)))?;
        // The conversation was imported before its messages; this stands in for it only if
        // the dump lacks it.
        let conversation = Conversation {
            id: message.conversation_id.clone(),
            participants: pair,
            created_at: message.created_at,
            updated_at: message.created_at,
            last_seq: 0,
        };
        self.messages.append(&conversation, message).await
    }
}

fn skip_conflict(
    result: Result<(), RepoError>,
    stored: &mut u64,
    skipped: &mut u64,
    context: &'static str,
) -> Result<(), TransferError> {
    match result {
        Ok(()) => *stored += 1,
        Err(RepoError::Conflict) => *skipped += 1,
        Err(source) => return Err(TransferError::Storage { context, source }),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{
        ConversationSummary, MockConversationRepository, MockMessageRepository, MockUserRepository,
    };
    use chrono::Utc;
    use domain::{
        Avatar, ConversationId, FullName, Group, GroupName, Member, MessageBody, MessageId, ParticipantPair,
        PasswordHash, Role, Username,
    };

    /// Salt and hash of a bcrypt string, after `$2b$<cost>$`.
    const HASH_BODY: &str = "N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy";

    fn user(name: &str) -> User {
        let username = Username::parse(name).unwrap();
        let id = UserId::generate();
        User {
            avatar: Avatar::default_for(&id),
            id,
            full_name: FullName::parse(name).unwrap(),
            username,
            gender: None,
            password_hash: PasswordHash::new(format!("$2b$04${HASH_BODY}")),
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    fn message(conversation: &ConversationId, from: &User, to: &User) -> Message {
        Message {
            id: MessageId::generate(),
            conversation_id: conversation.clone(),
            sender_id: from.id.clone(),
            receiver_id: Some(to.id.clone()),
            body: MessageBody::parse("hello").unwrap(),
            system: None,
            seq: 1,
            created_at: Utc::now(),
            client_id: None,
        }
    }

    #[tokio::test]
    async fn export_emits_every_user_each_conversation_once_and_all_messages() {
        let (alice, bob) = (user("alice"), user("bob"));
        let conversation =
            Conversation::start(ParticipantPair::new(alice.id.clone(), bob.id.clone()).unwrap(), Utc::now());
        let sent = message(&conversation.id, &alice, &bob);

        let mut users = MockUserRepository::new();
        let listed = vec![alice.clone(), bob.clone()];
        users.expect_list().times(1).returning(move |_| Ok(listed.clone()));
        let mut conversations = MockConversationRepository::new();
        let me = Member::joining(alice.id.clone(), Role::Member, Utc::now(), 1);
        let summary = ConversationSummary {
            conversation: Chat::Direct(conversation.clone()),
            last_message: None,
            me: me.clone(),
        };
        // Groups are not carried by a dump yet: skipped.
        let group = ConversationSummary {
            conversation: Chat::Group(Group {
                id: ConversationId::generate(),
                name: GroupName::parse("team").unwrap(),
                created_by: alice.id.clone(),
                created_at: Utc::now(),
                updated_at: Utc::now(),
                last_seq: 1,
            }),
            last_message: None,
            me,
        };
        conversations
            .expect_list_for_user()
            .times(2)
            .returning(move |_| Ok(vec![group.clone(), summary.clone()]));
        let mut messages = MockMessageRepository::new();
        let page = vec![sent.clone()];
        let direct = conversation.id.clone();
        messages
            .expect_list_by_conversation()
            .withf(move |id, from_seq, _, _| *id == direct && *from_seq == 0)
            .times(1)
            .returning(move |_, _, _, _| Ok(page.clone()));

        let service = TransferService::new(Arc::new(users), Arc::new(conversations), Arc::new(messages), 10);
        let mut records = Vec::new();
        let stats = service
            .export(&mut |r| {
                records.push(r);
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(stats, TransferStats { users: 2, conversations: 1, messages: 1, ..Default::default() });
        assert_eq!(
            records,
            vec![
                Record::User(alice),
                Record::User(bob),
                Record::Conversation(conversation),
                Record::Message(sent)
            ]
        );
    }

    #[tokio::test]
    async fn import_counts_existing_records_as_skipped() {
        let mut users = MockUserRepository::new();
        users.expect_insert().times(1).returning(|_| Err(RepoError::Conflict));
        let mut messages = MockMessageRepository::new();
        messages.expect_append().times(1).returning(|_, m| {
            Ok(Appended::Created(crate::ports::StoredMessage {
                message: m.clone(),
                sender_cursor: domain::Cursor::START.next(),
                receiver_cursor: domain::Cursor::START.next(),
            }))
        });
        let service = TransferService::new(
            Arc::new(users),
            Arc::new(MockConversationRepository::new()),
            Arc::new(messages),
            10,
        );
        let (alice, bob) = (user("alice"), user("bob"));
        let mut stats = TransferStats::default();
        service.import(Record::User(alice.clone()), &mut stats).await.unwrap();
        let m = message(&ConversationId::generate(), &alice, &bob);
        service.import(Record::Message(m), &mut stats).await.unwrap();
        assert_eq!(stats, TransferStats { messages: 1, skipped: 1, ..Default::default() });
    }

    #[tokio::test]
    async fn import_refuses_a_second_conversation_for_the_same_pair() {
        let (alice, bob) = (user("alice"), user("bob"));
        let pair = ParticipantPair::new(alice.id.clone(), bob.id.clone()).unwrap();
        let existing = Conversation::start(pair.clone(), Utc::now());
        let imported = Conversation::start(pair, Utc::now());
        let mut conversations = MockConversationRepository::new();
        conversations.expect_find_or_insert().returning(move |_| Ok(existing.clone()));
        let service = TransferService::new(
            Arc::new(MockUserRepository::new()),
            Arc::new(conversations),
            Arc::new(MockMessageRepository::new()),
            10,
        );
        let err =
            service.import(Record::Conversation(imported), &mut TransferStats::default()).await.unwrap_err();
        assert!(matches!(err, TransferError::ConversationClash { .. }));
    }
    #[tokio::test]
    async fn import_rejects_unusable_hashes_with_the_records_of_their_users() {
        let mut users = MockUserRepository::new();
        // Only the user with a usable hash reaches the store.
        users.expect_insert().times(1).returning(|_| Ok(()));
        let mut conversations = MockConversationRepository::new();
        conversations.expect_find_or_insert().never();
        let mut messages = MockMessageRepository::new();
        messages.expect_append().never();
        let service = TransferService::new(Arc::new(users), Arc::new(conversations), Arc::new(messages), 10);

        let good = User { password_hash: PasswordHash::new(format!("$2y$12${HASH_BODY}")), ..user("good") };
        let malformed = User { password_hash: PasswordHash::new("not-a-hash".into()), ..user("malformed") };
        let costly =
            User { password_hash: PasswordHash::new(format!("$2b$13${HASH_BODY}")), ..user("costly") };
        let mut stats = TransferStats::default();
        for record in
            [Record::User(good.clone()), Record::User(malformed.clone()), Record::User(costly.clone())]
        {
            service.import(record, &mut stats).await.unwrap();
        }
        let pair = ParticipantPair::new(good.id.clone(), malformed.id.clone()).unwrap();
        let conversation = Conversation::start(pair, Utc::now());
        service.import(Record::Conversation(conversation.clone()), &mut stats).await.unwrap();
        let m = message(&conversation.id, &good, &costly);
        service.import(Record::Message(m), &mut stats).await.unwrap();

        assert_eq!((stats.users, stats.conversations, stats.messages, stats.skipped), (1, 0, 0, 0));
        assert_eq!(stats.rejected_with_users, 2);
        let rejected: Vec<(&UserId, &str)> =
            stats.rejected_users.iter().map(|(id, r)| (id, r.username.as_str())).collect();
        let mut expected = vec![(&malformed.id, "malformed"), (&costly.id, "costly")];
        expected.sort();
        assert_eq!(rejected, expected);
        assert!(stats.rejected_users[&malformed.id].reason.contains("not a bcrypt hash"));
        assert!(stats.rejected_users[&costly.id].reason.contains("cost 13, above 12"));
    }
}
