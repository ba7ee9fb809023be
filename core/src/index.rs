//! An open-addressing index from a 128-bit id to a 32-bit slot of a record array, with a fixed
//! capacity chosen at construction (load factor at most one half) and linear probing with
//! backward-shift deletion, so no tombstones accumulate.
//!
//! Each entry is 8 bytes: the low 32 bits of the id's hash (its tag) and the slot. The tag gives
//! the home position, so deletion can shift entries without reading the records, and it filters
//! probes: the record is read only when the tag matches. The caller confirms the id on the record.
//! Being a flat `Vec<u64>`, the index is cheap to copy into a snapshot.

use crate::hash::id_hash;

const EMPTY: u64 = u64::MAX;

#[derive(Clone)]
pub(crate) struct Index {
    entries: Vec<u64>,
    mask: u32,
    count: u32,
    seed: u64,
}

/// The 32-bit hash of an id used by one index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tag(pub u32);

impl Index {
    /// An index that can hold `capacity` entries at a load factor of at most one half.
    pub fn new(capacity: u32, seed: u64) -> Index {
        assert!(capacity > 0);
        let size = (u64::from(capacity) * 2).next_power_of_two().max(16);
        assert!(size <= 1 << 32, "index too large");
        Index { entries: vec![EMPTY; size as usize], mask: (size - 1) as u32, count: 0, seed }
    }

    #[inline(always)]
    pub fn tag(&self, id: u128) -> Tag {
        Tag(id_hash(id, self.seed) as u32)
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    /// Bytes of memory the entries occupy.
    pub fn size_bytes(&self) -> u64 {
        self.entries.len() as u64 * 8
    }

    /// Hint the CPU to load the id's home position.
    #[inline(always)]
    pub fn prefetch(&self, tag: Tag) {
        let position = (tag.0 & self.mask) as usize;
        crate::prefetch::prefetch_read(&self.entries[position]);
    }

    /// The slot whose record `is_match` confirms, probing from the tag's home position.
    #[inline]
    pub fn find(&self, tag: Tag, mut is_match: impl FnMut(u32) -> bool) -> Option<u32> {
        let mut position = tag.0 & self.mask;
        loop {
            let entry = self.entries[position as usize];
            if entry == EMPTY {
                return None;
            }
            if (entry >> 32) as u32 == tag.0 && is_match(entry as u32) {
                return Some(entry as u32);
            }
            position = (position + 1) & self.mask;
        }
    }

    /// Adds `slot` under `tag`. The caller has checked that the id is not present.
    #[inline]
    pub fn insert(&mut self, tag: Tag, slot: u32) {
        assert!(slot != u32::MAX);
        assert!(self.count <= self.mask / 2, "index over its capacity");
        let mut position = tag.0 & self.mask;
        while self.entries[position as usize] != EMPTY {
            position = (position + 1) & self.mask;
        }
        self.entries[position as usize] = (u64::from(tag.0) << 32) | u64::from(slot);
        self.count += 1;
    }

    /// Removes the entry for `slot` under `tag`, which must be present.
    pub fn remove(&mut self, tag: Tag, slot: u32) {
        let wanted = (u64::from(tag.0) << 32) | u64::from(slot);
        let mut position = tag.0 & self.mask;
        loop {
            let entry = self.entries[position as usize];
            assert!(entry != EMPTY, "index remove: slot {slot} not present");
            if entry == wanted {
                break;
            }
            position = (position + 1) & self.mask;
        }
        self.shift_back(position);
        assert!(self.count > 0);
        self.count -= 1;
    }

    /// Backward-shift deletion: pull later entries of the probe run into the hole.
    fn shift_back(&mut self, mut hole: u32) {
        let mut position = (hole + 1) & self.mask;
        loop {
            let entry = self.entries[position as usize];
            if entry == EMPTY {
                break;
            }
            let home = ((entry >> 32) as u32) & self.mask;
            // The entry may move into the hole only if the hole lies on its probe path
            // (cyclically between its home and its position).
            let distance_to_hole = hole.wrapping_sub(home) & self.mask;
            let distance_to_position = position.wrapping_sub(home) & self.mask;
            if distance_to_hole < distance_to_position {
                self.entries[hole as usize] = entry;
                hole = position;
            }
            position = (position + 1) & self.mask;
        }
        self.entries[hole as usize] = EMPTY;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn insert_find_remove_agree_with_a_map() {
        let mut index = Index::new(512, 3);
        let mut model: BTreeMap<u128, u32> = BTreeMap::new();
        let mut state = 0x1234_5678u64;
        for step in 0..20_000u32 {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            // Few distinct ids so that probe runs collide and wrap.
            let id = u128::from((state >> 33) % 700) + 1;
            let tag = index.tag(id);
            let found = index.find(tag, |slot| model.get(&id) == Some(&slot));
            assert_eq!(found, model.get(&id).copied(), "step {step}");
            match found {
                Some(slot) => {
                    index.remove(tag, slot);
                    model.remove(&id);
                }
                None if model.len() < 512 => {
                    index.insert(tag, step);
                    model.insert(id, step);
                }
                None => {}
            }
            assert_eq!(index.count() as usize, model.len());
        }
        for (id, slot) in &model {
            assert_eq!(index.find(index.tag(*id), |s| s == *slot), Some(*slot));
        }
    }
}
