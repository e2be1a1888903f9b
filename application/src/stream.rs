//! Following everything a user sees, in order, with no gap and no repeat: their own stream
//! (direct messages, and notices about their groups and reads) and the entries of each group
//! they are a member of, from the moment they joined to the moment they left.
//!
//! Where a client stands is a [`SyncCursor`]: `P`, its position in its stream, and `V`, the
//! last entry it has had of each group it is a member of at `P`. One reader moves it forward,
//! for the HTTP sync and for every live connection alike ([`StreamReader`]):
//! 1. for each group of `V` (in id order), the entries after `V[g]`, up to the end of the
//!    membership when it has one;
//! 2. then the stream after `P`: a direct message or a read notice is delivered; a `Joined`
//!    notice adds its group to `V` (its entries are read by the next round, from the one that
//!    added the user on); a `Left` notice first has the group read up to its last visible
//!    entry, then takes the group out of `V`;
//! 3. round after round, until the page is full or nothing is left.
//!
//! Every delivery carries the cursor as it stands right after it, so that a client that
//! keeps the last one it processed resumes exactly there.
//!
//! Live events travel outside the store (this instance's registry, or Redis from another
//! instance), so they can arrive out of order, twice, or not at all. A follower keeps one
//! connection's cursor: an event right after it goes out as is, one at or before it is a
//! repeat, and one further ahead means events were overtaken or lost, so what lies in between
//! is read from the store first. That read cannot come back short: an event is announced only
//! after its entry is stored, and an entry is readable only once every earlier one of the
//! same stream or group is (see `MessageRepository::append` and `append_to_group`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use domain::{ConversationId, Cursor, Message, MessageId, Seq, SyncCursor, UserId};

use crate::ports::{
    Event, GroupEntry, GroupRepository, MessageRepository, Notice, RepoError, RepoResult, StreamEntry,
    StreamItem, Update,
};

/// Entries read from the store per round trip while catching up.
const PAGE: u32 = 200;

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error(transparent)]
    Storage(#[from] RepoError),
    /// The client resumes after a position its stream never reached: a cursor from another
    /// database (after an import) or a broken client. Following from there would drop the
    /// messages up to it, so the client must start over from `Cursor::START`.
    #[error("since {since} is beyond the end of the stream ({head})")]
    Ahead { since: Cursor, head: Cursor },
    /// The client resumes after an entry of a group that the group never reached: as for
    /// [`FollowError::Ahead`], the client must start over.
    #[error("since names seq {seq} of group {group}, beyond its last entry ({last_seq})")]
    GroupAhead { group: ConversationId, seq: Seq, last_seq: Seq },
    /// The cursor's groups are not the user's groups at its position in the stream (or a
    /// group's seq lies before the user joined it): no cursor this user was ever handed.
    #[error("since is not a valid cursor for this user")]
    InvalidCursor,
    /// The store does not (yet) hold a position an event announced: a client should
    /// reconnect and resume from its last cursor.
    #[error("stream position {announced} was announced but is not readable")]
    Unreadable { announced: Cursor },
}

/// What a delivery shows the user.
#[derive(Debug, Clone, PartialEq)]
pub enum SyncEvent {
    /// A direct message, or an entry of a group (a message or a system entry).
    Message(Message),
    /// The user (on some device) read `conversation` up to the entry `up_to`, at `seq`.
    Read { conversation: ConversationId, seq: Seq, up_to: MessageId },
    /// A message the user sees was edited, deleted or reacted to: the change, and the
    /// message as it stands (at least as new as the change).
    Updated(Update),
}

/// One delivery, with the cursor as it stands right after it.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncItem {
    pub cursor: SyncCursor,
    pub event: SyncEvent,
}

/// What to do with a live event.
#[derive(Debug, Clone, PartialEq)]
#[expect(clippy::large_enum_variant, reason = "answered once per event and consumed at once")]
pub enum Admission {
    /// Deliver the event, as this item (with the connection's cursor right after it).
    Deliver(SyncItem),
    /// Already delivered: send nothing.
    Repeat,
    /// Deliver these instead, in order (possibly none): what was missed up to and including
    /// the event's own entry, and whatever the same read found stored after it (their
    /// events are repeats then). A `Joined` or `Left` notice is applied, not delivered: what
    /// it fills is the group's entries it makes visible.
    Fill(Vec<SyncItem>),
    /// An entry of a group this connection does not see (the user is not, or no longer, a
    /// member at that entry): send nothing.
    Drop,
    /// Not an event of the stream (online users, typing, read receipts of others, group
    /// updates): send it as it is.
    Pass,
}

/// What taking one stream item did.
enum Took {
    /// Consumed: these are its deliveries (none for a `Joined` notice).
    Done(Vec<SyncItem>),
    /// A `Left` notice whose group is not read up to its last entry yet and the budget ran
    /// out: these were delivered, the notice is still to take.
    Short(Vec<SyncItem>),
}

/// Reads forward from a [`SyncCursor`]: the one implementation of the reading rules (see the
/// module's documentation), shared by the HTTP sync and the live followers.
pub(crate) struct StreamReader {
    messages: Arc<dyn MessageRepository>,
    groups: Arc<dyn GroupRepository>,
    user: UserId,
    at: SyncCursor,
    /// The last entry of the memberships in `at.groups` that have ended, once known. Only an
    /// end is remembered: "still a member" may change at any moment.
    ends: HashMap<ConversationId, Seq>,
    /// The last entry of each group of the cursor when the reader resumed: a group read up
    /// to it is not asked again (what came later is left for the next read, which a sync
    /// client makes anyway), so that a sync of a user in many quiet groups costs a few
    /// queries, not one per group. Empty for a live follower, which must read on past it.
    quiet_after: HashMap<ConversationId, Seq>,
    /// The first entry each group of the cursor shows the user (their `joined_seq`), where
    /// known: a change of a message from before it is passed over, not delivered.
    joined: HashMap<ConversationId, Seq>,
}

impl StreamReader {
    /// A reader for `user` after `since`, checked against the store: `P` no further than
    /// the stream's head, the groups exactly those `user` is a member of at `P`, each seq
    /// between the entry before the user joined and the group's last. Without `since`: at
    /// the end of everything (the stream's head, each group at its last entry).
    pub(crate) async fn resume(
        messages: Arc<dyn MessageRepository>,
        groups: Arc<dyn GroupRepository>,
        user: UserId,
        since: Option<SyncCursor>,
    ) -> Result<Self, FollowError> {
        let mut quiet_after = HashMap::new();
        let mut joined = HashMap::new();
        let at = match since {
            None => {
                let (head, positions) = groups.groups_at_head(&user).await?;
                quiet_after.extend(positions.iter().map(|p| (p.group.clone(), p.last_seq)));
                joined.extend(positions.iter().map(|p| (p.group.clone(), p.joined_seq)));
                SyncCursor {
                    stream: head,
                    groups: positions.into_iter().map(|p| (p.group, p.last_seq)).collect(),
                }
            }
            Some(since) => {
                let head = messages.stream_head(&user).await?;
                if since.stream > head {
                    return Err(FollowError::Ahead { since: since.stream, head });
                }
                let positions = groups.groups_at(&user, since.stream).await?;
                if positions.len() != since.groups.len() {
                    return Err(FollowError::InvalidCursor);
                }
                for position in positions {
                    let Some(&seq) = since.groups.get(&position.group) else {
                        return Err(FollowError::InvalidCursor);
                    };
                    if seq > position.last_seq {
                        return Err(FollowError::GroupAhead {
                            group: position.group,
                            seq,
                            last_seq: position.last_seq,
                        });
                    }
                    if seq.saturating_add(1) < position.joined_seq {
                        return Err(FollowError::InvalidCursor);
                    }
                    joined.insert(position.group.clone(), position.joined_seq);
                    quiet_after.insert(position.group, position.last_seq);
                }
                since
            }
        };
        Ok(Self { messages, groups, user, at, ends: HashMap::new(), quiet_after, joined })
    }

    /// Reads every group on to its current end, whatever it was when the reader resumed.
    fn follow_live(mut self) -> Self {
        self.quiet_after.clear();
        self
    }

    pub(crate) fn cursor(&self) -> &SyncCursor {
        &self.at
    }

