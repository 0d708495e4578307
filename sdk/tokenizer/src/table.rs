//! A compact read-only string → id map for the vocabulary.
//!
//! Keys are byte ranges of one shared arena (the vocabulary text), so building the map makes
//! no per-token allocation and a 30k-token vocabulary takes well under 1 MiB: the arena, 12
//! bytes per entry and 4 bytes per slot of an open-addressing (linear probing) index.

/// Byte range of a key in the arena, and its id.
#[derive(Debug, Clone, Copy)]
struct Entry {
    start: u32,
    end: u32,
    id: u32,
}

/// Marks an unused slot.
const EMPTY: u32 = u32::MAX;

/// Maps keys (byte ranges of an arena) to ids; every method takes that same arena.
#[derive(Debug, Clone)]
pub(crate) struct TokenTable {
    entries: Vec<Entry>,
    /// Indexes into `entries`, or `EMPTY`; the length is a power of two at least twice the
    /// number of entries, so probes stay short and always end at an empty slot.
    slots: Box<[u32]>,
    /// `64 - log2(slots.len())`: slots are picked by the high bits of the hash.
    shift: u32,
    /// Length in bytes of the longest key: longer strings cannot be keys.
    max_key_len: usize,
}

impl TokenTable {
    /// Builds the table from `(start, end, id)` key ranges of `arena`; for a key given more
    /// than once the last id wins. `arena` must be shorter than `u32::MAX` bytes and every
    /// range must lie on `char` boundaries.
    pub(crate) fn new(arena: &str, keys: &[(u32, u32, u32)]) -> Self {
        let bits = (keys.len().max(1) * 2).next_power_of_two().trailing_zeros();
        let mut table = Self {
            entries: Vec::with_capacity(keys.len()),
            slots: vec![EMPTY; 1 << bits].into_boxed_slice(),
            shift: 64 - bits,
            max_key_len: 0,
        };
        for &(start, end, id) in keys {
            let key = &arena[start as usize..end as usize];
            match table.find_slot(arena, key) {
                Ok(slot) => table.entries[table.slots[slot] as usize].id = id,
                Err(slot) => {
                    // Fewer than u32::MAX entries (= EMPTY): each but the last ends a line
                    // of the arena, which is shorter than u32::MAX bytes.
                    table.slots[slot] = table.entries.len() as u32;
                    table.entries.push(Entry { start, end, id });
                    table.max_key_len = table.max_key_len.max(key.len());
                }
            }
        }
        table
    }

    /// Length in bytes of the longest key.
    pub(crate) fn max_key_len(&self) -> usize {
        self.max_key_len
    }

    /// The id of `key`, if it is one.
    #[inline]
    pub(crate) fn get(&self, arena: &str, key: &str) -> Option<u32> {
        if key.len() > self.max_key_len {
            return None;
        }
        self.find_slot(arena, key)
            .ok()
            .map(|slot| self.entries[self.slots[slot] as usize].id)
    }

    /// The slot holding `key` (`Ok`) or the empty slot where it would go (`Err`).
    #[inline]
    fn find_slot(&self, arena: &str, key: &str) -> Result<usize, usize> {
        let mask = self.slots.len() - 1;
        // The table is at most half full, so an empty slot ends every probe sequence.
        let mut slot = (hash(key.as_bytes()) >> self.shift) as usize;
        loop {
            let index = self.slots[slot];
            if index == EMPTY {
                return Err(slot);
            }
            let entry = self.entries[index as usize];
            if arena.as_bytes()[entry.start as usize..entry.end as usize] == *key.as_bytes() {
                return Ok(slot);
            }
            slot = (slot + 1) & mask;
        }
    }
}

/// A multiplicative hash over 8-byte words (the Fx hash): cheap for short keys, and the keys
/// are a fixed vocabulary, so hash flooding is not a concern. Slots use its high bits, which
/// depend on every input bit.
#[inline]
fn hash(bytes: &[u8]) -> u64 {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;
    let add = |hash: u64, word: u64| (hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    let mut chunks = bytes.chunks_exact(8);
    let mut hash = (&mut chunks).fold(0, |hash, chunk| {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        add(hash, u64::from_le_bytes(word))
    });
    let rest = chunks.remainder();
    let mut word = [0u8; 8];
    word[..rest.len()].copy_from_slice(rest);
    // Mixing in the length keeps e.g. "a" and "a\0" apart.
    hash = add(hash, u64::from_le_bytes(word));
    add(hash, bytes.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_and_last_duplicate_wins() {
        let arena = "abcab";
        // "a", "ab", "abc", "b", then "ab" again with a new id.
        let table = TokenTable::new(
            arena,
            &[(0, 1, 0), (0, 2, 1), (0, 3, 2), (1, 2, 3), (3, 5, 4)],
        );
        assert_eq!(table.get(arena, "a"), Some(0));
        assert_eq!(table.get(arena, "ab"), Some(4));
        assert_eq!(table.get(arena, "abc"), Some(2));
        assert_eq!(table.get(arena, "b"), Some(3));
        assert_eq!(table.get(arena, "c"), None);
        assert_eq!(table.get(arena, ""), None);
        assert_eq!(table.get(arena, "abcd"), None);
        assert_eq!(table.max_key_len(), 3);
    }

    #[test]
    fn empty_table() {
        let table = TokenTable::new("", &[]);
        assert_eq!(table.get("", ""), None);
    }
}
