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
        let mut quiet_after = HashMap::new();
        let at = match since {
            None => {
                let positions = groups.groups_at(&user, head).await?;
                quiet_after.extend(positions.iter().map(|p| (p.group.clone(), p.last_seq)));
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
                    quiet_after.insert(position.group, position.last_seq);
                }
                since
            }
        };
        Ok(Self { messages, groups, user, at, ends: HashMap::new(), quiet_after })
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
                self.quiet_after.remove(&group);
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
        Ok(Self { reader: StreamReader::resume(messages, groups, user, since).await?.follow_live() })
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
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
    async fn start_without_since_begins_at_the_end_of_everything() {
        let s = story();
        let mut follower = follower(&s.timeline, None).await;
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
    async fn a_store_failure_at_start_is_reported() {
        let mut messages = MockMessageRepository::new();
        messages.expect_stream_head().returning(|_| Err(RepoError::Unavailable(anyhow::anyhow!("down"))));
        let started = StreamFollower::start(
            Arc::new(messages),
            Arc::new(MockGroupRepository::new()),
            UserId::generate(),
            None,
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
        let mut follower = follower(&timeline, None).await;
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
        let follower = follower(&timeline, None).await;
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
        let mut follower = follower(&timeline, None).await;
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
}
