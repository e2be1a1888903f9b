//! What the registry has dispatched of the streams: a counter per bucket of users, one for
//! the groups' entries. A connection that starts at the end of everything reads where its
//! streams stand, then registers; anything stored in between either reaches it live or was
//! dispatched before the registration, and only then can the replay find something. So
//! when its counters did not move (see [`Dispatched::mark`]), the replay has nothing to read
//! and is skipped: one query less for every connection opened without `since`.
//!
//! The ordering that makes this exact: an event is stored before it is dispatched, a
//! dispatch counts the event before it looks up the connections (under the registry's read
//! lock), and a connection marks the counters before its first read of the store and checks
//! them after its registration (under the write lock). If a dispatch missed the connection,
//! its lock was released before the registration took it, so the count it made before is
//! seen by the check.

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::atomic::{AtomicU64, Ordering};

use application::ports::Event;
use domain::UserId;

/// Users share counters by buckets: an event of one user's stream only makes the users of
/// its bucket read their replay.
const BUCKETS: usize = 1024;

/// Events of the streams dispatched by this instance, counted.
pub(crate) struct Dispatched {
    users: Box<[AtomicU64]>,
    /// Entries of groups, for the connections of users in a group.
    groups: AtomicU64,
    /// Events of the stream delivered to everyone (none today; counted all the same).
    everyone: AtomicU64,
}

/// The counters a connection watches, as they stood before its start was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DispatchMark {
    bucket: usize,
    user: u64,
    groups: u64,
    everyone: u64,
}

impl Default for Dispatched {
    fn default() -> Self {
        Self {
            users: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            groups: AtomicU64::new(0),
            everyone: AtomicU64::new(0),
        }
    }
}

impl Dispatched {
    /// Counts `event` if it belongs to a stream, before it is offered to the connections of
    /// `users` (everyone when `None`).
    pub(crate) fn count(&self, users: Option<&[UserId]>, event: &Event) {
        if event.group_entry().is_some() {
            self.groups.fetch_add(1, Ordering::SeqCst);
        }
        if event.stream_position().is_none() {
            return;
        }
        match users {
            Some(users) => {
                for user in users {
                    self.users[bucket(user)].fetch_add(1, Ordering::SeqCst);
                }
            }
            None => {
                self.everyone.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// The counters `user`'s connection watches, as they stand now.
    pub(crate) fn mark(&self, user: &UserId) -> DispatchMark {
        self.mark_bucket(bucket(user))
    }

    /// Whether nothing that could concern the connection was dispatched since `mark`: no
    /// event of its user's bucket, and, if it follows groups, no entry of any group.
    pub(crate) fn quiet_since(&self, mark: &DispatchMark, in_groups: bool) -> bool {
        let now = self.mark_bucket(mark.bucket);
        now.user == mark.user && now.everyone == mark.everyone && (!in_groups || now.groups == mark.groups)
    }

    fn mark_bucket(&self, bucket: usize) -> DispatchMark {
        DispatchMark {
            bucket,
            user: self.users[bucket].load(Ordering::SeqCst),
            groups: self.groups.load(Ordering::SeqCst),
            everyone: self.everyone.load(Ordering::SeqCst),
        }
    }
}

fn bucket(user: &UserId) -> usize {
    // A fixed hasher: the same user always lands in the same bucket.
    let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(user);
    (hash % BUCKETS as u64) as usize
}

#[cfg(test)]
mod tests {
    use application::ports::Notice;
    use domain::{ConversationId, Cursor, MessageId};

    use super::*;

    fn notice(n: u64) -> Event {
        let notice = Notice::Read {
            conversation: ConversationId::generate(),
            seq: n,
            message_id: MessageId::generate(),
        };
        Event::Notice { notice, cursor: Cursor::new(n).unwrap() }
    }

    #[test]
    fn an_event_of_a_users_stream_moves_only_the_counter_of_that_users_bucket() {
        let dispatched = Dispatched::default();
        let user = UserId::generate();
        let elsewhere =
            std::iter::repeat_with(UserId::generate).find(|other| bucket(other) != bucket(&user)).unwrap();
        let mark = dispatched.mark(&user);
        dispatched.count(Some(std::slice::from_ref(&elsewhere)), &notice(1));
        assert!(dispatched.quiet_since(&mark, true));
        dispatched.count(Some(&[elsewhere.clone(), user.clone()]), &notice(2));
        assert!(!dispatched.quiet_since(&mark, false));
    }

    #[test]
    fn an_event_of_a_stream_for_everyone_concerns_everyone() {
        let dispatched = Dispatched::default();
        let user = UserId::generate();
        let mark = dispatched.mark(&user);
        dispatched.count(None, &notice(1));
        assert!(!dispatched.quiet_since(&mark, false));
    }
}
