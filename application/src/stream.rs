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

use domain::{ConversationId, Cursor, Message, MessageId, Seq, SyncCursor, UserId};

use crate::ports::{
    Event, GroupRepository, MessageRepository, Notice, RepoError, RepoResult, StreamEntry, StreamItem,
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
}

/// One delivery, with the cursor as it stands right after it.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncItem {
    pub cursor: SyncCursor,
    pub event: SyncEvent,
}

/// What to do with a live event.
#[derive(Debug, Clone, PartialEq)]
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
        let head = messages.stream_head(&user).await?;
        let at = match since {
            None => {
                let positions = groups.groups_at(&user, head).await?;
                SyncCursor {
                    stream: head,
                    groups: positions.into_iter().map(|p| (p.group, p.last_seq)).collect(),
                }
            }
            Some(since) => {
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
                }
                since
            }
        };
        Ok(Self { messages, groups, user, at, ends: HashMap::new() })
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
            if entry.seq != last + 1 || end.is_some_and(|end| entry.seq > end) {
                break;
            }
            last = entry.seq;
            self.at.groups.insert(group.clone(), last);
            delivered.push(SyncItem { cursor: self.at.clone(), event: SyncEvent::Message(entry) });
        }
        Ok(delivered)
    }

    /// Takes the stream item right after the cursor, delivering at most `budget` items.
    async fn take(&mut self, item: StreamItem, budget: u32) -> RepoResult<Took> {
        debug_assert_eq!(item.cursor, self.at.stream.next());
        let delivered = match item.entry {
            StreamEntry::Message(message) => {
                self.at.stream = item.cursor;
                vec![SyncItem { cursor: self.at.clone(), event: SyncEvent::Message(message) }]
            }
            StreamEntry::Notice(Notice::Read { conversation, seq, message_id }) => {
                self.at.stream = item.cursor;
                let event = SyncEvent::Read { conversation, seq, up_to: message_id };
                vec![SyncItem { cursor: self.at.clone(), event }]
            }
            StreamEntry::Notice(Notice::Joined { group, seq }) => {
                self.at.stream = item.cursor;
                self.ends.remove(&group);
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

fn remaining(limit: u32, delivered: &[SyncItem]) -> u32 {
    limit.saturating_sub(u32::try_from(delivered.len()).unwrap_or(u32::MAX))
}

/// One connection's cursor, moved by what it delivers. It reads through the message and
/// group ports alone.
pub struct StreamFollower {
    reader: StreamReader,
}

impl StreamFollower {
    /// A follower for a connection of `user` resuming after `since` (checked as a sync's
    /// cursor is), or, without `since`, starting with what is stored from now on. Call it
    /// **before** the connection is registered for live events, then
    /// [`catch_up`](Self::catch_up) once it is: what is stored in between is read then, and
    /// nothing falls in the seam.
    pub async fn start(
        messages: Arc<dyn MessageRepository>,
        groups: Arc<dyn GroupRepository>,
        user: UserId,
        since: Option<SyncCursor>,
    ) -> Result<Self, FollowError> {
        Ok(Self { reader: StreamReader::resume(messages, groups, user, since).await? })
    }

    /// The cursor after the last delivery (or the starting one).
    pub fn cursor(&self) -> &SyncCursor {
        self.reader.cursor()
    }

    /// The next page of what the connection has not had; empty once caught up. Call it until
    /// it returns an empty page, delivering each page in order.
    pub async fn catch_up(&mut self) -> Result<Vec<SyncItem>, RepoError> {
        self.reader.read(PAGE).await
    }

    /// Decides about a live event; see [`Admission`].
    pub async fn admit(&mut self, event: &Event) -> Result<Admission, FollowError> {
        match event {
            Event::NewMessage { message, cursor } => {
                self.admit_at(*cursor, StreamEntry::Message(message.clone())).await
            }
            Event::Notice { notice, cursor } => {
                self.admit_at(*cursor, StreamEntry::Notice(notice.clone())).await
            }
            Event::GroupMessage { message, .. } => Ok(self.admit_entry(message).await?),
            Event::ConversationUpdated { .. }
            | Event::MessagesRead { .. }
            | Event::OnlineUsers(_)
            | Event::Typing { .. } => Ok(Admission::Pass),
        }
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
                StreamEntry::Notice(Notice::Joined { group, .. }) => {
                    let group = group.clone();
                    self.reader.take_whole(item).await?;
                    // What the notice makes visible: the group from the entry that added the user.
                    Admission::Fill(self.reader.read_group_whole(&group).await?)
                }
                // The group's entries up to the user's last one.
                StreamEntry::Notice(Notice::Left { .. }) => {
                    Admission::Fill(self.reader.take_whole(item).await?)
                }
                StreamEntry::Message(_) | StreamEntry::Notice(Notice::Read { .. }) => {
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
    async fn admit_entry(&mut self, entry: &Message) -> RepoResult<Admission> {
        let group = &entry.conversation_id;
        let Some(&had) = self.reader.at.groups.get(group) else {
            // Not a member at the cursor: if the user joins, the notice brings the group.
            return Ok(Admission::Drop);
        };
        if entry.seq <= had {
            return Ok(Admission::Repeat);
        }
        let end = self.reader.ends.get(group).copied();
        if entry.seq == had + 1 && end.is_none_or(|end| entry.seq <= end) {
            self.reader.at.groups.insert(group.clone(), entry.seq);
            return Ok(Admission::Deliver(SyncItem {
                cursor: self.reader.at.clone(),
                event: SyncEvent::Message(entry.clone()),
            }));
        }
        let mut missed = Vec::new();
        while self.reader.at.groups.get(group).is_some_and(|&had| had < entry.seq) {
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
