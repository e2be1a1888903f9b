//! The application core: the ports the chat server needs from the outside world, and the use
//! cases that drive them.
//!
//! Ports are defined here, by the use cases that need them; adapters depend on this crate,
//! never the other way round. Nothing here may import a database driver, a web framework
//! or a transport: those are adapters' business.

pub mod accounts;
pub mod changes;
mod error;
#[cfg(test)]
mod fixtures;
mod found_once;
pub mod groups;
mod known_users;
pub mod messaging;
pub mod paging;
mod partners;
pub mod ports;
pub mod realtime;
pub mod revocations;
pub mod stream;
pub mod transfer;

pub use accounts::{AccountError, AccountService, Authenticated, NewAccount, UserPage};
pub use changes::{ChangeResult, MessageChangeError, MessageChangeService};
pub use error::ApplicationError;
pub use groups::{GroupError, GroupLimits, GroupService, GroupUpdate};
pub use messaging::{
    ConversationList, ConversationView, MarkedRead, MessagingError, MessagingService, MessagingStores, Sent,
    SyncPage,
};
pub use realtime::{Opened, RealtimeService};
pub use revocations::Revocations;
pub use stream::{Admission, FollowError, StreamFollower, SyncEvent, SyncItem};
pub use transfer::{Record, TransferError, TransferService, TransferStats};
