//! A real-time connection on either endpoint, reduced to "call me for each event".
//!
//! `/ws` carries `{"event","data"}` text frames. Socket.IO is spoken by hand: the Engine.IO
//! open packet `0{...}`, our `40{"token":...}` connect, the server's `40{...}` reply,
//! pings `2` answered with `3`, and events as `42["name",data]`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context as _};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::Transport;

type Stream = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Socket {
    stream: Stream,
    transport: Transport,
}

/// Opens and authenticates a connection; returns once the server accepted it.
pub async fn connect(
    ws_base: &str,
    transport: Transport,
    token: &str,
    timeout: Duration,
) -> anyhow::Result<Socket> {
    resume(ws_base, transport, token, None, timeout).await
}

/// Like [`connect`], from the loopback address `source` (e.g. 127.0.0.2): each source
/// address has its own range of ephemeral ports, so a run can hold more sockets than one
/// address has ports.
pub async fn connect_from(
    ws_base: &str,
    transport: Transport,
    token: &str,
    timeout: Duration,
    source: IpAddr,
) -> anyhow::Result<Socket> {
    tokio::time::timeout(timeout, open(ws_base, transport, token, None, Some(source)))
        .await
        .context("connecting timed out")?
}

/// Like [`connect`], resuming after `since` (a cursor the server sent this user) when given.
pub async fn resume(
    ws_base: &str,
    transport: Transport,
    token: &str,
    since: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<Socket> {
    tokio::time::timeout(timeout, open(ws_base, transport, token, since, None))
        .await
        .context("connecting timed out")?
}

async fn open(
    ws_base: &str,
    transport: Transport,
    token: &str,
    since: Option<&str>,
    source: Option<IpAddr>,
) -> anyhow::Result<Socket> {
    match transport {
        Transport::Ws => {
            // Cursors are digits, `~`, `.`, `-` and hex digits: nothing to escape in a query.
            let url = match since {
                Some(since) => format!("{ws_base}/ws?token={token}&since={since}"),
                None => format!("{ws_base}/ws?token={token}"),
            };
            let (stream, _) = handshake(url, source).await.context("opening /ws")?;
            Ok(Socket { stream, transport })
        }
        Transport::Socketio => {
            let url = format!("{ws_base}/socket.io/?EIO=4&transport=websocket");
            let (mut stream, _) = handshake(url, source).await.context("opening /socket.io/")?;
            let open = next_text(&mut stream).await?;
            if !open.starts_with('0') {
                bail!("expected the Engine.IO open packet, got {open:?}");
            }
            let auth = match since {
                Some(since) => serde_json::json!({ "token": token, "since": since }),
                None => serde_json::json!({ "token": token }),
            };
            let connect = format!("40{auth}");
            stream.send(Message::text(connect)).await?;
            loop {
                let packet = next_text(&mut stream).await?;
                if packet.starts_with("40") {
                    break;
                }
                if packet.starts_with("44") {
                    bail!("Socket.IO connect refused: {packet}");
                }
                if packet == "2" {
                    stream.send(Message::text("3")).await?;
                }
                // Events sent before the connect reply (none are expected) are skipped.
            }
            Ok(Socket { stream, transport })
        }
    }
}

/// The WebSocket handshake with `url`, over a TCP connection from `source` when given.
async fn handshake(
    url: String,
    source: Option<IpAddr>,
) -> anyhow::Result<(Stream, tokio_tungstenite::tungstenite::handshake::client::Response)> {
    let Some(source) = source else {
        return Ok(tokio_tungstenite::connect_async(url).await?);
    };
    let authority = url.split("://").nth(1).and_then(|rest| rest.split('/').next()).unwrap_or_default();
    let server = tokio::net::lookup_host(authority)
        .await
        .with_context(|| format!("resolving {authority}"))?
        .find(|address| address.is_ipv4() == source.is_ipv4())
        .with_context(|| format!("{authority} has no address of the family of {source}"))?;
    let socket = if source.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.bind(SocketAddr::new(source, 0)).with_context(|| format!("binding to {source}"))?;
    let tcp = socket.connect(server).await.with_context(|| format!("connecting from {source}"))?;
    Ok(tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp)).await?)
}

