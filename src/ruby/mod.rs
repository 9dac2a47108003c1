//! The Ruby extension: the only code that touches magnus or rb-sys.
//!
//! - [`gvl`]: releasing the GVL, safely (the one unsafe boundary).
//! - [`env`]: a parsed request to a Rack env.
//! - [`response`]: the app's `[status, headers, body]` to bytes.
//! - [`engine`]: the `Butterflies::Engine` class and the app-thread loop.

mod engine;
mod env;
mod gvl;
mod response;

use magnus::{function, method, prelude::*, Error, Ruby};

#[magnus::init(name = "butterflies")]
fn init(ruby: &Ruby) -> Result<(), Error> {
    let module = ruby.define_module("Butterflies")?;
    let class = module.define_class("Engine", ruby.class_object())?;
    class.define_singleton_method("new", function!(engine::RbEngine::new, 2))?;
    class.define_method("addresses", method!(engine::RbEngine::addresses, 0))?;
    class.define_method("start", method!(engine::RbEngine::start, 0))?;
    class.define_method("stop", method!(engine::RbEngine::stop, 0))?;
    class.define_method("join", method!(engine::RbEngine::join, 0))?;
    class.define_method("stats", method!(engine::RbEngine::stats, 0))?;
    class.define_method("serve", method!(engine::RbEngine::serve, 3))?;
    Ok(())
}
