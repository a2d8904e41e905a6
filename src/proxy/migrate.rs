//! Live session migration (`[drain] migrate = "replay"`): a Streamable HTTP
//! session that outlives its slot continues on a serving one (a legacy
//! HTTP+SSE session is kept here too, and moved by its stream:
//! `proxy::splice`).
//!
//! Capture: when a session-less POST carrying `initialize` is answered 2xx with
//! an `Mcp-Session-Id`, its body is kept under the tagged id the client got
//! (`Sessions`), with the session-shaping requests that follow
//! (`logging/setLevel`, `resources/subscribe`, `resources/unsubscribe`), in order.
//! Replay: when the session's slot is retired, restarted, past its drain
//! deadline or refusing connections, the proxy sends the captured `initialize`,
//! `notifications/initialized` and the shaping requests to a serving slot,
//! and remembers the new upstream session id (`Moved`). The client keeps its
//! id; requests carry the new one upstream, answers carry the client's back.
//!
//! The store is a sharded `std` map: a session that never migrates costs one
//! shard read-lock and an atomic store per request (its idle clock), and only
//! with migration on. The maps are keyed by a keyed 64-bit hash of the id,
//! and the idle clock lives in the map's entry, so that a request's touch
//! reads the table alone among 100,000 sessions (no key bytes elsewhere on
//! the heap, no session record); every other use compares the full id, which
//! the session keeps. The `Moved` record is read only once the pinned slot is
//! gone. No new dependency: lookups are rare enough (capture, idle touch,
//! migration) that a lock-free map (papaya, scc) buys nothing measurable here,
//! and shards keep writers (session creation) from queueing behind each other.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::mcp::headers::{LAST_EVENT_ID, MCP_PROTOCOL_VERSION, MCP_SESSION_ID};
use crate::stats::{MigrateFailure, ProxyStats};
use crate::table::{Slot, SlotState, Table};
use crate::upstream::{BodyWatch, SendError};

/// Largest request body the proxy buffers (an `initialize` to capture, a
/// pinned POST whose id it may need); larger bodies stay streamed.
pub const MAX_BODY: u64 = 64 * 1024;
/// Most session-shaping requests kept per session (the oldest are dropped
/// first: the later `setLevel` wins anyway).
const MAX_SHAPING: usize = 32;
/// Largest session-shaping request kept (`setLevel` and `subscribe` bodies
/// are a few hundred bytes; a larger one is not replayed).
const MAX_SHAPING_BODY: usize = 4 * 1024;
/// Most bytes all captured sessions may hold together, whatever
/// `migrate_max_sessions` allows: clients choose the bodies' sizes.
const MAX_HELD: usize = 256 * 1024 * 1024;
/// Longest a replay may take per step.
pub(crate) const REPLAY_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer to a replayed request the proxy reads.
pub(crate) const MAX_REPLY: usize = 256 * 1024;
const SHARDS: usize = 16;
/// Most unanswered calls kept per session (the oldest are dropped first).
const MAX_UNANSWERED: usize = 16;

/// Where a migrated session lives now.
#[derive(Debug)]
pub struct Moved {
    pub slot: Arc<str>,
    pub generation: u32,
    /// The new upstream session id (untagged, as the slot issued it).
    pub inner: HeaderValue,
}

/// The fleet's record of a session could not be read (its etcd did not
/// answer in time, or too many reads were waiting): the session may well
/// exist, so its request is told to come again (503), not that the session
/// is gone (404, on which an MCP client must start over).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreadable;

/// A future a [`Mirror`] returns.
pub type MirrorFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Where captured sessions are shared beyond this process: the fleet's etcd
/// (`cluster::sessions`) when `[cluster]` is set, so that a session begun
/// through one instance moves through any. The request path only marks what
/// changed ([`Mirror::changed`], [`Mirror::ended`]: a map insert, never a
/// round trip); the fleet is read only where a session must move.
pub trait Mirror: Send + Sync + std::fmt::Debug {
    /// Session `c` was captured, or its shaping requests changed.
    fn changed(&self, c: &Arc<Captured>);
    /// Session `id` ended (DELETE, or its slot's 404).
    fn ended(&self, id: &[u8]);
    /// The fleet's record of session `id`, which this process does not hold:
    /// `Ok(None)` when the fleet has none, `Err` when it could not be read.
    fn fetch<'a>(&'a self, id: &'a [u8]) -> MirrorFuture<'a, Result<Option<Exported>, Unreadable>>;
    /// Where the fleet says session `id` moved last, and the revision of that
    /// record (0: it never moved). `Err` when the fleet cannot be asked.
    fn move_of<'a>(&'a self, id: &'a [u8]) -> MirrorFuture<'a, Result<FleetMove, ()>>;
    /// Records that session `id` moved to `to` if the fleet's record is still
    /// at `revision`; `Ok(Some(..))`: another instance recorded a move first
    /// (what it recorded). `Err` when the fleet cannot be asked.
    fn record_move<'a>(
        &'a self,
        id: &'a [u8],
        revision: i64,
        to: &'a ExportedMove,
    ) -> MirrorFuture<'a, Result<Option<FleetMove>, ()>>;
}

/// A move as the fleet holds it: where to, and its record's revision.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FleetMove {
    pub to: Option<ExportedMove>,
    pub revision: i64,
}

/// One captured session.
#[derive(Debug)]
pub struct Captured {
    /// The tagged id the client holds (the map's key is its hash).
    id: Box<[u8]>,
    init: Bytes,
    kept: Mutex<Kept>,
    moved: ArcSwapOption<Moved>,
    /// `moved` is set: read on every request of the session (one load,
    /// where `moved` would take ArcSwap's guard).
    has_moved: AtomicBool,
    /// Its SSE streams open through this process (a GET stream the client
    /// listens on, a call's answer): a session with one is in use, however
    /// long since its last request ([`StreamHold`]).
    streams: AtomicU32,
    /// One replay at a time per session; concurrent requests wait for it.
    replaying: tokio::sync::Mutex<()>,
    /// The store's count of bytes held ([`Sessions::bytes`]): what this
    /// session holds is added as it comes and taken off when it goes, the
    /// rest when the session is dropped (not when the store forgets it: a
    /// request or a stream may still hold it, and add to it).
    held: Arc<AtomicUsize>,
}

