//! Real-time: presence of connections and typing notices. Transports (the native WebSocket,
//! Socket.IO) call these when a connection opens, closes or sends an event.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use domain::UserId;

use crate::ports::{Event, Notifier, Presence, RepoError};

pub struct RealtimeService {
    presence: Arc<dyn Presence>,
    notifier: Arc<dyn Notifier>,
    /// A broadcast of the online list is under way.
    announcing: AtomicBool,
    /// The online set changed since the running broadcast read it.
    changed: AtomicBool,
}

impl RealtimeService {
    pub fn new(presence: Arc<dyn Presence>, notifier: Arc<dyn Notifier>) -> Self {
        Self { presence, notifier, announcing: AtomicBool::new(false), changed: AtomicBool::new(false) }
    }

    /// Call once a connection is registered for delivery. When the user just came online,
    /// everyone (this connection included) is told through a broadcast and `None` is
    /// returned; otherwise the current online list is returned for this connection alone.
    pub async fn connection_opened(&self, user: &UserId) -> Result<Option<Vec<UserId>>, RepoError> {
        if self.presence.connected(user).await? {
            self.broadcast_online().await?;
            Ok(None)
        } else {
            Ok(Some(self.presence.online().await?))
        }
    }

    /// Call once per closed connection; tells everyone when the user went offline.
    pub async fn connection_closed(&self, user: &UserId) -> Result<(), RepoError> {
        if self.presence.disconnected(user).await? {
            self.broadcast_online().await?;
        }
        Ok(())
    }

    pub async fn online_users(&self) -> Result<Vec<UserId>, RepoError> {
        self.presence.online().await
    }

    /// Relays a typing notice to the target's connections only. Notices about oneself or to
    /// an id that is not one of ours are dropped.
    pub async fn typing(&self, from: &UserId, to: &str, is_typing: bool) {
        let Ok(to) = UserId::parse(to) else { return };
        if &to == from {
            return;
        }
        let event = Event::Typing { from: from.clone(), to: to.clone(), is_typing };
        if let Err(error) = self.notifier.notify(&[to], &event).await {
            tracing::debug!(error = %error, "typing notice not delivered");
        }
    }

    /// Tells everyone the online list after a change. Changes that happen while a broadcast
    /// is under way are folded into one more broadcast of the then current list, by the
    /// task already broadcasting: when K users come online at once, every connection gets
    /// a few lists, not K (which would be K² frames in all).
    async fn broadcast_online(&self) -> Result<(), RepoError> {
        self.changed.store(true, Ordering::SeqCst);
        loop {
            if self.announcing.swap(true, Ordering::SeqCst) {
                // The running broadcast sees `changed` and goes round once more.
                return Ok(());
            }
            let announced = self.announce_changes().await;
            self.announcing.store(false, Ordering::SeqCst);
            // A change flagged after the last round's check but before `announcing` was
            // cleared would otherwise wait for the next change.
            if announced.is_err() || !self.changed.load(Ordering::SeqCst) {
                return announced;
            }
        }
    }

