//! Real-time: presence of connections and typing notices. Transports (the native WebSocket,
//! Socket.IO) call these when a connection opens, closes or sends an event.
//!
//! Presence has two modes, chosen from the number of online users:
//! - **full list** (up to `full_list_max` online, the original app's behaviour): the online
//!   list goes to every connection whenever it changes. Its cost grows with the square of the
//!   connections (N clients coming online one by one would be N broadcasts of up to N ids to
//!   N connections), which is why it stops at a bound;
//! - **scoped** (above it): a user's changes go only to those sharing a conversation with
//!   them (direct partners and group co-members), as `presence` changes, and a new connection
//!   is told which of its partners are online. Anyone else is asked for on demand
//!   ([`RealtimeService::online_among`]).
//!
//! The mode goes to scoped once more than `full_list_max` users are online and back to the
//! full list once at most [`full_list_floor`] are, so a count hovering at the bound does not
//! flap; each switch is announced to every connection ([`PresenceUpdate::Mode`]), and a switch
//! to scoped is preceded by one last full list, the baseline the changes then apply to.
//!
//! Changes are announced by one background task, at most once per [`ANNOUNCE_WINDOW`], with
//! the state current when the announcement goes out (the last state is always sent, a window
//! after the change at most); and one user's changes claim an announcement at most once per
//! [`CHURN_INTERVAL`], so a client flapping online and offline cannot keep everyone busy. In
//! the scoped mode one announcement is, per recipient, one frame of the changes of its direct
//! partners and one per group with changes: N users coming online within a window cost
//! O(N) frames when each has a bounded number of conversations.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use domain::{Chat, ConversationId, ParticipantPair, UserId};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::partners::Partners;
use crate::ports::{
    ConversationRepository, ConversationSummary, Event, GroupRepository, Notifier, Presence, PresenceMode,
    PresenceUpdate, RepoError, TypingTarget,
};

/// The shortest time between two announcements of presence.
pub const ANNOUNCE_WINDOW: Duration = Duration::from_millis(250);
/// The shortest time between two announcements that changes of one user may claim; changes
/// inside it are announced at its end (or with an announcement others claimed earlier).
pub const CHURN_INTERVAL: Duration = Duration::from_secs(1);
/// Up to how many online users the full list is sent, unless configured otherwise.
pub const FULL_LIST_MAX: usize = 1_000;
/// A user's partners are found in their most recently updated conversations, this many.
pub const PARTNER_CONVERSATIONS: u32 = 200;
/// How many users' conversations an announcement reads at the same time.
const PARTNER_LOOKUPS: usize = 16;
/// At most this many partners are looked up for a new connection's snapshot.
pub const SNAPSHOT_PARTNERS: usize = 1_000;
/// How often the presence is asked for users who went offline elsewhere without a
/// connection closing (a crashed instance's), so that their partners are told too.
pub const DEPARTED_POLL: Duration = Duration::from_secs(1);

/// Once scoped, the mode goes back to the full list when at most this many users are online:
/// four fifths of `full_list_max`.
pub fn full_list_floor(full_list_max: usize) -> usize {
    full_list_max / 5 * 4 + full_list_max % 5 * 4 / 5
}

/// The mode for `online` users, coming from `mode`.
pub fn next_mode(mode: PresenceMode, online: usize, full_list_max: usize) -> PresenceMode {
    match mode {
        PresenceMode::FullList if online > full_list_max => PresenceMode::Scoped,
        PresenceMode::Scoped if online <= full_list_floor(full_list_max) => PresenceMode::FullList,
        unchanged => unchanged,
    }
}

/// What a connection just opened is shown, for it alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// Nothing for now: the user just came online, and the next full list, soon broadcast,
    /// reaches this connection too.
    Announced,
    /// The full list: the user was online already.
    OnlineList(Vec<UserId>),
    /// The scoped mode applies: these of the user's partners are online.
    Partners(Vec<UserId>),
}

pub struct RealtimeService {
    shared: Arc<Shared>,
    partners: Partners,
    /// Where a new connection's group co-members are found, for its snapshot.
    groups: Option<Arc<dyn GroupRepository>>,
    announcer: tokio::task::JoinHandle<()>,
    departures: tokio::task::JoinHandle<()>,
}

