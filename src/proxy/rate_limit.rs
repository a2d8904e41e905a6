//! `[proxy] rate_limit`: the requests of each client address, limited to a
//! sustained rate with a burst on top (nginx's `limit_req ... nodelay` on
//! `$binary_remote_addr`, HAProxy's `http_req_rate` in a stick table).
//!
//! The generic cell rate algorithm (GCRA), as the `governor` crate and
//! nginx's `limit_req` do it: each address keeps one number, the time at
//! which its bucket is next full again (its theoretical arrival time, TAT).
//! A request is let through when that time is at most `burst - 1` intervals
//! ahead of now, and moves it one interval on; else it is refused, with the
//! time until it would pass. An entry whose time is past holds nothing a
//! fresh one would not: the map keeps only the clients seen within the last
//! `burst` intervals.
//!
//! Written here rather than taken from `governor`: its keyed stores (a
//! `HashMap` or a `DashMap`) grow with every address they see until swept,
//! and a store of one's own through its `StateStore` trait does not see the
//! clock, so it cannot tell a stale entry from a live one when it must make
//! room. The map here is bounded (`max_clients`, split over shards): a new
//! address in a full shard first drops the stale entries, at most once a
//! second per shard, then, if the shard is still full, one entry at random
//! (that client starts again with a full burst: the bound never refuses a
//! request by itself).
//!
//! An IPv6 client is one address per /64, as in `per_ip`.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::RateLimitConfig;
use crate::proxy::per_ip::Key;
use crate::stats::{AddressMap, ProxyStats};

/// Shards of the map: requests from different addresses seldom wait on one
/// another.
const SHARDS: usize = 16;

/// The shortest time between two sweeps of a full shard.
const SWEEP_EVERY: u64 = 1_000_000_000;

/// The limiter of `[proxy] rate_limit`.
#[derive(Debug)]
pub struct RateLimit {
    /// Nanoseconds between two requests at the sustained rate (`per / requests`).
    interval: u64,
    /// How far ahead of now an address's time may be and still let a request
    /// through: `(burst - 1)` intervals.
    tolerance: u64,
    /// Entries per shard at most.
    shard_max: usize,
    /// The clock's zero: times are nanoseconds since it.
    zero: Instant,
    hasher: RandomState,
    shards: [Mutex<Shard>; SHARDS],
    /// `mcpflip_client_addresses{limit="rate_limit"}`.
    stats: Arc<ProxyStats>,
}

#[derive(Debug, Default)]
struct Shard {
    /// Per address: when its bucket is full again (nanoseconds since `zero`).
    tat: HashMap<Key, u64>,
    /// When this shard last dropped its stale entries.
    swept: u64,
}

/// A refused request: the time until the address may send again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after: Duration,
}

impl Limited {
    /// `Retry-After` in whole seconds, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        let d = self.retry_after;
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
    }
}

impl RateLimit {
    pub fn new(config: &RateLimitConfig, stats: Arc<ProxyStats>) -> RateLimit {
        let interval = (config.per.as_nanos() / u128::from(config.requests)).max(1);
        let interval = u64::try_from(interval).unwrap_or(u64::MAX);
        let burst = u64::from(config.burst());
        RateLimit {
            interval,
            tolerance: interval.saturating_mul(burst - 1),
            shard_max: (config.max_clients as usize).div_ceil(SHARDS).max(1),
            zero: Instant::now(),
            hasher: RandomState::new(),
            shards: std::array::from_fn(|_| Mutex::new(Shard::default())),
            stats,
        }
    }

    /// Counts a request from `ip` now: `Err` when it goes over the limit.
    pub fn check(&self, ip: IpAddr) -> Result<(), Limited> {
        self.check_at(ip, self.now())
    }

