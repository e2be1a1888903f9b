//! What the SQL stores' own test suites share: a store of each engine in a database of its
//! own, removed afterwards, seen through every port the tests use.

// Each suite uses the part it needs.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use application::ports::{
    ConversationRepository, GroupRepository, MessageChangeRepository, MessageRepository, UserRepository,
};
use domain::UserId;

/// Every port of a SQL store the tests call.
pub trait Store:
    UserRepository
    + ConversationRepository
    + MessageRepository
    + GroupRepository
    + MessageChangeRepository
    + 'static
{
}
impl<S> Store for S where
    S: UserRepository
        + ConversationRepository
        + MessageRepository
        + GroupRepository
        + MessageChangeRepository
        + 'static
{
}

/// Runs `test` on a store in a folder of its own, removed afterwards.
pub async fn on_sqlite<F, Fut>(prefix: &str, test: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = std::env::temp_dir().join(format!("{prefix}_{}", UserId::generate()));
    let store = chat_sql::SqliteStore::connect(&chat_sql::SqliteOptions {
        url: format!("sqlite://{}", dir.join("chat.db").display()),
        max_connections: 8,
        acquire_timeout: Duration::from_secs(30),
        synchronous: chat_sql::Synchronous::Normal,
    })
    .await
    .expect("opening the database");
    let store = Arc::new(store);
    test(store.clone()).await;
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `test` on a store in a database of its own, dropped afterwards.
pub async fn on_postgres<F, Fut>(prefix: &str, test: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    in_scratch_postgres(prefix, |url| async move {
        let store = chat_sql::PgStore::connect(&chat_sql::PgOptions {
            url,
            max_connections: 8,
            acquire_timeout: Duration::from_secs(30),
            run_migrations: true,
        })
        .await
        .expect("opening the database");
        let store = Arc::new(store);
        test(store.clone()).await;
        store.close().await;
    })
    .await;
}

/// Runs `test` with the URL of an empty PostgreSQL database of its own, named after
/// `prefix`, and drops the database afterwards, also when `test` panics.
pub async fn in_scratch_postgres<F, Fut>(prefix: &str, test: F)
where
    F: FnOnce(String) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    use sqlx::postgres::PgPoolOptions;

    let admin_url = std::env::var("CHAT_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("{prefix}_{}", UserId::generate().as_str().replace('-', ""));
    let admin =
        PgPoolOptions::new().max_connections(1).connect(&admin_url).await.expect("reaching PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE \"{name}\"")).execute(&admin).await.expect("creating a database");
    let url = match admin_url.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{name}"),
        None => panic!("CHAT_TEST_POSTGRES_URL names no database: {admin_url}"),
    };
    let outcome = tokio::spawn(async move { test(url).await }).await;
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).execute(&admin).await;
    admin.close().await;
    if let Err(error) = outcome {
        std::panic::resume_unwind(error.into_panic());
    }
}
