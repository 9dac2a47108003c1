//! What the request queue carries (generic over the job, so this module
//! needs nothing of the hand-off's). Normally a job as it is. With a
//! request timeout, each job is wrapped in a [`Claim`] that an app thread
//! or the watchdog takes, whichever comes first: a request still queued at
//! its deadline (every app thread stuck in a slow request) is answered 503
//! by the watchdog instead of waiting forever, which a channel alone does
//! not allow (nothing can take an item out of its middle).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// An item of the request queue.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // boxing the job would allocate per request
pub enum Queued<J> {
    Job(J),
    Claim(Arc<Claim<J>>),
}

impl<J> Queued<J> {
    /// The job, unless the watchdog answered it while it was queued.
    pub fn claim(self) -> Option<J> {
        match self {
            Queued::Job(job) => Some(job),
            Queued::Claim(claim) => claim.take(),
        }
    }
}

/// A queued job that either an app thread or the watchdog takes.
#[derive(Debug)]
pub struct Claim<J> {
    job: Mutex<Option<J>>,
    queued_at: Instant,
}

impl<J> Claim<J> {
    fn take(&self) -> Option<J> {
        self.job.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// The claims now queued, for the watchdog. Off (plain jobs) unless a
/// request timeout is configured.
#[derive(Debug)]
pub struct Claims<J> {
    on: AtomicBool,
    queued: Mutex<Vec<Weak<Claim<J>>>>,
}

impl<J> Default for Claims<J> {
    fn default() -> Self {
        Claims {
            on: AtomicBool::new(false),
            queued: Mutex::new(Vec::new()),
        }
    }
}

impl<J> Claims<J> {
    /// Queue claims from now on (before the IO threads start).
    pub fn enable(&self) {
        self.on.store(true, Ordering::Release);
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Weak<Claim<J>>>> {
        self.queued.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What to queue for `job`.
    pub(crate) fn wrap(&self, job: J) -> Queued<J> {
        if !self.on.load(Ordering::Acquire) {
            return Queued::Job(job);
        }
        let claim = Arc::new(Claim {
            job: Mutex::new(Some(job)),
            queued_at: Instant::now(),
        });
        self.lock().push(Arc::downgrade(&claim));
        Queued::Claim(claim)
    }

    /// Takes the jobs queued longer than `timeout`; forgets claims an app
    /// thread took.
    pub fn take_expired(&self, timeout: Duration) -> Vec<J> {
        let mut expired = Vec::new();
        self.lock().retain(|weak| {
            let Some(claim) = weak.upgrade() else {
                return false;
            };
            if claim.queued_at.elapsed() <= timeout {
                return true;
            }
            if let Some(job) = claim.take() {
                crate::stats::gauge(crate::stats::QUEUED, -1);
                expired.push(job);
            }
            false
        });
        expired
    }
}