    fn now(&self) -> u64 {
        u64::try_from(self.zero.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The addresses the limiter remembers (its map's length).
    pub fn clients(&self) -> usize {
        self.shards.iter().map(|s| lock(s).tat.len()).sum()
    }

    fn check_at(&self, ip: IpAddr, now: u64) -> Result<(), Limited> {
        let key = Key::of(ip);
        let i = self.hasher.hash_one(key) as usize % SHARDS;
        let mut shard = lock(&self.shards[i]);
        let tat = match shard.tat.get_mut(&key) {
            Some(tat) => tat,
            None => {
                let before = shard.tat.len();
                if before >= self.shard_max {
                    shard.make_room(now);
                }
                let delta = shard.tat.len() as i64 + 1 - before as i64;
                self.stats.add_addresses(AddressMap::RateLimit, delta);
                shard.tat.entry(key).or_insert(now)
            }
        };
        let from = (*tat).max(now);
        let ahead = from - now;
        if ahead > self.tolerance {
            return Err(Limited {
                retry_after: Duration::from_nanos(ahead - self.tolerance),
            });
        }
        *tat = from.saturating_add(self.interval);
        Ok(())
    }
}

impl Shard {
    /// A new address comes to a full shard: drop the entries whose time is
    /// past (no more than once a second), and if none was, one at random.
    fn make_room(&mut self, now: u64) {
        if now.saturating_sub(self.swept) >= SWEEP_EVERY || self.swept == 0 {
            self.swept = now.max(1);
            let before = self.tat.len();
            self.tat.retain(|_, tat| *tat > now);
            if self.tat.len() < before {
                return;
            }
        }
        // `HashMap`'s order is its random hasher's: the first key is any key.
        if let Some(key) = self.tat.keys().next().copied() {
            self.tat.remove(&key);
        }
    }
}

fn lock(shard: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
    // A panic under the lock leaves the times as they were: go on.
    shard.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn limit(requests: u32, per_ms: u64, burst: Option<u32>, max_clients: u32) -> RateLimit {
        RateLimit::new(
            &RateLimitConfig {
                requests,
                per: Duration::from_millis(per_ms),
                burst,
                max_clients,
            },
            Arc::default(),
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn a_burst_passes_then_the_sustained_rate() {
        // 10 per second (one per 100 ms), a burst of 3.
        let l = limit(10, 1000, Some(3), 1000);
        let a = ip("192.0.2.1");
        let t = 5_000 * MS;
        for n in 0..3 {
            assert_eq!(l.check_at(a, t), Ok(()), "request {n} of the burst");
        }
        let refused = l.check_at(a, t).expect_err("the fourth at once");
        assert_eq!(refused.retry_after, Duration::from_millis(100));
        assert_eq!(refused.retry_after_secs(), 1);
        // One interval later exactly one more passes.
        assert_eq!(l.check_at(a, t + 100 * MS), Ok(()));
        assert!(l.check_at(a, t + 100 * MS).is_err());
        // A refused request does not push the client's time on.
        assert_eq!(l.check_at(a, t + 200 * MS), Ok(()));
        // After a quiet second the whole burst is back.
        let later = t + 1_500 * MS;
        for _ in 0..3 {
            assert_eq!(l.check_at(a, later), Ok(()));
        }
        assert!(l.check_at(a, later).is_err());
    }

    #[test]
    fn the_default_burst_is_the_rate_and_addresses_are_apart() {
        let l = limit(5, 60_000, None, 1000);
        let t = 10 * MS;
        for _ in 0..5 {
            assert_eq!(l.check_at(ip("192.0.2.1"), t), Ok(()));
        }
        let refused = l.check_at(ip("192.0.2.1"), t).expect_err("the sixth");
        assert_eq!(refused.retry_after, Duration::from_secs(12));
        assert_eq!(refused.retry_after_secs(), 12);
        assert_eq!(l.check_at(ip("192.0.2.2"), t), Ok(()), "another address");
        // IPv4-mapped IPv6 is the IPv4 address; an IPv6 /64 is one client.
        assert!(l.check_at(ip("::ffff:192.0.2.1"), t).is_err());
        for _ in 0..5 {
            assert_eq!(l.check_at(ip("2001:db8:1:2::1"), t), Ok(()));
        }
        assert!(l.check_at(ip("2001:db8:1:2:ffff::9"), t).is_err());
        assert_eq!(l.check_at(ip("2001:db8:1:3::1"), t), Ok(()));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let l = Limited {
            retry_after: Duration::from_millis(2_001),
        };
        assert_eq!(l.retry_after_secs(), 3);
        let l = Limited {
            retry_after: Duration::from_secs(2),
        };
        assert_eq!(l.retry_after_secs(), 2);
    }

    #[test]
    fn the_map_stays_within_max_clients_and_drops_stale_entries_first() {
        // 16 clients at most: one per shard.
        let l = limit(1, 1000, Some(2), 16);
        let t = 5_000 * MS;
        let gauge = || l.stats.addresses(AddressMap::RateLimit) as usize;
        for n in 0..10_000u32 {
            let a = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            assert_eq!(l.check_at(a, t), Ok(()), "a new address is never refused");
            assert!(l.clients() <= 16, "{} remembered", l.clients());
            assert_eq!(gauge(), l.clients(), "the gauge is the map's length");
            // A known address adds nothing.
            assert_eq!(l.check_at(a, t), Ok(()));
            assert_eq!(gauge(), l.clients());
        }
        // A second later every entry is stale: a new address sweeps its shard.
        let later = t + 2_000 * MS;
        for n in 0..10_000u32 {
            let a = IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + n));
            assert_eq!(l.check_at(a, later), Ok(()));
            assert_eq!(gauge(), l.clients());
        }
    }

    #[test]
    fn a_full_shard_drops_its_stale_entries_before_a_live_one() {
        let now = 10_000 * MS;
        let mut shard = Shard::default();
        let live = Key::of(ip("198.51.100.1"));
        shard.tat.insert(live, now + 1);
        for n in 0..50u32 {
            let stale = Key::of(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n)));
            shard.tat.insert(stale, now - u64::from(n));
        }
        shard.make_room(now);
        assert_eq!(shard.tat.len(), 1, "only the live entry is left");
        assert!(shard.tat.contains_key(&live));
        // Within a second of that sweep, a full shard gives up one entry
        // without a sweep; after it, it sweeps again.
        shard.tat.insert(Key::of(ip("198.51.100.2")), now - 5);
        shard.make_room(now + 500 * MS);
        assert_eq!(shard.tat.len(), 1, "one entry dropped, no sweep");
        shard.tat.insert(live, now + 2_000 * MS);
        shard.tat.insert(Key::of(ip("198.51.100.3")), now);
        shard.make_room(now + 1_000 * MS);
        assert_eq!(shard.tat.len(), 1, "the stale one swept");
        assert!(shard.tat.contains_key(&live));
    }

    #[test]
    fn a_slow_rate_has_no_overflow() {
        // One a day with a burst of a million: the tolerance saturates, never wraps.
        let l = RateLimit::new(
            &RateLimitConfig {
                requests: 1,
                per: Duration::from_secs(86_400),
                burst: Some(1_000_000),
                max_clients: 100,
            },
            Arc::default(),
        );
        assert_eq!(l.check(ip("192.0.2.1")), Ok(()));
    }
}