async fn next_text(stream: &mut Stream) -> anyhow::Result<String> {
    loop {
        match stream.next().await.context("connection closed during the handshake")?? {
            Message::Text(text) => return Ok(text.as_str().to_owned()),
            Message::Close(frame) => bail!("closed during the handshake: {frame:?}"),
            _ => {}
        }
    }
}

/// Why [`Socket::run`] returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The stop signal fired; the socket was closed by us.
    Stopped,
    /// The server closed the connection or it failed.
    Lost(String),
}

impl Socket {
    /// Reads until `stop` turns true, answering Socket.IO pings and calling `on_event` with
    /// each event whose raw frame contains `filter` (so idle sockets skip JSON parsing of
    /// events they don't care about).
    pub async fn run(
        self,
        stop: watch::Receiver<bool>,
        filter: &str,
        mut on_event: impl FnMut(&str, &Value),
    ) -> Ended {
        let transport = self.transport;
        self.run_raw(stop, filter, |text| {
            if let Some((name, data)) = decode(transport, text) {
                on_event(&name, &data);
            }
        })
        .await
    }

    /// Like [`Socket::run`], but hands over the raw text of each frame containing `filter`
    /// undecoded: for many sockets at high event rates, where the caller finds what it needs
    /// in the text itself.
    pub async fn run_raw(
        mut self,
        mut stop: watch::Receiver<bool>,
        filter: &str,
        mut on_frame: impl FnMut(&str),
    ) -> Ended {
        loop {
            if *stop.borrow() {
                let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.close(None)).await;
                return Ended::Stopped;
            }
            let frame = tokio::select! {
                frame = self.stream.next() => frame,
                _ = stop.changed() => continue,
            };
            let text = match frame {
                None => return Ended::Lost("closed by the server".into()),
                Some(Err(error)) => return Ended::Lost(error.to_string()),
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(frame))) => return Ended::Lost(format!("close frame {frame:?}")),
                Some(Ok(_)) => continue,
            };
            let text = text.as_str();
            if self.transport == Transport::Socketio && text == "2" {
                if let Err(error) = self.stream.send(Message::text("3")).await {
                    return Ended::Lost(error.to_string());
                }
                continue;
            }
            if text.contains(filter) {
                on_frame(text);
            }
        }
    }
}

/// The event name and payload of one frame, if it is an event.
fn decode(transport: Transport, text: &str) -> Option<(String, Value)> {
    match transport {
        Transport::Ws => {
            let mut value: Value = serde_json::from_str(text).ok()?;
            let name = value.get("event")?.as_str()?.to_owned();
            Some((name, value.get_mut("data").map(Value::take).unwrap_or(Value::Null)))
        }
        Transport::Socketio => {
            let body = text.strip_prefix("42")?;
            // An optional ack id precedes the array.
            let body = body.trim_start_matches(|c: char| c.is_ascii_digit());
            let mut array: Vec<Value> = serde_json::from_str(body).ok()?;
            if array.is_empty() {
                return None;
            }
            let data = if array.len() > 1 { array.swap_remove(1) } else { Value::Null };
            let name = array.first()?.as_str()?.to_owned();
            Some((name, data))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_frames_decode_to_name_and_data() {
        let (name, data) = decode(Transport::Ws, r#"{"event":"newMessage","data":{"message":"x"}}"#).unwrap();
        assert_eq!(name, "newMessage");
        assert_eq!(data["message"], "x");
    }

    #[test]
    fn socketio_events_decode_with_or_without_ack_id() {
        let (name, data) = decode(Transport::Socketio, r#"42["newMessage",{"message":"x"}]"#).unwrap();
        assert_eq!((name.as_str(), data["message"].as_str()), ("newMessage", Some("x")));
        let (name, _) = decode(Transport::Socketio, r#"4212["typing",{}]"#).unwrap();
        assert_eq!(name, "typing");
        assert!(decode(Transport::Socketio, "40{}").is_none());
    }
}
