//! Failed logins to the dashboard's TCP listener, counted per client, so credentials cannot be guessed at the
//! speed of the network. A client's first `FREE_FAILURES` wrong tries cost nothing (typos); each one after
//! that locks it out for a while, 1 s doubling up to 5 minutes, during which even the right credentials are
//! refused (429). A success, or an hour without a failure, forgets the client.
//!
//! Memory is bounded: at most `MAX_CLIENTS` clients are remembered; a new one past that makes room by
//! forgetting the one whose last failure is oldest. IPv6 clients count per /64, the block one host usually
//! has, so a host cannot start afresh by changing addresses. Pure: the caller passes the time.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

const FREE_FAILURES: u32 = 5;
const FIRST_LOCKOUT: Duration = Duration::from_secs(1);
const MAX_LOCKOUT: Duration = Duration::from_secs(300);
/// A client that has not failed for this long starts afresh.
const FORGET_AFTER: Duration = Duration::from_secs(3600);
pub const MAX_CLIENTS: usize = 1024;

#[derive(Default)]
pub struct Throttle {
    clients: HashMap<IpAddr, Record>,
}

struct Record {
    failures: u32,
    last_failure: Instant,
    locked_until: Option<Instant>,
}

impl Throttle {
    /// How long `client` must still wait before its credentials are looked at, if it is locked out.
    pub fn retry_after(&mut self, client: IpAddr, now: Instant) -> Option<Duration> {
        let key = key_of(client);
        let record = self.clients.get(&key)?;
        if now.saturating_duration_since(record.last_failure) >= FORGET_AFTER {
            self.clients.remove(&key);
            return None;
        }
        record
            .locked_until
            .and_then(|until| until.checked_duration_since(now))
            .filter(|wait| !wait.is_zero())
    }

    /// `client` sent wrong credentials.
    pub fn failed(&mut self, client: IpAddr, now: Instant) {
        let key = key_of(client);
        if !self.clients.contains_key(&key) && self.clients.len() >= MAX_CLIENTS {
            self.forget_oldest();
        }
        let record = self.clients.entry(key).or_insert(Record {
            failures: 0,
            last_failure: now,
            locked_until: None,
        });
        record.failures = record.failures.saturating_add(1);
        record.last_failure = now;
        record.locked_until = lockout(record.failures).map(|d| now + d);
    }

    /// `client` got in: its failures are forgiven.
    pub fn succeeded(&mut self, client: IpAddr) {
        self.clients.remove(&key_of(client));
    }

    fn forget_oldest(&mut self) {
        let oldest = self
            .clients
            .iter()
            .min_by_key(|(_, r)| r.last_failure)
            .map(|(k, _)| *k);
        if let Some(key) = oldest {
            self.clients.remove(&key);
        }
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.clients.len()
    }
}

/// The lockout after the `failures`-th failure in a row: none for the free ones, then doubling to the cap.
fn lockout(failures: u32) -> Option<Duration> {
    let over = failures.checked_sub(FREE_FAILURES)?.checked_sub(1)?;
    let doubled = FIRST_LOCKOUT.saturating_mul(1u32 << over.min(16));
    Some(doubled.min(MAX_LOCKOUT))
}

/// The key a client counts under: its IPv4 address, or its IPv6 /64 (an IPv4-mapped address as IPv4).
fn key_of(client: IpAddr) -> IpAddr {
    match client.to_canonical() {
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[8..].fill(0);
            IpAddr::from(octets)
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn free_tries_then_a_doubling_lockout() {
        let mut t = Throttle::default();
        let start = Instant::now();
        let client = ip("203.0.113.7");
        for _ in 0..FREE_FAILURES {
            t.failed(client, start);
            assert_eq!(t.retry_after(client, start), None);
        }
        t.failed(client, start);
        assert_eq!(t.retry_after(client, start), Some(Duration::from_secs(1)));
        assert_eq!(t.retry_after(client, start + Duration::from_secs(1)), None);
        t.failed(client, start + Duration::from_secs(1));
        assert_eq!(
            t.retry_after(client, start + Duration::from_secs(1)),
            Some(Duration::from_secs(2))
        );
        for _ in 0..40 {
            t.failed(client, start);
        }
        assert_eq!(t.retry_after(client, start), Some(MAX_LOCKOUT));
        assert_eq!(t.retry_after(ip("203.0.113.8"), start), None, "per client");
        t.succeeded(client);
        assert_eq!(t.retry_after(client, start), None);
    }

    #[test]
    fn an_hour_without_failures_forgets_a_client() {
        let mut t = Throttle::default();
        let start = Instant::now();
        let client = ip("203.0.113.7");
        for _ in 0..20 {
            t.failed(client, start);
        }
        assert!(t.retry_after(client, start).is_some());
        assert_eq!(t.retry_after(client, start + FORGET_AFTER), None);
        assert_eq!(t.remembered(), 0);
    }

    #[test]
    fn memory_is_bounded_and_ipv6_counts_per_64() {
        let mut t = Throttle::default();
        let start = Instant::now();
        for i in 0..(MAX_CLIENTS as u32 + 100) {
            t.failed(
                IpAddr::from(i.to_be_bytes()),
                start + Duration::from_millis(i.into()),
            );
        }
        assert_eq!(t.remembered(), MAX_CLIENTS);
        let mut v6 = Throttle::default();
        for i in 0..10u16 {
            v6.failed(ip(&format!("2001:db8::{i:x}")), start);
        }
        assert_eq!(v6.remembered(), 1);
        assert!(v6.retry_after(ip("2001:db8::ffff"), start).is_some());
    }
}