/// What the service and its announcing task share.
struct Shared {
    presence: Arc<dyn Presence>,
    notifier: Arc<dyn Notifier>,
    conversations: Arc<dyn ConversationRepository>,
    schedule: Schedule,
    full_list_max: AtomicUsize,
    scoped: AtomicBool,
}

impl Shared {
    fn mode(&self) -> PresenceMode {
        if self.scoped.load(Ordering::Acquire) {
            PresenceMode::Scoped
        } else {
            PresenceMode::FullList
        }
    }
}

impl Drop for RealtimeService {
    fn drop(&mut self) {
        self.announcer.abort();
        self.departures.abort();
    }
}

impl RealtimeService {
    /// Starts the task that announces presence: must be called within a Tokio runtime.
    /// Typing notices are relayed, and presence scoped, between users who share a
    /// conversation in `conversations`. The full list is sent up to [`FULL_LIST_MAX`]
    /// online users; see [`scoped_above`](Self::scoped_above).
    pub fn new(
        presence: Arc<dyn Presence>,
        notifier: Arc<dyn Notifier>,
        conversations: Arc<dyn ConversationRepository>,
    ) -> Self {
        let shared = Arc::new(Shared {
            presence,
            notifier,
            conversations: conversations.clone(),
            schedule: Schedule::default(),
            full_list_max: AtomicUsize::new(FULL_LIST_MAX),
            scoped: AtomicBool::new(false),
        });
        let announcer = tokio::spawn(announce(shared.clone()));
        let departures = tokio::spawn(departures(shared.clone()));
        Self { shared, partners: Partners::new(conversations), groups: None, announcer, departures }
    }

    /// Sends the full list up to `full_list_max` online users, and scopes presence above;
    /// a new connection's snapshot includes its co-members in `groups`.
    pub fn scoped_above(mut self, full_list_max: usize, groups: Arc<dyn GroupRepository>) -> Self {
        self.shared.full_list_max.store(full_list_max, Ordering::Release);
        self.groups = Some(groups);
        self
    }

    /// The presence mode that applies now.
    pub fn mode(&self) -> PresenceMode {
        self.shared.mode()
    }

    /// Call once a connection is registered for delivery: says what it alone is shown. Its
    /// user's coming online is announced within [`ANNOUNCE_WINDOW`] or [`CHURN_INTERVAL`].
    pub async fn connection_opened(&self, user: &UserId) -> Result<Opened, RepoError> {
        let first = self.shared.presence.connected(user).await?;
        if first {
            self.shared.schedule.changed(user);
        }
        match self.shared.mode() {
            PresenceMode::Scoped => Ok(Opened::Partners(self.partners_online(user).await?)),
            PresenceMode::FullList if first => Ok(Opened::Announced),
            PresenceMode::FullList => Ok(Opened::OnlineList(self.shared.presence.online().await?)),
        }
    }

    /// Call once per closed connection; announces the user going offline.
    pub async fn connection_closed(&self, user: &UserId) -> Result<(), RepoError> {
        if self.shared.presence.disconnected(user).await? {
            self.shared.schedule.changed(user);
        }
        Ok(())
    }

    pub async fn online_users(&self) -> Result<Vec<UserId>, RepoError> {
        self.shared.presence.online().await
    }

    /// Which of `users` are online, in the order asked, each once.
    pub async fn online_among(&self, users: &[UserId]) -> Result<Vec<UserId>, RepoError> {
        let mut seen = HashSet::new();
        let asked: Vec<UserId> = users.iter().filter(|user| seen.insert(*user)).cloned().collect();
        let online: HashSet<UserId> = self.shared.presence.online_among(&asked).await?.into_iter().collect();
        Ok(asked.into_iter().filter(|user| online.contains(user)).collect())
    }

