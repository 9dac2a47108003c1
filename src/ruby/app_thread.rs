//! `Engine#serve`: a Ruby thread runs the app-thread loop
//! (`crate::serve::app_loop`), its blocking sections without the GVL, and
//! serves each request with the GVL held (`request.rs`).

use std::sync::Arc;
use std::time::Duration;

use magnus::value::{BoxValue, ReprValue};
use magnus::{method, prelude::*, Error, RHash, RModule, Ruby, Value};

use super::current::Current;
use super::early_hints::EarlyHints;
use super::engine::RbEngine;
use super::errors::{ExtError, OrRaise};
use super::gvl::Gvl;
use super::hijack::Hijack;
use super::{env, request};
use crate::serve::app_loop::AppLoop;
use crate::serve::Waker;

/// The app-thread loop. Returns when the engine has stopped and drained;
/// raises whatever Ruby delivers to this thread (kill, raise, signals).
/// `idle_exit`: seconds after which an idle thread returns (0: never);
/// for threads the pool added on demand.
/// Defines `Engine#serve` (the class itself is `engine.rs`'s).
pub fn init(ruby: &Ruby, module: RModule) -> Result<(), Error> {
    let class = module.define_class("Engine", ruby.class_object())?;
    class.define_method("serve", method!(serve, 4))?;
    Ok(())
}

pub fn serve(
    ruby: &Ruby,
    rb_self: &RbEngine,
    app: Value,
    base_env: RHash,
    on_error: Value,
    idle_exit: f64,
) -> Result<(), Error> {
    let jobs = rb_self.jobs.clone();
    let idle_exit = (idle_exit > 0.0).then(|| Duration::from_secs_f64(idle_exit));
    let waker = Arc::new(Waker::new().map_err(ExtError::Start).or_raise(ruby)?);
    // This thread's rack.hijack and rack.early_hints, kept from the GC
    // by the boxes for as long as the thread serves.
    let current = Arc::new(Current::default());
    let hijack = BoxValue::new(ruby.obj_wrap(Hijack(current.clone())).as_value());
    let early_hints = BoxValue::new(ruby.obj_wrap(EarlyHints(current.clone())).as_value());
    // Boxed by the template, which every env copies.
    let template = env::Template::new(
        ruby,
        base_env,
        &[
            (ruby.get_inner(&env::RACK_HIJACK), *hijack),
            (ruby.get_inner(&env::RACK_EARLY_HINTS), *early_hints),
        ],
    )?;
    let app = request::App {
        app,
        template,
        on_error,
        waker,
        write_timeout: rb_self.write_timeout,
        watchdog: rb_self.watchdog(),
        flusher: rb_self
            .flusher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
        jobs: jobs.clone(),
        keep_spin: rb_self.idle_spin,
        current,
    };
    let gvl = Gvl(ruby);
    let loops = rb_self.loops();
    let app_loop = AppLoop {
        jobs: &jobs,
        doorbell: &rb_self.doorbell,
        pool: &rb_self.pool,
        limits: &rb_self.limits,
        keep_spin: rb_self.idle_spin,
        idle_exit,
        batch: GVL_BATCH,
        loops: loops.as_ref().map(|(loops, home)| (&**loops, *home)),
    };
    app_loop.run(&gvl, |job, may_keep| {
        request::handle(ruby, &app, job, may_keep)
    })
}

/// How long an app thread keeps the GVL across the requests it serves
/// back to back (small responses are written with it held) before it
/// releases it to let the other app threads in. Per request instead,
/// Ruby 3.3 handed the GVL to a waiting thread at every write and the
/// writer paid a context switch to get it back: hello c=32 did 37-40k
/// req/s on 3.3 against 85k on 3.1. Never, and requests another thread
/// had taken waited a whole time slice (hello c=256 p99 100 ms). 500 us
/// measured best of 100, 500 and 2000 (docs/PERFORMANCE.md).
const GVL_BATCH: Duration = Duration::from_micros(500);
