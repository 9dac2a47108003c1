//! The Ruby extension: the only code that touches magnus or rb-sys.
//!
//! - [`gvl`]: releasing the GVL, safely (the one unsafe boundary).
//! - [`env`]: a parsed request to a Rack env.
//! - [`response`]: the app's `[status, headers, body]`, sent by body kind.
//! - [`snapshot`]: frozen snapshots of body strings, readable without the GVL.
//! - [`headers`]: status and headers as a response head.
//! - [`engine`]: the `Butterflies::Engine` class.
//! - [`app_thread`]: the app-thread loop (`Engine#serve`).
//! - [`request`]: one job: env, app call, response, after-response hooks.
//! - [`errors`]: Rust errors into Ruby exceptions, in one place.
//! - [`stream`], [`hijack`], [`early_hints`]: `Butterflies::Stream`,
//!   `Butterflies::Hijack`, `Butterflies::EarlyHints`, one class a file,
//!   each with its `init`; [`current`]: what an app thread serves now.

/// Frozen, interned Ruby strings made once, for hash keys: `keys! { NAME = "text"; }`.
macro_rules! keys {
    ($($vis:vis $name:ident = $text:literal;)*) => {
        $($vis static $name: magnus::value::Lazy<magnus::RString> =
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

mod app_thread;
mod current;
mod early_hints;
mod engine;
mod env;
mod errors;
mod gvl;
mod hash_walk;
mod headers;
mod hijack;
mod request;
mod response;
mod snapshot;
mod stats;
mod stream;

use magnus::{Error, Ruby};

#[magnus::init(name = "butterflies")]
fn init(ruby: &Ruby) -> Result<(), Error> {
    errors::init(ruby)?;
    let module = ruby.define_module("Butterflies")?;
    engine::init(ruby, module)?;
    app_thread::init(ruby, module)?;
    stream::init(ruby, module)?;
    hijack::init(ruby, module)?;
    early_hints::init(ruby, module)?;
    stats::init(ruby, module)?;
    Ok(())
}
