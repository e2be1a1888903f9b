//! Turns on hot documents within this process: sends that would write the same document
//! (a group's, a user's stream head) wait here for each other instead of colliding in the
//! database.
//!
//! MongoDB lets one open transaction write a document; every other transaction that writes
//! it meanwhile fails with a write conflict, and the driver runs it again after a random,
//! growing pause (up to half a second). With many sends into one conversation at once the
//! losers pile up pauses, and the last ones outlast the storage deadline although the
//! database was never busy. Queued here, the sends of one instance write the document one
//! after the other at the pace the database commits them, and only instances compete with
//! each other (still resolved by the conflicts, retries and order of the transactions:
//! turns change how long a send waits, never what it stores or which seq it gets).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use tokio::sync::{Mutex as Queue, OwnedMutexGuard};

/// How many keys the map holds before it forgets those nobody waits for.
const SWEEP_AT: usize = 1024;

#[derive(Default)]
pub(crate) struct Turns {
    queues: Mutex<Queues>,
}

#[derive(Default)]
struct Queues {
    by_key: HashMap<String, Weak<Queue<()>>>,
    sweep_at: usize,
}

/// The turn on some keys, held until dropped.
pub(crate) struct Turn {
    _held: Vec<OwnedMutexGuard<()>>,
}

impl Turns {
    /// Waits for the turn on every key of `keys`. Keys are taken in their sorted order, so
    /// two callers never wait for each other in a cycle.
    pub(crate) async fn take(&self, mut keys: Vec<String>) -> Turn {
        keys.sort_unstable();
        keys.dedup();
        let queues: Vec<Arc<Queue<()>>> = {
            // The map is only ever changed by the few lines below, which cannot panic
            // halfway: a poisoned lock still holds a consistent map.
            let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
            let queues = &mut *queues;
            let taken = keys
                .into_iter()
                .map(|key| {
                    let slot = queues.by_key.entry(key).or_default();
                    slot.upgrade().unwrap_or_else(|| {
                        let queue = Arc::new(Queue::new(()));
                        *slot = Arc::downgrade(&queue);
                        queue
                    })
                })
                .collect();
            if queues.by_key.len() >= queues.sweep_at.max(SWEEP_AT) {
                queues.by_key.retain(|_, queue| queue.strong_count() > 0);
                queues.sweep_at = queues.by_key.len() * 2;
            }
            taken
        };
        let mut held = Vec::with_capacity(queues.len());
        for queue in queues {
            held.push(queue.lock_owned().await);
        }
        Turn { _held: held }
    }
}

/// The key of a conversation's document.
pub(crate) fn conversation(id: &str) -> String {
    format!("conversation/{id}")
}

/// The key of a user's stream head.
pub(crate) fn head(user: &str) -> String {
    format!("head/{user}")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_second_caller_waits_until_the_first_turn_ends() {
        let turns = Arc::new(Turns::default());
        let first = turns.take(vec![head("a"), conversation("c")]).await;
        let waiting = tokio::spawn({
            let turns = Arc::clone(&turns);
            async move { turns.take(vec![conversation("c")]).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "the key is taken");
        let other = tokio::time::timeout(Duration::from_secs(1), turns.take(vec![head("b")])).await;
        assert!(other.is_ok(), "other keys are free");
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), waiting).await.expect("its turn comes").unwrap();
    }

    #[tokio::test]
    async fn keys_nobody_waits_for_are_forgotten() {
        let turns = Turns::default();
        for i in 0..SWEEP_AT * 3 {
            drop(turns.take(vec![head(&i.to_string())]).await);
        }
        let held = turns.queues.lock().unwrap().by_key.len();
        assert!(held <= SWEEP_AT, "{held} keys kept");
    }
}
