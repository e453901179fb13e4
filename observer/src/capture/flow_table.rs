//! The tracker's table of flows: where a key's entry is can be worked out, and loaded, before
//! any of the table's memory is read.
//!
//! A reading of one of tens of thousands of flows waits for main memory to find the flow's
//! entry. std's map finds an entry by reading its control bytes first, so a lookup can only
//! start loading the entry once those have arrived, and loading a batch of readings' entries
//! ahead of taking them ([`crate::agent::pipeline::look_ahead`]) waited on each lookup in turn. Here an
//! index of 8-byte buckets, open addressing with linear probing, points into a dense array of
//! entries: a key's first bucket follows from its hash alone ([`FlowTable::prefetch_bucket`]),
//! and the entry from the bucket ([`FlowTable::prefetch_entry`]), each loaded one stage ahead.

use std::hash::BuildHasher;

use observer_common::FlowKey;

use crate::fasthash::FastHash;

/// A bucket of the index: `EMPTY`, `DELETED`, or the high 32 bits of the key's hash (a tag that
/// rules out almost every other key without reading its entry) over the entry's position + 1.
type Bucket = u64;
const EMPTY: Bucket = 0;
/// Left where an entry was removed, so that probes for keys placed after it still go on.
const DELETED: Bucket = u32::MAX as u64;

/// One flow and its value.
struct Entry<V> {
    key: FlowKey,
    value: V,
}

/// Flows by key. The index is at most half full (deleted buckets included), so every probe
/// ends at an empty bucket within a few steps.
pub struct FlowTable<V> {
    /// A power of two long (or empty, before the first insert).
    index: Vec<Bucket>,
    entries: Vec<Entry<V>>,
    deleted: usize,
    hasher: FastHash,
}

impl<V> Default for FlowTable<V> {
    fn default() -> Self {
        FlowTable {
            index: Vec::new(),
            entries: Vec::new(),
            deleted: 0,
            hasher: FastHash::default(),
        }
    }
}

fn bucket(hash: u64, position: usize) -> Bucket {
    (hash & !u64::from(u32::MAX)) | (position as u64 + 1)
}

fn position(b: Bucket) -> usize {
    (b & u64::from(u32::MAX)) as usize - 1
}

fn is_entry(b: Bucket) -> bool {
    b != EMPTY && b != DELETED
}

