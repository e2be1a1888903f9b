//! Which connections each user has open on this instance, with the token each was opened
//! with, and delivery to them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use application::ports::{Event, TokenConnections};
use domain::{Cursor, Timestamp, UserId};
use tokio::time::Instant;

use crate::dispatched::{DispatchMark, Dispatched};
use crate::healing::{CatchUp, Healing, StreamPosition};
use crate::members::Members;
use crate::wire::{encode_event, in_stream};

/// A frame for the client, encoded once and shared by every connection it goes to. Each
/// transport frames it its own way (`{"event":…}` for `/ws`, `42[…]` for Socket.IO).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    pub name: &'static str,
    pub data: Arc<str>,
}

impl Outbound {
    /// The frames an event that is not part of a stream becomes (see [`Queued::encode`]).
    pub fn encode(event: &Event) -> Vec<Outbound> {
        encode_event(event).into_iter().map(|(name, data)| Outbound { name, data: data.into() }).collect()
    }
}

/// What the registry queues for a connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Queued {
    /// A frame that goes out as it is.
    Frame(Outbound),
    /// An event of the connection's stream (a direct message, a group entry, a notice): the
    /// session passes it through its [`Follow`](crate::Follow), which decides whether and
    /// where it goes and gives its frame the connection's cursor.
    Stream(Arc<Streamed>),
    /// Live events may have been lost on their way (see [`ConnectionRegistry::heal`]): the
    /// follower reads the store after its cursor and sends what it had not had.
    CatchUp(Arc<CatchUp>),
}

/// An event of a stream, with its frame encoded once without a cursor.
#[derive(Debug, PartialEq)]
pub struct Streamed {
    pub event: Event,
    /// `None` for a notice that has no frame of its own (joining or leaving a group).
    pub frame: Option<Outbound>,
}

impl Queued {
    /// What one event becomes in each queue it goes to, each payload serialized once.
    pub fn encode(event: &Event) -> Vec<Queued> {
        if !in_stream(event) {
            return Outbound::encode(event).into_iter().map(Queued::Frame).collect();
        }
        let frame = Outbound::encode(event).into_iter().next();
        vec![Queued::Stream(Arc::new(Streamed { event: event.clone(), frame }))]
    }

    /// The frame, if this is one.
    pub fn frame(&self) -> Option<&Outbound> {
        match self {
            Queued::Frame(frame) => Some(frame),
            Queued::Stream(_) | Queued::CatchUp(_) => None,
        }
    }
}

pub type Receiver = crate::queue::Receiver<Queued>;

/// The token a connection was opened with: the connection ends when it is revoked (see
/// [`TokenConnections`]) or expires (each session watches [`SessionToken::deadline`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionToken {
    /// The token's unique id (`jti`).
    pub id: String,
    pub expires_at: Timestamp,
}

impl SessionToken {
    /// When the token expires, on the runtime's clock (now, if it has already).
    pub fn deadline(&self) -> Instant {
        let left = (self.expires_at - chrono::Utc::now()).to_std().unwrap_or(Duration::ZERO);
        Instant::now() + left
    }
}

/// Why the server ends a live connection, on every transport. The registry drops a
/// connection for the first two; its session ends it for the other two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Its queue was full: the client fell too far behind.
    TooSlow,
    /// The token it was opened with was revoked (a logout).
    Revoked,
    /// The token it was opened with expired (see [`SessionToken::deadline`]).
    Expired,
    /// The server is shutting down.
    ShuttingDown,
}

impl Ended {
    /// What the client is told.
    pub fn reason(self) -> &'static str {
        match self {
            Ended::TooSlow => "too slow: events were not read in time",
            Ended::Revoked => "session ended: the token was revoked (logged out)",
            Ended::Expired => "session ended: the token expired",
            Ended::ShuttingDown => "server shutting down",
        }
    }
}

/// How long a revoked token id is remembered, to refuse it to a connection whose handshake
/// was authenticated just before the revocation and registers just after: far longer than
/// the time between the two (a read of the store, within its deadline).
const REMEMBER_REVOKED: Duration = Duration::from_secs(60);

