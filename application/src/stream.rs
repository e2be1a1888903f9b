//! Following a user's message stream on one live connection: first what the client missed,
//! then live events, in stream order, with no gap and no repeat.
//!
//! Live `newMessage` events travel outside the store (this instance's registry, or Redis
//! from another instance), so they can arrive out of stream order, twice (replayed and
//! live), or not at all (a bus outage). The follower keeps the last position the
//! connection delivered: an event at the next position goes out as is, one at or before it
//! is a repeat and is dropped, and one further ahead means events were overtaken or lost,
//! so the positions in between are read from the store first. That read cannot come back
//! short: an event is announced only after its message is stored, and a position is
//! readable only once every earlier one is (see `MessageRepository::append`).

use std::sync::Arc;

use domain::{Cursor, UserId};

use crate::ports::{MessageRepository, RepoError, StreamItem};

/// Messages read from the store per round trip while catching up.
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
    /// The store does not (yet) hold a position an event announced: a client should
    /// reconnect and resume from its last cursor.
    #[error("stream position {announced} was announced but is not readable")]
    Unreadable { announced: Cursor },
}

/// What to do with a live `newMessage` event at some position.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// Deliver it: it is the next position.
    Deliver,
    /// Already delivered: drop it.
    Repeat,
    /// Deliver these instead, in order: the missed run up to and including the event's own
    /// message, and whatever the same read found stored after it (its events are repeats
    /// then).
    Fill(Vec<StreamItem>),
}

/// One connection's position in its user's stream. It reads the stream through the message
/// port alone: `stream` and `stream_head`.
pub struct StreamFollower {
    messages: Arc<dyn MessageRepository>,
    user: UserId,
    last: Cursor,
}

impl StreamFollower {
    /// A follower for a connection of `user` resuming after `since`, or, without `since`,
    /// starting with what is stored from now on. Call it **before** the connection is
    /// registered for live events, then [`catch_up`](Self::catch_up) once it is: messages
    /// stored in between are read then, and nothing falls in the seam.
    pub async fn start(
        messages: Arc<dyn MessageRepository>,
        user: UserId,
        since: Option<Cursor>,
    ) -> Result<Self, FollowError> {
        let head = messages.stream_head(&user).await?;
        let last = match since {
            Some(since) if since > head => return Err(FollowError::Ahead { since, head }),
            Some(since) => since,
            None => head,
        };
        Ok(Self { messages, user, last })
    }

    /// The last position delivered (or the starting one).
    pub fn last(&self) -> Cursor {
        self.last
    }

    /// The next page of stored messages the connection has not had; empty once caught up.
    /// Call it until it returns an empty page, delivering each page in order.
    pub async fn catch_up(&mut self) -> Result<Vec<StreamItem>, RepoError> {
        let page = self.messages.stream(&self.user, self.last, PAGE).await?;
        if let Some(item) = page.last() {
            self.last = item.cursor;
        }
        Ok(page)
    }

