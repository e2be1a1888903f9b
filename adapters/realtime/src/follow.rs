//! A live connection's view of everything its user follows, the same on every transport:
//! what the connection replays when it opens, then what it makes of each event its registry
//! queue hands it.
//!
//! A transport session
//! 1. takes the registry's [`mark`](crate::ConnectionRegistry::mark), then calls
//!    [`Follow::start`] **before** registering the connection,
//! 2. registers it and calls [`Follow::registered`], then, while [`Follow::replaying`],
//!    sends the frames of [`Follow::replay`] (one page per call, in order),
//! 3. and passes everything taken from its queue through [`Follow::admit`], sending the
//!    frames it returns, in order (none for a repeat or for an entry of a group the user does
//!    not see; the stored run of entries when live events were overtaken or lost; everything
//!    stored after the cursor for a [`Queued::CatchUp`], queued when live events may have
//!    been lost with nothing after them to tell: see [`ConnectionRegistry::heal`](crate::ConnectionRegistry::heal)).
//!
//! Every frame of the stream (`newMessage`, `conversationRead`) carries the connection's
//! whole cursor as it stands right after it: see `application::StreamFollower`.
//!
//! On a [`FollowError`] the session closes the connection with a reason ([`stop_reason`]):
//! the client reconnects with `since` set to the last cursor it processed and loses nothing.
//!
//! The queue must be read during the replay too (frames other than the stream's go out at
//! once), or a long replay would fill it and get the connection evicted. An event of the
//! stream taken from it meanwhile is held back rather than sent: it was stored before it was
//! announced, so the replay, which reads on until the store has nothing more, reaches it;
//! only the furthest one of the user's stream and of each group is kept, and checked once
//! the replay ends, in case the store answered short.
//!
//! A connection without `since` waits on the store for at most
//! `application::stream::ANCHOR_DEADLINE`: [`Follow::start`] reads where everything the user
//! follows stands, before the connection is registered, so that everything stored after it
//! reaches the connection. If the store does not answer in time, the connection is
//! registered all the same, its replay is over at once, and it follows the events
//! themselves, from just before the first one of the stream (and of each group) it heard:
//! live events go out while the store is slow or down. Held back then, every event is kept
//! and handed over in order, since the store cannot fill a gap between them. See
//! `application::StreamFollower` for what this start may miss and how its cursors are
//! completed once the store answers.
//!
//! When the store answered, the replay of such a connection only has to read what was
//! stored between that read and the registration, and whatever of it was announced after
//! the registration reaches the connection live anyway. So the registry counts the events
//! of the streams it dispatches ([`ConnectionRegistry::mark`]), and when none that concerns
//! the connection went out in between, [`Follow::registered`] ends the replay without
//! asking the store: a connection without `since` costs the store one read less.

use std::collections::BTreeMap;
use std::sync::Arc;

use application::ports::{GroupRepository, MessageRepository};
use application::stream::SyncItem;
use application::{Admission, FollowError, StreamFollower};
use domain::{ConversationId, Cursor, Seq, SyncCursor, UserId};

use crate::dispatched::DispatchMark;
use crate::healing::{CatchUp, StreamPosition};
use crate::registry::{ConnectionRegistry, Outbound, Queued, Streamed};
use crate::wire::{encode_item, with_cursor};

mod reads;

/// What a connection is told when it cannot go on following its stream without a gap,
/// and is closed: resume with `since`, or start over.
pub fn stop_reason(error: &FollowError) -> &'static str {
    match error {
        FollowError::Storage(_) => "server error: reconnect with since",
        FollowError::Unreadable { .. } => "resync: reconnect with since",
        FollowError::Ahead { .. } | FollowError::GroupAhead { .. } => {
            "since is beyond the end of your message stream: start over from 0"
        }
        FollowError::InvalidCursor => "since is not a valid cursor: start over from 0",
    }
}

/// Whether the client must start over (from `0`) rather than resume with its cursor.
pub fn starts_over(error: &FollowError) -> bool {
    matches!(error, FollowError::Ahead { .. } | FollowError::GroupAhead { .. } | FollowError::InvalidCursor)
}

/// Logs why a connection stops following its stream, once for every transport.
pub fn log_stop(error: &FollowError) {
    match error {
        FollowError::Storage(error) => {
            tracing::warn!(error = %error, "a connection's stream could not be read")
        }
        FollowError::Unreadable { announced } => {
            tracing::info!(%announced, "closing a connection that cannot follow its stream")
        }
        FollowError::Ahead { .. } | FollowError::GroupAhead { .. } | FollowError::InvalidCursor => {
            tracing::info!(error = %error, "refusing a resume from a cursor the user cannot have")
        }
    }
}

