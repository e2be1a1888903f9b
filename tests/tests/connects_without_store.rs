//! A socket without `since` opens and follows live events while its instance's store does
//! not answer; a resume with `since` in the same state is closed with a reason to reconnect.
//!
//! Two in-process instances share one PostgreSQL database and the test Redis; the second
//! reaches the database through a TCP proxy that can stall every connection (nothing
//! forwarded, new connections accepted and left hanging). Messages are sent through the
//! first instance, whose store answers, and reach the second through Redis.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use secrecy::{ExposeSecret as _, SecretString};
use server::settings::StorageSettings;
use tests::{Backend, TestApp, TestDatabase, EVENT_TIMEOUT};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const WAIT: Duration = Duration::from_secs(10);

/// A TCP proxy to `target` that forwards until it is stalled.
struct Proxy {
    port: u16,
    stalled: tokio::sync::watch::Sender<bool>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Proxy {
    async fn start(target: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stalled, _) = tokio::sync::watch::channel(false);
        let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (watch, held) = (stalled.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { continue };
                let mut stalled = watch.subscribe();
                let task = tokio::spawn(async move {
                    let already = *stalled.borrow_and_update();
                    if already {
                        // Accepted, and nothing ever answers.
                        std::future::pending::<()>().await;
                    }
                    let Ok(mut outbound) = TcpStream::connect(target).await else { return };
                    let stall = async { stalled.wait_for(|stalled| *stalled).await.is_ok() };
                    let stall = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
                        stall = stall => stall,
                    };
                    if stall {
                        // Both ends stay open; nothing moves.
                        std::future::pending::<()>().await;
                    }
                });
                held.lock().unwrap().push(task.abort_handle());
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
        Self { port, stalled, tasks }
    }

    fn stall(&self) {
        self.stalled.send_replace(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

async fn wait_ready(app: &TestApp) {
    let deadline = Instant::now() + WAIT;
    while app.api().get("/readyz", None).await.status != StatusCode::OK {
        assert!(Instant::now() < deadline, "an instance is not ready (is Redis running?)");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_socket_without_since_goes_live_while_the_store_hangs_and_a_resume_is_told_to_reconnect() {
    let database = TestDatabase::create(Backend::Postgres).await;
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let prefix = format!("connects{}", std::process::id());
    let settings = |proxied: bool| {
        let mut settings = tests::test_settings(&database);
        settings.fanout = tests::shared_redis_fanout(&prefix);
        if proxied {
            let StorageSettings::Postgres { url, run_migrations, .. } = settings.storage.clone() else {
                unreachable!("a PostgreSQL database")
            };
            let url = url.expose_secret().replacen("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port), 1);
            assert!(url.contains(&proxy.port.to_string()), "the URL names 127.0.0.1:5432: {url}");
            settings.storage = StorageSettings::Postgres {
                url: SecretString::from(url),
                max_connections: 4,
                acquire_timeout_ms: 1000,
                run_migrations,
            };
        }
        settings
    };
    let (direct_settings, proxied_settings) = (settings(false), settings(true));
    // The second instance shares the database, which goes with the first.
    let direct = TestApp::start(direct_settings, Some(database)).await;
    let proxied = TestApp::start(proxied_settings, None).await;
    wait_ready(&direct).await;
    wait_ready(&proxied).await;
    let (api, cut) = (direct.api(), proxied.api());
    let alice = api.create_user("alice").await;
    let bob = api.create_user("bob").await;
    // Never seen by the second instance.
    let carol = api.create_user("carol").await;
    api.send_ok(&alice, &bob, "before").await;
    // The handshake checks the token against users the instance has seen (from memory
    // once seen): bob has been seen there before the store hangs.
    cut.get("/api/v1/user/get-profile", Some(&bob.token)).await.data(StatusCode::OK);
    // So do the revocations: the instance trusts its copy of them once it has read them all
    // with its Redis feed live, within a quarter of a second of the feed going live (the
    // read at start may come before it). On a busy machine that takes a few of those turns.
    tokio::time::sleep(Duration::from_secs(1)).await;

    proxy.stall();
    let reply = cut.get("/api/v1/user/get-profile", Some(&bob.token)).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "the store hangs: {reply:?}");

    // Without since: open and registered while every store read hangs. The upgrade is
    // answered once the server knows where the stream starts, or after the store's deadline
    // for saying so (one second): then the socket anchors on its events.
    let started = Instant::now();
    let mut socket = cut.connect_ws_with_query(&bob.token).await;
    let handshake = started.elapsed();
    assert!(handshake < Duration::from_millis(2500), "the handshake took {handshake:?}");
    socket.next_event("onlineUsers", EVENT_TIMEOUT).await;
    let opened = started.elapsed();
    assert!(opened < Duration::from_secs(3), "opened in {opened:?}");
    let sent = api.send_ok(&alice, &bob, "while the store hangs").await;
    let live = socket.next_event("newMessage", EVENT_TIMEOUT).await;
    assert_eq!(live["_id"], sent["_id"], "{live}");
    assert_eq!(live["message"], "while the store hangs");
    assert_eq!(live["cursor"], "2", "right after the one before the socket opened");
    let next = api.send_ok(&alice, &bob, "and the next").await;
    let live = socket.next_event("newMessage", EVENT_TIMEOUT).await;
    assert_eq!((&live["_id"], &live["cursor"]), (&next["_id"], &serde_json::json!("3")));
    eprintln!("handshake in {handshake:?}, first frame after {opened:?} with the store hanging");

    // A user the instance has never seen: the store cannot say whether they exist, and the
    // token's signature vouches for them (tokens go to registered users, who are never
    // deleted). A request with the same token still needs the store.
    let reply = cut.get("/api/v1/user/get-profile", Some(&carol.token)).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "the store hangs: {reply:?}");
    let started = Instant::now();
    let mut unseen = cut.connect_ws_with_query(&carol.token).await;
    let handshake = started.elapsed();
    assert!(handshake < Duration::from_millis(3000), "the handshake took {handshake:?}");
    unseen.next_event("onlineUsers", EVENT_TIMEOUT).await;
    let sent = api.send_ok(&alice, &carol, "to someone new here").await;
    let live = unseen.next_event("newMessage", EVENT_TIMEOUT).await;
    assert_eq!(live["_id"], sent["_id"], "{live}");
    eprintln!("an unseen user's handshake in {handshake:?} with the store hanging");
    drop(unseen);

    // With since: the backlog cannot be read, and the client is told to reconnect with it.
    let url = format!("{}?token={}&since=2", cut.ws_url(), bob.token);
    let started = Instant::now();
    let mut resumed =
        cut.try_connect_ws(&url).await.expect("the handshake is done before the store is asked");
    let (code, reason) = resumed.close_frame(Duration::from_secs(10)).await;
    let closed = started.elapsed();
    assert_eq!(code, CloseCode::Error, "{reason}");
    assert_eq!(reason, "server error: reconnect with since");
    assert!(closed < Duration::from_secs(5), "closed after {closed:?}");
    eprintln!("a resume closed after {closed:?} with the store hanging");

    drop(socket);
    proxied.stop().await;
    direct.stop().await;
    drop(proxy);
}
