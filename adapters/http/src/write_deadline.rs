//! A write deadline on every accepted connection, kept by the kernel.
//!
//! A client that stops reading leaves what the server writes in the server's buffers: the
//! kernel's, then actix's own, which never time out. A session evicted for it, or ended by
//! a revocation, queues its close frame behind them, and the TCP connection (with its
//! buffers, outside the per-user socket cap) stays open for as long as the client keeps it.
//! `TCP_USER_TIMEOUT` bounds how long written data may stay unacknowledged (the client's
//! window closed included): past it the kernel drops the connection, every pending write
//! fails, and actix lets go of it. It applies to every connection (`/ws`, Socket.IO's
//! WebSocket and long polls, plain responses), and costs nothing while data flows or the
//! connection is idle.

use std::any::Any;
use std::time::Duration;

use actix_web::rt::net::TcpStream;

/// For the listener's `on_connect`: gives the accepted `connection` a write deadline of
/// `timeout`. Connections other than TCP ones (none today) are left alone.
pub(crate) fn set_write_deadline(connection: &dyn Any, timeout: Duration) {
    let Some(stream) = connection.downcast_ref::<TcpStream>() else { return };
    set(stream, timeout);
}

#[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
fn set(stream: &TcpStream, timeout: Duration) {
    if let Err(error) = socket2::SockRef::from(stream).set_tcp_user_timeout(Some(timeout)) {
        tracing::debug!(error = %error, "no write deadline on a connection");
    }
}

/// Elsewhere the sessions' own deadlines remain; a connection that a client stops reading
/// is held until the client closes it.
#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "fuchsia")))]
fn set(_: &TcpStream, _: Duration) {}

#[cfg(all(test, any(target_os = "linux", target_os = "android", target_os = "fuchsia")))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_accepted_connection_gets_the_deadline() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(address).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        set_write_deadline(&accepted, Duration::from_secs(7));
        let set = socket2::SockRef::from(&accepted).tcp_user_timeout().unwrap();
        assert_eq!(set, Some(Duration::from_secs(7)));
    }
}
