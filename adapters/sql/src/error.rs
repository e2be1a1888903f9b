//! Turning sqlx errors into the ports' outcomes, once.

use application::ports::RepoError;

/// Classifies a driver error; `context` names the operation for the logs.
pub(crate) fn repo_error(context: &'static str) -> impl FnOnce(sqlx::Error) -> RepoError {
    move |error| match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => RepoError::Conflict,
        sqlx::Error::Database(db) if is_transient(db.code().as_deref()) => {
            RepoError::Unavailable(anyhow::Error::new(error).context(context))
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => RepoError::Unavailable(anyhow::Error::new(error).context(context)),
        _ => RepoError::Unexpected(anyhow::Error::new(error).context(context)),
    }
}

/// Codes that mean "try again later" rather than "this request is wrong": SQLite's busy and
/// locked families, PostgreSQL's connection, shutdown and resource classes.
fn is_transient(code: Option<&str>) -> bool {
    let Some(code) = code else { return false };
    match code.parse::<i32>() {
        // SQLite: SQLITE_BUSY (5), SQLITE_LOCKED (6), SQLITE_IOERR (10) and their extended codes.
        Ok(n) if n < 10_000 && code.len() < 5 => matches!(n & 0xff, 5 | 6 | 10),
        // PostgreSQL SQLSTATE classes 08 (connection), 53 (resources), 57P (shutdown).
        _ => code.starts_with("08") || code.starts_with("53") || code.starts_with("57P"),
    }
}

#[cfg(test)]
mod tests {
    use super::is_transient;

    #[test]
    fn busy_and_connection_codes_are_transient() {
        for code in ["5", "517", "6", "262", "08006", "53300", "57P01"] {
            assert!(is_transient(Some(code)), "{code}");
        }
        for code in ["2067", "1555", "23505", "42P01", "19"] {
            assert!(!is_transient(Some(code)), "{code}");
        }
        assert!(!is_transient(None));
    }
}
