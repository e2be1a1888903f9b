//! What every transport's session does with the core, written once: open a connection
//! (follow its stream, register it, presence), handle what the client sends, close it. A
//! transport only frames: `{"event":…}` text for `/ws`, `42[…]` packets for Socket.IO.
//!
//! A session
//! 1. authenticates its handshake and calls [`Hub::connect`], which starts the stream
//!    **before** registering the connection (see [`crate::follow`]);
//! 2. sends the frames of [`Hub::opened`] (presence), then serves the [`Live`] connection:
//!    its replay, its queue through [`Follow::admit`], the client's events through
//!    [`Hub::client_event`], ending at [`Live::expiry`] or when the registry ends it;
//! 3. hands the connection back to [`Hub::closed`].

use std::sync::Arc;

use application::ports::{Event, GroupRepository, MessageRepository, PresenceMode, PresenceUpdate};
use application::{Authenticated, FollowError, Opened, RealtimeService};
use domain::{ConversationId, SyncCursor, UserId};
use tokio::time::Instant;

use crate::delivery::Delivery;
use crate::follow::Follow;
use crate::registry::{ConnectionGuard, ConnectionRegistry, Outbound, Receiver, Refusal, SessionToken};
use crate::wire::{names, TypingIn};

/// Who connects, authenticated by the transport, and where their stream resumes: after
/// `since`, or from now on without it.
#[derive(Debug, Clone)]
pub struct Handshake {
    pub user: UserId,
    /// The connection ends when this token is revoked or expires.
    pub token: SessionToken,
    pub since: Option<SyncCursor>,
}

impl Handshake {
    pub fn new(session: &Authenticated, since: Option<SyncCursor>) -> Self {
        Self {
            user: session.user_id().clone(),
            token: SessionToken {
                id: session.claims.token_id.clone(),
                expires_at: session.claims.expires_at,
            },
            since,
        }
    }
}

/// A connection registered for delivery and following its user's stream.
pub struct Live {
    /// Unregisters the connection when dropped; hand it to [`Hub::closed`] instead.
    pub guard: ConnectionGuard,
    /// The events queued for this connection.
    pub queue: Receiver,
    pub follow: Follow,
    /// When the token the connection was opened with expires: it ends then
    /// ([`crate::Ended::Expired`]).
    pub expiry: Instant,
}

