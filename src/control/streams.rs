//! The bound on responses that last as long as their client stays (`logs --follow`, `/v1/events`).
//!
//! Each holds a connection slot of the control socket for as long as it runs. Without a bound of their
//! own, 64 followers took every slot and `stackinit status` waited in the backlog forever. Streams get
//! at most half of the slots; one over the bound is refused at once with 503, and the slot comes back.
#![forbid(unsafe_code)]

use tokio::sync::{Semaphore, SemaphorePermit};

use crate::api::ApiError;

/// Streams open at once, over the unix socket and the dashboard's TCP listener together: half of the
/// control socket's connection slots.
pub const MAX_STREAMS: usize = 32;

static STREAMS: Semaphore = Semaphore::const_new(MAX_STREAMS);

/// One open stream; the place comes back when the response body holding it is dropped.
pub struct StreamPermit {
    _permit: SemaphorePermit<'static>,
}

/// A place for one more stream, or 503 when every place is taken.
pub fn open() -> Result<StreamPermit, ApiError> {
    match STREAMS.try_acquire() {
        Ok(permit) => Ok(StreamPermit { _permit: permit }),
        Err(_) => Err(ApiError {
            status: 503,
            message: format!(
                "too many streaming clients: {MAX_STREAMS} `logs --follow` or event streams are open; \
                 try again when one ends"
            ),
        }),
    }
}
