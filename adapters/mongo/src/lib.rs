//! Document storage on MongoDB (a replica set, a single-node one included, or Atlas),
//! through the official driver.
//!
//! Every repository port is implemented with the behaviour of the SQL store: the same
//! uniqueness rules, orderings and paging. The domain's string ids are stored as `_id`, so
//! both stores hold the same ids. Uniqueness is left to unique indexes and creation races to
//! upserts; an entry of a conversation is stored with its conversation's next seq, the
//! sender's read position and (direct messages) its positions in both users' streams in one
//! multi-document transaction (see `messages` and `groups`), which MongoDB offers on replica
//! sets and sharded clusters only: `connect` refuses a standalone server. Transactions of one
//! process that would write the same hot document (a group's, a user's stream head) take
//! turns before they start (see `turns`) rather than collide. A change of a message (an edit,
//! a deletion, a reaction) is an entry of its conversation's sequence too, stored the same way
//! (see `changes`); every read gives a message as it stands now, with the quote of the message
//! it answers (see `reading`). `bson` and driver types stay inside this crate.
//!
//! This crate implements the application's ports; it must not know about HTTP or sockets.

mod changes;
mod documents;
mod error;
mod groups;
mod messages;
mod migrations;
mod reading;
mod repositories;
mod streams;
mod turns;

use std::time::Duration;

use anyhow::Context as _;
use futures_util::future::BoxFuture;
use mongodb::bson::{doc, Document};
use mongodb::options::{Acknowledgment, ClientOptions, IndexOptions, WriteConcern};
use mongodb::{Client, ClientSession, Collection, Database, IndexModel};

pub(crate) use error::Inconsistent;

use documents::{
    ChangeDoc, ConversationDoc, MemberDoc, MessageDoc, NoticeDoc, RevokedTokenDoc, StreamHeadDoc, UserDoc,
};

/// The database used when the URL names none.
pub const DEFAULT_DATABASE: &str = "chat";

#[derive(Debug, Clone)]
pub struct MongoOptions {
    /// `mongodb://[user:password@]host[:port][,host...]/[database][?options]` or
    /// `mongodb+srv://...`; driver options come from the query string, the database from
    /// the path ([`DEFAULT_DATABASE`] when empty).
    pub url: String,
    /// How long an operation waits for a usable server before it is answered "unavailable".
    pub acquire_timeout: Duration,
}

pub struct MongoStore {
    database: Database,
    pub(crate) users: Collection<UserDoc>,
    pub(crate) conversations: Collection<ConversationDoc>,
    pub(crate) messages: Collection<MessageDoc>,
    /// The change entries of conversations (edits, deletions, reactions), by
    /// `<conversationId>:<seq>`.
    pub(crate) changes: Collection<ChangeDoc>,
    /// Who is a member of which conversation (of both kinds), with their role and read
    /// position: one document per (conversation, user).
    pub(crate) members: Collection<MemberDoc>,
    /// Each user's last stream position, by user id.
    pub(crate) heads: Collection<StreamHeadDoc>,
    /// The notices of users' streams (joined, left, read, updated), by (user, position).
    pub(crate) notices: Collection<NoticeDoc>,
    pub(crate) revoked: Collection<RevokedTokenDoc>,
    /// This process's queues on hot documents (see `turns`).
    pub(crate) turns: turns::Turns,
}

