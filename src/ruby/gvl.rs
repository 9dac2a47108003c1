//! The GVL boundary: the only place that releases Ruby's Global VM Lock.
//!
//! Rules this module keeps (measured; see docs/ARCHITECTURE.md, "The GVL
//! boundary"):
//!
//! - Work runs "flat": the caller holds the GVL and calls [`without_gvl`]
//!   for short sections. We never re-take the GVL from inside a no-GVL
//!   section, because Ruby may raise right after such a nested call returns,
//!   outside any `protect`, and unwind through Rust frames.
//! - `rb_nogvl` gets `RB_NOGVL_INTR_FAIL`, so Ruby never raises around the
//!   call. With it, Ruby may skip the function entirely when an interrupt is
//!   pending; we notice, let Ruby handle the interrupt inside `protect`
//!   (which may raise, as a returned `Err`), and call again.
//! - The function may not touch Ruby: `F: Send` and `R: Send` make capturing
//!   a Ruby value (which is `!Send`) a compile error.
//! - A panic inside the function is caught and returned as a Ruby error; it
//!   never unwinds across the C frames of `rb_nogvl`.
//! - Blocking waits pass an unblock function, so `Thread#kill`, `Thread#raise`,
//!   Ctrl-C and shutdown end the wait at once.

use std::any::Any;
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

use magnus::{Error, Ruby};
use rb_sys::{rb_nogvl, rb_thread_check_ints, RB_NOGVL_INTR_FAIL};

use crate::serve::Blocking;
pub use crate::serve::Unblock;

/// The serving code's blocking sections (`crate::serve`), run without
/// the GVL: `Gvl(ruby).run(...)` is [`without_gvl`].
#[derive(Clone, Copy)]
pub struct Gvl<'a>(pub &'a Ruby);

impl Blocking for Gvl<'_> {
    type Interrupt = Error;

    fn run<F, R, T>(&self, func: F, unblock: Option<Unblock<'_, T>>) -> Result<R, Error>
    where
        F: FnOnce() -> R + Send,
        R: Send,
        T: Sync,
    {
        without_gvl(self.0, func, unblock)
    }

    fn check_interrupts(&self) -> Result<(), Error> {
        check_interrupts()
    }
}

struct Call<F, R> {
    func: Option<F>,
    result: Option<Result<R, Box<dyn Any + Send>>>,
}

struct UbfData<'a, T: Sync> {
    func: fn(&T),
    arg: &'a T,
}

/// Runs `func` with the GVL released and returns its result.
///
/// Returns `Err` when Ruby had an interrupt to deliver to this thread (an
/// exception raised into it, `Thread#kill`, a signal for the main thread):
/// the caller must pass that error up to Ruby unchanged.
pub fn without_gvl<F, R, T>(
    ruby: &Ruby,
    func: F,
    unblock: Option<Unblock<'_, T>>,
) -> Result<R, Error>
where
    F: FnOnce() -> R + Send,
    R: Send,
    T: Sync,
{
    let mut call = Call {
        func: Some(func),
        result: None,
    };
    let ubf_data = unblock.map(|u| UbfData {
        func: u.func,
        arg: u.arg,
    });
    loop {
        let (ubf, ubf_arg): (rb_sys::rb_unblock_function_t, *mut c_void) = match &ubf_data {
            Some(data) => (
                Some(run_ubf::<T>),
                data as *const UbfData<'_, T> as *mut c_void,
            ),
            None => (None, std::ptr::null_mut()),
        };
        // SAFETY: `call` and `ubf_data` outlive the call: rb_nogvl returns only
        // after `trampoline` finished (or was skipped) and after Ruby stopped
        // calling the unblock function. The trampoline catches panics, so no
        // unwind crosses the C frames. INTR_FAIL keeps Ruby from raising here.
        unsafe {
            rb_nogvl(
                Some(trampoline::<F, R>),
                &mut call as *mut Call<F, R> as *mut c_void,
                ubf,
                ubf_arg,
                RB_NOGVL_INTR_FAIL as i32,
            );
        }
        match call.result.take() {
            Some(Ok(value)) => return Ok(value),
            Some(Err(panic)) => return Err(panic_error(ruby, panic)),
            None => check_interrupts()?,
        }
    }
}

/// Lets Ruby run pending interrupts (signal handlers, `Thread#raise`, ...)
/// inside `protect`: an exception they raise comes back as `Err`.
pub fn check_interrupts() -> Result<(), Error> {
    magnus::rb_sys::protect(|| {
        // SAFETY: called with the GVL held; any raise is caught by protect.
        unsafe { rb_thread_check_ints() };
        rb_sys::Qnil as rb_sys::VALUE
    })
    .map(|_| ())
}

unsafe extern "C" fn trampoline<F, R>(data: *mut c_void) -> *mut c_void
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    // SAFETY: `data` is the `&mut Call<F, R>` that `without_gvl` passed, alive
    // and not otherwise borrowed while rb_nogvl runs.
    let call = unsafe { &mut *(data as *mut Call<F, R>) };
    if let Some(func) = call.func.take() {
        call.result = Some(catch_unwind(AssertUnwindSafe(func)));
    }
    std::ptr::null_mut()
}

unsafe extern "C" fn run_ubf<T: Sync>(data: *mut c_void) {
    // SAFETY: `data` is the `UbfData` that `without_gvl` keeps alive for the
    // whole rb_nogvl call; it is only read, and `T: Sync`.
    let data = unsafe { &*(data as *const UbfData<'_, T>) };
    let _ = catch_unwind(AssertUnwindSafe(|| (data.func)(data.arg)));
}

fn panic_error(ruby: &Ruby, panic: Box<dyn Any + Send>) -> Error {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string());
    Error::new(
        ruby.exception_fatal(),
        format!("butterflies: Rust panic without the GVL: {message}"),
    )
}
