//! Blocking sections, as the serving code sees them. An app thread that
//! waits (for a slow client, for the next job, for demand) must give
//! Ruby's GVL away while it waits and take it back after; the serving code
//! says *where* it blocks through [`Blocking`], and `src/ruby/gvl.rs`
//! says *how* (with `rb_nogvl` and an unblock function). Tests run the
//! same code through [`Direct`], which just calls the section.

use std::convert::Infallible;

/// An unblock function and its argument, as `rb_nogvl` takes them: called
/// from another thread to cut a blocking section short (Ruby wants the
/// thread back: `Thread#kill`, `Thread#raise`, a signal, shutdown).
pub struct Unblock<'a, T: Sync> {
    pub func: fn(&T),
    pub arg: &'a T,
}

/// Runs blocking sections for an app thread.
pub trait Blocking {
    /// What comes back when the thread is wanted elsewhere (in Ruby: the
    /// exception to raise into it).
    type Interrupt;

    /// Runs `func`, which may block, and returns its result; `Err` when the
    /// thread has an interrupt to deliver instead. `func` touches nothing
    /// of the caller's runtime (it is `Send`).
    fn run<F, R, T>(&self, func: F, unblock: Option<Unblock<'_, T>>) -> Result<R, Self::Interrupt>
    where
        F: FnOnce() -> R + Send,
        R: Send,
        T: Sync;

    /// Delivers interrupts that are pending for this thread, after a
    /// section was cut short by its unblock function.
    fn check_interrupts(&self) -> Result<(), Self::Interrupt>;
}

/// Blocking sections run as plain calls: for tests, and for threads that
/// hold no lock to give away.
#[derive(Debug, Clone, Copy, Default)]
pub struct Direct;

impl Blocking for Direct {
    type Interrupt = Infallible;

    fn run<F, R, T>(&self, func: F, _unblock: Option<Unblock<'_, T>>) -> Result<R, Infallible>
    where
        F: FnOnce() -> R + Send,
        R: Send,
        T: Sync,
    {
        Ok(func())
    }

    fn check_interrupts(&self) -> Result<(), Infallible> {
        Ok(())
    }
}
