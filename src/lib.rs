//! stackinit: one PID-1-capable binary that boots an instance, supervises a web stack and serves it.
//!
//! See ARCHITECTURE.md for the bird's-eye view and the invariants.

pub mod api;
pub mod cli;
pub mod config;
pub mod control;
pub mod demo;
pub mod facts;
pub mod fault;
pub mod fork_from;
#[doc(hidden)]
pub mod fuzzing;
pub mod import;
pub mod init;
pub mod logs;
pub mod nofile;
pub mod paths;
pub mod power_button;
pub mod proxy;
pub mod readahead;
pub mod secrets;
pub mod stack;
pub mod supervise;
pub mod unix_reach;
pub mod user_data;
