//! Response bytes parked with IO threads. An app thread whose client reads
//! slowly hands the unsent rest of a large response to the IO thread (in
//! the connection's output buffer) and goes back to work, instead of
//! waiting for the client; a global budget bounds what all connections may
//! hold that way. Past the budget, the app thread waits as before. A
//! connection's reservation is given back when its output is all written
//! or the connection is closed (the write timeout closes one that reads
//! nothing).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Bytes parked with IO threads, over all connections of an engine.
#[derive(Debug, Default)]
pub struct ParkBudget {
    limit: AtomicUsize,
    used: AtomicUsize,
}

/// Default budget: 256 MiB over all connections of a process.
pub const MAX_PARKED_BYTES: usize = 256 * 1024 * 1024;

impl ParkBudget {
    pub fn set_limit(&self, bytes: usize) {
        self.limit.store(bytes, Ordering::Relaxed);
    }

    /// Bytes parked now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn try_reserve(&self, bytes: usize) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= limit)
            })
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
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