/// Events of the stream taken from the queue during the replay: the furthest of the user's
/// stream and of each group, or every one while the follower does not know its start yet.
#[derive(Default)]
struct Held {
    stream: BTreeMap<Cursor, Arc<Streamed>>,
    groups: BTreeMap<ConversationId, BTreeMap<Seq, Arc<Streamed>>>,
}

impl Held {
    /// Keeps `streamed`; with `every`, beside those kept already, else instead of them when
    /// further.
    fn keep(&mut self, streamed: Arc<Streamed>, every: bool) {
        if let Some(cursor) = streamed.event.stream_position() {
            self.stream.insert(cursor, streamed.clone());
            while !every && self.stream.len() > 1 {
                self.stream.pop_first();
            }
        }
        if let Some((group, seq)) = streamed.event.group_entry() {
            let group = self.groups.entry(group.clone()).or_default();
            group.insert(seq, streamed.clone());
            while !every && group.len() > 1 {
                group.pop_first();
            }
        }
    }

    /// Every event kept, the stream's first, each source in order.
    fn take(&mut self) -> Vec<Arc<Streamed>> {
        let stream = std::mem::take(&mut self.stream).into_values();
        let groups = std::mem::take(&mut self.groups).into_values().flat_map(BTreeMap::into_values);
        stream.chain(groups).collect()
    }
}

/// One connection's [`StreamFollower`] and where its replay stands.
pub struct Follow {
    follower: StreamFollower,
    /// Started without `since`: at the end of everything, when the store answered.
    at_the_end: bool,
    replaying: bool,
    held: Held,
    position: Option<StreamPosition>,
    /// The follower's queries to the store, counted for the healing figures.
    reads: reads::Reads,
}

impl Follow {
    /// Starts after `since` (checked against the store), or, without it, with what is
    /// stored from now on (where that is, read within the deadline; see the module's
    /// documentation). Call it before the connection is registered for live events.
    pub async fn start(
        messages: Arc<dyn MessageRepository>,
        groups: Arc<dyn GroupRepository>,
        user: UserId,
        since: Option<SyncCursor>,
    ) -> Result<Self, FollowError> {
        let reads = reads::Reads::default();
        let at_the_end = since.is_none();
        let follower =
            StreamFollower::start(reads.messages(messages), reads.groups(groups), user, since).await?;
        Ok(Self { follower, at_the_end, replaying: true, held: Held::default(), position: None, reads })
    }

    /// Once the connection is registered: ends the replay at once when the follower started
    /// at the end of everything and `registry` dispatched nothing that concerns it since
    /// `mark`, taken before [`Follow::start`] (see [`ConnectionRegistry::quiet_since`]):
    /// whatever was stored after the start then reaches the connection live, and the replay
    /// would only ask the store to hear that there is nothing.
    pub fn registered(&mut self, registry: &ConnectionRegistry, mark: &DispatchMark) {
        let in_groups = !self.follower.cursor().groups.is_empty();
        if self.at_the_end
            && self.replaying
            && !self.follower.unanchored()
            && registry.quiet_since(mark, in_groups)
        {
            self.replaying = false;
        }
    }

    /// The cursor after the last frame of the stream (or the starting one).
    pub fn cursor(&self) -> &SyncCursor {
        self.follower.cursor()
    }

    /// Publishes, from now on, the last position of the user's stream sent to the client
    /// in `position` (the registry's, from [`ConnectionGuard::position`](crate::ConnectionGuard::position)),
    /// once the replay is over and while the follower knows where its stream stands: a
    /// periodic check of the stream heads compares it with the store.
    pub fn track(&mut self, position: StreamPosition) {
        self.position = Some(position);
        self.publish();
    }

    fn publish(&self) {
        if let Some(position) = &self.position {
            let known = !self.replaying && !self.follower.unanchored();
            position.set(known.then(|| self.follower.cursor().stream));
        }
    }

    /// Whether stored entries may remain to replay: call [`Follow::replay`] again.
    pub fn replaying(&self) -> bool {
        self.replaying
    }

    /// The next page of stored entries the connection has not had, as frames. Once the
    /// store has no more, the replay is over: what is returned then is at most the outcome
    /// of the events held back meanwhile (see the module's documentation).
    pub async fn replay(&mut self) -> Result<Vec<Outbound>, FollowError> {
        let frames = self.replay_page().await;
        self.publish();
        frames
    }