struct Connection {
    id: u64,
    token_id: String,
    sender: crate::queue::QueueSender<Queued>,
    /// A catch-up is queued for it and has not started reading (see [`CatchUp`]).
    healing: Arc<AtomicBool>,
    /// The last position of its user's stream it was sent, as its session publishes it.
    position: StreamPosition,
}

/// The connections of this instance, by user.
///
/// The lock is held only for map look-ups and `try_send`s, never across an await, so a slow
/// connection can't hold up delivery to anyone else: when its queue is full it is dropped
/// from the registry, which ends its session (see [`ConnectionGuard::ended`]); so is a
/// connection whose token is revoked.
pub struct ConnectionRegistry {
    connections: RwLock<HashMap<UserId, Vec<Connection>>>,
    next_id: AtomicU64,
    queue_capacity: usize,
    max_per_user: usize,
    shutting_down: AtomicBool,
    /// Connections dropped by the registry, and why, until their guard is dropped.
    ended: RwLock<HashMap<u64, Ended>>,
    /// Wakes sessions blocked on a client that stopped reading when any connection is ended.
    ending: tokio::sync::Notify,
    /// Token ids revoked lately, and when (see [`REMEMBER_REVOKED`]).
    revoked: Mutex<HashMap<String, std::time::Instant>>,
    /// Catching connections up from the store (see [`ConnectionRegistry::heal`]).
    healing: Arc<Healing>,
    /// The events of the streams dispatched (see [`ConnectionRegistry::mark`]).
    dispatched: Dispatched,
}

/// A registered connection; unregisters itself when dropped.
pub struct ConnectionGuard {
    registry: Arc<ConnectionRegistry>,
    user: UserId,
    id: u64,
    position: StreamPosition,
}

impl ConnectionGuard {
    pub fn user(&self) -> &UserId {
        &self.user
    }

    /// Where the session publishes the last stream position it sent (see
    /// [`Follow::track`](crate::Follow::track)), for the checks of the stream heads.
    pub fn position(&self) -> StreamPosition {
        self.position.clone()
    }

    /// Why the queue closed: the registry ended the connection ([`Ended::TooSlow`] or
    /// [`Ended::Revoked`]), or the server is shutting down.
    pub fn end(&self) -> Ended {
        self.dropped().unwrap_or(Ended::ShuttingDown)
    }

    /// Why the registry dropped this connection, if it did.
    fn dropped(&self) -> Option<Ended> {
        self.registry.ended_read().get(&self.id).copied()
    }

    /// Completes once the registry ends this connection. A session waiting to hand a frame
    /// to a client that stopped reading never sees its queue close; it races this instead.
    pub async fn ended(&self) -> Ended {
        loop {
            let notified = self.registry.ending.notified();
            tokio::pin!(notified);
            // Registered before the check, so an ending in between is not missed.
            notified.as_mut().enable();
            if let Some(ended) = self.dropped() {
                return ended;
            }
            notified.await;
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.registry.remove(&self.user, self.id);
        self.registry.ended_write().remove(&self.id);
    }
}

/// Why a connection was not registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("server shutting down")]
    ShuttingDown,
    #[error("too many open connections for this user (at most {max})")]
    TooManyConnections { max: usize },
    #[error("the token was revoked (logged out)")]
    Revoked,
}

impl ConnectionRegistry {
    /// `queue_capacity` events may wait for a connection before it counts as stalled; a user
    /// may hold at most `max_per_user` connections on this instance (0: no limit).
    pub fn new(queue_capacity: usize, max_per_user: usize) -> Arc<Self> {
        Arc::new(Self {
            connections: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            queue_capacity: queue_capacity.max(1),
            max_per_user: if max_per_user == 0 { usize::MAX } else { max_per_user },
            shutting_down: AtomicBool::new(false),
            ended: RwLock::new(HashMap::new()),
            ending: tokio::sync::Notify::new(),
            revoked: Mutex::new(HashMap::new()),
            healing: Arc::new(Healing::default()),
            dispatched: Dispatched::default(),
        })
    }

    /// The instance's healing: its permits to read the store and its counters.
    pub fn healing(&self) -> &Arc<Healing> {
        &self.healing
    }

