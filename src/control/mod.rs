//! The control socket: HTTP/1.1 + JSON over a unix socket, served by init and used by the CLI.

mod access;
pub mod client;
pub mod dashboard;
mod dashboard_events;
mod dashboard_tcp;
mod log_stream;
mod login_throttle;
mod metrics;
mod reply;
pub mod server;
mod sessions;
mod streams;
mod table;
