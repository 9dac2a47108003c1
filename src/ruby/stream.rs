//! The Ruby objects an app gets for one exchange, all backed by the same
//! [`Exchange`]:
//!
//! - `Butterflies::Stream`: the Rack 3 stream (`body.call(stream)`), also
//!   what `each` bodies are written through, chunk by chunk, as produced.
//! - `Butterflies::Hijack`: `env["rack.hijack"]`.
//! - `Butterflies::EarlyHints`: `env["rack.early_hints"]`.
//!
//! The last two are made once per app thread and act on the exchange that
//! thread is serving ([`Current`]): two Ruby objects made and freed for
//! every request cost about 10% of hello's throughput.

use std::os::fd::IntoRawFd;
use std::sync::{Arc, Mutex, MutexGuard};

use magnus::typed_data::Obj;
use magnus::value::Opaque;
use magnus::value::ReprValue;
use magnus::{gc, DataTypeFunctions};
use magnus::{prelude::*, Error, RHash, RString, Ruby, Value};

use super::errors::{IntoRuby, OrRaise};
use super::gvl::Gvl;
use crate::http::response::ResponseHead;
use crate::http::Version;
use crate::serve::flusher::Flusher;
use crate::serve::{Exchange, ExchangeError, Gone};

/// Bytes read per `Stream#read` without a length.
const READ_BYTES: usize = 16 * 1024;

#[magnus::wrap(class = "Butterflies::Stream", free_immediately, size)]
pub struct Stream(pub Arc<Exchange>, pub Option<Flusher>);

impl Stream {
    /// Writes one piece of the body, framed as the head announced.
    pub fn write(ruby: &Ruby, rb_self: &Self, data: RString) -> Result<usize, Error> {
        let ex = &rb_self.0;
        if ex.broken() {
            // The client went away: a disconnect, not an app error.
            return Err(ExchangeError::<Error>::Disconnected(Gone::Closed).into_ruby(ruby));
        }
        if ex.is_finished() {
            return Err(Error::new(ruby.exception_io_error(), "closed stream"));
        }
        // SAFETY: the slice is used only until send_piece returns; no Ruby
        // code runs before that, so the string cannot change or move, and
        // `data` is on the stack, so the GC keeps it.
        let bytes = unsafe { data.as_slice() };
        let len = bytes.len();
        if len == 0 {
            return Ok(0);
        }
        let flusher = rb_self.1.as_ref();
        let gather = flusher.is_some();
        // Framed as the head announced; HEAD, 204 and 304 send nothing.
        let framed = ex.frame(bytes);
        let waiting = !framed.is_empty()
            && ex
                .send_piece(&Gvl(ruby), &framed.parts(), gather)
                .or_raise(ruby)?;
        if let (true, Some(flusher)) = (waiting, flusher) {
            flusher.watch(ex);
        }
        Ok(len)
    }

    pub fn append(ruby: &Ruby, rb_self: Obj<Self>, data: RString) -> Result<Obj<Self>, Error> {
        Self::write(ruby, &rb_self, data)?;
        Ok(rb_self)
    }

    /// Writes the pieces gathered so far now (see `Exchange::send_piece`):
    /// a server-sent event goes out when the app flushes it.
    pub fn flush(ruby: &Ruby, rb_self: Obj<Self>) -> Result<Obj<Self>, Error> {
        rb_self.0.flush(&Gvl(ruby)).or_raise(ruby)?;
        Ok(rb_self)
    }

    /// Ends the body (the last chunk, for a chunked one).
    pub fn close(ruby: &Ruby, rb_self: &Self) -> Result<(), Error> {
        finish_body(ruby, &rb_self.0)
    }

    pub fn is_closed(&self) -> bool {
        self.0.is_finished()
    }

    /// `read(length = nil, buffer = nil)`: bytes the client sent after the
    /// request; nil at end of stream.
    pub fn read(ruby: &Ruby, rb_self: &Self, args: &[Value]) -> Result<Value, Error> {
        let length = match args.first() {
            Some(v) if !v.is_nil() => usize::try_convert(*v)?,
            _ => READ_BYTES,
        };
        match rb_self.0.read(&Gvl(ruby), length).or_raise(ruby)? {
            None => Ok(ruby.qnil().as_value()),
            Some(bytes) => match args.get(1).and_then(|v| RString::from_value(*v)) {
                Some(buffer) => {
                    let _: Value = buffer.funcall("replace", (ruby.str_from_slice(&bytes),))?;
                    Ok(buffer.as_value())
                }
                None => Ok(ruby.str_from_slice(&bytes).as_value()),
            },
        }
    }

    pub fn close_read(&self) {}
}