impl Drop for Captured {
    fn drop(&mut self) {
        let kept = self.kept.get_mut().unwrap_or_else(|p| p.into_inner());
        let bytes = self.init.len() + kept.bytes();
        self.held.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// What a captured session keeps besides its `initialize`.
#[derive(Debug, Default)]
struct Kept {
    shaping: Vec<Bytes>,
    /// Calls whose POST stream the slot ended before their answer passed
    /// (`Last-Event-ID` of that stream as the client holds it, the call's
    /// error event): the client resumes such a stream later. A boxed
    /// slice, rebuilt when it changes (rarely): most sessions never have
    /// one, and every captured session pays for the empty field.
    unanswered: Box<[(Bytes, Bytes)]>,
    /// A legacy HTTP+SSE session (2024-11-05): its calls not yet answered on
    /// its stream. `None` for a Streamable HTTP session (boxed: one word).
    legacy: Option<Box<LegacyCalls>>,
}

/// What a legacy HTTP+SSE session keeps: its calls whose answers have not
/// passed on its stream yet (ids as JSON text), answered with the
/// interrupted-call error if the stream moves before they do.
#[derive(Debug, Default)]
struct LegacyCalls {
    pending: Vec<Bytes>,
}

impl Captured {
    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The tagged id the client holds.
    pub fn id(&self) -> &[u8] {
        &self.id
    }

    /// The captured `initialize` body.
    pub fn init(&self) -> &Bytes {
        &self.init
    }

    /// The session-shaping requests kept, in order.
    pub fn shaping(&self) -> Vec<Bytes> {
        self.kept().shaping.clone()
    }

    /// Whether it is a legacy HTTP+SSE session, which its GET stream moves
    /// ([`crate::proxy::splice`]), never a request.
    pub fn is_legacy(&self) -> bool {
        self.kept().legacy.is_some()
    }

    /// Whether the session moved (it may have to move again).
    pub fn has_moved(&self) -> bool {
        self.has_moved.load(Ordering::Acquire)
    }

    /// Whether a move of the session is under way (a replay, a splice).
    pub fn is_moving(&self) -> bool {
        self.replaying.try_lock().is_err()
    }

    /// A legacy session's call (its id as JSON text) was accepted: its
    /// answer is to come on the stream. The oldest is forgotten past
    /// 16 (a client that never gets answers); none is noted while the
    /// store holds its most (the call then gets no error if the stream
    /// moves before its answer).
    pub fn note_call(&self, id: Bytes) {
        if self.held.load(Ordering::Relaxed).saturating_add(id.len()) > MAX_HELD {
            return;
        }
        let id = own(&id);
        let mut kept = self.kept();
        if let Some(l) = kept.legacy.as_mut() {
            if l.pending.len() >= MAX_UNANSWERED {
                let oldest = l.pending.remove(0);
                self.held.fetch_sub(oldest.len(), Ordering::Relaxed);
            }
            self.held.fetch_add(id.len(), Ordering::Relaxed);
            l.pending.push(id);
        }
    }

    /// Whether a legacy session has calls waiting for their answers.
    pub fn has_pending(&self) -> bool {
        self.kept()
            .legacy
            .as_ref()
            .is_some_and(|l| !l.pending.is_empty())
    }

    /// The answer to call `id` (JSON text) passed on the stream.
    pub fn answered(&self, id: &[u8]) {
        let mut kept = self.kept();
        if let Some(l) = kept.legacy.as_mut() {
            if let Some(at) = l.pending.iter().position(|p| p == id) {
                let done = l.pending.remove(at);
                self.held.fetch_sub(done.len(), Ordering::Relaxed);
            }
        }
    }

    /// A legacy session's calls still unanswered, forgotten here: their
    /// answers will never come (the stream that would carry them moved).
    pub fn take_pending(&self) -> Vec<Bytes> {
        let mut kept = self.kept();
        let pending = kept
            .legacy
            .as_mut()
            .map(|l| std::mem::take(&mut l.pending))
            .unwrap_or_default();
        let bytes: usize = pending.iter().map(Bytes::len).sum();
        self.held.fetch_sub(bytes, Ordering::Relaxed);
        pending
    }

    /// Records that the session lives on `slot` now, as upstream session `inner`.
    pub fn moved_here(&self, slot: &Slot, inner: HeaderValue) {
        self.set_moved(Arc::new(Moved {
            slot: Arc::clone(&slot.name),
            generation: slot.generation,
            inner,
        }));
    }

    /// Holds the session's moves off until the guard drops: one move at a
    /// time, and requests of the session wait for it.
    pub async fn moving(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.replaying.lock().await
    }

    /// Where the session moved, as exported (`None`: it has not, or its
    /// upstream id is not text).
    pub fn moved_to(&self) -> Option<ExportedMove> {
        let m = self.moved.load_full()?;
        Some(ExportedMove {
            slot: m.slot.to_string(),
            generation: m.generation,
            inner: m.inner.to_str().ok()?.to_owned(),
        })
    }

    /// Takes a move recorded elsewhere (the fleet's); false when its
    /// upstream id is not a header value.
    fn adopt_move(&self, m: &ExportedMove) -> bool {
        let Ok(inner) = HeaderValue::from_str(&m.inner) else {
            return false;
        };
        self.set_moved(Arc::new(Moved {
            slot: m.slot.as_str().into(),
            generation: m.generation,
            inner,
        }));
        true
    }

    fn bytes(&self) -> usize {
        self.init.len() + self.kept().bytes()
    }

    fn set_moved(&self, m: Arc<Moved>) {
        self.moved.store(Some(m));
        self.has_moved.store(true, Ordering::Release);
    }
}

impl Kept {
    fn bytes(&self) -> usize {
        self.shaping.iter().map(Bytes::len).sum::<usize>()
            + self
                .unanswered
                .iter()
                .map(|(id, event)| id.len() + event.len())
                .sum::<usize>()
            + self
                .legacy
                .as_ref()
                .map_or(0, |l| l.pending.iter().map(Bytes::len).sum())
    }
}

/// A session's SSE stream, open while this lives (the stream's body holds
/// it): the session is not idle meanwhile. A client that listens on its GET
/// stream for hours and calls nothing is using its session; forgotten after
/// `migrate_idle`, it could not move at a deploy and got a 404 there.
#[derive(Debug)]
pub struct StreamHold(Arc<Captured>);

impl StreamHold {
    pub fn new(c: Arc<Captured>) -> StreamHold {
        c.streams.fetch_add(1, Ordering::Relaxed);
        StreamHold(c)
    }
}

impl Drop for StreamHold {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A session in its shard's map.
#[derive(Debug)]
struct Entry {
    /// Seconds since the store's epoch of the session's last request.
    last_used: AtomicU64,
    captured: Arc<Captured>,
}

impl Entry {
    /// Seconds the session has been idle at `now`: none while a stream of
    /// it is open here.
    fn idle_at(&self, now: u64) -> u64 {
        if self.captured.streams.load(Ordering::Relaxed) > 0 {
            return 0;
        }
        now.saturating_sub(self.last_used.load(Ordering::Relaxed))
    }
}

/// The maps' keys are already hashes ([`Sessions::key`]): used as they are.
#[derive(Debug, Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed here; this keeps any other input sound.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, key: u64) {
        self.0 = key;
    }
}

type Shard = RwLock<HashMap<u64, Entry, BuildHasherDefault<KeyHasher>>>;

/// The shard of map key `key` (of the sessions, and of the foreign ids):
/// bits the map itself does not use for the bucket (low bits) or the
/// control byte (top 7).
fn shard_of(key: u64) -> usize {
    (key >> 32) as usize % SHARDS
}

/// In a fleet: the ids of sessions this instance does not hold that had a
/// request here since the last renewal, by map key (one map per shard).
type Foreign = Mutex<HashMap<u64, Box<[u8]>, BuildHasherDefault<KeyHasher>>>;

/// Most ids of sessions held elsewhere noted per renewal period: past it, a
/// session used only here may go unrenewed. Any client can make ids up (a
/// tag is public), and an id with no record in etcd costs the renewal a
/// transaction of its own: this bounds that too.
const MAX_FOREIGN: usize = 4_096;
/// Longest id noted (the SDKs' are UUIDs, 32 to 36 characters, plus the
/// tag): with [`MAX_FOREIGN`], 1 MiB at most.
const MAX_FOREIGN_ID: usize = 256;

/// The captured sessions, by the tagged `Mcp-Session-Id` the client holds.
#[derive(Debug)]
pub struct Sessions {
    shards: Box<[Shard]>,
    /// Keys the ids: seeded at random per process, so that no client can aim
    /// its ids at another session's key.
    hasher: foldhash::quality::RandomState,
    max: usize,
    idle: Duration,
    count: AtomicUsize,
    /// Bytes of captured bodies held (the memory a session costs, reported).
    held: Arc<AtomicUsize>,
    epoch: Instant,
    stats: Arc<ProxyStats>,
    /// The fleet's copy (`[cluster]`), set once at start.
    mirror: std::sync::OnceLock<Arc<dyn Mirror>>,
    /// In a fleet: sessions another instance holds, used here (renewed with
    /// this instance's lease, `cluster::sessions`).
    foreign: Box<[Foreign]>,
    foreign_count: AtomicUsize,
}

impl Sessions {
    pub fn new(max: usize, idle: Duration, stats: Arc<ProxyStats>) -> Self {
        Sessions {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: foldhash::quality::RandomState::default(),
            max,
            idle,
            count: AtomicUsize::new(0),
            held: Arc::default(),
            // `idle` back: a session imported idle (`import`) keeps its age.
            epoch: Instant::now()
                .checked_sub(idle)
                .unwrap_or_else(Instant::now),
            stats,
            mirror: std::sync::OnceLock::new(),
            foreign: (0..SHARDS).map(|_| Mutex::default()).collect(),
            foreign_count: AtomicUsize::new(0),
        }
    }

    /// Shares the sessions through `mirror` from now on (once).
    pub fn set_mirror(&self, mirror: Arc<dyn Mirror>) {
        let _ = self.mirror.set(mirror);
    }

    /// Where the sessions are shared, if anywhere.
    pub fn mirror(&self) -> Option<&dyn Mirror> {
        self.mirror.get().map(|m| &**m)
    }

    /// The captured session `id`, from the fleet's record when this process
    /// does not hold it (it began through another instance): taken into this
    /// store, so that its next requests here need no round trip. `Err` when
    /// the fleet's record could not be read.
    pub async fn find(&self, id: &[u8]) -> Result<Option<Arc<Captured>>, Unreadable> {
        if let Some(c) = self.get(id) {
            return Ok(Some(c));
        }
        let Some(mirror) = self.mirror() else {
            return Ok(None);
        };
        let Some(x) = mirror.fetch(id).await? else {
            return Ok(None);
        };
        self.import_one(x);
        Ok(self.get(id))
    }

    /// Sessions whose last request here was at most `within` ago, or with a
    /// stream open here.
    pub fn used_within(&self, within: Duration) -> Vec<Arc<Captured>> {
        let (now, within) = (self.now(), within.as_secs());
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let map = shard.read().unwrap_or_else(|p| p.into_inner());
            out.extend(
                map.values()
                    .filter(|e| e.idle_at(now) <= within)
                    .map(|e| Arc::clone(&e.captured)),
            );
        }
        out
    }

