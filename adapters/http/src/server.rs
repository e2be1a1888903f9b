//! The listener: the [`app`](crate::app) behind actix-http's HTTP/1 service on actix-server
//! workers, set up as actix-web's `HttpServer` sets it up, with one difference: a connection
//! upgraded to a WebSocket leaves the HTTP/1 dispatcher once its handshake is answered
//! ([`crate::upgraded`]), so that an idle socket holds no HTTP buffers. `HttpServer` has no
//! way to plug that in.

use std::convert::Infallible;
use std::future::ready;
use std::io;
use std::net::TcpListener;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix_codec::Framed;
use actix_http::h1::Codec;
use actix_http::{HttpService, KeepAlive, Request};
use actix_service::{fn_factory, fn_service, map_config, IntoServiceFactory as _, ServiceFactory as _};
use actix_web::dev::AppConfig;
use actix_web::rt::net::TcpStream;
use actix_web::web;
use tokio_util::task::TaskTracker;

use crate::connections::ConnectionLimiter;
use crate::state::AppState;

/// How the listener serves connections.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    /// Worker threads, each with its own copy of the application.
    pub workers: usize,
    /// Connections open at once, upgraded sockets included.
    pub max_connections: usize,
    /// Connections open at once from one client address; 0 for no cap.
    pub max_connections_per_address: usize,
    /// How long written data may stay unacknowledged before the kernel drops the connection.
    pub write_timeout: Duration,
    /// How long a graceful stop waits for requests in flight, in seconds.
    pub shutdown_timeout: u64,
}

/// A running listener, and the sockets upgraded to WebSockets that it serves apart.
pub struct Listening {
    pub server: actix_web::dev::Server,
    pub sockets: UpgradedSockets,
}

/// The tasks serving upgraded sockets. A graceful stop closes the sockets first and waits
/// here for their close frames to go out, then stops the server.
#[derive(Clone, Debug, Default)]
pub struct UpgradedSockets(TaskTracker);

impl UpgradedSockets {
    /// Waits, at most `within`, for every upgraded socket to end; no socket is taken over
    /// after this is called. Whether they all ended.
    pub async fn drain(&self, within: Duration) -> bool {
        self.0.close();
        tokio::time::timeout(within, self.0.wait()).await.is_ok()
    }
}

/// Serves `state`'s application on `listener`.
pub fn serve(
    listener: TcpListener,
    settings: ServerSettings,
    state: web::Data<AppState>,
) -> io::Result<Listening> {
    let address = listener.local_addr()?;
    let limiter =
        Arc::new(ConnectionLimiter::new(settings.max_connections, settings.max_connections_per_address));
    let sockets = UpgradedSockets::default();
    let builder = actix_server::Server::build()
        .workers(settings.workers)
        // A backstop: actix-server counts per worker, and only what its dispatcher serves.
        .max_concurrent_connections(settings.max_connections.div_ceil(settings.workers))
        .disable_signals()
        .shutdown_timeout(settings.shutdown_timeout);
    let stopping = builder.graceful_shutdown_signal();
    let tracker = sockets.0.clone();
    let server = builder
        .listen("chat", listener, move || {
            let limiter = limiter.clone();
            let upgrade = {
                let (state, limiter, tracker) = (state.clone(), limiter.clone(), tracker.clone());
                fn_factory(move || {
                    // Upgrade requests get the worker's second instance of the app: the
                    // dispatcher hands them over whole, with their connection.
                    let app = crate::app(state.clone()).into_factory();
                    let (limiter, tracker) = (limiter.clone(), tracker.clone());
                    async move {
                        let app = Rc::new(app.new_service(AppConfig::default()).await?);
                        Ok::<_, ()>(fn_service(move |(req, framed): (Request, Framed<TcpStream, Codec>)| {
                            let parts = framed.into_parts();
                            let slot = limiter.hold(req.peer_addr().map(|peer| peer.ip()));
                            tracker.spawn_local(crate::upgraded::serve(
                                app.clone(),
                                req,
                                parts.io,
                                parts.codec,
                                (parts.read_buf, parts.write_buf),
                                slot,
                            ));
                            ready(Ok::<_, Infallible>(()))
                        }))
                    }
                })
            };
            let stopping = stopping.clone();
            let write_timeout = settings.write_timeout;
            // The defaults of actix-web's `HttpServer`.
            HttpService::build()
                .keep_alive(KeepAlive::default())
                .client_request_timeout(Duration::from_secs(5))
                .client_disconnect_timeout(Duration::from_secs(1))
                .h1_allow_half_closed(true)
                .local_addr(address)
                .on_connect_ext(move |io: &TcpStream, extensions| {
                    limiter.on_connect(io, extensions);
                    crate::write_deadline::set_write_deadline(io, write_timeout);
                })
                // Idle keep-alive connections close when a graceful stop begins.
                .graceful_shutdown_signal(move || {
                    let stopping = stopping.clone();
                    async move { stopping.notified().await }
                })
                .upgrade(upgrade)
                // The host and address are the fallbacks of `ConnectionInfo` for a request
                // without a `Host` header; nothing here reads them.
                .finish(map_config(crate::app(state.clone()), |_| AppConfig::default()))
                .tcp()
        })?
        .run();
    Ok(Listening { server, sockets })
}
