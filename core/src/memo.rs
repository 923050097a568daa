//! A bounded memo of recent embeddings: a query that evaluates the same embedding call
//! several times (a generic plan runs it for the ORDER BY key and again for every output
//! row; a call written twice is folded twice) runs the model once.
//!
//! An entry is found by the SHA-256 of its context (which model files were loaded, which
//! settings were in force: everything that changes the result, put together by the caller)
//! and of the input's bytes. A cryptographic digest, because a collision would return
//! another input's vector without any error, and a pooled connection serves many clients:
//! two inputs with one SHA-256 cannot be found, while a fast non-cryptographic hash can be
//! made to collide on purpose. With the CPU's SHA extensions it hashes about 1.6 GB/s
//! (`cargo run --release -p pg_vision_core --example memo_bench`), so the lookup costs a
//! small fraction of the decode it saves.
//!
//! A generic plan looks the same upload up once per row: so the memo keeps a copy of the
//! last input it hashed (when no bigger than the byte bound) and recognises it again by
//! comparing bytes, about 16 times faster than hashing them again (`memo_bench`).
//!
//! The bounds are passed to each call, so a changed setting applies at once; least
//! recently used entries go first.

use std::collections::{BTreeMap, HashMap};

use sha2::{Digest, Sha256};

/// What an entry is found by.
pub type Key = [u8; 32];

/// The key of `input` under `context`. The context's length goes first, so no
/// (context, input) pair can be written as another.
pub fn key(context: &str, input: &[u8]) -> Key {
    let mut h = Sha256::new();
    h.update((context.len() as u64).to_le_bytes());
    h.update(context.as_bytes());
    h.update(input);
    let mut key = [0; 32];
    key.copy_from_slice(&h.finalize());
    key
}

/// Bytes charged for an entry besides its vector: the key, its owner's name, the
/// recency index and the hash map's bookkeeping.
pub const ENTRY_OVERHEAD: usize = 160;

/// The bytes an entry holding `vector` is charged.
pub fn entry_bytes(vector: &[f32]) -> usize {
    std::mem::size_of_val(vector) + ENTRY_OVERHEAD
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// At most this many entries; 0 turns the memo off.
    pub entries: usize,
    /// At most this many bytes (`entry_bytes` each).
    pub bytes: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub entries: usize,
    /// Held by the entries (`entry_bytes` each).
    pub bytes: usize,
    /// Held by the copy of the last input.
    pub last_input_bytes: usize,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
}

struct Entry {
    /// The model it belongs to, so unloading a model can drop its entries.
    owner: String,
    vector: Vec<f32>,
    last_used: u64,
}

/// The last input hashed, with its context and key.
struct Last {
    context: String,
    input: Vec<u8>,
    key: Key,
}

#[derive(Default)]
pub struct Memo {
    last: Option<Last>,
    entries: HashMap<Key, Entry>,
    /// Entries by last use, oldest first: eviction takes the first.
    recency: BTreeMap<u64, Key>,
    clock: u64,
    stats: Stats,
}

impl Memo {
    /// The key of `input` under `context` (`key`), without hashing when it is the last
    /// input hashed. Keeps a copy of `input` for next time if it is within the byte bound.
    pub fn key(&mut self, context: &str, input: &[u8], limits: Limits) -> Key {
        if let Some(last) = &self.last {
            if last.context == context && last.input == input {
                return last.key;
            }
        }
        let k = key(context, input);
        self.last = (limits.entries > 0 && input.len() <= limits.bytes).then(|| Last {
            context: context.to_owned(),
            input: input.to_vec(),
            key: k,
        });
        k
    }

    /// The vector remembered under `key`, if any (a copy), counting a hit or a miss.
    pub fn get(&mut self, key: &Key, limits: Limits) -> Option<Vec<f32>> {
        self.shrink_to(limits);
        let now = self.tick();
        let Some(entry) = self.entries.get_mut(key) else {
            self.stats.misses += 1;
            return None;
        };
        self.recency.remove(&entry.last_used);
        self.recency.insert(now, *key);
        entry.last_used = now;
        self.stats.hits += 1;
        Some(entry.vector.clone())
    }

    /// Remembers `vector` under `key`, then evicts the least recently used entries until
    /// the memo is within `limits`. A vector bigger than the whole byte bound is not kept.
    pub fn put(&mut self, owner: &str, key: Key, vector: Vec<f32>, limits: Limits) {
        if limits.entries == 0 || entry_bytes(&vector) > limits.bytes {
            return;
        }
        self.remove(&key);
        let now = self.tick();
        self.stats.bytes += entry_bytes(&vector);
        self.recency.insert(now, key);
        self.entries.insert(key, Entry { owner: owner.to_owned(), vector, last_used: now });
        self.shrink_to(limits);
    }

    /// Drops every entry of one model.
    pub fn forget(&mut self, owner: &str) {
        let keys: Vec<Key> = self.entries.iter().filter(|(_, e)| e.owner == owner).map(|(k, _)| *k).collect();
        for k in keys {
            self.remove(&k);
        }
    }

    pub fn clear(&mut self) {
        self.last = None;
        self.entries.clear();
        self.recency.clear();
        self.stats.bytes = 0;
    }

