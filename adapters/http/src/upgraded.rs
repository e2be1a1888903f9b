//! Connections upgraded to a WebSocket (`/ws`, Socket.IO's `websocket` transport), served
//! apart from actix-http's HTTP/1 dispatcher once their handshake is answered.
//!
//! The dispatcher keeps an 8 KiB read buffer and an 8 KiB write buffer, and a task sized for
//! every state of an HTTP/1 connection, for the whole life of the connection; for a socket that
//! sits idle for hours that is three quarters of what it costs. Here the upgrade request still
//! goes through the whole `App` (middleware, authentication, the handler and actix-ws), but the
//! connection is then driven by [`Upgraded`]: a small task that holds no buffer while the
//! socket is idle. It reads only when the socket is readable, into the worker's scratch buffer,
//! handing the handler a copy of exactly what was read, and writes the frames the handler's
//! body yields as they come.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use actix_codec::Encoder as _;
use actix_http::h1::{Codec, Message};
use actix_http::{ConnectionType, Request, Response, StatusCode};
use actix_web::body::{self, BodySize, BoxBody, MessageBody};
use actix_web::dev::{Payload, Service};
use actix_web::error::PayloadError;
use actix_web::rt::net::TcpStream;
use actix_web::web::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::io::{AsyncWrite, AsyncWriteExt as _};

use crate::connections::Slot;

/// What one read takes from the socket at most, into the worker's scratch buffer; the handler
/// gets a copy of exactly what was read.
const READ_CHUNK: usize = 16 * 1024;
/// Bytes read but not yet taken by the handler above which reading pauses.
const MAX_UNREAD: usize = 64 * 1024;
/// The largest answer other than `101 Switching Protocols` to an upgrade request (a refusal
/// carries an error envelope of a few hundred bytes).
const MAX_REFUSAL: usize = 64 * 1024;

thread_local! {
    /// Where a worker's upgraded sockets read into (each task runs on one worker, and a read
    /// never waits), so that no socket keeps a read buffer of its own.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
}

/// Serves one upgrade request: asks `app` for the answer, writes it, and when it is
/// `101 Switching Protocols` relays bytes between the socket and the handler until either ends.
/// Any other answer is sent with `Connection: close`.
///
/// `buffers` are the dispatcher's: what the client sent after the request head (its first
/// frames, when it did not wait for the answer), and what the dispatcher had still to write.
/// `slot` keeps the connection counted against the caps.
pub(crate) fn serve<S, B>(
    app: Rc<S>,
    req: Request,
    io: TcpStream,
    codec: Codec,
    buffers: (BytesMut, BytesMut),
    slot: Slot,
) -> impl Future<Output = ()>
where
    S: Service<Request, Error = actix_web::Error> + 'static,
    S::Response: Into<Response<B>>,
    B: MessageBody + 'static,
{
    // The handshake's future (the App's, middleware and all) is boxed, and is all the task
    // captures (an `async fn` would keep its arguments for its whole life): once the socket
    // is open, the task holds only the relay's few words.
    let answered = Box::pin(answer(app, req, io, codec, buffers, slot));
    async move {
        if let Some(upgraded) = answered.await {
            upgraded.await;
        }
    }
}

/// Answers the upgrade request; the relay of the socket when the answer is `101`.
async fn answer<S, B>(
    app: Rc<S>,
    req: Request,
    io: TcpStream,
    mut codec: Codec,
    (leftover, mut out): (BytesMut, BytesMut),
    slot: Slot,
) -> Option<Upgraded>
where
    S: Service<Request, Error = actix_web::Error>,
    S::Response: Into<Response<B>>,
    B: MessageBody + 'static,
{
    let inbound = Rc::new(RefCell::new(Inbound::default()));
    if !leftover.is_empty() {
        inbound.borrow_mut().push(leftover.freeze());
    }
    let (req, _) = req.replace_payload(Payload::from(
        Box::pin(Reader(inbound.clone())) as Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>>
    ));
    let response = match app.call(req).await {
        Ok(response) => response.into().map_into_boxed_body(),
        Err(error) => Response::from(error),
    };
    let (mut head, body) = response.into_parts();
    if head.status() == StatusCode::SWITCHING_PROTOCOLS {
        codec.encode(Message::Item((head, BodySize::Stream)), &mut out).ok()?;
        let io = write(io, &out).await.ok()?;
        return Some(Upgraded { io, body, unsent: Bytes::new(), inbound, reading: true, _slot: slot });
    }
    head.head_mut().set_connection_type(ConnectionType::Close);
    let refused = async {
        let size = body.size();
        codec.encode(Message::Item((head, size)), &mut out)?;
        refusal(&mut codec, body, &mut out).await?;
        write(io, &out).await?.shutdown().await
    };
    let _ = refused.await;
    None
}

async fn write(mut io: TcpStream, bytes: &[u8]) -> io::Result<TcpStream> {
    io.write_all(bytes).await?;
    Ok(io)
}

