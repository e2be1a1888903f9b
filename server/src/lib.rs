//! The composition root: reads the configuration, builds the adapters it names, wires them
//! into the application services and serves them over HTTP. The only crate that knows every
//! adapter; everything else sees ports.

mod bounded;
pub mod settings;
mod telemetry;
pub mod transfer;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use application::ports::{
    Clock, ConversationRepository, GroupRepository, HealthCheck, MessageChangeRepository, MessageRepository,
    Notifier, Presence, RevocationFeed, RevokedTokenRepository, SystemClock, UserRepository,
};
use application::{
    AccountService, GroupService, MessageChangeService, MessagingService, MessagingStores, RealtimeService,
    Revocations,
};
use chat_realtime::{ConnectionRegistry, Delivery, GroupMembers, Hub, InMemoryPresence};
use chat_websocket::WsSettings;
use secrecy::{ExposeSecret, SecretString};

pub use settings::Settings;
use settings::{FanoutSettings, SameSite, SqliteSynchronous, StorageSettings};
pub use telemetry::init_logging;

/// The repositories of one store, as ports.
pub struct Storage {
    pub users: Arc<dyn UserRepository>,
    pub conversations: Arc<dyn ConversationRepository>,
    pub messages: Arc<dyn MessageRepository>,
    pub groups: Arc<dyn GroupRepository>,
    pub revoked: Arc<dyn RevokedTokenRepository>,
    pub health: Arc<dyn HealthCheck>,
    /// Edits, deletions and reactions of stored messages.
    pub changes: Arc<dyn MessageChangeRepository>,
}

impl Storage {
    fn from_store<S>(store: Arc<S>) -> Self
    where
        S: UserRepository
            + ConversationRepository
            + MessageRepository
            + GroupRepository
            + RevokedTokenRepository
            + HealthCheck
            + MessageChangeRepository
            + 'static,
    {
        Self {
            users: store.clone(),
            conversations: store.clone(),
            messages: store.clone(),
            groups: store.clone(),
            revoked: store.clone(),
            health: store.clone(),
            changes: store,
        }
    }
}

/// Opens the store the settings name: connects and applies migrations.
pub async fn open_storage(settings: &StorageSettings) -> anyhow::Result<Storage> {
    match settings {
        StorageSettings::Sqlite { url, max_connections, acquire_timeout_ms, synchronous } => {
            let store = chat_sql::SqliteStore::connect(&chat_sql::SqliteOptions {
                url: url.clone(),
                max_connections: *max_connections,
                acquire_timeout: Duration::from_millis(*acquire_timeout_ms),
                synchronous: match synchronous {
                    SqliteSynchronous::Full => chat_sql::Synchronous::Full,
                    SqliteSynchronous::Normal => chat_sql::Synchronous::Normal,
                },
            })
            .await?;
            Ok(Storage::from_store(Arc::new(store)))
        }
        StorageSettings::Postgres { url, max_connections, acquire_timeout_ms, run_migrations } => {
            let store = chat_sql::PgStore::connect(&chat_sql::PgOptions {
                url: url.expose_secret().to_owned(),
                max_connections: *max_connections,
                acquire_timeout: Duration::from_millis(*acquire_timeout_ms),
                run_migrations: *run_migrations,
            })
            .await?;
            Ok(Storage::from_store(Arc::new(store)))
        }
        StorageSettings::Mongodb { url, acquire_timeout_ms } => {
            let store = chat_mongo::MongoStore::connect(&chat_mongo::MongoOptions {
                url: url.expose_secret().to_owned(),
                acquire_timeout: Duration::from_millis(*acquire_timeout_ms),
            })
            .await?;
            Ok(Storage::from_store(Arc::new(store)))
        }
        StorageSettings::Memory {} => {
            tracing::warn!(
                "storage.backend is \"memory\": nothing is kept when the server stops, and other \
                 instances do not see this one's data (for demos and tests)"
            );
            Ok(Storage::from_store(Arc::new(chat_memory::MemoryStore::new())))
        }
    }
}

/// A built server, bound to its port, not yet running.
pub struct Application {
    port: u16,
    server: actix_web::dev::Server,
    /// Sockets upgraded to WebSockets, served apart from the server's HTTP connections.
    sockets: chat_http::UpgradedSockets,
    shutdown_timeout: Duration,
    registry: Arc<ConnectionRegistry>,
    upkeep: tokio::task::JoinHandle<()>,
}