    /// The map key of id `id`.
    fn key(&self, id: &[u8]) -> u64 {
        self.hasher.hash_one(id)
    }

    /// The shard of map key `key` ([`shard_of`]).
    fn shard(&self, key: u64) -> &Shard {
        &self.shards[shard_of(key)]
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_secs()
    }

    /// Captured sessions held.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held for captured sessions (bodies only).
    pub fn bytes(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    fn publish(&self) {
        self.stats.set_captured(self.len(), self.bytes());
    }

    /// Keeps `init` for the session the client knows as `id`; false when the
    /// store is full (the session then ends with its slot, as without migration).
    pub fn capture(&self, id: &HeaderValue, init: Bytes) -> bool {
        let Some(c) = self.insert(id, init) else {
            return false;
        };
        if let Some(m) = self.mirror() {
            m.changed(&c);
        }
        true
    }

    /// [`Sessions::capture`] for a legacy HTTP+SSE session, whose client
    /// holds `id` in its POST URL. Not shared with the fleet nor handed over:
    /// only the process that holds its GET stream can move it.
    pub fn capture_legacy(&self, id: &HeaderValue, init: Bytes) -> bool {
        let Some(c) = self.insert(id, init) else {
            return false;
        };
        c.kept().legacy = Some(Box::default());
        true
    }

    /// [`Sessions::capture`] without telling the fleet: for a session that
    /// came from elsewhere (the fleet's record, a handover).
    fn insert(&self, id: &HeaderValue, init: Bytes) -> Option<Arc<Captured>> {
        if self.len() >= self.max || self.bytes().saturating_add(init.len()) > MAX_HELD {
            self.stats.count_capture_refused();
            return None;
        }
        let captured = Arc::new(Captured {
            id: id.as_bytes().into(),
            init: own(&init),
            kept: Mutex::default(),
            moved: ArcSwapOption::empty(),
            has_moved: AtomicBool::new(false),
            streams: AtomicU32::new(0),
            replaying: tokio::sync::Mutex::new(()),
            held: Arc::clone(&self.held),
        });
        let key = self.key(id.as_bytes());
        self.held.fetch_add(captured.bytes(), Ordering::Relaxed);
        let entry = Entry {
            last_used: AtomicU64::new(self.now()),
            captured: Arc::clone(&captured),
        };
        // The same id captured again replaces its session. (So would another
        // id with the same 64-bit key: one pair in 2^64, and no client can aim
        // at it without the process's seed; that older session would then
        // end with its slot, as without migration.)
        let old = {
            let mut map = self.shard(key).write().unwrap_or_else(|p| p.into_inner());
            map.insert(key, entry)
        };
        // The session replaced takes its bytes off when it is dropped.
        if old.is_none() {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        self.publish();
        Some(captured)
    }

    /// The captured session `id`, its idle clock reset.
    pub fn get(&self, id: &[u8]) -> Option<Arc<Captured>> {
        let key = self.key(id);
        let map = self.shard(key).read().unwrap_or_else(|p| p.into_inner());
        let e = map.get(&key).filter(|e| *e.captured.id == *id)?;
        e.last_used.store(self.now(), Ordering::Relaxed);
        Some(Arc::clone(&e.captured))
    }

    /// Resets `id`'s idle clock (one read lock, one atomic store, in the
    /// map's entry) and says whether the session moved (one load in its
    /// record). The id itself is not compared (that would read the id
    /// elsewhere on the heap on every request): an id sharing its key with
    /// another session only keeps that one from idling out, or sends its
    /// requests the way of a moved session, where `find` compares ids.
    pub fn touch(&self, id: &[u8]) -> bool {
        self.touch_noting(id, false)
    }

    /// [`Sessions::touch`] for a Streamable HTTP session (its id tagged by
    /// this fleet): one this instance does not hold is noted for the
    /// fleet's renewal.
    pub fn touch_streamable(&self, id: &[u8]) -> bool {
        self.touch_noting(id, true)
    }

    fn touch_noting(&self, id: &[u8], note: bool) -> bool {
        let key = self.key(id);
        let map = self.shard(key).read().unwrap_or_else(|p| p.into_inner());
        match map.get(&key) {
            Some(e) => {
                e.last_used.store(self.now(), Ordering::Relaxed);
                e.captured.has_moved()
            }
            None => {
                drop(map);
                if note && id.len() <= MAX_FOREIGN_ID && self.mirror().is_some() {
                    self.note_foreign(key, id);
                }
                false
            }
        }
    }

    /// A Streamable HTTP session this instance does not hold had a request
    /// here: in a fleet its record (another instance's) is renewed with
    /// this instance's lease too, so that it lives while any instance sees
    /// it used. Noted once per session and period (a shard's lock, and an
    /// allocation the first time); bounded.
    fn note_foreign(&self, key: u64, id: &[u8]) {
        let mut seen = self.foreign[shard_of(key)]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if seen.contains_key(&key) || self.foreign_count.load(Ordering::Relaxed) >= MAX_FOREIGN {
            return;
        }
        seen.insert(key, id.into());
        self.foreign_count.fetch_add(1, Ordering::Relaxed);
    }

    /// The ids of sessions held elsewhere that [`Sessions::touch_streamable`]
    /// noted since the last call.
    pub fn take_foreign(&self) -> Vec<Box<[u8]>> {
        let mut out = Vec::new();
        for shard in self.foreign.iter() {
            let taken = std::mem::take(&mut *shard.lock().unwrap_or_else(|p| p.into_inner()));
            self.foreign_count.fetch_sub(taken.len(), Ordering::Relaxed);
            out.extend(taken.into_values());
        }
        out
    }

    /// Forgets `id` (its session ended: DELETE, or a 404 from its slot),
    /// here and in the fleet: `everywhere` (a DELETE its slot took) ends it
    /// whichever instance it began through; otherwise (a 404) it ends in the
    /// fleet only if this instance held it. An id another instance holds, or
    /// that a client made up, then costs etcd no write per request; a record
    /// of another instance's session that its slot no longer knows is no
    /// longer renewed from here, and expires (`migrate_idle`) unless used
    /// elsewhere.
    pub fn remove(&self, id: &[u8], everywhere: bool) {
        let key = self.key(id);
        let gone = {
            let mut map = self.shard(key).write().unwrap_or_else(|p| p.into_inner());
            match map.get(&key) {
                Some(e) if *e.captured.id == *id => map.remove(&key),
                _ => None,
            }
        };
        if let Some(m) = self.mirror() {
            if everywhere || gone.is_some() {
                m.ended(id);
            }
            let mut noted = self.foreign[shard_of(key)]
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if noted.remove(&key).is_some() {
                self.foreign_count.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if gone.is_some() {
            self.count.fetch_sub(1, Ordering::Relaxed);
            self.publish();
        }
    }

    /// Records a session-shaping request of `id` (answered 2xx), to replay in order.
    pub fn shape(&self, id: &[u8], body: Bytes) {
        if body.len() > MAX_SHAPING_BODY || self.bytes().saturating_add(body.len()) > MAX_HELD {
            tracing::debug!(
                bytes = body.len(),
                "a session-shaping request too large to keep for a replay"
            );
            return;
        }
        if let Some(c) = self.get(id) {
            let mut kept = c.kept();
            let list = &mut kept.shaping;
            if list.len() >= MAX_SHAPING {
                let dropped = list.remove(0);
                self.held.fetch_sub(dropped.len(), Ordering::Relaxed);
            }
            self.held.fetch_add(body.len(), Ordering::Relaxed);
            list.push(own(&body));
            let legacy = kept.legacy.is_some();
            drop(kept);
            self.publish();
            if let Some(m) = self.mirror().filter(|_| !legacy) {
                m.changed(&c);
            }
        }
    }

    /// Keeps the error event of session `id`'s call whose POST stream the
    /// slot ended before the answer passed, under the stream's last event id
    /// (`last_id`, as the client holds it). If the client resumes that
    /// stream only after the session moved, the new slot never had the call:
    /// [`Sessions::take_unanswered`] then gives the error to answer with,
    /// instead of a fresh stream on which the answer never comes.
    pub fn note_unanswered(&self, id: &[u8], last_id: Bytes, event: Bytes) {
        let size = last_id.len() + event.len();
        if self.bytes().saturating_add(size) > MAX_HELD {
            return;
        }
        if let Some(c) = self.get(id) {
            let mut kept = c.kept();
            let mut list = std::mem::take(&mut kept.unanswered).into_vec();
            if list.len() >= MAX_UNANSWERED {
                let (i, e) = list.remove(0);
                self.held.fetch_sub(i.len() + e.len(), Ordering::Relaxed);
            }
            self.held.fetch_add(size, Ordering::Relaxed);
            list.push((last_id, event));
            kept.unanswered = list.into_boxed_slice();
            drop(kept);
            self.publish();
        }
    }

    /// The error event of session `id`'s unanswered call whose stream the
    /// client resumes from `last_id` on the call's own slot, left in place:
    /// that resumed stream replaces it when it ends (`body::Resume`).
    pub fn peek_unanswered(&self, id: &[u8], last_id: &[u8]) -> Option<Bytes> {
        let c = self.get(id)?;
        let kept = c.kept();
        let (_, event) = kept.unanswered.iter().find(|(i, _)| i == last_id)?;
        Some(event.clone())
    }

    /// The error event of session `id`'s unanswered call whose stream the
    /// client resumes from `last_id`, once (see [`Sessions::note_unanswered`]).
    pub fn take_unanswered(&self, id: &[u8], last_id: &[u8]) -> Option<Bytes> {
        let c = self.get(id)?;
        let mut kept = c.kept();
        let at = kept.unanswered.iter().position(|(i, _)| i == last_id)?;
        let mut list = std::mem::take(&mut kept.unanswered).into_vec();
        let (i, event) = list.remove(at);
        kept.unanswered = list.into_boxed_slice();
        drop(kept);
        self.held
            .fetch_sub(i.len() + event.len(), Ordering::Relaxed);
        self.publish();
        Some(event)
    }

    /// Forgets sessions idle longer than `migrate_idle`; returns how many.
    pub fn expire(&self) -> usize {
        let now = self.now();
        let idle = self.idle.as_secs();
        let mut gone = 0;
        for shard in self.shards.iter() {
            let mut map = shard.write().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, e| {
                // A legacy session's open stream holds it: not idle.
                let keep = e.idle_at(now) < idle
                    || Arc::strong_count(&e.captured) > 1 && e.captured.is_legacy();
                if !keep {
                    gone += 1;
                }
                keep
            });
        }
        if gone > 0 {
            self.count.fetch_sub(gone, Ordering::Relaxed);
            self.publish();
        }
        gone
    }

    /// Runs [`Sessions::expire`] until `stop` is cancelled.
    pub async fn expire_every(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let every = (self.idle / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => { self.expire(); }
            }
        }
    }
}

/// A captured session on its way to the process that takes over in a
/// hitless upgrade (`ctl upgrade`): what it replays, where it moved, and
/// how long it has been idle. The bodies are the JSON the client sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exported {
    /// The tagged id the client holds.
    pub id: String,
    pub init: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shaping: Vec<String>,
    /// Unanswered calls: the stream's last event id, the error event.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unanswered: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved: Option<ExportedMove>,
    /// Seconds since its last request.
    pub idle_s: u64,
}

/// Where an exported session moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedMove {
    pub slot: String,
    pub generation: u32,
    /// The upstream session id the new slot issued.
    pub inner: String,
}

