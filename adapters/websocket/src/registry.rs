//! Which connections each user has open on this instance, and delivery to them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use application::ports::{Event, Notifier, NotifyError};
use async_trait::async_trait;
use domain::{Cursor, UserId};
use tokio::sync::mpsc;

use crate::wire::encode_event;

/// One event, encoded once and shared by every connection it goes to. Each transport frames
/// it its own way (`{"event":…}` for `/ws`, `42[…]` for Socket.IO).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    pub name: &'static str,
    pub data: Arc<str>,
    /// For a `newMessage` event, the message's position in the stream of the user whose
    /// connections it goes to: sessions pass it through their
    /// [`StreamFollower`](application::StreamFollower) (see [`crate::follow`]).
    pub cursor: Option<Cursor>,
}

impl Outbound {
    /// The frames one event becomes, each payload serialized once.
    pub fn encode(event: &Event) -> Vec<Outbound> {
        let cursor = match event {
            Event::NewMessage { cursor, .. } => Some(*cursor),
            _ => None,
        };
        encode_event(event)
            .into_iter()
            .map(|(name, data)| Outbound { name, data: data.into(), cursor })
            .collect()
    }
}

pub type Receiver = mpsc::Receiver<Outbound>;

struct Connection {
    id: u64,
    sender: mpsc::Sender<Outbound>,
}

/// The connections of this instance, by user.
///
/// The lock is held only for map look-ups and `try_send`s, never across an await, so a slow
/// connection can't hold up delivery to anyone else: when its queue is full it is dropped
/// from the registry, which ends its session (see [`ConnectionRegistry::was_evicted`]).
pub struct ConnectionRegistry {
    connections: RwLock<HashMap<UserId, Vec<Connection>>>,
    next_id: AtomicU64,
    queue_capacity: usize,
    max_per_user: usize,
    shutting_down: AtomicBool,
    evicted: RwLock<std::collections::HashSet<u64>>,
    /// Wakes sessions blocked on a client that stopped reading when any connection is evicted.
    eviction: tokio::sync::Notify,
}

/// A registered connection; unregisters itself when dropped.
pub struct ConnectionGuard {
    registry: Arc<ConnectionRegistry>,
    user: UserId,
    id: u64,
}

impl ConnectionGuard {
    pub fn user(&self) -> &UserId {
        &self.user
    }

    /// Why the queue closed: the connection fell too far behind (`true`), or the server
    /// is shutting down (`false`).
    pub fn was_evicted(&self) -> bool {
        self.registry.evicted_read().contains(&self.id)
    }

    /// Completes once this connection is evicted. A session waiting to hand a frame to a
    /// client that stopped reading never sees its queue close; it races this instead.
    pub async fn evicted(&self) {
        loop {
            let notified = self.registry.eviction.notified();
            tokio::pin!(notified);
            // Registered before the check, so an eviction in between is not missed.
            notified.as_mut().enable();
            if self.was_evicted() {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.registry.remove(&self.user, self.id);
        self.registry.evicted_write().remove(&self.id);
    }
}

/// Why a connection was not registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("server shutting down")]
    ShuttingDown,
    #[error("too many open connections for this user (at most {max})")]
    TooManyConnections { max: usize },
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
            evicted: RwLock::new(Default::default()),
            eviction: tokio::sync::Notify::new(),
        })
    }

    /// Adds a connection of `user`; events for them arrive on the returned receiver until
    /// the guard is dropped. Refused once the server is shutting down, or when the user
    /// already holds the most connections allowed.
    pub fn register(self: &Arc<Self>, user: &UserId) -> Result<(ConnectionGuard, Receiver), Refusal> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(Refusal::ShuttingDown);
        }
        let (sender, receiver) = mpsc::channel(self.queue_capacity);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut connections = self.write();
            let list = connections.entry(user.clone()).or_default();
            if list.len() >= self.max_per_user {
                return Err(Refusal::TooManyConnections { max: self.max_per_user });
            }
            list.push(Connection { id, sender });
        }
        let guard = ConnectionGuard { registry: Arc::clone(self), user: user.clone(), id };
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
    /// Returns how many connections it was queued for. A `newMessage` carries a cursor of
    /// one user's stream: it goes to that one user.
    pub fn deliver(&self, users: Option<&[UserId]>, event: &Event) -> usize {
        let frames = Outbound::encode(event);
        let mut stalled = Vec::new();
        let mut delivered = 0;
        {
            let connections = self.read();
            let mut offer = |user: &UserId, connection: &Connection| {
                let all_queued = frames.iter().all(|frame| connection.sender.try_send(frame.clone()).is_ok());
                if all_queued {
                    delivered += 1;
                } else if !connection.sender.is_closed() {
                    stalled.push((user.clone(), connection.id));
                }
            };
            match users {
                Some(users) => {
                    for user in users {
                        for connection in connections.get(user).into_iter().flatten() {
                            offer(user, connection);
                        }
                    }
                }
                None => {
                    for (user, list) in connections.iter() {
                        for connection in list {
                            offer(user, connection);
                        }
                    }
                }
            }
        }
        for (user, id) in stalled {
            tracing::info!(user = %user, connection = id, "closing a connection whose queue is full");
            self.evicted_write().insert(id);
            self.remove(&user, id);
            self.eviction.notify_waiters();
        }
        delivered
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

    fn evicted_read(&self) -> std::sync::RwLockReadGuard<'_, std::collections::HashSet<u64>> {
        self.evicted.read().unwrap_or_else(|p| p.into_inner())
    }

    fn evicted_write(&self) -> std::sync::RwLockWriteGuard<'_, std::collections::HashSet<u64>> {
        self.evicted.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// The single-instance notifier: delivery to this instance's connections.