    async fn replay_page(&mut self) -> Result<Vec<Outbound>, FollowError> {
        if !self.replaying {
            return Ok(Vec::new());
        }
        let page = self.follower.catch_up().await?;
        if !page.is_empty() {
            return Ok(frames(&page, self.follower.user()));
        }
        self.replaying = false;
        let mut sent = Vec::new();
        for streamed in self.held.take() {
            sent.extend(self.live(&streamed).await?);
        }
        Ok(sent)
    }

    /// The frames to send for one item of the registry queue, in order: a frame as it is;
    /// for an event of the stream, its frame with the connection's cursor, nothing (a
    /// repeat, an entry the user does not see, a notice without a frame of its own, or an
    /// event the replay will reach), or the stored run of entries that ends with it.
    pub async fn admit(&mut self, queued: Queued) -> Result<Vec<Outbound>, FollowError> {
        let frames = self.admit_one(queued).await;
        self.publish();
        frames
    }

    async fn admit_one(&mut self, queued: Queued) -> Result<Vec<Outbound>, FollowError> {
        match queued {
            Queued::Frame(frame) => Ok(vec![frame]),
            Queued::Stream(streamed) if self.replaying => {
                self.follower.heard(&streamed.event);
                self.held.keep(streamed, self.follower.unanchored());
                Ok(Vec::new())
            }
            Queued::Stream(streamed) => self.live(&streamed).await,
            // The replay reads on until the store has nothing more anyway.
            Queued::CatchUp(_) if self.replaying => Ok(Vec::new()),
            Queued::CatchUp(catch_up) => self.catch_up(&catch_up).await,
        }
    }

    /// Everything stored after the cursor, read under one of the instance's permits (so that
    /// after an outage, connections read the store a few at a time): what live events lost
    /// on their way would have brought. The events queued behind it are repeats then.
    async fn catch_up(&mut self, catch_up: &CatchUp) -> Result<Vec<Outbound>, FollowError> {
        let _reading = catch_up.start().await;
        let before = self.reads.count();
        let read = self.read_on().await;
        catch_up.healing().record_reads(self.reads.count() - before);
        let items = read?;
        catch_up.healing().record(items.len());
        Ok(frames(&items, self.follower.user()))
    }

    /// Every page the store has after the cursor.
    async fn read_on(&mut self) -> Result<Vec<SyncItem>, FollowError> {
        let mut items = Vec::new();
        loop {
            let page = self.follower.catch_up().await?;
            if page.is_empty() {
                return Ok(items);
            }
            items.extend(page);
        }
    }

    async fn live(&mut self, streamed: &Streamed) -> Result<Vec<Outbound>, FollowError> {
        Ok(match self.follower.admit(&streamed.event).await? {
            Admission::Deliver(item) => match &streamed.frame {
                // Encoded once for every connection: only the cursor is this one's.
                Some(frame) => {
                    let data = with_cursor(&frame.data, &item.cursor.to_string());
                    vec![Outbound { name: frame.name, data: data.into() }]
                }
                None => frames(std::slice::from_ref(&item), self.follower.user()),
            },
            Admission::Fill(items) => frames(&items, self.follower.user()),
            Admission::Repeat | Admission::Drop => Vec::new(),
            Admission::Pass => streamed.frame.iter().cloned().collect(),
        })
    }
}

