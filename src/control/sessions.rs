//! Dashboard sessions: each login (`/?token=...`) gets its own random id in a cookie, valid for the configured
//! lifetime (`dashboard_session_lifetime`) from the login. Before, one id per process served every browser and
//! never expired: a cookie copied once worked until the next restart.
//!
//! At most `MAX_SESSIONS` live at once; a login past that ends the oldest. Expired ones are dropped when the
//! table is next used (no timer). Pure: the caller passes the time and the new id.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use super::dashboard::constant_time_eq;

pub const MAX_SESSIONS: usize = 64;

pub struct Sessions {
    lifetime: Duration,
    /// (id, expires), oldest first.
    live: Vec<(String, Instant)>,
}

impl Sessions {
    pub fn new(lifetime: Duration) -> Sessions {
        Sessions {
            lifetime,
            live: Vec::new(),
        }
    }

    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Start a session with `id` (random, made by the caller).
    pub fn open(&mut self, id: String, now: Instant) {
        self.drop_expired(now);
        if self.live.len() >= MAX_SESSIONS {
            self.live.remove(0);
        }
        self.live.push((id, now + self.lifetime));
    }

    /// Whether `id` names a live session. Every id is compared in constant time, so timing tells nothing.
    pub fn is_valid(&mut self, id: &str, now: Instant) -> bool {
        self.drop_expired(now);
        self.live.iter().fold(false, |found, (live, _)| {
            found | constant_time_eq(live.as_bytes(), id.as_bytes())
        })
    }

    fn drop_expired(&mut self, now: Instant) {
        self.live.retain(|(_, expires)| *expires > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_lasts_its_lifetime_and_no_longer() {
        let mut s = Sessions::new(Duration::from_secs(60));
        let start = Instant::now();
        s.open("a".into(), start);
        s.open("b".into(), start + Duration::from_secs(30));
        assert!(s.is_valid("a", start + Duration::from_secs(59)));
        assert!(!s.is_valid("a", start + Duration::from_secs(60)));
        assert!(s.is_valid("b", start + Duration::from_secs(60)));
        assert!(!s.is_valid("c", start));
        assert!(!s.is_valid("", start));
    }

    #[test]
    fn the_oldest_session_ends_when_the_table_is_full() {
        let mut s = Sessions::new(Duration::from_secs(60));
        let start = Instant::now();
        for i in 0..=MAX_SESSIONS {
            s.open(format!("id{i}"), start);
        }
        assert!(!s.is_valid("id0", start));
        assert!(s.is_valid("id1", start));
        assert!(s.is_valid(&format!("id{MAX_SESSIONS}"), start));
    }
}