impl Application {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until SIGINT/SIGTERM, then stops gracefully: sockets get a close frame and
    /// in-flight requests finish (within `server.shutdown_timeout`).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let handle = self.server.handle();
        let registry = self.registry.clone();
        let (sockets, within) = (self.sockets.clone(), self.shutdown_timeout);
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutting down");
            registry.shut_down();
            if !sockets.drain(within).await {
                tracing::warn!("sockets still open after server.shutdown_timeout; closing them");
            }
            handle.stop(true).await;
        });
        let result = self.server.await;
        self.upkeep.abort();
        result
    }
}

/// Builds every adapter the settings name and binds the listener.
pub async fn build(settings: Settings) -> anyhow::Result<Application> {
    let storage = open_storage(&settings.storage).await?;
    let storage = match settings.storage.deadline() {
        Some(deadline) => bounded::bounded(storage, deadline),
        None => storage,
    };
    build_with_storage(settings, storage).await
}

/// How events, presence and revocations reach the other instances (or stay here).
struct Fanout {
    notifier: Arc<dyn Notifier>,
    presence: Arc<dyn Presence>,
    /// `None` for a single instance: every logout happens here.
    revocation_feed: Option<Arc<dyn RevocationFeed>>,
}

pub async fn build_with_storage(settings: Settings, storage: Storage) -> anyhow::Result<Application> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let secret = jwt_secret(&settings);
    let tokens = Arc::new(chat_jwt::JwtTokenService::new(&secret, settings.auth.token_ttl()));
    let hasher = Arc::new(chat_bcrypt::BcryptHasher::new(settings.auth.bcrypt_cost, None));

    let registry =
        ConnectionRegistry::new(settings.websocket.queue_capacity, settings.limits.sockets_per_user);
    // This instance's connections and the members of their groups: where every event lands.
    let delivery = Delivery::new(registry.clone(), GroupMembers::new(storage.groups.clone()));
    let mut health: Vec<(&'static str, Arc<dyn HealthCheck>)> = vec![("storage", storage.health.clone())];
    // With local fan-out this instance is the only one: every logout happens here.
    let mut stream_check = None;
    let Fanout { notifier, presence, revocation_feed } = match &settings.fanout {
        FanoutSettings::Local {} => Fanout {
            notifier: delivery.clone(),
            presence: Arc::new(InMemoryPresence::new()),
            revocation_feed: None,
        },
        FanoutSettings::Redis {
            redis_url,
            redis_tls,
            sentinel,
            prefix,
            presence_ttl,
            stream_check_interval_ms,
        } => {
            // Live events lost on the bus without a trace: the periodic check of the heads.
            stream_check =
                (*stream_check_interval_ms > 0).then(|| Duration::from_millis(*stream_check_interval_ms));
            // An empty path (a variable set to "") is no path.
            let file = |path: &Option<std::path::PathBuf>| path.clone().filter(|p| !p.as_os_str().is_empty());
            let fanout = chat_redis::RedisFanout::start(
                chat_redis::FanoutOptions {
                    url: redis_url.expose_secret().to_owned(),
                    tls: chat_redis::TlsFiles {
                        ca_file: file(&redis_tls.ca_file),
                        client_cert_file: file(&redis_tls.client_cert_file),
                        client_key_file: file(&redis_tls.client_key_file),
                    },
                    sentinel: sentinel.as_ref().map(|s| chat_redis::SentinelOptions {
                        master_name: s.master_name.clone(),
                        addresses: s.addresses.clone(),
                        username: s.username.clone().filter(|u| !u.is_empty()),
                        password: s.password.as_ref().map(|p| p.expose_secret().to_owned()),
                        tls: s.tls,
                    }),
                    prefix: prefix.clone(),
                    presence_ttl: Duration::from_secs(*presence_ttl),
                },
                delivery.clone(),
            )
            .context("invalid fanout settings")?;
            // A wrong CA, password or a Redis Cluster stops the start here, rather than
            // leaving an instance that retries for ever and is never ready.
            fanout.check_endpoint(Duration::from_secs(5)).await.context("invalid fanout settings")?;
            health.push(("fanout", fanout.clone()));
            Fanout { notifier: fanout.clone(), presence: fanout.clone(), revocation_feed: Some(fanout) }
        }
    };
    let metrics = Arc::new(chat_http::Metrics::new());
    let notifier: Arc<dyn Notifier> = Arc::new(chat_http::CountingNotifier::new(notifier, metrics.clone()));

    // A revocation (here, from another instance, or found by a reload) ends the sockets of its token.
    let revocations =
        Revocations::ending_connections(storage.revoked.clone(), revocation_feed, registry.clone());
    if let Err(error) = revocations.load(clock.now()).await {
        tracing::warn!(error = %error, "revocations not loaded yet; asking the store until they are");
    }
    let accounts = Arc::new(AccountService::new(
        storage.users.clone(),
        revocations.clone(),
        hasher,
        tokens,
        clock.clone(),
    ));
    let messaging = Arc::new(MessagingService::new(
        MessagingStores {
            users: storage.users.clone(),
            conversations: storage.conversations.clone(),
            messages: storage.messages.clone(),
            changes: storage.changes.clone(),
            groups: storage.groups.clone(),
        },
        notifier.clone(),
        clock.clone(),
    ));
    let changes = Arc::new(MessageChangeService::new(
        storage.conversations.clone(),
        storage.changes.clone(),
        storage.groups.clone(),
        notifier.clone(),
        clock.clone(),
        settings.messages.edit_window(),
    ));
    let groups = Arc::new(GroupService::new(
        storage.users.clone(),
        storage.groups.clone(),
        notifier.clone(),
        clock.clone(),
        settings.groups.limits(),
    ));
    let realtime = Arc::new(
        RealtimeService::new(presence, notifier, storage.conversations.clone())
            .scoped_above(settings.presence.full_list_max, storage.groups.clone()),
    );
    let hub = Hub::new(delivery.clone(), realtime.clone(), storage.messages.clone(), storage.groups.clone());

    let limits = Arc::new(chat_http::RateLimits::new(&settings.limits.requests));
    let socketio_limits = limits.clone();
    let socketio = chat_socketio::Engine::new(
        chat_socketio::EngineSettings {
            connect_timeout: Duration::from_secs(settings.socketio.connect_timeout),
            limits: chat_socketio::SessionLimits {
                max_sessions: settings.limits.socketio_sessions,
                max_sessions_per_address: settings.limits.socketio_sessions_per_ip,
                handshakes_per_minute_per_address: settings.limits.socketio_handshakes_per_minute_per_ip,
            },
            ..chat_socketio::EngineSettings::new(
                Duration::from_secs(settings.websocket.ping_interval),
                Duration::from_secs(settings.websocket.ping_timeout),
                settings.websocket.max_frame_bytes,
                settings.websocket.queue_capacity,
                settings.limits.socket_frames_per_second,
            )
        },
        accounts.clone(),
        hub.clone(),
        // One connect budget per user for both socket endpoints.
        Box::new(move |user| socketio_limits.socket_connect(user.as_str()).map_err(|e| e.to_string())),
        // The per-address limits read the client address as the HTTP ones do.
        chat_http::client_ip,
    );

    let ws_settings = WsSettings {
        ping_interval: Duration::from_secs(settings.websocket.ping_interval),
        ping_timeout: Duration::from_secs(settings.websocket.ping_timeout),
        max_frame_bytes: settings.websocket.max_frame_bytes,
        max_frames_per_second: settings.limits.socket_frames_per_second,
    };
    // The HTTP adapter authenticates `/ws` handshakes and mounts both endpoints here.
    let transports = chat_http::Transports {
        ws: Box::new(move |req, body, handshake| {
            Box::pin(chat_websocket::serve(req, body, handshake, hub.clone(), ws_settings.clone()))
        }),
        socketio: Box::new(move |config| {
            config.service(chat_socketio::service(socketio.clone()));
        }),
    };
    let ttl = settings.auth.token_ttl();
    let state = actix_web::web::Data::new(chat_http::AppState {
        accounts,
        messaging,
        changes,
        groups,
        realtime,
        registry: registry.clone(),
        metrics,
        limits,
        transports,
        health,
        settings: chat_http::HttpSettings {
            cookie: chat_http::CookieSettings {
                secure: settings.cookie.secure,
                same_site: match settings.cookie.same_site {
                    SameSite::Strict => chat_http::SameSite::Strict,
                    SameSite::Lax => chat_http::SameSite::Lax,
                    SameSite::None => chat_http::SameSite::None,
                },
                max_age: ttl,
            },
            body_limit: settings.http.body_limit,
            body_timeout: Duration::from_secs(settings.http.body_timeout),
            cors_origins: settings.cors.allowed_origins.clone(),
            readiness_timeout: Duration::from_millis(2000),
            web_client: settings.web.enabled,
            metrics: settings.metrics.enabled,
        },
    });

    let address = format!("{}:{}", settings.server.host, settings.server.port);
    let listener = TcpListener::bind(&address).with_context(|| format!("cannot listen on {address}"))?;
    let port = listener.local_addr()?.port();
    let workers = match settings.server.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    // Descriptors beyond the connections: the store's pool, Redis, logs, the listener.
    let max_connections = chat_http::connection_budget(settings.server.max_connections, 256);
    // Behind a trusted proxy every connection comes from the proxy: the proxy caps per client.
    let per_address = if settings.limits.requests.trust_forwarded_for {
        0
    } else {
        settings.server.max_connections_per_address
    };
    let chat_http::Listening { server, sockets } = chat_http::serve(
        listener,
        chat_http::ServerSettings {
            workers,
            max_connections,
            max_connections_per_address: per_address,
            write_timeout: Duration::from_secs(settings.http.write_timeout),
            shutdown_timeout: settings.server.shutdown_timeout,
        },
        state,
    )?;
    tracing::info!(
        address = %address,
        port,
        storage = settings.storage.backend_name(),
        environment = settings.environment.as_str(),
        "listening"
    );

    let check = stream_check.map(|interval| {
        let check = chat_realtime::StreamCheck::default();
        tokio::spawn(check.run(registry.clone(), storage.messages.clone(), interval))
    });
    // Group entries not delivered here for want of their members: caught up from the store.
    let owed = tokio::spawn(delivery.clone().keep_settling());
    let upkeep = tokio::spawn(async move {
        // Stopped with the revocations' upkeep.
        struct Abort(Option<tokio::task::JoinHandle<()>>);
        impl Drop for Abort {
            fn drop(&mut self) {
                self.0.take().inspect(tokio::task::JoinHandle::abort);
            }
        }
        let _check = Abort(check);
        let _owed = Abort(Some(owed));
        keep_revocations(revocations, clock).await
    });
    let shutdown_timeout = Duration::from_secs(settings.server.shutdown_timeout);
    Ok(Application { port, server, sockets, shutdown_timeout, registry, upkeep })
}

