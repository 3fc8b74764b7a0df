//! A bounded memo of what was parsed from key material (certificates, private keys, CA
//! bundles, JWT keys), keyed by the bytes themselves: a route checked again (its
//! declaration or a Secret it reads changed; `wsgate check` and a first compile check all)
//! reads its Secrets again, and an unchanged one, or one many routes share, is parsed once.
//!
//! The memos are module-level statics beside the parsers rather than an object threaded
//! through [`crate::compile::compile`]: a parse depends on nothing but its bytes, so a memo
//! hit returns what parsing would (compile stays a function of its inputs), and every
//! caller (standalone, controller, `wsgate check`, benches) gains without carrying a cache.
//! The key is the content itself, not a digest of it, so two different Secrets can never
//! share an entry; the bound keeps the memory fixed however many Secrets come and go.
//!
//! [`digest`] is its small sibling, for telling whether something changed without keeping
//! it (route files, Secrets' contents, Service endpoints); a collision (about one in 2^64) would
//! hide that one change until the next.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

/// A digest of `value`, to tell whether something changed without keeping a copy of it
/// (a file's text, Secrets' contents, a Service's endpoints). Stable within a process.
pub(crate) fn digest(value: &impl Hash) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// Parsed values by the bytes they were parsed from, at most `capacity` of them; the least
/// recently used goes first.
pub(crate) struct ContentMemo<V> {
    capacity: usize,
    entries: Mutex<Entries<V>>,
}

struct Entries<V> {
    /// Value and the tick of its last use, by content.
    map: HashMap<Vec<u8>, (V, u64)>,
    tick: u64,
}

impl<V: Clone> ContentMemo<V> {
    /// An empty memo holding at most `capacity` values.
    pub(crate) fn new(capacity: usize) -> ContentMemo<V> {
        ContentMemo {
            capacity,
            entries: Mutex::new(Entries {
                map: HashMap::new(),
                tick: 0,
            }),
        }
    }

    /// The value parsed from `parts` (taken together, in order), parsing it with `parse`
    /// only if it is not remembered.
    pub(crate) fn get_or_parse(&self, parts: &[&[u8]], parse: impl FnOnce() -> V) -> V {
        // Each part's length first, so ("ab", "c") and ("a", "bc") are different content.
        let mut key = Vec::with_capacity(parts.iter().map(|p| p.len() + 8).sum());
        for part in parts {
            key.extend_from_slice(&(part.len() as u64).to_le_bytes());
            key.extend_from_slice(part);
        }
        {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            let tick = entries.next_tick();
            if let Some((value, used)) = entries.map.get_mut(&key) {
                *used = tick;
                return value.clone();
            }
        }
        // Parsed outside the lock (an RSA key takes a while); two compiles racing on the same
        // new bytes both parse, and the later value is kept: both are the same.
        let value = parse();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.map.len() >= self.capacity
            && !entries.map.contains_key(&key)
            && let Some(oldest) = entries
                .map
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
        {
            entries.map.remove(&oldest);
        }
        let tick = entries.next_tick();
        entries.map.insert(key, (value.clone(), tick));
        value
    }
}

impl<V> Entries<V> {
    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn the_same_bytes_are_parsed_once() {
        let memo = ContentMemo::new(4);
        let parses = Cell::new(0);
        let parse = |s: &str| {
            parses.set(parses.get() + 1);
            s.len()
        };
        assert_eq!(memo.get_or_parse(&[b"abc"], || parse("abc")), 3);
        assert_eq!(memo.get_or_parse(&[b"abc"], || parse("abc")), 3);
        assert_eq!(parses.get(), 1);
        memo.get_or_parse(&[b"ab", b"c"], || parse("ab|c"));
        memo.get_or_parse(&[b"a", b"bc"], || parse("a|bc"));
        assert_eq!(parses.get(), 3, "parts are not run together");
    }

    #[test]
    fn beyond_its_capacity_the_least_recently_used_is_forgotten() {
        let memo = ContentMemo::new(2);
        let parses = Cell::new(0);
        let get = |bytes: &[u8]| {
            memo.get_or_parse(&[bytes], || {
                parses.set(parses.get() + 1);
                bytes.len()
            })
        };
        get(b"a");
        get(b"b");
        get(b"a");
        get(b"c");
        assert_eq!(parses.get(), 3);
        get(b"a");
        assert_eq!(parses.get(), 3, "a was used last, so b went");
        get(b"b");
        assert_eq!(parses.get(), 4);
    }
}
