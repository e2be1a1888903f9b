//! The real server built in this process (`server::build`) on a free port over a fresh
//! database, served in the background: what most black-box tests run against.

use std::ops::Deref;

use crate::api::Api;
use crate::{test_settings, Backend, TestDatabase};

/// A running in-process server and a client of it ([`Api`], which it derefs to). Dropping it
/// stops the server and removes the database it owns; [`TestApp::stop`] does the same
/// without blocking.
pub struct TestApp {
    api: Api,
    database: Option<TestDatabase>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestApp {
    /// The test profile's settings on the backend of `CHAT_TEST_BACKEND`.
    pub async fn spawn() -> Self {
        Self::spawn_with(Backend::from_env(), |_| {}).await
    }

    /// A server over a fresh database of `backend`, with `adjust` applied to the test
    /// profile's settings ([`test_settings`]).
    pub async fn spawn_with(backend: Backend, adjust: impl FnOnce(&mut server::Settings)) -> Self {
        let database = TestDatabase::create(backend).await;
        let mut settings = test_settings(&database);
        adjust(&mut settings);
        Self::start(settings, Some(database)).await
    }

    /// A server with exactly `settings`; `database`, if given, is removed with the server
    /// (pass `None` for a database that outlives it, or that another instance owns).
    pub async fn start(settings: server::Settings, database: Option<TestDatabase>) -> Self {
        let app = server::build(settings).await.expect("the server starts");
        let api = Api::new(app.port());
        let server = tokio::spawn(app.run_until_stopped());
        Self { api, database, server }
    }

    /// A client of this server that can move into tasks.
    pub fn api(&self) -> Api {
        self.api.clone()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        self.api.url("")
    }

    /// Stops the server and removes its database.
    pub async fn stop(mut self) {
        self.server.abort();
        if let Some(database) = self.database.take() {
            database.remove().await;
        }
    }
}

impl Deref for TestApp {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Drop for TestApp {
    /// Also after a failed assertion: the database goes (on a runtime of its own, as this one
    /// may be unwinding).
    fn drop(&mut self) {
        self.server.abort();
        if let Some(database) = self.database.take() {
            database.remove_blocking();
        }
    }
}