/// Deliveries of the stream as the frames a live event would have become.
fn frames(items: &[SyncItem], reader: &UserId) -> Vec<Outbound> {
    items
        .iter()
        .map(|item| {
            let (name, data) = encode_item(item, reader);
            Outbound { name, data: data.into() }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use application::ports::Event;
    use application::ports::{
        Appended, Changed, ConversationRepository as _, GroupAppended, GroupChange, Notice, RepoError,
    };
    use chat_memory::MemoryStore;
    use domain::{
        Conversation, GroupName, Member, Message, MessageBody, MessageId, ParticipantPair, Role, SystemEvent,
    };

    /// The reference store, with helpers that write through the ports as the use cases do,
    /// and return the event each write announces.
    struct World {
        store: Arc<MemoryStore>,
    }

    fn text(body: &str) -> MessageBody {
        MessageBody::parse(body).unwrap()
    }

    fn message(conversation: &ConversationId, from: &UserId, to: Option<&UserId>, body: &str) -> Message {
        Message {
            reply_to: None,
            changed: None,
            id: MessageId::generate(),
            conversation_id: conversation.clone(),
            sender_id: from.clone(),
            receiver_id: to.cloned(),
            body: text(body),
            system: None,
            seq: 0,
            created_at: chrono::Utc::now(),
            client_id: None,
        }
    }

    impl World {
        fn new() -> Self {
            Self { store: Arc::new(MemoryStore::new()) }
        }

        async fn follow(&self, user: &UserId, since: Option<SyncCursor>) -> Result<Follow, FollowError> {
            Follow::start(self.store.clone(), self.store.clone(), user.clone(), since).await
        }

        /// A direct message; the event for `reader`.
        async fn direct(&self, from: &UserId, to: &UserId, reader: &UserId) -> Event {
            let pair = ParticipantPair::new(from.clone(), to.clone()).unwrap();
            let conversation = Conversation::start(pair, chrono::Utc::now());
            let sent = message(&conversation.id, from, Some(to), "hi");
            let Appended::Created(stored) = self.store.append(&conversation, &sent).await.unwrap() else {
                panic!("stored");
            };
            let cursor = stored.cursor_for(reader).unwrap();
            Event::NewMessage { message: stored.message, cursor }
        }

        /// A group of `members` created by the first; the notices of each member.
        async fn group(&self, members: &[&UserId]) -> (ConversationId, Vec<Event>) {
            let now = chrono::Utc::now();
            let id = ConversationId::generate();
            let name = GroupName::parse("Team").unwrap();
            let group = domain::Group {
                id: id.clone(),
                name: name.clone(),
                created_by: members[0].clone(),
                created_at: now,
                updated_at: now,
                last_seq: 0,
            };
            let created = Message {
                system: Some(SystemEvent::Created {
                    actor: members[0].clone(),
                    name,
                    members: members.iter().map(|m| (*m).clone()).collect(),
                }),
                ..message(&id, members[0], None, "created")
            };
            let members: Vec<Member> = members
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let role = if i == 0 { Role::Owner } else { Role::Member };
                    Member::joining((*m).clone(), role, now, 1)
                })
                .collect();
            let notices = self.store.create(&group, &members, &created).await.unwrap();
            (id, notices.into_iter().map(|n| Event::Notice { notice: n.notice, cursor: n.cursor }).collect())
        }

        async fn send(&self, group: &ConversationId, from: &UserId) -> Event {
            let GroupAppended::Created { message, version } =
                self.store.append_to_group(&message(group, from, None, "hello")).await.unwrap()
            else {
                panic!("stored");
            };
            Event::GroupMessage { message, version }
        }

        /// `actor` removes `user` (or adds them): the entry's event and the user's notice.
        async fn change(
            &self,
            group: &ConversationId,
            actor: &UserId,
            user: &UserId,
            add: bool,
        ) -> (Event, Event) {
            let version = self.store.member_ids(group).await.unwrap().unwrap().1;
            let users = vec![user.clone()];
            let system = if add {
                SystemEvent::Added { actor: actor.clone(), users: users.clone() }
            } else {
                SystemEvent::Removed { actor: actor.clone(), users: users.clone() }
            };
            let change = GroupChange {
                expected_version: version,
                entry: Message { system: Some(system), ..message(group, actor, None, "changed") },
                rename: None,
                add: if add { vec![(user.clone(), Role::Member)] } else { Vec::new() },
                remove: if add { Vec::new() } else { users },
                roles: Vec::new(),
            };
            let Changed::Applied { entry, version, notices } =
                self.store.change(group, &change).await.unwrap()
            else {
                panic!("applied");
            };
            let notice = notices.into_iter().next().unwrap();
            (
                Event::GroupMessage { message: entry, version },
                Event::Notice { notice: notice.notice, cursor: notice.cursor },
            )
        }
    }

    /// What the registry would queue for one event (its first item).
    fn queued(event: &Event) -> Queued {
        Queued::encode(event).remove(0)
    }

    fn data(frames: &[Outbound]) -> Vec<serde_json::Value> {
        frames.iter().map(|f| serde_json::from_str(&f.data).unwrap()).collect()
    }

    fn cursors(frames: &[Outbound]) -> Vec<String> {
        data(frames).iter().map(|d| d["cursor"].as_str().expect("a cursor").to_owned()).collect()
    }

    async fn replay_all(follow: &mut Follow) -> Vec<Outbound> {
        let mut all = Vec::new();
        while follow.replaying() {
            all.extend(follow.replay().await.unwrap());
        }
        all
    }

    #[tokio::test]
    async fn the_replay_sends_what_follows_since_then_live_events_go_out_with_the_connections_cursor() {
        let world = World::new();
        let (me, friend) = (UserId::generate(), UserId::generate());
        world.direct(&friend, &me, &me).await;
        world.direct(&me, &friend, &me).await;
        let mut follow = world.follow(&me, Some(SyncCursor::at(Cursor::START.next()))).await.unwrap();
        assert_eq!(cursors(&replay_all(&mut follow).await), ["2"]);

        let live = world.direct(&friend, &me, &me).await;
        let frames = follow.admit(queued(&live)).await.unwrap();
        assert_eq!(frames[0].name, "newMessage");
        assert_eq!(cursors(&frames), ["3"]);
        assert!(follow.admit(queued(&live)).await.unwrap().is_empty(), "a repeat is dropped");
    }

    /// A connection of `user` opened without `since` as the hub opens it: the registry's
    /// mark, the start, then `seam` (what happens before the registration), then the
    /// registration.
    async fn connect<F: std::future::Future<Output = ()>>(
        world: &World,
        registry: &Arc<ConnectionRegistry>,
        user: &UserId,
        seam: impl FnOnce() -> F,
    ) -> Follow {
        let mark = registry.mark(user);
        let mut follow = world.follow(user, None).await.unwrap();
        seam().await;
        follow.registered(registry, &mark);
        follow
    }

    #[tokio::test]
    async fn a_start_at_the_end_skips_its_replay_when_nothing_was_dispatched_before_the_registration() {
        let world = World::new();
        let registry = ConnectionRegistry::new(8, 0);
        let (me, friend) = (UserId::generate(), UserId::generate());
        world.direct(&friend, &me, &me).await;
        let (group, _) = world.group(&[&friend, &me]).await;
        let stored = std::sync::Mutex::new(Vec::new());
        // Stored between the start and the registration, dispatched after it: heard live.
        let mut follow = connect(&world, &registry, &me, || async {
            let direct = world.direct(&friend, &me, &me).await;
            let entry = world.send(&group, &friend).await;
            stored.lock().unwrap().extend([direct, entry]);
        })
        .await;
        assert!(!follow.replaying(), "nothing to replay");
        let reads = follow.reads.count();
        for event in stored.into_inner().unwrap() {
            assert_eq!(follow.admit(queued(&event)).await.unwrap().len(), 1, "delivered live");
        }
        assert_eq!(follow.reads.count(), reads, "without a word to the store");
    }

    #[tokio::test]
    async fn what_was_dispatched_before_the_registration_is_replayed() {
        let world = World::new();
        let (me, friend) = (UserId::generate(), UserId::generate());
        let (group, _) = world.group(&[&friend, &me]).await;

        let registry = ConnectionRegistry::new(8, 0);
        let mut follow = connect(&world, &registry, &me, || async {
            let direct = world.direct(&friend, &me, &me).await;
            registry.deliver(Some(std::slice::from_ref(&me)), &direct);
        })
        .await;
        assert!(follow.replaying());
        assert_eq!(data(&replay_all(&mut follow).await).len(), 1, "the direct message");

        let registry = ConnectionRegistry::new(8, 0);
        let mut follow = connect(&world, &registry, &me, || async {
            let entry = world.send(&group, &friend).await;
            registry.deliver(None, &entry);
        })
        .await;
        assert!(follow.replaying(), "a member may miss a group's entry");
        assert_eq!(data(&replay_all(&mut follow).await).len(), 1, "the group's entry");
    }

    #[tokio::test]
    async fn a_resume_replays_even_when_nothing_was_dispatched() {
        let world = World::new();
        let registry = ConnectionRegistry::new(8, 0);
        let (me, friend) = (UserId::generate(), UserId::generate());
        world.direct(&friend, &me, &me).await;
        let mark = registry.mark(&me);
        let mut follow = world.follow(&me, Some(SyncCursor::START)).await.unwrap();
        follow.registered(&registry, &mark);
        assert_eq!(data(&replay_all(&mut follow).await).len(), 1, "what came after the cursor");
    }

    #[tokio::test]
    async fn a_catch_up_delivers_what_live_events_lost_once_in_order_and_counts_it() {
        let world = World::new();
        let (me, friend) = (UserId::generate(), UserId::generate());
        let (group, _) = world.group(&[&friend, &me]).await;
        let mut follow = world.follow(&me, None).await.unwrap();
        assert!(replay_all(&mut follow).await.is_empty());
        let first = world.direct(&friend, &me, &me).await;
        assert_eq!(follow.admit(queued(&first)).await.unwrap().len(), 1);

        // Lost on their way: a direct message and a group entry, then a repeat of the first.
        let lost_direct = world.direct(&friend, &me, &me).await;
        let lost_entry = world.send(&group, &friend).await;
        let healing = Arc::new(crate::Healing::new(1));
        let pending = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let catch_up = Queued::CatchUp(Arc::new(CatchUp::queue(&healing, &pending).unwrap()));
        assert_eq!(healing.backlog(), 1);
        let frames = follow.admit(catch_up).await.unwrap();
        assert_eq!(frames.len(), 2, "{frames:?}");
        // The group first, then the stream (the reader's order).
        assert_eq!(cursors(&frames), [format!("2~{group}.2"), format!("3~{group}.2")]);
        assert_eq!((healing.backlog(), healing.delivered(), healing.healed()), (0, 2, 1));
        let reads = healing.store_reads();
        assert!(reads >= 2, "the group's entries and the stream: {reads}");

        // The lost events arriving late are repeats; a second catch-up finds nothing.
        for late in [&first, &lost_direct, &lost_entry] {
            assert!(follow.admit(queued(late)).await.unwrap().is_empty());
        }
        let again = Queued::CatchUp(Arc::new(CatchUp::queue(&healing, &pending).unwrap()));
        assert!(follow.admit(again).await.unwrap().is_empty());
        assert_eq!(healing.store_reads() - reads, 2, "one query for the group, one for the stream");
        let next = world.direct(&friend, &me, &me).await;
        assert_eq!(cursors(&follow.admit(queued(&next)).await.unwrap()), [format!("4~{group}.2")]);
    }

    #[tokio::test]
    async fn a_group_entry_carries_the_whole_cursor_and_reaches_only_members() {
        let world = World::new();
        let (me, friend, stranger) = (UserId::generate(), UserId::generate(), UserId::generate());
        let (group, _) = world.group(&[&friend, &me]).await;
        let mut mine = world.follow(&me, None).await.unwrap();
        let mut theirs = world.follow(&stranger, None).await.unwrap();
        assert!(replay_all(&mut mine).await.is_empty() && replay_all(&mut theirs).await.is_empty());

        let entry = world.send(&group, &friend).await;
        let frames = mine.admit(queued(&entry)).await.unwrap();
        assert_eq!(cursors(&frames), [format!("1~{group}.2")]);
        assert_eq!(data(&frames)[0]["conversationId"], group.as_str());
        assert!(data(&frames)[0]["receiverId"].is_null());
        assert_eq!(mine.cursor().to_string(), format!("1~{group}.2"));
        assert!(theirs.admit(queued(&entry)).await.unwrap().is_empty(), "not a member: dropped");
    }

    #[tokio::test]
    async fn events_taken_during_the_replay_are_held_and_not_sent_twice() {
        let world = World::new();
        let (me, friend) = (UserId::generate(), UserId::generate());
        let (group, _) = world.group(&[&friend, &me]).await;
        let mut follow = world.follow(&me, Some(SyncCursor::START)).await.unwrap();
        // Announced while the replay is going on.
        let entry = world.send(&group, &friend).await;
        let direct = world.direct(&friend, &me, &me).await;
        assert!(follow.admit(queued(&entry)).await.unwrap().is_empty());
        assert!(follow.admit(queued(&direct)).await.unwrap().is_empty());
        let typing = Event::Typing {
            from: friend.clone(),
            to: application::ports::TypingTarget::User(me.clone()),
            is_typing: true,
        };
        let passed = follow.admit(queued(&typing)).await.unwrap();
        assert_eq!(passed.len(), 1, "other frames pass at once");
        assert_eq!(passed[0].name, "typing");

        let replayed = data(&replay_all(&mut follow).await);
        let kinds: Vec<&str> = replayed.iter().map(|d| d["message"].as_str().unwrap()).collect();
        // The stream first (the notice of joining, then the direct message), then the group
        // from its first entry on.
        assert_eq!(kinds, ["hi", "created", "hello"]);
        assert!(follow.admit(queued(&entry)).await.unwrap().is_empty());
        assert!(follow.admit(queued(&direct)).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_removed_member_gets_the_removal_and_nothing_after_it() {
        let world = World::new();
        let (owner, me) = (UserId::generate(), UserId::generate());
        let (group, _) = world.group(&[&owner, &me]).await;
        let mut follow = world.follow(&me, None).await.unwrap();
        replay_all(&mut follow).await;

        let (removal, left) = world.change(&group, &owner, &me, false).await;
        // The entry goes to the members after the change, not to me: the notice brings it.
        let frames = follow.admit(queued(&left)).await.unwrap();
        let shown = data(&frames);
        assert_eq!(shown.len(), 1, "{shown:?}");
        assert_eq!((shown[0]["kind"].as_str(), shown[0]["seq"].as_u64()), (Some("system"), Some(2)));
        assert_eq!(shown[0]["cursor"], format!("1~{group}.2"), "resuming there takes the notice again");
        assert_eq!(follow.cursor().to_string(), "2", "then the group is no longer in the cursor");
        assert!(follow.admit(queued(&removal)).await.unwrap().is_empty());
        let after = world.send(&group, &owner).await;
        assert!(follow.admit(queued(&after)).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_added_member_gets_the_group_from_the_entry_that_added_them() {
        let world = World::new();
        let (owner, other, me) = (UserId::generate(), UserId::generate(), UserId::generate());
        let (group, _) = world.group(&[&owner, &other]).await;
        world.send(&group, &owner).await;
        let mut follow = world.follow(&me, None).await.unwrap();
        replay_all(&mut follow).await;

        let (added, joined) = world.change(&group, &owner, &me, true).await;
        // The entry may come first: before the notice, the group is not followed yet.
        assert!(follow.admit(queued(&added)).await.unwrap().is_empty());
        let frames = follow.admit(queued(&joined)).await.unwrap();
        assert_eq!(cursors(&frames), [format!("1~{group}.3")]);
        assert_eq!(data(&frames)[0]["system"]["action"], "added");
        let next = world.send(&group, &other).await;
        assert_eq!(cursors(&follow.admit(queued(&next)).await.unwrap()), [format!("1~{group}.4")]);
    }

    #[tokio::test]
    async fn a_read_on_another_device_is_conversation_read_and_a_join_notice_alone_has_no_frame() {
        let world = World::new();
        let (me, friend) = (UserId::generate(), UserId::generate());
        let (group, _) = world.group(&[&friend, &me]).await;
        let entry = world.send(&group, &friend).await;
        let mut follow = world.follow(&me, None).await.unwrap();
        replay_all(&mut follow).await;
        let Event::GroupMessage { message, .. } = &entry else { unreachable!() };
        let application::ports::ReadMoved::Moved { seq, cursor } =
            world.store.mark_read(&group, &me, &message.id).await.unwrap()
        else {
            panic!("moved");
        };
        let read = Event::Notice {
            notice: Notice::Read { conversation: group.clone(), seq, message_id: message.id.clone() },
            cursor,
        };
        let frames = follow.admit(queued(&read)).await.unwrap();
        assert_eq!(frames[0].name, "conversationRead");
        assert_eq!(cursors(&frames), [format!("2~{group}.2")]);
        assert!(world.store.member(&group, &me).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_cursor_the_user_cannot_have_is_refused_with_a_reason_to_start_over() {
        let world = World::new();
        let (me, friend) = (UserId::generate(), UserId::generate());
        let (group, _) = world.group(&[&friend, &me]).await;
        // My stream has the notice of joining at 1: at 1 I am in the group.
        let without_the_group =
            world.follow(&me, Some(SyncCursor::at(Cursor::START.next()))).await.err().unwrap();
        assert!(matches!(without_the_group, FollowError::InvalidCursor), "{without_the_group}");
        assert!(starts_over(&without_the_group));
        assert_eq!(stop_reason(&without_the_group), "since is not a valid cursor: start over from 0");
        let beyond = world.follow(&me, Some(SyncCursor::at(Cursor::new(5).unwrap()))).await.err().unwrap();
        assert!(starts_over(&beyond));
        assert_eq!(stop_reason(&beyond), "since is beyond the end of your message stream: start over from 0");
        let ok = SyncCursor { stream: Cursor::START.next(), groups: [(group, 0)].into() };
        assert!(world.follow(&me, Some(ok)).await.is_ok());
    }

    #[tokio::test]
    async fn an_announced_message_the_store_does_not_hold_stops_the_connection() {
        let world = World::new();
        let (me, friend) = (UserId::generate(), UserId::generate());
        let mut follow = world.follow(&me, None).await.unwrap();
        replay_all(&mut follow).await;
        let mut event = world.direct(&friend, &me, &me).await;
        if let Event::NewMessage { cursor, .. } = &mut event {
            *cursor = Cursor::new(4).unwrap();
        }
        let stop = follow.admit(queued(&event)).await.unwrap_err();
        assert!(matches!(stop, FollowError::Unreadable { .. }), "{stop}");
        assert_eq!(stop_reason(&stop), "resync: reconnect with since");
        assert!(!starts_over(&stop));
    }

    #[tokio::test]
    async fn a_storage_failure_at_a_resume_is_reported() {
        let mut messages = application::ports::MockMessageRepository::new();
        messages.expect_stream_head().returning(|_| Err(RepoError::Unavailable(anyhow::anyhow!("down"))));
        let groups = Arc::new(application::ports::MockGroupRepository::new());
        let since = Some(SyncCursor::at(Cursor::new(3).unwrap()));
        let stop = Follow::start(Arc::new(messages), groups, UserId::generate(), since).await.err().unwrap();
        assert!(matches!(stop, FollowError::Storage(_)));
        assert_eq!(stop_reason(&stop), "server error: reconnect with since");
        assert!(!starts_over(&stop));
    }

    #[tokio::test]
    async fn without_since_a_store_that_fails_at_the_start_leaves_live_events_going_out() {
        let down = || RepoError::Unavailable(anyhow::anyhow!("down"));
        let messages = Arc::new(application::ports::MockMessageRepository::new());
        let mut groups = application::ports::MockGroupRepository::new();
        // Asked once, at the start; the replay asks nothing.
        groups.expect_groups_at_head().times(1).returning(move |_| Err(down()));
        let (me, friend) = (UserId::generate(), UserId::generate());
        let mut follow = Follow::start(messages, Arc::new(groups), me.clone(), None).await.unwrap();
        let pair = ParticipantPair::new(friend.clone(), me.clone()).unwrap();
        let conversation = Conversation::start(pair, chrono::Utc::now());
        let event = |n: u64| Event::NewMessage {
            message: message(&conversation.id, &friend, Some(&me), "hi"),
            cursor: Cursor::new(n).unwrap(),
        };
        // Heard out of order while the store is asked.
        assert!(follow.admit(queued(&event(6))).await.unwrap().is_empty());
        assert!(follow.admit(queued(&event(5))).await.unwrap().is_empty());
        let replayed = replay_all(&mut follow).await;
        assert_eq!(cursors(&replayed), ["5", "6"], "held back, then handed over in order");
        assert_eq!(cursors(&follow.admit(queued(&event(7))).await.unwrap()), ["7"]);
        assert!(follow.admit(queued(&event(6))).await.unwrap().is_empty(), "a repeat is dropped");
    }

    #[tokio::test]
    async fn without_since_the_replay_starts_before_the_earliest_event_heard_while_the_store_was_asked() {
        let world = World::new();
        let (me, friend) = (UserId::generate(), UserId::generate());
        world.direct(&friend, &me, &me).await;
        let mut follow = world.follow(&me, None).await.unwrap();
        // Stored once the connection is registered, announced out of order.
        let second = world.direct(&friend, &me, &me).await;
        let third = world.direct(&me, &friend, &me).await;
        assert!(follow.admit(queued(&third)).await.unwrap().is_empty());
        assert!(follow.admit(queued(&second)).await.unwrap().is_empty());
        assert_eq!(cursors(&replay_all(&mut follow).await), ["2", "3"]);
        assert!(follow.admit(queued(&second)).await.unwrap().is_empty());
        let fourth = world.direct(&friend, &me, &me).await;
        assert_eq!(cursors(&follow.admit(queued(&fourth)).await.unwrap()), ["4"]);
    }

    #[tokio::test]
    async fn without_since_a_connection_heard_from_nothing_starts_at_the_end_of_everything() {
        let world = World::new();
        let (me, friend) = (UserId::generate(), UserId::generate());
        let (group, _) = world.group(&[&friend, &me]).await;
        world.send(&group, &friend).await;
        world.direct(&friend, &me, &me).await;
        let mut follow = world.follow(&me, None).await.unwrap();
        assert!(replay_all(&mut follow).await.is_empty());
        assert_eq!(follow.cursor().to_string(), format!("2~{group}.2"));
        let entry = world.send(&group, &friend).await;
        assert_eq!(cursors(&follow.admit(queued(&entry)).await.unwrap()), [format!("2~{group}.3")]);
    }
}
