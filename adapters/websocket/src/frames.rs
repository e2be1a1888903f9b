//! A WebSocket served on an actix worker, lean enough to hold many idle ones: the handshake
//! answer, the frames read from the client ([`MessageStream`]), and a [`Session`] that sends
//! frames through the response body.
//!
//! actix-ws, which this replaces, hands frames from its session to the response body
//! through a tokio channel of 32 places, allocated up front, and keeps its read buffer and
//! a message queue for as long as the socket is open: about 2 KiB per socket, idle or not.
//! The session task and the response body run on the same worker, so here they share a
//! queue behind an `Rc<RefCell<_>>`; nothing is allocated while no frame waits, and the
//! buffers a burst grew are given back once it is through. Frames, their encoding and the
//! close codes are actix-http's.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use actix_codec::{Decoder as _, Encoder as _};
use actix_http::ws::{Codec, Frame, ProtocolError};
use actix_web::body::{BodyStream, MessageBody as _};
use actix_web::web::{Bytes, BytesMut};
use actix_web::{dev, web, HttpRequest, HttpResponse};
use bytestring::ByteString;
use futures_util::Stream;

pub use actix_http::ws::{CloseCode, CloseReason, Message};

/// Frames a session may queue before a send waits for the body to take them: as many as
/// actix-ws's channel held.
const QUEUED_FRAMES: usize = 32;
/// Places an emptied queue may keep; the larger buffer a burst left is freed.
const KEPT_PLACES: usize = 4;

/// Answers a WebSocket handshake: the `101` response, whose body carries what the session
/// sends, the session, and the client's frames. A request that is no WebSocket handshake
/// is refused with actix-http's answer (400 and the reason).
pub fn handle(
    req: &HttpRequest,
    body: web::Payload,
) -> Result<(HttpResponse, Session, MessageStream), actix_web::Error> {
    let mut response = actix_http::ws::handshake(req.head())?;
    let shared = Rc::new(RefCell::new(Outgoing::default()));
    let outgoing = Body { shared: shared.clone(), codec: Codec::new() };
    let response = response.message_body(BodyStream::new(outgoing).boxed())?;
    Ok((response.into(), Session { shared }, MessageStream::new(body.into_inner())))
}

/// The session ended, or the connection did: nothing more can be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the websocket is closed")]
pub struct Closed;

/// What the session queued and the body has not taken yet.
#[derive(Default)]
struct Outgoing {
    frames: VecDeque<Message>,
    /// The session sent its close frame or was dropped: the body ends once the queue is out.
    closing: bool,
    /// The body is gone with the connection: sends fail.
    gone: bool,
    /// The body, waiting for a frame.
    body_waker: Option<Waker>,
    /// The session, waiting for room in the queue.
    session_waker: Option<Waker>,
}

/// Sends frames to the client. Dropping it (or [`Session::close`]) ends the response body,
/// and so the connection, once what was queued is out.
pub struct Session {
    shared: Rc<RefCell<Outgoing>>,
}

impl Session {
    /// Sends a text frame.
    pub async fn text(&mut self, text: impl Into<ByteString>) -> Result<(), Closed> {
        self.send(Message::Text(text.into())).await
    }

    /// Sends a ping carrying `bytes`.
    pub async fn ping(&mut self, bytes: &[u8]) -> Result<(), Closed> {
        self.send(Message::Ping(Bytes::copy_from_slice(bytes))).await
    }

    /// Answers a ping with `bytes`.
    pub async fn pong(&mut self, bytes: &[u8]) -> Result<(), Closed> {
        self.send(Message::Pong(Bytes::copy_from_slice(bytes))).await
    }

    /// Sends the close frame, after which the connection ends.
    pub async fn close(mut self, reason: Option<CloseReason>) -> Result<(), Closed> {
        self.send(Message::Close(reason)).await
    }