/// Encodes a refusal's body (its error envelope) after its head.
async fn refusal(codec: &mut Codec, body: BoxBody, out: &mut BytesMut) -> io::Result<()> {
    let bytes = body::to_bytes_limited(body, MAX_REFUSAL)
        .await
        .map_err(|_| io::Error::other("the answer to an upgrade request is too large"))?
        .map_err(|_| io::Error::other("the answer to an upgrade request failed"))?;
    if !bytes.is_empty() {
        codec.encode(Message::Chunk(Some(bytes)), out)?;
    }
    codec.encode(Message::Chunk(None), out)
}

/// The bytes read from an upgraded socket and not yet taken by its handler.
#[derive(Default)]
struct Inbound {
    chunks: VecDeque<Bytes>,
    unread: usize,
    /// `Some(None)`: the client closed its side; `Some(Some(_))`: reading failed.
    end: Option<Option<io::Error>>,
    /// The handler, waiting for bytes.
    reader: Option<Waker>,
    /// The connection's task, waiting for the handler to take some.
    relay: Option<Waker>,
}

impl Inbound {
    fn push(&mut self, chunk: Bytes) {
        self.unread += chunk.len();
        self.chunks.push_back(chunk);
        self.reader.take().inspect(Waker::wake_by_ref);
    }

    fn end(&mut self, error: Option<io::Error>) {
        if self.end.is_none() {
            self.end = Some(error);
        }
        self.reader.take().inspect(Waker::wake_by_ref);
    }
}

/// The handler's side of [`Inbound`]: its request payload.
struct Reader(Rc<RefCell<Inbound>>);

impl Stream for Reader {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut inbound = self.0.borrow_mut();
        if let Some(chunk) = inbound.chunks.pop_front() {
            inbound.unread -= chunk.len();
            inbound.relay.take().inspect(Waker::wake_by_ref);
            return Poll::Ready(Some(Ok(chunk)));
        }
        match &mut inbound.end {
            Some(None) => Poll::Ready(None),
            Some(error @ Some(_)) => Poll::Ready(error.take().map(|e| Err(PayloadError::Io(e)))),
            None => {
                inbound.reader = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// An upgraded connection after its handshake: the handler's frames out, the client's bytes in.
/// Ends when the handler's body ends (the socket was closed) or the connection fails; the
/// handler then reads the end of its payload.
struct Upgraded {
    io: TcpStream,
    body: BoxBody,
    /// What is left of the frame being written.
    unsent: Bytes,
    inbound: Rc<RefCell<Inbound>>,
    reading: bool,
    _slot: Slot,
}

impl Upgraded {
    /// Writes what the handler has to send. Ready when the connection is done with.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if !self.unsent.is_empty() {
                match Pin::new(&mut self.io).poll_write(cx, &self.unsent) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(()),
                    Poll::Ready(Ok(n)) => {
                        let _ = self.unsent.split_to(n);
                        continue;
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
            match Pin::new(&mut self.body).poll_next(cx) {
                Poll::Ready(Some(Ok(frame))) => self.unsent = frame,
                Poll::Ready(Some(Err(_))) | Poll::Ready(None) => {
                    // The close frame is out: the server's side ends (the kernel sends the FIN).
                    let _ = Pin::new(&mut self.io).poll_shutdown(cx);
                    return Poll::Ready(());
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Hands what the client sent to the handler, while it keeps up.
    fn poll_read(&mut self, cx: &mut Context<'_>) {
        while self.reading {
            if self.inbound.borrow().unread >= MAX_UNREAD {
                self.inbound.borrow_mut().relay = Some(cx.waker().clone());
                return;
            }
            match self.io.poll_read_ready(cx) {
                Poll::Pending => return,
                Poll::Ready(Err(error)) => self.stop_reading(Some(error)),
                Poll::Ready(Ok(())) => {
                    let read = SCRATCH.with_borrow_mut(|scratch| {
                        let n = self.io.try_read(scratch)?;
                        Ok::<_, io::Error>(Bytes::copy_from_slice(&scratch[..n]))
                    });
                    match read {
                        Ok(chunk) if chunk.is_empty() => self.stop_reading(None),
                        Ok(chunk) => self.inbound.borrow_mut().push(chunk),
                        Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                        Err(error) => self.stop_reading(Some(error)),
                    }
                }
            }
        }
    }

    fn stop_reading(&mut self, error: Option<io::Error>) {
        self.reading = false;
        self.inbound.borrow_mut().end(error);
    }
}

impl Future for Upgraded {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.poll_write(cx).is_ready() {
            return Poll::Ready(());
        }
        this.poll_read(cx);
        Poll::Pending
    }
}

impl Drop for Upgraded {
    fn drop(&mut self) {
        // The handler learns that the connection is gone, if it had not yet.
        let closed = io::Error::new(io::ErrorKind::ConnectionAborted, "the connection closed");
        self.inbound.borrow_mut().end(Some(closed));
    }
}
