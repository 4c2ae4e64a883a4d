//! Bounds that keep PID 1 inside its resources: the shutdown's deadline.
#![forbid(unsafe_code)]

use super::ctx::{check_max_duration, Ctx};
use super::doc::KeyPath;

/// Every bound of this module, on the recovered config.
pub(super) fn check_limits(ctx: &mut Ctx) {
    check_shutdown_timeout(ctx);
}

/// `shutdown_timeout` is a deadline: more than nothing, less than days.
fn check_shutdown_timeout(ctx: &mut Ctx) {
    let timeout = ctx.rec.config.init.shutdown_timeout;
    let path = KeyPath::root().key("init").key("shutdown_timeout");
    if timeout.0.is_zero() {
        ctx.at_value(
            &path,
            "shutdown_timeout must be more than 0: it is how long services have to stop",
        );
    }
    check_max_duration(ctx, &path, timeout);
}