    pub fn stats(&self) -> Stats {
        let last_input_bytes = self.last.as_ref().map_or(0, |l| l.input.len());
        Stats { entries: self.entries.len(), last_input_bytes, ..self.stats }
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn remove(&mut self, key: &Key) {
        if let Some(e) = self.entries.remove(key) {
            self.recency.remove(&e.last_used);
            self.stats.bytes -= entry_bytes(&e.vector);
        }
    }

    fn shrink_to(&mut self, limits: Limits) {
        if limits.entries == 0 {
            self.clear();
            return;
        }
        while self.entries.len() > limits.entries || self.stats.bytes > limits.bytes {
            let Some((_, oldest)) = self.recency.first_key_value() else { break };
            let oldest = *oldest;
            self.remove(&oldest);
            self.stats.evictions += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOMY: Limits = Limits { entries: 100, bytes: 1 << 20 };

    fn v(x: f32) -> Vec<f32> {
        vec![x; 4]
    }

    #[test]
    fn key_depends_on_context_and_every_input_byte() {
        let a = key("efficientnet|settings", b"image");
        assert_eq!(a, key("efficientnet|settings", b"image"));
        assert_ne!(a, key("efficientnet|other settings", b"image"));
        assert_ne!(a, key("efficientnet|settings", b"imagf"));
        assert_ne!(a, key("efficientnet|settings", b"image\0"));
        // The context's length is hashed: moving bytes between context and input changes the key.
        assert_ne!(key("ab", b"c"), key("a", b"bc"));
    }

    #[test]
    fn remembers_and_counts() {
        let mut m = Memo::default();
        let k = key("c", b"x");
        assert_eq!(m.get(&k, ROOMY), None);
        m.put("model", k, v(1.0), ROOMY);
        assert_eq!(m.get(&k, ROOMY), Some(v(1.0)));
        let s = m.stats();
        assert_eq!((s.entries, s.hits, s.misses, s.bytes), (1, 1, 1, entry_bytes(&v(1.0))));
    }

    #[test]
    fn evicts_least_recently_used_first() {
        let mut m = Memo::default();
        let limits = Limits { entries: 2, bytes: 1 << 20 };
        let (a, b, c) = (key("", b"a"), key("", b"b"), key("", b"c"));
        m.put("m", a, v(1.0), limits);
        m.put("m", b, v(2.0), limits);
        m.get(&a, limits); // a is now more recent than b
        m.put("m", c, v(3.0), limits);
        assert_eq!(m.get(&b, limits), None);
        assert_eq!(m.get(&a, limits), Some(v(1.0)));
        assert_eq!(m.get(&c, limits), Some(v(3.0)));
        assert_eq!(m.stats().evictions, 1);
    }

    #[test]
    fn stays_within_the_byte_bound() {
        let mut m = Memo::default();
        let one = entry_bytes(&v(0.0));
        let limits = Limits { entries: 100, bytes: 3 * one };
        for i in 0..10u8 {
            m.put("m", key("", &[i]), v(i.into()), limits);
            assert!(m.stats().bytes <= limits.bytes);
        }
        assert_eq!(m.stats().entries, 3);
        // A vector bigger than the bound is not kept, and evicts nothing.
        m.put("m", key("", b"big"), vec![0.0; 1000], limits);
        assert_eq!(m.stats().entries, 3);
    }

    #[test]
    fn lowered_limits_apply_at_the_next_call_and_zero_turns_it_off() {
        let mut m = Memo::default();
        for i in 0..10u8 {
            m.put("m", key("", &[i]), v(0.0), ROOMY);
        }
        m.get(&key("", b"none"), Limits { entries: 4, bytes: 1 << 20 });
        assert_eq!(m.stats().entries, 4);
        let off = Limits { entries: 0, bytes: 1 << 20 };
        assert_eq!(m.get(&key("", &[9]), off), None);
        m.put("m", key("", &[9]), v(0.0), off);
        assert_eq!((m.stats().entries, m.stats().bytes), (0, 0));
    }

    #[test]
    fn replacing_an_entry_keeps_the_accounting_right() {
        let mut m = Memo::default();
        let k = key("", b"k");
        m.put("m", k, v(1.0), ROOMY);
        m.put("m", k, vec![2.0; 8], ROOMY);
        assert_eq!(m.get(&k, ROOMY), Some(vec![2.0; 8]));
        assert_eq!((m.stats().entries, m.stats().bytes), (1, entry_bytes(&[0.0; 8])));
    }

    #[test]
    fn the_last_input_is_recognised_by_its_bytes() {
        let mut m = Memo::default();
        let input = vec![7u8; 1000];
        let k = m.key("ctx", &input, ROOMY);
        assert_eq!(k, key("ctx", &input));
        assert_eq!(m.stats().last_input_bytes, 1000);
        assert_eq!(m.key("ctx", &input, ROOMY), k);
        // One byte different, or another context: hashed, never the copy's key.
        let mut other = input.clone();
        other[999] = 8;
        assert_eq!(m.key("ctx", &other, ROOMY), key("ctx", &other));
        assert_eq!(m.key("ctx2", &other, ROOMY), key("ctx2", &other));
        // An input over the byte bound is hashed and not copied.
        let small = Limits { entries: 10, bytes: 100 };
        assert_eq!(m.key("ctx", &input, small), k);
        assert_eq!(m.stats().last_input_bytes, 0);
    }

    #[test]
    fn forget_drops_one_models_entries() {
        let mut m = Memo::default();
        m.put("a", key("a", b"1"), v(1.0), ROOMY);
        m.put("b", key("b", b"1"), v(2.0), ROOMY);
        m.forget("a");
        assert_eq!(m.get(&key("a", b"1"), ROOMY), None);
        assert_eq!(m.get(&key("b", b"1"), ROOMY), Some(v(2.0)));
        assert_eq!(m.stats().bytes, entry_bytes(&v(2.0)));
    }
}
