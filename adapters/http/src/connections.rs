//! Limits on what one client can hold open: a total deadline on reading a request body, and
//! a cap on the TCP connections one address may have open at once.
//!
//! Request heads already time out (actix-web's client request timeout); without these, a
//! client dripping a body one byte every few seconds, or simply opening connections, holds
//! a file descriptor each for as long as it likes, until the process runs out of them and
//! stops answering everyone.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future as _;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use actix_web::body::{BodySize, BoxBody, EitherBody, MessageBody};
use actix_web::dev::{Extensions, Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::{header, ConnectionType};
use actix_web::middleware::Next;
use actix_web::rt::net::TcpStream;
use actix_web::web::{self, Bytes};
use actix_web::HttpMessage as _;
use futures_util::Stream;

use crate::state::AppState;

/// Middleware: the body of every request (Socket.IO polls included) must have arrived within
/// `body_timeout` of the request reaching the application; reading it fails after that, the
/// request is answered (`408` for JSON routes) and the connection closed. WebSocket upgrades
/// are exempt: their "body" is the socket, which keeps deadlines of its own.
///
/// A request answered before its body was read to the end (the deadline passed, or the route
/// takes no body: a `405`, a refusal) has its connection closed after the answer. Left to
/// itself, actix-http would go on reading, and discarding, a chunked body for as long as the
/// client drips it; it closes instead when the body is still wanted by someone, so the
/// answer holds on to it until it is sent.
pub async fn body_deadline(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let timeout = req.app_data::<web::Data<AppState>>().map(|state| state.settings.body_timeout);
    let Some(timeout) = timeout.filter(|_| !is_upgrade(&req)) else {
        return next.call(req).await.map(ServiceResponse::map_into_left_body);
    };
    let has_body = has_body(&req);
    let inner = Rc::new(RefCell::new(req.take_payload()));
    let ended = Rc::new(Cell::new(false));
    let bounded: Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>> = Box::pin(Deadline {
        inner: inner.clone(),
        timer: Box::pin(tokio::time::sleep(timeout)),
        expired: false,
        ended: ended.clone(),
    });
    req.set_payload(Payload::from(bounded));
    let mut response = next.call(req).await?;
    if !has_body || ended.get() {
        return Ok(response.map_into_left_body());
    }
    response.response_mut().head_mut().set_connection_type(ConnectionType::Close);
    Ok(response
        .map_body(|_, body| EitherBody::right(Holding { body: body.boxed(), _payload: inner }.boxed())))
}

/// Whether the request announced a body: chunked, or a non-zero `Content-Length`.
fn has_body(req: &ServiceRequest) -> bool {
    let headers = req.headers();
    let chunked = headers.contains_key(header::TRANSFER_ENCODING);
    let length =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).is_some_and(|v| v.trim() != "0");
    chunked || length
}

/// An answer that keeps the unread request body alive until it has been sent.
struct Holding {
    body: BoxBody,
    _payload: Rc<RefCell<Payload>>,
}

impl MessageBody for Holding {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.body).poll_next(cx)
    }
}

fn is_upgrade(req: &ServiceRequest) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Whether a body read failed on the deadline (rather than on a broken connection).
pub fn is_body_timeout(error: &PayloadError) -> bool {
    matches!(error, PayloadError::Io(e) if e.kind() == io::ErrorKind::TimedOut)
}

/// A request body that fails with `TimedOut` once its timer has fired.
struct Deadline {
    /// Shared with [`body_deadline`], which hands it to an answer sent before the body ended.
    inner: Rc<RefCell<Payload>>,
    timer: Pin<Box<tokio::time::Sleep>>,
    expired: bool,
    /// Set once the body was read to its end.
    ended: Rc<Cell<bool>>,
}

