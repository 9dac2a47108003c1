//! `Butterflies::EarlyHints`: `env["rack.early_hints"]`.

use std::sync::Arc;

use magnus::{method, prelude::*, Error, RHash, RModule, RString, Ruby, Value};

use super::current::Current;
use super::errors::OrRaise;
use super::gvl::Gvl;
use crate::http::response::ResponseHead;
use crate::http::Version;

pub fn init(ruby: &Ruby, module: RModule) -> Result<(), Error> {
    let class = module.define_class("EarlyHints", ruby.class_object())?;
    class.define_method("call", method!(EarlyHints::call, 1))?;
    Ok(())
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

/// Makes the class before any app thread runs.
pub fn warm(ruby: &Ruby) {
    use magnus::TypedData;
    let _ = EarlyHints::class(ruby);
}
