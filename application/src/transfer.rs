//! Moving a deployment's data between stores: export every user, conversation (direct and
//! group), entry and membership through the ports, and import them into another store with
//! ids, hashes, timestamps, seqs, roles and read positions intact. Works between any two
//! backends because it only speaks the ports.
//!
//! A group is imported by replaying its history: its entries are stored again in seq order
//! through the calls that stored them first ([`GroupRepository::create`] for the creation,
//! [`GroupRepository::change`] for each system entry, [`MessageRepository::append_to_group`]
//! for each message, [`MessageChangeRepository::change`] for each change entry), so the target
//! builds the members, roles, membership version and its users' stream notices by its own
//! rules, and every entry gets the seq it had. Read positions follow
//! ([`MessageRepository::mark_read`], for direct conversations too), and the group as stored is
//! then compared with the dump: an import that would not reproduce a group stops with an error
//! naming it.
//!
//! Message changes move the same way, in direct conversations and groups: every change entry
//! (an edit, a deletion, a reaction added or taken back) is exported at its seq and replayed
//! at it by its actor at its time, so reactions, `editedAt`, tombstones and unread counts come
//! out as they were. Earlier texts are not kept (docs/MESSAGE_CHANGES.md §5), so an edited
//! message is stored with a stand-in text that each edit but its last replaces with another,
//! and its last edit puts back its current text; a deleted message is stored with a stand-in
//! that its deletion replays away. A message names the message it replies to by id. An export
//! reads a conversation's change entries before its messages, to know which edit is a message's
//! last; a change made while an export runs may be missing from it (export a quiet store).
//!
//! A dump is data from outside: a password hash that is no bcrypt hash, or one so costly
//! that a login would tie up a core, is refused with its user, and so are that user's
//! direct conversations and messages and every group that names the user (they could not be
//! stored without the user anyway).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use domain::{
    Change, ChangeKind, Chat, Conversation, ConversationId, EditWindow, Group, Member, Message, MessageBody,
    MessageChange, MessageId, ParticipantPair, QuoteText, ReplyQuote, Role, Seq, SystemEvent, User, UserId,
    Username,
};

use crate::ports::{
    Appended, ChangeOutcome, ChangeRequest, Changed, ConversationRepository, GroupAppended, GroupChange,
    GroupEntry, GroupRepository, MessageChangeRepository, MessageRepository, ReadMoved, RepoError, UserQuery,
    UserRepository,
};

/// One exported record.
// Records pass one at a time, from the store to a line: a large variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    User(User),
    /// A direct conversation; its messages and then its two members follow it.
    Conversation(Conversation),
    /// A group; its entries (in seq order) and then its members follow it.
    Group(ExportedGroup),
    /// A direct message, or an entry of a group (`receiver_id` is `None`).
    Message(ExportedMessage),
    /// A change entry of a conversation of either kind, at its seq among the entries.
    Change(MessageChange),
    /// A member of a conversation of either kind, with their role and read position.
    Member {
        conversation: ConversationId,
        member: Member,
    },
}

/// A message or system entry as it stands, with what an import needs to store it so that
/// the change entries after it apply as they did.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportedMessage {
    /// The entry with its current text in `body` ([`MessageBody::withdrawn`] once deleted),
    /// and neither `reply_to` nor `changed`: the reply is named below, and what became of the
    /// message is in the change entries that follow it.
    pub message: Message,
    /// The message it replies to.
    pub reply_to: Option<MessageId>,
    /// Deleted by one of the dump's change entries: its text is gone.
    pub deleted: bool,
    /// The seq of its last edit among the dump's change entries, when it has one and is not
    /// deleted: that edit gives it its current text back.
    pub last_edit: Option<Seq>,
}

impl ExportedMessage {
    /// A message that no change entry of the dump edits or deletes.
    pub fn unchanged(message: Message) -> Self {
        Self { message, reply_to: None, deleted: false, last_edit: None }
    }
}

/// A group as it stands, with its membership version and every user its members and history
/// name — so that an import can refuse a group of a refused user before storing any of it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportedGroup {
    pub group: Group,
    pub version: u64,
    pub users: BTreeSet<UserId>,
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
    /// A conversation's records do not fit together, or do not fit what the target holds:
    /// nothing more of the dump is imported.
    #[error("conversation {conversation}: {problem}")]
    Inconsistent { conversation: String, problem: String },
}

/// What an export wrote or an import did: records stored, records already present (skipped,
/// so an import can be re-run after an interruption), and records refused.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TransferStats {
    pub users: u64,
    /// Direct conversations.
    pub conversations: u64,
    pub groups: u64,
    /// Entries of every kind: direct messages, group messages, system entries and change
    /// entries.
    pub messages: u64,
    /// Of those, change entries (edits, deletions, reactions added and taken back).
    pub changes: u64,
    /// Memberships (of both kinds) with their read positions.
    pub members: u64,
    pub skipped: u64,
    /// Users not imported, by id, with why.
    pub rejected_users: BTreeMap<UserId, RejectedUser>,
    /// Records not imported because one of their users was rejected.
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
    groups: Arc<dyn GroupRepository>,
    changes: Arc<dyn MessageChangeRepository>,
    /// The highest bcrypt cost an imported hash may have.
    max_hash_cost: u32,
}

/// How far above the configured `auth.bcrypt_cost` an imported hash may be: each step
/// doubles the work of a login, so 2 allows 4 times the configured cost (a deployment that
/// lowered its cost keeps its users), not an account whose login takes minutes.
pub const HASH_COST_MARGIN: u32 = 2;

const PAGE: u32 = 200;

/// Where an export hands its records.
pub type Sink<'a> = dyn FnMut(Record) -> anyhow::Result<()> + Send + 'a;

fn storage(context: &'static str) -> impl FnOnce(RepoError) -> TransferError {
    move |source| TransferError::Storage { context, source }
}

fn inconsistent(conversation: &ConversationId, problem: impl Into<String>) -> TransferError {
    TransferError::Inconsistent { conversation: conversation.to_string(), problem: problem.into() }
}

impl TransferService {
    /// `hash_cost` is the cost new hashes get (`auth.bcrypt_cost`); imported ones may be up
    /// to [`HASH_COST_MARGIN`] above it.
    pub fn new(
        users: Arc<dyn UserRepository>,
        conversations: Arc<dyn ConversationRepository>,
        messages: Arc<dyn MessageRepository>,
        groups: Arc<dyn GroupRepository>,
        changes: Arc<dyn MessageChangeRepository>,
        hash_cost: u32,
    ) -> Self {
        Self {
            users,
            conversations,
            messages,
            groups,
            changes,
            max_hash_cost: hash_cost.saturating_add(HASH_COST_MARGIN),
        }
    }

    /// Hands every record to `sink`: all users, then each conversation (direct or group,
    /// each once) followed by its entries (messages, system entries and change entries) in
    /// seq order and then its members. A group no
    /// one is a member of any more is not exported: no one can see it.
    pub async fn export(&self, sink: &mut Sink<'_>) -> Result<TransferStats, TransferError> {
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
                if !seen.insert(summary.conversation.id().clone()) {
                    continue;
                }
                match summary.conversation {
                    Chat::Direct(conversation) => self.export_direct(conversation, sink, &mut stats).await?,
                    Chat::Group(group) => self.export_group(&group.id, sink, &mut stats).await?,
                }
            }
        }
        Ok(stats)
    }

    async fn export_direct(
        &self,
        conversation: Conversation,
        sink: &mut Sink<'_>,
        stats: &mut TransferStats,
    ) -> Result<(), TransferError> {
        let (id, last_seq) = (conversation.id.clone(), conversation.last_seq);
        let users = [conversation.participants.first().clone(), conversation.participants.second().clone()];
        let mut fates = Fates::default();
        self.each_entry(&id, last_seq, |entry| {
            fates.note(&entry);
            Ok(())
        })
        .await?;
        sink(Record::Conversation(conversation)).map_err(TransferError::Sink)?;
        stats.conversations += 1;
        self.each_entry(&id, last_seq, |entry| emit(entry, &fates, sink, stats)).await?;
        for user in users {
            let member =
                self.conversations.member(&id, &user).await.map_err(storage("reading a membership"))?;
            if let Some(member) = member {
                sink(Record::Member { conversation: id.clone(), member }).map_err(TransferError::Sink)?;
                stats.members += 1;
            }
        }
        Ok(())
    }

    async fn export_group(
        &self,
        id: &ConversationId,
        sink: &mut Sink<'_>,
        stats: &mut TransferStats,
    ) -> Result<(), TransferError> {
        // The group, its members and the seq its entries are read up to, as of one moment.
        let Some(state) = self.groups.state(id).await.map_err(storage("reading a group"))? else {
            return Ok(());
        };
        let last_seq = state.group.last_seq;
        let mut users: BTreeSet<UserId> = state.members.iter().map(|m| m.user_id.clone()).collect();
        users.insert(state.group.created_by.clone());
        let mut fates = Fates::default();
        self.each_entry(id, last_seq, |entry| {
            fates.note(&entry);
            match entry {
                GroupEntry::Message(message) => {
                    users.extend(message.system.as_ref().map(named_users).unwrap_or_default());
                    users.insert(message.sender_id);
                }
                GroupEntry::Update(update) => {
                    users.insert(update.change.actor);
                }
            }
            Ok(())
        })
        .await?;
        sink(Record::Group(ExportedGroup { group: state.group, version: state.version, users }))
            .map_err(TransferError::Sink)?;
        stats.groups += 1;
        self.each_entry(id, last_seq, |entry| emit(entry, &fates, sink, stats)).await?;
        let mut members = state.members;
        members.sort_by(|x, y| (x.joined_seq, &x.user_id).cmp(&(y.joined_seq, &y.user_id)));
        for member in members {
            sink(Record::Member { conversation: id.clone(), member }).map_err(TransferError::Sink)?;
            stats.members += 1;
        }
        Ok(())
    }

    /// Hands each entry (message or change) of the conversation up to `last_seq` to `each`,
    /// in seq order.
    async fn each_entry(
        &self,
        conversation: &ConversationId,
        last_seq: Seq,
        mut each: impl FnMut(GroupEntry) -> Result<(), TransferError> + Send,
    ) -> Result<(), TransferError> {
        let mut after = 0;
        while after < last_seq {
            let page = self
                .messages
                .entries(conversation, after, Some(last_seq), PAGE)
                .await
                .map_err(storage("listing entries"))?;
            if page.is_empty() {
                return Err(inconsistent(
                    conversation,
                    format!("its entries stop at seq {after} of {last_seq} in the source"),
                ));
            }
            for entry in page {
                after = entry.seq();
                each(entry)?;
            }
        }
        Ok(())
    }

    /// An import: hand it the records in dump order ([`Import::record`]), then
    /// [`Import::finish`] it.
    pub fn importer(&self) -> Import<'_> {
        Import {
            service: self,
            stats: TransferStats::default(),
            open: None,
            unnumbered: Vec::new(),
            refused: HashSet::new(),
            direct: None,
            waiting: HashMap::new(),
        }
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
}

