//! Session bookkeeping shared by both MCP transports: random 32-hex-digit
//! session ids and a small mutex-protected map from id to session state.
//!
//! Not on the proxy's hot path: one short critical section per request.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// Length of a session id in hex digits.
pub(crate) const ID_LEN: usize = 32;

/// A fresh random session id: 32 lowercase hex digits.
pub(crate) fn new_id() -> String {
    format!("{:032x}", fastrand::u128(..))
}

/// `true` if `s` looks like an id produced by [`new_id`].
pub(crate) fn is_valid_id(s: &str) -> bool {
    s.len() == ID_LEN && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Session id → session value.
pub(crate) struct SessionMap<T> {
    inner: Mutex<HashMap<String, T>>,
}

impl<T: Clone> SessionMap<T> {
    pub(crate) fn new() -> Self {
        Self {
            inner: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, T>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (single insert/remove/get calls), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Inserts `value` under a fresh id and returns the id.
    pub(crate) fn create(&self, value: T) -> String {
        let mut map = self.lock();
        loop {
            let id = new_id();
            if !map.contains_key(&id) {
                map.insert(id.clone(), value);
                return id;
            }
        }
    }

    /// Malformed ids are rejected without taking the lock.
    pub(crate) fn get(&self, id: &str) -> Option<T> {
        if !is_valid_id(id) {
            return None;
        }
        self.lock().get(id).cloned()
    }

    pub(crate) fn remove(&self, id: &str) -> Option<T> {
        if !is_valid_id(id) {
            return None;
        }
        self.lock().remove(id)
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
        let a = new_id();
        assert!(is_valid_id(&a), "{a}");
        assert_ne!(a, new_id());
        assert!(!is_valid_id("xyz"));
        assert!(!is_valid_id(&"g".repeat(32)));
    }

    #[test]
    fn map_roundtrip() {
        let m = SessionMap::new();
        let id = m.create(5u32);
        assert_eq!(m.get(&id), Some(5));
        assert_eq!(m.len(), 1);
        assert_eq!(m.remove(&id), Some(5));
        assert_eq!(m.get(&id), None);
    }
}
