//! Session bookkeeping shared by both MCP transports: random 32-hex-digit
//! session ids and a small mutex-protected slab (`slab`) from id to session
//! state.
//!
//! Not on the proxy's hot path, but on the demo server's: every request of a
//! session looks its id up, and the bench's W5 (affinity cost with 100,000
//! sessions) must measure the proxies' cost, not this map's. So an id carries
//! its slot in the slab (its low 32 bits, spread and masked with a per-map value)
//! beside 96 random bits: a lookup is one load of one 24-byte entry, where a
//! hash table costs two dependent cache (and TLB) misses, its control bytes
//! and then its bucket (profiled: 5 % of the demo server's CPU with 100,000
//! sessions). A removed session's slot is reused with fresh random bits, so
//! an old id never names the new session.

use std::sync::{Mutex, MutexGuard};

use slab::Slab;

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

/// One live session: its whole key (in two halves, so that with a pointer
/// `T` an entry is 24 bytes, not a `u128`'s 16-byte-aligned 32) and value.
struct Entry<T> {
    hi: u64,
    lo: u64,
    value: T,
}

impl<T> Entry<T> {
    fn is(&self, k: u128) -> bool {
        self.hi == (k >> 64) as u64 && self.lo == k as u64
    }
}

/// Multiplying the slot by this odd number (a bijection of the `u32`s)
/// before the mask, so that the ids of sessions opened one after the other
/// do not end in consecutive numbers.
const SPREAD: u32 = 0x9e37_79b1;
/// `SPREAD`'s inverse modulo 2^32 (Newton's iteration, each step doubling
/// the correct low bits: 3, 6, 12, 24, 48).
const SPREAD_INVERSE: u32 = {
    let mut inv = SPREAD;
    let mut i = 0;
    while i < 4 {
        inv = inv.wrapping_mul(2u32.wrapping_sub(SPREAD.wrapping_mul(inv)));
        i += 1;
    }
    inv
};

/// Session id → session value.
pub(crate) struct SessionMap<T> {
    /// Removed sessions' slots are reused first.
    inner: Mutex<Slab<Entry<T>>>,
    /// Hides the slot numbers in the ids (they would count up from 0).
    mask: u32,
}

impl<T: Clone> SessionMap<T> {
    pub(crate) fn new() -> Self {
        Self {
            inner: Mutex::new(Slab::new()),
            mask: fastrand::u32(..),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Slab<Entry<T>>> {
        // A panic while holding this lock cannot leave the slab inconsistent
        // (each call changes it in one step), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The slot that key `k` names (it holds `k` only if `k` is live).
    fn slot(&self, k: u128) -> usize {
        (k as u32 ^ self.mask).wrapping_mul(SPREAD_INVERSE) as usize
    }

    /// The low 32 bits of the keys of `slot`.
    fn low_bits(&self, slot: u32) -> u32 {
        slot.wrapping_mul(SPREAD) ^ self.mask
    }

    /// Inserts `value` under a fresh id and returns the id: 32 lowercase hex
    /// digits.
    pub(crate) fn create(&self, value: T) -> String {
        let mut slab = self.lock();
        let vacant = slab.vacant_entry();
        let slot = u32::try_from(vacant.key()).expect("fewer than 2^32 sessions");
        let k = fastrand::u128(..) << 32 | u128::from(self.low_bits(slot));
        vacant.insert(Entry {
            hi: (k >> 64) as u64,
            lo: k as u64,
            value,
        });
        format!("{k:032x}")
    }

    /// Malformed ids are rejected without taking the lock.
    pub(crate) fn get(&self, id: &str) -> Option<T> {
        self.get_key(key(id)?)
    }

    /// The session of key `k` (from [`key`]).
    pub(crate) fn get_key(&self, k: u128) -> Option<T> {
        match self.lock().get(self.slot(k)) {
            Some(e) if e.is(k) => Some(e.value.clone()),
            _ => None,
        }
    }

    /// Whether key `k` names a session: the value is not touched (nor cloned).
    pub(crate) fn contains(&self, k: u128) -> bool {
        matches!(self.lock().get(self.slot(k)), Some(e) if e.is(k))
    }

    pub(crate) fn remove(&self, id: &str) -> Option<T> {
        let k = key(id)?;
        let slot = self.slot(k);
        let mut slab = self.lock();
        if !slab.get(slot).is_some_and(|e| e.is(k)) {
            return None;
        }
        Some(slab.remove(slot).value)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Removes and returns every session (shutdown).
    pub(crate) fn drain(&self) -> Vec<T> {
        self.lock().drain().map(|e| e.value).collect()
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

    #[test]
    fn a_reused_slot_does_not_answer_to_the_old_id() {
        let m = SessionMap::new();
        let old = m.create(1u32);
        let kept = m.create(2u32);
        assert_eq!(m.remove(&old), Some(1));
        // The freed slot is reused, under new random bits.
        let new = m.create(3u32);
        assert_eq!(m.get(&old), None, "{old} still names a session");
        assert_eq!(m.remove(&old), None);
        assert_eq!(m.get(&new), Some(3));
        assert_eq!(m.get(&kept), Some(2));
        assert_eq!(m.len(), 2);
        // An id naming a slot past the end, or a live slot with other random
        // bits, names nothing.
        let k = key(&kept).expect("a key");
        assert!(!m.contains(k ^ 1 << 100));
        assert!(!m.contains(k ^ 0xffff));
        let mut all = m.drain();
        all.sort_unstable();
        assert_eq!(all, [2, 3]);
        assert_eq!((m.len(), m.get(&kept)), (0, None));
        // After a drain, slots count from the start again.
        let again = m.create(4u32);
        assert_eq!(m.get(&again), Some(4));
        assert_eq!(m.get(&kept), None);
    }

    #[test]
    fn slots_spread_and_come_back() {
        assert_eq!(SPREAD.wrapping_mul(SPREAD_INVERSE), 1);
        let m = SessionMap::<u8>::new();
        for slot in [0, 1, 2, 77, u32::MAX] {
            let k = u128::from(m.low_bits(slot)) | 5 << 40;
            assert_eq!(m.slot(k), slot as usize);
        }
        // Consecutive slots give ids that differ in many bits (the mask
        // cancels out of the XOR), not in the last digit or two.
        let (a, b) = (m.low_bits(7), m.low_bits(8));
        assert!((a ^ b).count_ones() >= 8, "{a:08x} {b:08x}");
    }

    #[test]
    fn an_entry_is_three_words() {
        // slab's slot is `Vacant(usize) | Occupied(T)`, laid out as this
        // `Option`: in the value's pointer niche.
        assert_eq!(std::mem::size_of::<Option<Entry<std::sync::Arc<u8>>>>(), 24);
    }
}
