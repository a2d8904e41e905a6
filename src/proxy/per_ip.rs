//! `[proxy] max_connections_per_ip`: the open client connections of each
//! address, so that one client cannot hold every connection the listener
//! takes (nginx's `limit_conn` on `$binary_remote_addr`, HAProxy's
//! `conn_cur` in a stick table).
//!
//! An IPv6 client is counted by its /64: a host is given a /64 and can
//! use any address in it. Counted once per connection (never per request),
//! in a map split in shards under short locks; an address's entry goes when
//! its last connection does, so the map holds at most one entry per open
//! connection.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::stats::{AddressMap, ProxyStats};

/// Shards of the map: connections from different addresses seldom wait
/// on one another.
const SHARDS: usize = 16;

/// Who a connection (or, with `rate_limit`, a request) is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    V4(u32),
    /// The /64 prefix.
    V6(u64),
}

impl Key {
    pub(crate) fn of(ip: IpAddr) -> Key {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Key::V4(v4.to_bits()),
            IpAddr::V6(v6) => Key::V6((v6.to_bits() >> 64) as u64),
        }
    }
}

/// The open connections per address, and the cap.
#[derive(Debug)]
pub struct PerIp {
    max: u32,
    /// `mcpflip_client_addresses{limit="max_connections_per_ip"}`.
    stats: Arc<ProxyStats>,
    hasher: RandomState,
    shards: [Mutex<HashMap<Key, u32>>; SHARDS],
}

impl PerIp {
    pub fn new(max: u32, stats: Arc<ProxyStats>) -> Arc<PerIp> {
        Arc::new(PerIp {
            max,
            stats,
            hasher: RandomState::new(),
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        })
    }

    /// The cap.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// Counts a connection from `ip`, held until the returned guard drops;
    /// `None` when `ip` already holds the cap.
    pub fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<Held> {
        let key = Key::of(ip);
        let mut shard = self.shard(key);
        let n = shard.entry(key).or_insert_with(|| {
            self.stats.add_addresses(AddressMap::ConnectionsPerIp, 1);
            0
        });
        // A new entry (0) is below any cap (the config refuses 0).
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Held {
            of: Arc::clone(self),
            key,
        })
    }

    /// The open connections counted against `ip`.
    pub fn open(&self, ip: IpAddr) -> u32 {
        let key = Key::of(ip);
        self.shard(key).get(&key).copied().unwrap_or(0)
    }

    /// The addresses with an open connection.
    pub fn addresses(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    fn shard(&self, key: Key) -> std::sync::MutexGuard<'_, HashMap<Key, u32>> {
        let i = self.hasher.hash_one(key) as usize % SHARDS;
        // A panic under the lock leaves the counts as they were: go on.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One open connection counted against its address.
#[derive(Debug)]
pub struct Held {
    of: Arc<PerIp>,
    key: Key,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut shard = self.of.shard(self.key);
        if let Some(n) = shard.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                shard.remove(&self.key);
                self.of
                    .stats
                    .add_addresses(AddressMap::ConnectionsPerIp, -1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_holds_at_most_the_cap_and_gets_it_back() {
        let stats = Arc::new(ProxyStats::default());
        let per = PerIp::new(2, Arc::clone(&stats));
        let gauge = || stats.addresses(AddressMap::ConnectionsPerIp);
        let a = per.enter(ip("192.0.2.1")).expect("first");
        let b = per.enter(ip("192.0.2.1")).expect("second");
        assert!(per.enter(ip("192.0.2.1")).is_none(), "third over the cap");
        // Another address is counted apart.
        let c = per.enter(ip("192.0.2.2")).expect("another address");
        assert_eq!(per.open(ip("192.0.2.1")), 2);
        assert_eq!(gauge(), 2, "two addresses, the refused third not counted");
        drop(a);
        assert_eq!(per.open(ip("192.0.2.1")), 1);
        let d = per.enter(ip("192.0.2.1")).expect("room again");
        drop((b, c, d));
        assert_eq!(per.addresses(), 0, "no entry outlives its connections");
        assert_eq!(gauge(), 0, "the gauge follows the map");
    }

    #[test]
    fn ipv6_is_counted_per_64_and_mapped_ipv4_as_ipv4() {
        let per = PerIp::new(1, Arc::default());
        let _a = per.enter(ip("2001:db8:1:2::1")).expect("first");
        assert!(per.enter(ip("2001:db8:1:2:ffff::9")).is_none(), "same /64");
        let _b = per.enter(ip("2001:db8:1:3::1")).expect("another /64");
        let _c = per.enter(ip("203.0.113.9")).expect("IPv4");
        assert!(
            per.enter(ip("::ffff:203.0.113.9")).is_none(),
            "the same IPv4"
        );
        assert_eq!(per.addresses(), 3);
    }
}