impl MongoStore {
    /// Connects, checks that the server answers and offers transactions, creates the indexes
    /// the ports rely on, gives messages stored before streams existed their positions, users
    /// and conversations stored before indexed reads their keys, and conversations stored
    /// before sequences their seqs and members (see `migrations`).
    pub async fn connect(options: &MongoOptions) -> anyhow::Result<Self> {
        // The driver's parse errors never echo the URL, which may hold a password.
        let mut client_options = ClientOptions::parse(&options.url).await.context("invalid MongoDB URL")?;
        client_options.server_selection_timeout = Some(options.acquire_timeout);
        if client_options.app_name.is_none() {
            client_options.app_name = Some("chat-server".into());
        }
        if client_options.write_concern.is_none() {
            // A stored message must survive a crash (the MessageRepository contract): wait for
            // the journal of a majority. This is the server default since MongoDB 5.0; saying
            // it keeps older servers and changed cluster defaults from weakening it.
            client_options.write_concern =
                Some(WriteConcern::builder().w(Acknowledgment::Majority).journal(true).build());
        }
        let name = client_options
            .default_database
            .clone()
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| DEFAULT_DATABASE.to_owned());
        let client = Client::with_options(client_options).context("invalid MongoDB client options")?;
        let database = client.database(&name);
        database.run_command(doc! { "ping": 1 }).await.with_context(|| {
            format!(
                "cannot reach MongoDB (database {name:?}) within {} ms",
                options.acquire_timeout.as_millis()
            )
        })?;
        let hello = match database.run_command(doc! { "hello": 1 }).await {
            Ok(hello) => hello,
            // Servers before 4.4.2 know the command by its old name.
            Err(_) => database
                .run_command(doc! { "isMaster": 1 })
                .await
                .context("cannot ask MongoDB for its topology")?,
        };
        if !supports_transactions(&hello) {
            anyhow::bail!(
                "MongoDB must run as a replica set (a single-node one is fine: start mongod with \
                 `--replSet rs0`, then run `rs.initiate()` once), because sends are stored in \
                 multi-document transactions"
            );
        }
        let store = Self {
            users: database.collection("users"),
            conversations: database.collection("conversations"),
            messages: database.collection("messages"),
            changes: database.collection("messageChanges"),
            members: database.collection("members"),
            heads: database.collection("streamHeads"),
            notices: database.collection("notices"),
            revoked: database.collection("revoked_tokens"),
            turns: turns::Turns::default(),
            database,
        };
        store.create_indexes().await.context("cannot create the MongoDB indexes")?;
        store
            .backfill_stream_positions()
            .await
            .context("cannot give the messages stored before message streams their positions")?;
        store
            .backfill_read_keys()
            .await
            .context("cannot give the users and conversations stored before indexed reads their keys")?;
        store
            .backfill_sequences()
            .await
            .context("cannot give the conversations stored before sequences their seqs and members")?;
        Ok(store)
    }

    /// Creates the indexes if missing (a no-op when they exist with the same definition).
    async fn create_indexes(&self) -> mongodb::error::Result<()> {
        self.users
            .create_indexes([
                index(doc! { "usernameLower": 1 }, "username_lower", true),
                // Searches by the start of the full name or of one of its words.
                index(doc! { "nameWords": 1 }, "name_words", false),
            ])
            .await?;
        self.conversations
            .create_indexes([
                // One direct conversation per pair: the key is the same for both orders of the
                // pair. Partial, since groups have no pair; `kind` in the keys only so that it
                // can be created while the unique index of earlier versions on `pairKey` alone
                // (dropped below) still guards the pairs.
                partial_unique(
                    doc! { "pairKey": 1, "kind": 1 },
                    "direct_pair",
                    doc! { "pairKey": { "$exists": true } },
                ),
                // A user's conversations in list order (`ConversationKey`), from any cursor on.
                index(
                    doc! { "participants": 1, "updatedAt": -1, "lastMessageId": -1, "_id": -1 },
                    "participants_recent",
                    false,
                ),
            ])
            .await?;
        // Indexes of earlier versions: the list index, a prefix of the one above, and the
        // pair index that covered every conversation (groups have no pair).
        for name in ["participants_updated_at", "pair_key"] {
            if let Err(error) = self.conversations.drop_index(name).await {
                if !is_index_not_found(&error) {
                    return Err(error);
                }
            }
        }
        self.members
            .create_indexes([
                index(doc! { "conversationId": 1, "userId": 1 }, "conversation_user", true),
                // A conversation's members in joining order.
                index(doc! { "conversationId": 1, "joinedSeq": 1, "userId": 1 }, "joining_order", false),
                // A user's conversations of one kind.
                index(doc! { "userId": 1, "kind": 1, "conversationId": 1 }, "user_conversations", false),
            ])
            .await?;
        self.notices
            .create_indexes([
                // A position of a user's stream is taken once (by a notice or a message).
                index(doc! { "userId": 1, "position": 1 }, "user_stream", true),
                // A user's notices about one conversation, in stream order.
                index(
                    doc! { "userId": 1, "conversationId": 1, "position": 1 },
                    "user_conversation_notices",
                    false,
                ),
            ])
            .await?;
        self.messages
            .create_indexes([
                index(doc! { "conversationId": 1, "_id": 1 }, "conversation_history", false),
                // Each entry takes the next seq of its conversation, once. Partial, so that
                // documents stored before sequences (without one until the backfill reaches
                // them) don't collide on a missing key.
                partial_unique(
                    doc! { "conversationId": 1, "seq": 1 },
                    "conversation_seq",
                    doc! { "seq": { "$exists": true } },
                ),
                // Each user's stream, one index per role: a position is taken once per user.
                // Partial, so that messages stored before streams existed (without positions
                // until the backfill reaches them) don't collide on a missing key.
                partial_unique(
                    doc! { "senderId": 1, "senderPosition": 1 },
                    "sender_stream",
                    doc! { "senderPosition": { "$exists": true } },
                ),
                partial_unique(
                    doc! { "receiverId": 1, "receiverPosition": 1 },
                    "receiver_stream",
                    doc! { "receiverPosition": { "$exists": true } },
                ),
                // A sender's client id names one message; sends without one are not indexed.
                partial_unique(
                    doc! { "senderId": 1, "clientMessageId": 1 },
                    "sender_client_id",
                    doc! { "clientMessageId": { "$exists": true } },
                ),
            ])
            .await?;
        self.changes
            .create_indexes([
                // A conversation's change entries by seq, each seq once (a change takes its
                // conversation's next seq like a send). Also what unread counts read: a
                // deletion's entry names the deleted message's seq, so deleted messages need
                // no index of their own (see `reading::not_unread`).
                index(doc! { "conversationId": 1, "seq": 1 }, reading::CHANGES_BY_SEQ, true),
            ])
            .await?;
        // A plain index rather than a TTL one: revocations are forgotten by `purge_expired`,
        // which reports how many it removed; a TTL monitor deleting the same documents behind
        // its back would make that count (and `is_revoked` right after expiry) differ from
        // the SQL store's.
        self.revoked.create_index(index(doc! { "expiresAt": 1 }, "expires_at", false)).await?;
        Ok(())
    }

    /// The database this store works in.
    pub fn database_name(&self) -> &str {
        self.database.name()
    }

    pub(crate) fn database(&self) -> &Database {
        &self.database
    }

    /// Runs `steps` in a transaction of a session of its own and commits. The driver runs
    /// the steps again from the start after a transient error (a write conflict with a
    /// concurrent transaction, an election), with a growing pause, and retries a commit
    /// whose outcome is unknown. Steps that end the transaction themselves (an abort when
    /// they find nothing to do) are not committed.
    pub(crate) async fn transaction<R, C, F>(&self, context: C, steps: F) -> mongodb::error::Result<R>
    where
        F: for<'b> FnMut(&'b mut ClientSession, &'b mut C) -> BoxFuture<'b, mongodb::error::Result<R>>,
    {
        let mut session = self.database.client().start_session().await?;
        session.start_transaction().and_run(context, steps).await
    }
}

