//! The Ruby extension: the only code that touches magnus or rb-sys.
//!
//! - [`gvl`]: releasing the GVL, safely (the one unsafe boundary).
//! - [`env`]: a parsed request to a Rack env.
//! - [`response`]: the app's `[status, headers, body]`, sent by body kind.
//! - [`snapshot`]: frozen snapshots of body strings, readable without the GVL.
//! - [`headers`]: status and headers as a response head.
//! - [`engine`]: the `Butterflies::Engine` class and the app-thread loop.
//! - [`request`]: one job: env, app call, response, after-response hooks.
//! - [`exchange`]: a request's connection while the app runs; writes.
//! - [`stream`]: the Ruby objects for streaming, hijack and early hints.

/// Frozen, interned Ruby strings made once, for hash keys: `keys! { NAME = "text"; }`.
macro_rules! keys {
    ($($name:ident = $text:literal;)*) => {
        $(static $name: magnus::value::Lazy<magnus::RString> =
            magnus::value::Lazy::new(|ruby| ruby.str_new($text).to_interned_str());)*
    };
}

/// Method names interned once: `ids! { CALL = "call"; }`, then
/// `id(ruby, &CALL)` where a name is wanted (`funcall`, `respond_to`).
macro_rules! ids {
    ($($name:ident = $text:literal;)*) => {
        $(pub(crate) static $name: magnus::value::LazyId = magnus::value::LazyId::new($text);)*
    };
}

ids! {
    CALL = "call";
    CLOSE = "close";
    EACH = "each";
    TO_ARY = "to_ary";
    TO_PATH = "to_path";
}

/// The interned name.
fn id(ruby: &Ruby, name: &magnus::value::LazyId) -> magnus::value::Id {
    magnus::value::LazyId::get_inner_with(name, ruby)
}

mod engine;
mod env;
mod errors;
mod gvl;
mod headers;
mod request;
mod response;
mod snapshot;
mod stream;

use magnus::{function, method, prelude::*, Error, Ruby};

#[magnus::init(name = "butterflies")]
fn init(ruby: &Ruby) -> Result<(), Error> {
    errors::init(ruby)?;
    let module = ruby.define_module("Butterflies")?;
    let class = module.define_class("Engine", ruby.class_object())?;
    class.define_singleton_method("new", function!(engine::RbEngine::new, 2))?;
    class.define_singleton_method("defaults", function!(engine::RbEngine::defaults, 0))?;
    class.define_singleton_method("pin_process", function!(engine::RbEngine::pin_process, 1))?;
    class.define_method("addresses", method!(engine::RbEngine::addresses, 0))?;
    class.define_method("listener_fds", method!(engine::RbEngine::listener_fds, 0))?;
    class.define_method("start", method!(engine::RbEngine::start, 0))?;
    class.define_method("stop", method!(engine::RbEngine::stop, 1))?;
    class.define_method("join", method!(engine::RbEngine::join, 0))?;
    class.define_method(
        "wait_for_fault",
        method!(engine::RbEngine::wait_for_fault, 1),
    )?;
    class.define_method("stats", method!(engine::RbEngine::stats, 0))?;
    class.define_method("stuck?", method!(engine::RbEngine::is_stuck, 0))?;
    class.define_method("serve", method!(engine::RbEngine::serve, 4))?;
    class.define_method(
        "wait_for_demand",
        method!(engine::RbEngine::wait_for_demand, 1),
    )?;

    let stream = module.define_class("Stream", ruby.class_object())?;
    stream.define_method("write", method!(stream::Stream::write, 1))?;
    stream.define_method("<<", method!(stream::Stream::append, 1))?;
    stream.define_method("flush", method!(stream::Stream::flush, 0))?;
    stream.define_method("close", method!(stream::Stream::close, 0))?;
    stream.define_method("close_write", method!(stream::Stream::close, 0))?;
    stream.define_method("closed?", method!(stream::Stream::is_closed, 0))?;
    stream.define_method("read", method!(stream::Stream::read, -1))?;
    stream.define_method("close_read", method!(stream::Stream::close_read, 0))?;
    let hijack = module.define_class("Hijack", ruby.class_object())?;
    hijack.define_method("call", method!(stream::Hijack::call, 0))?;
    let hints = module.define_class("EarlyHints", ruby.class_object())?;
    hints.define_method("call", method!(stream::EarlyHints::call, 1))?;
    Ok(())
}
