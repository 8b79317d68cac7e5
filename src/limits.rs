//! Request and message limits, in one place. Every internal size (log
//! records per message, bytes of data per message, ids per fetch) derives
//! from these, so a replica configured with small but valid limits still
//! replicates.

use std::time::Duration;

use crate::entry::MAX_NAME_LEN;
use crate::error::Error;

/// Request limits, enforced before any work or allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_message_bytes: usize,
    /// The largest entry accepted.
    pub max_entry_bytes: usize,
    pub max_ids_per_request: usize,
    pub max_batch_entries: usize,
    pub max_page: usize,
    pub stream_idle_timeout: Duration,
    /// Entry data all outgoing messages together may hold (see
    /// [`crate::replica::outgoing`]).
    pub max_send_data_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 2 << 20,
            max_entry_bytes: 1 << 20,
            max_ids_per_request: 10_000,
            max_batch_entries: 10_000,
            max_page: 10_000,
            stream_idle_timeout: Duration::from_secs(300),
            max_send_data_bytes: 64 << 20,
        }
    }
}

/// Most log records one store read and one message carry.
const MAX_LOG_RECORDS: usize = 2048;
/// Largest target for the entry data of one streamed message.
const MAX_MESSAGE_DATA: usize = 1 << 20;
/// Worst-case encoded size of one log record without data: seq, a namespace
/// index, the id, and (when every record is in a namespace of its own) the
/// namespace itself.
const LOG_RECORD_WIRE_BYTES: usize = 24 + 34 + 2 * (MAX_NAME_LEN + 2) + 8;

impl Limits {
    /// Target bytes of entry data in one streamed message; half the message
    /// limit leaves room for framing. A single larger entry travels alone.
    pub fn message_data_budget(&self) -> usize {
        MAX_MESSAGE_DATA.min(self.max_message_bytes / 2)
    }

    /// What a stream sending entry data takes from the send pools for one
    /// message: a full message, and at least the largest entry, so that
    /// whatever it reads fits in what it holds.
    pub fn send_grant_bytes(&self) -> usize {
        self.message_data_budget().max(self.max_entry_bytes)
    }

    /// Log records per message, so that a batch without data always fits in
    /// half a message.
    pub fn log_records_per_message(&self) -> usize {
        (self.max_message_bytes / 2 / LOG_RECORD_WIRE_BYTES).clamp(1, MAX_LOG_RECORDS)
    }
}

/// Rejects a list longer than `limit`, before anything is allocated for it.
pub fn check_count(what: &'static str, got: usize, limit: usize) -> Result<(), Error> {
    match got <= limit {
        true => Ok(()),
        false => Err(Error::LimitExceeded { what, got, limit }),
    }
}