    /// Up to `limit` deliveries after the cursor, moving it; fewer only when nothing more is
    /// stored.
    pub(crate) async fn read(&mut self, limit: u32) -> RepoResult<Vec<SyncItem>> {
        let mut delivered = Vec::new();
        loop {
            let before = self.at.clone();
            let groups: Vec<ConversationId> = self.at.groups.keys().cloned().collect();
            for group in groups {
                let budget = remaining(limit, &delivered);
                if budget == 0 {
                    return Ok(delivered);
                }
                let had = self.at.groups.get(&group).copied();
                if had.zip(self.quiet_after.get(&group)).is_some_and(|(had, &last)| had >= last) {
                    continue;
                }
                delivered.extend(self.read_group(&group, budget).await?);
            }
            let budget = remaining(limit, &delivered);
            if budget == 0 {
                return Ok(delivered);
            }
            for item in self.messages.stream(&self.user, self.at.stream, budget).await? {
                let budget = remaining(limit, &delivered);
                if budget == 0 {
                    return Ok(delivered);
                }
                match self.take(item, budget).await? {
                    Took::Done(items) => delivered.extend(items),
                    Took::Short(items) => {
                        delivered.extend(items);
                        break;
                    }
                }
            }
            if self.at == before {
                return Ok(delivered);
            }
        }
    }

    /// Up to `limit` entries of `group` (one of the cursor's) after the cursor's seq, up to
    /// the end of the membership, moving the cursor.
    ///
    /// The entries are read before the end is looked up: an entry read was stored before the
    /// lookup, so if the user had been removed before it, the lookup sees the removal (it is
    /// stored with the entry that records it), and no entry after a removal slips through.
    async fn read_group(&mut self, group: &ConversationId, limit: u32) -> RepoResult<Vec<SyncItem>> {
        let Some(&after) = self.at.groups.get(group) else { return Ok(Vec::new()) };
        let known_end = self.ends.get(group).copied();
        if known_end.is_some_and(|end| after >= end) {
            return Ok(Vec::new());
        }
        let entries = self.messages.entries(group, after, known_end, limit).await?;
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let end = match known_end {
            Some(end) => Some(end),
            None => {
                let end = self.groups.left_after(&self.user, group, self.at.stream).await?;
                if let Some(end) = end {
                    self.ends.insert(group.clone(), end);
                }
                end
            }
        };
        let mut delivered = Vec::new();
        let mut last = after;
        for entry in entries {
            // A store keeps to the run and the bound; a broken one must not make a client
            // skip or see what it should not.
            if entry.seq() != last + 1 || end.is_some_and(|end| entry.seq() > end) {
                break;
            }
            last = entry.seq();
            self.at.groups.insert(group.clone(), last);
            if let Some(event) = self.shown(group, entry, end) {
                delivered.push(SyncItem { cursor: self.at.clone(), event });
            }
        }
        Ok(delivered)
    }

    /// What an entry of `group` shows the user: nothing for a change of a message from
    /// before they joined (the entry is passed over: the cursor moves past it all the same);
    /// when their membership ended with the entry at `end`, messages as they were seen until
    /// then ([`Message::as_seen_until`]).
    fn shown(&self, group: &ConversationId, entry: GroupEntry, end: Option<Seq>) -> Option<SyncEvent> {
        let seen = |message: Message| match end {
            Some(end) => message.as_seen_until(end),
            None => message,
        };
        match entry {
            GroupEntry::Message(message) => Some(SyncEvent::Message(seen(message))),
            GroupEntry::Update(Update { change, message }) => {
                let joined = self.joined.get(group).copied().unwrap_or(0);
                (message.seq >= joined).then(|| SyncEvent::Updated(Update { change, message: seen(message) }))
            }
        }
    }

    /// Takes the stream item right after the cursor, delivering at most `budget` items.
    async fn take(&mut self, item: StreamItem, budget: u32) -> RepoResult<Took> {
        debug_assert_eq!(item.cursor, self.at.stream.next());
        let delivered = match item.entry {
            StreamEntry::Message(message) => {
                self.at.stream = item.cursor;
                vec![SyncItem { cursor: self.at.clone(), event: SyncEvent::Message(message) }]
            }
            StreamEntry::Update(update) => {
                self.at.stream = item.cursor;
                vec![SyncItem { cursor: self.at.clone(), event: SyncEvent::Updated(update) }]
            }
            StreamEntry::Notice(Notice::Read { conversation, seq, message_id }) => {
                self.at.stream = item.cursor;
                let event = SyncEvent::Read { conversation, seq, up_to: message_id };
                vec![SyncItem { cursor: self.at.clone(), event }]
            }
            StreamEntry::Notice(Notice::Joined { group, seq }) => {
                self.at.stream = item.cursor;
                self.ends.remove(&group);
                self.quiet_after.remove(&group);
                self.joined.insert(group.clone(), seq);
                self.at.groups.insert(group, seq.saturating_sub(1));
                Vec::new()
            }
            StreamEntry::Notice(Notice::Left { group, seq }) => {
                let mut delivered = Vec::new();
                if self.at.groups.contains_key(&group) {
                    self.ends.insert(group.clone(), seq);
                    delivered = self.read_group(&group, budget).await?;
                    if self.at.groups.get(&group).is_some_and(|&had| had < seq) {
                        if (delivered.len() as u64) < u64::from(budget) {
                            // Entries up to the removal are stored before the notice is.
                            return Err(RepoError::Unexpected(anyhow::anyhow!(
                                "group {group} entries up to {seq} are not readable"
                            )));
                        }
                        return Ok(Took::Short(delivered));
                    }
                    self.at.groups.remove(&group);
                    self.ends.remove(&group);
                    self.quiet_after.remove(&group);
                    self.joined.remove(&group);
                }
                self.at.stream = item.cursor;
                delivered
            }
        };
        Ok(Took::Done(delivered))
    }

    /// Takes the stream item right after the cursor whole (a `Left` notice may need
    /// several reads of its group).
    async fn take_whole(&mut self, item: StreamItem) -> RepoResult<Vec<SyncItem>> {
        let mut delivered = Vec::new();
        loop {
            match self.take(item.clone(), PAGE).await? {
                Took::Done(items) => {
                    delivered.extend(items);
                    return Ok(delivered);
                }
                Took::Short(items) => delivered.extend(items),
            }
        }
    }

    /// Reads `group` after the cursor until the store has nothing more for this user.
    async fn read_group_whole(&mut self, group: &ConversationId) -> RepoResult<Vec<SyncItem>> {
        let mut delivered = Vec::new();
        loop {
            let page = self.read_group(group, PAGE).await?;
            if page.is_empty() {
                return Ok(delivered);
            }
            delivered.extend(page);
        }
    }
}

/// The position right before `cursor` (`0` before the first).
fn before(cursor: Cursor) -> Cursor {
    Cursor::new(cursor.position().saturating_sub(1)).unwrap_or(Cursor::START)
}

fn remaining(limit: u32, delivered: &[SyncItem]) -> u32 {
    limit.saturating_sub(u32::try_from(delivered.len()).unwrap_or(u32::MAX))
}

/// How long a follower started without `since` waits for the store to say where the user's
/// stream and groups stand before it anchors on the events it hears instead.
pub const ANCHOR_DEADLINE: Duration = Duration::from_secs(1);

/// How long a follower anchored on events waits before it asks the store for the user's
/// groups again.
const ANCHOR_RETRY: Duration = Duration::from_secs(10);

