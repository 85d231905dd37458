//! A bounded in-memory FIFO of spans (or batches of spans).
//!
//! The buffer is bounded both by item count and by total bytes; the caller
//! supplies each item's byte weight (typically its encoded size). Nothing is
//! ever dropped silently: [`MemoryBuffer::push`] hands back an item that does
//! not fit, and [`MemoryBuffer::push_evicting`] hands back the oldest items it
//! pushed out, so the caller can spill them to disk.
//!
//! The buffer is a plain data structure (`&mut self`); share it behind a
//! mutex.

use std::collections::VecDeque;

/// A FIFO bounded by item count and total weight in bytes.
#[derive(Debug, Clone)]
pub struct MemoryBuffer<T> {
    items: VecDeque<(T, usize)>,
    bytes: usize,
    max_items: usize,
    max_bytes: usize,
}

impl<T> MemoryBuffer<T> {
    /// An empty buffer holding at most `max_items` items and `max_bytes`
    /// bytes of total weight.
    pub fn new(max_items: usize, max_bytes: usize) -> Self {
        Self {
            items: VecDeque::new(),
            bytes: 0,
            max_items,
            max_bytes,
        }
    }

    /// Number of items held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when no item is held.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Total weight of the items held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The item-count bound.
    pub fn max_items(&self) -> usize {
        self.max_items
    }

    /// The byte bound.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// True when an item of `weight` bytes would fit now.
    pub fn fits(&self, weight: usize) -> bool {
        self.items.len() < self.max_items
            && self
                .bytes
                .checked_add(weight)
                .is_some_and(|b| b <= self.max_bytes)
    }

    /// Appends `item` at the back if it fits; otherwise hands it back
    /// unchanged. An item heavier than `max_bytes` never fits.
    pub fn push(&mut self, item: T, weight: usize) -> Result<(), T> {
        if !self.fits(weight) {
            return Err(item);
        }
        self.bytes += weight;
        self.items.push_back((item, weight));
        Ok(())
    }

    /// Appends `item`, first removing the oldest items until it fits, and
    /// returns the removed items oldest first with their weights. An item
    /// that could never fit (heavier than `max_bytes`, or `max_items == 0`)
    /// is not added and is returned alone, leaving the buffer untouched.
    pub fn push_evicting(&mut self, item: T, weight: usize) -> Vec<(T, usize)> {
        if weight > self.max_bytes || self.max_items == 0 {
            return vec![(item, weight)];
        }
        let mut evicted = Vec::new();
        while !self.fits(weight) {
            match self.items.pop_front() {
                Some((old, w)) => {
                    self.bytes -= w;
                    evicted.push((old, w));
                }
                None => break,
            }
        }
        self.bytes += weight;
        self.items.push_back((item, weight));
        evicted
    }

    /// Puts `item` back at the front (e.g. a batch whose export failed), if
    /// it fits; otherwise hands it back.
    pub fn push_front(&mut self, item: T, weight: usize) -> Result<(), T> {
        if !self.fits(weight) {
            return Err(item);
        }
        self.bytes += weight;
        self.items.push_front((item, weight));
        Ok(())
    }

    /// The oldest item, if any.
    pub fn front(&self) -> Option<&T> {
        self.items.front().map(|(item, _)| item)
    }

    /// Removes and returns the oldest item.
    pub fn pop(&mut self) -> Option<T> {
        self.pop_weighted().map(|(item, _)| item)
    }

    /// Removes and returns the oldest item with its weight.
    pub fn pop_weighted(&mut self) -> Option<(T, usize)> {
        let (item, weight) = self.items.pop_front()?;
        self.bytes -= weight;
        Some((item, weight))
    }

    /// Removes and returns up to `max_items` of the oldest items, oldest
    /// first.
    pub fn drain(&mut self, max_items: usize) -> Vec<T> {
        self.pop_batch(max_items, usize::MAX)
    }

    /// Removes and returns the oldest items, oldest first, stopping before
    /// `max_items` items or `max_bytes` total weight would be exceeded. At
    /// least one item is returned when the buffer is non-empty and
    /// `max_items > 0`, even if it alone weighs more than `max_bytes`, so an
    /// oversized item cannot block the queue.
    pub fn pop_batch(&mut self, max_items: usize, max_bytes: usize) -> Vec<T> {
        let mut out = Vec::new();
        let mut taken_bytes = 0usize;
        while out.len() < max_items {
            let Some((_, weight)) = self.items.front() else {
                break;
            };
            let within = taken_bytes
                .checked_add(*weight)
                .is_some_and(|b| b <= max_bytes);
            if !out.is_empty() && !within {
                break;
            }
            if let Some((item, weight)) = self.pop_weighted() {
                taken_bytes = taken_bytes.saturating_add(weight);
                out.push(item);
            }
        }
        out
    }