    /// The user's partners who are online: the other side of their direct conversations and
    /// the members of their groups, among their [`PARTNER_CONVERSATIONS`] most recent
    /// conversations, [`SNAPSHOT_PARTNERS`] at most.
    async fn partners_online(&self, user: &UserId) -> Result<Vec<UserId>, RepoError> {
        let summaries = self.shared.conversations.page_for_user(user, None, PARTNER_CONVERSATIONS).await?;
        let mut partners = BTreeSet::new();
        for summary in summaries {
            if partners.len() >= SNAPSHOT_PARTNERS {
                break;
            }
            match summary.conversation {
                Chat::Direct(conversation) => {
                    partners.insert(other_side(&conversation.participants, user).clone());
                }
                Chat::Group(group) => {
                    let Some(groups) = &self.groups else { continue };
                    if let Some((members, _)) = groups.member_ids(&group.id).await? {
                        let room = SNAPSHOT_PARTNERS.saturating_sub(partners.len());
                        partners.extend(members.into_iter().filter(|member| member != user).take(room));
                    }
                }
            }
        }
        let partners: Vec<UserId> = partners.into_iter().collect();
        let mut online = self.shared.presence.online_among(&partners).await?;
        online.sort();
        Ok(online)
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
        if let Err(error) = self.shared.notifier.notify(std::slice::from_ref(to), &event).await {
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
        if let Err(error) = self.shared.notifier.notify_group(group, &event).await {
            tracing::debug!(error = %error, "typing notice not delivered");
        }
    }
}

fn other_side<'a>(pair: &'a ParticipantPair, user: &UserId) -> &'a UserId {
    if pair.first() == user {
        pair.second()
    } else {
        pair.first()
    }
}

/// When presence is due to be announced next, and whose changed since the last
/// announcement, shared by the callers that change presence and the announcing task. The
/// lock is held for a few map operations, never across an await.
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
    /// this moment rides on the announcement already due then; one within a
    /// [`CHURN_INTERVAL`] after it claims the announcement at the end of that interval; a
    /// later one claims an announcement now. Entries older than an interval are pruned at
    /// each announcement.
    paid_until: std::collections::HashMap<UserId, Instant>,
    /// Who changed since the last announcement.
    changed: HashSet<UserId>,
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
            state.changed.insert(user.clone());
        }
        self.wake.notify_one();
    }

    /// Puts back changes an announcement could not carry: they ride on the next one.
    fn keep(&self, users: Vec<UserId>) {
        self.state().changed.extend(users);
    }

    /// Waits until an announcement is due and at least [`ANNOUNCE_WINDOW`] has passed since
    /// `last`, then marks everything announced (changes from now on wait for the next one)
    /// and returns who changed.
    async fn next(&self, last: Option<Instant>) -> Vec<UserId> {
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
                return state.changed.drain().collect();
            }
            // An earlier change may come meanwhile: look again when one does.
            tokio::select! {
                () = tokio::time::sleep_until(at) => {}
                () = self.wake.notified() => {}
            }
        }
    }
}

/// The announcing task: announces presence as it is when each announcement is due.
async fn announce(shared: Arc<Shared>) {
    let mut last = None;
    loop {
        let changed = shared.schedule.next(last).await;
        last = Some(Instant::now());
        let online = match shared.presence.online().await {
            Ok(online) => online,
            Err(error) => {
                tracing::warn!(error = %error, "presence not announced: presence unavailable");
                shared.schedule.keep(changed);
                continue;
            }
        };
        let was = shared.mode();
        let now = next_mode(was, online.len(), shared.full_list_max.load(Ordering::Acquire));
        shared.scoped.store(now == PresenceMode::Scoped, Ordering::Release);
        if was != now {
            tracing::info!(online = online.len(), mode = ?now, "presence mode switched");
        }
        let result = match (was, now) {
            (PresenceMode::FullList, PresenceMode::FullList) => {
                broadcast(&shared, Event::OnlineUsers(online)).await
            }
            (PresenceMode::Scoped, PresenceMode::FullList) => {
                let mode = Event::Presence(PresenceUpdate::Mode(PresenceMode::FullList));
                match broadcast(&shared, mode).await {
                    Ok(()) => broadcast(&shared, Event::OnlineUsers(online)).await,
                    Err(error) => Err(error),
                }
            }
            // The last full list is the baseline the changes from now on apply to.
            (PresenceMode::FullList, PresenceMode::Scoped) => {
                match broadcast(&shared, Event::OnlineUsers(online)).await {
                    Ok(()) => {
                        broadcast(&shared, Event::Presence(PresenceUpdate::Mode(PresenceMode::Scoped))).await
                    }
                    Err(error) => Err(error),
                }
            }
            (PresenceMode::Scoped, PresenceMode::Scoped) => {
                announce_changes(&shared, changed, &online.into_iter().collect()).await;
                Ok(())
            }
        };
        if let Err(error) = result {
            tracing::warn!(error = %error, "presence not announced");
        }
    }
}

