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

/// Counts open TCP connections, in all and per client address, and closes those over either
/// cap as they are accepted. Shared by every worker; hooked in with `on_connect`.
///
/// actix-server counts the connections its HTTP/1 dispatcher serves; a socket upgraded to a
/// WebSocket leaves the dispatcher (`crate::upgraded`), so the total is kept here.
#[derive(Debug)]
pub(crate) struct ConnectionLimiter {
    total: usize,
    per_address: usize,
    open: Arc<Mutex<Open>>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    /// Only when there is a cap per address.
    by_address: HashMap<IpAddr, usize>,
}

impl ConnectionLimiter {
    /// `total` connections at most, `per_address` at most from one address (0: no cap per
    /// address).
    pub(crate) fn new(total: usize, per_address: usize) -> Self {
        Self { total, per_address, open: Arc::default() }
    }

    /// For `on_connect`: counts the new connection (the count drops when the connection
    /// ends) or, over a cap, shuts it down before a byte of it is read.
    pub(crate) fn on_connect(&self, connection: &dyn Any, extensions: &mut Extensions) {
        let Some(stream) = connection.downcast_ref::<TcpStream>() else { return };
        let address = stream.peer_addr().map(|peer| peer.ip()).ok();
        match self.admit(address) {
            Some(slot) => {
                extensions.insert(slot);
            }
            None => {
                tracing::debug!(address = ?address, "connection refused: too many open");
                // Shutting the socket down makes the connection's first read end at once.
                let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Both);
            }
        }
    }

    fn counts(&self) -> MutexGuard<'_, Open> {
        // Every change is one increment or decrement: a panic elsewhere leaves the counts whole.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for one more connection from `address`, or `None` at a cap.
    fn admit(&self, address: Option<IpAddr>) -> Option<Slot> {
        let mut open = self.counts();
        let address = address.filter(|_| self.per_address > 0);
        let from = address.map_or(0, |address| open.by_address.get(&address).copied().unwrap_or(0));
        if open.total >= self.total || (address.is_some() && from >= self.per_address) {
            return None;
        }
        Some(self.count(&mut open, address))
    }

    /// One more slot for a connection already admitted, whatever the caps: for the task that
    /// takes an upgraded connection over, before the dispatcher lets go of the first one.
    pub(crate) fn hold(&self, address: Option<IpAddr>) -> Slot {
        let address = address.filter(|_| self.per_address > 0);
        self.count(&mut self.counts(), address)
    }

    /// Counts one more connection (from `address`, when addresses are counted).
    fn count(&self, open: &mut Open, address: Option<IpAddr>) -> Slot {
        if let Some(address) = address {
            *open.by_address.entry(address).or_insert(0) += 1;
        }
        open.total += 1;
        Slot { address, open: self.open.clone() }
    }

    #[cfg(test)]
    fn open_from(&self, address: IpAddr) -> usize {
        self.counts().by_address.get(&address).copied().unwrap_or(0)
    }
}

/// One counted connection; dropped with the connection's extensions when it closes (or with
/// the task serving it once upgraded).
#[derive(Debug)]
pub(crate) struct Slot {
    address: Option<IpAddr>,
    open: Arc<Mutex<Open>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total -= 1;
        if let Some(address) = self.address {
            if let Some(from) = open.by_address.get_mut(&address) {
                *from -= 1;
                if *from == 0 {
                    open.by_address.remove(&address);
                }
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
        let limiter = ConnectionLimiter::new(100, 2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = limiter.admit(Some(a)).unwrap();
        let _second = limiter.admit(Some(a)).unwrap();
        assert!(limiter.admit(Some(a)).is_none(), "a third from one address");
        assert!(limiter.admit(Some(b)).is_some(), "another address is counted apart");
        drop(first);
        assert_eq!(limiter.open_from(a), 1);
        assert!(limiter.admit(Some(a)).is_some());
    }

    #[test]
    fn connections_over_the_total_are_refused_from_any_address() {
        let limiter = ConnectionLimiter::new(2, 0);
        let first = limiter.admit(Some("10.0.0.1".parse().unwrap())).unwrap();
        let _second = limiter.admit(Some("10.0.0.2".parse().unwrap())).unwrap();
        assert!(limiter.admit(Some("10.0.0.3".parse().unwrap())).is_none());
        drop(first);
        assert!(limiter.admit(None).is_some());
    }

    #[test]
    fn a_held_slot_keeps_an_upgraded_connection_counted_after_its_first_closes() {
        let limiter = ConnectionLimiter::new(2, 1);
        let address: IpAddr = "10.0.0.1".parse().unwrap();
        let accepted = limiter.admit(Some(address)).unwrap();
        let upgraded = limiter.hold(Some(address));
        drop(accepted);
        assert_eq!(limiter.open_from(address), 1);
        assert!(limiter.admit(Some(address)).is_none(), "the upgraded socket still counts");
        drop(upgraded);
        assert_eq!(limiter.counts().total, 0);
    }

    #[test]
    fn closed_connections_leave_no_entry_behind() {
        let limiter = ConnectionLimiter::new(10, 1);
        let address: IpAddr = "10.0.0.1".parse().unwrap();
        drop(limiter.admit(Some(address)));
        let open = limiter.counts();
        assert!(open.by_address.is_empty());
        assert_eq!(open.total, 0);
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
