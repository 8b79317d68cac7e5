//! Blocking work (store calls, verification, fsyncs) runs off the async
//! executor, on tokio's blocking pool. A deterministic simulation of the
//! mesh (see `crate::sim`) runs it inline instead, on its one thread, so
//! that a seed replays the same schedule.

use std::cell::Cell;

use crate::error::Error;

thread_local! {
    static INLINE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` on the blocking pool (inline on a thread that runs a
/// simulation).
pub async fn run<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Error> {
    if INLINE.with(Cell::get) {
        return Ok(f());
    }
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("blocking task failed: {e}")))
}

/// Blocking work started on this thread runs inline until the guard drops.
#[cfg(any(test, feature = "tools"))]
pub fn inline_on_this_thread() -> InlineGuard {
    INLINE.with(|i| i.set(true));
    InlineGuard(std::marker::PhantomData)
}

#[cfg(any(test, feature = "tools"))]
pub struct InlineGuard(std::marker::PhantomData<*const ()>);

#[cfg(any(test, feature = "tools"))]
impl Drop for InlineGuard {
    fn drop(&mut self) {
        INLINE.with(|i| i.set(false));
    }
}