/// Announces, like a closed connection, the users the presence says went offline elsewhere
/// without one (a crashed instance's), in the scoped mode: this is how their partners hear
/// of it (in the full-list mode the list shows it).
async fn departures(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(DEPARTED_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // In the full-list mode the list shows them gone.
        if shared.mode() == PresenceMode::FullList {
            continue;
        }
        match shared.presence.take_departed().await {
            Ok(departed) => {
                for user in &departed {
                    shared.schedule.changed(user);
                }
            }
            Err(error) => tracing::debug!(error = %error, "departed users not read"),
        }
    }
}

async fn broadcast(shared: &Shared, event: Event) -> Result<(), crate::ports::NotifyError> {
    shared.notifier.broadcast(&event).await
}

/// The conversations of each of `users`, read [`PARTNER_LOOKUPS`] at a time: a burst of
/// connects is announced within a window or two, not one store read after the other. A user
/// whose conversations cannot be read is left out (logged).
async fn partners_of(shared: &Arc<Shared>, users: Vec<UserId>) -> Vec<(UserId, Vec<ConversationSummary>)> {
    let mut found = Vec::with_capacity(users.len());
    let mut lookups = tokio::task::JoinSet::new();
    let mut users = users.into_iter();
    loop {
        while lookups.len() < PARTNER_LOOKUPS {
            let Some(user) = users.next() else { break };
            let shared = shared.clone();
            lookups.spawn(async move {
                let summaries = shared.conversations.page_for_user(&user, None, PARTNER_CONVERSATIONS).await;
                (user, summaries)
            });
        }
        match lookups.join_next().await {
            None => return found,
            Some(Ok((user, Ok(summaries)))) => found.push((user, summaries)),
            Some(Ok((_, Err(error)))) => {
                tracing::warn!(error = %error, "a presence change not announced: partners unknown")
            }
            Some(Err(error)) => tracing::warn!(error = %error, "a partner lookup failed"),
        }
    }
}