/// [`Exported`] borrowing the store's bodies: what [`Sessions::export_each`]
/// gives, serialized as an [`Exported`] is.
#[derive(Debug, Serialize)]
pub struct ExportedRef<'a> {
    pub id: &'a str,
    pub init: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shaping: Vec<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unanswered: Vec<(&'a str, &'a str)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moved: Option<ExportedMove>,
    pub idle_s: u64,
}

impl ExportedRef<'_> {
    fn to_owned(&self) -> Exported {
        Exported {
            id: self.id.to_owned(),
            init: self.init.to_owned(),
            shaping: self.shaping.iter().map(|&b| b.to_owned()).collect(),
            unanswered: self
                .unanswered
                .iter()
                .map(|&(i, e)| (i.to_owned(), e.to_owned()))
                .collect(),
            moved: self.moved.clone(),
            idle_s: self.idle_s,
        }
    }
}

impl Sessions {
    /// Every captured session, for the process that takes over. One whose
    /// bytes are not UTF-8 (the proxy captures JSON bodies only, so none in
    /// practice) is left out, and counted in the second number.
    pub fn export(&self) -> (Vec<Exported>, usize) {
        let mut out = Vec::with_capacity(self.len());
        let skipped = self
            .export_each(|x| {
                out.push(x.to_owned());
                Ok(())
            })
            .unwrap_or(0);
        (out, skipped)
    }

