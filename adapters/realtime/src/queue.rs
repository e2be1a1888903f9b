//! A connection's event queue: bounded, one sender (the registry) and one receiver (the
//! session), and nothing allocated until an event waits in it.
//!
//! tokio's bounded channel allocates its first block of 32 slots and a cache-padded channel
//! state (about 1.5 KiB) when it is made; an idle socket holds that for its whole life.
//! Here the empty queue is a few words; the buffer grows with what waits and is given back
//! once a burst has been read.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

/// Buffer slots an emptied queue may keep; a larger buffer, left by a burst, is freed.
const KEPT_SLOTS: usize = 4;

/// Why [`QueueSender::try_send`] did not queue an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TrySendError {
    #[error("the queue is full")]
    Full,
    #[error("the receiver is gone")]
    Closed,
}

/// Why [`Receiver::try_recv`] returned no item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TryRecvError {
    #[error("the queue is empty")]
    Empty,
    #[error("the queue is empty and its sender is gone")]
    Disconnected,
}

struct State<T> {
    items: VecDeque<T>,
    /// The receiver waiting for an item.
    waker: Option<Waker>,
    /// The sender waiting for room ([`QueueSender::room`]).
    sender_waker: Option<Waker>,
    sender_gone: bool,
    receiver_gone: bool,
}

struct Shared<T> {
    capacity: usize,
    state: Mutex<State<T>>,
}

impl<T> Shared<T> {
    fn state(&self) -> MutexGuard<'_, State<T>> {
        // Every critical section is a push, a pop or a flag: a panic elsewhere leaves the
        // state whole.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A queue holding at most `capacity` items (at least 1).
pub fn queue<T>(capacity: usize) -> (QueueSender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        capacity: capacity.max(1),
        state: Mutex::new(State {
            items: VecDeque::new(),
            waker: None,
            sender_waker: None,
            sender_gone: false,
            receiver_gone: false,
        }),
    });
    (QueueSender { shared: shared.clone() }, Receiver { shared })
}

/// The sending end; dropping it ends the queue once the receiver has read what waits.
pub struct QueueSender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> QueueSender<T> {
    /// Queues `item` unless the queue is full or its receiver is gone.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError> {
        let waker = {
            let mut state = self.shared.state();
            if state.receiver_gone {
                return Err(TrySendError::Closed);
            }
            if state.items.len() >= self.shared.capacity {
                return Err(TrySendError::Full);
            }
            state.items.push_back(item);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Waits until `n` more items fit; `Err(Closed)` once the receiver is gone. Cancel safe:
    /// it reserves nothing, so the room is the sender's only while no one else sends.
    pub async fn room(&self, n: usize) -> Result<(), TrySendError> {
        poll_fn(|cx| {
            let mut state = self.shared.state();
            if state.receiver_gone {
                return Poll::Ready(Err(TrySendError::Closed));
            }
            if state.items.len() + n <= self.shared.capacity {
                return Poll::Ready(Ok(()));
            }
            register(&mut state.sender_waker, cx.waker());
            Poll::Pending
        })
        .await
    }

    /// Whether the receiver is gone.
    pub fn is_closed(&self) -> bool {
        self.shared.state().receiver_gone
    }
}

impl<T> Drop for QueueSender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.shared.state();
            state.sender_gone = true;
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The receiving end.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Receiver<T> {
    /// The next item; `None` once the sender is gone and everything was read. Cancel safe:
    /// an item is taken only when this returns it.
    pub async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| {
            let mut state = self.shared.state();
            if let Some(item) = take(&mut state) {
                return Poll::Ready(Some(item));
            }
            if state.sender_gone {
                return Poll::Ready(None);
            }
            register(&mut state.waker, cx.waker());
            Poll::Pending
        })
        .await
    }

    /// The next item if one waits.
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let mut state = self.shared.state();
        match take(&mut state) {
            Some(item) => Ok(item),
            None if state.sender_gone => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = self.shared.state();
        state.receiver_gone = true;
        // What waits will never be read; the sender may outlive this end.
        state.items = VecDeque::new();
        state.waker = None;
        if let Some(waker) = state.sender_waker.take() {
            waker.wake();
        }
    }
}

/// Pops the first item, freeing the buffer a burst left once the queue is empty.
/// Keeps `waker` as the one to wake (reusing the slot's allocation when it can).
fn register(slot: &mut Option<Waker>, waker: &Waker) {
    match slot {
        Some(kept) => kept.clone_from(waker),
        none => *none = Some(waker.clone()),
    }
}

/// A sender waiting for room is woken.
fn take<T>(state: &mut State<T>) -> Option<T> {
    let item = state.items.pop_front()?;
    if state.items.is_empty() && state.items.capacity() > KEPT_SLOTS {
        state.items = VecDeque::new();
    }
    if let Some(waker) = state.sender_waker.take() {
        waker.wake();
    }
    Some(item)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_come_out_in_order_up_to_the_capacity() {
        let (tx, mut rx) = queue(2);
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        assert_eq!(tx.try_send(3), Err(TrySendError::Full));
        assert_eq!(rx.try_recv(), Ok(1));
        tx.try_send(3).unwrap();
        assert_eq!((rx.try_recv(), rx.try_recv()), (Ok(2), Ok(3)));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    }

    #[tokio::test]
    async fn a_sender_waiting_for_room_is_woken_when_enough_was_read() {
        let (tx, mut rx) = queue(3);
        for i in 0..3 {
            tx.try_send(i).unwrap();
        }
        let mut room = std::pin::pin!(tx.room(2));
        let pending = std::time::Duration::from_millis(20);
        assert!(tokio::time::timeout(pending, room.as_mut()).await.is_err(), "the queue is full");
        assert_eq!(rx.recv().await, Some(0));
        assert!(tokio::time::timeout(pending, room.as_mut()).await.is_err(), "room for one only");
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(room.await, Ok(()));
        drop(rx);
        assert_eq!(tx.room(1).await, Err(TrySendError::Closed));
    }

    #[tokio::test]
    async fn the_receiver_reads_what_waits_then_sees_the_end() {
        let (tx, mut rx) = queue(4);
        tx.try_send("a").unwrap();
        drop(tx);
        assert_eq!(rx.recv().await, Some("a"));
        assert_eq!(rx.recv().await, None);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_a_send_from_another_task() {
        let (tx, mut rx) = queue(4);
        let sender = tokio::spawn(async move {
            tokio::task::yield_now().await;
            tx.try_send(7).unwrap();
            tx
        });
        assert_eq!(rx.recv().await, Some(7));
        drop(sender.await.unwrap());
        assert_eq!(rx.recv().await, None);
    }

    #[test]
    fn a_gone_receiver_closes_the_queue() {
        let (tx, rx) = queue(4);
        assert!(!tx.is_closed());
        drop(rx);
        assert!(tx.is_closed());
        assert_eq!(tx.try_send(1), Err(TrySendError::Closed));
    }

    #[test]
    fn an_emptied_queue_gives_back_the_buffer_of_a_burst() {
        let (tx, mut rx) = queue(64);
        for i in 0..32 {
            tx.try_send(i).unwrap();
        }
        while rx.try_recv().is_ok() {}
        assert_eq!(rx.shared.state().items.capacity(), 0);
    }
}
