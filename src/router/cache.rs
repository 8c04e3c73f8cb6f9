//! Sharded, bounded, thread-safe cache of classifications keyed by query text.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use super::classify::{classify, Classification, ClassifierConfig, StatementKind};

/// Texts longer than this are classified every time: they are rarely repeated and
/// would make the cache's memory use unpredictable.
pub const MAX_CACHED_LEN: usize = 8 * 1024;

const SHARDS: usize = 16;

/// FxHash (the rustc hasher): one rotate, xor and multiply per 8 bytes. Not DoS
/// resistant, which is acceptable here because a collision only costs a recompute.
#[derive(Debug, Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(<[u8; 8]>::try_from(chunk).unwrap_or([0; 8])));
        }
        let mut tail = [0u8; 8];
        for (slot, b) in tail.iter_mut().zip(chunks.remainder()) {
            *slot = *b;
        }
        self.add(u64::from_le_bytes(tail));
        self.add(bytes.len() as u64);
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

/// `BuildHasher` for [`FxHasher`].
pub type FxBuildHasher = BuildHasherDefault<FxHasher>;

fn hash_text(sql: &str) -> u64 {
    let mut h = FxHasher::default();
    h.write(sql.as_bytes());
    h.finish()
}

struct Entry {
    text: Box<str>,
    value: Arc<Classification>,
}

/// Keyed by the text's hash so each lookup hashes the text once; the stored text is
/// compared on hit, and a colliding text simply replaces the entry.
type Shard = HashMap<u64, Entry, FxBuildHasher>;

/// The kinds [`super::plain_class`] returns, in the order of [`ClassifierCache`]'s `plain`.
const PLAIN_KINDS: [StatementKind; 4] =
    [StatementKind::Select, StatementKind::Insert, StatementKind::Update, StatementKind::Delete];

/// Caches [`classify`] results. `Send + Sync`; share it behind an `Arc`.
///
/// Eviction: when a shard is full, the shard is cleared. Typical clients send a
/// bounded set of parameterised texts that fit and never evict; clients that inline
/// literals produce endless distinct texts that no policy would help. Clearing keeps
/// lookups free of LRU bookkeeping and the worst case bounded.
///
/// The cache assumes one [`ClassifierConfig`] for its whole life: build a new cache
/// (or [`ClassifierCache::clear`]) when the config changes.
pub struct ClassifierCache {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    /// What every [`super::plain_class`] text classifies as, by kind, under any config.
    plain: [Arc<Classification>; 4],
}

impl ClassifierCache {
    /// A cache holding about `capacity` texts in total (split evenly over 16 shards);
    /// `0` disables caching.
    pub fn new(capacity: usize) -> Self {
        let per_shard = capacity.div_ceil(SHARDS);
        let shards =
            (0..SHARDS).map(|_| Mutex::new(Shard::with_capacity_and_hasher(0, FxBuildHasher::default()))).collect();
        let plain = PLAIN_KINDS.map(|kind| Arc::new(classify(super::plain_sample(kind), &ClassifierConfig::default())));
        ClassifierCache { shards, per_shard, plain }
    }

    /// The classification of a [`super::plain_class`] text of `kind`: one pure read for a
    /// replica, or one pure write (`None` for a kind `plain_class` never returns).
    pub fn plain(&self, kind: StatementKind) -> Option<Arc<Classification>> {
        PLAIN_KINDS.iter().position(|k| *k == kind).map(|slot| Arc::clone(&self.plain[slot]))
    }

    fn shard(&self, hash: u64) -> Option<MutexGuard<'_, Shard>> {
        // The top bits: the multiply in FxHash mixes them best.
        let shard = self.shards.get((hash >> 60) as usize % SHARDS)?;
        // A panic while holding the lock cannot leave a map half-updated in a way that
        // matters: entries are whole values, so a poisoned lock is still usable.
        Some(shard.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// The cached classification of `sql`, or a fresh one (then cached).
    pub fn classify(&self, sql: &str, cfg: &ClassifierConfig) -> Arc<Classification> {
        if sql.len() > MAX_CACHED_LEN || self.per_shard == 0 {
            return Arc::new(classify(sql, cfg));
        }
        let hash = hash_text(sql);
        if let Some(shard) = self.shard(hash) {
            if let Some(e) = shard.get(&hash).filter(|e| &*e.text == sql) {
                return Arc::clone(&e.value);
            }
        }
        // Classify outside the lock so a slow text never blocks other lookups.
        let value = Arc::new(classify(sql, cfg));
        if let Some(mut shard) = self.shard(hash) {
            if shard.len() >= self.per_shard && !shard.contains_key(&hash) {
                shard.clear();
            }
            let entry = Entry { text: sql.into(), value: Arc::clone(&value) };
            shard.insert(hash, entry);
        }
        value
    }

    /// Number of cached texts.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len()).sum()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every cached entry.
    pub fn clear(&self) {
        for shard in &self.shards {
            shard.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clear();
        }
    }
}

impl std::fmt::Debug for ClassifierCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClassifierCache").field("len", &self.len()).field("per_shard", &self.per_shard).finish()
    }
}
