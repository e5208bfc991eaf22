//! Fixed-window rate limits, in memory on each node (documented: a cluster of N nodes lets
//! through up to N times a limit). Counting is exact under concurrency: every attempt takes
//! the same lock.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One limit: at most `max` events per key per `window` (0 disables it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub max: u32,
    pub window: Duration,
}

struct Window {
    start: Instant,
    count: u32,
}

/// Counters for many (action, key) pairs.
#[derive(Default)]
pub struct RateLimiter {
    windows: Mutex<Windows>,
}

const CLEANUP_AT: usize = 100_000;

type Windows = HashMap<(&'static str, String), Window>;

fn count(windows: &mut Windows, action: &'static str, key: &str, limit: Limit, now: Instant) {
    if windows.len() >= CLEANUP_AT {
        windows.retain(|_, w| now.duration_since(w.start) < Duration::from_secs(24 * 3600));
    }
    let w = windows.entry((action, key.to_owned())).or_insert(Window {
        start: now,
        count: 0,
    });
    if now.duration_since(w.start) >= limit.window {
        w.start = now;
        w.count = 0;
    }
    w.count += 1;
}

impl RateLimiter {
    /// Fails with the time until the window resets when the key is over its limit.
    pub fn check(&self, action: &'static str, key: &str, limit: Limit) -> Result<(), Duration> {
        self.step(action, key, limit, false)
    }

    /// Counts an event.
    pub fn record(&self, action: &'static str, key: &str, limit: Limit) {
        if limit.max == 0 {
            return;
        }
        let now = Instant::now();
        let Ok(mut windows) = self.windows.lock() else {
            return;
        };
        count(&mut windows, action, key, limit, now);
    }

    /// Checks and counts in one step, under one lock: of N concurrent hits on a key with
    /// room for M, exactly M pass.
    pub fn hit(&self, action: &'static str, key: &str, limit: Limit) -> Result<(), Duration> {
        self.step(action, key, limit, true)
    }

    fn step(
        &self,
        action: &'static str,
        key: &str,
        limit: Limit,
        record: bool,
    ) -> Result<(), Duration> {
        if limit.max == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let Ok(mut windows) = self.windows.lock() else {
            return Ok(());
        };
        if let Some(w) = windows.get(&(action, key.to_owned()))
            && now.duration_since(w.start) < limit.window
            && w.count >= limit.max
        {
            return Err(limit.window.saturating_sub(now.duration_since(w.start)));
        }
        if record {
            count(&mut windows, action, key, limit, now);
        }
        Ok(())
    }

    /// Forgets a key (a successful login clears its failures).
    pub fn reset(&self, action: &'static str, key: &str) {
        if let Ok(mut windows) = self.windows.lock() {
            windows.remove(&(action, key.to_owned()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_hits_pass_exactly_max() {
        let limiter = std::sync::Arc::new(RateLimiter::default());
        let limit = Limit {
            max: 50,
            window: Duration::from_secs(60),
        };
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let limiter = limiter.clone();
                std::thread::spawn(move || {
                    (0..100)
                        .filter(|_| limiter.hit("login", "a", limit).is_ok())
                        .count()
                })
            })
            .collect();
        let passed: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(passed, 50);
    }

    #[test]
    fn allows_exactly_max_per_window() {
        let limiter = RateLimiter::default();
        let limit = Limit {
            max: 3,
            window: Duration::from_secs(60),
        };
        for _ in 0..3 {
            assert!(limiter.hit("login", "a", limit).is_ok());
        }
        let retry = limiter.hit("login", "a", limit).unwrap_err();
        assert!(retry <= Duration::from_secs(60) && retry > Duration::from_secs(50));
        assert!(
            limiter.hit("login", "b", limit).is_ok(),
            "keys are independent"
        );
        limiter.reset("login", "a");
        assert!(limiter.hit("login", "a", limit).is_ok());
        let off = Limit {
            max: 0,
            window: Duration::from_secs(1),
        };
        for _ in 0..100 {
            assert!(limiter.hit("x", "y", off).is_ok());
        }
    }
}
