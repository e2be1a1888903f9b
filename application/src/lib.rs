//! The application core: the ports the chat server needs from the outside world, and the use
//! cases that drive them.
//!
//! Ports are defined here, by the use cases that need them; adapters depend on this crate,
//! never the other way round. Nothing here may import a database driver, a web framework
//! or a transport: those are adapters' business.

pub mod accounts;
#[cfg(test)]
mod fixtures;
mod known_users;
pub mod messaging;
mod partners;
pub mod ports;
pub mod realtime;
pub mod revocations;
pub mod stream;
pub mod transfer;

pub use accounts::{AccountError, AccountService, Authenticated, NewAccount, UserPage};
pub use messaging::{ConversationView, MessagingError, MessagingService, Sent, SyncPage};
pub use realtime::RealtimeService;
pub use revocations::Revocations;
pub use stream::{Admission, FollowError, StreamFollower};
pub use transfer::{Record, TransferError, TransferService, TransferStats};

/// The limits a caller may ask for in one page, shared by every listing.
pub mod paging {
    pub const DEFAULT_LIMIT: u32 = 50;
    pub const MAX_LIMIT: u32 = 200;

    /// `None` means the default; anything above the maximum is capped, zero is one.
    pub fn clamp(limit: Option<u32>) -> u32 {
        limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT)
    }
}