    /// [`Sessions::export`] one session at a time, borrowing its bodies (no
    /// copy of them: the sessions file is written from these), until `each`
    /// fails. No shard's lock is held while `each` runs.
    pub fn export_each(
        &self,
        mut each: impl FnMut(ExportedRef<'_>) -> std::io::Result<()>,
    ) -> std::io::Result<usize> {
        fn text(b: &[u8]) -> Option<&str> {
            std::str::from_utf8(b).ok()
        }
        let now = self.now();
        let mut skipped = 0;
        for shard in self.shards.iter() {
            let held: Vec<(Arc<Captured>, u64)> = {
                let map = shard.read().unwrap_or_else(|p| p.into_inner());
                map.values()
                    .map(|e| (Arc::clone(&e.captured), e.idle_at(now)))
                    .collect()
            };
            for (c, idle_s) in held {
                let kept = c.kept();
                if kept.legacy.is_some() {
                    // Its stream stays with this process.
                    continue;
                }
                let moved = c.moved.load_full();
                let exported = (|| {
                    Some(ExportedRef {
                        id: text(&c.id)?,
                        init: text(&c.init)?,
                        shaping: kept
                            .shaping
                            .iter()
                            .map(|b| text(b))
                            .collect::<Option<_>>()?,
                        unanswered: kept
                            .unanswered
                            .iter()
                            .map(|(i, ev)| Some((text(i)?, text(ev)?)))
                            .collect::<Option<_>>()?,
                        moved: match &moved {
                            None => None,
                            Some(m) => Some(ExportedMove {
                                slot: m.slot.to_string(),
                                generation: m.generation,
                                inner: m.inner.to_str().ok()?.to_owned(),
                            }),
                        },
                        idle_s,
                    })
                })();
                match exported {
                    Some(x) => each(x)?,
                    None => skipped += 1,
                }
            }
        }
        Ok(skipped)
    }

    /// Takes the sessions the process that handed over captured. One this
    /// store holds already (its client came here since) keeps what it has
    /// here, and gains only where the other process moved it; one idle past
    /// `migrate_idle` is left out, and so is one over the store's limits.
    /// Returns how many were added.
    pub fn import(&self, list: Vec<Exported>) -> usize {
        let added = list
            .into_iter()
            .map(|x| self.import_one_quiet(x))
            .filter(|&added| added)
            .count();
        if added > 0 {
            self.publish();
        }
        added
    }

    fn import_one(&self, x: Exported) -> bool {
        let added = self.import_one_quiet(x);
        if added {
            self.publish();
        }
        added
    }

    /// One session of [`Sessions::import`]; true when it was added.
    fn import_one_quiet(&self, mut x: Exported) -> bool {
        let now = self.now();
        // The bounds of a capture here hold for one that came over too.
        if x.idle_s >= self.idle.as_secs() || x.init.len() as u64 > MAX_BODY {
            return false;
        }
        x.shaping.retain(|b| b.len() <= MAX_SHAPING_BODY);
        let over = x.shaping.len().saturating_sub(MAX_SHAPING);
        x.shaping.drain(..over);
        let over = x.unanswered.len().saturating_sub(MAX_UNANSWERED);
        x.unanswered.drain(..over);
        let Ok(id) = HeaderValue::from_str(&x.id) else {
            return false;
        };
        if let Some(here) = self.get(id.as_bytes()) {
            if here.moved.load().is_none() {
                if let Some(m) = &x.moved {
                    here.adopt_move(m);
                }
            }
            return false;
        }
        let Some(c) = self.insert(&id, Bytes::from(x.init)) else {
            return false;
        };
        {
            let key = self.key(id.as_bytes());
            let map = self.shard(key).read().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = map.get(&key) {
                e.last_used
                    .store(now.saturating_sub(x.idle_s), Ordering::Relaxed);
            }
        }
        if let Some(m) = &x.moved {
            c.adopt_move(m);
        }
        let mut kept = c.kept();
        let extra: usize = x.shaping.iter().map(String::len).sum::<usize>()
            + x.unanswered
                .iter()
                .map(|(i, e)| i.len() + e.len())
                .sum::<usize>();
        kept.shaping = x.shaping.into_iter().map(Bytes::from).collect();
        kept.unanswered = x
            .unanswered
            .into_iter()
            .map(|(i, e)| (Bytes::from(i), Bytes::from(e)))
            .collect();
        drop(kept);
        self.held.fetch_add(extra, Ordering::Relaxed);
        true
    }
}

/// A body to keep, in an allocation of its own: a buffered request body is a
/// slice of the connection's read buffer, and keeping the slice would keep the
/// whole buffer (kilobytes) alive for as long as the session is captured.
fn own(body: &Bytes) -> Bytes {
    Bytes::copy_from_slice(body)
}

/// A moved session's `Last-Event-ID`, on its way to the slot it lives on
/// now, whose events the proxy tagged with that slot's `prefix` on their way
/// out ([`crate::proxy::sse::EventIdTag`]): such an id loses the tag. Any
/// other id names an event of a slot the session left, which cannot be
/// replayed: the header goes, and the reconnecting GET opens a fresh stream on
/// the new session. (Passed on, the new server answers an id it never issued
/// with a stream that ends at once, and the Python SDK client resumes it
/// again and again, never getting a live stream.)
pub fn last_event_id(headers: &mut HeaderMap, prefix: &str) {
    let Some(v) = headers.get(LAST_EVENT_ID) else {
        return;
    };
    let inner = v
        .as_bytes()
        .strip_prefix(prefix.as_bytes())
        .filter(|i| !i.is_empty())
        .and_then(|i| HeaderValue::from_bytes(i).ok());
    match inner {
        Some(inner) => {
            headers.insert(LAST_EVENT_ID, inner);
        }
        None => {
            headers.remove(LAST_EVENT_ID);
        }
    }
}

/// Whether a session pinned to `slot` must move: its slot is not serving and
/// a drain deadline (or `drain --migrate`) cut it. Retired and restarted slots
/// never reach here: their sessions are `SessionGone` already.
pub fn must_move(slot: &Slot) -> bool {
    slot.state != SlotState::Serving && slot.stats.is_cut()
}

/// Where a migrated session lives now on `table`, if that slot still takes it.
pub fn current(table: &Table, c: &Captured) -> Option<(Arc<Slot>, HeaderValue)> {
    let moved = c.moved.load_full()?;
    let slot = table.get(&moved.slot)?;
    (slot.generation == moved.generation && slot.state.accepts_pinned() && !must_move(slot))
        .then(|| (Arc::clone(slot), moved.inner.clone()))
}

/// Where a session continues, and whether this call moved it (else a
/// concurrent request of the same session did, while this one waited).
pub type Migrated = (Arc<Slot>, HeaderValue, bool);

/// Moves the captured session `c` to a serving slot (not `avoid`): replays
/// its `initialize`, `notifications/initialized` and shaping requests there.
/// A move to upstream session `stale` (one its slot answered 404: its
/// server lost it) is no move: the session is replayed again.
/// `template` is the client's current request head, whose headers
/// (authorization, accept, content type) the replay reuses.
///
/// In a fleet (`mirror`) a session moves once for all instances: the fleet's
/// record is read first (another instance may have moved it: that move is
/// taken, nothing is replayed), and the move this replay makes is recorded
/// only if no other instance recorded one meanwhile; if one did, its move is
/// taken and the upstream session this replay opened is ended (a `DELETE`,
/// sent off the request's path). A fleet that cannot be asked does not stop
/// the move: the client is served, and the failure logged.
pub async fn migrate(
    tables: &crate::table::Tables,
    c: &Captured,
    avoid: Option<&str>,
    stale: Option<&HeaderValue>,
    template: &HeaderMap,
    path: &Uri,
    mirror: Option<&dyn Mirror>,
) -> Result<Migrated, MigrateFailure> {
    let _one = c.replaying.lock().await;
    // Another request of this session may have moved it meanwhile (not away
    // from `avoid`, the slot that just refused this request, nor to the
    // upstream session that was just found lost).
    let here = |c: &Captured| {
        current(&tables.load(), c)
            .filter(|(slot, inner)| avoid != Some(&*slot.name) && stale != Some(inner))
    };
    if let Some((slot, inner)) = here(c) {
        return Ok((slot, inner, false));
    }
    let mut fleet = None;
    if let Some(m) = mirror {
        match m.move_of(&c.id).await {
            Ok(known) => {
                if let Some(to) = &known.to {
                    c.adopt_move(to);
                    if let Some((slot, inner)) = here(c) {
                        return Ok((slot, inner, false));
                    }
                }
                fleet = Some(known.revision);
            }
            Err(()) => tracing::warn!("the fleet's record of a session could not be read: the session moves here without it (another instance may move it too)"),
        }
    }
    let slot = {
        let table = tables.load();
        let picked = match avoid {
            Some(a) => table.pick_other(a),
            None => table.pick(),
        };
        Arc::clone(picked.ok_or(MigrateFailure::NoSlot)?)
    };
    let inner = replay(&slot, c, template, path).await?;
    let ours = Arc::new(Moved {
        slot: Arc::clone(&slot.name),
        generation: slot.generation,
        inner: inner.clone(),
    });
    c.set_moved(Arc::clone(&ours));
    if let (Some(m), Some(revision)) = (mirror, fleet) {
        let to = c.moved_to();
        let recorded = match &to {
            Some(to) => m.record_move(&c.id, revision, to).await,
            None => Err(()),
        };
        match recorded {
            Ok(None) => {}
            Ok(Some(first)) => {
                // Another instance moved it while this one replayed: one
                // upstream session for all instances, theirs.
                if let Some(to) = &first.to {
                    c.adopt_move(to);
                    if let Some((theirs, their_inner)) = here(c) {
                        tracing::info!(to = %theirs.name, "another instance of the fleet moved this session first: its move is taken");
                        // The session this replay opened serves no one:
                        // closed, so that the slot does not keep it.
                        let headers = replay_headers(template, &slot);
                        tokio::spawn(close(slot, headers, path.clone(), inner));
                        return Ok((theirs, their_inner, false));
                    }
                }
                tracing::warn!("another instance of the fleet recorded a move of this session to a slot this instance cannot route to: this replay is kept");
                c.set_moved(ours);
            }
            Err(()) => {
                tracing::warn!(to = %slot.name, "the fleet could not record this session's move: other instances may move it again")
            }
        }
    }
    Ok((slot, inner, true))
}

/// Headers of the client's request a replay carries: who the client is (a
/// server may check the same credentials on `initialize`), never anything
/// about the old session, the old body or the connection.
const CARRIED: [header::HeaderName; 4] = [
    header::AUTHORIZATION,
    header::COOKIE,
    header::USER_AGENT,
    header::ORIGIN,
];

/// Headers of a replayed request.
pub(crate) fn replay_headers(template: &HeaderMap, slot: &Slot) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(CARRIED.len() + 3);
    for name in CARRIED {
        for v in template.get_all(&name) {
            h.append(name.clone(), v.clone());
        }
    }
    h.insert(header::HOST, slot.host_header.clone());
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::ACCEPT,
        HeaderValue::from_static("application/json, text/event-stream"),
    );
    h
}

async fn send(
    slot: &Slot,
    headers: &HeaderMap,
    path: &Uri,
    body: Bytes,
) -> Result<(StatusCode, HeaderMap, Bytes), MigrateFailure> {
    send_as(Method::POST, slot, headers, path, body).await
}

async fn send_as(
    method: Method,
    slot: &Slot,
    headers: &HeaderMap,
    path: &Uri,
    body: Bytes,
) -> Result<(StatusCode, HeaderMap, Bytes), MigrateFailure> {
    // Origin form: the slot's pool knows where to send it.
    let uri = Uri::try_from(path.path()).map_err(|_| MigrateFailure::Refused)?;
    // `Parts` has no constructor of its own.
    let (mut head, ()) = Request::new(()).into_parts();
    head.method = method;
    head.uri = uri;
    head.headers = headers.clone();
    let resp = match slot
        .client
        .send(
            &slot.scheme,
            &slot.authority,
            &head,
            crate::upstream::ForwardBody::from(body),
            None,
            crate::upstream::client::Wait {
                period: REPLAY_TIMEOUT,
                body: &BodyWatch::default(),
            },
            crate::upstream::client::Answer::Map,
        )
        .await
    {
        Ok(r) => r,
        Err(SendError::Upstream { .. } | SendError::ClientBody(_)) => {
            return Err(MigrateFailure::Upstream)
        }
    };
    let (parts, body) = resp.into_parts();
    let limited = http_body_util::Limited::new(body, MAX_REPLY);
    let bytes = match tokio::time::timeout(REPLAY_TIMEOUT, limited.collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        _ => return Err(MigrateFailure::Upstream),
    };
    Ok((parts.status, parts.headers, bytes))
}