/// Every user a system entry names.
fn named_users(event: &SystemEvent) -> Vec<UserId> {
    let mut users = vec![event.actor().clone()];
    match event {
        SystemEvent::Created { members, .. } => users.extend(members.iter().cloned()),
        SystemEvent::Added { users: named, .. } | SystemEvent::Removed { users: named, .. } => {
            users.extend(named.iter().cloned());
        }
        SystemEvent::Left { new_owner, .. } => users.extend(new_owner.iter().cloned()),
        SystemEvent::RoleChanged { user, .. } | SystemEvent::OwnershipTransferred { user, .. } => {
            users.push(user.clone());
        }
        SystemEvent::Renamed { .. } => {}
    }
    users
}

/// What an import must know of a conversation's change entries when it stores a message:
/// which edit is the message's last (the one that gives it its current text back).
#[derive(Default)]
struct Fates {
    last_edit: HashMap<MessageId, Seq>,
}

impl Fates {
    fn note(&mut self, entry: &GroupEntry) {
        if let GroupEntry::Update(update) = entry {
            if update.change.kind == ChangeKind::Edited {
                self.last_edit.insert(update.change.message_id.clone(), update.change.seq);
            }
        }
    }

    /// The message `message` (as it stands now) as the dump gives it.
    fn exported(&self, message: Message) -> ExportedMessage {
        // A deletion cannot be undone, so a message deleted now was deleted by one of the
        // dump's change entries — or, in a store changed while it was exported, after them:
        // its text is gone either way, and the import says its deletion is missing.
        let deleted = message.text().is_none();
        let body = message.text().cloned().unwrap_or_else(MessageBody::withdrawn);
        ExportedMessage {
            reply_to: message.reply_to.as_ref().map(|quote| quote.message_id.clone()),
            last_edit: self.last_edit.get(&message.id).copied().filter(|_| !deleted),
            deleted,
            message: Message { body, reply_to: None, changed: None, ..message },
        }
    }
}

/// Hands the entry to `sink` as its record.
fn emit(
    entry: GroupEntry,
    fates: &Fates,
    sink: &mut Sink<'_>,
    stats: &mut TransferStats,
) -> Result<(), TransferError> {
    let record = match entry {
        GroupEntry::Message(message) => Record::Message(fates.exported(message)),
        GroupEntry::Update(update) => {
            stats.changes += 1;
            Record::Change(update.change)
        }
    };
    sink(record).map_err(TransferError::Sink)?;
    stats.messages += 1;
    Ok(())
}

/// The change the system entry `entry` records, as the group use cases make it (new members
/// join as members; a departing owner hands over to `new_owner`; a hand-over makes the old
/// owner an admin); `None` for a group's creation, which [`GroupRepository::create`] stores.
fn replayed_change(expected_version: u64, entry: &Message, event: &SystemEvent) -> Option<GroupChange> {
    let mut change = GroupChange {
        expected_version,
        entry: entry.clone(),
        rename: None,
        add: Vec::new(),
        remove: Vec::new(),
        roles: Vec::new(),
    };
    match event {
        SystemEvent::Created { .. } => return None,
        SystemEvent::Added { users, .. } => {
            change.add = users.iter().map(|user| (user.clone(), Role::Member)).collect();
        }
        SystemEvent::Removed { users, .. } => change.remove.clone_from(users),
        SystemEvent::Left { actor, new_owner } => {
            change.remove = vec![actor.clone()];
            change.roles = new_owner.iter().map(|owner| (owner.clone(), Role::Owner)).collect();
        }
        SystemEvent::Renamed { name, .. } => change.rename = Some(name.clone()),
        SystemEvent::RoleChanged { user, role, .. } => change.roles = vec![(user.clone(), *role)],
        SystemEvent::OwnershipTransferred { actor, user } => {
            change.roles = vec![(user.clone(), Role::Owner), (actor.clone(), Role::Admin)];
        }
    }
    Some(change)
}

/// An import in progress: it takes the records in dump order. Users come before everything
/// else; a direct conversation before its messages and its members; a group's entries (in seq
/// order) and members right after the group.
pub struct Import<'a> {
    service: &'a TransferService,
    stats: TransferStats,
    /// The group whose entries and members are coming in.
    open: Option<OpenGroup>,
    /// Direct conversations refused with one of their users.
    refused: HashSet<ConversationId>,
    /// Direct messages of one conversation from a dump written before seqs, which listed
    /// them a page at a time, newest page first: held (one conversation at a time) and stored
    /// in id order when the conversation's records end.
    unnumbered: Vec<Message>,
    /// The direct conversation whose messages and changes are coming in.
    direct: Option<ConversationId>,
    /// Messages of the conversation coming in that were stored with a stand-in text, until
    /// the change entry that gives them their text back or deletes them.
    waiting: HashMap<MessageId, Waiting>,
}

/// A message stored with a stand-in text, waiting for its change entries.
struct Waiting {
    conversation: ConversationId,
    /// Its edits so far in the dump.
    edits: u64,
    end: WaitingFor,
}

enum WaitingFor {
    /// Its last edit, at this seq, which puts back this text.
    LastEdit {
        seq: Seq,
        text: MessageBody,
    },
    Deletion,
}

/// The text a message is stored with until its change entries give it its text back or
/// delete it, after `edits` edits: never a text anyone sent (nor one a sender could send: it
/// has no visible character), and different from the one before, so that each replayed edit
/// is a change and takes its seq.
fn stand_in(edits: u64) -> MessageBody {
    let text = MessageBody::WITHDRAWN.repeat(if edits.is_multiple_of(2) { 1 } else { 2 });
    // One or two invisible separators: 1–5000 characters, no NUL.
    MessageBody::stored(&text).expect("a stand-in is a stored text")
}

/// The quote a message is stored with to name the message it replies to: the stores keep only
/// its `message_id`, and make the sender and text shown of the original when they read it.
fn reply_naming(original: MessageId, replying: &Message) -> ReplyQuote {
    ReplyQuote {
        message_id: original,
        sender_id: replying.sender_id.clone(),
        text: QuoteText::Excerpt { text: String::new(), truncated: false },
    }
}

/// A group being imported.
struct OpenGroup {
    dumped: ExportedGroup,
    /// Refused with one of its users: its records are counted, not stored.
    refused: bool,
    /// The group's last seq and membership version in the target, as the import moves them.
    last_seq: Seq,
    version: u64,
    /// Whether this import stored entries of it: then the result is compared with the dump.
    stored: bool,
    /// The dumped members seen so far.
    members: Vec<Member>,
}

