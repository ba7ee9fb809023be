//! Open pending transfers (holds): a fixed array of entries with a free list, an id index, an
//! expiry heap ordered by (expires_at_ns, id) and, per account, intrusive doubly-linked lists of
//! the holds it is debited and credited by. Every structure is sized at construction; removing a
//! hold is O(log n) and leaves nothing behind, so the heap never fills with stale entries.
//!
//! An entry keeps a full copy of its pending transfer, so a hold outlives the transfer's place
//! in the idempotency window: it is open until posted, voided or expired, however old it is.

use crate::index::Index;
use crate::types::{Transfer, TransferStatus};

pub(crate) const NONE: u32 = u32::MAX;

/// Which side of a hold an account is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    Debit,
    Credit,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct PendingEntry {
    pub transfer: Transfer,
    /// `u64::MAX` when the transfer has no timeout.
    pub expires_at_ns: u64,
    /// The position of the transfer's own record in the transfer ring.
    pub ring_position: u64,
    pub debit_slot: u32,
    pub credit_slot: u32,
    debit_next: u32,
    debit_prev: u32,
    credit_next: u32,
    credit_prev: u32,
    heap_index: u32,
    /// `Pending` while open; a linked chain may mark it resolved before the chain commits.
    pub status: TransferStatus,
}

impl Default for PendingEntry {
    fn default() -> PendingEntry {
        PendingEntry {
            transfer: Transfer::default(),
            expires_at_ns: u64::MAX,
            ring_position: 0,
            debit_slot: NONE,
            credit_slot: NONE,
            debit_next: NONE,
            debit_prev: NONE,
            credit_next: NONE,
            credit_prev: NONE,
            heap_index: NONE,
            status: TransferStatus::Pending,
        }
    }
}

#[derive(Clone)]
pub(crate) struct PendingTable {
    pub entries: Vec<PendingEntry>,
    free: Vec<u32>,
    index: Index,
    heap: Vec<u32>,
    debit_heads: Vec<u32>,
    credit_heads: Vec<u32>,
    count: u32,
}

impl PendingTable {
    /// `capacity` is the ledger's `pending_max` plus one batch: a hold resolved inside a linked
    /// chain keeps its entry until the chain commits, but no longer counts as open.
    pub fn new(capacity: u32, accounts_max: u32, seed: u64) -> PendingTable {
        PendingTable {
            entries: vec![PendingEntry::default(); capacity as usize],
            free: (0..capacity).rev().collect(),
            index: Index::new(capacity, seed ^ 0x70e4_d1d6),
            heap: Vec::with_capacity(capacity as usize),
            debit_heads: vec![NONE; accounts_max as usize],
            credit_heads: vec![NONE; accounts_max as usize],
            count: 0,
        }
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn size_bytes(&self) -> u64 {
        let entries = self.entries.len() * core::mem::size_of::<PendingEntry>();
        let lists = (self.debit_heads.len() + self.credit_heads.len() + self.free.capacity()) * 4;
        (entries + lists + self.heap.capacity() * 4) as u64 + self.index.size_bytes()
    }

    /// The slot of the entry (open, or resolved within an uncommitted chain) for `id`.
    pub fn find(&self, id: u128) -> Option<u32> {
        let entries = &self.entries;
        self.index.find(self.index.tag(id), |slot| entries[slot as usize].transfer.id.0 == id)
    }

    /// Opens a hold. The caller checked the ledger's limit and that the id is new.
    pub fn insert(
        &mut self,
        transfer: &Transfer,
        debit_slot: u32,
        credit_slot: u32,
        expires_at_ns: u64,
        ring_position: u64,
    ) -> u32 {
        assert!(transfer.flags.contains(crate::types::TransferFlags::PENDING));
        assert!(debit_slot != credit_slot);
        let slot = self.free.pop().expect("pending table full: the ledger enforces pending_max below its capacity");
        self.entries[slot as usize] = PendingEntry {
            transfer: *transfer,
            expires_at_ns,
            ring_position,
            debit_slot,
            credit_slot,
            ..PendingEntry::default()
        };
        self.index.insert(self.index.tag(transfer.id.0), slot);
        self.list_push(Side::Debit, debit_slot, slot);
        self.list_push(Side::Credit, credit_slot, slot);
        if expires_at_ns != u64::MAX {
            self.heap_push(slot);
        }
        self.count += 1;
        slot
    }

    /// Closes a hold: unlinks it from everything and frees its slot.
    pub fn remove(&mut self, slot: u32) {
        let entry = self.entries[slot as usize];
        assert!(entry.debit_slot != NONE, "pending slot {slot} is free");
        self.index.remove(self.index.tag(entry.transfer.id.0), slot);
        self.list_unlink(Side::Debit, entry.debit_slot, slot);
        self.list_unlink(Side::Credit, entry.credit_slot, slot);
        if entry.heap_index != NONE {
            self.heap_remove(entry.heap_index);
        }
        self.entries[slot as usize] = PendingEntry::default();
        self.free.push(slot);
        assert!(self.count > 0);
        self.count -= 1;
    }

    /// The hold that expires first, if any: (expires_at_ns, slot).
    pub fn expiry_next(&self) -> Option<(u64, u32)> {
        self.heap.first().map(|slot| (self.entries[*slot as usize].expires_at_ns, *slot))
    }

    /// The holds on one side of an account, newest first.
    pub fn holds(&self, side: Side, account_slot: u32) -> HoldIter<'_> {
        let head = match side {
            Side::Debit => self.debit_heads[account_slot as usize],
            Side::Credit => self.credit_heads[account_slot as usize],
        };
        HoldIter { table: self, side, next: head }
    }

