//! A storage outage: 503 within a bounded time, then recovery without a restart.

use super::*;

/// How the proxy treats traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Open,
    /// Every connection closed; new ones accepted and left hanging.
    Cut,
    /// Connections kept open but nothing forwarded (a stalled network or server); new ones
    /// accepted and left hanging.
    Stalled,
}

/// A TCP proxy to `target` whose link can be cut, stalled and restored.
struct Proxy {
    port: u16,
    link: tokio::sync::watch::Sender<Link>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl Proxy {
    async fn start(target: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (link, _) = tokio::sync::watch::channel(Link::Open);
        let connections: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (links, tasks) = (link.clone(), connections.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let mut link = links.subscribe();
                let task = tokio::spawn(async move {
                    if *link.borrow_and_update() != Link::Open {
                        // A black hole: the connection stays open and nothing answers.
                        std::future::pending::<()>().await;
                    }
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let stalled = async { link.wait_for(|l| *l == Link::Stalled).await.is_ok() };
                    let stalled = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
                        stalled = stalled => stalled,
                    };
                    if stalled {
                        // Both ends stay open; nothing moves.
                        std::future::pending::<()>().await;
                    }
                });
                let mut tasks = tasks.lock().unwrap();
                tasks.retain(|t| !t.is_finished());
                tasks.push(task.abort_handle());
            }
        })
        .abort_handle();
        Self { port, link, connections, accept }
    }

    /// Closes every connection, proxied or held.
    fn drop_connections(&self) {
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    fn set(&self, link: Link) {
        self.link.send_replace(link);
        if link != Link::Stalled {
            self.drop_connections();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.drop_connections();
    }
}

/// Polls `/readyz` until it answers `status`; panics after `timeout`.
async fn wait_ready(api: &Api, status: StatusCode, timeout: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let reply = api.get("/readyz", None).await;
        if reply.status == status {
            return started.elapsed();
        }
        assert!(started.elapsed() < timeout, "/readyz still {} after {timeout:?}", reply.status);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn outage_and_recovery(backend: Backend) {
    let target = match backend {
        Backend::Postgres => "127.0.0.1:5432",
        Backend::Mongodb => "127.0.0.1:27017",
        Backend::Sqlite | Backend::Memory => unreachable!("SQLite and the memory store have no network"),
    };
    let proxy = Proxy::start(target).await;
    let proxied = |url: &str| {
        let url = url.replacen(target, &format!("127.0.0.1:{}", proxy.port), 1);
        assert!(url.contains(&proxy.port.to_string()), "the URL names {target}: {url}");
        url
    };
    let app = TestApp::spawn_with(backend, |s| {
        s.storage = match s.storage.clone() {
            StorageSettings::Postgres { url, run_migrations, .. } => StorageSettings::Postgres {
                url: SecretString::from(proxied(secrecy::ExposeSecret::expose_secret(&url))),
                max_connections: 4,
                acquire_timeout_ms: 1000,
                run_migrations,
            },
            StorageSettings::Mongodb { url, .. } => {
                let url = proxied(secrecy::ExposeSecret::expose_secret(&url));
                let separator = if url.contains('?') { '&' } else { '?' };
                StorageSettings::Mongodb {
                    // One server behind the proxy: never follow the addresses it advertises.
                    url: SecretString::from(format!("{url}{separator}directConnection=true")),
                    acquire_timeout_ms: 1000,
                }
            }
            other => other,
        };
    })
    .await;
    let api = app.api();
    let alice = api.create_user(&unique("alice")).await;
    let bob = api.create_user(&unique("bob")).await;
    api.send(&alice.token, &bob.id, "before").await.data(StatusCode::CREATED);
    wait_ready(&api, StatusCode::OK, WAIT).await;

    for outage in [Link::Cut, Link::Stalled] {
        proxy.set(outage);
        for (what, request) in [
            ("get-profile", api.request(Method::GET, "/api/v1/user/get-profile", Some(&alice.token))),
            (
                "send",
                api.request(Method::POST, &format!("/api/v1/message/send/{}", bob.id), Some(&alice.token))
                    .json(&json!({ "message": "during" })),
            ),
            (
                "login",
                api.request(Method::POST, "/api/v1/user/login", None)
                    .json(&json!({ "username": alice.username, "password": PASSWORD })),
            ),
        ] {
            let started = Instant::now();
            let reply = api.execute(request).await;
            let elapsed = started.elapsed();
            assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{what} ({outage:?}): {reply:?}");
            reply.error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE");
            assert!(elapsed < Duration::from_secs(3), "{what} ({outage:?}) took {elapsed:?}");
            assert!(reply.header("retry-after").is_some(), "{reply:?}");
        }
        let started = Instant::now();
        let reply = api.get("/readyz", None).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{outage:?}: {reply:?}");
        assert!(started.elapsed() < Duration::from_secs(3), "/readyz took {:?}", started.elapsed());
        api.get("/healthz", None).await.data(StatusCode::OK);

        proxy.set(Link::Open);
        let recovered = wait_ready(&api, StatusCode::OK, Duration::from_secs(30)).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let reply = api.send(&alice.token, &bob.id, "after").await;
            if reply.status == StatusCode::CREATED {
                break;
            }
            assert!(Instant::now() < deadline, "no recovery after {outage:?}: {reply:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        api.get("/api/v1/user/get-profile", Some(&alice.token)).await.data(StatusCode::OK);
        eprintln!("{backend:?}: ready {recovered:?} after the {outage:?} link was restored");
    }
    let messages = api.all_message_ids(&alice, &bob).await;
    assert!(messages.len() >= 3, "{messages:?}");
}

#[tokio::test]
async fn a_postgres_outage_is_503_and_recovers_by_itself() {
    outage_and_recovery(Backend::Postgres).await;
}

#[tokio::test]
async fn a_mongodb_outage_is_503_and_recovers_by_itself() {
    outage_and_recovery(Backend::Mongodb).await;
}