/// Ends upstream session `inner` on `slot` (a `DELETE`, as a client ends
/// its session): one a lost race of replays opened.
async fn close(slot: Arc<Slot>, mut headers: HeaderMap, path: Uri, inner: HeaderValue) {
    headers.insert(MCP_SESSION_ID, inner);
    headers.remove(header::CONTENT_TYPE);
    match send_as(Method::DELETE, &slot, &headers, &path, Bytes::new()).await {
        Ok((status, _, _)) => {
            tracing::info!(slot = %slot.name, status = status.as_u16(), "closed the upstream session a raced replay opened (DELETE)")
        }
        Err(cause) => {
            tracing::info!(slot = %slot.name, %cause, "the upstream session a raced replay opened could not be closed; it idles out on its slot")
        }
    }
}

/// The first JSON-RPC message of a JSON or SSE answer.
fn first_message(body: &[u8]) -> Option<Value> {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return Some(v);
    }
    let text = std::str::from_utf8(body).ok()?;
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .find_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
}

async fn replay(
    slot: &Slot,
    c: &Captured,
    template: &HeaderMap,
    path: &Uri,
) -> Result<HeaderValue, MigrateFailure> {
    let mut headers = replay_headers(template, slot);
    let (status, h, body) = send(slot, &headers, path, c.init.clone()).await?;
    if status.is_server_error() {
        // The slot failed, as a connection it refused: the next request of
        // the session may find it well.
        return Err(MigrateFailure::Upstream);
    }
    let Some(inner) = h
        .get(MCP_SESSION_ID)
        .cloned()
        .filter(|_| status.is_success())
    else {
        return Err(MigrateFailure::Refused);
    };
    let msg = first_message(&body).ok_or(MigrateFailure::Refused)?;
    if msg.get("error").is_some() {
        return Err(MigrateFailure::Refused);
    }
    headers.insert(MCP_SESSION_ID, inner.clone());
    if let Some(v) = msg
        .pointer("/result/protocolVersion")
        .and_then(Value::as_str)
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        headers.insert(MCP_PROTOCOL_VERSION, v);
    }
    let initialized =
        Bytes::from_static(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
    let (status, _, _) = send(slot, &headers, path, initialized).await?;
    if status.is_server_error() {
        return Err(MigrateFailure::Upstream);
    }
    if !status.is_success() {
        return Err(MigrateFailure::Refused);
    }
    let shaping = c.kept().shaping.clone();
    for body in shaping {
        // A refused shaping request leaves the session as the slot has it:
        // the request itself was answered once already, on the old slot.
        let (status, _, _) = send(slot, &headers, path, body).await?;
        if !status.is_success() {
            tracing::debug!(slot = %slot.name, status = status.as_u16(), "a replayed session-shaping request was refused");
        }
    }
    Ok(inner)
}

/// What a buffered request body says, read only when the proxy needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Initialize,
    /// `logging/setLevel`, `resources/subscribe`, `resources/unsubscribe`.
    Shaping,
    Other,
}

/// What the proxy reads of a buffered JSON-RPC request: its method and its
/// id, borrowed from the body; `params` and every other member are skipped
/// by the parser without being built (a `Value` tree of the whole body cost
/// about 8,000 instructions per request, bench/PROFILE.md).
#[derive(serde::Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    method: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<&'a serde_json::value::RawValue>,
}

/// The method of a buffered JSON-RPC body, and its id as JSON text (`None`
/// for a notification, a batch, a `null` or structured id, or anything
/// unparsable). One parse for both.
pub fn read(body: &[u8]) -> (Kind, Option<Bytes>) {
    let Ok(head) = serde_json::from_slice::<Head<'_>>(body) else {
        return (Kind::Other, None);
    };
    let Some(method) = head.method else {
        return (Kind::Other, None);
    };
    let kind = match &*method {
        "initialize" => Kind::Initialize,
        "logging/setLevel" | "resources/subscribe" | "resources/unsubscribe" => Kind::Shaping,
        _ => Kind::Other,
    };
    // A string or a number, as the client wrote it (valid JSON either way).
    let id = head.id.map(|raw| raw.get()).filter(|t| {
        t.starts_with('"') || t.starts_with('-') || t.starts_with(|c: char| c.is_ascii_digit())
    });
    (kind, id.map(|t| Bytes::copy_from_slice(t.as_bytes())))
}

/// The kind of a buffered JSON-RPC body, as [`read`] tells it, without
/// parsing a body that cannot be of a kind the store keeps: one where none of
/// those methods' names is written out. A JSON string may spell a character
/// as an escape (`logging\/setLevel`, `initi\u0061lize`), so a body with a
/// backslash is parsed whatever it holds. Most requests (a `tools/call`)
/// skip the parse (bench/PROFILE.md §28).
pub fn kind(body: &[u8]) -> Kind {
    use memchr::memmem::Finder;
    use std::sync::LazyLock;
    static NAMES: LazyLock<[Finder<'static>; 3]> = LazyLock::new(|| {
        [
            Finder::new("initialize"),
            Finder::new("logging/setLevel"),
            Finder::new("resources/"),
        ]
    });
    let may_be =
        memchr::memchr(b'\\', body).is_some() || NAMES.iter().any(|name| name.find(body).is_some());
    if may_be {
        read(body).0
    } else {
        Kind::Other
    }
}

/// The id of a buffered JSON-RPC request as JSON text ([`read`]): for the
/// error of a call the proxy cuts.
pub fn call_id(body: &[u8]) -> Option<Bytes> {
    read(body).1
}

/// The JSON-RPC error for a call the proxy cut (drain deadline, `drain
/// --migrate`, a slot that went away mid-call).
pub fn interrupted(id: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(160 + id.len());
    out.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
    out.extend_from_slice(id);
    out.extend_from_slice(
        br#","error":{"code":-32603,"message":"the call was interrupted by a deploy (its server went away before answering); it was not retried"}}"#,
    );
    Bytes::from(out)
}