/// One connection's cursor, moved by what it delivers. It reads through the message and
/// group ports alone.
///
/// A follower started without `since` reads where the user's stream and groups stand before
/// the connection is registered, as a resume does, but waits at most [`ANCHOR_DEADLINE`] for
/// it: a slow or unreachable store delays a connection's registration by that much at most,
/// and never refuses it. When the store cannot say in time, the follower is *unanchored*:
/// it anchors on the events themselves — the stream just before the earliest position heard,
/// a group just before the earliest entry heard (a group's entries reach only its members'
/// connections). Until the store names the user's groups (asked again at most every
/// [`ANCHOR_RETRY`], and whenever an event needs the store anyway), the cursors delivered
/// name only the groups heard from: resuming from one may be refused as not a valid cursor,
/// and the client starts over — nothing is skipped silently.
///
/// The trade-off, only while the store cannot answer: the start is learned from the first
/// event heard after the connection was registered, so an entry whose event is overtaken by
/// that first one (n + 1 announced before n) is taken as one from before the connection —
/// the window is as long as events take to overtake each other on their way (milliseconds).
/// With a store that answers, the start is exact, as it was read before the registration.
pub struct StreamFollower {
    reader: StreamReader,
    /// `None` once the cursor is complete: checked (a resume) or read from the store.
    unanchored: Option<Unanchored>,
    /// Groups heard from before the user's groups were known that turned out not to be
    /// theirs at the cursor (entries heard before the notice of joining, or of a membership
    /// that ended): the last entry of each already delivered or not for this connection.
    heard: HashMap<ConversationId, Seq>,
}

/// What an unanchored follower knows.
struct Unanchored {
    /// Whether `P` is fixed (from the first event of the stream taken live).
    stream: bool,
    /// When the store may be asked again.
    retry_at: Instant,
    /// The earliest stream position heard while no start was fixed.
    first_position: Option<Cursor>,
    /// The earliest entry of each group heard while no start was fixed.
    first_entries: HashMap<ConversationId, Seq>,
}

impl StreamFollower {
    /// A follower for a connection of `user` resuming after `since` (checked as a sync's
    /// cursor is), or, without `since`, starting with what is stored from now on, without a
    /// word to the store (see the type's documentation). Call it **before** the connection
    /// is registered for live events, then [`catch_up`](Self::catch_up) once it is: what is
    /// stored in between is read then, and nothing falls in the seam.
    pub async fn start(
        messages: Arc<dyn MessageRepository>,
        groups: Arc<dyn GroupRepository>,
        user: UserId,
        since: Option<SyncCursor>,
    ) -> Result<Self, FollowError> {
        let (reader, unanchored) = match since {
            Some(since) => {
                (StreamReader::resume(messages, groups, user, Some(since)).await?.follow_live(), None)
            }
            None => {
                // Where the stream stands before the connection is registered: exact, as
                // everything stored later reaches it. Only a store that cannot say in time
                // leaves the connection to anchor on its events.
                let read = StreamReader::resume(messages.clone(), groups.clone(), user.clone(), None);
                match tokio::time::timeout(ANCHOR_DEADLINE, read).await {
                    Ok(Ok(reader)) => (reader.follow_live(), None),
                    outcome => {
                        match outcome {
                            Ok(Err(error)) => tracing::debug!(
                                error = %error,
                                "a connection starts without the store: anchored on its events"
                            ),
                            _ => tracing::debug!(
                                "the store did not answer in time: a connection is anchored on its events"
                            ),
                        }
                        let reader = StreamReader {
                            messages,
                            groups,
                            user,
                            at: SyncCursor::START,
                            ends: HashMap::new(),
                            quiet_after: HashMap::new(),
                            joined: HashMap::new(),
                        };
                        let unanchored = Unanchored {
                            stream: false,
                            retry_at: Instant::now() + ANCHOR_RETRY,
                            first_position: None,
                            first_entries: HashMap::new(),
                        };
                        (reader, Some(unanchored))
                    }
                }
            }
        };
        Ok(Self { reader, unanchored, heard: HashMap::new() })
    }

    /// The cursor after the last delivery (or the starting one). Until an unanchored
    /// follower has delivered something, it is not a cursor to resume from.
    pub fn cursor(&self) -> &SyncCursor {
        self.reader.cursor()
    }

    /// Whose stream this is.
    pub fn user(&self) -> &UserId {
        &self.reader.user
    }

    /// Whether the follower still has to learn where it starts (started without `since`).
    pub fn unanchored(&self) -> bool {
        self.unanchored.is_some()
    }

    /// The next page of what the connection has not had; empty once caught up. Call it until
    /// it returns an empty page, delivering each page in order. An unanchored follower has
    /// nothing to catch up with: what its events bring is all there is to have.
    pub async fn catch_up(&mut self) -> Result<Vec<SyncItem>, RepoError> {
        if self.unanchored.is_some() {
            return Ok(Vec::new());
        }
        self.reader.read(PAGE).await
    }

    /// Notes an event of the stream heard while the connection waits for its first
    /// [`catch_up`](Self::catch_up), so that an unanchored follower starts no later than
    /// just before it. Nothing for a follower that knows its start.
    pub fn heard(&mut self, event: &Event) {
        let Some(unanchored) = &mut self.unanchored else { return };
        if let Some(cursor) = event.stream_position().filter(|_| !unanchored.stream) {
            let first = unanchored.first_position.get_or_insert(cursor);
            *first = (*first).min(cursor);
        }
        if let Some((group, seq)) = event.group_entry() {
            let first = unanchored.first_entries.entry(group.clone()).or_insert(seq);
            *first = (*first).min(seq);
        }
    }