    /// Removes every item, oldest first.
    pub fn take_all(&mut self) -> Vec<T> {
        self.bytes = 0;
        self.items.drain(..).map(|(item, _)| item).collect()
    }

    /// Iterates over the items held, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter().map(|(item, _)| item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn item_bound_hands_back_overflow() {
        let mut b = MemoryBuffer::new(2, 1000);
        assert_eq!(b.push("a", 1), Ok(()));
        assert_eq!(b.push("b", 1), Ok(()));
        assert_eq!(b.push("c", 1), Err("c"));
        assert_eq!(b.len(), 2);
        assert_eq!(b.bytes(), 2);
    }

    #[test]
    fn byte_bound_hands_back_overflow() {
        let mut b = MemoryBuffer::new(100, 10);
        assert_eq!(b.push(1, 6), Ok(()));
        assert_eq!(b.push(2, 5), Err(2));
        assert_eq!(b.push(3, 4), Ok(()));
        assert_eq!(b.bytes(), 10);
        assert_eq!(b.push(4, 0), Ok(()));
        assert_eq!(b.push(5, 11), Err(5));
        assert_eq!(b.push(6, usize::MAX), Err(6));
    }

    #[test]
    fn fifo_order_and_accounting() {
        let mut b = MemoryBuffer::new(10, 100);
        for i in 0..5 {
            b.push(i, i + 1).unwrap();
        }
        assert_eq!(b.drain(2), vec![0, 1]);
        assert_eq!(b.bytes(), 3 + 4 + 5);
        assert_eq!(b.front(), Some(&2));
        assert_eq!(b.pop(), Some(2));
        assert_eq!(b.take_all(), vec![3, 4]);
        assert!(b.is_empty());
        assert_eq!(b.bytes(), 0);
    }

    #[test]
    fn pop_batch_respects_byte_budget_but_always_makes_progress() {
        let mut b = MemoryBuffer::new(10, 100);
        b.push("big", 50).unwrap();
        b.push("s1", 5).unwrap();
        b.push("s2", 5).unwrap();
        b.push("s3", 5).unwrap();
        assert_eq!(b.pop_batch(10, 10), vec!["big"]);
        assert_eq!(b.pop_batch(10, 10), vec!["s1", "s2"]);
        assert_eq!(b.pop_batch(0, 10), Vec::<&str>::new());
        assert_eq!(b.pop_batch(10, 10), vec!["s3"]);
        assert!(b.pop_batch(10, 10).is_empty());
    }

    #[test]
    fn push_evicting_returns_oldest() {
        let mut b = MemoryBuffer::new(3, 10);
        b.push(1, 4).unwrap();
        b.push(2, 4).unwrap();
        assert_eq!(b.push_evicting(3, 4), vec![(1, 4)]);
        assert_eq!(b.iter().copied().collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(b.push_evicting(4, 11), vec![(4, 11)]);
        assert_eq!(b.bytes(), 8);
    }

    #[test]
    fn push_front_requeues() {
        let mut b = MemoryBuffer::new(2, 10);
        b.push(2, 1).unwrap();
        b.push_front(1, 1).unwrap();
        assert_eq!(b.push_front(0, 1), Err(0));
        assert_eq!(b.drain(5), vec![1, 2]);
    }

    proptest! {
        #[test]
        fn never_exceeds_bounds_and_keeps_fifo(
            ops in proptest::collection::vec((any::<bool>(), 0usize..40, 0usize..5), 0..200),
            max_items in 0usize..20,
            max_bytes in 0usize..200,
        ) {
            let mut b = MemoryBuffer::new(max_items, max_bytes);
            let mut model: VecDeque<(u32, usize)> = VecDeque::new();
            let mut next = 0u32;
            for (push, weight, n) in ops {
                if push {
                    let fits = model.len() < max_items
                        && model.iter().map(|(_, w)| w).sum::<usize>() + weight <= max_bytes;
                    let r = b.push(next, weight);
                    prop_assert_eq!(r.is_ok(), fits);
                    if fits {
                        model.push_back((next, weight));
                    }
                    next += 1;
                } else {
                    let got = b.drain(n);
                    let want: Vec<u32> =
                        (0..n.min(model.len())).filter_map(|_| model.pop_front()).map(|(i, _)| i).collect();
                    prop_assert_eq!(got, want);
                }
                prop_assert!(b.len() <= max_items);
                prop_assert!(b.bytes() <= max_bytes);
                prop_assert_eq!(b.bytes(), model.iter().map(|(_, w)| w).sum::<usize>());
                prop_assert_eq!(b.len(), model.len());
            }
        }
    }
}
