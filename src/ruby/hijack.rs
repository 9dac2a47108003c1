//! `Butterflies::Hijack`: `env["rack.hijack"]`, and the partial hijack's
//! socket.

use std::os::fd::IntoRawFd;
use std::sync::Arc;

use magnus::{gc, method, prelude::*, DataTypeFunctions, Error, RModule, Ruby, Value};

use super::current::Current;
use super::errors::OrRaise;
use super::gvl::Gvl;
use crate::serve::Exchange;

pub fn init(ruby: &Ruby, module: RModule) -> Result<(), Error> {
    let class = module.define_class("Hijack", ruby.class_object())?;
    class.define_method("call", method!(Hijack::call, 0))?;
    Ok(())
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
        if let Some(env) = self.0.env_if_free() {
            marker.mark(env);
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

/// Makes the class and constant this file looks up, before any app thread
/// runs (see docs/ARCHITECTURE.md, "Lazily made Ruby values").
pub fn warm(ruby: &Ruby) {
    use magnus::TypedData;
    magnus::value::Lazy::force(&TCP_SOCKET, ruby);
    let _ = Hijack::class(ruby);
}

/// Takes the exchange's socket over and wraps it in a Ruby `TCPSocket`.
pub fn hijack_io(ruby: &Ruby, ex: &Exchange) -> Result<Value, Error> {
    let fd = ex.hijack(&Gvl(ruby)).or_raise(ruby)?.into_raw_fd();
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
