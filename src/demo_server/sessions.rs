//! Session bookkeeping shared by both MCP transports: random 32-hex-digit
//! session ids and a small mutex-protected map from id to session state.
//!
//! Not on the proxy's hot path, but on the demo server's: every request of a
//! session looks its id up. The map is keyed by the id's 128-bit value, not
//! its text, so a lookup among 100,000 sessions touches the table and nothing
//! else (no key string elsewhere on the heap, no SipHash over 32 bytes): the
//! bench's W5 measures the proxies' affinity cost, not this map's.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// Length of a session id in hex digits.
pub(crate) const ID_LEN: usize = 32;

/// The value of an id made by [`SessionMap::create`]: exactly 32 lowercase hex
/// digits (any other spelling names no session).
pub(crate) fn key(s: &str) -> Option<u128> {
    if s.len() != ID_LEN {
        return None;
    }
    s.bytes().try_fold(0u128, |k, b| {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        Some(k << 4 | u128::from(d))
    })
}

type Map<T> = HashMap<u128, T, foldhash::fast::RandomState>;

/// Session id → session value.
pub(crate) struct SessionMap<T> {
    inner: Mutex<Map<T>>,
}

impl<T: Clone> SessionMap<T> {
    pub(crate) fn new() -> Self {
        Self {
            inner: Mutex::new(Map::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Map<T>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (single insert/remove/get calls), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Inserts `value` under a fresh random id and returns the id: 32
    /// lowercase hex digits.
    pub(crate) fn create(&self, value: T) -> String {
        let mut map = self.lock();
        loop {
            let k = fastrand::u128(..);
            if let std::collections::hash_map::Entry::Vacant(e) = map.entry(k) {
                e.insert(value);
                return format!("{k:032x}");
            }
        }
    }

    /// Malformed ids are rejected without taking the lock.
    pub(crate) fn get(&self, id: &str) -> Option<T> {
        self.get_key(key(id)?)
    }

    /// The session of key `k` (from [`key`]).
    pub(crate) fn get_key(&self, k: u128) -> Option<T> {
        self.lock().get(&k).cloned()
    }

    /// Whether key `k` names a session: the value is not touched (nor cloned).
    pub(crate) fn contains(&self, k: u128) -> bool {
        self.lock().contains_key(&k)
    }

    pub(crate) fn remove(&self, id: &str) -> Option<T> {
        self.lock().remove(&key(id)?)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Removes and returns every session (shutdown).
    pub(crate) fn drain(&self) -> Vec<T> {
        self.lock().drain().map(|(_, v)| v).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_32_hex() {
        let m = SessionMap::new();
        let a = m.create(());
        assert!(
            a.len() == 32 && a.bytes().all(|b| b.is_ascii_hexdigit()),
            "{a}"
        );
        assert_eq!(format!("{:032x}", key(&a).expect("a key")), a);
        assert_ne!(a, m.create(()));
        assert_eq!(key("xyz"), None);
        assert_eq!(key(&"g".repeat(32)), None);
        // Only the spelling create writes names a session.
        assert_eq!(key(&format!("{}f", "0".repeat(31))), Some(15));
        assert_eq!(key(&"f".repeat(32)), Some(u128::MAX));
        assert_eq!(key(&"F".repeat(32)), None);
        assert_eq!(key(&"f".repeat(33)), None);
    }

    #[test]
    fn map_roundtrip() {
        let m = SessionMap::new();
        let id = m.create(5u32);
        assert_eq!(m.get(&id), Some(5));
        let k = key(&id).expect("a created id is a key");
        assert!(m.contains(k));
        assert_eq!(m.get_key(k), Some(5));
        assert_eq!(m.get(&id.to_ascii_uppercase()), None);
        assert_eq!(m.len(), 1);
        assert_eq!(m.remove(&id), Some(5));
        assert_eq!(m.get(&id), None);
        assert!(!m.contains(k));
    }
}
