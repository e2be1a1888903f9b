//! Turning driver errors into the ports' outcomes, once.

use application::ports::RepoError;
use mongodb::error::{Error, ErrorKind, WriteFailure};

/// Duplicate key: 11000 today; 11001 and 12582 from older servers and mongos.
const DUPLICATE_KEY_CODES: [i32; 3] = [11000, 11001, 12582];

/// Server codes that mean "try again later": unreachable or unelectable nodes, elections,
/// shutdowns, time limits and write concern timeouts.
const TRANSIENT_CODES: [i32; 16] = [
    6,     // HostUnreachable
    7,     // HostNotFound
    50,    // MaxTimeMSExpired
    64,    // WriteConcernFailed (wtimeout)
    89,    // NetworkTimeout
    91,    // ShutdownInProgress
    189,   // PrimarySteppedDown
    262,   // ExceededTimeLimit
    9001,  // SocketException
    10058, // LegacyNotPrimary
    10107, // NotWritablePrimary
    11600, // InterruptedAtShutdown
    11602, // InterruptedDueToReplStateChange
    13435, // NotPrimaryNoSecondaryOk
    13436, // NotPrimaryOrSecondary
    462,   // IngressRequestRateLimitExceeded
];

/// Labels the driver or server put on errors worth retrying.
const TRANSIENT_LABELS: [&str; 3] = ["RetryableWriteError", "SystemOverloadedError", "RetryableError"];

/// Something a transaction found that cannot be (a write of its own it cannot read back, a
/// stored value out of range): carried through the driver as its custom error.
#[derive(Debug)]
pub(crate) struct Inconsistent(pub &'static str);

impl Inconsistent {
    pub(crate) fn error(what: &'static str) -> Error {
        Error::custom(Inconsistent(what))
    }
}

/// Classifies a driver error; `context` names the operation for the logs.
pub(crate) fn repo_error(context: &'static str) -> impl FnOnce(Error) -> RepoError {
    move |error| {
        if let Some(Inconsistent(what)) = error.get_custom::<Inconsistent>() {
            RepoError::Unexpected(anyhow::anyhow!("{context}: {what}"))
        } else if is_duplicate_key(&error) {
            RepoError::Conflict
        } else if is_unavailable(&error) {
            RepoError::Unavailable(anyhow::Error::new(error).context(context))
        } else {
            RepoError::Unexpected(anyhow::Error::new(error).context(context))
        }
    }
}

/// Whether a unique index refused the write, in any of the shapes the driver reports it:
/// a single write's error, an `insert_many` or client bulk write error (per document), or a
/// command error (`findAndModify`, `update` run as a command), also when wrapped.
pub(crate) fn is_duplicate_key(error: &Error) -> bool {
    chain(error).any(|e| codes(e).iter().any(|code| DUPLICATE_KEY_CODES.contains(code)))
}

/// Whether the failure is the store's state rather than the request: no server selectable,
/// network trouble, an election or shutdown in progress, a time limit.
pub(crate) fn is_unavailable(error: &Error) -> bool {
    chain(error).any(|e| {
        matches!(
            e.kind.as_ref(),
            ErrorKind::ServerSelection { .. }
                | ErrorKind::Io(_)
                | ErrorKind::ConnectionPoolCleared { .. }
                | ErrorKind::DnsResolve { .. }
                | ErrorKind::Shutdown
        ) || TRANSIENT_LABELS.iter().any(|label| e.contains_label(label))
            || codes(e).iter().any(|code| TRANSIENT_CODES.contains(code))
    })
}

/// The error and the driver errors it wraps.
fn chain(error: &Error) -> impl Iterator<Item = &Error> {
    std::iter::successors(Some(error), |e: &&Error| {
        let e: &Error = e;
        std::error::Error::source(e).and_then(|source| source.downcast_ref::<Error>())
    })
}

/// The server codes an error carries, write concern errors included.
fn codes(error: &Error) -> Vec<i32> {
    match error.kind.as_ref() {
        ErrorKind::Command(e) => vec![e.code],
        ErrorKind::Write(WriteFailure::WriteError(e)) => vec![e.code],
        ErrorKind::Write(WriteFailure::WriteConcernError(e)) => vec![e.code],
        ErrorKind::InsertMany(e) => e
            .write_errors
            .iter()
            .flatten()
            .map(|w| w.code)
            .chain(e.write_concern_error.iter().map(|w| w.code))
            .collect(),
        ErrorKind::BulkWrite(e) => e
            .write_errors
            .values()
            .map(|w| w.code)
            .chain(e.write_concern_errors.iter().map(|w| w.code))
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{self, doc};
    use mongodb::error::{BulkWriteError, CommandError, InsertManyError, WriteError};

    fn write_error(code: i32) -> WriteError {
        bson::from_document(doc! { "code": code, "errmsg": "E11000 duplicate key error" }).unwrap()
    }

    fn command_error(code: i32) -> Error {
        let e: CommandError = bson::from_document(doc! {
            "code": code, "codeName": "X", "errmsg": "failed",
        })
        .unwrap();
        Error::from(ErrorKind::Command(e))
    }

    #[test]
    fn duplicate_key_is_found_in_a_single_write_error() {
        let error = Error::from(ErrorKind::Write(WriteFailure::WriteError(write_error(11000))));
        assert!(is_duplicate_key(&error));
        assert!(matches!(repo_error("x")(error), RepoError::Conflict));
    }

    #[test]
    fn duplicate_key_is_found_in_an_insert_many_error() {
        let e: InsertManyError = bson::from_document(doc! {
            "writeErrors": [{ "index": 0, "code": 11000, "errmsg": "dup" }],
        })
        .unwrap();
        assert!(is_duplicate_key(&Error::from(ErrorKind::InsertMany(e))));
    }

    #[test]
    fn duplicate_key_is_found_in_a_bulk_write_error() {
        let mut e = BulkWriteError::default();
        e.write_errors.insert(3, write_error(11000));
        assert!(is_duplicate_key(&Error::from(ErrorKind::BulkWrite(e))));
    }

    #[test]
    fn duplicate_key_is_found_in_a_command_error() {
        assert!(is_duplicate_key(&command_error(11000)));
        assert!(is_duplicate_key(&command_error(11001)));
    }

    #[test]
    fn other_write_errors_are_not_conflicts() {
        let error = Error::from(ErrorKind::Write(WriteFailure::WriteError(write_error(121))));
        assert!(!is_duplicate_key(&error));
        assert!(matches!(repo_error("x")(error), RepoError::Unexpected(_)));
    }

    #[test]
    fn network_and_election_errors_are_unavailable() {
        let io = Error::from(ErrorKind::Io(std::sync::Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        ))));
        assert!(matches!(repo_error("x")(io), RepoError::Unavailable(_)));
        assert!(is_unavailable(&command_error(10107)));
        assert!(is_unavailable(&command_error(91)));
        assert!(!is_unavailable(&command_error(2)));
    }
}