/// Why [`Hub::connect`] could not open a connection.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The stream cannot be followed from `since`.
    #[error(transparent)]
    Stream(#[from] FollowError),
    /// The registry refused the connection.
    #[error(transparent)]
    Registry(#[from] Refusal),
}

/// A client event that was not understood; the message says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidEvent(pub &'static str);

/// The live side of the core that every transport shares: this instance's connections and
/// the members of their groups ([`Delivery`]), presence and typing ([`RealtimeService`]),
/// and the ports the connections' streams are read from.
pub struct Hub {
    delivery: Arc<Delivery>,
    realtime: Arc<RealtimeService>,
    messages: Arc<dyn MessageRepository>,
    groups: Arc<dyn GroupRepository>,
}

impl Hub {
    pub fn new(
        delivery: Arc<Delivery>,
        realtime: Arc<RealtimeService>,
        messages: Arc<dyn MessageRepository>,
        groups: Arc<dyn GroupRepository>,
    ) -> Arc<Self> {
        Arc::new(Self { delivery, realtime, messages, groups })
    }

    pub fn registry(&self) -> &Arc<ConnectionRegistry> {
        self.delivery.registry()
    }

    /// Starts following the stream, then registers the connection: in this order, whatever
    /// is stored from the start on reaches the replay, and nothing falls in the seam. A
    /// connection that starts at the end of everything skips its replay when nothing that
    /// concerns it was dispatched in between (see [`Follow::registered`]).
    pub async fn connect(&self, handshake: Handshake) -> Result<Live, Refused> {
        let Handshake { user, token, since } = handshake;
        let mark = self.registry().mark(&user);
        let mut follow =
            Follow::start(self.messages.clone(), self.groups.clone(), user.clone(), since).await?;
        let (guard, queue) = self.registry().register(&user, &token)?;
        follow.registered(self.registry(), &mark);
        Ok(Live { guard, queue, follow, expiry: token.deadline() })
    }

    /// Presence for a connection just registered: the frames it alone gets. In the full-list
    /// mode, the online list when its user was already online (otherwise everyone, this
    /// connection included, is told through the registry); in the scoped mode, the mode and
    /// which of its user's partners are online.
    pub async fn opened(&self, user: &UserId) -> Vec<Outbound> {
        match self.realtime.connection_opened(user).await {
            Ok(Opened::OnlineList(online)) => Outbound::encode(&Event::OnlineUsers(online)),
            Ok(Opened::Announced) => Vec::new(),
            Ok(Opened::Partners(online)) => {
                let mut frames =
                    Outbound::encode(&Event::Presence(PresenceUpdate::Mode(PresenceMode::Scoped)));
                if !online.is_empty() {
                    let changes = online.into_iter().map(|partner| (partner, true)).collect();
                    frames.extend(Outbound::encode(&Event::Presence(PresenceUpdate::Changes(changes))));
                }
                frames
            }
            Err(error) => {
                tracing::warn!(error = %error, "presence unavailable for a new connection");
                Vec::new()
            }
        }
    }

    /// Unregisters a connection, then updates presence.
    pub async fn closed(&self, guard: ConnectionGuard) {
        let user = guard.user().clone();
        drop(guard);
        if let Err(error) = self.realtime.connection_closed(&user).await {
            tracing::warn!(error = %error, "presence not updated for a closed connection");
        }
    }

    /// Handles one event a client of `user` sent, by name, on any transport. Unknown events
    /// are ignored, so clients can be newer than the server.
    pub async fn client_event(
        &self,
        user: &UserId,
        name: &str,
        data: serde_json::Value,
    ) -> Result<(), InvalidEvent> {
        match name {
            names::TYPING => {
                const EXPECTED: &str =
                    "typing needs data {\"to\": userId} or {\"conversationId\": groupId}, with \"isTyping\": bool";
                let typing = serde_json::from_value::<TypingIn>(data).map_err(|_| InvalidEvent(EXPECTED))?;
                // An id that is not one of ours names nobody: the notice goes nowhere, as one
                // to a stranger or a group of others does, without telling the client what
                // exists.
                match (typing.to, typing.conversation_id) {
                    (Some(to), None) => {
                        if let Ok(to) = UserId::parse(&to) {
                            self.realtime.typing(user, &to, typing.is_typing).await;
                        }
                    }
                    (None, Some(group)) => {
                        if let Ok(group) = ConversationId::parse(&group) {
                            self.group_typing(user, &group, typing.is_typing).await;
                        }
                    }
                    _ => return Err(InvalidEvent(EXPECTED)),
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Relays typing in a group to its other members, if `user` is one (asked of the
    /// members this instance remembers: a notice costs no read of the store).
    async fn group_typing(&self, user: &UserId, group: &ConversationId, is_typing: bool) {
        match self.delivery.members().is_member(group, user).await {
            Ok(true) => self.realtime.typing_in_group(user, group, is_typing).await,
            Ok(false) => {}
            Err(error) => tracing::debug!(error = %error, "typing notice dropped: membership not checked"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::members::GroupMembers;
    use application::ports::{
        MockConversationRepository, MockGroupRepository, MockMessageRepository, MockNotifier, MockPresence,
        TypingTarget,
    };
    use serde_json::json;

    /// A hub whose group `group` has `members`, relaying through `notifier`.
    fn hub(group: &ConversationId, members: Vec<UserId>, notifier: MockNotifier) -> Arc<Hub> {
        let mut groups = MockGroupRepository::new();
        let known = group.clone();
        groups
            .expect_member_ids()
            .returning(move |asked| Ok((*asked == known).then(|| (members.clone(), 1))));
        let groups: Arc<dyn GroupRepository> = Arc::new(groups);
        let delivery = Delivery::new(ConnectionRegistry::new(4, 0), GroupMembers::new(groups.clone()));
        let realtime = RealtimeService::new(
            Arc::new(MockPresence::new()),
            Arc::new(notifier),
            Arc::new(MockConversationRepository::new()),
        );
        Hub::new(delivery, Arc::new(realtime), Arc::new(MockMessageRepository::new()), groups)
    }

    #[tokio::test]
    async fn a_members_typing_goes_to_the_group() {
        let (group, me) = (ConversationId::generate(), UserId::generate());
        let mut notifier = MockNotifier::new();
        let (g, from) = (group.clone(), me.clone());
        notifier
            .expect_notify_group()
            .withf(move |to, event| {
                *to == g
                    && *event
                        == Event::Typing {
                            from: from.clone(),
                            to: TypingTarget::Group(g.clone()),
                            is_typing: true,
                        }
            })
            .times(2)
            .returning(|_, _| Ok(()));
        let hub = hub(&group, vec![UserId::generate(), me.clone()], notifier);
        for _ in 0..2 {
            let data = json!({"conversationId": group.as_str(), "isTyping": true});
            hub.client_event(&me, "typing", data).await.unwrap();
        }
    }

    #[tokio::test]
    async fn typing_in_a_group_of_others_or_an_unknown_one_goes_nowhere() {
        let group = ConversationId::generate();
        let mut notifier = MockNotifier::new();
        notifier.expect_notify_group().never();
        let hub = hub(&group, vec![UserId::generate()], notifier);
        let me = UserId::generate();
        for target in [group.to_string(), ConversationId::generate().to_string(), "not-an-id".into()] {
            hub.client_event(&me, "typing", json!({"conversationId": target, "isTyping": true}))
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn above_the_bound_a_new_connection_gets_the_mode_and_its_online_partners() {
        use application::ports::{Appended, MessageRepository as _};
        use domain::{Conversation, Message, MessageBody, MessageId, ParticipantPair};

        let store = Arc::new(chat_memory::MemoryStore::new());
        let (me, partner, stranger) = (UserId::generate(), UserId::generate(), UserId::generate());
        let pair = ParticipantPair::new(me.clone(), partner.clone()).unwrap();
        let conversation = Conversation::start(pair, chrono::Utc::now());
        let hello = Message {
            reply_to: None,
            changed: None,
            id: MessageId::generate(),
            conversation_id: conversation.id.clone(),
            sender_id: partner.clone(),
            receiver_id: Some(me.clone()),
            body: MessageBody::parse("hi").unwrap(),
            system: None,
            seq: 0,
            created_at: chrono::Utc::now(),
            client_id: None,
        };
        let Appended::Created(_) = store.append(&conversation, &hello).await.unwrap() else {
            panic!("stored")
        };
        let delivery = Delivery::new(ConnectionRegistry::new(4, 0), GroupMembers::new(store.clone()));
        // Scoped as soon as anyone is online.
        let realtime =
            RealtimeService::new(Arc::new(crate::InMemoryPresence::new()), delivery.clone(), store.clone())
                .scoped_above(0, store.clone());
        let hub = Hub::new(delivery, Arc::new(realtime), store.clone(), store.clone());

        assert!(hub.opened(&partner).await.is_empty(), "the full list is broadcast");
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while hub.realtime.mode() != PresenceMode::Scoped {
            assert!(Instant::now() < deadline, "the mode did not switch");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let frames = |frames: Vec<Outbound>| -> Vec<(&'static str, serde_json::Value)> {
            frames.into_iter().map(|f| (f.name, serde_json::from_str(&f.data).unwrap())).collect()
        };
        assert_eq!(
            frames(hub.opened(&me).await),
            [
                ("presenceMode", json!({"mode": "scoped"})),
                ("presence", json!([{"userId": partner.as_str(), "online": true}])),
            ]
        );
        assert_eq!(frames(hub.opened(&stranger).await), [("presenceMode", json!({"mode": "scoped"}))]);
    }

    #[tokio::test]
    async fn typing_names_one_target_exactly() {
        let group = ConversationId::generate();
        let hub = hub(&group, Vec::new(), MockNotifier::new());
        let me = UserId::generate();
        for data in [
            json!({"isTyping": true}),
            json!({"to": UserId::generate().as_str(), "conversationId": group.as_str()}),
            json!({"conversationId": 5}),
            json!("typing"),
        ] {
            let refused = hub.client_event(&me, "typing", data.clone()).await.unwrap_err();
            assert!(refused.0.contains("conversationId"), "{data}: {refused}");
        }
        assert_eq!(hub.client_event(&me, "somethingNewer", json!({})).await, Ok(()));
    }
}
