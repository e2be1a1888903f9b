//! The failures every use case shares, whatever it does: a dependency that is down and a
//! bug. Each group of use cases lists its own outcomes and embeds this core, so the
//! mapping from the ports' errors is written once here and an adapter maps the core once.

use crate::ports::{HashError, RepoError};

/// What can go wrong in any use case, besides the outcomes it lists itself.
#[derive(Debug, thiserror::Error)]
pub enum ApplicationError {
    /// The store (or another dependency) is down or too slow: worth retrying shortly.
    #[error("storage is unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// Something that should not happen did; retrying won't help.
    #[error(transparent)]
    Unexpected(anyhow::Error),
}

impl From<RepoError> for ApplicationError {
    fn from(error: RepoError) -> Self {
        match error {
            RepoError::Unavailable(e) => Self::Unavailable(e),
            // The use cases that can meet a conflict handle it before it gets here.
            RepoError::Conflict => Self::Unexpected(anyhow::anyhow!("unexpected conflict")),
            RepoError::Unexpected(e) => Self::Unexpected(e),
        }
    }
}

impl From<HashError> for ApplicationError {
    fn from(error: HashError) -> Self {
        Self::Unexpected(anyhow::Error::new(error))
    }
}

/// Lets `?` turn a port's error into a use-case error `$error` that embeds the core as
/// `$error::Failed`, so each use-case error gets these conversions without repeating them.
macro_rules! embeds_application_error {
    ($error:ty: $($port_error:ty),+) => {
        $(
            impl From<$port_error> for $error {
                fn from(error: $port_error) -> Self {
                    Self::Failed(error.into())
                }
            }
        )+
    };
}
pub(crate) use embeds_application_error;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unavailable_store_is_worth_a_retry_and_anything_else_is_unexpected() {
        let down = ApplicationError::from(RepoError::Unavailable(anyhow::anyhow!("down")));
        assert!(matches!(down, ApplicationError::Unavailable(_)));
        for error in [RepoError::Conflict, RepoError::Unexpected(anyhow::anyhow!("bug"))] {
            assert!(matches!(ApplicationError::from(error), ApplicationError::Unexpected(_)));
        }
        let hash = ApplicationError::from(HashError(anyhow::anyhow!("bad cost")));
        assert!(matches!(hash, ApplicationError::Unexpected(_)));
    }
}