fn jwt_secret(settings: &Settings) -> SecretString {
    let configured = &settings.auth.jwt_secret;
    if !configured.expose_secret().is_empty() {
        return configured.clone();
    }
    // Production refuses to start without a secret (checked when settings load).
    tracing::warn!(
        "auth.jwt_secret is not set: using a random secret; tokens will not survive a restart \
         (set CHAT__AUTH__JWT_SECRET)"
    );
    let bytes: [u8; 32] = rand::random();
    SecretString::from(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// Keeps the revocations in memory complete (loading them again after the fan-out bus was
/// cut, within a quarter of a second of its return) and forgets those of tokens that have
/// expired anyway, hourly.
async fn keep_revocations(revocations: Arc<Revocations>, clock: Arc<dyn Clock>) {
    const LOAD_CHECK: Duration = Duration::from_millis(250);
    const PURGE: Duration = Duration::from_secs(3600);
    let mut tick = tokio::time::interval(LOAD_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_purge: Option<tokio::time::Instant> = None;
    let mut load_failed = false;
    loop {
        tick.tick().await;
        match revocations.load(clock.now()).await {
            Ok(()) => load_failed = false,
            Err(error) if !load_failed => {
                load_failed = true;
                tracing::warn!(error = %error, "loading revocations failed; asking the store until it works");
            }
            Err(_) => {}
        }
        if last_purge.is_none_or(|at| at.elapsed() >= PURGE) {
            last_purge = Some(tokio::time::Instant::now());
            match revocations.purge_expired(clock.now()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(purged = n, "expired revocations purged"),
                Err(error) => tracing::warn!(error = %error, "purging expired revocations failed"),
            }
        }
    }
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler only fails outside a runtime");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