    /// Slots of every open entry, in slot order.
    pub fn slots(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.entries.len() as u32).filter(|slot| self.entries[*slot as usize].debit_slot != NONE)
    }

    fn links(&mut self, side: Side, slot: u32) -> (&mut u32, &mut u32) {
        let entry = &mut self.entries[slot as usize];
        match side {
            Side::Debit => (&mut entry.debit_next, &mut entry.debit_prev),
            Side::Credit => (&mut entry.credit_next, &mut entry.credit_prev),
        }
    }

    fn head(&mut self, side: Side, account_slot: u32) -> &mut u32 {
        match side {
            Side::Debit => &mut self.debit_heads[account_slot as usize],
            Side::Credit => &mut self.credit_heads[account_slot as usize],
        }
    }

    fn list_push(&mut self, side: Side, account_slot: u32, slot: u32) {
        let head = *self.head(side, account_slot);
        *self.links(side, slot).0 = head;
        *self.links(side, slot).1 = NONE;
        if head != NONE {
            *self.links(side, head).1 = slot;
        }
        *self.head(side, account_slot) = slot;
    }

    fn list_unlink(&mut self, side: Side, account_slot: u32, slot: u32) {
        let (next, prev) = {
            let (next, prev) = self.links(side, slot);
            (*next, *prev)
        };
        if prev == NONE {
            assert_eq!(*self.head(side, account_slot), slot, "hold list head mismatch");
            *self.head(side, account_slot) = next;
        } else {
            *self.links(side, prev).0 = next;
        }
        if next != NONE {
            *self.links(side, next).1 = prev;
        }
    }

    fn heap_key(&self, slot: u32) -> (u64, u128) {
        let entry = &self.entries[slot as usize];
        (entry.expires_at_ns, entry.transfer.id.0)
    }

    fn heap_set(&mut self, index: usize, slot: u32) {
        self.heap[index] = slot;
        self.entries[slot as usize].heap_index = index as u32;
    }

    fn heap_push(&mut self, slot: u32) {
        assert!(self.heap.len() < self.heap.capacity(), "expiry heap over capacity");
        self.heap.push(slot);
        self.heap_set(self.heap.len() - 1, slot);
        self.heap_sift_up(self.heap.len() - 1);
    }

    fn heap_remove(&mut self, index: u32) {
        let index = index as usize;
        let removed = self.heap[index];
        self.entries[removed as usize].heap_index = NONE;
        let last = self.heap.pop().expect("heap_remove on an empty heap");
        if index < self.heap.len() {
            self.heap_set(index, last);
            self.heap_sift_down(index);
            self.heap_sift_up(index);
        }
    }

    fn heap_sift_up(&mut self, mut index: usize) {
        while index > 0 {
            let parent = (index - 1) / 2;
            let (slot, parent_slot) = (self.heap[index], self.heap[parent]);
            if self.heap_key(slot) >= self.heap_key(parent_slot) {
                break;
            }
            self.heap_set(index, parent_slot);
            self.heap_set(parent, slot);
            index = parent;
        }
    }

    fn heap_sift_down(&mut self, mut index: usize) {
        loop {
            let mut smallest = index;
            for child in [2 * index + 1, 2 * index + 2] {
                if child < self.heap.len() && self.heap_key(self.heap[child]) < self.heap_key(self.heap[smallest]) {
                    smallest = child;
                }
            }
            if smallest == index {
                return;
            }
            let (slot, child_slot) = (self.heap[index], self.heap[smallest]);
            self.heap_set(index, child_slot);
            self.heap_set(smallest, slot);
            index = smallest;
        }
    }

    /// O(n): every structure agrees with the entries. Tests and snapshots call it.
    pub fn verify(&self) {
        let open: Vec<u32> = self.slots().collect();
        assert_eq!(open.len() as u32, self.count);
        assert_eq!(self.index.count(), self.count);
        assert_eq!(self.free.len() + open.len(), self.entries.len());
        for (index, slot) in self.heap.iter().enumerate() {
            assert_eq!(self.entries[*slot as usize].heap_index as usize, index, "heap back-pointer");
            if index > 0 {
                assert!(self.heap_key(self.heap[(index - 1) / 2]) <= self.heap_key(*slot), "heap order");
            }
        }
        for slot in open {
            let entry = &self.entries[slot as usize];
            assert_eq!(self.find(entry.transfer.id.0), Some(slot));
            assert_eq!(entry.expires_at_ns == u64::MAX, entry.heap_index == NONE, "heap membership");
            assert!(self.holds(Side::Debit, entry.debit_slot).any(|s| s == slot), "debit hold list");
            assert!(self.holds(Side::Credit, entry.credit_slot).any(|s| s == slot), "credit hold list");
        }
    }
}

pub(crate) struct HoldIter<'a> {
    table: &'a PendingTable,
    side: Side,
    next: u32,
}

impl Iterator for HoldIter<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        if self.next == NONE {
            return None;
        }
        let slot = self.next;
        let entry = &self.table.entries[slot as usize];
        self.next = match self.side {
            Side::Debit => entry.debit_next,
            Side::Credit => entry.credit_next,
        };
        Some(slot)
    }
}
