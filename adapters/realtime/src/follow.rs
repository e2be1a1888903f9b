//! A live connection's message stream, the same on every transport: what the connection
//! replays when it opens, then what it makes of each event its registry queue hands it.
//!
//! A transport session
//! 1. calls [`Follow::start`] **before** registering the connection,
//! 2. registers it, then, while [`Follow::replaying`], sends the frames of
//!    [`Follow::replay`] (one page per call, in order),
//! 3. and passes every [`Outbound`] taken from its queue through [`Follow::admit`], sending
//!    the frames it returns, in order (none for a repeat; the stored run of messages when
//!    live events were overtaken or lost).
//!
//! On a [`FollowError`] the session closes the connection with a reason ([`stop_reason`]):
//! the client reconnects with `since` set to the last cursor it processed and loses nothing.
//!
//! The queue must be read during the replay too (events other than `newMessage` go out at
//! once), or a long replay would fill it and get the connection evicted. A `newMessage`
//! taken from it meanwhile is held back rather than sent: it was stored before it was
//! announced, so the replay, which reads on until the store has nothing more, reaches it;
//! only the furthest one is kept, and checked once the replay ends, in case the store
//! answered short.

use std::sync::Arc;

use application::ports::{Event, MessageRepository, StreamItem};
use application::{Admission, FollowError, StreamFollower};
use domain::{Cursor, UserId};

use crate::registry::Outbound;

/// What a connection is told when it cannot go on following its stream without a gap,
/// and is closed: resume with `since`, or start over.
pub fn stop_reason(error: &FollowError) -> &'static str {
    match error {
        FollowError::Storage(_) => "server error: reconnect with since",
        FollowError::Unreadable { .. } => "resync: reconnect with since",
        FollowError::Ahead { .. } => "since is beyond the end of your message stream: start over from 0",
    }
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
        FollowError::Ahead { .. } => tracing::info!(error = %error, "refusing a resume beyond the stream"),
    }
}

/// One connection's [`StreamFollower`] and where its replay stands.
pub struct Follow {
    follower: StreamFollower,
    replaying: bool,
    /// The furthest `newMessage` taken from the queue during the replay.
    held: Option<(Cursor, Outbound)>,
}

impl Follow {
    /// Starts after `since`, or at the current end of `user`'s stream without it. Call it
    /// before the connection is registered for live events.
    pub async fn start(
        messages: Arc<dyn MessageRepository>,
        user: UserId,
        since: Option<Cursor>,
    ) -> Result<Self, FollowError> {
        let follower = StreamFollower::start(messages, user, since).await?;
        Ok(Self { follower, replaying: true, held: None })
    }

    /// Whether stored messages may remain to replay: call [`Follow::replay`] again.
    pub fn replaying(&self) -> bool {
        self.replaying
    }

    /// The next page of stored messages the connection has not had, as `newMessage` frames.
    /// Once the store has no more, the replay is over: what is returned then is at most the
    /// outcome of the event held back meanwhile (see the module's documentation).
    pub async fn replay(&mut self) -> Result<Vec<Outbound>, FollowError> {
        if !self.replaying {
            return Ok(Vec::new());
        }
        let page = self.follower.catch_up().await?;
        if !page.is_empty() {
            return Ok(frames(page));
        }
        self.replaying = false;
        match self.held.take() {
            Some((cursor, outbound)) if cursor > self.follower.last() => self.live(cursor, outbound).await,
            _ => Ok(Vec::new()),
        }
    }

    /// The frames to send for one event from the registry queue, in order: the event
    /// itself, nothing (a repeat, or a message the replay will reach), or the stored run of
    /// messages that ends with it.
    pub async fn admit(&mut self, outbound: Outbound) -> Result<Vec<Outbound>, FollowError> {
        let Some(cursor) = outbound.cursor else {
            return Ok(vec![outbound]);
        };
        if self.replaying {
            if self.held.as_ref().is_none_or(|(held, _)| cursor > *held) {
                self.held = Some((cursor, outbound));
            }
            return Ok(Vec::new());
        }
        self.live(cursor, outbound).await
    }

    async fn live(&mut self, cursor: Cursor, outbound: Outbound) -> Result<Vec<Outbound>, FollowError> {
        Ok(match self.follower.admit(cursor).await? {
            Admission::Deliver => vec![outbound],
            Admission::Repeat => Vec::new(),
            Admission::Fill(items) => frames(items),
        })
    }
}

