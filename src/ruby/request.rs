//! One job on an app thread, GVL held: build the env, call the app, send
//! the response, hand the connection back, run the after-response
//! callbacks.
//!
//! What an exception means depends on when it happens:
//! - before anything was sent, an app error is a 500 and a log line;
//! - after the head was sent, the response cannot be repaired: the
//!   connection is closed without finishing the body (so a truncated
//!   chunked body never looks complete) and the error is logged;
//! - the client going away is not an app error: nothing is logged;
//! - anything that is not the app's to swallow (Thread#kill, SystemExit,
//!   signals) goes up to Ruby, and the connection is closed.

use std::sync::Arc;
use std::time::Duration;

use magnus::value::ReprValue;
use magnus::{prelude::*, Error, RArray, RHash, Ruby, Value};

use super::current::Current;
use super::errors::{is_disconnect, OrRaise};
use super::gvl::Gvl;
use super::response::{self, Outcome};
use super::{env, id, CALL, CLOSE};
use crate::http::response::simple;
use crate::net::{Job, Kept};
use crate::serve::flusher::Flusher;
use crate::serve::watchdog::Watchdog;
use crate::serve::{Exchange, Waker};

/// What every job on this app thread shares.
pub struct App {
    pub app: Value,
    /// Each env is a copy of this.
    pub template: env::Template,
    pub on_error: Value,
    pub waker: Arc<Waker>,
    pub write_timeout: Duration,
    /// Times requests out, when a request timeout is configured.
    pub watchdog: Option<Arc<Watchdog>>,
    /// Writes streamed pieces an app paused on.
    pub flusher: Option<Flusher>,
    /// The request queue: a connection is kept for its next request only
    /// while nothing waits in it.
    pub jobs: crossbeam_channel::Receiver<crate::net::Queued>,
    /// How long a kept connection is read for its next request (zero:
    /// never kept).
    pub keep_spin: Duration,
    /// What this thread's `rack.hijack` and `rack.early_hints` act on.
    pub current: Arc<Current>,
}

/// Serves one job. Returns the connection when it stays with this thread
/// for its next request ([`Kept`]), `Err` only for what must go up to Ruby.
/// `may_keep`: the connection may stay with this thread.
pub fn handle(ruby: &Ruby, app: &App, mut job: Job, may_keep: bool) -> Result<Option<Kept>, Error> {
    let keep_alive_wanted = job.request.head.keep_alive;
    let built = env::build(ruby, &app.template, &mut job.request);
    let ex = Arc::new(Exchange::new(job, app.waker.clone(), app.write_timeout));
    if let Some(dog) = &app.watchdog {
        dog.watch(&ex);
    }
    let mut env: Option<RHash> = None;
    let mut triple: Option<RArray> = None;
    let result = built.and_then(|built| {
        env = Some(built.env);
        let spooled = built.spooled_input;
        let _serving = app.current.serve(ex.clone(), built.env);
        let result = call(ruby, app, &ex, built.env, keep_alive_wanted, &mut triple);
        if let Some(file) = spooled {
            let _: Result<Value, Error> = file.funcall(id(ruby, &CLOSE), ());
        }
        result
    });
    let mut kept = None;
    let error = match result {
        Ok(Outcome::Hijacked) => None,
        Ok(Outcome::Sent { keep_alive }) => {
            kept = finish_or_keep(app, &ex, keep_alive, may_keep);
            None
        }
        Err(error) => Some(fail(ruby, app, &ex, error, env, keep_alive_wanted)?),
    };
    if let Some(env) = env {
        after_response(ruby, app, env, triple, error.flatten());
    }
    Ok(kept)
}

/// Hands the connection back to its IO thread, or keeps it for its next
/// request: while no other request waits for an app thread, or when that
/// request is already here (pipelined: serving it costs no wait).
fn finish_or_keep(app: &App, ex: &Exchange, keep_alive: bool, may_keep: bool) -> Option<Kept> {
    let idle_keep = may_keep && !app.keep_spin.is_zero() && app.jobs.is_empty();
    if !idle_keep && !ex.pipelined() {
        ex.hand_back(keep_alive);
        return None;
    }
    ex.hand_back_or_keep(keep_alive)
}

/// Calls the app and sends its response.
fn call(
    ruby: &Ruby,
    app: &App,
    ex: &Arc<Exchange>,
    env: RHash,
    keep_alive: bool,
    triple: &mut Option<RArray>,
) -> Result<Outcome, Error> {
    let result: Value = app.app.funcall(id(ruby, &CALL), (env,))?;
    *triple = RArray::from_value(result);
    // A stop or drain that came while the app ran still closes this
    // connection (Connection: close tells the client).
    let keep_alive = keep_alive && !ex.closing();
    response::send(ruby, ex, result, keep_alive, app.flusher.as_ref())
}