/// [`interrupted`] as one SSE event.
pub fn interrupted_event(id: &[u8]) -> Bytes {
    let msg = interrupted(id);
    let mut out = Vec::with_capacity(msg.len() + 24);
    out.extend_from_slice(b"event: message\ndata: ");
    out.extend_from_slice(&msg);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_id(body: &[u8]) -> Option<Bytes> {
        call_id(body)
    }

    /// A mirror that keeps nothing but the ids it was told ended: the store
    /// acts as in a fleet.
    #[derive(Debug, Default)]
    struct NoFleet {
        ended: std::sync::Mutex<Vec<Box<[u8]>>>,
    }

    impl Mirror for NoFleet {
        fn changed(&self, _: &Arc<Captured>) {}
        fn ended(&self, id: &[u8]) {
            self.ended.lock().unwrap().push(id.into());
        }
        fn fetch<'a>(
            &'a self,
            _: &'a [u8],
        ) -> MirrorFuture<'a, Result<Option<Exported>, Unreadable>> {
            Box::pin(async { Ok(None) })
        }
        fn move_of<'a>(&'a self, _: &'a [u8]) -> MirrorFuture<'a, Result<FleetMove, ()>> {
            Box::pin(async { Err(()) })
        }
        fn record_move<'a>(
            &'a self,
            _: &'a [u8],
            _: i64,
            _: &'a ExportedMove,
        ) -> MirrorFuture<'a, Result<Option<FleetMove>, ()>> {
            Box::pin(async { Err(()) })
        }
    }

    /// In a fleet, the ids of sessions held elsewhere that had a request
    /// here are noted once each for the renewal, and what a client can make
    /// up is bounded: ids over 256 bytes are not noted, nor more than 4,096
    /// per period; a session held here is never noted, nor any outside a
    /// fleet.
    #[test]
    fn foreign_ids_are_noted_once_and_bounded() {
        let stats = Arc::new(ProxyStats::default());
        let s = Sessions::new(100, Duration::from_secs(3600), stats);
        assert!(!s.touch_streamable(b"mf1.blue.1.a"));
        assert!(s.take_foreign().is_empty(), "not in a fleet");

        s.set_mirror(Arc::new(NoFleet::default()));
        let held = HeaderValue::from_static("mf1.blue.1.held");
        assert!(s.capture(&held, Bytes::from_static(b"{}")));
        s.touch_streamable(held.as_bytes());
        s.touch_streamable(b"mf1.blue.1.a");
        s.touch_streamable(b"mf1.blue.1.a");
        s.touch(b"mf1.blue.1.legacy");
        s.touch_streamable(format!("mf1.blue.1.{}", "x".repeat(300)).as_bytes());
        let noted = s.take_foreign();
        assert_eq!(noted, [b"mf1.blue.1.a".to_vec().into_boxed_slice()]);
        assert!(s.take_foreign().is_empty(), "taken once");

        for n in 0..5_000 {
            s.touch_streamable(format!("mf1.blue.1.{n}").as_bytes());
        }
        assert_eq!(s.take_foreign().len(), MAX_FOREIGN);
    }

    /// A 404 for an id this instance does not hold (another's session, or
    /// one a client made up) ends nothing in the fleet and takes the id off
    /// the renewal; a 404 for a session held here, or a DELETE its slot
    /// took, ends it in the fleet. Before, every 404 queued a delete in etcd:
    /// one write per made-up id.
    #[test]
    fn a_session_not_found_ends_in_the_fleet_only_where_it_was_held() {
        let stats = Arc::new(ProxyStats::default());
        let s = Sessions::new(100, Duration::from_secs(3600), stats);
        let fleet = Arc::new(NoFleet::default());
        s.set_mirror(fleet.clone());
        let held = HeaderValue::from_static("mf1.blue.1.held");
        assert!(s.capture(&held, Bytes::from_static(b"{}")));
        s.touch_streamable(b"mf1.blue.1.made-up");
        s.touch_streamable(b"mf1.blue.1.elsewhere");
        s.remove(b"mf1.blue.1.made-up", false);
        assert!(fleet.ended.lock().unwrap().is_empty(), "nothing ends");
        assert_eq!(
            s.take_foreign(),
            [b"mf1.blue.1.elsewhere".to_vec().into_boxed_slice()],
            "the id not found is not renewed"
        );
        s.remove(b"mf1.blue.1.elsewhere", true);
        s.remove(held.as_bytes(), false);
        assert_eq!(
            *fleet.ended.lock().unwrap(),
            [
                b"mf1.blue.1.elsewhere".to_vec().into_boxed_slice(),
                b"mf1.blue.1.held".to_vec().into_boxed_slice()
            ]
        );
        assert!(s.get(held.as_bytes()).is_none());
    }

    /// Every byte a session holds counts in the store's bytes while it is
    /// held, from wherever it is held: a legacy session's noted calls (their
    /// ids, up to 64 KiB of JSON text each, 16 kept) count, and what is
    /// added to a session the store has just forgotten (a request or a
    /// stream still holds it) goes off with the session itself. Before, the
    /// ids counted nowhere (16 × 64 KiB per session, past the 256 MiB
    /// bound), and what was added after the store forgot a session counted
    /// forever.
    #[test]
    fn held_bytes_count_what_a_session_holds_until_it_is_dropped() {
        let stats = Arc::new(ProxyStats::default());
        let s = Sessions::new(100, Duration::from_secs(3600), stats);
        let id = HeaderValue::from_static("b1.g1.legacy");
        let init = Bytes::from_static(br#"{"id":0,"method":"initialize"}"#);
        assert!(s.capture_legacy(&id, init.clone()));
        let c = s.get(id.as_bytes()).expect("captured");
        let call = |n: usize| Bytes::from(format!("\"{n:0>61440}\""));
        for n in 0..20 {
            c.note_call(call(n));
        }
        let each = call(0).len();
        assert_eq!(s.bytes(), init.len() + 16 * each, "the last 16 ids count");
        c.answered(&call(19));
        assert_eq!(s.bytes(), init.len() + 15 * each);
        assert_eq!(c.take_pending().len(), 15);
        assert_eq!(s.bytes(), init.len());

        // Forgotten by the store while held: what is added now goes with it.
        c.note_call(call(1));
        s.remove(id.as_bytes(), true);
        c.note_call(call(2));
        assert_eq!(s.bytes(), init.len() + 2 * each, "held still");
        drop(c);
        assert_eq!(s.bytes(), 0, "nothing held once the session is gone");
    }

    /// What one process exports another imports whole: bodies, shaping,
    /// unanswered calls, the move and the idle clock; a session the
    /// importer holds keeps its own, gaining only the move; the store's
    /// bounds hold.
    #[test]
    fn exported_sessions_are_imported_whole_within_the_bounds() {
        let stats = Arc::new(ProxyStats::default());
        let old = Sessions::new(100, Duration::from_secs(3600), Arc::clone(&stats));
        let id = |n: u32| HeaderValue::from_str(&format!("b1.g1.s{n}")).expect("id");
        for n in 0..3 {
            assert!(old.capture(
                &id(n),
                Bytes::from(format!(r#"{{"id":{n},"method":"initialize"}}"#))
            ));
        }
        old.shape(
            b"b1.g1.s0",
            Bytes::from_static(br#"{"method":"logging/setLevel"}"#),
        );
        old.note_unanswered(
            b"b1.g1.s1",
            Bytes::from_static(b"b1.g1.e9"),
            Bytes::from_static(b"data: x\n\n"),
        );
        let moved = Arc::new(Moved {
            slot: "green".into(),
            generation: 2,
            inner: HeaderValue::from_static("upstream-7"),
        });
        old.get(b"b1.g1.s2")
            .expect("s2")
            .set_moved(Arc::clone(&moved));
        let (list, skipped) = old.export();
        assert_eq!((list.len(), skipped), (3, 0));

        let new = Sessions::new(
            100,
            Duration::from_secs(3600),
            Arc::new(ProxyStats::default()),
        );
        // s2 came to the new process before the import: its own capture stays.
        assert!(new.capture(&id(2), Bytes::from_static(b"{\"here\":1}")));
        assert_eq!(new.import(list.clone()), 2);
        assert_eq!(new.len(), 3);
        let s0 = new.get(b"b1.g1.s0").expect("s0");
        assert_eq!(
            &s0.init[..],
            list.iter()
                .find(|x| x.id == "b1.g1.s0")
                .expect("s0")
                .init
                .as_bytes()
        );
        assert_eq!(s0.kept().shaping.len(), 1);
        assert_eq!(
            new.take_unanswered(b"b1.g1.s1", b"b1.g1.e9").as_deref(),
            Some(&b"data: x\n\n"[..])
        );
        let s2 = new.get(b"b1.g1.s2").expect("s2");
        assert_eq!(
            &s2.init[..],
            b"{\"here\":1}",
            "the importer's own capture stays"
        );
        let m = s2.moved.load_full().expect("the move came over");
        assert_eq!(
            (&*m.slot, m.generation, m.inner.as_bytes()),
            ("green", 2, &b"upstream-7"[..])
        );
        // Held bytes count what came over: an export of the new store
        // carries as much as the old one's, less s2's own body.
        let (again, _) = new.export();
        assert_eq!(again.len(), 3);
        assert!(new.bytes() > 0);

        // Bounds: a full store takes no more; an idle one past migrate_idle
        // and an oversized body are left out.
        let small = Sessions::new(1, Duration::from_secs(60), Arc::new(ProxyStats::default()));
        let mut list = list;
        list[0].idle_s = 61;
        list[1].init = " ".repeat(MAX_BODY as usize + 1);
        assert_eq!(small.import(list), 1);
        assert_eq!(small.len(), 1);
        // A long idle clock carries over: the session expires on time.
        let clock = Sessions::new(10, Duration::from_secs(60), Arc::new(ProxyStats::default()));
        assert_eq!(clock.import(vec![idle_for("b1.g1.old", 59)]), 1);
        let (out, _) = clock.export();
        assert!(out[0].idle_s >= 59, "{out:?}");
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(clock.expire(), 1, "expired on the old process's clock");
    }

    /// A session handed over with `idle_s` seconds on its idle clock.
    fn idle_for(id: &str, idle_s: u64) -> Exported {
        Exported {
            id: id.into(),
            init: "{}".into(),
            shaping: vec![],
            unanswered: vec![],
            moved: None,
            idle_s,
        }
    }

    /// A session with a stream open is in use, however old its last request:
    /// the sweep keeps it, the fleet's renewal takes it (`used_within`), an
    /// upgrade hands it over as used now; once its stream is gone it idles
    /// from its last request again.
    #[test]
    fn an_open_stream_keeps_its_session_in_use() {
        let s = Sessions::new(10, Duration::from_secs(60), Arc::new(ProxyStats::default()));
        assert_eq!(s.import(vec![idle_for("mf1.blue.1.listening", 59)]), 1);
        let id = b"mf1.blue.1.listening";
        let key = s.key(id);
        let held = {
            let map = s.shard(key).read().unwrap();
            StreamHold::new(Arc::clone(&map[&key].captured))
        };
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(s.expire(), 0, "kept while its stream is open");
        assert_eq!(s.used_within(Duration::from_secs(1)).len(), 1);
        assert_eq!(s.export().0[0].idle_s, 0);
        drop(held);
        assert!(s.used_within(Duration::from_secs(1)).is_empty());
        assert!(s.export().0[0].idle_s >= 60);
        assert_eq!(
            s.expire(),
            1,
            "idle from its last request once the stream is gone"
        );
    }

    /// `kind` skips the parse only where the parse finds no kept kind:
    /// whatever the spelling, escapes included, the two agree.
    #[test]
    fn the_kind_read_without_a_parse_is_the_parsed_kind() {
        let bodies: &[&[u8]] = &[
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#,
            br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            br#"{"jsonrpc":"2.0","id":2,"method":"logging/setLevel","params":{"level":"info"}}"#,
            br#"{"jsonrpc":"2.0","id":2,"method":"logging\/setLevel","params":{"level":"info"}}"#,
            br#"{"jsonrpc":"2.0","id":3,"method":"resources/subscribe","params":{"uri":"a"}}"#,
            br#"{"jsonrpc":"2.0","id":3,"method":"resources\/unsubscribe","params":{"uri":"a"}}"#,
            br#"{"jsonrpc":"2.0","id":3,"method":"resources/list"}"#,
            br#"{"jsonrpc":"2.0","id":4,"method":"\u0069nitialize"}"#,
            br#"{"method" : "initialize" , "id" : 5}"#,
            br#"{"jsonrpc":"2.0","id":6,"method":"ping"}"#,
            br#"[{"jsonrpc":"2.0","id":7,"method":"initialize"}]"#,
            b"not json",
            b"",
        ];
        for body in bodies {
            assert_eq!(
                kind(body),
                read(body).0,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(kind(bodies[4]), Kind::Shaping, "an escaped slash");
        assert_eq!(kind(bodies[8]), Kind::Initialize, "an escaped letter");
    }

    #[test]
    fn kinds_and_ids_from_bodies() {
        let init = br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{}}"#;
        assert_eq!(kind(init), Kind::Initialize);
        assert_eq!(
            kind(br#"{"jsonrpc":"2.0","id":"a","method":"logging/setLevel","params":{"level":"debug"}}"#),
            Kind::Shaping
        );
        // A tool call that only mentions a method name stays a tool call.
        assert_eq!(
            kind(
                br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"initialize"}}"#
            ),
            Kind::Other
        );
        assert_eq!(request_id(init).as_deref(), Some(&b"0"[..]));
        assert_eq!(
            request_id(br#"{"jsonrpc":"2.0","id":"x-1","method":"ping"}"#).as_deref(),
            Some(&br#""x-1""#[..])
        );
        assert_eq!(
            request_id(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#),
            None
        );
        // Ids as written; null, structured ids, batches and junk have none.
        assert_eq!(
            request_id(br#"{"id":-12.5,"method":"ping","params":{"a":[1,{"b":null}]}}"#).as_deref(),
            Some(&b"-12.5"[..])
        );
        assert_eq!(
            request_id(br#"{"id":"a\"b","method":"ping"}"#).as_deref(),
            Some(&br#""a\"b""#[..])
        );
        for no_id in [
            &br#"{"id":null,"method":"ping"}"#[..],
            br#"{"id":{"x":1},"method":"ping"}"#,
            br#"{"id":1}"#,
            br#"[{"id":1,"method":"ping"}]"#,
            br#"{"id":1,"method":"ping""#,
        ] {
            assert_eq!(
                request_id(no_id),
                None,
                "{}",
                String::from_utf8_lossy(no_id)
            );
        }
        assert_eq!(
            kind(br#"{"method":"initiali\u007ae","id":1}"#),
            Kind::Initialize,
            "an escaped method name is read as JSON reads it"
        );
        let v: Value = serde_json::from_slice(&interrupted(b"7")).expect("json");
        assert_eq!(v["id"], 7);
        assert_eq!(v["error"]["code"], -32603);
    }

    #[test]
    fn captured_bodies_do_not_keep_the_buffer_they_were_read_into() {
        let stats = Arc::new(ProxyStats::default());
        let s = Sessions::new(2, Duration::from_secs(3600), stats);
        // A request body as hyper hands it over: a slice of a larger buffer.
        let buffer = Bytes::from(vec![b'x'; 16 * 1024]);
        let a = HeaderValue::from_static("mf1.blue.0.a");
        assert!(s.capture(&a, buffer.slice(..200)));
        s.shape(a.as_bytes(), buffer.slice(200..300));
        let c = s.get(a.as_bytes()).expect("captured");
        assert!(
            c.init.is_unique(),
            "the initialize body shares the read buffer"
        );
        let kept = c.kept();
        let shaping = &kept.shaping;
        assert!(
            shaping[0].is_unique(),
            "a shaping body shares the read buffer"
        );
        assert_eq!((c.init.len(), shaping[0].len()), (200, 100));
        drop(buffer);
    }

    #[test]
    fn an_unanswered_call_is_given_once_to_the_resumption_that_names_its_stream() {
        let stats = Arc::new(ProxyStats::default());
        let s = Sessions::new(2, Duration::from_secs(3600), Arc::clone(&stats));
        let a = HeaderValue::from_static("mf1.blue.0.a");
        assert!(s.capture(&a, Bytes::from_static(b"{}")));
        let event = || interrupted_event(b"7");
        // Another session's call, and one of a session never captured: not kept.
        s.note_unanswered(b"mf1.blue.0.x", Bytes::from_static(b"ev-1"), event());
        assert_eq!(s.bytes(), 2);
        for i in 0..MAX_UNANSWERED + 2 {
            s.note_unanswered(a.as_bytes(), Bytes::from(format!("ev-{i:02}")), event());
        }
        let each = "ev-00".len() + event().len();
        assert_eq!(s.bytes(), 2 + MAX_UNANSWERED * each, "bounded, counted");
        assert_eq!(stats.captured_bytes(), s.bytes() as u64);
        assert_eq!(
            s.take_unanswered(a.as_bytes(), b"ev-01"),
            None,
            "the oldest went"
        );
        assert_eq!(s.take_unanswered(a.as_bytes(), b"ev-05"), Some(event()));
        assert_eq!(s.take_unanswered(a.as_bytes(), b"ev-05"), None, "once");
        assert_eq!(s.take_unanswered(a.as_bytes(), b"ev-99"), None);
        assert_eq!(s.bytes(), 2 + (MAX_UNANSWERED - 1) * each);
        s.remove(a.as_bytes(), true);
        assert_eq!(s.bytes(), 0, "a session's unanswered calls go with it");
    }

    #[test]
    fn an_id_is_found_by_its_key_and_its_bytes() {
        let s = Sessions::new(8, Duration::from_secs(3600), Arc::default());
        let a = HeaderValue::from_static("mf1.blue.0.a");
        let b = HeaderValue::from_static("mf1.blue.0.b");
        assert!(s.capture(&b, Bytes::from_static(b"{}")));
        // Put b's session under a's key, as two ids sharing a key would be:
        // a's requests may touch its idle clock, but never get or remove it.
        let (ka, kb) = (s.key(a.as_bytes()), s.key(b.as_bytes()));
        assert_ne!(ka, kb);
        let entry = s.shard(kb).write().expect("lock").remove(&kb).expect("b");
        s.shard(ka).write().expect("lock").insert(ka, entry);
        assert!(s.get(a.as_bytes()).is_none());
        s.touch(a.as_bytes());
        s.remove(a.as_bytes(), true);
        assert_eq!(s.len(), 1, "a's DELETE must not forget b");
        let held = s.shard(ka).read().expect("lock");
        assert_eq!(&*held.get(&ka).expect("kept").captured.id, b.as_bytes());
        drop(held);
        // And the id with its own key is found.
        assert!(s.capture(&a, Bytes::from_static(b"{}")));
        let got = s.get(a.as_bytes()).expect("a");
        assert_eq!(&*got.id, a.as_bytes());
    }

    #[test]
    fn the_store_is_bounded_and_forgets_ended_and_idle_sessions() {
        let stats = Arc::new(ProxyStats::default());
        let s = Sessions::new(2, Duration::from_secs(3600), Arc::clone(&stats));
        let a = HeaderValue::from_static("mf1.blue.0.a");
        let b = HeaderValue::from_static("mf1.blue.0.b");
        let c = HeaderValue::from_static("mf1.blue.0.c");
        assert!(s.capture(&a, Bytes::from_static(b"{}")));
        assert!(s.capture(&b, Bytes::from_static(b"{}")));
        assert!(!s.capture(&c, Bytes::from_static(b"{}")), "full");
        assert_eq!((s.len(), stats.captured_sessions()), (2, 2));
        s.shape(a.as_bytes(), Bytes::from_static(b"12345"));
        assert_eq!(s.bytes(), 2 + 2 + 5);
        s.remove(a.as_bytes(), true);
        assert!(s.get(a.as_bytes()).is_none());
        assert_eq!(s.len(), 1);
        // Idle expiry: zero idle forgets everything not touched this second.
        let zero = Sessions::new(2, Duration::ZERO, Arc::clone(&stats));
        zero.capture(&a, Bytes::from_static(b"{}"));
        assert_eq!(zero.expire(), 1);
        assert!(zero.is_empty());
    }
}
