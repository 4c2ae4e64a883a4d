//! Failure injection for tests: `STACKINIT_TEST_PANIC=POINT` panics once at that point, so a test can show
//! that PID 1 survives the loss of its main loop. Unset (always, in production), this is one env lookup.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};

/// Panic points: `init-loop` fires in the supervisor's main loop once its services are up (the first
/// stack-ready report), so the panic unwinds out of `stack::run` into init's fallback.
pub const INIT_LOOP: &str = "init-loop";

static FIRED: AtomicBool = AtomicBool::new(false);

pub fn inject(point: &str) {
    let asked = std::env::var_os("STACKINIT_TEST_PANIC").is_some_and(|v| v == point);
    if asked && !FIRED.swap(true, Ordering::SeqCst) {
        panic!("STACKINIT_TEST_PANIC={point}: injected failure");
    }
}