#[async_trait]
impl Notifier for ConnectionRegistry {
    async fn notify(&self, users: &[UserId], event: &Event) -> Result<(), NotifyError> {
        self.deliver(Some(users), event);
        Ok(())
    }

    async fn broadcast(&self, event: &Event) -> Result<(), NotifyError> {
        self.deliver(None, event);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typing(to: &UserId) -> Event {
        Event::Typing { from: UserId::generate(), to: to.clone(), is_typing: true }
    }

    #[tokio::test]
    async fn every_connection_of_a_user_gets_the_event_and_nobody_else() {
        let registry = ConnectionRegistry::new(8, 0);
        let (alice, bob) = (UserId::generate(), UserId::generate());
        let (_g1, mut tab1) = registry.register(&alice).unwrap();
        let (_g2, mut tab2) = registry.register(&alice).unwrap();
        let (_g3, mut other) = registry.register(&bob).unwrap();

        registry.notify(&[alice.clone()], &typing(&alice)).await.unwrap();

        assert_eq!(tab1.try_recv().unwrap().name, "typing");
        assert_eq!(tab2.try_recv().unwrap().name, "typing");
        assert!(other.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_new_message_goes_out_with_the_receivers_cursor() {
        use domain::{ConversationId, Message, MessageBody, MessageId};
        let registry = ConnectionRegistry::new(8, 0);
        let user = UserId::generate();
        let (_guard, mut rx) = registry.register(&user).unwrap();
        let message = Message {
            id: MessageId::generate(),
            conversation_id: ConversationId::generate(),
            sender_id: UserId::generate(),
            receiver_id: user.clone(),
            body: MessageBody::parse("hi").unwrap(),
            created_at: chrono::Utc::now(),
            client_id: None,
        };
        let cursor = Cursor::new(5).unwrap();
        registry.notify(std::slice::from_ref(&user), &Event::NewMessage { message, cursor }).await.unwrap();
        let outbound = rx.try_recv().unwrap();
        assert_eq!((outbound.name, outbound.cursor), ("newMessage", Some(cursor)));
        assert!(outbound.data.contains("\"cursor\":\"5\""), "{}", outbound.data);

        registry.notify(std::slice::from_ref(&user), &typing(&user)).await.unwrap();
        assert_eq!(rx.try_recv().unwrap().cursor, None, "other events have none");
    }

    #[tokio::test]
    async fn broadcast_reaches_everyone() {
        let registry = ConnectionRegistry::new(8, 0);
        let (_a, mut a) = registry.register(&UserId::generate()).unwrap();
        let (_b, mut b) = registry.register(&UserId::generate()).unwrap();
        registry.broadcast(&Event::OnlineUsers(vec![])).await.unwrap();
        for rx in [&mut a, &mut b] {
            assert_eq!(rx.try_recv().unwrap().name, "onlineUsers");
            assert_eq!(rx.try_recv().unwrap().name, "getOnlineUsers");
        }
    }

    #[tokio::test]
    async fn a_stalled_connection_is_evicted_without_blocking_others() {
        let registry = ConnectionRegistry::new(2, 0);
        let user = UserId::generate();
        let (slow_guard, mut slow) = registry.register(&user).unwrap();
        let (_fast_guard, mut fast) = registry.register(&user).unwrap();
        for _ in 0..3 {
            registry.notify(&[user.clone()], &typing(&user)).await.unwrap();
            // The live connection keeps reading.
            assert!(fast.try_recv().is_ok());
        }
        assert!(slow_guard.was_evicted());
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
        let (guard, _unread) = registry.register(&user).unwrap();
        let waiting = tokio::spawn(async move { guard.evicted().await });
        for _ in 0..2 {
            registry.notify(&[user.clone()], &typing(&user)).await.unwrap();
        }
        tokio::time::timeout(std::time::Duration::from_secs(1), waiting)
            .await
            .expect("the eviction wakes the waiting session")
            .unwrap();
    }

    #[tokio::test]
    async fn dropping_the_guard_unregisters() {
        let registry = ConnectionRegistry::new(4, 0);
        let (guard, _rx) = registry.register(&UserId::generate()).unwrap();
        assert_eq!(registry.connection_count(), 1);
        drop(guard);
        assert_eq!(registry.connection_count(), 0);
    }

    #[tokio::test]
    async fn shutting_down_closes_every_queue_and_refuses_new_ones() {
        let registry = ConnectionRegistry::new(4, 0);
        let (guard, mut rx) = registry.register(&UserId::generate()).unwrap();
        registry.shut_down();
        assert!(rx.recv().await.is_none());
        assert!(!guard.was_evicted());
        assert_eq!(registry.register(&UserId::generate()).err(), Some(Refusal::ShuttingDown));
    }

    #[tokio::test]
    async fn a_user_holds_at_most_the_allowed_connections() {
        let registry = ConnectionRegistry::new(4, 2);
        let user = UserId::generate();
        let first = registry.register(&user).unwrap();
        let _second = registry.register(&user).unwrap();
        assert_eq!(
            registry.register(&user).err(),
            Some(Refusal::TooManyConnections { max: 2 })
        );
        assert!(registry.register(&UserId::generate()).is_ok(), "others are not affected");
        drop(first);
        assert!(registry.register(&user).is_ok(), "a closed connection frees its place");
    }
}