/// Tells the online partners of each of `changed` their current state: one event per
/// recipient for the changes of its direct partners, one per group for its members'.
async fn announce_changes(shared: &Arc<Shared>, changed: Vec<UserId>, online: &HashSet<UserId>) {
    let mut direct: BTreeMap<UserId, Vec<(UserId, bool)>> = BTreeMap::new();
    let mut groups: BTreeMap<ConversationId, Vec<(UserId, bool)>> = BTreeMap::new();
    for (user, summaries) in partners_of(shared, changed).await {
        let state = (user.clone(), online.contains(&user));
        for summary in summaries {
            match summary.conversation {
                Chat::Direct(conversation) => {
                    let partner = other_side(&conversation.participants, &user);
                    if online.contains(partner) {
                        direct.entry(partner.clone()).or_default().push(state.clone());
                    }
                }
                Chat::Group(group) => groups.entry(group.id).or_default().push(state.clone()),
            }
        }
    }
    for (to, mut changes) in direct {
        changes.sort();
        let event = Event::Presence(PresenceUpdate::Changes(changes));
        if let Err(error) = shared.notifier.notify(std::slice::from_ref(&to), &event).await {
            tracing::debug!(error = %error, "presence changes not delivered");
        }
    }
    for (group, mut changes) in groups {
        changes.sort();
        let event = Event::Presence(PresenceUpdate::Changes(changes));
        if let Err(error) = shared.notifier.notify_group(&group, &event).await {
            tracing::debug!(error = %error, "presence changes not delivered to a group");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{
        ConversationSummary, MockConversationRepository, MockGroupRepository, MockNotifier, MockPresence,
    };
    use domain::{Conversation, Group, GroupName, Member, Role};

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
        assert_eq!(service.connection_opened(&user).await.unwrap(), Opened::Announced);
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
        assert_eq!(snapshot, Opened::OnlineList(vec![user]));
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

    #[test]
    fn the_mode_switches_above_the_bound_and_back_at_four_fifths_of_it() {
        use PresenceMode::{FullList, Scoped};
        assert_eq!(next_mode(FullList, 1_000, 1_000), FullList);
        assert_eq!(next_mode(FullList, 1_001, 1_000), Scoped);
        assert_eq!(next_mode(Scoped, 801, 1_000), Scoped, "no flapping around the bound");
        assert_eq!(next_mode(Scoped, 800, 1_000), FullList);
        assert_eq!(full_list_floor(2), 1);
        assert_eq!(full_list_floor(0), 0);
        assert!(full_list_floor(usize::MAX) < usize::MAX, "no overflow");
    }

    /// Who shares which conversation: direct pairs and groups.
    #[derive(Default)]
    struct World {
        pairs: Vec<(UserId, UserId)>,
        groups: Vec<(ConversationId, Vec<UserId>)>,
    }

    impl World {
        fn conversations(world: Arc<World>) -> MockConversationRepository {
            let mut conversations = MockConversationRepository::new();
            conversations.expect_page_for_user().returning(move |user, _, _| {
                let now = chrono::Utc::now();
                let me = Member::joining(user.clone(), Role::Member, now, 1);
                let direct = world.pairs.iter().filter(|(a, b)| a == user || b == user).map(|(a, b)| {
                    let pair = ParticipantPair::new(a.clone(), b.clone()).unwrap();
                    Chat::Direct(Conversation::start(pair, now))
                });
                let groups =
                    world.groups.iter().filter(|(_, members)| members.contains(user)).map(|(id, _)| {
                        Chat::Group(Group {
                            id: id.clone(),
                            name: GroupName::parse("g").unwrap(),
                            created_by: user.clone(),
                            created_at: now,
                            updated_at: now,
                            last_seq: 1,
                        })
                    });
                Ok(direct
                    .chain(groups)
                    .map(|conversation| ConversationSummary {
                        conversation,
                        last_message: None,
                        me: me.clone(),
                        unread: 0,
                    })
                    .collect())
            });
            conversations
        }

        fn groups(world: Arc<World>) -> MockGroupRepository {
            let mut groups = MockGroupRepository::new();
            groups.expect_member_ids().returning(move |asked| {
                Ok(world.groups.iter().find(|(id, _)| id == asked).map(|(_, members)| (members.clone(), 1)))
            });
            groups
        }
    }

    /// What a notifier was asked to deliver, and to whom.
    #[derive(Debug, Clone, PartialEq)]
    enum Sent {
        Everyone(Event),
        Users(Vec<UserId>, Event),
        Group(ConversationId, Event),
    }

    fn sender(sent: Arc<Mutex<Vec<Sent>>>) -> MockNotifier {
        let mut notifier = MockNotifier::new();
        let all = sent.clone();
        notifier.expect_broadcast().returning(move |event| {
            all.lock().unwrap().push(Sent::Everyone(event.clone()));
            Ok(())
        });
        let users = sent.clone();
        notifier.expect_notify().returning(move |to, event| {
            users.lock().unwrap().push(Sent::Users(to.to_vec(), event.clone()));
            Ok(())
        });
        notifier.expect_notify_group().returning(move |group, event| {
            sent.lock().unwrap().push(Sent::Group(group.clone(), event.clone()));
            Ok(())
        });
        notifier
    }

    /// A presence of `online`, answering `online_among` as the adapters do.
    fn presence_among(online: Arc<Mutex<Vec<UserId>>>) -> MockPresence {
        let mut presence = presence(online.clone());
        presence.expect_online_among().returning(move |users| {
            let online = online.lock().unwrap();
            Ok(users.iter().filter(|user| online.contains(user)).cloned().collect())
        });
        presence
    }

    fn scoped_service(
        world: Arc<World>,
        online: Arc<Mutex<Vec<UserId>>>,
        sent: Arc<Mutex<Vec<Sent>>>,
    ) -> RealtimeService {
        RealtimeService::new(
            Arc::new(presence_among(online)),
            Arc::new(sender(sent)),
            Arc::new(World::conversations(world.clone())),
        )
        .scoped_above(2, Arc::new(World::groups(world)))
    }

    fn changes(event: &Event) -> &[(UserId, bool)] {
        match event {
            Event::Presence(PresenceUpdate::Changes(changes)) => changes,
            other => panic!("not presence changes: {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn above_the_bound_a_last_full_list_and_the_mode_go_out_then_changes_to_partners_only() {
        let users: Vec<UserId> = (0..5).map(|_| UserId::generate()).collect();
        let group = ConversationId::generate();
        let world = Arc::new(World {
            pairs: vec![(users[0].clone(), users[3].clone())],
            groups: vec![(group.clone(), vec![users[1].clone(), users[3].clone()])],
        });
        let (online, sent) = (Arc::default(), Arc::<Mutex<Vec<Sent>>>::default());
        let service = scoped_service(world, online, sent.clone());
        for user in &users[..3] {
            service.connection_opened(user).await.unwrap();
        }
        run_for(ANNOUNCE_WINDOW * 2).await;
        assert_eq!(service.mode(), PresenceMode::Scoped);
        let mut baseline = users[..3].to_vec();
        baseline.sort();
        let switched = std::mem::take(&mut *sent.lock().unwrap());
        let Some(Sent::Everyone(Event::OnlineUsers(mut list))) = switched.iter().rev().nth(1).cloned() else {
            panic!("{switched:?}")
        };
        list.sort();
        assert_eq!(list, baseline, "the last full list is the baseline");
        assert_eq!(
            switched.last(),
            Some(&Sent::Everyone(Event::Presence(PresenceUpdate::Mode(PresenceMode::Scoped))))
        );

        // users[3] shares a direct conversation with users[0] and a group with users[1].
        assert_eq!(
            service.connection_opened(&users[3]).await.unwrap(),
            Opened::Partners({
                let mut partners = vec![users[0].clone(), users[1].clone()];
                partners.sort();
                partners
            })
        );
        // users[4] shares nothing: nobody is told.
        assert_eq!(service.connection_opened(&users[4]).await.unwrap(), Opened::Partners(Vec::new()));
        run_for(ANNOUNCE_WINDOW * 2).await;
        let sent = std::mem::take(&mut *sent.lock().unwrap());
        assert_eq!(sent.len(), 2, "{sent:?}");
        for delivery in &sent {
            match delivery {
                Sent::Users(to, event) => {
                    assert_eq!(to, &[users[0].clone()]);
                    assert_eq!(changes(event), [(users[3].clone(), true)]);
                }
                Sent::Group(to, event) => {
                    assert_eq!(to, &group);
                    assert_eq!(changes(event), [(users[3].clone(), true)]);
                }
                Sent::Everyone(event) => panic!("broadcast in the scoped mode: {event:?}"),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_user_who_departed_elsewhere_is_announced_offline_to_their_partners() {
        let users: Vec<UserId> = (0..4).map(|_| UserId::generate()).collect();
        let world = Arc::new(World { pairs: vec![(users[0].clone(), users[3].clone())], groups: Vec::new() });
        let others = users.iter().filter(|user| **user != users[1]).cloned().collect();
        let online = Arc::new(Mutex::new(others));
        let sent = Arc::<Mutex<Vec<Sent>>>::default();
        let mut presence = presence_among(online.clone());
        let departed = Arc::new(Mutex::new(Vec::new()));
        let taken = departed.clone();
        presence.expect_take_departed().returning(move || Ok(std::mem::take(&mut *taken.lock().unwrap())));
        let service = RealtimeService::new(
            Arc::new(presence),
            Arc::new(sender(sent.clone())),
            Arc::new(World::conversations(world.clone())),
        )
        .scoped_above(2, Arc::new(World::groups(world)));
        // Someone connecting here makes the service look at the four online: scoped.
        service.connection_opened(&users[1]).await.unwrap();
        run_for(ANNOUNCE_WINDOW * 2).await;
        assert_eq!(service.mode(), PresenceMode::Scoped);
        sent.lock().unwrap().clear();

        // users[3] was on an instance that crashed: gone from the presence, no close here.
        online.lock().unwrap().retain(|user| *user != users[3]);
        departed.lock().unwrap().push(users[3].clone());
        run_for(DEPARTED_POLL + ANNOUNCE_WINDOW * 2).await;
        let sent = sent.lock().unwrap();
        assert_eq!(
            *sent,
            vec![Sent::Users(
                vec![users[0].clone()],
                Event::Presence(PresenceUpdate::Changes(vec![(users[3].clone(), false)]))
            )]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn back_at_the_floor_the_mode_and_a_full_list_go_out() {
        let users: Vec<UserId> = (0..3).map(|_| UserId::generate()).collect();
        let (online, sent) = (Arc::default(), Arc::<Mutex<Vec<Sent>>>::default());
        let service = scoped_service(Arc::default(), online, sent.clone());
        for user in &users {
            service.connection_opened(user).await.unwrap();
        }
        run_for(ANNOUNCE_WINDOW * 2).await;
        service.connection_closed(&users[0]).await.unwrap();
        run_for(CHURN_INTERVAL * 2).await;
        assert_eq!(service.mode(), PresenceMode::Scoped, "two online: above the floor of one");
        sent.lock().unwrap().clear();
        service.connection_closed(&users[1]).await.unwrap();
        run_for(CHURN_INTERVAL * 2).await;
        assert_eq!(service.mode(), PresenceMode::FullList);
        assert_eq!(
            *sent.lock().unwrap(),
            vec![
                Sent::Everyone(Event::Presence(PresenceUpdate::Mode(PresenceMode::FullList))),
                Sent::Everyone(Event::OnlineUsers(vec![users[2].clone()])),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_thousand_users_connecting_within_a_second_cost_a_bounded_number_of_events_each() {
        // 1,000 users in 500 pairs and 10 groups of 100, all connecting within a second, on
        // a service already in the scoped mode.
        let users: Vec<UserId> = (0..1_000).map(|_| UserId::generate()).collect();
        let world = Arc::new(World {
            pairs: users.chunks(2).map(|pair| (pair[0].clone(), pair[1].clone())).collect(),
            groups: users.chunks(100).map(|members| (ConversationId::generate(), members.to_vec())).collect(),
        });
        let (online, sent) = (Arc::default(), Arc::<Mutex<Vec<Sent>>>::default());
        let service = scoped_service(world, online, sent.clone());
        let early: Vec<UserId> = (0..3).map(|_| UserId::generate()).collect();
        for user in &early {
            service.connection_opened(user).await.unwrap();
        }
        run_for(ANNOUNCE_WINDOW * 2).await;
        assert_eq!(service.mode(), PresenceMode::Scoped);
        sent.lock().unwrap().clear();
        for user in &users {
            service.connection_opened(user).await.unwrap();
            run_for(Duration::from_millis(1)).await;
        }
        run_for(ANNOUNCE_WINDOW * 4).await;
        let sent = sent.lock().unwrap();
        let windows = 1 + 1_000 / ANNOUNCE_WINDOW.as_millis() as usize + 1;
        let direct = sent.iter().filter(|s| matches!(s, Sent::Users(..))).count();
        let group = sent.iter().filter(|s| matches!(s, Sent::Group(..))).count();
        // Each user gets at most one event of its partner per window, each group one per
        // window: O(users), where a broadcast of each change would be O(users²).
        assert!(direct <= 1_000, "{direct} direct events");
        assert!(group <= 10 * windows, "{group} group events for {windows} windows");
        let changes: usize = sent
            .iter()
            .map(|s| match s {
                Sent::Users(_, e) | Sent::Group(_, e) => changes(e).len(),
                Sent::Everyone(e) => panic!("broadcast: {e:?}"),
            })
            .sum();
        // Each change once to its direct partner (when online by then) and once to its group.
        assert!(changes <= 2_000, "{changes} changes");
        assert!(changes >= 1_000 + 500, "{changes} changes");
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