    /// Has every connection catch up from the store, behind what is queued for it already:
    /// live events may have been lost (the fan-out bus was cut, or resubscribed). A
    /// connection with a catch-up queued that has not started reading gets no second one.
    /// Returns how many connections one was queued for; one whose queue is full is ended as
    /// too slow (its client resumes from its cursor).
    pub fn heal(&self) -> usize {
        self.catch_up_where(|_, _| true)
    }

    /// Has the connections of `members` catch up from the store, as [`heal`](Self::heal)
    /// does for all: an event of their group may not have reached them.
    pub fn heal_members(&self, members: &Members) -> usize {
        self.catch_up_where(|user, _| members.contains(user))
    }

    /// The users with a connection on this instance.
    pub fn users(&self) -> Vec<UserId> {
        self.read().keys().cloned().collect()
    }

    /// Has the connections of the users of `heads` that were sent less of their stream than
    /// its head catch up from the store (see [`ConnectionRegistry::heal`]): the head is where
    /// a periodic check found it, and what a connection lacks below it was lost on its way.
    /// A connection whose position is unknown (replaying, or not knowing where its stream
    /// stands) is left alone. Returns how many connections one was queued for, and counts
    /// the check in the healing metrics.
    pub fn heal_behind(&self, heads: &HashMap<UserId, Cursor>) -> usize {
        let queued = self.catch_up_where(|user, connection| {
            heads.get(user).is_some_and(|head| connection.position.get().is_some_and(|at| at < *head))
        });
        self.healing.record_check(queued);
        queued
    }

    /// Queues a catch-up for the connections `wanted` picks, except those with one queued
    /// that has not started reading (it reads this loss too); ends as too slow those whose
    /// queue is full. Returns how many it was queued for.
    fn catch_up_where(&self, wanted: impl Fn(&UserId, &Connection) -> bool) -> usize {
        let mut stalled = Vec::new();
        let mut queued = 0;
        {
            let connections = self.read();
            for (user, list) in connections.iter() {
                for connection in list.iter().filter(|connection| wanted(user, connection)) {
                    let Some(catch_up) = CatchUp::queue(&self.healing, &connection.healing) else {
                        continue;
                    };
                    if connection.sender.try_send(Queued::CatchUp(Arc::new(catch_up))).is_ok() {
                        queued += 1;
                    } else if !connection.sender.is_closed() {
                        stalled.push((user.clone(), connection.id));
                    }
                }
            }
        }
        self.end_stalled(stalled);
        queued
    }

    /// Marks where the dispatch of the streams that concern `user` stands: take it before a
    /// connection reads where its streams stand, and after registering it, ask
    /// [`quiet_since`](Self::quiet_since) whether its replay may have anything to read.
    pub fn mark(&self, user: &UserId) -> DispatchMark {
        self.dispatched.mark(user)
    }

    /// Whether no event of `mark`'s user's stream (nor, when the connection follows groups,
    /// of any group) was dispatched since `mark` was taken: then whatever was stored after
    /// the connection read where its streams stand reaches it live, and its replay has
    /// nothing to read. It may say no when nothing concerned the user (users share counters).
    pub fn quiet_since(&self, mark: &DispatchMark, in_groups: bool) -> bool {
        self.dispatched.quiet_since(mark, in_groups)
    }

