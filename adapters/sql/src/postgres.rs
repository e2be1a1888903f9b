//! The PostgreSQL store, for deployments with several instances or larger data.

use std::time::Duration;

use anyhow::Context as _;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::error::repo_error;
use crate::repositories::impl_repositories;

#[derive(Debug, Clone)]
pub struct PgOptions {
    /// `postgres://user:password@host:port/database`
    pub url: String,
    pub max_connections: u32,
    /// How long a request waits for a connection before it is answered "unavailable".
    pub acquire_timeout: Duration,
    /// Apply the embedded migrations at start (turn off where a DBA applies them).
    pub run_migrations: bool,
}

pub struct PgStore {
    pub(crate) pool: PgPool,
}

impl PgStore {
    pub async fn connect(options: &PgOptions) -> anyhow::Result<Self> {
        let connect: PgConnectOptions = options
            .url
            .parse()
            .context("invalid PostgreSQL URL")?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await
            .context("cannot connect to PostgreSQL")?;
        if options.run_migrations {
            sqlx::migrate!("./migrations/postgres")
                .run(&pool)
                .await
                .context("cannot apply the PostgreSQL migrations")?;
        }
        Ok(Self { pool })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

impl PgStore {
    /// One transaction per message: concurrent sends commit in parallel, ordered per user by
    /// the stream heads' row locks.
    async fn append_new(
        &self,
        conversation: &domain::Conversation,
        message: &domain::Message,
    ) -> application::ports::RepoResult<Option<application::ports::StoredMessage>> {
        let mut tx = self.pool.begin().await.map_err(repo_error("starting a send"))?;
        let stored = Self::append_in(&mut tx, conversation, message).await?;
        if stored.is_some() {
            tx.commit().await.map_err(repo_error("committing a message"))?;
        }
        // Dropping an uncommitted transaction rolls it back.
        Ok(stored)
    }
}

impl_repositories!(PgStore, sqlx::PgConnection);
