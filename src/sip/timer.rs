//! A deadline queue for sans-IO cores that hold many timers (transactions, calls).
//!
//! Entries are never removed when their owner changes its deadline: the owner pushes the new
//! one and, when an old entry pops, checks whether it is really due. This keeps every
//! operation O(log n) with no index into the heap.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

pub struct TimerQueue<K> {
    heap: BinaryHeap<Reverse<Entry<K>>>,
    seq: u64,
}

/// Ordered by deadline, then by insertion: the key itself needs no ordering.
struct Entry<K> {
    at: Instant,
    seq: u64,
    key: K,
}

impl<K> PartialEq for Entry<K> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<K> Eq for Entry<K> {}
impl<K> PartialOrd for Entry<K> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<K> Ord for Entry<K> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

impl<K> Default for TimerQueue<K> {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }
}

impl<K> TimerQueue<K> {
    pub fn push(&mut self, at: Instant, key: K) {
        self.seq = self.seq.wrapping_add(1);
        self.heap.push(Reverse(Entry {
            at,
            seq: self.seq,
            key,
        }));
    }

    /// The earliest deadline (possibly of an entry that is no longer current: a spurious
    /// wake-up, which `pop_due` then discards).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(e)| e.at)
    }

    /// Pops one entry whose deadline is at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<K> {
        if self.next_deadline()? > now {
            return None;
        }
        self.heap.pop().map(|Reverse(e)| e.key)
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_in_deadline_order_only_when_due() {
        let t0 = Instant::now();
        let mut q = TimerQueue::default();
        q.push(t0 + Duration::from_millis(30), "c");
        q.push(t0 + Duration::from_millis(10), "a");
        q.push(t0 + Duration::from_millis(20), "b");
        assert_eq!(q.pop_due(t0), None);
        assert_eq!(q.pop_due(t0 + Duration::from_millis(25)), Some("a"));
        assert_eq!(q.pop_due(t0 + Duration::from_millis(25)), Some("b"));
        assert_eq!(q.pop_due(t0 + Duration::from_millis(25)), None);
        assert_eq!(q.next_deadline(), Some(t0 + Duration::from_millis(30)));
    }
}
