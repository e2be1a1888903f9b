//! What every listing shares: the page size a caller may ask for, and the one answer to a
//! page cursor that is not one.

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 200;

/// `None` means the default; anything above the maximum is capped, zero is one.
pub fn clamp(limit: Option<u32>) -> u32 {
    limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT)
}

/// A page cursor (of the user list or the conversation list) that no page ever handed out.
/// Cursors are opaque to clients, so there is nothing more precise to tell them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("is not a valid cursor")]
pub struct InvalidCursor;