impl<V> FlowTable<V> {
    pub fn hash(&self, key: &FlowKey) -> u64 {
        self.hasher.hash_one(key)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn mask(&self) -> usize {
        self.index.len().wrapping_sub(1)
    }

    /// The first bucket from `hash`'s on, up to the first empty one, for which `hit` holds:
    /// its number and content.
    fn probe(&self, hash: u64, mut hit: impl FnMut(Bucket) -> bool) -> Option<(usize, Bucket)> {
        let mask = self.mask();
        let mut at = hash as usize & mask;
        // At most every bucket once; the index always has an empty one, which ends it earlier.
        for _ in 0..self.index.len() {
            let b = self.index[at];
            if b == EMPTY {
                return None;
            }
            if hit(b) {
                return Some((at, b));
            }
            at = (at + 1) & mask;
        }
        None
    }

    /// Whether `b` may hold the key whose hash is `hash`: an entry with the same tag.
    fn tagged(b: Bucket, hash: u64) -> bool {
        is_entry(b) && b >> 32 == hash >> 32
    }

    /// The bucket and entry position of `key`, whose hash is `hash`.
    fn find(&self, hash: u64, key: &FlowKey) -> Option<(usize, usize)> {
        let (at, b) = self.probe(hash, |b| {
            Self::tagged(b, hash) && self.entries.get(position(b)).is_some_and(|e| e.key == *key)
        })?;
        Some((at, position(b)))
    }

    /// Starts loading the first bucket of `hash` (see [`crate::prefetch`]).
    pub fn prefetch_bucket(&self, hash: u64) {
        if let Some(b) = self.index.get(hash as usize & self.mask()) {
            crate::prefetch::object(b);
        }
    }

    /// Starts loading the entry the buckets of `hash` point to, its bucket loaded a stage before:
    /// the first whose tag matches (another key's only once in 2³² lookups: a wasted load).
    pub fn prefetch_entry(&self, hash: u64) {
        let found = self.probe(hash, |b| Self::tagged(b, hash));
        if let Some(entry) = found.and_then(|(_, b)| self.entries.get(position(b))) {
            crate::prefetch::object(entry);
        }
    }

    pub fn get(&self, key: &FlowKey) -> Option<&V> {
        self.get_hashed(self.hash(key), key)
    }

    /// [`get`](Self::get) with the key's hash already worked out.
    pub fn get_hashed(&self, hash: u64, key: &FlowKey) -> Option<&V> {
        let (_, p) = self.find(hash, key)?;
        self.entries.get(p).map(|e| &e.value)
    }

    pub fn get_mut(&mut self, key: &FlowKey) -> Option<&mut V> {
        let (_, p) = self.find(self.hash(key), key)?;
        self.entries.get_mut(p).map(|e| &mut e.value)
    }

    /// The value of `key`, made by `make` and inserted if there is none.
    pub fn get_or_insert_with(&mut self, key: FlowKey, make: impl FnOnce() -> V) -> &mut V {
        let hash = self.hash(&key);
        let p = match self.find(hash, &key) {
            Some((_, p)) => p,
            None => self.insert_new(hash, key, make()),
        };
        &mut self.entries[p].value
    }

    /// Inserts a key that is not in the table; its position in `entries`.
    fn insert_new(&mut self, hash: u64, key: FlowKey, value: V) -> usize {
        if (self.entries.len() + self.deleted + 1) * 2 > self.index.len() {
            // Twice the buckets when growing (a quarter in use after), room for as many
            // inserts again after removals.
            self.rebuild((self.entries.len() + 1) * 3);
        }
        let p = self.entries.len();
        self.entries.push(Entry { key, value });
        self.place(hash, p);
        p
    }

    /// Puts position `p` in the first free bucket of `hash` (the index has one).
    fn place(&mut self, hash: u64, p: usize) {
        let mask = self.mask();
        let mut at = hash as usize & mask;
        while is_entry(self.index[at]) {
            at = (at + 1) & mask;
        }
        if self.index[at] == DELETED {
            self.deleted -= 1;
        }
        self.index[at] = bucket(hash, p);
    }

    /// A new index of at least `buckets` buckets for the entries, without deleted buckets.
    fn rebuild(&mut self, buckets: usize) {
        self.index = vec![EMPTY; buckets.next_power_of_two().max(16)];
        self.deleted = 0;
        for p in 0..self.entries.len() {
            let hash = self.hash(&self.entries[p].key);
            self.place(hash, p);
        }
    }

    /// Removes `key`; the last entry takes its place in `entries`.
    pub fn remove(&mut self, key: &FlowKey) -> Option<V> {
        let (at, p) = self.find(self.hash(key), key)?;
        self.index[at] = DELETED;
        self.deleted += 1;
        let removed = self.entries.swap_remove(p);
        if let Some(moved) = self.entries.get(p) {
            // The entry that was last is now at `p`: its bucket must say so.
            let (hash, from) = (self.hash(&moved.key), self.entries.len());
            let found = self.probe(hash, |b| is_entry(b) && position(b) == from);
            if let Some((at, _)) = found {
                self.index[at] = bucket(hash, p);
            }
        }
        Some(removed.value)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&FlowKey, &V)> {
        self.entries.iter().map(|e| (&e.key, &e.value))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    /// A flow key for tests: `n` tells it apart.
    pub(crate) fn key(n: u16) -> FlowKey {
        FlowKey {
            cgroup_id: u64::from(n % 7),
            netns: 1,
            server_port: n,
            family: 2,
            direction: 1,
            local_addr: [0; 16],
            remote_addr: [0; 16],
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u16, u32),
        Remove(u16),
        Get(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Few distinct keys, so that inserts, removals and lookups keep meeting each other.
        prop_oneof![
            (0..300u16, any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            (0..300u16).prop_map(Op::Remove),
            (0..300u16).prop_map(Op::Get),
        ]
    }

    proptest! {
        /// Whatever the sequence of inserts and removals (growing the index, leaving deleted
        /// buckets, moving entries), the table holds exactly what a std map does.
        #[test]
        fn holds_what_a_std_map_holds(ops in proptest::collection::vec(op(), 0..2_000)) {
            let mut table = FlowTable::<u32>::default();
            let mut model = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => {
                        *table.get_or_insert_with(key(k), || v) = v;
                        model.insert(key(k), v);
                    }
                    Op::Remove(k) => prop_assert_eq!(table.remove(&key(k)), model.remove(&key(k))),
                    Op::Get(k) => prop_assert_eq!(table.get(&key(k)), model.get(&key(k))),
                }
                prop_assert_eq!(table.len(), model.len());
                // At most half the index in use: every probe ends.
                prop_assert!((table.len() + table.deleted) * 2 <= table.index.len().max(1));
            }
            let mut all: Vec<_> = table.iter().map(|(k, v)| (*k, *v)).collect();
            let mut expected: Vec<_> = model.into_iter().collect();
            all.sort_by_key(|(k, _)| (k.server_port, k.cgroup_id));
            expected.sort_by_key(|(k, _)| (k.server_port, k.cgroup_id));
            prop_assert_eq!(all, expected);
        }
    }

    #[test]
    fn an_existing_value_is_kept_not_remade() {
        let mut t = FlowTable::<u32>::default();
        *t.get_or_insert_with(key(1), || 5) += 1;
        assert_eq!(*t.get_or_insert_with(key(1), || 100), 6);
        assert_eq!(t.get_mut(&key(2)), None);
    }

    #[test]
    fn prefetching_any_hash_is_harmless_even_when_empty() {
        let mut t = FlowTable::<u32>::default();
        t.prefetch_bucket(0);
        t.prefetch_entry(u64::MAX);
        t.get_or_insert_with(key(1), || 1);
        let h = t.hash(&key(1));
        t.prefetch_bucket(h);
        t.prefetch_entry(h);
        t.prefetch_entry(h ^ (1 << 40));
        assert_eq!(t.get(&key(1)), Some(&1));
    }
}