    /// Queues `message` once there is room. Cancel safe: dropped before it completes, it
    /// has queued nothing.
    async fn send(&mut self, message: Message) -> Result<(), Closed> {
        let mut message = Some(message);
        poll_fn(|cx| {
            let mut out = self.shared.borrow_mut();
            if out.gone || out.closing {
                return Poll::Ready(Err(Closed));
            }
            if out.frames.len() >= QUEUED_FRAMES {
                set_waker(&mut out.session_waker, cx);
                return Poll::Pending;
            }
            out.frames.extend(message.take());
            if let Some(body) = out.body_waker.take() {
                body.wake();
            }
            Poll::Ready(Ok(()))
        })
        .await
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let mut out = self.shared.borrow_mut();
        out.closing = true;
        if let Some(body) = out.body_waker.take() {
            body.wake();
        }
    }
}

/// The response body: the queued frames, encoded.
struct Body {
    shared: Rc<RefCell<Outgoing>>,
    codec: Codec,
}

impl Stream for Body {
    type Item = Result<Bytes, ProtocolError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let mut out = this.shared.borrow_mut();
        if out.frames.is_empty() {
            if out.closing {
                return Poll::Ready(None);
            }
            set_waker(&mut out.body_waker, cx);
            return Poll::Pending;
        }
        let mut bytes = BytesMut::new();
        while let Some(message) = out.frames.pop_front() {
            if let Err(error) = this.codec.encode(message, &mut bytes) {
                return Poll::Ready(Some(Err(error)));
            }
        }
        if out.frames.capacity() > KEPT_PLACES {
            out.frames = VecDeque::new();
        }
        if let Some(session) = out.session_waker.take() {
            session.wake();
        }
        Poll::Ready(Some(Ok(bytes.freeze())))
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        let mut out = self.shared.borrow_mut();
        out.gone = true;
        out.frames = VecDeque::new();
        if let Some(session) = out.session_waker.take() {
            session.wake();
        }
    }
}

fn set_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(waker) => waker.clone_from(cx.waker()),
        none => *none = Some(cx.waker().clone()),
    }
}

/// The client's frames, one message at a time.
pub struct MessageStream {
    payload: dev::Payload,
    /// Bytes read and not yet decoded; given back whenever they are all decoded.
    buf: BytesMut,
    codec: Codec,
    ended: bool,
}

impl MessageStream {
    fn new(payload: dev::Payload) -> Self {
        Self { payload, buf: BytesMut::new(), codec: Codec::new(), ended: false }
    }

    /// Frames larger than `bytes` fail with [`ProtocolError::Overflow`] (64 KiB unless set).
    #[must_use]
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.codec = self.codec.max_size(bytes);
        self
    }
}