/// `IndexNotFound` (27): nothing to drop.
fn is_index_not_found(error: &mongodb::error::Error) -> bool {
    matches!(error.kind.as_ref(), mongodb::error::ErrorKind::Command(e) if e.code == 27)
}

fn index(keys: Document, name: &str, unique: bool) -> IndexModel {
    let options = IndexOptions::builder().name(name.to_owned()).unique(unique.then_some(true)).build();
    IndexModel::builder().keys(keys).options(options).build()
}

fn partial_unique(keys: Document, name: &str, filter: Document) -> IndexModel {
    let options =
        IndexOptions::builder().name(name.to_owned()).unique(true).partial_filter_expression(filter).build();
    IndexModel::builder().keys(keys).options(options).build()
}

/// Whether a `hello` answer comes from a deployment with multi-document transactions: a
/// replica set member (`setName`) or a sharded cluster's router. SecantusDB, the stand-in
/// the tests run on, answers as the primary of a one-member set named `secantus`.
fn supports_transactions(hello: &Document) -> bool {
    hello.get_str("setName").is_ok() || hello.get_str("msg") == Ok("isdbgrid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_replica_sets_and_sharded_clusters_support_transactions() {
        assert!(supports_transactions(&doc! { "isWritablePrimary": true, "setName": "rs0" }));
        assert!(supports_transactions(&doc! { "isWritablePrimary": true, "msg": "isdbgrid" }));
        assert!(!supports_transactions(&doc! { "isWritablePrimary": true, "maxWireVersion": 21 }));
    }

    #[tokio::test]
    async fn an_unreachable_server_fails_connect_with_a_clear_error() {
        let options = MongoOptions {
            url: "mongodb://127.0.0.1:9/chat_unreachable?connectTimeoutMS=200".into(),
            acquire_timeout: Duration::from_millis(300),
        };
        let error = MongoStore::connect(&options).await.err().expect("nothing listens on port 9");
        assert!(error.to_string().contains("cannot reach MongoDB"), "{error:#}");
    }

    #[tokio::test]
    async fn a_malformed_url_is_refused_before_connecting() {
        let options =
            MongoOptions { url: "postgres://x/y".into(), acquire_timeout: Duration::from_millis(100) };
        let error = MongoStore::connect(&options).await.err().expect("not a MongoDB URL");
        assert!(error.to_string().contains("invalid MongoDB URL"), "{error:#}");
    }
}