impl Import<'_> {
    /// What the import did so far.
    pub fn stats(&self) -> &TransferStats {
        &self.stats
    }

    /// Stores one record as it is. A record already present is counted as skipped. A user
    /// with an unusable password hash is not stored but listed in `stats.rejected_users`, and
    /// the records of a rejected user are counted in `stats.rejected_with_users`.
    pub async fn record(&mut self, record: Record) -> Result<(), TransferError> {
        let record = match record {
            Record::Message(ExportedMessage { message, .. })
                if message.seq == 0 && message.receiver_id.is_some() =>
            {
                let other = self.unnumbered.first().map(|m| &m.conversation_id);
                if other.is_some_and(|other| *other != message.conversation_id) {
                    self.store_unnumbered().await?;
                }
                self.close_group().await?;
                self.unnumbered.push(message);
                return Ok(());
            }
            record => record,
        };
        self.store_unnumbered().await?;
        let open = self.open.as_ref().map(|open| &open.dumped.group.id);
        let of_open = match &record {
            Record::Message(m) => m.message.receiver_id.is_none() && Some(&m.message.conversation_id) == open,
            Record::Change(change) => Some(&change.conversation_id) == open,
            Record::Member { conversation, .. } => Some(conversation) == open,
            _ => false,
        };
        if !of_open {
            self.close_group().await?;
        }
        if matches!(record, Record::User(_) | Record::Conversation(_) | Record::Group(_)) {
            self.check_waiting()?;
        }
        match record {
            Record::User(user) => self.user(user).await,
            Record::Conversation(conversation) => self.conversation(conversation).await,
            Record::Group(group) => self.group(group).await,
            Record::Message(message) => match message.message.receiver_id.clone() {
                None => self.group_entry(message).await,
                Some(receiver) => self.direct_message(message, receiver).await,
            },
            Record::Change(change) => self.change(change, of_open).await,
            Record::Member { member, .. } if of_open => self.group_member(member).await,
            Record::Member { conversation, member } => self.direct_member(&conversation, member).await,
        }
    }

    /// Ends the import (checking the last group): what it did.
    pub async fn finish(mut self) -> Result<TransferStats, TransferError> {
        self.store_unnumbered().await?;
        self.close_group().await?;
        self.check_waiting()?;
        Ok(self.stats)
    }

    /// Stores the messages of a conversation from a dump written before seqs, in id order
    /// (the order they were sent in), so they get their seqs in that order; and, as for a
    /// store upgraded in place, what was there before read positions counts as read.
    async fn store_unnumbered(&mut self) -> Result<(), TransferError> {
        let mut messages = std::mem::take(&mut self.unnumbered);
        messages.sort_by(|x, y| x.id.cmp(&y.id));
        let Some(last) = messages.last().cloned() else { return Ok(()) };
        for message in messages {
            let Some(receiver) = message.receiver_id.clone() else { continue };
            self.direct_message(ExportedMessage::unchanged(message), receiver).await?;
        }
        let users: Vec<&UserId> = [&last.sender_id].into_iter().chain(&last.receiver_id).collect();
        if users.iter().any(|user| self.rejected(user)) {
            return Ok(());
        }
        for user in users {
            let moved = self.service.messages.mark_read(&last.conversation_id, user, &last.id).await;
            // Not to be found in the conversation only if the pair's conversation in the
            // target has another id than the dump's: the read state stays as the messages
            // left it.
            moved.map_err(storage("marking imported messages read"))?;
        }
        Ok(())
    }

    fn rejected(&self, user: &UserId) -> bool {
        self.stats.rejected_users.contains_key(user)
    }

    async fn user(&mut self, user: User) -> Result<(), TransferError> {
        if let Err(reason) = self.service.check_hash(&user) {
            self.stats.rejected_users.insert(user.id, RejectedUser { username: user.username, reason });
            return Ok(());
        }
        let stored = self.service.users.insert(&user).await;
        skip_conflict(stored, &mut self.stats.users, &mut self.stats.skipped, "importing a user")
    }

    async fn conversation(&mut self, conversation: Conversation) -> Result<(), TransferError> {
        if self.rejected(conversation.participants.first())
            || self.rejected(conversation.participants.second())
        {
            self.refused.insert(conversation.id);
            self.stats.rejected_with_users += 1;
            return Ok(());
        }
        let existing = self
            .service
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
        self.direct = Some(conversation.id);
        self.stats.conversations += 1;
        Ok(())
    }

    /// Each message takes the conversation's next seq — the one it had, when the target's
    /// conversation holds nothing else — and the next position in both participants' streams
    /// of the target store, in import order: cursors are per store.
    async fn direct_message(
        &mut self,
        message: ExportedMessage,
        receiver: UserId,
    ) -> Result<(), TransferError> {
        if self.rejected(&message.message.sender_id) || self.rejected(&receiver) {
            self.stats.rejected_with_users += 1;
            return Ok(());
        }
        let message = self.stored_form(message);
        self.direct = Some(message.conversation_id.clone());
        let pair = ParticipantPair::new(message.sender_id.clone(), receiver)
            .map_err(|e| inconsistent(&message.conversation_id, format!("message {}: {e}", message.id)))?;
        // The conversation was imported before its messages; this stands in for it only if
        // the dump lacks it.
        let conversation = Conversation {
            id: message.conversation_id.clone(),
            participants: pair,
            created_at: message.created_at,
            updated_at: message.created_at,
            last_seq: 0,
        };
        let stored = match self.service.messages.append(&conversation, &message).await {
            Ok(Appended::Created(_)) => Ok(()),
            Ok(Appended::Existing(_)) => Err(RepoError::Conflict),
            Err(error) => Err(error),
        };
        skip_conflict(stored, &mut self.stats.messages, &mut self.stats.skipped, "importing a message")
    }

    /// Moves the member's read position in the target to the entry they had read.
    async fn direct_member(
        &mut self,
        conversation: &ConversationId,
        member: Member,
    ) -> Result<(), TransferError> {
        if self.refused.contains(conversation) || self.rejected(&member.user_id) {
            self.stats.rejected_with_users += 1;
            return Ok(());
        }
        if let Some(up_to) = &member.last_read_message_id {
            let moved = self
                .service
                .messages
                .mark_read(conversation, &member.user_id, up_to)
                .await
                .map_err(storage("importing a read position"))?;
            match moved {
                ReadMoved::Moved { .. } | ReadMoved::NotAhead { .. } => {}
                ReadMoved::NotMember => {
                    return Err(inconsistent(conversation, format!("{} is no member of it", member.user_id)))
                }
                ReadMoved::UnknownMessage => {
                    return Err(inconsistent(
                        conversation,
                        format!("{} read up to {up_to}, which it does not hold", member.user_id),
                    ))
                }
            }
        }
        self.stats.members += 1;
        Ok(())
    }

    async fn group(&mut self, dumped: ExportedGroup) -> Result<(), TransferError> {
        let refused = std::iter::once(&dumped.group.created_by)
            .chain(&dumped.users)
            .any(|user| self.stats.rejected_users.contains_key(user));
        let (last_seq, version) = if refused {
            self.stats.rejected_with_users += 1;
            (0, 0)
        } else {
            let state =
                self.service.groups.state(&dumped.group.id).await.map_err(storage("reading a group"))?;
            let (last_seq, version) = state.map_or((0, 0), |s| (s.group.last_seq, s.version));
            if last_seq >= dumped.group.last_seq {
                self.stats.skipped += 1;
            } else {
                self.stats.groups += 1;
            }
            (last_seq, version)
        };
        self.open =
            Some(OpenGroup { dumped, refused, last_seq, version, stored: false, members: Vec::new() });
        Ok(())
    }

    /// Stores the group's next entry the way it was stored first.
    async fn group_entry(&mut self, entry: ExportedMessage) -> Result<(), TransferError> {
        let service = self.service;
        let conversation = &entry.message.conversation_id;
        match &self.open {
            Some(open) if open.dumped.group.id == *conversation => {
                if open.refused {
                    self.stats.rejected_with_users += 1;
                    return Ok(());
                }
            }
            _ => {
                return Err(inconsistent(
                    conversation,
                    format!("entry {} comes without the group before it", entry.message.id),
                ))
            }
        }
        let entry = self.stored_form(entry);
        let Some(open) = self.open.as_mut() else { return Ok(()) };
        let id = &open.dumped.group.id;
        if entry.seq == 0 {
            return Err(inconsistent(id, format!("entry {} has no seq", entry.id)));
        }
        if entry.seq <= open.last_seq {
            // Stored by an earlier run of the import: the same entry, or a clash.
            let stored = service
                .messages
                .entries(id, entry.seq - 1, Some(entry.seq), 1)
                .await
                .map_err(storage("reading a group's entries"))?;
            let stored_id = match stored.first() {
                Some(GroupEntry::Message(message)) => Some(&message.id),
                _ => None,
            };
            if stored_id != Some(&entry.id) {
                return Err(inconsistent(
                    id,
                    format!("the target holds another entry than {} at seq {}", entry.id, entry.seq),
                ));
            }
            self.stats.skipped += 1;
            return Ok(());
        }
        if entry.seq != open.last_seq + 1 {
            return Err(inconsistent(
                id,
                format!(
                    "entry {} at seq {} follows seq {}: entries are missing",
                    entry.id, entry.seq, open.last_seq
                ),
            ));
        }
        let (seq, version) = match (&entry.system, entry.seq) {
            (Some(SystemEvent::Created { actor, name, members }), 1) => {
                let group = Group {
                    name: name.clone(),
                    updated_at: open.dumped.group.created_at,
                    last_seq: 1,
                    ..open.dumped.group.clone()
                };
                let members: Vec<Member> = members
                    .iter()
                    .map(|user| {
                        // As the group use cases make them: the creator owns the group and
                        // has read its first entry. The first members joined when the group
                        // was made (its entry is timed a moment later).
                        let creator = user == actor;
                        let role = if creator { Role::Owner } else { Role::Member };
                        Member {
                            read_seq: u64::from(creator),
                            last_read_message_id: creator.then(|| entry.id.clone()),
                            ..Member::joining(user.clone(), role, group.created_at, 1)
                        }
                    })
                    .collect();
                service.groups.create(&group, &members, &entry).await.map_err(|e| match e {
                    RepoError::Conflict => {
                        inconsistent(id, "the target holds a conversation or entry with its id")
                    }
                    source => TransferError::Storage { context: "importing a group", source },
                })?;
                (1, 1)
            }
            (Some(event), seq) if seq > 1 => {
                let Some(change) = replayed_change(open.version, &entry, event) else {
                    return Err(inconsistent(
                        id,
                        format!("entry {} creates it again at seq {seq}", entry.id),
                    ));
                };
                let changed = service.groups.change(id, &change).await.map_err(|e| match e {
                    RepoError::Conflict => inconsistent(
                        id,
                        format!("entry {} does not apply: a conflict in the target", entry.id),
                    ),
                    source => TransferError::Storage { context: "importing a group entry", source },
                })?;
                match changed {
                    Changed::Applied { entry, version, .. } => (entry.seq, version),
                    Changed::Stale => {
                        return Err(inconsistent(id, "it changed in the target while being imported"))
                    }
                }
            }
            (None, seq) if seq > 1 => {
                let appended = service.messages.append_to_group(&entry).await.map_err(|e| match e {
                    RepoError::Conflict => {
                        inconsistent(id, format!("the target holds another entry with the id {}", entry.id))
                    }
                    source => TransferError::Storage { context: "importing a group entry", source },
                })?;
                match appended {
                    GroupAppended::Created { message, version } => (message.seq, version),
                    GroupAppended::Existing(earlier) => {
                        return Err(inconsistent(
                            id,
                            format!("entry {} reuses the client id of entry {}", entry.id, earlier.id),
                        ))
                    }
                    GroupAppended::NotMember => {
                        return Err(inconsistent(
                            id,
                            format!("{} sent entry {} at seq {seq} as no member", entry.sender_id, entry.id),
                        ))
                    }
                }
            }
            _ => return Err(inconsistent(id, format!("entry {} at seq 1 is not its creation", entry.id))),
        };
        if seq != entry.seq {
            return Err(inconsistent(
                id,
                format!("entry {} took seq {seq} instead of {}", entry.id, entry.seq),
            ));
        }
        open.last_seq = seq;
        open.version = version;
        open.stored = true;
        self.stats.messages += 1;
        Ok(())
    }

    /// The message to store for `exported`: with the message it replies to, and with a
    /// stand-in text when change entries of the dump edit or delete it (it then waits for
    /// them).
    fn stored_form(&mut self, exported: ExportedMessage) -> Message {
        let ExportedMessage { mut message, reply_to, deleted, last_edit } = exported;
        message.reply_to = reply_to.map(|original| reply_naming(original, &message));
        let end = match (deleted, last_edit) {
            (true, _) => Some(WaitingFor::Deletion),
            (false, Some(seq)) => Some(WaitingFor::LastEdit { seq, text: message.body.clone() }),
            (false, None) => None,
        };
        if let Some(end) = end {
            message.body = stand_in(0);
            let waiting = Waiting { conversation: message.conversation_id.clone(), edits: 0, end };
            self.waiting.insert(message.id.clone(), waiting);
        }
        message
    }

    /// Ends the records of a conversation: every message stored with a stand-in has had the
    /// change entry that gives it its text back or deletes it.
    fn check_waiting(&mut self) -> Result<(), TransferError> {
        let Some((id, waiting)) = self.waiting.iter().next() else { return Ok(()) };
        let problem = match &waiting.end {
            WaitingFor::LastEdit { seq, .. } => format!("message {id} has no edit at seq {seq}"),
            WaitingFor::Deletion => format!("message {id} is deleted, and the dump has no deletion of it"),
        };
        Err(inconsistent(&waiting.conversation, problem))
    }

    /// The change to ask for to replay `change` (counting an edit of a waiting message even
    /// when it is stored already, so that the stand-ins come out the same in a re-run).
    fn replayed(&mut self, change: &MessageChange) -> Result<Change, TransferError> {
        let message = &change.message_id;
        let waiting = self.waiting.get_mut(message);
        let unexpected = |what: &str| {
            inconsistent(
                &change.conversation_id,
                format!("the change at seq {} {what} message {message}", change.seq),
            )
        };
        Ok(match (&change.kind, waiting) {
            (ChangeKind::ReactionAdded { emoji }, _) => Change::React(emoji.clone()),
            (ChangeKind::ReactionRemoved { emoji }, _) => Change::Unreact(emoji.clone()),
            (ChangeKind::Deleted, Some(Waiting { end: WaitingFor::Deletion, .. })) => {
                self.waiting.remove(message);
                Change::Delete
            }
            (ChangeKind::Deleted, _) => return Err(unexpected("deletes the undeleted")),
            (ChangeKind::Edited, None) => return Err(unexpected("edits the unedited")),
            (ChangeKind::Edited, Some(waiting)) => {
                waiting.edits += 1;
                match &waiting.end {
                    WaitingFor::LastEdit { seq, text } if *seq == change.seq => {
                        let text = text.clone();
                        self.waiting.remove(message);
                        Change::Edit(text)
                    }
                    _ => Change::Edit(stand_in(waiting.edits)),
                }
            }
        })
    }

    /// The entry the target holds at `seq` of the conversation, if any.
    async fn stored_at(
        &self,
        conversation: &ConversationId,
        seq: Seq,
    ) -> Result<Option<GroupEntry>, TransferError> {
        let stored = self
            .service
            .messages
            .entries(conversation, seq - 1, Some(seq), 1)
            .await
            .map_err(storage("reading a conversation's entries"))?;
        Ok(stored.into_iter().next().filter(|entry| entry.seq() == seq))
    }

    /// Replays the change entry of the open group (`in_group`) or of the direct conversation
    /// coming in: its actor makes the change again at its time, and it must take its seq. One
    /// the target holds already (an earlier run of the import) is skipped.
    async fn change(&mut self, change: MessageChange, in_group: bool) -> Result<(), TransferError> {
        let id = change.conversation_id.clone();
        let refused = match &self.open {
            Some(open) if in_group => open.refused,
            _ if self.refused.contains(&id) => true,
            _ if self.direct.as_ref() == Some(&id) => false,
            _ => {
                return Err(inconsistent(
                    &id,
                    format!("the change at seq {} comes without its conversation before it", change.seq),
                ))
            }
        };
        if refused || self.rejected(&change.actor) {
            self.stats.rejected_with_users += 1;
            return Ok(());
        }
        if change.seq == 0 {
            return Err(inconsistent(&id, format!("a change of message {} has no seq", change.message_id)));
        }
        let requested = self.replayed(&change)?;
        let stored_up_to = self.open.as_ref().filter(|_| in_group).map(|open| open.last_seq);
        let present = match stored_up_to {
            Some(last) if change.seq > last + 1 => {
                return Err(inconsistent(
                    &id,
                    format!("the change at seq {} follows seq {last}: entries are missing", change.seq),
                ))
            }
            Some(last) if change.seq == last + 1 => None,
            // Stored by an earlier run of the import: the same change, or a clash.
            _ => self.stored_at(&id, change.seq).await?,
        };
        if let Some(present) = present {
            let same = match &present {
                GroupEntry::Update(update) => {
                    update.change.message_id == change.message_id && update.change.kind == change.kind
                }
                GroupEntry::Message(_) => false,
            };
            if !same {
                return Err(inconsistent(
                    &id,
                    format!("the target holds another entry than the change at seq {}", change.seq),
                ));
            }
            self.stats.skipped += 1;
            return Ok(());
        }
        if stored_up_to.is_some_and(|last| change.seq <= last) {
            return Err(inconsistent(&id, format!("the target holds no entry at seq {}", change.seq)));
        }
        let request = ChangeRequest {
            conversation: id.clone(),
            message: change.message_id.clone(),
            actor: change.actor.clone(),
            change: requested,
            at: change.at,
            window: EditWindow::forever(),
        };
        let outcome = self.service.changes.change(&request).await.map_err(storage("importing a change"))?;
        let (seq, message) = (change.seq, &change.message_id);
        let stored = match outcome {
            ChangeOutcome::Changed(stored) => stored.update.change.seq,
            ChangeOutcome::Unchanged(_) => {
                return Err(inconsistent(
                    &id,
                    format!("the change at seq {seq} leaves message {message} as it was"),
                ))
            }
            ChangeOutcome::NotMember => {
                return Err(inconsistent(
                    &id,
                    format!("{} changed message {message} at seq {seq} as no member", change.actor),
                ))
            }
            ChangeOutcome::NotFound => {
                return Err(inconsistent(&id, format!("the change at seq {seq} finds no message {message}")))
            }
            ChangeOutcome::Refused(why) => {
                return Err(inconsistent(
                    &id,
                    format!("the change at seq {seq} of message {message} is refused: {why}"),
                ))
            }
        };
        if stored != seq {
            return Err(inconsistent(&id, format!("the change at seq {seq} took seq {stored}")));
        }
        if let Some(open) = self.open.as_mut().filter(|_| in_group) {
            open.last_seq = seq;
            open.stored = true;
        }
        self.stats.messages += 1;
        self.stats.changes += 1;
        Ok(())
    }

    /// Moves the member's read position to the one in the dump; the membership itself came
    /// with the entries, and is compared with the dump when the group ends.
    async fn group_member(&mut self, member: Member) -> Result<(), TransferError> {
        let service = self.service;
        let Some(open) = self.open.as_mut() else { return Ok(()) };
        let id = &open.dumped.group.id;
        if open.refused {
            self.stats.rejected_with_users += 1;
            return Ok(());
        }
        if let Some(up_to) = &member.last_read_message_id {
            let moved = service
                .messages
                .mark_read(id, &member.user_id, up_to)
                .await
                .map_err(storage("importing a read position"))?;
            let applies = matches!(moved, ReadMoved::Moved { .. } | ReadMoved::NotAhead { .. });
            if !applies && !open.stored {
                // A group imported before, which has moved on since.
                self.stats.skipped += 1;
                return Ok(());
            }
            if !applies {
                return Err(inconsistent(
                    id,
                    format!("{} cannot have read up to {up_to} ({moved:?})", member.user_id),
                ));
            }
        }
        open.members.push(member);
        self.stats.members += 1;
        Ok(())
    }

    /// Ends the open group's records: compares the group this import stored with the dump.
    async fn close_group(&mut self) -> Result<(), TransferError> {
        let Some(open) = self.open.take() else { return Ok(()) };
        if open.refused || !open.stored {
            return Ok(());
        }
        let dumped = &open.dumped;
        let id = &dumped.group.id;
        let Some(state) = self.service.groups.state(id).await.map_err(storage("reading a group"))? else {
            return Err(inconsistent(id, "it is gone from the target"));
        };
        if state.group != dumped.group || state.version != dumped.version {
            return Err(inconsistent(
                id,
                format!(
                    "it was stored as {:?} at version {}, not as dumped: {:?} at version {}",
                    state.group, state.version, dumped.group, dumped.version
                ),
            ));
        }
        let by_user = |members: Vec<Member>| -> BTreeMap<UserId, Member> {
            members.into_iter().map(|m| (m.user_id.clone(), m)).collect()
        };
        let (stored, expected) = (by_user(state.members), by_user(open.members));
        let differing: Vec<String> = stored
            .keys()
            .chain(expected.keys())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|user| stored.get(*user) != expected.get(*user))
            .map(ToString::to_string)
            .collect();
        if !differing.is_empty() {
            return Err(inconsistent(
                id,
                format!("its history does not give these members as dumped: {}", differing.join(", ")),
            ));
        }
        Ok(())
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
        ConversationSummary, GroupState, MockConversationRepository, MockGroupRepository,
        MockMessageChangeRepository, MockMessageRepository, MockUserRepository, StoredChange, StoredMessage,
        Update,
    };
    use chrono::Utc;
    use domain::{
        Avatar, Content, Emoji, FullName, GroupName, MessageState, PasswordHash, Reactions, Timestamp,
        Tombstone, Username,
    };
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;

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
            reply_to: None,
            changed: None,
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

    /// A group entry at `seq`: a system entry when `event` is given.
    fn entry(group: &ConversationId, from: &UserId, seq: Seq, event: Option<SystemEvent>) -> Message {
        Message {
            reply_to: None,
            changed: None,
            id: MessageId::generate(),
            conversation_id: group.clone(),
            sender_id: from.clone(),
            receiver_id: None,
            body: MessageBody::parse("entry").unwrap(),
            system: event,
            seq,
            created_at: Utc::now(),
            client_id: None,
        }
    }

    fn group(created_by: &UserId, last_seq: Seq) -> Group {
        Group {
            id: ConversationId::generate(),
            name: GroupName::parse("team").unwrap(),
            created_by: created_by.clone(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
            last_seq,
        }
    }

    fn service(
        users: MockUserRepository,
        conversations: MockConversationRepository,
        messages: MockMessageRepository,
        groups: MockGroupRepository,
    ) -> TransferService {
        with_changes(users, conversations, messages, groups, MockMessageChangeRepository::new())
    }

    fn with_changes(
        users: MockUserRepository,
        conversations: MockConversationRepository,
        messages: MockMessageRepository,
        groups: MockGroupRepository,
        changes: MockMessageChangeRepository,
    ) -> TransferService {
        TransferService::new(
            Arc::new(users),
            Arc::new(conversations),
            Arc::new(messages),
            Arc::new(groups),
            Arc::new(changes),
            10,
        )
    }

    #[tokio::test]
    async fn export_emits_every_user_each_conversation_once_with_its_entries_in_seq_order_and_members() {
        let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
        let conversation =
            Conversation::start(ParticipantPair::new(alice.id.clone(), bob.id.clone()).unwrap(), Utc::now());
        let conversation = Conversation { last_seq: 1, ..conversation };
        let sent = message(&conversation.id, &alice, &bob);
        let team = group(&alice.id, 2);
        let created = entry(
            &team.id,
            &alice.id,
            1,
            Some(SystemEvent::Created {
                actor: alice.id.clone(),
                name: team.name.clone(),
                members: vec![alice.id.clone(), bob.id.clone(), carol.id.clone()],
            }),
        );
        let removed = entry(
            &team.id,
            &alice.id,
            2,
            Some(SystemEvent::Removed { actor: alice.id.clone(), users: vec![carol.id.clone()] }),
        );
        let owner = Member::joining(alice.id.clone(), Role::Owner, Utc::now(), 1);
        let member = Member { read_seq: 0, ..Member::joining(bob.id.clone(), Role::Member, Utc::now(), 1) };

        let mut users = MockUserRepository::new();
        let listed = vec![alice.clone(), bob.clone()];
        users.expect_list().times(1).returning(move |_| Ok(listed.clone()));
        let mut conversations = MockConversationRepository::new();
        let summaries = vec![
            ConversationSummary {
                conversation: Chat::Group(team.clone()),
                last_message: None,
                me: owner.clone(),
                unread: 0,
            },
            ConversationSummary {
                conversation: Chat::Direct(conversation.clone()),
                last_message: None,
                me: owner.clone(),
                unread: 0,
            },
        ];
        conversations.expect_list_for_user().times(2).returning(move |_| Ok(summaries.clone()));
        let direct_member = |user: &User| Member {
            read_seq: 1,
            ..Member::joining(user.id.clone(), Role::Member, Utc::now(), 1)
        };
        let (alice_reads, bob_reads) = (direct_member(&alice), direct_member(&bob));
        let read = [alice_reads.clone(), bob_reads.clone()];
        conversations
            .expect_member()
            .times(2)
            .returning(move |_, user| Ok(read.iter().find(|m| &m.user_id == user).cloned()));
        let mut groups = MockGroupRepository::new();
        // Listed by both members: read once.
        let state =
            GroupState { group: team.clone(), members: vec![member.clone(), owner.clone()], version: 2 };
        groups.expect_state().times(1).returning(move |_| Ok(Some(state.clone())));
        let mut messages = MockMessageRepository::new();
        let direct_entries = vec![GroupEntry::Message(sent.clone())];
        let direct = conversation.id.clone();
        // Read once for the edits it holds, once to emit.
        messages
            .expect_entries()
            .withf(move |id, after, until, _| *id == direct && *after == 0 && *until == Some(1))
            .times(2)
            .returning(move |_, _, _, _| Ok(direct_entries.clone()));
        // Group entries in two pages: read once for the users they name and the edits they
        // hold, once to emit.
        let (first, second) =
            (vec![GroupEntry::Message(created.clone())], vec![GroupEntry::Message(removed.clone())]);
        let id = team.id.clone();
        messages
            .expect_entries()
            .withf(move |group, after, until, _| *group == id && *after == 0 && *until == Some(2))
            .times(2)
            .returning(move |_, _, _, _| Ok(first.clone()));
        let id = team.id.clone();
        messages
            .expect_entries()
            .withf(move |group, after, until, _| *group == id && *after == 1 && *until == Some(2))
            .times(2)
            .returning(move |_, _, _, _| Ok(second.clone()));

        let service = service(users, conversations, messages, groups);
        let mut records = Vec::new();
        let stats = service
            .export(&mut |r| {
                records.push(r);
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(
            stats,
            TransferStats {
                users: 2,
                conversations: 1,
                groups: 1,
                messages: 3,
                members: 4,
                ..Default::default()
            }
        );
        let named: BTreeSet<UserId> = [&alice, &bob, &carol].iter().map(|u| u.id.clone()).collect();
        assert_eq!(
            records,
            vec![
                Record::User(alice),
                Record::User(bob),
                Record::Group(ExportedGroup { group: team.clone(), version: 2, users: named }),
                Record::Message(ExportedMessage::unchanged(created)),
                Record::Message(ExportedMessage::unchanged(removed)),
                // Members in joining order (of one entry, by id).
                Record::Member {
                    conversation: team.id.clone(),
                    member: if owner.user_id < member.user_id { owner.clone() } else { member.clone() }
                },
                Record::Member {
                    conversation: team.id.clone(),
                    member: if owner.user_id < member.user_id { member } else { owner }
                },
                Record::Conversation(conversation.clone()),
                Record::Message(ExportedMessage::unchanged(sent)),
                Record::Member { conversation: conversation.id.clone(), member: alice_reads },
                Record::Member { conversation: conversation.id, member: bob_reads },
            ]
        );
    }

    #[tokio::test]
    async fn import_counts_existing_records_as_skipped() {
        let mut users = MockUserRepository::new();
        users.expect_insert().times(1).returning(|_| Err(RepoError::Conflict));
        let mut messages = MockMessageRepository::new();
        messages.expect_append().times(1).returning(|_, m| {
            Ok(Appended::Created(StoredMessage {
                message: m.clone(),
                sender_cursor: domain::Cursor::START.next(),
                receiver_cursor: domain::Cursor::START.next(),
            }))
        });
        let service = service(users, MockConversationRepository::new(), messages, MockGroupRepository::new());
        let (alice, bob) = (user("alice"), user("bob"));
        let mut import = service.importer();
        import.record(Record::User(alice.clone())).await.unwrap();
        let m = message(&ConversationId::generate(), &alice, &bob);
        import.record(Record::Message(ExportedMessage::unchanged(m))).await.unwrap();
        let stats = import.finish().await.unwrap();
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
        let service = service(
            MockUserRepository::new(),
            conversations,
            MockMessageRepository::new(),
            MockGroupRepository::new(),
        );
        let err = service.importer().record(Record::Conversation(imported)).await.unwrap_err();
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
        messages.expect_mark_read().never();
        messages.expect_append_to_group().never();
        let mut groups = MockGroupRepository::new();
        groups.expect_state().never();
        groups.expect_create().never();
        let service = service(users, conversations, messages, groups);

        let good = User { password_hash: PasswordHash::new(format!("$2y$12${HASH_BODY}")), ..user("good") };
        let malformed = User { password_hash: PasswordHash::new("not-a-hash".into()), ..user("malformed") };
        let costly =
            User { password_hash: PasswordHash::new(format!("$2b$13${HASH_BODY}")), ..user("costly") };
        let mut import = service.importer();
        for record in
            [Record::User(good.clone()), Record::User(malformed.clone()), Record::User(costly.clone())]
        {
            import.record(record).await.unwrap();
        }
        let pair = ParticipantPair::new(good.id.clone(), malformed.id.clone()).unwrap();
        let conversation = Conversation::start(pair, Utc::now());
        import.record(Record::Conversation(conversation.clone())).await.unwrap();
        let m = message(&conversation.id, &good, &costly);
        import.record(Record::Message(ExportedMessage::unchanged(m))).await.unwrap();
        // The good user's read position in the refused conversation goes with it.
        let reads = Member::joining(good.id.clone(), Role::Member, Utc::now(), 1);
        import.record(Record::Member { conversation: conversation.id.clone(), member: reads }).await.unwrap();
        // A group that names a refused user (here as a former member) goes with all its records.
        let team = group(&good.id, 2);
        let users = [good.id.clone(), costly.id.clone()].into_iter().collect();
        import.record(Record::Group(ExportedGroup { group: team.clone(), version: 2, users })).await.unwrap();
        let created = entry(
            &team.id,
            &good.id,
            1,
            Some(SystemEvent::Created {
                actor: good.id.clone(),
                name: team.name.clone(),
                members: vec![good.id.clone(), costly.id.clone()],
            }),
        );
        import.record(Record::Message(ExportedMessage::unchanged(created))).await.unwrap();
        let owner = Member::joining(good.id.clone(), Role::Owner, Utc::now(), 1);
        import.record(Record::Member { conversation: team.id.clone(), member: owner }).await.unwrap();
        let stats = import.finish().await.unwrap();

        assert_eq!((stats.users, stats.conversations, stats.messages, stats.skipped), (1, 0, 0, 0));
        assert_eq!((stats.groups, stats.members), (0, 0));
        assert_eq!(stats.rejected_with_users, 6);
        let rejected: Vec<(&UserId, &str)> =
            stats.rejected_users.iter().map(|(id, r)| (id, r.username.as_str())).collect();
        let mut expected = vec![(&malformed.id, "malformed"), (&costly.id, "costly")];
        expected.sort();
        assert_eq!(rejected, expected);
        assert!(stats.rejected_users[&malformed.id].reason.contains("not a bcrypt hash"));
        assert!(stats.rejected_users[&costly.id].reason.contains("cost 13, above 12"));
    }

    #[test]
    fn system_entries_replay_as_the_changes_the_use_cases_made() {
        let (owner, admin, member) = (UserId::generate(), UserId::generate(), UserId::generate());
        let group = ConversationId::generate();
        let replay = |event: SystemEvent| {
            let change = replayed_change(7, &entry(&group, &owner, 3, Some(event.clone())), &event).unwrap();
            assert_eq!(change.expected_version, 7);
            (change.rename, change.add, change.remove, change.roles)
        };
        let name = GroupName::parse("renamed").unwrap();
        assert_eq!(
            replay(SystemEvent::Added { actor: owner.clone(), users: vec![member.clone()] }),
            (None, vec![(member.clone(), Role::Member)], vec![], vec![])
        );
        assert_eq!(
            replay(SystemEvent::Removed { actor: owner.clone(), users: vec![member.clone()] }),
            (None, vec![], vec![member.clone()], vec![])
        );
        assert_eq!(
            replay(SystemEvent::Left { actor: owner.clone(), new_owner: Some(admin.clone()) }),
            (None, vec![], vec![owner.clone()], vec![(admin.clone(), Role::Owner)])
        );
        assert_eq!(
            replay(SystemEvent::Renamed { actor: owner.clone(), name: name.clone() }),
            (Some(name), vec![], vec![], vec![])
        );
        assert_eq!(
            replay(SystemEvent::RoleChanged {
                actor: owner.clone(),
                user: member.clone(),
                role: Role::Admin
            }),
            (None, vec![], vec![], vec![(member.clone(), Role::Admin)])
        );
        assert_eq!(
            replay(SystemEvent::OwnershipTransferred { actor: owner.clone(), user: admin.clone() }),
            (None, vec![], vec![], vec![(admin, Role::Owner), (owner.clone(), Role::Admin)])
        );
        let created = SystemEvent::Created {
            actor: owner.clone(),
            name: GroupName::parse("x").unwrap(),
            members: vec![],
        };
        assert_eq!(replayed_change(1, &entry(&group, &owner, 1, Some(created.clone())), &created), None);
    }

    /// An import of `alice`, who may own groups, into stores that know no group yet.
    async fn import_with_groups(
        groups: MockGroupRepository,
        messages: MockMessageRepository,
    ) -> (TransferService, User) {
        let mut users = MockUserRepository::new();
        users.expect_insert().returning(|_| Ok(()));
        (service(users, MockConversationRepository::new(), messages, groups), user("alice"))
    }

    #[tokio::test]
    async fn a_group_entry_out_of_place_or_after_a_gap_stops_the_import() {
        let mut groups = MockGroupRepository::new();
        groups.expect_state().returning(|_| Ok(None));
        groups.expect_create().times(1).returning(|_, _, _| Ok(Vec::new()));
        let (service, alice) = import_with_groups(groups, MockMessageRepository::new()).await;
        let team = group(&alice.id, 3);

        let mut import = service.importer();
        import.record(Record::User(alice.clone())).await.unwrap();
        let stray = entry(&team.id, &alice.id, 1, None);
        let err = import.record(Record::Message(ExportedMessage::unchanged(stray))).await.unwrap_err();
        assert!(err.to_string().contains("without the group before it"), "{err}");

        let users = [alice.id.clone()].into_iter().collect();
        import.record(Record::Group(ExportedGroup { group: team.clone(), version: 1, users })).await.unwrap();
        let not_created = entry(&team.id, &alice.id, 1, None);
        let err = import.record(Record::Message(ExportedMessage::unchanged(not_created))).await.unwrap_err();
        assert!(err.to_string().contains("at seq 1 is not its creation"), "{err}");
        let created = SystemEvent::Created {
            actor: alice.id.clone(),
            name: team.name.clone(),
            members: vec![alice.id.clone()],
        };
        import
            .record(Record::Message(ExportedMessage::unchanged(entry(&team.id, &alice.id, 1, Some(created)))))
            .await
            .unwrap();
        let after_gap = entry(&team.id, &alice.id, 3, None);
        let err = import.record(Record::Message(ExportedMessage::unchanged(after_gap))).await.unwrap_err();
        assert!(err.to_string().contains("entries are missing"), "{err}");
    }

    #[tokio::test]
    async fn a_group_whose_history_does_not_give_its_members_as_dumped_stops_the_import() {
        let alice = user("alice");
        let team = group(&alice.id, 2);
        let owner = Member::joining(alice.id.clone(), Role::Owner, team.created_at, 1);
        let bob = UserId::generate();
        let mut groups = MockGroupRepository::new();
        let mut calls = 0;
        let stored = team.clone();
        let (owner_now, bob_now) =
            (owner.clone(), Member::joining(bob.clone(), Role::Member, team.created_at, 2));
        groups.expect_state().times(2).returning(move |_| {
            calls += 1;
            // Unknown before the import; afterwards with bob as a member, not an admin.
            Ok((calls > 1).then(|| GroupState {
                group: stored.clone(),
                members: vec![owner_now.clone(), bob_now.clone()],
                version: 2,
            }))
        });
        groups
            .expect_create()
            .withf(|group, members, created| {
                group.last_seq == 1
                    && members.len() == 1
                    && members[0].role == Role::Owner
                    && created.seq == 1
            })
            .times(1)
            .returning(|_, _, _| Ok(Vec::new()));
        groups
            .expect_change()
            .withf(|_, change| change.expected_version == 1 && change.add.len() == 1)
            .times(1)
            .returning(|_, change| {
                Ok(Changed::Applied {
                    entry: Message { seq: 2, ..change.entry.clone() },
                    version: 2,
                    notices: vec![],
                })
            });
        let mut messages = MockMessageRepository::new();
        messages.expect_mark_read().returning(|_, _, _| Ok(ReadMoved::NotAhead { seq: 2 }));
        let (service, _) = import_with_groups(groups, messages).await;

        let mut import = service.importer();
        import.record(Record::User(alice.clone())).await.unwrap();
        let users = [alice.id.clone(), bob.clone()].into_iter().collect();
        import.record(Record::Group(ExportedGroup { group: team.clone(), version: 2, users })).await.unwrap();
        let created = SystemEvent::Created {
            actor: alice.id.clone(),
            name: team.name.clone(),
            members: vec![alice.id.clone()],
        };
        let created = Message { created_at: team.created_at, ..entry(&team.id, &alice.id, 1, Some(created)) };
        import.record(Record::Message(ExportedMessage::unchanged(created))).await.unwrap();
        let added = SystemEvent::Added { actor: alice.id.clone(), users: vec![bob.clone()] };
        import
            .record(Record::Message(ExportedMessage::unchanged(entry(&team.id, &alice.id, 2, Some(added)))))
            .await
            .unwrap();
        for member in [
            owner,
            Member { role: Role::Admin, ..Member::joining(bob.clone(), Role::Member, team.created_at, 2) },
        ] {
            import.record(Record::Member { conversation: team.id.clone(), member }).await.unwrap();
        }
        let err = import.finish().await.unwrap_err();
        assert!(
            matches!(&err, TransferError::Inconsistent { conversation, .. } if *conversation == team.id.to_string())
        );
        assert!(err.to_string().ends_with(&format!("does not give these members as dumped: {bob}")), "{err}");
    }

    /// The change entry of `message` at `seq`, with the message as the store reads it.
    fn update(message: &Message, actor: &UserId, kind: ChangeKind, seq: Seq) -> GroupEntry {
        let change = MessageChange {
            conversation_id: message.conversation_id.clone(),
            message_id: message.id.clone(),
            actor: actor.clone(),
            kind,
            at: Utc::now(),
            seq,
        };
        GroupEntry::Update(Update { change, message: message.clone() })
    }

    fn stored_change(request: &ChangeRequest, seq: Seq) -> ChangeOutcome {
        let change = MessageChange {
            conversation_id: request.conversation.clone(),
            message_id: request.message.clone(),
            actor: request.actor.clone(),
            kind: ChangeKind::Deleted,
            at: request.at,
            seq,
        };
        let message = entry(&request.conversation, &request.actor, 1, None);
        ChangeOutcome::Changed(StoredChange {
            update: Update { change, message },
            positions: vec![],
            version: 0,
        })
    }

    #[tokio::test]
    async fn export_gives_change_entries_at_their_seqs_and_messages_as_they_stand() {
        let (alice, bob) = (user("alice"), user("bob"));
        let conversation =
            Conversation::start(ParticipantPair::new(alice.id.clone(), bob.id.clone()).unwrap(), Utc::now());
        let conversation = Conversation { last_seq: 7, ..conversation };
        let first = message(&conversation.id, &alice, &bob);
        // Read as it stands: its current text, the quote of the message it answers, edited.
        let current = MessageBody::parse("the text now").unwrap();
        let state = MessageState {
            content: Content::Live {
                body: current.clone(),
                edited_at: Some(Utc::now()),
                reactions: Reactions::new(),
            },
            version: 6,
            ..first.state()
        };
        let reply = Message {
            seq: 2,
            reply_to: Some(ReplyQuote::of(&first, &first.content())),
            ..message(&conversation.id, &alice, &bob)
        }
        .with_state(state);
        let tombstone = Tombstone { deleted_at: Utc::now(), deleted_by: bob.id.clone() };
        let deleted = Message { seq: 3, ..message(&conversation.id, &bob, &alice) };
        let state = MessageState { content: Content::Deleted(tombstone), version: 7, ..deleted.state() };
        let deleted = deleted.with_state(state);
        let thumbs = Emoji::parse("👍").unwrap();
        let entries = vec![
            GroupEntry::Message(first.clone()),
            GroupEntry::Message(reply.clone()),
            GroupEntry::Message(deleted.clone()),
            update(&reply, &alice.id, ChangeKind::Edited, 4),
            update(&first, &bob.id, ChangeKind::ReactionAdded { emoji: thumbs.clone() }, 5),
            update(&reply, &alice.id, ChangeKind::Edited, 6),
            update(&deleted, &bob.id, ChangeKind::Deleted, 7),
        ];
        let changes: Vec<MessageChange> = entries[3..]
            .iter()
            .map(|e| match e {
                GroupEntry::Update(u) => u.change.clone(),
                GroupEntry::Message(_) => unreachable!("changes only"),
            })
            .collect();

        let mut users = MockUserRepository::new();
        let listed = vec![alice.clone()];
        users.expect_list().returning(move |_| Ok(listed.clone()));
        let mut conversations = MockConversationRepository::new();
        let summary = ConversationSummary {
            conversation: Chat::Direct(conversation.clone()),
            last_message: None,
            me: Member::joining(alice.id.clone(), Role::Member, Utc::now(), 1),
            unread: 0,
        };
        conversations.expect_list_for_user().returning(move |_| Ok(vec![summary.clone()]));
        conversations.expect_member().returning(|_, _| Ok(None));
        let mut messages = MockMessageRepository::new();
        messages
            .expect_entries()
            .withf(|_, after, until, _| *after == 0 && *until == Some(7))
            .times(2)
            .returning(move |_, _, _, _| Ok(entries.clone()));
        let service = service(users, conversations, messages, MockGroupRepository::new());
        let mut records = Vec::new();
        let stats = service
            .export(&mut |r| {
                records.push(r);
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!((stats.messages, stats.changes), (7, 4));

        let plain = |message: &Message, body: MessageBody| Message {
            body,
            reply_to: None,
            changed: None,
            ..message.clone()
        };
        let mut expected = vec![
            Record::User(alice.clone()),
            Record::Conversation(conversation),
            Record::Message(ExportedMessage::unchanged(first.clone())),
            Record::Message(ExportedMessage {
                message: plain(&reply, current),
                reply_to: Some(first.id.clone()),
                deleted: false,
                last_edit: Some(6),
            }),
            Record::Message(ExportedMessage {
                message: plain(&deleted, MessageBody::withdrawn()),
                reply_to: None,
                deleted: true,
                last_edit: None,
            }),
        ];
        expected.extend(changes.into_iter().map(Record::Change));
        assert_eq!(records, expected);
    }

    type Kept<T> = Arc<Mutex<Vec<T>>>;

    /// A direct import into an empty store, where each entry takes the next seq, that keeps
    /// the messages it stores and the changes it asks for.
    fn recording_import() -> (TransferService, Kept<Message>, Kept<ChangeRequest>) {
        let last_seq = Arc::new(AtomicU64::new(0));
        let (appended, requested) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
        let mut conversations = MockConversationRepository::new();
        conversations.expect_find_or_insert().returning(|c| Ok(c.clone()));
        let mut messages = MockMessageRepository::new();
        let (seqs, kept) = (last_seq.clone(), appended.clone());
        messages.expect_append().returning(move |_, m| {
            let message = Message { seq: seqs.fetch_add(1, Ordering::SeqCst) + 1, ..m.clone() };
            kept.lock().unwrap().push(message.clone());
            Ok(Appended::Created(StoredMessage {
                message,
                sender_cursor: domain::Cursor::START.next(),
                receiver_cursor: domain::Cursor::START.next(),
            }))
        });
        // Nothing stored before this import.
        messages.expect_entries().returning(|_, _, _, _| Ok(Vec::new()));
        let mut changes = MockMessageChangeRepository::new();
        let kept = requested.clone();
        changes.expect_change().returning(move |request| {
            kept.lock().unwrap().push(request.clone());
            Ok(stored_change(request, last_seq.fetch_add(1, Ordering::SeqCst) + 1))
        });
        let mut users = MockUserRepository::new();
        users.expect_insert().returning(|_| Ok(()));
        let service = with_changes(users, conversations, messages, MockGroupRepository::new(), changes);
        (service, appended, requested)
    }

    #[tokio::test]
    async fn import_stores_changed_messages_with_stand_ins_and_replays_every_change_at_its_seq() {
        let (service, appended, requested) = recording_import();
        let (alice, bob) = (user("alice"), user("bob"));
        let pair = ParticipantPair::new(alice.id.clone(), bob.id.clone()).unwrap();
        let conversation = Conversation::start(pair, Utc::now());
        let first = message(&conversation.id, &alice, &bob);
        let current = MessageBody::parse("the text now").unwrap();
        let edited = Message { seq: 2, body: current.clone(), ..message(&conversation.id, &alice, &bob) };
        let deleted =
            Message { seq: 3, body: MessageBody::withdrawn(), ..message(&conversation.id, &bob, &alice) };
        let thumbs = Emoji::parse("👍").unwrap();
        let change = |message: &Message, actor: &User, kind: ChangeKind, seq: Seq| {
            let GroupEntry::Update(update) = update(message, &actor.id, kind, seq) else { unreachable!() };
            update.change
        };
        let changes = [
            change(&edited, &alice, ChangeKind::Edited, 4),
            change(&first, &bob, ChangeKind::ReactionAdded { emoji: thumbs.clone() }, 5),
            change(&deleted, &bob, ChangeKind::Edited, 6),
            change(&edited, &alice, ChangeKind::Edited, 7),
            change(&first, &bob, ChangeKind::ReactionRemoved { emoji: thumbs.clone() }, 8),
            change(&edited, &alice, ChangeKind::Edited, 9),
            change(&deleted, &bob, ChangeKind::Deleted, 10),
        ];

        let mut import = service.importer();
        for u in [&alice, &bob] {
            import.record(Record::User(u.clone())).await.unwrap();
        }
        import.record(Record::Conversation(conversation.clone())).await.unwrap();
        let dumped = [
            ExportedMessage::unchanged(first.clone()),
            ExportedMessage {
                message: edited.clone(),
                reply_to: Some(first.id.clone()),
                deleted: false,
                last_edit: Some(9),
            },
            ExportedMessage { message: deleted.clone(), reply_to: None, deleted: true, last_edit: None },
        ];
        for record in
            dumped.into_iter().map(Record::Message).chain(changes.iter().cloned().map(Record::Change))
        {
            import.record(record).await.unwrap();
        }
        let stats = import.finish().await.unwrap();
        assert_eq!((stats.messages, stats.changes, stats.skipped), (10, 7, 0));

        let appended = appended.lock().unwrap().clone();
        let stored: Vec<(&MessageId, &str, Option<&MessageId>)> = appended
            .iter()
            .map(|m| (&m.id, m.body.as_str(), m.reply_to.as_ref().map(|q| &q.message_id)))
            .collect();
        let (one, two) = (MessageBody::WITHDRAWN.to_owned(), MessageBody::WITHDRAWN.repeat(2));
        assert_eq!(
            stored,
            [
                (&first.id, "hello", None),
                // Stand-ins until their changes come; the reply names what it answers.
                (&edited.id, one.as_str(), Some(&first.id)),
                (&deleted.id, one.as_str(), None),
            ]
        );
        let requested = requested.lock().unwrap().clone();
        let asked: Vec<(&MessageId, &UserId, Change, Timestamp, EditWindow)> =
            requested.iter().map(|r| (&r.message, &r.actor, r.change.clone(), r.at, r.window)).collect();
        let body = |text: &str| Change::Edit(MessageBody::stored(text).unwrap());
        let expected: Vec<(&MessageId, &UserId, Change, Timestamp, EditWindow)> = changes
            .iter()
            .zip([
                // Each edit but the last takes a stand-in unlike the text before it; the
                // last gives the message its current text.
                body(&two),
                Change::React(thumbs.clone()),
                body(&two),
                body(&one),
                Change::Unreact(thumbs),
                Change::Edit(current),
                Change::Delete,
            ])
            .map(|(c, change)| (&c.message_id, &c.actor, change, c.at, EditWindow::forever()))
            .collect();
        assert_eq!(asked, expected);
    }

    #[tokio::test]
    async fn a_change_that_takes_another_seq_or_a_missing_last_edit_stops_the_import() {
        let (service, _, _) = recording_import();
        let (alice, bob) = (user("alice"), user("bob"));
        let pair = ParticipantPair::new(alice.id.clone(), bob.id.clone()).unwrap();
        let conversation = Conversation::start(pair, Utc::now());
        let first = message(&conversation.id, &alice, &bob);
        let mut import = service.importer();
        import.record(Record::Conversation(conversation.clone())).await.unwrap();
        import.record(Record::Message(ExportedMessage::unchanged(first.clone()))).await.unwrap();
        let GroupEntry::Update(deletion) = update(&first, &bob.id, ChangeKind::Deleted, 3) else {
            unreachable!()
        };
        // A deletion of a message the dump gives as not deleted.
        let err = import.record(Record::Change(deletion.change)).await.unwrap_err();
        assert!(
            matches!(&err, TransferError::Inconsistent { conversation: c, .. } if *c == conversation.id.to_string()),
            "{err}"
        );
        assert!(err.to_string().contains("deletes the undeleted"), "{err}");

        let (service, _, _) = recording_import();
        let mut import = service.importer();
        import.record(Record::Conversation(conversation.clone())).await.unwrap();
        let edited = ExportedMessage { last_edit: Some(2), ..ExportedMessage::unchanged(first.clone()) };
        import.record(Record::Message(edited)).await.unwrap();
        let GroupEntry::Update(reacted) =
            update(&first, &bob.id, ChangeKind::ReactionAdded { emoji: Emoji::parse("🎉").unwrap() }, 3)
        else {
            unreachable!()
        };
        let err = import.record(Record::Change(reacted.change)).await.unwrap_err();
        assert!(err.to_string().contains("the change at seq 3 took seq 2"), "{err}");

        let (service, _, _) = recording_import();
        let mut import = service.importer();
        import.record(Record::Conversation(conversation.clone())).await.unwrap();
        let edited = ExportedMessage { last_edit: Some(2), ..ExportedMessage::unchanged(first) };
        import.record(Record::Message(edited)).await.unwrap();
        let err = import.finish().await.unwrap_err();
        assert!(err.to_string().ends_with("has no edit at seq 2"), "{err}");
    }

    #[tokio::test]
    async fn a_rerun_skips_the_changes_stored_and_replays_the_rest_with_the_same_stand_ins() {
        let alice = user("alice");
        let team = group(&alice.id, 5);
        let owner = Member::joining(alice.id.clone(), Role::Owner, team.created_at, 1);
        let created = SystemEvent::Created {
            actor: alice.id.clone(),
            name: team.name.clone(),
            members: vec![alice.id.clone()],
        };
        let created = entry(&team.id, &alice.id, 1, Some(created));
        let said = entry(&team.id, &alice.id, 2, None);
        let edits: Vec<GroupEntry> =
            (3..=5).map(|seq| update(&said, &alice.id, ChangeKind::Edited, seq)).collect();
        // An earlier run stored up to the first edit.
        let mut groups = MockGroupRepository::new();
        let mut reads = 0;
        let (stored, members) = (team.clone(), vec![owner.clone()]);
        groups.expect_state().times(2).returning(move |_| {
            reads += 1;
            let last_seq = if reads == 1 { 3 } else { 5 };
            let group = Group { last_seq, ..stored.clone() };
            Ok(Some(GroupState { group, members: members.clone(), version: 1 }))
        });
        let mut messages = MockMessageRepository::new();
        let held =
            [GroupEntry::Message(created.clone()), GroupEntry::Message(said.clone()), edits[0].clone()];
        messages
            .expect_entries()
            .times(3)
            .returning(move |_, after, _, _| Ok(vec![held[after as usize].clone()]));
        let mut changes = MockMessageChangeRepository::new();
        let text = MessageBody::parse("the text now").unwrap();
        // The second edit takes the stand-in it took in the first run (after the message's
        // and the first edit's), the last one the current text.
        let stand_in = MessageBody::stored(MessageBody::WITHDRAWN).unwrap();
        let mut sequence = mockall::Sequence::new();
        for (change, seq) in [(Change::Edit(stand_in), 4), (Change::Edit(text.clone()), 5)] {
            changes
                .expect_change()
                .withf(move |request| request.change == change)
                .times(1)
                .in_sequence(&mut sequence)
                .returning(move |request| Ok(stored_change(request, seq)));
        }
        let mut users = MockUserRepository::new();
        users.expect_insert().returning(|_| Err(RepoError::Conflict));
        let service = with_changes(users, MockConversationRepository::new(), messages, groups, changes);

        let mut import = service.importer();
        import.record(Record::User(alice.clone())).await.unwrap();
        let users = [alice.id.clone()].into_iter().collect();
        import.record(Record::Group(ExportedGroup { group: team.clone(), version: 1, users })).await.unwrap();
        import.record(Record::Message(ExportedMessage::unchanged(created))).await.unwrap();
        let said = ExportedMessage {
            message: Message { body: text, ..said },
            reply_to: None,
            deleted: false,
            last_edit: Some(5),
        };
        import.record(Record::Message(said)).await.unwrap();
        for change in edits {
            let GroupEntry::Update(update) = change else { unreachable!() };
            import.record(Record::Change(update.change)).await.unwrap();
        }
        import.record(Record::Member { conversation: team.id.clone(), member: owner }).await.unwrap();
        let stats = import.finish().await.unwrap();
        assert_eq!((stats.messages, stats.changes, stats.skipped), (2, 2, 1 + 3));
    }
}