impl Stream for Deadline {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.expired {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut *self.inner.borrow_mut()).poll_next(cx);
        if let Poll::Ready(item) = polled {
            if item.is_none() {
                self.ended.set(true);
            }
            return Poll::Ready(item);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.expired = true;
                let error =
                    io::Error::new(io::ErrorKind::TimedOut, "the request body took too long to arrive");
                Poll::Ready(Some(Err(PayloadError::Io(error))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Counts open TCP connections per client address and closes those over the cap as they
/// are accepted. Shared by every worker; hooked in with `HttpServer::on_connect`.
#[derive(Debug)]
pub struct ConnectionLimiter {
    per_address: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl ConnectionLimiter {
    /// `per_address` connections at most from one address; 0 switches the cap off.
    pub fn new(per_address: usize) -> Self {
        Self { per_address, open: Arc::default() }
    }

    /// For `HttpServer::on_connect`: counts the new connection (the count drops when the
    /// connection ends) or, over the cap, shuts it down before a byte of it is read.
    pub fn on_connect(&self, connection: &dyn Any, extensions: &mut Extensions) {
        if self.per_address == 0 {
            return;
        }
        let Some(stream) = connection.downcast_ref::<TcpStream>() else { return };
        let Ok(peer) = stream.peer_addr() else { return };
        match self.admit(peer.ip()) {
            Some(slot) => {
                extensions.insert(slot);
            }
            None => {
                tracing::debug!(address = %peer.ip(), "connection refused: too many open from this address");
                // Shutting the socket down makes the connection's first read end at once.
                let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Both);
            }
        }
    }

    fn counts(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        // Every change is one increment or decrement: a panic elsewhere leaves the map whole.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for one more connection from `address`, or `None` at the cap.
    fn admit(&self, address: IpAddr) -> Option<Slot> {
        let mut counts = self.counts();
        let open = counts.entry(address).or_insert(0);
        if *open >= self.per_address {
            return None;
        }
        *open += 1;
        Some(Slot { address, open: self.open.clone() })
    }

    #[cfg(test)]
    fn open_from(&self, address: IpAddr) -> usize {
        self.counts().get(&address).copied().unwrap_or(0)
    }
}

/// One counted connection; dropped with the connection's extensions when it closes.
struct Slot {
    address: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(open) = counts.get_mut(&self.address) {
            *open -= 1;
            if *open == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

/// The largest number of connections the process can hold: raises the soft limit on open
/// files to the hard one (where allowed) and leaves `reserve` descriptors for the store,
/// Redis, logs and accepting. Returns `wanted` or less.
pub fn connection_budget(wanted: usize, reserve: usize) -> usize {
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    let budget = usize::try_from(limit).unwrap_or(usize::MAX).saturating_sub(reserve).max(1);
    tracing::info!(
        open_files_limit = limit,
        connections = wanted.min(budget),
        "open files limit, raised to its hard limit where allowed"
    );
    if budget < wanted {
        tracing::warn!(
            open_files_limit = limit,
            connections = budget,
            "the open files limit allows fewer connections than server.max_connections; raise it (ulimit -n)"
        );
    }
    wanted.min(budget)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use futures_util::StreamExt as _;

    #[test]
    fn connections_over_the_cap_are_refused_until_one_closes() {
        let limiter = ConnectionLimiter::new(2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = limiter.admit(a).unwrap();
        let _second = limiter.admit(a).unwrap();
        assert!(limiter.admit(a).is_none(), "a third from one address");
        assert!(limiter.admit(b).is_some(), "another address is counted apart");
        drop(first);
        assert_eq!(limiter.open_from(a), 1);
        assert!(limiter.admit(a).is_some());
    }

    #[test]
    fn closed_connections_leave_no_entry_behind() {
        let limiter = ConnectionLimiter::new(1);
        let address: IpAddr = "10.0.0.1".parse().unwrap();
        drop(limiter.admit(address));
        assert!(limiter.counts().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_does_not_arrive_in_time_fails_with_a_timeout() {
        let (_sender, body) = actix_http::h1::Payload::create(false);
        let mut bounded = Deadline {
            inner: Rc::new(RefCell::new(Payload::from(body))),
            timer: Box::pin(tokio::time::sleep(Duration::from_secs(5))),
            expired: false,
            ended: Rc::default(),
        };
        let error = bounded.next().await.unwrap().unwrap_err();
        assert!(is_body_timeout(&error), "{error:?}");
        assert!(bounded.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_arrives_in_time_passes_whole() {
        let (mut sender, body) = actix_http::h1::Payload::create(false);
        sender.feed_data(Bytes::from_static(b"{\"a\":1}"));
        sender.feed_eof();
        let mut bounded = Deadline {
            inner: Rc::new(RefCell::new(Payload::from(body))),
            timer: Box::pin(tokio::time::sleep(Duration::from_secs(5))),
            expired: false,
            ended: Rc::default(),
        };
        assert_eq!(bounded.next().await.unwrap().unwrap(), Bytes::from_static(b"{\"a\":1}"));
        assert!(bounded.next().await.is_none());
    }
}
