//! Real-time: presence of connections and typing notices. Transports (the native WebSocket,
//! Socket.IO) call these when a connection opens, closes or sends an event.
//!
//! The online list goes to every connection whenever it changes, so its cost grows with the
//! square of the connections: N clients coming online one by one would be N broadcasts of up
//! to N ids to N connections. Changes are therefore announced by one background task, at
//! most once per [`ANNOUNCE_WINDOW`], with the list current when the broadcast goes out (the
//! last state is always sent, a window after the change at most); and one user's changes
//! claim a broadcast at most once per [`CHURN_INTERVAL`], so a client flapping online and
//! offline cannot keep everyone busy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use domain::{ConversationId, ParticipantPair, UserId};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::partners::Partners;
use crate::ports::{ConversationRepository, Event, Notifier, Presence, RepoError, TypingTarget};

/// The shortest time between two broadcasts of the online list.
pub const ANNOUNCE_WINDOW: Duration = Duration::from_millis(250);
/// The shortest time between two broadcasts that changes of one user may claim; changes
/// inside it are announced at its end (or with a broadcast others claimed earlier).
pub const CHURN_INTERVAL: Duration = Duration::from_secs(1);

pub struct RealtimeService {
    presence: Arc<dyn Presence>,
    notifier: Arc<dyn Notifier>,
    partners: Partners,
    schedule: Arc<Schedule>,
    announcer: tokio::task::JoinHandle<()>,
}

impl Drop for RealtimeService {
    fn drop(&mut self) {
        self.announcer.abort();
    }
}

impl RealtimeService {
    /// Starts the task that announces the online list: must be called within a Tokio
    /// runtime. Typing notices are relayed between users who share a conversation in
    /// `conversations`.
    pub fn new(
        presence: Arc<dyn Presence>,
        notifier: Arc<dyn Notifier>,
        conversations: Arc<dyn ConversationRepository>,
    ) -> Self {
        let schedule = Arc::new(Schedule::default());
        let announcer = tokio::spawn(announce(schedule.clone(), presence.clone(), notifier.clone()));
        Self { presence, notifier, partners: Partners::new(conversations), schedule, announcer }
    }

    /// Call once a connection is registered for delivery. When the user just came online,
    /// everyone (this connection included) is told through a broadcast, within
    /// [`ANNOUNCE_WINDOW`] or [`CHURN_INTERVAL`], and `None` is returned; otherwise the
    /// current online list is returned for this connection alone.
    pub async fn connection_opened(&self, user: &UserId) -> Result<Option<Vec<UserId>>, RepoError> {
        if self.presence.connected(user).await? {
            self.schedule.changed(user);
            Ok(None)
        } else {
            Ok(Some(self.presence.online().await?))
        }
    }

    /// Call once per closed connection; tells everyone when the user went offline.
    pub async fn connection_closed(&self, user: &UserId) -> Result<(), RepoError> {
        if self.presence.disconnected(user).await? {
            self.schedule.changed(user);
        }
        Ok(())
    }

    pub async fn online_users(&self) -> Result<Vec<UserId>, RepoError> {
        self.presence.online().await
    }

    /// Relays a typing notice to the target's connections only, if the two share a
    /// conversation (at least one message between them): nobody can pester strangers.
    /// Notices about oneself, or that can't be checked now (the store is down), are dropped.
    pub async fn typing(&self, from: &UserId, to: &UserId, is_typing: bool) {
        let Ok(pair) = ParticipantPair::new(from.clone(), to.clone()) else { return };
        match self.partners.share_conversation(&pair).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(error) => {
                tracing::debug!(error = %error, "typing notice dropped: conversation not checked");
                return;
            }
        }
        let event = Event::Typing { from: from.clone(), to: TypingTarget::User(to.clone()), is_typing };
        if let Err(error) = self.notifier.notify(std::slice::from_ref(to), &event).await {
            tracing::debug!(error = %error, "typing notice not delivered");
        }
    }
}

impl RealtimeService {
    /// Relays a typing notice in a group to its members' connections (the sender's own are
    /// left out by the delivery). The caller checks that `from` is a member: the edge does,
    /// through the members it remembers, so that a notice costs no read of the store.
    pub async fn typing_in_group(&self, from: &UserId, group: &ConversationId, is_typing: bool) {
        let event = Event::Typing { from: from.clone(), to: TypingTarget::Group(group.clone()), is_typing };
        if let Err(error) = self.notifier.notify_group(group, &event).await {
            tracing::debug!(error = %error, "typing notice not delivered");
        }
    }
}