    /// Broadcasts the current list until no change arrived meanwhile.
    async fn announce_changes(&self) -> Result<(), RepoError> {
        while self.changed.swap(false, Ordering::SeqCst) {
            let online = self.presence.online().await?;
            if let Err(error) = self.notifier.broadcast(&Event::OnlineUsers(online)).await {
                tracing::warn!(error = %error, "online users not announced");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{MockNotifier, MockPresence};

    fn service(presence: MockPresence, notifier: MockNotifier) -> RealtimeService {
        RealtimeService::new(Arc::new(presence), Arc::new(notifier))
    }

    #[tokio::test]
    async fn first_connection_broadcasts_the_new_online_list() {
        let user = UserId::generate();
        let online = vec![user.clone()];
        let mut presence = MockPresence::new();
        presence.expect_connected().returning(|_| Ok(true));
        let listed = online.clone();
        presence.expect_online().returning(move || Ok(listed.clone()));
        let mut notifier = MockNotifier::new();
        notifier
            .expect_broadcast()
            .withf(move |e| *e == Event::OnlineUsers(online.clone()))
            .times(1)
            .returning(|_| Ok(()));
        assert_eq!(service(presence, notifier).connection_opened(&user).await.unwrap(), None);
    }

    #[tokio::test]
    async fn another_device_gets_the_list_without_a_broadcast() {
        let user = UserId::generate();
        let online = vec![user.clone()];
        let mut presence = MockPresence::new();
        presence.expect_connected().returning(|_| Ok(false));
        let listed = online.clone();
        presence.expect_online().returning(move || Ok(listed.clone()));
        let mut notifier = MockNotifier::new();
        notifier.expect_broadcast().never();
        let snapshot = service(presence, notifier).connection_opened(&user).await.unwrap();
        assert_eq!(snapshot, Some(online));
    }

    #[tokio::test]
    async fn last_connection_closing_broadcasts() {
        let mut presence = MockPresence::new();
        presence.expect_disconnected().returning(|_| Ok(true));
        presence.expect_online().returning(|| Ok(vec![]));
        let mut notifier = MockNotifier::new();
        notifier
            .expect_broadcast()
            .withf(|e| *e == Event::OnlineUsers(vec![]))
            .times(1)
            .returning(|_| Ok(()));
        service(presence, notifier).connection_closed(&UserId::generate()).await.unwrap();
    }

    #[tokio::test]
    async fn closing_one_of_several_connections_is_silent() {
        let mut presence = MockPresence::new();
        presence.expect_disconnected().returning(|_| Ok(false));
        let mut notifier = MockNotifier::new();
        notifier.expect_broadcast().never();
        service(presence, notifier).connection_closed(&UserId::generate()).await.unwrap();
    }

    #[tokio::test]
    async fn typing_goes_to_the_target_only() {
        let (from, to) = (UserId::generate(), UserId::generate());
        let mut notifier = MockNotifier::new();
        let (f, t) = (from.clone(), to.clone());
        notifier
            .expect_notify()
            .withf(move |users, e| {
                users == [t.clone()]
                    && *e == Event::Typing { from: f.clone(), to: t.clone(), is_typing: true }
            })
            .times(1)
            .returning(|_, _| Ok(()));
        service(MockPresence::new(), notifier).typing(&from, to.as_str(), true).await;
    }

    /// A notifier whose first broadcast waits for `release`, recording every broadcast.
    struct GatedNotifier {
        release: tokio::sync::Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
        started: tokio::sync::Notify,
        lists: std::sync::Mutex<Vec<Vec<UserId>>>,
    }

    #[async_trait::async_trait]
    impl Notifier for GatedNotifier {
        async fn notify(&self, _: &[UserId], _: &Event) -> Result<(), crate::ports::NotifyError> {
            Ok(())
        }
        async fn broadcast(&self, event: &Event) -> Result<(), crate::ports::NotifyError> {
            let Event::OnlineUsers(list) = event else { panic!("only online lists are broadcast") };
            self.lists.lock().unwrap().push(list.clone());
            self.started.notify_one();
            if let Some(gate) = self.release.lock().await.take() {
                let _ = gate.await;
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn changes_during_a_broadcast_are_folded_into_one_more_with_the_latest_list() {
        let online = Arc::new(std::sync::Mutex::new(Vec::<UserId>::new()));
        let mut presence = MockPresence::new();
        let joined = online.clone();
        presence.expect_connected().returning(move |user| {
            joined.lock().unwrap().push(user.clone());
            Ok(true)
        });
        let listed = online.clone();
        presence.expect_online().returning(move || Ok(listed.lock().unwrap().clone()));
        let (release, gate) = tokio::sync::oneshot::channel();
        let notifier = Arc::new(GatedNotifier {
            release: tokio::sync::Mutex::new(Some(gate)),
            started: tokio::sync::Notify::new(),
            lists: std::sync::Mutex::new(Vec::new()),
        });
        let service = Arc::new(RealtimeService::new(Arc::new(presence), notifier.clone()));

        let users: Vec<UserId> = (0..4).map(|_| UserId::generate()).collect();
        let first = {
            let (service, user) = (service.clone(), users[0].clone());
            tokio::spawn(async move { service.connection_opened(&user).await })
        };
        notifier.started.notified().await;
        // Three more users come online while the first broadcast is blocked.
        for user in &users[1..] {
            assert_eq!(service.connection_opened(user).await.unwrap(), None);
        }
        release.send(()).unwrap();
        first.await.unwrap().unwrap();

        let lists = notifier.lists.lock().unwrap().clone();
        assert_eq!(lists, vec![users[..1].to_vec(), users.clone()], "one list, then one with everyone");
    }

    #[tokio::test]
    async fn typing_to_oneself_or_nobody_is_dropped() {
        let me = UserId::generate();
        let mut notifier = MockNotifier::new();
        notifier.expect_notify().never();
        let service = service(MockPresence::new(), notifier);
        service.typing(&me, me.as_str(), true).await;
        service.typing(&me, "not-an-id", true).await;
    }
}