    /// Decides about a live event at `cursor`; see [`Admission`].
    pub async fn admit(&mut self, cursor: Cursor) -> Result<Admission, FollowError> {
        if cursor <= self.last {
            return Ok(Admission::Repeat);
        }
        if cursor == self.last.next() {
            self.last = cursor;
            return Ok(Admission::Deliver);
        }
        let mut missed = Vec::new();
        while self.last < cursor {
            let page = self.catch_up().await?;
            if page.is_empty() {
                break;
            }
            missed.extend(page);
        }
        if self.last < cursor {
            return Err(FollowError::Unreadable { announced: cursor });
        }
        Ok(Admission::Fill(missed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::MockMessageRepository;
    use chrono::{TimeZone, Utc};
    use domain::{ConversationId, Message, MessageBody, MessageId};

    fn cursor(n: u64) -> Cursor {
        Cursor::new(n).unwrap()
    }

    fn item(user: &UserId, n: u64) -> StreamItem {
        StreamItem {
            cursor: cursor(n),
            message: Message {
                id: MessageId::generate(),
                conversation_id: ConversationId::generate(),
                sender_id: UserId::generate(),
                receiver_id: user.clone(),
                body: MessageBody::parse(&format!("message {n}")).unwrap(),
                created_at: Utc.with_ymd_and_hms(2026, 5, 6, 7, 8, 9).unwrap(),
                client_id: None,
            },
        }
    }

    /// A stream of `stored` messages: reads return consecutive positions, as the port says.
    fn stored_up_to(messages: &mut MockMessageRepository, stored: u64) {
        messages.expect_stream().returning(move |user, after, limit| {
            Ok((after.position() + 1..=stored).take(limit as usize).map(|n| item(user, n)).collect())
        });
    }

    fn positions(items: &[StreamItem]) -> Vec<u64> {
        items.iter().map(|i| i.cursor.position()).collect()
    }

    #[tokio::test]
    async fn start_without_since_begins_at_the_stream_head() {
        let user = UserId::generate();
        let expected = user.clone();
        let mut messages = MockMessageRepository::new();
        messages.expect_stream_head().withf(move |u| *u == expected).times(1).returning(|_| Ok(cursor(17)));
        messages.expect_stream().never();
        let follower = StreamFollower::start(Arc::new(messages), user, None).await.unwrap();
        assert_eq!(follower.last(), cursor(17));
    }

    #[tokio::test]
    async fn start_with_since_begins_there() {
        let mut messages = MockMessageRepository::new();
        messages.expect_stream_head().times(1).returning(|_| Ok(cursor(9)));
        messages.expect_stream().never();
        let follower =
            StreamFollower::start(Arc::new(messages), UserId::generate(), Some(cursor(5))).await.unwrap();
        assert_eq!(follower.last(), cursor(5));
    }

    #[tokio::test]
    async fn start_beyond_the_stream_head_is_refused() {
        let mut messages = MockMessageRepository::new();
        messages.expect_stream_head().returning(|_| Ok(cursor(9)));
        let started = StreamFollower::start(Arc::new(messages), UserId::generate(), Some(cursor(10))).await;
        assert!(
            matches!(started, Err(FollowError::Ahead { since, head }) if since == cursor(10) && head == cursor(9))
        );
    }

    #[tokio::test]
    async fn start_fails_when_the_head_cannot_be_read() {
        let mut messages = MockMessageRepository::new();
        messages.expect_stream_head().returning(|_| Err(RepoError::Unavailable(anyhow::anyhow!("down"))));
        let started = StreamFollower::start(Arc::new(messages), UserId::generate(), None).await;
        assert!(matches!(started, Err(FollowError::Storage(RepoError::Unavailable(_)))));
    }

    #[tokio::test]
    async fn catch_up_pages_in_order_until_an_empty_page() {
        let user = UserId::generate();
        let expected = user.clone();
        let mut messages = MockMessageRepository::new();
        messages.expect_stream_head().returning(|_| Ok(cursor(1_000_000)));
        let stored = u64::from(PAGE) + 50;
        let mut seq = mockall::Sequence::new();
        for after in [3, 3 + u64::from(PAGE), stored] {
            let user = expected.clone();
            messages
                .expect_stream()
                .withf(move |u, a, limit| *u == user && *a == cursor(after) && *limit == PAGE)
                .times(1)
                .in_sequence(&mut seq)
                .returning(move |user, after, limit| {
                    Ok((after.position() + 1..=stored).take(limit as usize).map(|n| item(user, n)).collect())
                });
        }
        let mut follower = StreamFollower::start(Arc::new(messages), user, Some(cursor(3))).await.unwrap();

        let first = follower.catch_up().await.unwrap();
        assert_eq!(positions(&first), (4..=3 + u64::from(PAGE)).collect::<Vec<_>>());
        let second = follower.catch_up().await.unwrap();
        assert_eq!(positions(&second), (4 + u64::from(PAGE)..=stored).collect::<Vec<_>>());
        assert!(follower.catch_up().await.unwrap().is_empty());
        assert_eq!(follower.last(), cursor(stored), "an empty page keeps the position");
    }

    #[tokio::test]
    async fn the_next_position_is_delivered_as_is_without_reading() {
        let mut messages = MockMessageRepository::new();
        messages.expect_stream_head().returning(|_| Ok(cursor(1_000_000)));
        messages.expect_stream().never();
        let mut follower =
            StreamFollower::start(Arc::new(messages), UserId::generate(), Some(cursor(8))).await.unwrap();
        assert_eq!(follower.admit(cursor(9)).await.unwrap(), Admission::Deliver);
        assert_eq!(follower.last(), cursor(9));
        assert_eq!(follower.admit(cursor(10)).await.unwrap(), Admission::Deliver);
    }

    #[tokio::test]
    async fn an_old_or_repeated_position_is_a_repeat() {
        let mut messages = MockMessageRepository::new();
        messages.expect_stream_head().returning(|_| Ok(cursor(1_000_000)));
        messages.expect_stream().never();
        let mut follower =
            StreamFollower::start(Arc::new(messages), UserId::generate(), Some(cursor(8))).await.unwrap();
        assert_eq!(follower.admit(cursor(8)).await.unwrap(), Admission::Repeat);
        assert_eq!(follower.admit(cursor(2)).await.unwrap(), Admission::Repeat);
        assert_eq!(follower.last(), cursor(8), "a repeat moves nothing");
    }

    #[tokio::test]
    async fn a_position_ahead_fills_the_gap_with_the_stored_run() {
        let mut messages = MockMessageRepository::new();
        messages.expect_stream_head().returning(|_| Ok(cursor(1_000_000)));
        stored_up_to(&mut messages, 12);
        let mut follower =
            StreamFollower::start(Arc::new(messages), UserId::generate(), Some(cursor(8))).await.unwrap();
        let Admission::Fill(items) = follower.admit(cursor(11)).await.unwrap() else {
            panic!("a gap is filled");
        };
        // Everything read is delivered, the event's own message last or later, none twice.
        assert_eq!(positions(&items), [9, 10, 11, 12]);
        assert_eq!(follower.last(), cursor(12));
        assert_eq!(follower.admit(cursor(11)).await.unwrap(), Admission::Repeat);
        assert_eq!(follower.admit(cursor(12)).await.unwrap(), Admission::Repeat);
    }

    #[tokio::test]
    async fn a_gap_longer_than_a_page_is_filled_whole() {
        let stored = 2 * u64::from(PAGE) + 7;
        let mut messages = MockMessageRepository::new();
        messages.expect_stream_head().returning(|_| Ok(cursor(1_000_000)));
        stored_up_to(&mut messages, stored);
        let mut follower =
            StreamFollower::start(Arc::new(messages), UserId::generate(), Some(cursor(0))).await.unwrap();
        let Admission::Fill(items) = follower.admit(cursor(stored)).await.unwrap() else {
            panic!("a gap is filled");
        };
        assert_eq!(positions(&items), (1..=stored).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn an_announced_position_the_store_does_not_hold_is_unreadable() {
        let mut messages = MockMessageRepository::new();
        messages.expect_stream_head().returning(|_| Ok(cursor(1_000_000)));
        stored_up_to(&mut messages, 10);
        let mut follower =
            StreamFollower::start(Arc::new(messages), UserId::generate(), Some(cursor(8))).await.unwrap();
        let error = follower.admit(cursor(14)).await.unwrap_err();
        assert!(matches!(error, FollowError::Unreadable { announced } if announced == cursor(14)), "{error}");
    }

    #[tokio::test]
    async fn a_storage_failure_while_filling_is_reported() {
        let mut messages = MockMessageRepository::new();
        messages.expect_stream_head().returning(|_| Ok(cursor(1_000_000)));
        messages.expect_stream().returning(|_, _, _| Err(RepoError::Unavailable(anyhow::anyhow!("down"))));
        let mut follower =
            StreamFollower::start(Arc::new(messages), UserId::generate(), Some(cursor(1))).await.unwrap();
        let error = follower.admit(cursor(5)).await.unwrap_err();
        assert!(matches!(error, FollowError::Storage(RepoError::Unavailable(_))));
    }
}