/// Deals with an exception from the app or from sending its response.
/// Returns the exception for the after-response callbacks, or `Err` when
/// it must go up to Ruby.
fn fail(
    ruby: &Ruby,
    app: &App,
    ex: &Arc<Exchange>,
    error: Error,
    env: Option<RHash>,
    keep_alive: bool,
) -> Result<Option<Value>, Error> {
    let app_error = is_app_error(ruby, &error);
    let disconnected = is_disconnect(ruby, &error);
    let mut custom = None;
    if app_error && !disconnected {
        custom = report(ruby, app.on_error, &error, env, ex.request_line());
    }
    if ex.hijacked() {
        return if app_error {
            Ok(error.value())
        } else {
            Err(error)
        };
    }
    if ex.head_sent() || disconnected || ex.broken() {
        ex.abandon();
    } else if app_error {
        let keep_alive = keep_alive && !ex.closing();
        // The lowlevel_error_handler's response, else a plain 500.
        let sent = match custom.map(|triple| response::send(ruby, ex, triple, keep_alive, None)) {
            Some(Ok(response::Outcome::Sent { keep_alive })) => Ok(keep_alive),
            Some(Ok(response::Outcome::Hijacked)) => Ok(false),
            Some(Err(e)) if ex.head_sent() => Err(e),
            Some(Err(_)) | None => {
                ex.note_status(500);
                ex.send(
                    &Gvl(ruby),
                    simple(500, "Internal Server Error\n", keep_alive),
                )
                .or_raise(ruby)
                .map(|()| keep_alive)
            }
        };
        match sent {
            Ok(keep_alive) => ex.hand_back(keep_alive),
            Err(_) => ex.abandon(),
        }
    }
    if app_error {
        Ok(exception_of(ruby, &error))
    } else {
        ex.abandon();
        Err(error)
    }
}

/// `rack.response_finished` (Rack 3: env, status, headers, error; in
/// reverse order of registration, as the SPEC says) and `rack.after_reply`
/// (Puma: no arguments, in order), after the connection went back. An
/// exception in one is logged and does not stop the others.
fn after_response(
    ruby: &Ruby,
    app: &App,
    env: RHash,
    triple: Option<RArray>,
    error: Option<Value>,
) {
    let nil = ruby.qnil().as_value();
    let entry = |i: isize| triple.and_then(|t| t.entry::<Value>(i).ok()).unwrap_or(nil);
    let (status, headers) = (entry(0), entry(1));
    for (key, with_args) in [
        (&env::RACK_RESPONSE_FINISHED, true),
        (&env::RACK_AFTER_REPLY, false),
    ] {
        let Some(callbacks) = env.get(ruby.get_inner(key)).and_then(RArray::from_value) else {
            continue;
        };
        // By index, read afresh each time: a callback may change the Array.
        let count = callbacks.len();
        for i in 0..count {
            let at = if with_args { count - 1 - i } else { i };
            let callback = match callbacks.entry::<Value>(at as isize) {
                Ok(callback) if !callback.is_nil() => callback,
                _ => continue,
            };
            let called: Result<Value, Error> = if with_args {
                callback.funcall(
                    id(ruby, &CALL),
                    (env, status, headers, error.unwrap_or(nil)),
                )
            } else {
                callback.funcall(id(ruby, &CALL), ())
            };
            if let Err(e) = called {
                report(ruby, app.on_error, &e, Some(env), None);
            }
        }
    }
}

/// The exception object behind an error (magnus keeps errors it raises
/// itself as class and message until they are raised).
fn exception_of(ruby: &Ruby, error: &Error) -> Option<Value> {
    match error.error_type() {
        magnus::error::ErrorType::Exception(e) => Some(e.as_value()),
        magnus::error::ErrorType::Error(class, message) => class
            .new_instance((ruby.str_new(message),))
            .ok()
            .map(|e: magnus::Exception| e.as_value()),
        magnus::error::ErrorType::Jump(_) => None,
    }
}

fn is_app_error(ruby: &Ruby, error: &Error) -> bool {
    error.is_kind_of(ruby.exception_standard_error())
        || error.is_kind_of(ruby.exception_script_error())
        || error.is_kind_of(ruby.exception_sys_stack_error())
}

/// Hands the exception to the Ruby side's error reporter (with the request
/// line as the client sent it, when known); if that fails too, says so on
/// stderr. Returns the response the reporter made (the app's
/// `lowlevel_error_handler`), if it made one.
fn report(
    ruby: &Ruby,
    on_error: Value,
    error: &Error,
    env: Option<RHash>,
    request: Option<String>,
) -> Option<Value> {
    let exception = exception_of(ruby, error).unwrap_or_else(|| ruby.qnil().as_value());
    let env = env.map_or_else(|| ruby.qnil().as_value(), |e| e.as_value());
    match on_error.funcall::<_, _, Value>("call", (exception, env, request)) {
        Ok(response) => RArray::from_value(response)
            .filter(|triple| triple.len() == 3)
            .map(|triple| triple.as_value()),
        Err(e) => {
            eprintln!("butterflies: app error ({error}), and the error reporter failed: {e}");
            None
        }
    }
}
