//! What an app thread is serving now, for the objects that thread puts in
//! every env (`rack.hijack`, `rack.early_hints`): made once per app thread,
//! because two Ruby objects made and freed for every request cost about
//! 10% of hello's throughput.

use std::sync::{Arc, Mutex, MutexGuard};

use magnus::value::Opaque;
use magnus::RHash;

use crate::serve::Exchange;

/// The exchange an app thread is serving, with its env, for the objects
/// that thread puts in every env. Set for the app call and the response,
/// empty otherwise.
#[derive(Default)]
pub struct Current(Mutex<Option<(Arc<Exchange>, Opaque<RHash>)>>);

impl Current {
    fn slot(&self) -> MutexGuard<'_, Option<(Arc<Exchange>, Opaque<RHash>)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serving `ex` now, with `env`, until the returned guard is dropped.
    pub fn serve(&self, ex: Arc<Exchange>, env: RHash) -> Serving<'_> {
        *self.slot() = Some((ex, env.into()));
        Serving(self)
    }

    /// The env being served, for the GC's mark phase: never waits (the
    /// slot is held only for a moment, with no Ruby code running, so the
    /// GC cannot run inside it).
    pub fn env_if_free(&self) -> Option<Opaque<RHash>> {
        self.0.try_lock().ok()?.as_ref().map(|(_, env)| *env)
    }

    pub fn get(&self) -> Option<(Arc<Exchange>, Opaque<RHash>)> {
        self.slot().clone()
    }
}

/// Empties [`Current`] when the exchange is over, however it ended.
pub struct Serving<'a>(&'a Current);

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        *self.0.slot() = None;
    }
}