impl Stream for MessageStream {
    type Item = Result<Message, ProtocolError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(frame) = this.codec.decode(&mut this.buf)? {
                if this.buf.is_empty() {
                    this.buf = BytesMut::new();
                }
                return Poll::Ready(Some(message(frame)));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.payload).poll_next(cx) {
                Poll::Ready(Some(Ok(bytes))) => this.buf.extend_from_slice(&bytes),
                Poll::Ready(Some(Err(error))) => {
                    return Poll::Ready(Some(Err(ProtocolError::Io(io::Error::other(error)))))
                }
                Poll::Ready(None) => this.ended = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

fn message(frame: Frame) -> Result<Message, ProtocolError> {
    Ok(match frame {
        Frame::Text(bytes) => Message::Text(
            ByteString::try_from(bytes)
                .map_err(|error| ProtocolError::Io(io::Error::new(io::ErrorKind::InvalidData, error)))?,
        ),
        Frame::Binary(bytes) => Message::Binary(bytes),
        Frame::Ping(bytes) => Message::Ping(bytes),
        Frame::Pong(bytes) => Message::Pong(bytes),
        Frame::Close(reason) => Message::Close(reason),
        Frame::Continuation(item) => Message::Continuation(item),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{FutureExt as _, StreamExt as _};

    fn pair() -> (Session, Body) {
        let shared = Rc::new(RefCell::new(Outgoing::default()));
        (Session { shared: shared.clone() }, Body { shared, codec: Codec::new() })
    }

    /// What a client reads from `bytes`.
    fn read(bytes: &[u8]) -> Vec<Frame> {
        let mut codec = Codec::new().client_mode();
        let mut buf = BytesMut::from(bytes);
        std::iter::from_fn(|| codec.decode(&mut buf).unwrap()).collect()
    }

    #[tokio::test]
    async fn queued_frames_go_out_in_order_and_the_close_ends_the_body() {
        let (mut session, mut body) = pair();
        session.text("a").await.unwrap();
        session.ping(b"p").await.unwrap();
        let bytes = body.next().await.unwrap().unwrap();
        let frames = read(&bytes);
        assert!(matches!(&frames[..], [Frame::Text(a), Frame::Ping(p)] if &a[..] == b"a" && &p[..] == b"p"));
        session.close(Some(CloseCode::Policy.into())).await.unwrap();
        let bytes = body.next().await.unwrap().unwrap();
        assert!(matches!(&read(&bytes)[..], [Frame::Close(Some(r))] if r.code == CloseCode::Policy));
        assert!(body.next().await.is_none(), "the body ends after the close frame");
    }

    #[tokio::test]
    async fn a_send_waits_for_room_until_the_body_takes_the_queue() {
        let (mut session, mut body) = pair();
        for _ in 0..QUEUED_FRAMES {
            session.text("x").await.unwrap();
        }
        let mut send = Box::pin(session.text("last"));
        assert!(send.as_mut().now_or_never().is_none(), "the queue is full");
        assert_eq!(read(&body.next().await.unwrap().unwrap()).len(), QUEUED_FRAMES);
        send.await.unwrap();
        assert_eq!(read(&body.next().await.unwrap().unwrap()).len(), 1);
    }

    #[tokio::test]
    async fn sends_fail_once_the_connection_is_gone() {
        let (mut session, body) = pair();
        drop(body);
        assert_eq!(session.text("late").await, Err(Closed));
    }

    #[tokio::test]
    async fn a_dropped_session_ends_the_body_after_what_it_queued() {
        let (mut session, mut body) = pair();
        session.text("bye").await.unwrap();
        drop(session);
        assert_eq!(read(&body.next().await.unwrap().unwrap()).len(), 1);
        assert!(body.next().await.is_none());
    }

    #[tokio::test]
    async fn client_frames_are_read_one_message_at_a_time_until_the_payload_ends() {
        let (mut sender, payload) = actix_http::h1::Payload::create(false);
        let mut client = Codec::new().client_mode();
        let mut wire = BytesMut::new();
        client.encode(Message::Text("hello".into()), &mut wire).unwrap();
        client.encode(Message::Pong(Bytes::from_static(b"p")), &mut wire).unwrap();
        // Split mid-frame, as TCP may.
        let rest = wire.split_off(3);
        sender.feed_data(wire.freeze());
        sender.feed_data(rest.freeze());
        sender.feed_eof();
        let mut stream = MessageStream::new(dev::Payload::from(payload));
        assert!(matches!(stream.next().await, Some(Ok(Message::Text(t))) if &*t == "hello"));
        assert!(matches!(stream.next().await, Some(Ok(Message::Pong(p))) if &p[..] == b"p"));
        assert!(stream.next().await.is_none());
        assert_eq!(stream.buf.capacity(), 0, "nothing is kept between frames");
    }

    #[tokio::test]
    async fn frames_over_the_limit_fail() {
        let (mut sender, payload) = actix_http::h1::Payload::create(false);
        let mut wire = BytesMut::new();
        Codec::new().client_mode().encode(Message::Text("x".repeat(100).into()), &mut wire).unwrap();
        sender.feed_data(wire.freeze());
        let mut stream = MessageStream::new(dev::Payload::from(payload)).max_frame_size(10);
        assert!(matches!(stream.next().await, Some(Err(ProtocolError::Overflow))));
    }
}