/// When the online list is due to go out next, shared by the callers that change presence
/// and the announcing task. The lock is held for a few map operations, never across an
/// await.
#[derive(Default)]
struct Schedule {
    state: Mutex<Due>,
    wake: Notify,
}

#[derive(Default)]
struct Due {
    /// The earliest moment a change asks to be announced; `None`: nothing to announce.
    at: Option<Instant>,
    /// Per user who changed lately: until when their changes are paid for. A change before
    /// this moment rides on the broadcast already due then; one within a [`CHURN_INTERVAL`]
    /// after it claims the broadcast at the end of that interval; a later one claims a
    /// broadcast now. Entries older than an interval are pruned at each broadcast.
    paid_until: HashMap<UserId, Instant>,
}

impl Schedule {
    fn state(&self) -> MutexGuard<'_, Due> {
        // Every change of the state is a few assignments: a panic elsewhere leaves it whole.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `user` came online or went offline.
    fn changed(&self, user: &UserId) {
        let now = Instant::now();
        {
            let mut state = self.state();
            let at = match state.paid_until.get(user) {
                Some(&paid) if now < paid => paid,
                Some(&paid) if now < paid + CHURN_INTERVAL => paid + CHURN_INTERVAL,
                _ => now,
            };
            state.paid_until.insert(user.clone(), at);
            state.at = Some(state.at.map_or(at, |due| due.min(at)));
        }
        self.wake.notify_one();
    }

    /// Waits until a broadcast is due and at least [`ANNOUNCE_WINDOW`] has passed since
    /// `last`, then marks everything announced (changes from now on wait for the next one).
    async fn next(&self, last: Option<Instant>) {
        loop {
            let due = self.state().at;
            let Some(due) = due else {
                self.wake.notified().await;
                continue;
            };
            let at = last.map_or(due, |last| due.max(last + ANNOUNCE_WINDOW));
            if at <= Instant::now() {
                let mut state = self.state();
                state.at = None;
                let now = Instant::now();
                state.paid_until.retain(|_, paid| *paid + CHURN_INTERVAL > now);
                return;
            }
            // An earlier change may come meanwhile: look again when one does.
            tokio::select! {
                () = tokio::time::sleep_until(at) => {}
                () = self.wake.notified() => {}
            }
        }
    }
}

