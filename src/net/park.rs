//! Response bytes parked with IO threads. An app thread whose client reads
//! slowly hands the unsent rest of a large response to the IO thread (in
//! the connection's output buffer) and goes back to work, instead of
//! waiting for the client; a global budget bounds what all connections may
//! hold that way. Past the budget, the app thread waits as before. A
//! connection's reservation is given back when its output is all written
//! or the connection is closed (the write timeout closes one that reads
//! nothing). The same type bounds the bytes spilled to disk past it
//! (`net::spill`); when that budget too refuses, it counts a shortfall,
//! and each IO thread closes its slowest client to make room.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Bytes parked with IO threads, over all connections of an engine.
#[derive(Debug)]
pub struct ParkBudget {
    limit: AtomicUsize,
    used: AtomicUsize,
    /// The stats gauge that shows `used` (`usize::MAX`: none).
    gauge: AtomicUsize,
    /// Times a response found no room in this budget and its app thread
    /// had to wait for the client (only the last budget tried counts).
    shortfalls: AtomicU64,
}

impl Default for ParkBudget {
    fn default() -> Self {
        ParkBudget {
            limit: AtomicUsize::new(0),
            used: AtomicUsize::new(0),
            gauge: AtomicUsize::new(usize::MAX),
            shortfalls: AtomicU64::new(0),
        }
    }
}

/// Default budget: 256 MiB over all connections of a process.
pub const MAX_PARKED_BYTES: usize = 256 * 1024 * 1024;

/// Past the memory budget, output is spilled to unlinked temporary files
/// (see `net::spill`), within this many bytes of disk per process.
pub const MAX_SPILLED_BYTES: usize = 4 * 1024 * 1024 * 1024;

impl ParkBudget {
    pub fn set_limit(&self, bytes: usize) {
        self.limit.store(bytes, Ordering::Relaxed);
    }

    /// Shows what is used in stats gauge `index` of this process's slot.
    pub fn show_in(&self, index: usize) {
        self.gauge.store(index, Ordering::Relaxed);
    }

    /// Bytes parked now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Notes that a response found no room (see `shortfalls`).
    pub fn fell_short(&self) {
        self.shortfalls.fetch_add(1, Ordering::Relaxed);
    }

    /// How many times a response found no room, ever: an IO thread that
    /// sees it grow makes room.
    pub fn shortfalls(&self) -> u64 {
        self.shortfalls.load(Ordering::Relaxed)
    }

    fn try_reserve(&self, bytes: usize) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        let reserved = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= limit)
            })
            .is_ok();
        if reserved {
            self.show(bytes as i64);
        }
        reserved
    }

    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
        self.show(-(bytes as i64));
    }

    fn show(&self, delta: i64) {
        let index = self.gauge.load(Ordering::Relaxed);
        if index != usize::MAX && delta != 0 {
            crate::stats::gauge(index, delta);
        }
    }
}

/// One connection's reservation; given back when dropped.
#[derive(Debug)]
pub struct Parked {
    budget: Arc<ParkBudget>,
    bytes: usize,
}

impl Parked {
    /// Grows (or makes) `slot`'s reservation to `bytes`. False, and nothing
    /// changed, if the budget cannot take the difference.
    pub fn cover(slot: &mut Option<Parked>, budget: &Arc<ParkBudget>, bytes: usize) -> bool {
        let held = slot.as_ref().map_or(0, |p| p.bytes);
        if bytes <= held {
            return true;
        }
        if !budget.try_reserve(bytes - held) {
            return false;
        }
        match slot {
            Some(parked) => parked.bytes = bytes,
            None => {
                *slot = Some(Parked {
                    budget: budget.clone(),
                    bytes,
                })
            }
        }
        true
    }
}

impl Parked {
    /// Grows this reservation by `bytes`; false, and nothing changed, if
    /// its budget cannot take them.
    pub fn grow(&mut self, bytes: usize) -> bool {
        if !self.budget.try_reserve(bytes) {
            return false;
        }
        self.bytes += bytes;
        true
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stay_within_the_budget_and_are_given_back() {
        let budget = Arc::new(ParkBudget::default());
        budget.set_limit(100);
        let (mut a, mut b) = (None, None);
        assert!(Parked::cover(&mut a, &budget, 60));
        assert!(Parked::cover(&mut a, &budget, 70), "growing by 10");
        assert!(!Parked::cover(&mut b, &budget, 40), "70 + 40 > 100");
        assert!(b.is_none());
        assert!(Parked::cover(&mut b, &budget, 30));
        assert_eq!(budget.used(), 100);
        assert!(Parked::cover(&mut a, &budget, 10), "already covered");
        drop(a.take());
        assert_eq!(budget.used(), 30);
        drop(b.take());
        assert_eq!(budget.used(), 0);
    }
}