    /// Adds a connection of `user` opened with `token`; events for them arrive on the
    /// returned receiver until the guard is dropped. Refused once the server is shutting
    /// down, when the user already holds the most connections allowed, or when the token
    /// was revoked since the handshake checked it.
    pub fn register(
        self: &Arc<Self>,
        user: &UserId,
        token: &SessionToken,
    ) -> Result<(ConnectionGuard, Receiver), Refusal> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(Refusal::ShuttingDown);
        }
        let (sender, receiver) = crate::queue::queue(self.queue_capacity);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let position = StreamPosition::unknown();
        {
            // Checked under the connections lock, which `end_revoked` holds while it
            // records a revocation: a connection is either refused here or ended there.
            let mut connections = self.write();
            if self.revoked_lately().contains_key(&token.id) {
                return Err(Refusal::Revoked);
            }
            let list = connections.entry(user.clone()).or_default();
            if list.len() >= self.max_per_user {
                return Err(Refusal::TooManyConnections { max: self.max_per_user });
            }
            let healing = Arc::new(AtomicBool::new(false));
            list.push(Connection {
                id,
                token_id: token.id.clone(),
                sender,
                healing,
                position: position.clone(),
            });
        }
        let guard = ConnectionGuard { registry: Arc::clone(self), user: user.clone(), id, position };
        Ok((guard, receiver))
    }

    /// Closes every connection's queue: each session then sends its client a close frame.
    pub fn shut_down(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.write().clear();
    }

    /// How many connections are open on this instance.
    pub fn connection_count(&self) -> usize {
        self.read().values().map(Vec::len).sum()
    }

    /// Queues `event` for every local connection of `users` (all users when `None`).
    /// Returns how many connections it was queued for. A direct `newMessage` or a notice
    /// carries a position of one user's stream: it goes to that one user.
    pub fn deliver(&self, users: Option<&[UserId]>, event: &Event) -> usize {
        self.dispatched.count(users, event);
        match users {
            Some(users) => self.offer(event, |connections, offer| {
                for user in users {
                    for connection in connections.get(user).into_iter().flatten() {
                        offer(user, connection);
                    }
                }
            }),
            None => self.offer(event, |connections, offer| {
                for (user, list) in connections {
                    for connection in list {
                        offer(user, connection);
                    }
                }
            }),
        }
    }

    /// Queues a group's `event` for every local connection of its `members`, except those
    /// of `except` (who read, or who is typing). Returns how many connections it was queued
    /// for.
    pub fn deliver_to_members(&self, members: &Members, except: Option<&UserId>, event: &Event) -> usize {
        let wanted = |user: &UserId| members.contains(user) && except != Some(user);
        self.dispatched.count(None, event);
        self.offer(event, |connections, offer| {
            // Whichever is smaller: a big group has few members on one instance, a small one
            // is quicker to look up member by member.
            if members.ids.len() < connections.len() {
                for user in members.ids.iter().filter(|user| except != Some(*user)) {
                    for connection in connections.get(user).into_iter().flatten() {
                        offer(user, connection);
                    }
                }
            } else {
                for (user, list) in connections.iter().filter(|(user, _)| wanted(user)) {
                    for connection in list {
                        offer(user, connection);
                    }
                }
            }
        })
    }

    /// Queues the encoded `event` for the connections `select` offers, under the read lock;
    /// then ends those whose queue was full.
    fn offer<F>(&self, event: &Event, select: F) -> usize
    where
        F: FnOnce(&HashMap<UserId, Vec<Connection>>, &mut dyn FnMut(&UserId, &Connection)),
    {
        let queued = Queued::encode(event);
        let mut stalled = Vec::new();
        let mut delivered = 0;
        {
            let connections = self.read();
            let mut offer = |user: &UserId, connection: &Connection| {
                let all_queued = queued.iter().all(|item| connection.sender.try_send(item.clone()).is_ok());
                if all_queued {
                    delivered += 1;
                } else if !connection.sender.is_closed() {
                    stalled.push((user.clone(), connection.id));
                }
            };
            select(&connections, &mut offer);
        }
        self.end_stalled(stalled);
        delivered
    }

    /// Ends the connections whose queue was full.
    fn end_stalled(&self, stalled: Vec<(UserId, u64)>) {
        for (user, id) in stalled {
            tracing::info!(user = %user, connection = id, "closing a connection whose queue is full");
            self.ended_write().insert(id, Ended::TooSlow);
            self.remove(&user, id);
            self.ending.notify_waiters();
        }
    }

    fn remove(&self, user: &UserId, id: u64) {
        let mut connections = self.write();
        if let Some(list) = connections.get_mut(user) {
            list.retain(|c| c.id != id);
            if list.is_empty() {
                connections.remove(user);
            }
        }
    }

    // A panic while holding these locks leaves the maps consistent (every mutation is a
    // single call), so poisoning is ignored rather than spreading the panic.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<UserId, Vec<Connection>>> {
        self.connections.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<UserId, Vec<Connection>>> {
        self.connections.write().unwrap_or_else(|p| p.into_inner())
    }

    fn ended_read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<u64, Ended>> {
        self.ended.read().unwrap_or_else(|p| p.into_inner())
    }

    fn ended_write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<u64, Ended>> {
        self.ended.write().unwrap_or_else(|p| p.into_inner())
    }

    fn revoked_lately(&self) -> std::sync::MutexGuard<'_, HashMap<String, std::time::Instant>> {
        self.revoked.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Revocations end connections: their sessions see their queue closed (or, blocked on a
/// client that stopped reading, are woken) and close them with [`Ended::Revoked`].
impl TokenConnections for ConnectionRegistry {
    fn end_revoked(&self, token_ids: &[String]) {
        let revoked: HashSet<&str> = token_ids.iter().map(String::as_str).collect();
        let mut connections = self.write();
        let now = std::time::Instant::now();
        {
            let mut lately = self.revoked_lately();
            lately.retain(|_, at| now.duration_since(*at) < REMEMBER_REVOKED);
            lately.extend(token_ids.iter().map(|id| (id.clone(), now)));
        }
        let ended: Vec<(UserId, u64)> = connections
            .iter()
            .flat_map(|(user, list)| list.iter().map(move |connection| (user, connection)))
            .filter(|(_, connection)| revoked.contains(connection.token_id.as_str()))
            .map(|(user, connection)| (user.clone(), connection.id))
            .collect();
        if ended.is_empty() {
            return;
        }
        // Marked before their queues close, so that their sessions read why.
        {
            let mut marks = self.ended_write();
            for (user, id) in &ended {
                tracing::info!(user = %user, connection = id, "closing a connection whose token was revoked");
                marks.insert(*id, Ended::Revoked);
            }
        }
        connections.retain(|_, list| {
            list.retain(|connection| !revoked.contains(connection.token_id.as_str()));
            !list.is_empty()
        });
        drop(connections);
        self.ending.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use application::ports::TypingTarget;
    use domain::{ConversationId, Cursor, Message, MessageBody, MessageId};

    fn token() -> SessionToken {
        token_with_id(UserId::generate().as_str())
    }

    fn token_with_id(id: &str) -> SessionToken {
        SessionToken { id: id.into(), expires_at: chrono::Utc::now() + chrono::Duration::hours(1) }
    }

    fn typing(to: &UserId) -> Event {
        Event::Typing { from: UserId::generate(), to: TypingTarget::User(to.clone()), is_typing: true }
    }

    /// The name of the frame queued next.
    fn next_name(rx: &mut Receiver) -> &'static str {
        rx.try_recv().unwrap().frame().expect("a frame").name
    }

    fn message(receiver: Option<UserId>, conversation: ConversationId) -> Message {
        Message {
            reply_to: None,
            changed: None,
            id: MessageId::generate(),
            conversation_id: conversation,
            sender_id: UserId::generate(),
            receiver_id: receiver,
            body: MessageBody::parse("hi").unwrap(),
            system: None,
            seq: 1,
            created_at: chrono::Utc::now(),
            client_id: None,
        }
    }

    fn members(ids: &[&UserId], version: u64) -> Members {
        Members { ids: ids.iter().map(|id| (*id).clone()).collect(), version }
    }

    #[tokio::test]
    async fn every_connection_of_a_user_gets_the_event_and_nobody_else() {
        let registry = ConnectionRegistry::new(8, 0);
        let (alice, bob) = (UserId::generate(), UserId::generate());
        let (_g1, mut tab1) = registry.register(&alice, &token()).unwrap();
        let (_g2, mut tab2) = registry.register(&alice, &token()).unwrap();
        let (_g3, mut other) = registry.register(&bob, &token()).unwrap();

        registry.deliver(Some(std::slice::from_ref(&alice)), &typing(&alice));

        assert_eq!(next_name(&mut tab1), "typing");
        assert_eq!(next_name(&mut tab2), "typing");
        assert!(other.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_stream_event_is_queued_whole_for_the_follower_with_its_frame_encoded_once() {
        let registry = ConnectionRegistry::new(8, 0);
        let user = UserId::generate();
        let (_g1, mut tab1) = registry.register(&user, &token()).unwrap();
        let (_g2, mut tab2) = registry.register(&user, &token()).unwrap();
        let event = Event::NewMessage {
            message: message(Some(user.clone()), ConversationId::generate()),
            cursor: Cursor::new(5).unwrap(),
        };
        assert_eq!(registry.deliver(Some(std::slice::from_ref(&user)), &event), 2);
        let (Queued::Stream(first), Queued::Stream(second)) =
            (tab1.try_recv().unwrap(), tab2.try_recv().unwrap())
        else {
            panic!("a stream event");
        };
        assert!(Arc::ptr_eq(&first, &second), "one encoding for every connection");
        assert_eq!(first.event, event);
        let frame = first.frame.as_ref().expect("a message has a frame");
        assert_eq!(frame.name, "newMessage");
        assert!(!frame.data.contains("cursor"), "each connection adds its own: {}", frame.data);

        registry.deliver(Some(std::slice::from_ref(&user)), &typing(&user));
        assert!(matches!(tab1.try_recv().unwrap(), Queued::Frame(_)), "other events are frames");
    }

    #[tokio::test]
    async fn a_group_event_reaches_the_local_members_but_not_the_one_it_is_from() {
        let registry = ConnectionRegistry::new(8, 0);
        let (a, b, stranger) = (UserId::generate(), UserId::generate(), UserId::generate());
        let (_ga, mut at_a) = registry.register(&a, &token()).unwrap();
        let (_gb, mut at_b) = registry.register(&b, &token()).unwrap();
        let (_gb2, mut at_b2) = registry.register(&b, &token()).unwrap();
        let (_gs, mut at_stranger) = registry.register(&stranger, &token()).unwrap();
        let group = ConversationId::generate();
        // Both ways of looking the members up: by member, and by connection.
        for extra in [0, 10] {
            let others: Vec<UserId> = (0..extra).map(|_| UserId::generate()).collect();
            let mut ids: Vec<&UserId> = others.iter().collect();
            ids.extend([&a, &b]);
            let members = members(&ids, 3);
            let entry = Event::GroupMessage { message: message(None, group.clone()), version: 3 };
            assert_eq!(registry.deliver_to_members(&members, None, &entry), 3);
            let typing =
                Event::Typing { from: a.clone(), to: TypingTarget::Group(group.clone()), is_typing: true };
            assert_eq!(registry.deliver_to_members(&members, Some(&a), &typing), 2);
            assert!(matches!(at_a.try_recv().unwrap(), Queued::Stream(_)));
            assert!(at_a.try_recv().is_err(), "not one's own typing");
            for rx in [&mut at_b, &mut at_b2] {
                assert!(matches!(rx.try_recv().unwrap(), Queued::Stream(_)));
                assert_eq!(next_name(rx), "typing");
            }
            assert!(at_stranger.try_recv().is_err());
        }
    }

    #[test]
    fn a_mark_tells_whether_anything_of_the_users_streams_was_dispatched_since() {
        let registry = ConnectionRegistry::new(8, 0);
        let user = UserId::generate();
        let direct = Event::NewMessage {
            message: message(Some(user.clone()), ConversationId::generate()),
            cursor: Cursor::new(1).unwrap(),
        };
        let entry = Event::GroupMessage { message: message(None, ConversationId::generate()), version: 1 };

        let mark = registry.mark(&user);
        registry.deliver(Some(std::slice::from_ref(&user)), &typing(&user));
        assert!(registry.quiet_since(&mark, true), "not an event of a stream");

        registry.deliver_to_members(&members(&[&UserId::generate()], 1), None, &entry);
        assert!(registry.quiet_since(&mark, false), "a user in no group is not concerned");
        assert!(!registry.quiet_since(&mark, true), "a member may be: any group's entry counts");

        let mark = registry.mark(&user);
        assert_eq!(
            registry.deliver(Some(std::slice::from_ref(&user)), &direct),
            0,
            "counted with no connection"
        );
        assert!(!registry.quiet_since(&mark, false), "an event of the user's stream counts");
    }

    #[tokio::test]
    async fn healing_queues_one_catch_up_per_connection_behind_what_is_queued() {
        let registry = ConnectionRegistry::new(2, 0);
        let (alice, bob) = (UserId::generate(), UserId::generate());
        let (_a1, mut tab1) = registry.register(&alice, &token()).unwrap();
        let (_a2, mut tab2) = registry.register(&alice, &token()).unwrap();
        let (full_guard, _full) = registry.register(&bob, &token()).unwrap();
        registry.deliver(Some(std::slice::from_ref(&alice)), &typing(&alice));
        registry.deliver(Some(std::slice::from_ref(&bob)), &typing(&bob));
        registry.deliver(Some(std::slice::from_ref(&bob)), &typing(&bob));

        assert_eq!(registry.heal(), 2);
        assert_eq!(full_guard.end(), Ended::TooSlow, "no room to catch up: it resumes instead");
        assert_eq!(registry.healing().backlog(), 2);
        assert_eq!(registry.heal(), 0, "pending ones cover a second loss");
        for rx in [&mut tab1, &mut tab2] {
            assert_eq!(next_name(rx), "typing");
            assert!(matches!(rx.try_recv().unwrap(), Queued::CatchUp(_)));
        }
        assert_eq!(registry.healing().backlog(), 0, "done once taken and dropped");
    }

    #[tokio::test]
    async fn broadcast_reaches_everyone() {
        let registry = ConnectionRegistry::new(8, 0);
        let (_a, mut a) = registry.register(&UserId::generate(), &token()).unwrap();
        let (_b, mut b) = registry.register(&UserId::generate(), &token()).unwrap();
        registry.deliver(None, &Event::OnlineUsers(vec![]));
        for rx in [&mut a, &mut b] {
            assert_eq!(next_name(rx), "onlineUsers");
            assert_eq!(next_name(rx), "getOnlineUsers");
        }
    }

    #[tokio::test]
    async fn a_stalled_connection_is_evicted_without_blocking_others() {
        let registry = ConnectionRegistry::new(2, 0);
        let user = UserId::generate();
        let (slow_guard, mut slow) = registry.register(&user, &token()).unwrap();
        let (_fast_guard, mut fast) = registry.register(&user, &token()).unwrap();
        for _ in 0..3 {
            registry.deliver(Some(std::slice::from_ref(&user)), &typing(&user));
            // The live connection keeps reading.
            assert!(fast.try_recv().is_ok());
        }
        assert_eq!(slow_guard.end(), Ended::TooSlow);
        assert_eq!(registry.connection_count(), 1);
        // The stalled one gets what was queued, then sees its queue closed.
        assert!(slow.recv().await.is_some());
        assert!(slow.recv().await.is_some());
        assert!(slow.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_session_blocked_on_its_client_learns_of_its_eviction() {
        let registry = ConnectionRegistry::new(1, 0);
        let user = UserId::generate();
        let (guard, _unread) = registry.register(&user, &token()).unwrap();
        let waiting = tokio::spawn(async move { guard.ended().await });
        for _ in 0..2 {
            registry.deliver(Some(std::slice::from_ref(&user)), &typing(&user));
        }
        tokio::time::timeout(std::time::Duration::from_secs(1), waiting)
            .await
            .expect("the eviction wakes the waiting session")
            .unwrap();
    }

    #[tokio::test]
    async fn a_revoked_token_ends_the_connections_opened_with_it_and_no_other() {
        let registry = ConnectionRegistry::new(4, 0);
        let user = UserId::generate();
        let (phone, laptop) = (token_with_id("phone"), token_with_id("laptop"));
        let (revoked_guard, mut revoked) = registry.register(&user, &phone).unwrap();
        let (_kept_guard, mut kept) = registry.register(&user, &laptop).unwrap();
        let waiting = {
            let registry = registry.clone();
            let (guard, _queue) = registry.register(&user, &phone).unwrap();
            tokio::spawn(async move { guard.ended().await })
        };
        registry.end_revoked(&["phone".into(), "unknown".into()]);

        assert_eq!(revoked_guard.end(), Ended::Revoked);
        assert!(revoked.recv().await.is_none(), "its queue is closed");
        let woken = tokio::time::timeout(std::time::Duration::from_secs(1), waiting).await;
        assert_eq!(woken.expect("a session blocked on its client is woken").unwrap(), Ended::Revoked);
        assert_eq!(registry.connection_count(), 1);
        registry.deliver(Some(std::slice::from_ref(&user)), &typing(&user));
        assert!(kept.try_recv().is_ok(), "the other device stays connected");
    }

    #[tokio::test]
    async fn a_token_revoked_while_its_handshake_was_under_way_is_refused() {
        let registry = ConnectionRegistry::new(4, 0);
        registry.end_revoked(&["t1".into()]);
        let user = UserId::generate();
        assert_eq!(registry.register(&user, &token_with_id("t1")).err(), Some(Refusal::Revoked));
        assert!(registry.register(&user, &token_with_id("t2")).is_ok());
    }

    #[test]
    fn a_session_deadline_is_the_token_expiry() {
        let expired =
            SessionToken { id: "t".into(), expires_at: chrono::Utc::now() - chrono::Duration::hours(1) };
        assert!(expired.deadline() <= Instant::now());
        let later =
            SessionToken { id: "t".into(), expires_at: chrono::Utc::now() + chrono::Duration::seconds(60) };
        let left = later.deadline() - Instant::now();
        assert!(
            left > std::time::Duration::from_secs(58) && left <= std::time::Duration::from_secs(60),
            "{left:?}"
        );
    }

    #[tokio::test]
    async fn dropping_the_guard_unregisters() {
        let registry = ConnectionRegistry::new(4, 0);
        let (guard, _rx) = registry.register(&UserId::generate(), &token()).unwrap();
        assert_eq!(registry.connection_count(), 1);
        drop(guard);
        assert_eq!(registry.connection_count(), 0);
    }

    #[tokio::test]
    async fn shutting_down_closes_every_queue_and_refuses_new_ones() {
        let registry = ConnectionRegistry::new(4, 0);
        let (guard, mut rx) = registry.register(&UserId::generate(), &token()).unwrap();
        registry.shut_down();
        assert!(rx.recv().await.is_none());
        assert_eq!(guard.end(), Ended::ShuttingDown);
        assert_eq!(registry.register(&UserId::generate(), &token()).err(), Some(Refusal::ShuttingDown));
    }

    #[tokio::test]
    async fn a_user_holds_at_most_the_allowed_connections() {
        let registry = ConnectionRegistry::new(4, 2);
        let user = UserId::generate();
        let first = registry.register(&user, &token()).unwrap();
        let _second = registry.register(&user, &token()).unwrap();
        assert_eq!(registry.register(&user, &token()).err(), Some(Refusal::TooManyConnections { max: 2 }));
        assert!(registry.register(&UserId::generate(), &token()).is_ok(), "others are not affected");
        drop(first);
        assert!(registry.register(&user, &token()).is_ok(), "a closed connection frees its place");
    }

    #[test]
    fn a_check_heals_only_the_connections_behind_their_users_head() {
        let registry = ConnectionRegistry::new(8, 0);
        let (a, b) = (UserId::generate(), UserId::generate());
        let at = |n: u64| Some(Cursor::new(n).unwrap());
        let (behind, mut behind_rx) = registry.register(&a, &token()).unwrap();
        let (level, mut level_rx) = registry.register(&a, &token()).unwrap();
        let (_replaying, mut replaying_rx) = registry.register(&a, &token()).unwrap();
        let (other, mut other_rx) = registry.register(&b, &token()).unwrap();
        behind.position().set(at(4));
        level.position().set(at(5));
        other.position().set(at(1));
        assert_eq!(registry.users().len(), 2);

        let heads = HashMap::from([(a.clone(), Cursor::new(5).unwrap())]);
        assert_eq!(registry.heal_behind(&heads), 1);
        assert!(matches!(behind_rx.try_recv(), Ok(Queued::CatchUp(_))));
        assert!(level_rx.try_recv().is_err(), "at the head");
        assert!(replaying_rx.try_recv().is_err(), "position unknown");
        assert!(other_rx.try_recv().is_err(), "b's head was not checked");
        assert_eq!((registry.healing().checks(), registry.healing().healed_by_checks()), (1, 1));
    }
}