    /// Asks the store where an unanchored follower starts, within [`ANCHOR_DEADLINE`]:
    /// `P` (the head, or just before the first position heard; as it is, once fixed) and
    /// the user's groups at `P`. Whether it answered; if not, it is asked again at most
    /// every [`ANCHOR_RETRY`].
    async fn anchor(&mut self) -> bool {
        let Some(unanchored) = &mut self.unanchored else { return true };
        let reader = &self.reader;
        let fixed = unanchored.stream.then_some(reader.at.stream);
        let first = unanchored.first_position;
        let read = async {
            let at = match fixed {
                Some(at) => at,
                None => {
                    let head = reader.messages.stream_head(&reader.user).await?;
                    first.map_or(head, |first| head.min(before(first)))
                }
            };
            Ok::<_, RepoError>((at, reader.groups.groups_at(&reader.user, at).await?))
        };
        let (at, positions) = match tokio::time::timeout(ANCHOR_DEADLINE, read).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => {
                tracing::debug!(error = %error, "a connection starts without the store: anchored on its events");
                unanchored.retry_at = Instant::now() + ANCHOR_RETRY;
                return false;
            }
            Err(_) => {
                tracing::debug!("the store did not answer in time: a connection is anchored on its events");
                unanchored.retry_at = Instant::now() + ANCHOR_RETRY;
                return false;
            }
        };
        let mut heard = std::mem::take(&mut self.reader.at.groups);
        self.reader.at.stream = at;
        for position in positions {
            self.reader.joined.insert(position.group.clone(), position.joined_seq);
            let seq = match heard.remove(&position.group) {
                // Heard and followed since: as far as it got (an entry of this membership).
                Some(had) if had.saturating_add(1) >= position.joined_seq => had,
                _ => match unanchored.first_entries.get(&position.group) {
                    Some(&first) => position.last_seq.min(first.saturating_sub(1)),
                    None => position.last_seq,
                },
            };
            self.reader.at.groups.insert(position.group, seq);
        }
        // Heard from, not the user's at `P`: a notice will say what they are.
        self.heard.extend(heard);
        self.reader.ends.clear();
        self.unanchored = None;
        true
    }

    /// Asks the store again when an unanchored follower may, or when `needed`.
    async fn anchor_if_due(&mut self, needed: bool) -> bool {
        let Some(unanchored) = &self.unanchored else { return true };
        if needed || Instant::now() >= unanchored.retry_at {
            return self.anchor().await;
        }
        false
    }

    /// Decides about a live event; see [`Admission`].
    pub async fn admit(&mut self, event: &Event) -> Result<Admission, FollowError> {
        self.heard(event);
        match event {
            Event::NewMessage { message, cursor } => {
                self.anchor_at(*cursor).await;
                self.admit_at(*cursor, StreamEntry::Message(message.clone())).await
            }
            Event::MessageUpdated { update, cursor } => {
                self.anchor_at(*cursor).await;
                self.admit_at(*cursor, StreamEntry::Update(update.clone())).await
            }
            Event::Notice { notice, cursor } => {
                self.anchor_at(*cursor).await;
                self.admit_at(*cursor, StreamEntry::Notice(notice.clone())).await
            }
            Event::GroupMessage { message, .. } => {
                let entry = GroupEntry::Message(message.clone());
                self.anchor_entry(&entry).await?;
                Ok(self.admit_entry(entry).await?)
            }
            Event::GroupUpdated { update, .. } => {
                let entry = GroupEntry::Update(update.clone());
                self.anchor_entry(&entry).await?;
                Ok(self.admit_entry(entry).await?)
            }
            Event::ConversationUpdated { .. }
            | Event::MessagesRead { .. }
            | Event::OnlineUsers(_)
            | Event::Presence(_)
            | Event::Typing { .. } => Ok(Admission::Pass),
        }
    }

    /// Before an event at `cursor` of the stream: an unanchored follower fixes `P` just
    /// before the first position it heard, then asks the store for the groups if it may.
    async fn anchor_at(&mut self, cursor: Cursor) {
        let Some(unanchored) = &mut self.unanchored else { return };
        if !unanchored.stream {
            let first = unanchored.first_position.map_or(cursor, |first| first.min(cursor));
            self.reader.at.stream = before(first);
            unanchored.stream = true;
        }
        self.anchor_if_due(false).await;
    }

    /// Before an entry of a group: an unanchored follower asks the store if it may (or
    /// must: to read a gap, `P` has to be right), and otherwise follows the group from just
    /// before the first entry heard, unless a notice already said what it is.
    async fn anchor_entry(&mut self, entry: &GroupEntry) -> RepoResult<()> {
        let Some(unanchored) = &self.unanchored else { return Ok(()) };
        let (group, seq) = (entry.conversation_id(), entry.seq());
        let had = self.reader.at.groups.get(group).copied();
        let gap = had.is_some_and(|had| seq > had + 1) && !unanchored.stream;
        if self.anchor_if_due(gap).await {
            return Ok(());
        }
        if gap {
            return Err(RepoError::Unavailable(anyhow::anyhow!(
                "the store cannot say where a connection of {} starts",
                self.reader.user
            )));
        }
        let Some(unanchored) = &self.unanchored else { return Ok(()) };
        if had.is_none() && !self.heard.contains_key(group) {
            let first = unanchored.first_entries.get(group).map_or(seq, |&first| first.min(seq));
            self.reader.at.groups.insert(group.clone(), first.saturating_sub(1));
        }
        Ok(())
    }

    /// An event at position `cursor` of the user's stream.
    async fn admit_at(&mut self, cursor: Cursor, entry: StreamEntry) -> Result<Admission, FollowError> {
        let at = self.reader.at.stream;
        if cursor <= at {
            return Ok(Admission::Repeat);
        }
        if cursor == at.next() {
            let item = StreamItem { cursor, entry };
            return Ok(match &item.entry {
                StreamEntry::Notice(Notice::Joined { group, seq }) => {
                    let (group, seq) = (group.clone(), *seq);
                    // Entries heard before the notice (the user's groups not known yet).
                    let had =
                        self.reader.at.groups.get(&group).copied().or_else(|| self.heard.remove(&group));
                    self.reader.take_whole(item).await?;
                    if let Some(had) = had.filter(|&had| had >= seq) {
                        self.reader.at.groups.insert(group.clone(), had);
                    }
                    // What the notice makes visible: the group from the entry that added the user.
                    Admission::Fill(self.reader.read_group_whole(&group).await?)
                }
                // The group's entries up to the user's last one.
                StreamEntry::Notice(Notice::Left { group, seq }) => {
                    if self.unanchored.is_some() && !self.reader.at.groups.contains_key(group) {
                        // A membership the follower never heard of ends: its entries are
                        // not this connection's.
                        self.heard.insert(group.clone(), *seq);
                    }
                    Admission::Fill(self.reader.take_whole(item).await?)
                }
                StreamEntry::Message(_)
                | StreamEntry::Update(_)
                | StreamEntry::Notice(Notice::Read { .. }) => {
                    // One delivery: the event's.
                    match <[SyncItem; 1]>::try_from(self.reader.take_whole(item).await?) {
                        Ok([one]) => Admission::Deliver(one),
                        Err(delivered) => Admission::Fill(delivered),
                    }
                }
            });
        }
        let mut missed = Vec::new();
        while self.reader.at.stream < cursor {
            let page = self.reader.read(PAGE).await?;
            if page.is_empty() {
                break;
            }
            missed.extend(page);
        }
        if self.reader.at.stream < cursor {
            return Err(FollowError::Unreadable { announced: cursor });
        }
        Ok(Admission::Fill(missed))
    }

    /// A new entry of a group.
    async fn admit_entry(&mut self, entry: GroupEntry) -> RepoResult<Admission> {
        let (group, seq) = (entry.conversation_id().clone(), entry.seq());
        let Some(&had) = self.reader.at.groups.get(&group) else {
            // Not a member at the cursor: if the user joins, the notice brings the group.
            return Ok(Admission::Drop);
        };
        if seq <= had {
            return Ok(Admission::Repeat);
        }
        let end = self.reader.ends.get(&group).copied();
        if seq == had + 1 && end.is_none_or(|end| seq <= end) {
            self.reader.at.groups.insert(group.clone(), seq);
            return Ok(match self.reader.shown(&group, entry, end) {
                Some(event) => Admission::Deliver(SyncItem { cursor: self.reader.at.clone(), event }),
                None => Admission::Drop,
            });
        }
        let group = &group;
        let mut missed = Vec::new();
        while self.reader.at.groups.get(group).is_some_and(|&had| had < seq) {
            let page = self.reader.read_group(group, PAGE).await?;
            if page.is_empty() {
                break;
            }
            missed.extend(page);
        }
        // Short of the entry: the membership ended before it.
        Ok(if missed.is_empty() { Admission::Drop } else { Admission::Fill(missed) })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::AtomicBool;
    use std::sync::atomic::Ordering::SeqCst;
    use std::sync::Mutex;

    use super::*;
    use crate::fixtures::{timeline_ports, Timeline};
    use crate::ports::{MockGroupRepository, MockMessageRepository};

    fn cursor(n: u64) -> Cursor {
        Cursor::new(n).unwrap()
    }

    fn shared(timeline: Timeline) -> Arc<Mutex<Timeline>> {
        Arc::new(Mutex::new(timeline))
    }

    async fn follower(timeline: &Arc<Mutex<Timeline>>, since: Option<SyncCursor>) -> StreamFollower {
        let (messages, groups) = timeline_ports(timeline);
        let user = timeline.lock().unwrap().user.clone();
        StreamFollower::start(Arc::new(messages), Arc::new(groups), user, since).await.unwrap()
    }

    /// A follower started without `since` whose first catch-up found the store: at the end
    /// of everything as it stands now.
    async fn anchored(timeline: &Arc<Mutex<Timeline>>) -> StreamFollower {
        let mut follower = follower(timeline, None).await;
        assert!(catch_up_all(&mut follower).await.is_empty());
        assert!(!follower.unanchored());
        follower
    }

    async fn started(
        timeline: &Arc<Mutex<Timeline>>,
        since: Option<SyncCursor>,
    ) -> Result<StreamFollower, FollowError> {
        let (messages, groups) = timeline_ports(timeline);
        let user = timeline.lock().unwrap().user.clone();
        StreamFollower::start(Arc::new(messages), Arc::new(groups), user, since).await
    }

    async fn catch_up_all(follower: &mut StreamFollower) -> Vec<SyncItem> {
        let mut all = Vec::new();
        loop {
            let page = follower.catch_up().await.unwrap();
            if page.is_empty() {
                return all;
            }
            all.extend(page);
        }
    }

    /// What each delivery shows, by source: direct messages and reads by stream position,
    /// group entries by seq under their group.
    fn shown(items: &[SyncItem]) -> BTreeMap<String, Vec<u64>> {
        let mut shown: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for item in items {
            let (source, n) = match &item.event {
                SyncEvent::Message(m) if m.receiver_id.is_some() => {
                    ("direct".to_owned(), item.cursor.stream.position())
                }
                SyncEvent::Message(m) => (m.conversation_id.to_string(), m.seq),
                SyncEvent::Read { conversation, seq, .. } => (format!("read {conversation}"), *seq),
                SyncEvent::Updated(u) if u.message.receiver_id.is_some() => {
                    ("direct".to_owned(), item.cursor.stream.position())
                }
                SyncEvent::Updated(u) => (u.change.conversation_id.to_string(), u.change.seq),
            };
            shown.entry(source).or_default().push(n);
        }
        shown
    }

    fn expected(pairs: &[(&str, &[u64])]) -> BTreeMap<String, Vec<u64>> {
        pairs.iter().map(|(source, ns)| ((*source).to_owned(), ns.to_vec())).collect()
    }

    /// The history of the module's tests: B has entries before the user joins it, the user
    /// leaves B and comes back, and reads A.
    struct Story {
        timeline: Arc<Mutex<Timeline>>,
        a: ConversationId,
        b: ConversationId,
    }

    fn story() -> Story {
        let mut t = Timeline::new(&UserId::generate());
        let (a, b) = (ConversationId::generate(), ConversationId::generate());
        for body in ["b1", "b2", "b3"] {
            t.post(&b, body);
        }
        t.direct("d1"); // 1
        t.join(&a); // 2: A1
        let a2 = t.post(&a, "a2");
        t.join(&b); // 3: B4
        t.post(&b, "b5");
        t.direct("d2"); // 4
        t.read(&a2); // 5
        t.leave(&b); // 6: B6
        t.post(&b, "b7"); // not for the user
        t.post(&a, "a3");
        t.join(&b); // 7: B8
        t.post(&b, "b9");
        Story { timeline: shared(t), a, b }
    }

    fn whole_story(s: &Story) -> BTreeMap<String, Vec<u64>> {
        expected(&[
            ("direct", &[1, 4]),
            (s.a.as_str(), &[1, 2, 3]),
            (s.b.as_str(), &[4, 5, 6, 8, 9]),
            (&format!("read {}", s.a), &[2]),
        ])
    }

    #[tokio::test]
    async fn start_without_since_catches_up_from_the_end_of_everything() {
        let s = story();
        let mut follower = follower(&s.timeline, None).await;
        assert!(!follower.unanchored(), "the store said where everything stands");
        assert!(follower.catch_up().await.unwrap().is_empty());
        let at = follower.cursor().clone();
        assert_eq!(at.stream, cursor(7));
        assert_eq!(at.groups, [(s.a.clone(), 3), (s.b.clone(), 9)].into());
        assert!(follower.catch_up().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn catching_up_from_the_start_shows_each_membership_from_its_joining_to_its_end() {
        let s = story();
        let mut follower = follower(&s.timeline, Some(SyncCursor::START)).await;
        let items = catch_up_all(&mut follower).await;
        assert_eq!(shown(&items), whole_story(&s));
        // The entry that removed the user is the last of that membership it sees.
        assert!(items.iter().all(|i| !matches!(&i.event, SyncEvent::Message(m) if m.body.as_str() == "b7")));
        assert_eq!(follower.cursor(), &SyncCursor { stream: cursor(7), groups: [(s.a, 3), (s.b, 9)].into() });
    }

    #[tokio::test]
    async fn each_delivery_carries_a_cursor_that_resumes_right_after_it() {
        let s = story();
        let items = catch_up_all(&mut follower(&s.timeline, Some(SyncCursor::START)).await).await;
        for (i, item) in items.iter().enumerate() {
            let mut resumed = follower(&s.timeline, Some(item.cursor.clone())).await;
            let rest = catch_up_all(&mut resumed).await;
            assert_eq!(shown(&rest), shown(&items[i + 1..]), "after delivery {i}");
        }
    }

    #[tokio::test]
    async fn a_page_holds_at_most_its_size_and_paging_loses_nothing() {
        let mut t = Timeline::new(&UserId::generate());
        let group = ConversationId::generate();
        t.join(&group);
        for n in 0..PAGE + 10 {
            t.post(&group, &format!("g{n}"));
            t.direct(&format!("d{n}"));
        }
        let timeline = shared(t);
        let mut follower = follower(&timeline, Some(SyncCursor::START)).await;
        let mut pages = Vec::new();
        loop {
            let page = follower.catch_up().await.unwrap();
            if page.is_empty() {
                break;
            }
            pages.push(page.len());
            assert!(page.len() <= PAGE as usize);
        }
        assert_eq!(pages.iter().sum::<usize>(), 2 * (PAGE as usize + 10) + 1);
        assert_eq!(pages[0], PAGE as usize);
    }

    #[tokio::test]
    async fn what_a_group_gets_between_start_and_catch_up_is_caught_up() {
        let (timeline, group, mut follower) = in_group(2).await;
        // Stored before the connection was registered: no event will bring it.
        timeline.lock().unwrap().post(&group, "in the seam");
        let items = follower.catch_up().await.unwrap();
        assert_eq!(shown(&items), expected(&[(group.as_str(), &[3])]));
    }

    #[tokio::test]
    async fn a_cursor_beyond_the_stream_or_a_group_is_refused() {
        let s = story();
        let ahead = started(&s.timeline, Some(SyncCursor::at(cursor(8)))).await;
        assert!(
            matches!(ahead, Err(FollowError::Ahead { since, head }) if since == cursor(8) && head == cursor(7))
        );

        let beyond = SyncCursor { stream: cursor(7), groups: [(s.a.clone(), 4), (s.b.clone(), 9)].into() };
        let refused = started(&s.timeline, Some(beyond)).await;
        assert!(
            matches!(&refused, Err(FollowError::GroupAhead { group, seq: 4, last_seq: 3 }) if *group == s.a),
            "{refused:?}",
            refused = refused.as_ref().err()
        );
    }

    #[tokio::test]
    async fn a_cursor_naming_other_groups_than_the_users_at_its_position_is_invalid() {
        let s = story();
        let (a, b) = (s.a.clone(), s.b.clone());
        for since in [
            // At 2 the user is in A only.
            SyncCursor { stream: cursor(2), groups: [(a.clone(), 0), (b.clone(), 3)].into() },
            SyncCursor::at(cursor(2)),
            SyncCursor { stream: cursor(2), groups: [(ConversationId::generate(), 0)].into() },
            // At 3 the user joined B at 4: 3 is the least seq.
            SyncCursor { stream: cursor(3), groups: [(a.clone(), 1), (b.clone(), 2)].into() },
            // At 6 the user left B.
            SyncCursor { stream: cursor(6), groups: [(a.clone(), 1), (b.clone(), 6)].into() },
        ] {
            let refused = started(&s.timeline, Some(since.clone())).await;
            assert!(matches!(refused, Err(FollowError::InvalidCursor)), "{since}");
        }
        for since in [
            SyncCursor::at(cursor(1)),
            SyncCursor { stream: cursor(3), groups: [(a.clone(), 0), (b.clone(), 3)].into() },
            SyncCursor { stream: cursor(6), groups: [(a, 3)].into() },
        ] {
            assert!(started(&s.timeline, Some(since.clone())).await.is_ok(), "{since}");
        }
    }

    #[tokio::test]
    async fn a_store_failure_at_a_resume_is_reported() {
        let mut messages = MockMessageRepository::new();
        messages.expect_stream_head().returning(|_| Err(RepoError::Unavailable(anyhow::anyhow!("down"))));
        let started = StreamFollower::start(
            Arc::new(messages),
            Arc::new(MockGroupRepository::new()),
            UserId::generate(),
            Some(SyncCursor::at(cursor(3))),
        )
        .await;
        assert!(matches!(started, Err(FollowError::Storage(RepoError::Unavailable(_)))));
    }

    /// A user in no group, caught up at `at` of a stream of `stored` direct messages.
    async fn direct_only(stored: u64, at: u64) -> (Arc<Mutex<Timeline>>, StreamFollower, Vec<Event>) {
        let mut t = Timeline::new(&UserId::generate());
        let mut events = Vec::new();
        for n in 1..=stored {
            let (cursor, message) = t.direct(&format!("d{n}"));
            events.push(Event::NewMessage { message, cursor });
        }
        let timeline = shared(t);
        let follower = follower(&timeline, Some(SyncCursor::at(cursor(at)))).await;
        (timeline, follower, events)
    }

    #[tokio::test]
    async fn the_next_direct_message_is_delivered_as_is_with_the_cursor_after_it() {
        let (_, mut follower, events) = direct_only(10, 8).await;
        let Admission::Deliver(item) = follower.admit(&events[8]).await.unwrap() else { panic!("delivered") };
        assert_eq!(item.cursor, SyncCursor::at(cursor(9)));
        assert!(matches!(&item.event, SyncEvent::Message(m) if m.body.as_str() == "d9"));
        assert_eq!(follower.admit(&events[8]).await.unwrap(), Admission::Repeat);
        assert_eq!(follower.admit(&events[2]).await.unwrap(), Admission::Repeat);
        assert_eq!(follower.cursor().stream, cursor(9), "a repeat moves nothing");
    }

    #[tokio::test]
    async fn a_direct_message_ahead_fills_the_gap_with_the_stored_run() {
        let (_, mut follower, events) = direct_only(12, 8).await;
        let Admission::Fill(items) = follower.admit(&events[10]).await.unwrap() else { panic!("filled") };
        assert_eq!(shown(&items), expected(&[("direct", &[9, 10, 11, 12])]));
        assert_eq!(follower.admit(&events[11]).await.unwrap(), Admission::Repeat);
    }

    #[tokio::test]
    async fn an_announced_position_the_store_does_not_hold_is_unreadable() {
        let (timeline, mut follower, _) = direct_only(10, 8).await;
        let user = timeline.lock().unwrap().user.clone();
        let (_, message) = Timeline::new(&user).direct("never stored here");
        let error = follower.admit(&Event::NewMessage { message, cursor: cursor(14) }).await.unwrap_err();
        assert!(matches!(error, FollowError::Unreadable { announced } if announced == cursor(14)), "{error}");
    }

    #[tokio::test]
    async fn a_read_notice_is_delivered_and_other_events_pass() {
        let mut t = Timeline::new(&UserId::generate());
        let group = ConversationId::generate();
        t.join(&group);
        let entry = t.post(&group, "hi");
        let timeline = shared(t);
        let mut follower = anchored(&timeline).await;
        let at = timeline.lock().unwrap().read(&entry);
        let notice = Notice::Read { conversation: group.clone(), seq: 2, message_id: entry.id.clone() };
        let Admission::Deliver(item) = follower.admit(&Event::Notice { notice, cursor: at }).await.unwrap()
        else {
            panic!("delivered")
        };
        assert_eq!(
            item.event,
            SyncEvent::Read { conversation: group.clone(), seq: 2, up_to: entry.id.clone() }
        );
        assert_eq!(item.cursor.stream, at);
        let other =
            Event::MessagesRead { conversation: group, user: UserId::generate(), seq: 2, up_to: entry.id };
        assert_eq!(follower.admit(&other).await.unwrap(), Admission::Pass);
        assert_eq!(follower.admit(&Event::OnlineUsers(vec![])).await.unwrap(), Admission::Pass);
    }

    /// A follower of a user who is a member of a group with `entries` entries (the first
    /// added the user), caught up.
    async fn in_group(entries: u64) -> (Arc<Mutex<Timeline>>, ConversationId, StreamFollower) {
        let mut t = Timeline::new(&UserId::generate());
        let group = ConversationId::generate();
        t.join(&group);
        for n in 2..=entries {
            t.post(&group, &format!("g{n}"));
        }
        let timeline = shared(t);
        let follower = anchored(&timeline).await;
        (timeline, group, follower)
    }

    fn group_event(message: Message) -> Event {
        Event::GroupMessage { message, version: 1 }
    }

    #[tokio::test]
    async fn a_group_entry_is_delivered_repeated_or_fills_its_gap() {
        let (timeline, group, mut follower) = in_group(3).await;
        let e4 = timeline.lock().unwrap().post(&group, "g4");
        let Admission::Deliver(item) = follower.admit(&group_event(e4.clone())).await.unwrap() else {
            panic!("delivered")
        };
        assert_eq!(item.cursor.groups[&group], 4);
        assert_eq!(follower.admit(&group_event(e4)).await.unwrap(), Admission::Repeat);

        let (_e5, _e6, e7) = {
            let mut t = timeline.lock().unwrap();
            (t.post(&group, "g5"), t.post(&group, "g6"), t.post(&group, "g7"))
        };
        let Admission::Fill(items) = follower.admit(&group_event(e7)).await.unwrap() else {
            panic!("filled")
        };
        assert_eq!(shown(&items), expected(&[(group.as_str(), &[5, 6, 7])]));
        assert_eq!(follower.cursor().groups[&group], 7);
    }

    #[tokio::test]
    async fn an_entry_of_a_group_the_user_is_not_in_is_dropped() {
        let (timeline, _, mut follower) = in_group(1).await;
        let stranger = timeline.lock().unwrap().post(&ConversationId::generate(), "not yours");
        assert_eq!(follower.admit(&group_event(stranger)).await.unwrap(), Admission::Drop);
    }

    #[tokio::test]
    async fn a_joined_notice_brings_the_group_from_the_entry_that_added_the_user() {
        let mut t = Timeline::new(&UserId::generate());
        let group = ConversationId::generate();
        t.post(&group, "before you");
        let timeline = shared(t);
        let mut follower = anchored(&timeline).await;
        // The group's event may come first: not a member yet at the cursor.
        let (at, added) = timeline.lock().unwrap().join(&group);
        assert_eq!(follower.admit(&group_event(added.clone())).await.unwrap(), Admission::Drop);
        let joined = Event::Notice { notice: Notice::Joined { group: group.clone(), seq: 2 }, cursor: at };
        let Admission::Fill(items) = follower.admit(&joined).await.unwrap() else { panic!("filled") };
        assert_eq!(shown(&items), expected(&[(group.as_str(), &[2])]));
        assert_eq!(items[0].cursor, SyncCursor { stream: at, groups: [(group.clone(), 2)].into() });
        assert_eq!(follower.admit(&group_event(added)).await.unwrap(), Admission::Repeat);
        assert_eq!(follower.admit(&joined).await.unwrap(), Admission::Repeat);
    }

    #[tokio::test]
    async fn changes_of_messages_from_before_joining_are_passed_over_and_later_ones_delivered() {
        let mut t = Timeline::new(&UserId::generate());
        let group = ConversationId::generate();
        let before = t.post(&group, "before you"); // 1
        t.join(&group); // 2
        let mine = t.post(&group, "after"); // 3
        t.react(&group, &before); // 4: not the user's to see
        let seen = t.react(&group, &mine); // 5
        let user = t.user.clone();
        let timeline = shared(t);
        let (messages, groups) = timeline_ports(&timeline);
        let mut reader =
            StreamReader::resume(Arc::new(messages), Arc::new(groups), user, Some(SyncCursor::START))
                .await
                .unwrap();
        let items = reader.read(50).await.unwrap();
        assert_eq!(shown(&items), expected(&[(group.as_str(), &[2, 3, 5])]));
        assert!(matches!(&items[2].event, SyncEvent::Updated(update) if *update == seen));
        assert_eq!(reader.cursor().groups[&group], 5, "past the change it passed over");

        // Live: the same two changes, as events.
        let (timeline, group, mut follower) = in_group(2).await;
        let (old, newer) = {
            let mut t = timeline.lock().unwrap();
            let first = match &t.entries[&group][1] {
                GroupEntry::Message(message) => message.clone(),
                GroupEntry::Update(_) => unreachable!(),
            };
            let old = t.react(&group, &first);
            let before_joining = Message { seq: 0, ..first };
            let hidden = t.react(&group, &before_joining);
            (old, hidden)
        };
        let event = |update: Update| Event::GroupUpdated { update, version: 1 };
        let Admission::Deliver(item) = follower.admit(&event(old.clone())).await.unwrap() else {
            panic!("delivered")
        };
        assert_eq!(item.event, SyncEvent::Updated(old.clone()));
        assert_eq!(follower.admit(&event(newer)).await.unwrap(), Admission::Drop);
        assert_eq!(follower.cursor().groups[&group], 4);
        assert_eq!(follower.admit(&event(old)).await.unwrap(), Admission::Repeat);
    }

    #[tokio::test]
    async fn a_left_notice_delivers_the_group_up_to_the_removal_then_drops_it() {
        let (timeline, group, mut follower) = in_group(2).await;
        let (e3, (at, removed), after) = {
            let mut t = timeline.lock().unwrap();
            (t.post(&group, "g3"), t.leave(&group), t.post(&group, "after you"))
        };
        let left =
            Event::Notice { notice: Notice::Left { group: group.clone(), seq: removed.seq }, cursor: at };
        let Admission::Fill(items) = follower.admit(&left).await.unwrap() else { panic!("filled") };
        assert_eq!(shown(&items), expected(&[(group.as_str(), &[3, 4])]));
        assert_eq!(follower.cursor(), &SyncCursor::at(at));
        for late in [e3, removed, after] {
            assert_eq!(follower.admit(&group_event(late)).await.unwrap(), Admission::Drop);
        }
    }

    #[tokio::test]
    async fn entries_after_a_removal_are_dropped_before_its_notice_arrives() {
        let (timeline, group, mut follower) = in_group(2).await;
        let (e3, removed, after, later) = {
            let mut t = timeline.lock().unwrap();
            let e3 = t.post(&group, "g3");
            let (_, removed) = t.leave(&group);
            (e3, removed, t.post(&group, "after you"), t.post(&group, "later"))
        };
        // 3 overtaken and lost: the gap is read, up to the removal only.
        let Admission::Fill(items) = follower.admit(&group_event(after)).await.unwrap() else {
            panic!("filled")
        };
        assert_eq!(shown(&items), expected(&[(group.as_str(), &[3, 4])]));
        assert_eq!(follower.admit(&group_event(later)).await.unwrap(), Admission::Drop);
        assert_eq!(follower.admit(&group_event(e3)).await.unwrap(), Admission::Repeat);
        assert_eq!(follower.admit(&group_event(removed)).await.unwrap(), Admission::Repeat);
    }

    #[tokio::test]
    async fn a_stream_gap_over_a_rejoin_fills_the_group_from_the_new_membership() {
        let (timeline, group, mut follower) = in_group(1).await;
        let (at, message) = {
            let mut t = timeline.lock().unwrap();
            t.leave(&group); // 2
            t.post(&group, "while away"); // 3
            t.join(&group); // 4
            t.post(&group, "back"); // 5
            t.direct("hello")
        };
        let Admission::Fill(items) =
            follower.admit(&Event::NewMessage { message, cursor: at }).await.unwrap()
        else {
            panic!("filled")
        };
        assert_eq!(shown(&items), expected(&[("direct", &[at.position()]), (group.as_str(), &[2, 4, 5])]));
        assert_eq!(follower.cursor(), &SyncCursor { stream: at, groups: [(group, 5)].into() });
    }

    #[tokio::test]
    async fn a_storage_failure_while_filling_is_reported() {
        let mut messages = MockMessageRepository::new();
        messages.expect_stream_head().returning(|_| Ok(Cursor::new(1_000).unwrap()));
        messages.expect_stream().returning(|_, _, _| Err(RepoError::Unavailable(anyhow::anyhow!("down"))));
        let mut groups = MockGroupRepository::new();
        groups.expect_groups_at().returning(|_, _| Ok(Vec::new()));
        let user = UserId::generate();
        let mut follower = StreamFollower::start(
            Arc::new(messages),
            Arc::new(groups),
            user.clone(),
            Some(SyncCursor::at(cursor(1))),
        )
        .await
        .unwrap();
        let (_, message) = Timeline::new(&user).direct("hi");
        let error = follower.admit(&Event::NewMessage { message, cursor: cursor(5) }).await.unwrap_err();
        assert!(matches!(error, FollowError::Storage(RepoError::Unavailable(_))));
    }

    // A start without `since`: nothing asked of the store until the connection is open.

    fn down() -> RepoError {
        RepoError::Unavailable(anyhow::anyhow!("down"))
    }

    /// The answer of a mock's future, which is ready at once.
    fn ready<T>(future: impl std::future::Future<Output = T>) -> T {
        let mut future = std::pin::pin!(future);
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        match future.as_mut().poll(&mut context) {
            std::task::Poll::Ready(answer) => answer,
            std::task::Poll::Pending => panic!("a mock answers at once"),
        }
    }

    /// A follower started without `since` over the ports of `timeline`, which fail while
    /// `outage` is set.
    async fn behind(timeline: &Arc<Mutex<Timeline>>, outage: &Arc<AtomicBool>) -> StreamFollower {
        let (store, store_groups) = timeline_ports(timeline);
        let (store, store_groups) = (Arc::new(store), Arc::new(store_groups));
        let (mut messages, mut groups) = (MockMessageRepository::new(), MockGroupRepository::new());
        let (up, s) = (outage.clone(), store.clone());
        messages.expect_stream_head().returning(move |user| {
            if up.load(SeqCst) {
                return Err(down());
            }
            ready(s.stream_head(user))
        });
        let (up, s) = (outage.clone(), store.clone());
        messages.expect_stream().returning(move |user, after, limit| {
            if up.load(SeqCst) {
                return Err(down());
            }
            ready(s.stream(user, after, limit))
        });
        let (up, s) = (outage.clone(), store);
        messages.expect_entries().returning(move |group, after, until, limit| {
            if up.load(SeqCst) {
                return Err(down());
            }
            ready(s.entries(group, after, until, limit))
        });
        let (up, g) = (outage.clone(), store_groups.clone());
        groups.expect_groups_at().returning(move |user, at| {
            if up.load(SeqCst) {
                return Err(down());
            }
            ready(g.groups_at(user, at))
        });
        let (up, g) = (outage.clone(), store_groups.clone());
        groups.expect_groups_at_head().returning(move |user| {
            if up.load(SeqCst) {
                return Err(down());
            }
            ready(g.groups_at_head(user))
        });
        let (up, g) = (outage.clone(), store_groups);
        groups.expect_left_after().returning(move |user, group, after| {
            if up.load(SeqCst) {
                return Err(down());
            }
            ready(g.left_after(user, group, after))
        });
        let user = timeline.lock().unwrap().user.clone();
        StreamFollower::start(Arc::new(messages), Arc::new(groups), user, None).await.unwrap()
    }

    fn direct_event(timeline: &Arc<Mutex<Timeline>>, body: &str) -> Event {
        let (cursor, message) = timeline.lock().unwrap().direct(body);
        Event::NewMessage { message, cursor }
    }

    fn delivered(admission: Admission) -> SyncItem {
        match admission {
            Admission::Deliver(item) => item,
            other => panic!("delivered: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_start_without_since_whose_store_fails_is_unanchored_and_asks_nothing_more_at_once() {
        let mut groups = MockGroupRepository::new();
        groups.expect_groups_at_head().times(1).returning(|_| Err(down()));
        // Any other call to these mocks would fail the test.
        let mut follower = StreamFollower::start(
            Arc::new(MockMessageRepository::new()),
            Arc::new(groups),
            UserId::generate(),
            None,
        )
        .await
        .unwrap();
        assert!(follower.unanchored());
        assert_eq!(follower.cursor(), &SyncCursor::START);
        assert!(follower.catch_up().await.unwrap().is_empty(), "its events are all there is");
    }

    #[tokio::test]
    async fn a_message_stored_after_a_start_without_since_is_delivered_whenever_its_event_comes() {
        let mut t = Timeline::new(&UserId::generate());
        t.direct("before");
        let timeline = shared(t);
        // The start is read before the connection is registered: what is stored after it
        // is the connection's, also when its event comes after a later read of the store.
        let mut follower = follower(&timeline, None).await;
        let d2 = direct_event(&timeline, "d2");
        let items = catch_up_all(&mut follower).await;
        assert_eq!(shown(&items), expected(&[("direct", &[2])]));
        assert_eq!(follower.admit(&d2).await.unwrap(), Admission::Repeat);
    }

    #[tokio::test]
    async fn events_heard_before_the_first_catch_up_are_read_from_the_earliest_in_order() {
        let mut t = Timeline::new(&UserId::generate());
        for n in 1..=3 {
            t.direct(&format!("before {n}"));
        }
        let timeline = shared(t);
        let mut follower = follower(&timeline, None).await;
        // Stored after the connection was registered; announced out of order, and heard
        // while it waits for its first catch-up.
        let (d4, d5) = (direct_event(&timeline, "d4"), direct_event(&timeline, "d5"));
        follower.heard(&d5);
        follower.heard(&d4);
        let items = catch_up_all(&mut follower).await;
        assert_eq!(shown(&items), expected(&[("direct", &[4, 5])]));
        assert_eq!(follower.admit(&d5).await.unwrap(), Admission::Repeat);
        assert_eq!(follower.admit(&d4).await.unwrap(), Admission::Repeat);
        let d6 = direct_event(&timeline, "d6");
        assert_eq!(delivered(follower.admit(&d6).await.unwrap()).cursor, SyncCursor::at(cursor(6)));
    }

    #[tokio::test]
    async fn with_the_store_down_live_events_are_delivered_from_the_first_heard() {
        let outage = Arc::new(AtomicBool::new(true));
        let mut t = Timeline::new(&UserId::generate());
        t.direct("before");
        let timeline = shared(t);
        let mut follower = behind(&timeline, &outage).await;
        let (d2, d3, d4) =
            (direct_event(&timeline, "d2"), direct_event(&timeline, "d3"), direct_event(&timeline, "d4"));
        // Heard out of order while the store was asked, then handed over in order.
        follower.heard(&d3);
        follower.heard(&d2);
        assert!(follower.catch_up().await.unwrap().is_empty(), "the store does not answer");
        assert!(follower.unanchored());
        assert_eq!(delivered(follower.admit(&d2).await.unwrap()).cursor, SyncCursor::at(cursor(2)));
        assert_eq!(delivered(follower.admit(&d3).await.unwrap()).cursor, SyncCursor::at(cursor(3)));
        assert_eq!(follower.admit(&d2).await.unwrap(), Admission::Repeat);
        assert_eq!(delivered(follower.admit(&d4).await.unwrap()).cursor, SyncCursor::at(cursor(4)));
        // Nothing to catch up with: the events are all there is.
        assert!(follower.catch_up().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn with_the_store_down_the_first_live_event_in_order_or_not_starts_the_stream() {
        for out_of_order in [false, true] {
            let outage = Arc::new(AtomicBool::new(true));
            let timeline = shared(Timeline::new(&UserId::generate()));
            let mut follower = behind(&timeline, &outage).await;
            assert!(follower.catch_up().await.unwrap().is_empty());
            let (d1, d2) = (direct_event(&timeline, "d1"), direct_event(&timeline, "d2"));
            let (first, second) = if out_of_order { (d2, d1) } else { (d1, d2) };
            let item = delivered(follower.admit(&first).await.unwrap());
            let at = if out_of_order { 2 } else { 1 };
            assert_eq!(item.cursor, SyncCursor::at(cursor(at)));
            let after = follower.admit(&second).await.unwrap();
            if out_of_order {
                // Anchored just before the first event: one overtaken before it is taken for
                // one from before the connection (the window the module documents).
                assert_eq!(after, Admission::Repeat);
            } else {
                assert_eq!(delivered(after).cursor, SyncCursor::at(cursor(2)));
            }
        }
    }

    #[tokio::test]
    async fn with_the_store_down_a_gap_after_the_first_event_closes_with_a_storage_error() {
        let outage = Arc::new(AtomicBool::new(true));
        let timeline = shared(Timeline::new(&UserId::generate()));
        let mut follower = behind(&timeline, &outage).await;
        let d1 = direct_event(&timeline, "d1");
        direct_event(&timeline, "d2 (lost on its way)");
        let d3 = direct_event(&timeline, "d3");
        delivered(follower.admit(&d1).await.unwrap());
        let error = follower.admit(&d3).await.unwrap_err();
        assert!(matches!(error, FollowError::Storage(RepoError::Unavailable(_))), "{error}");
    }

    #[tokio::test(start_paused = true)]
    async fn with_the_store_down_groups_are_followed_from_their_first_entry_and_learned_once_it_is_back() {
        let outage = Arc::new(AtomicBool::new(true));
        let mut t = Timeline::new(&UserId::generate());
        let group = ConversationId::generate();
        t.join(&group); // 1: the group's first entry
        let timeline = shared(t);
        let mut follower = behind(&timeline, &outage).await;
        assert!(follower.catch_up().await.unwrap().is_empty());

        let e2 = timeline.lock().unwrap().post(&group, "g2");
        let item = delivered(follower.admit(&group_event(e2.clone())).await.unwrap());
        assert_eq!(item.cursor.groups, [(group.clone(), 2)].into());
        assert_eq!(follower.admit(&group_event(e2)).await.unwrap(), Admission::Repeat);
        let d2 = direct_event(&timeline, "d2");
        let item = delivered(follower.admit(&d2).await.unwrap());
        assert_eq!(item.cursor, SyncCursor { stream: cursor(2), groups: [(group.clone(), 2)].into() });
        assert!(follower.unanchored(), "the groups are not known yet");
        // A gap in a group needs the store: it says so, and the connection is closed.
        let (_e3, e4) = {
            let mut t = timeline.lock().unwrap();
            (t.post(&group, "g3 (overtaken)"), t.post(&group, "g4"))
        };
        assert!(follower.admit(&group_event(e4.clone())).await.is_err());

        // Back: asked again at the next event once due, and the cursor is complete.
        outage.store(false, SeqCst);
        tokio::time::advance(ANCHOR_RETRY).await;
        let d3 = direct_event(&timeline, "d3");
        let item = delivered(follower.admit(&d3).await.unwrap());
        assert_eq!(item.cursor, SyncCursor { stream: cursor(3), groups: [(group.clone(), 2)].into() });
        assert!(!follower.unanchored());
        let Admission::Fill(items) = follower.admit(&group_event(e4.clone())).await.unwrap() else {
            panic!("filled")
        };
        assert_eq!(shown(&items), expected(&[(group.as_str(), &[3, 4])]));
        assert_eq!(follower.cursor(), &SyncCursor { stream: cursor(3), groups: [(group.clone(), 4)].into() });
        assert_eq!(follower.admit(&group_event(e4)).await.unwrap(), Admission::Repeat);
    }

    #[tokio::test]
    async fn with_the_store_down_an_entry_before_the_notice_of_joining_is_not_delivered_twice() {
        let outage = Arc::new(AtomicBool::new(true));
        let mut t = Timeline::new(&UserId::generate());
        let group = ConversationId::generate();
        t.post(&group, "before you");
        let d1 = {
            let (cursor, message) = t.direct("d1");
            Event::NewMessage { message, cursor }
        };
        let timeline = shared(t);
        let mut follower = behind(&timeline, &outage).await;
        delivered(follower.admit(&d1).await.unwrap());
        // The entry that added the user overtakes the notice: followed from it, and the
        // notice then adds nothing.
        let (at, added) = timeline.lock().unwrap().join(&group);
        delivered(follower.admit(&group_event(added)).await.unwrap());
        outage.store(false, SeqCst);
        let joined = Event::Notice { notice: Notice::Joined { group: group.clone(), seq: 2 }, cursor: at };
        let Admission::Fill(items) = follower.admit(&joined).await.unwrap() else { panic!("filled") };
        assert!(items.is_empty(), "{items:?}");
        assert_eq!(follower.cursor(), &SyncCursor { stream: at, groups: [(group, 2)].into() });
    }

    #[tokio::test]
    async fn entries_heard_before_the_first_catch_up_start_their_group_before_the_earliest() {
        let mut t = Timeline::new(&UserId::generate());
        let group = ConversationId::generate();
        t.join(&group);
        let timeline = shared(t);
        let mut follower = follower(&timeline, None).await;
        // Stored after the connection was registered, heard out of order before the store
        // was asked.
        let (e2, e3) = {
            let mut t = timeline.lock().unwrap();
            (t.post(&group, "g2"), t.post(&group, "g3"))
        };
        follower.heard(&group_event(e3.clone()));
        follower.heard(&group_event(e2.clone()));
        let items = catch_up_all(&mut follower).await;
        assert_eq!(shown(&items), expected(&[(group.as_str(), &[2, 3])]));
        assert_eq!(follower.admit(&group_event(e3)).await.unwrap(), Admission::Repeat);
        assert_eq!(follower.admit(&group_event(e2)).await.unwrap(), Admission::Repeat);
        assert_eq!(follower.cursor(), &SyncCursor { stream: cursor(1), groups: [(group, 3)].into() });
    }
}