/// The announcing task: broadcasts the online list as it is when each broadcast is due.
async fn announce(schedule: Arc<Schedule>, presence: Arc<dyn Presence>, notifier: Arc<dyn Notifier>) {
    let mut last = None;
    loop {
        schedule.next(last).await;
        last = Some(Instant::now());
        match presence.online().await {
            Ok(online) => {
                if let Err(error) = notifier.broadcast(&Event::OnlineUsers(online)).await {
                    tracing::warn!(error = %error, "online users not announced");
                }
            }
            Err(error) => tracing::warn!(error = %error, "online users not announced: presence unavailable"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{MockConversationRepository, MockNotifier, MockPresence};
    use domain::Conversation;

    fn service(presence: MockPresence, notifier: MockNotifier) -> RealtimeService {
        service_with(presence, notifier, MockConversationRepository::new())
    }

    fn service_with(
        presence: MockPresence,
        notifier: MockNotifier,
        conversations: MockConversationRepository,
    ) -> RealtimeService {
        RealtimeService::new(Arc::new(presence), Arc::new(notifier), Arc::new(conversations))
    }

    /// A presence that keeps the online set in memory, as the adapters do.
    fn presence(online: Arc<Mutex<Vec<UserId>>>) -> MockPresence {
        let mut presence = MockPresence::new();
        let joined = online.clone();
        presence.expect_connected().returning(move |user| {
            let mut online = joined.lock().unwrap();
            let first = !online.contains(user);
            if first {
                online.push(user.clone());
            }
            Ok(first)
        });
        let left = online.clone();
        presence.expect_disconnected().returning(move |user| {
            let mut online = left.lock().unwrap();
            let before = online.len();
            online.retain(|u| u != user);
            Ok(online.len() < before)
        });
        presence.expect_online().returning(move || Ok(online.lock().unwrap().clone()));
        presence
    }

    /// A notifier that records every list broadcast.
    fn recorder(lists: Arc<Mutex<Vec<Vec<UserId>>>>) -> MockNotifier {
        let mut notifier = MockNotifier::new();
        notifier.expect_broadcast().returning(move |event| {
            let Event::OnlineUsers(list) = event else { panic!("only online lists are broadcast") };
            lists.lock().unwrap().push(list.clone());
            Ok(())
        });
        notifier
    }

    /// Lets the announcing task run for `time` (paused clock: advanced as needed).
    async fn run_for(time: Duration) {
        tokio::time::sleep(time).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_connection_is_announced_at_once() {
        let (online, lists) = (Arc::default(), Arc::default());
        let service = service(presence(online), recorder(Arc::clone(&lists)));
        let user = UserId::generate();
        assert_eq!(service.connection_opened(&user).await.unwrap(), None);
        run_for(Duration::from_millis(1)).await;
        assert_eq!(*lists.lock().unwrap(), vec![vec![user]]);
    }

    #[tokio::test(start_paused = true)]
    async fn another_device_gets_the_list_without_a_broadcast() {
        let user = UserId::generate();
        let online = Arc::new(Mutex::new(vec![user.clone()]));
        let mut notifier = MockNotifier::new();
        notifier.expect_broadcast().never();
        let service = service(presence(online), notifier);
        let snapshot = service.connection_opened(&user).await.unwrap();
        assert_eq!(snapshot, Some(vec![user]));
        run_for(Duration::from_secs(2)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_connection_closing_is_announced_and_one_of_several_is_not() {
        let user = UserId::generate();
        let online = Arc::new(Mutex::new(vec![user.clone()]));
        let lists = Arc::default();
        let service = service(presence(online), recorder(Arc::clone(&lists)));
        service.connection_closed(&user).await.unwrap();
        run_for(Duration::from_secs(2)).await;
        assert_eq!(*lists.lock().unwrap(), vec![Vec::<UserId>::new()]);
        service.connection_closed(&user).await.unwrap();
        run_for(Duration::from_secs(2)).await;
        assert_eq!(lists.lock().unwrap().len(), 1, "nobody went offline the second time");
    }

    #[tokio::test(start_paused = true)]
    async fn changes_within_a_window_go_out_as_one_trailing_broadcast_of_the_latest_list() {
        let (online, lists) = (Arc::default(), Arc::default());
        let service = service(presence(online), recorder(Arc::clone(&lists)));
        let users: Vec<UserId> = (0..20).map(|_| UserId::generate()).collect();
        for user in &users {
            service.connection_opened(user).await.unwrap();
            run_for(Duration::from_millis(5)).await;
        }
        // 20 users in 100 ms: the first announced at once, the others a window later.
        run_for(ANNOUNCE_WINDOW).await;
        assert_eq!(*lists.lock().unwrap(), vec![users[..1].to_vec(), users.clone()]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_flapping_user_claims_one_broadcast_per_interval_and_the_last_state_goes_out() {
        let (online, lists) = (Arc::default(), Arc::<Mutex<Vec<Vec<UserId>>>>::default());
        let service = service(presence(online), recorder(Arc::clone(&lists)));
        let user = UserId::generate();
        let started = Instant::now();
        // Online and offline 100 times a second, for 3 seconds.
        for _ in 0..300 {
            service.connection_opened(&user).await.unwrap();
            service.connection_closed(&user).await.unwrap();
            run_for(Duration::from_millis(10)).await;
        }
        let flapped = started.elapsed();
        run_for(CHURN_INTERVAL + ANNOUNCE_WINDOW).await;
        let lists = lists.lock().unwrap();
        // One at the start, then one per interval while it lasts, then the trailing one.
        let bound = 2 + (flapped.as_millis() / CHURN_INTERVAL.as_millis()) as usize;
        assert!(lists.len() <= bound, "{} broadcasts for 600 changes (at most {bound})", lists.len());
        assert_eq!(lists.last(), Some(&Vec::new()), "the last state, offline, was announced");
    }

    #[tokio::test(start_paused = true)]
    async fn a_flapping_user_does_not_delay_anyone_else() {
        let (online, lists) = (Arc::default(), Arc::<Mutex<Vec<Vec<UserId>>>>::default());
        let service = service(presence(online), recorder(Arc::clone(&lists)));
        let (flapper, newcomer) = (UserId::generate(), UserId::generate());
        for _ in 0..20 {
            service.connection_opened(&flapper).await.unwrap();
            service.connection_closed(&flapper).await.unwrap();
            run_for(Duration::from_millis(10)).await;
        }
        let before = lists.lock().unwrap().len();
        service.connection_opened(&newcomer).await.unwrap();
        run_for(ANNOUNCE_WINDOW).await;
        let lists = lists.lock().unwrap();
        assert_eq!(lists.len(), before + 1);
        assert_eq!(lists.last(), Some(&vec![newcomer]), "within a window, not at the flapper's pace");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unavailable_presence_announces_nothing_and_the_task_goes_on() {
        let mut presence = MockPresence::new();
        presence.expect_connected().returning(|_| Ok(true));
        let mut calls = 0;
        presence.expect_online().returning(move || {
            calls += 1;
            if calls == 1 {
                Err(RepoError::Unavailable(anyhow::anyhow!("down")))
            } else {
                Ok(Vec::new())
            }
        });
        let lists = Arc::<Mutex<Vec<Vec<UserId>>>>::default();
        let service = service(presence, recorder(Arc::clone(&lists)));
        service.connection_opened(&UserId::generate()).await.unwrap();
        run_for(Duration::from_secs(2)).await;
        assert!(lists.lock().unwrap().is_empty());
        service.connection_opened(&UserId::generate()).await.unwrap();
        run_for(Duration::from_secs(2)).await;
        assert_eq!(lists.lock().unwrap().len(), 1);
    }

    fn conversations(shared: bool, lookups: usize) -> MockConversationRepository {
        let mut conversations = MockConversationRepository::new();
        conversations
            .expect_find_by_participants()
            .times(lookups)
            .returning(move |pair| Ok(shared.then(|| Conversation::start(pair.clone(), chrono::Utc::now()))));
        conversations
    }

    #[tokio::test]
    async fn typing_goes_to_a_conversation_partner_only() {
        let (from, to) = (UserId::generate(), UserId::generate());
        let mut notifier = MockNotifier::new();
        let (f, t) = (from.clone(), to.clone());
        notifier
            .expect_notify()
            .withf(move |users, e| {
                users == [t.clone()]
                    && *e
                        == Event::Typing {
                            from: f.clone(),
                            to: TypingTarget::User(t.clone()),
                            is_typing: true,
                        }
            })
            .times(3)
            .returning(|_, _| Ok(()));
        // Three notices, one lookup.
        let service = service_with(MockPresence::new(), notifier, conversations(true, 1));
        for _ in 0..3 {
            service.typing(&from, &to, true).await;
        }
    }

    #[tokio::test]
    async fn typing_to_a_stranger_is_dropped_and_checked_each_time() {
        // Not remembered: the pair's first message may come at any moment (partners.rs).
        let mut notifier = MockNotifier::new();
        notifier.expect_notify().never();
        let service = service_with(MockPresence::new(), notifier, conversations(false, 3));
        let (me, stranger) = (UserId::generate(), UserId::generate());
        for _ in 0..3 {
            service.typing(&me, &stranger, true).await;
        }
    }

    #[tokio::test]
    async fn typing_is_dropped_when_the_conversation_cannot_be_checked() {
        let mut conversations = MockConversationRepository::new();
        conversations
            .expect_find_by_participants()
            .returning(|_| Err(RepoError::Unavailable(anyhow::anyhow!("down"))));
        let mut notifier = MockNotifier::new();
        notifier.expect_notify().never();
        let service = service_with(MockPresence::new(), notifier, conversations);
        service.typing(&UserId::generate(), &UserId::generate(), true).await;
    }

    #[tokio::test]
    async fn typing_to_oneself_is_dropped_without_a_lookup() {
        let me = UserId::generate();
        let mut notifier = MockNotifier::new();
        notifier.expect_notify().never();
        let service = service_with(MockPresence::new(), notifier, conversations(true, 0));
        service.typing(&me, &me, true).await;
    }

    #[tokio::test]
    async fn typing_in_a_group_is_published_once_to_the_group_without_a_lookup() {
        let (from, group) = (UserId::generate(), ConversationId::generate());
        let mut notifier = MockNotifier::new();
        let (f, g) = (from.clone(), group.clone());
        notifier
            .expect_notify_group()
            .withf(move |to, e| {
                *to == g
                    && *e
                        == Event::Typing {
                            from: f.clone(),
                            to: TypingTarget::Group(g.clone()),
                            is_typing: false,
                        }
            })
            .times(1)
            .returning(|_, _| Ok(()));
        notifier.expect_notify().never();
        let service = service_with(MockPresence::new(), notifier, conversations(true, 0));
        service.typing_in_group(&from, &group, false).await;
    }
}
