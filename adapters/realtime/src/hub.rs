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

use application::ports::{Event, MessageRepository};
use application::{Authenticated, FollowError, RealtimeService};
use domain::{Cursor, UserId};
use tokio::time::Instant;

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
    pub since: Option<Cursor>,
}

impl Handshake {
    pub fn new(session: &Authenticated, since: Option<Cursor>) -> Self {
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

/// The live side of the core that every transport shares: the registry of this instance's
/// connections, presence and typing ([`RealtimeService`]), and the message port the
/// connections' streams are read from.
pub struct Hub {
    registry: Arc<ConnectionRegistry>,
    realtime: Arc<RealtimeService>,
    messages: Arc<dyn MessageRepository>,
}

impl Hub {
    pub fn new(
        registry: Arc<ConnectionRegistry>,
        realtime: Arc<RealtimeService>,
        messages: Arc<dyn MessageRepository>,
    ) -> Arc<Self> {
        Arc::new(Self { registry, realtime, messages })
    }

    pub fn registry(&self) -> &Arc<ConnectionRegistry> {
        &self.registry
    }

    /// Starts following the stream, then registers the connection: in this order, whatever
    /// is stored from the start on reaches the replay, and nothing falls in the seam.
    pub async fn connect(&self, handshake: Handshake) -> Result<Live, Refused> {
        let Handshake { user, token, since } = handshake;
        let follow = Follow::start(self.messages.clone(), user.clone(), since).await?;
        let (guard, queue) = self.registry.register(&user, &token)?;
        Ok(Live { guard, queue, follow, expiry: token.deadline() })
    }

    /// Presence for a connection just registered: the frames it alone gets (the online list,
    /// when its user was already online; otherwise everyone, this connection included, is
    /// told through the registry).
    pub async fn opened(&self, user: &UserId) -> Vec<Outbound> {
        match self.realtime.connection_opened(user).await {
            Ok(Some(online)) => Outbound::encode(&Event::OnlineUsers(online)),
            Ok(None) => Vec::new(),
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
                let typing = serde_json::from_value::<TypingIn>(data)
                    .map_err(|_| InvalidEvent("typing needs data {\"to\": userId, \"isTyping\": bool}"))?;
                // An id that is not one of ours names nobody: the notice goes nowhere, as one
                // to a stranger does, without telling the client who exists.
                if let Ok(to) = UserId::parse(&typing.to) {
                    self.realtime.typing(user, &to, typing.is_typing).await;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}