/// Ends a streamed body once: the last chunk for chunked framing.
pub fn finish_body(ruby: &Ruby, ex: &Exchange) -> Result<(), Error> {
    if ex.is_finished() {
        return Ok(());
    }
    let last = ex.finish_framing();
    ex.mark_finished();
    // The last chunk, if any, and what gathered.
    ex.send_now(&Gvl(ruby), &[last]).or_raise(ruby)
}

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

    fn get(&self) -> Option<(Arc<Exchange>, Opaque<RHash>)> {
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

/// `env["rack.hijack"]`: takes over the socket of the request its app
/// thread is serving. Called outside one (kept past the request), it
/// raises instead of touching another request.
#[derive(magnus::TypedData)]
#[magnus(class = "Butterflies::Hijack", free_immediately, size, mark)]
pub struct Hijack(pub Arc<Current>);

impl DataTypeFunctions for Hijack {
    fn mark(&self, marker: &gc::Marker) {
        // The env is on the app thread's stack too; this is belt and braces,
        // and never waits (the slot is only held for a moment, with no Ruby
        // code running, so the GC cannot run inside it).
        if let Ok(slot) = self.0 .0.try_lock() {
            if let Some((_, env)) = slot.as_ref() {
                marker.mark(*env);
            }
        }
    }
}

keys! {
    RACK_HIJACK_IO = "rack.hijack_io";
}

impl Hijack {
    /// Takes the socket over: returns it as a Ruby socket, and sets
    /// `env["rack.hijack_io"]`. Later calls return the same socket.
    pub fn call(ruby: &Ruby, rb_self: &Self) -> Result<Value, Error> {
        let Some((ex, env)) = rb_self.0.get() else {
            return Err(Error::new(
                ruby.exception_io_error(),
                "rack.hijack called after its request",
            ));
        };
        let env = ruby.get_inner(env);
        let key = ruby.get_inner(&RACK_HIJACK_IO);
        if let Some(io) = env.get(key).filter(|io| !io.is_nil()) {
            if ex.hijacked() {
                return Ok(io);
            }
        }
        let io = hijack_io(ruby, &ex)?;
        env.aset(key, io)?;
        Ok(io)
    }
}

/// `::TCPSocket`, looked up before any app thread runs (`warm`).
static TCP_SOCKET: magnus::value::Lazy<magnus::RClass> = magnus::value::Lazy::new(|ruby| {
    ruby.class_object()
        .const_get("TCPSocket")
        .unwrap_or_else(|_| ruby.class_io())
});

/// Makes what the objects of this file look up, before any app thread runs.
pub fn warm(ruby: &Ruby) {
    use magnus::TypedData;
    magnus::value::Lazy::force(&TCP_SOCKET, ruby);
    let _ = Stream::class(ruby);
    let _ = Hijack::class(ruby);
    let _ = EarlyHints::class(ruby);
}

/// Takes the exchange's socket over and wraps it in a Ruby `TCPSocket`.
pub fn hijack_io(ruby: &Ruby, ex: &Exchange) -> Result<Value, Error> {
    let fd = ex.hijack::<Error>().or_raise(ruby)?.into_raw_fd();
    match ruby
        .get_inner(&TCP_SOCKET)
        .funcall::<_, _, Value>("for_fd", (fd,))
    {
        Ok(io) => Ok(io),
        Err(e) => {
            let _ = nix::unistd::close(fd);
            Err(e)
        }
    }
}

/// `env["rack.early_hints"]`, for the request its app thread is serving.
#[magnus::wrap(class = "Butterflies::EarlyHints", free_immediately, size)]
pub struct EarlyHints(pub Arc<Current>);

impl EarlyHints {
    /// Sends `103 Early Hints` with the given headers (HTTP/1.1 only,
    /// and only before the response itself).
    pub fn call(ruby: &Ruby, rb_self: &Self, headers: RHash) -> Result<(), Error> {
        let Some((ex, _)) = rb_self.0.get() else {
            return Ok(()); // after its request: too late for hints
        };
        if ex.version != Version::Http11 || ex.head_sent() || ex.is_finished() {
            return Ok(());
        }
        let mut head = ResponseHead::new(103)
            .map_err(|e| Error::new(ruby.exception_arg_error(), e.to_string()))?;
        headers.foreach(|name: RString, value: Value| {
            super::headers::add_field(ruby, &mut head, name, value)?;
            Ok(magnus::r_hash::ForEach::Continue)
        })?;
        let mut out = Vec::with_capacity(128);
        head.write_informational(&mut out);
        ex.send(&Gvl(ruby), out).or_raise(ruby)
    }
}