/// Stored messages as the `newMessage` frames a live event would have carried.
fn frames(items: Vec<StreamItem>) -> Vec<Outbound> {
    items
        .into_iter()
        .flat_map(|StreamItem { cursor, message }| Outbound::encode(&Event::NewMessage { message, cursor }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use application::ports::{MockMessageRepository, RepoError};
    use domain::{ConversationId, Message, MessageBody, MessageId};
    use std::sync::Mutex;

    fn cursor(n: u64) -> Cursor {
        Cursor::new(n).unwrap()
    }

    fn message(user: &UserId, n: u64) -> Message {
        Message {
            id: MessageId::generate(),
            conversation_id: ConversationId::generate(),
            sender_id: UserId::generate(),
            receiver_id: user.clone(),
            body: MessageBody::parse(&format!("m{n}")).unwrap(),
            created_at: chrono::Utc::now(),
            client_id: None,
        }
    }

    /// A stream whose stored length is whatever `stored` holds at each read.
    fn stream(head: u64, stored: Arc<Mutex<u64>>) -> Arc<dyn MessageRepository> {
        let mut messages = MockMessageRepository::new();
        messages.expect_stream_head().returning(move |_| Ok(cursor(head)));
        messages.expect_stream().returning(move |user, after, limit| {
            let stored = *stored.lock().unwrap();
            Ok((after.position() + 1..=stored)
                .take(limit as usize)
                .map(|n| StreamItem { cursor: cursor(n), message: message(user, n) })
                .collect())
        });
        Arc::new(messages)
    }

    fn live(user: &UserId, n: u64) -> Outbound {
        Outbound::encode(&Event::NewMessage { message: message(user, n), cursor: cursor(n) }).remove(0)
    }

    fn cursors(frames: &[Outbound]) -> Vec<u64> {
        frames.iter().map(|f| f.cursor.expect("a newMessage frame").position()).collect()
    }

    async fn replay_all(follow: &mut Follow) -> Vec<Outbound> {
        let mut all = Vec::new();
        while follow.replaying() {
            all.extend(follow.replay().await.unwrap());
        }
        all
    }

    #[tokio::test]
    async fn the_replay_sends_what_follows_since_then_live_events_go_through() {
        let user = UserId::generate();
        let stored = Arc::new(Mutex::new(5));
        let mut follow =
            Follow::start(stream(5, stored.clone()), user.clone(), Some(cursor(2))).await.unwrap();
        let replayed = replay_all(&mut follow).await;
        assert_eq!(cursors(&replayed), [3, 4, 5]);
        assert!(replayed.iter().all(|f| f.name == "newMessage" && f.data.contains("\"cursor\"")));

        *stored.lock().unwrap() = 6;
        let event = live(&user, 6);
        assert_eq!(follow.admit(event.clone()).await.unwrap(), vec![event]);
        assert!(follow.admit(live(&user, 6)).await.unwrap().is_empty(), "a repeat is dropped");
        assert!(follow.admit(live(&user, 4)).await.unwrap().is_empty(), "so is an old one");
    }

    #[tokio::test]
    async fn without_since_only_what_is_stored_from_now_on_is_sent() {
        let user = UserId::generate();
        // Stored between `start` (head 9) and the registration.
        let stored = Arc::new(Mutex::new(10));
        let mut follow = Follow::start(stream(9, stored), user.clone(), None).await.unwrap();
        assert_eq!(cursors(&replay_all(&mut follow).await), [10]);
    }

    #[tokio::test]
    async fn a_live_event_ahead_of_the_last_one_sent_brings_the_missed_ones_first() {
        let user = UserId::generate();
        let stored = Arc::new(Mutex::new(3));
        let mut follow = Follow::start(stream(3, stored.clone()), user.clone(), None).await.unwrap();
        assert!(replay_all(&mut follow).await.is_empty());
        *stored.lock().unwrap() = 6;
        assert_eq!(cursors(&follow.admit(live(&user, 6)).await.unwrap()), [4, 5, 6]);
    }

    #[tokio::test]
    async fn new_messages_taken_during_the_replay_are_not_sent_twice() {
        let user = UserId::generate();
        let stored = Arc::new(Mutex::new(2));
        let mut follow =
            Follow::start(stream(0, stored.clone()), user.clone(), Some(cursor(0))).await.unwrap();
        // Announced while the replay is going on.
        *stored.lock().unwrap() = 3;
        assert!(follow.admit(live(&user, 3)).await.unwrap().is_empty());
        let typing =
            Outbound::encode(&Event::Typing { from: UserId::generate(), to: user.clone(), is_typing: true });
        assert_eq!(follow.admit(typing[0].clone()).await.unwrap(), typing, "other events pass at once");
        assert_eq!(cursors(&replay_all(&mut follow).await), [1, 2, 3]);
        assert!(follow.admit(live(&user, 3)).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_announced_message_the_store_does_not_hold_stops_the_connection() {
        let user = UserId::generate();
        let stored = Arc::new(Mutex::new(1));
        let mut follow = Follow::start(stream(1, stored), user.clone(), None).await.unwrap();
        replay_all(&mut follow).await;
        let stop = follow.admit(live(&user, 4)).await.unwrap_err();
        assert!(matches!(stop, FollowError::Unreadable { announced } if announced == cursor(4)));
        assert_eq!(stop_reason(&stop), "resync: reconnect with since");
    }

    #[tokio::test]
    async fn an_event_held_during_the_replay_is_checked_when_it_ends() {
        let user = UserId::generate();
        // The store answers short: position 5 was announced, only 2 are readable.
        let stored = Arc::new(Mutex::new(2));
        let mut follow = Follow::start(stream(0, stored), user.clone(), Some(cursor(0))).await.unwrap();
        assert!(follow.admit(live(&user, 5)).await.unwrap().is_empty());
        assert_eq!(cursors(&follow.replay().await.unwrap()), [1, 2]);
        assert!(matches!(follow.replay().await, Err(FollowError::Unreadable { .. })));
    }

    #[tokio::test]
    async fn a_storage_failure_at_start_is_reported() {
        let mut messages = MockMessageRepository::new();
        messages.expect_stream_head().returning(|_| Err(RepoError::Unavailable(anyhow::anyhow!("down"))));
        let stop = Follow::start(Arc::new(messages), UserId::generate(), None).await.err().unwrap();
        assert!(matches!(stop, FollowError::Storage(_)));
        assert_eq!(stop_reason(&stop), "server error: reconnect with since");
    }
}
