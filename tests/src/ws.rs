//! A `/ws` client that waits for events with a deadline, never a sleep.

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long to wait for an event that must arrive.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to watch for an event that must not arrive.
pub const QUIET_PERIOD: Duration = Duration::from_millis(300);

/// A WebSocket connection at the frame level, for the tests of frame limits, slow readers
/// and the Socket.IO transport.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why a handshake did not upgrade.
#[derive(Debug)]
pub struct WsRefused {
    pub status: Option<StatusCode>,
    pub body: Option<String>,
    pub error: String,
}

pub struct WsClient {
    /// The connection itself, for tests that work with raw frames.
    pub stream: Ws,
    /// Every text frame received, in order.
    pub received: Vec<Value>,
}

impl WsClient {
    /// Performs the handshake of `request` within [`EVENT_TIMEOUT`].
    pub async fn connect(request: Request) -> Result<Self, WsRefused> {
        match tokio::time::timeout(EVENT_TIMEOUT, tokio_tungstenite::connect_async(request)).await {
            Err(_) => Err(WsRefused { status: None, body: None, error: "handshake timed out".into() }),
            Ok(Ok((stream, _))) => Ok(Self { stream, received: Vec::new() }),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => Err(WsRefused {
                status: StatusCode::from_u16(response.status().as_u16()).ok(),
                body: response.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()),
                error: format!("HTTP {}", response.status()),
            }),
            Ok(Err(error)) => Err(WsRefused { status: None, body: None, error: error.to_string() }),
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.stream.send(Frame::text(text)).await.expect("the frame is sent");
    }

    pub async fn emit(&mut self, event: &str, data: Value) {
        self.send_text(&json!({ "event": event, "data": data }).to_string()).await;
    }

    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
        // Read until the server acknowledges, so its side has seen the close.
        let _ = tokio::time::timeout(EVENT_TIMEOUT, async {
            while let Some(Ok(_)) = self.stream.next().await {}
        })
        .await;
    }

    /// Whether the server ends the connection within `timeout` (skipping events before).
    pub async fn expect_close(&mut self, timeout: Duration) -> bool {
        let closing = async {
            loop {
                match self.stream.next().await {
                    None | Some(Err(_)) | Some(Ok(Frame::Close(_))) => return,
                    Some(Ok(_)) => continue,
                }
            }
        };
        tokio::time::timeout(timeout, closing).await.is_ok()
    }

    /// The close frame the server ends the connection with, skipping other frames; panics at
    /// the deadline.
    pub async fn close_frame(&mut self, timeout: Duration) -> (CloseCode, String) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => panic!("the server did not close the socket within {timeout:?}"),
                Ok(Some(Ok(Frame::Close(Some(frame))))) => return (frame.code, frame.reason.to_string()),
                Ok(Some(Ok(Frame::Close(None)))) => panic!("a close frame without a code"),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(error))) => panic!("the socket failed before a close frame: {error}"),
                Ok(None) => panic!("the socket ended without a close frame"),
            }
        }
    }

    /// The next JSON text frame, or `None` at the deadline. Panics if the connection ends.
    async fn next_frame(&mut self, deadline: tokio::time::Instant) -> Option<Value> {
        loop {
            let frame = match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return None,
                Ok(None) => panic!("the connection ended; frames so far: {:?}", self.received),
                Ok(Some(Err(error))) => panic!("the connection failed: {error}"),
                Ok(Some(Ok(frame))) => frame,
            };
            match frame {
                Frame::Text(text) => {
                    let value: Value = serde_json::from_str(text.as_str())
                        .unwrap_or_else(|e| panic!("a frame that is not JSON ({e}): {text}"));
                    assert!(value["event"].is_string(), "a frame without an event name: {text}");
                    assert!(value.get("data").is_some(), "a frame without data: {text}");
                    self.received.push(value.clone());
                    return Some(value);
                }
                Frame::Close(reason) => {
                    panic!("the server closed the connection: {reason:?}; frames so far: {:?}", self.received)
                }
                _ => continue,
            }
        }
    }

    /// The `data` of the next `name` event, skipping other events; panics after `timeout`.
    pub async fn next_event(&mut self, name: &str, timeout: Duration) -> Value {
        self.next_event_matching(name, |_| true, timeout).await
    }

    /// The `data` of the next `name` event whose data satisfies `accept`.
    pub async fn next_event_matching(
        &mut self,
        name: &str,
        accept: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        while let Some(frame) = self.next_frame(deadline).await {
            if frame["event"] == name && accept(&frame["data"]) {
                return frame["data"].clone();
            }
        }
        panic!("no matching {name:?} event within {timeout:?}; frames so far: {:?}", self.received)
    }

    /// Fails if a `name` event arrives within `duration`; other events are skipped.
    pub async fn assert_no_event(&mut self, name: &str, duration: Duration) {
        let deadline = tokio::time::Instant::now() + duration;
        while let Some(frame) = self.next_frame(deadline).await {
            assert_ne!(frame["event"], name, "unexpected {name:?} event: {frame}");
        }
    }

    /// The `data` of the first `count` `name` events of the connection, counting those
    /// received already (while waiting for others): waits for the rest; panics after
    /// `timeout`.
    pub async fn first_events(&mut self, name: &str, count: usize, timeout: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.events(name).count() < count {
            if self.next_frame(deadline).await.is_none() {
                panic!(
                    "{} of {count} {name:?} events within {timeout:?}; frames so far: {:?}",
                    self.events(name).count(),
                    self.received
                );
            }
        }
        self.events(name).take(count).cloned().collect()
    }

    /// The `data` of every `name` event received so far, in order.
    pub fn events<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.received.iter().filter(move |frame| frame["event"] == name).map(|frame| &frame["data"])
    }
}

/// The online user ids of an `onlineUsers` payload.
pub fn ids(data: &Value) -> Vec<String> {
    data.as_array()
        .unwrap_or_else(|| panic!("expected an array of ids: {data}"))
        .iter()
        .map(|id| id.as_str().expect("ids are strings").to_owned())
        .collect()
}
