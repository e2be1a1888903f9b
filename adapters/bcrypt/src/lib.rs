//! Password hashing with bcrypt, implementing the `PasswordHasher` port.
//!
//! bcrypt is deliberately slow (tens of milliseconds at cost 10), so it never runs on an
//! async worker: each hash runs on tokio's blocking pool, and at most one per core runs at a
//! time so that a login storm queues up instead of starving every other request of CPU.

use std::sync::Arc;

use anyhow::Context as _;
use application::ports::{HashError, PasswordHasher};
use async_trait::async_trait;
use domain::{Password, PasswordHash};
use tokio::sync::Semaphore;

pub struct BcryptHasher {
    cost: u32,
    slots: Arc<Semaphore>,
}

impl BcryptHasher {
    /// `cost` is bcrypt's work factor (4..=31); `None` concurrency means one per core.
    pub fn new(cost: u32, concurrency: Option<usize>) -> Self {
        let concurrency =
            concurrency.unwrap_or_else(|| std::thread::available_parallelism().map(usize::from).unwrap_or(1));
        Self { cost, slots: Arc::new(Semaphore::new(concurrency.max(1))) }
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, bcrypt::BcryptError> + Send + 'static,
    ) -> Result<T, HashError> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|e| HashError(anyhow::Error::new(e).context("hasher closed")))?;
        tokio::task::spawn_blocking(work)
            .await
            .context("bcrypt task panicked")
            .map_err(HashError)?
            .map_err(|e| HashError(anyhow::Error::new(e)))
    }
}

#[async_trait]
impl PasswordHasher for BcryptHasher {
    async fn hash(&self, password: &Password) -> Result<PasswordHash, HashError> {
        let plain = password.expose().to_owned();
        let cost = self.cost;
        let encoded = self.run(move || bcrypt::hash(plain, cost)).await?;
        Ok(PasswordHash::new(encoded))
    }

    async fn verify(&self, password: &Password, hash: &PasswordHash) -> Result<bool, HashError> {
        // A malformed hash (from an import or an edited store) is refused here, before it
        // takes a place in the pool.
        hash.bcrypt_cost().map_err(|e| HashError(anyhow::Error::new(e).context("stored password hash")))?;
        let plain = password.expose().to_owned();
        let encoded = hash.as_str().to_owned();
        self.run(move || bcrypt::verify(plain, &encoded)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn password(raw: &str) -> Password {
        Password::parse(raw).unwrap()
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_only() {
        let hasher = BcryptHasher::new(4, None);
        let hash = hasher.hash(&password("correct horse")).await.unwrap();
        assert!(hash.as_str().starts_with("$2b$04$"));
        assert!(!hash.as_str().contains("correct horse"));
        assert!(hasher.verify(&password("correct horse"), &hash).await.unwrap());
        assert!(!hasher.verify(&password("battery staple"), &hash).await.unwrap());
    }

    #[tokio::test]
    async fn the_same_password_hashes_differently_each_time() {
        let hasher = BcryptHasher::new(4, Some(1));
        let a = hasher.hash(&password("same password")).await.unwrap();
        let b = hasher.hash(&password("same password")).await.unwrap();
        assert_ne!(a, b);
    }

    #[tokio::test]
    async fn a_corrupt_hash_is_an_error_not_a_match() {
        let hasher = BcryptHasher::new(4, None);
        let good = hasher.hash(&password("whatever1")).await.unwrap();
        let body = &good.as_str()[7..];
        for corrupt in [
            "not a bcrypt hash".to_owned(),
            String::new(),
            format!("$2b$99${body}"),
            format!("$2b$03${body}"),
            format!("$2x$04${body}"),
            format!("$2b$04${}", &body[1..]),
            format!("$2b$04${}!", &body[1..]),
        ] {
            let corrupt = PasswordHash::new(corrupt);
            assert!(hasher.verify(&password("whatever1"), &corrupt).await.is_err(), "{:?}", corrupt.as_str());
        }
    }
}
