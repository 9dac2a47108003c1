//! `Butterflies::Stream`: the Rack 3 stream (`body.call(stream)`), also
//! what `each` bodies are written through, chunk by chunk, as produced.
//! Backed by the request's [`Exchange`].

use std::sync::Arc;

use magnus::typed_data::Obj;
use magnus::value::ReprValue;
use magnus::{method, prelude::*, Error, RModule, RString, Ruby, Value};

use super::errors::OrRaise;
use super::gvl::Gvl;
use crate::serve::exchange::Piece;
use crate::serve::flusher::Flusher;
use crate::serve::Exchange;

pub fn init(ruby: &Ruby, module: RModule) -> Result<(), Error> {
    let class = module.define_class("Stream", ruby.class_object())?;
    class.define_method("write", method!(Stream::write, 1))?;
    class.define_method("<<", method!(Stream::append, 1))?;
    class.define_method("flush", method!(Stream::flush, 0))?;
    class.define_method("close", method!(Stream::close, 0))?;
    class.define_method("close_write", method!(Stream::close, 0))?;
    class.define_method("closed?", method!(Stream::is_closed, 0))?;
    class.define_method("read", method!(Stream::read, -1))?;
    class.define_method("close_read", method!(Stream::close_read, 0))?;
    Ok(())
}

/// Makes the class before any app thread runs.
pub fn warm(ruby: &Ruby) {
    use magnus::TypedData;
    let _ = Stream::class(ruby);
}

/// Bytes read per `Stream#read` without a length.
const READ_BYTES: usize = 16 * 1024;

#[magnus::wrap(class = "Butterflies::Stream", free_immediately, size)]
pub struct Stream(pub Arc<Exchange>, pub Option<Flusher>);

impl Stream {
    /// Writes one piece of the body, framed as the head announced.
    pub fn write(ruby: &Ruby, rb_self: &Self, data: RString) -> Result<usize, Error> {
        let ex = &rb_self.0;
        // SAFETY: `data` is on the stack, so the GC keeps it. write_piece
        // writes the bytes or copies them into the connection's buffer with
        // the GVL held, before any blocking section that may release it (a
        // wait for a slow client writes only what was copied), so no other
        // Ruby thread can change or move the string while the slice is read.
        let bytes = unsafe { data.as_slice() };
        let len = bytes.len();
        if len == 0 {
            return Ok(0);
        }
        let flusher = rb_self.1.as_ref();
        // Framed as the head announced; a client gone is a disconnect, not
        // an app error.
        match ex
            .write_piece(&Gvl(ruby), bytes, flusher.is_some())
            .or_raise(ruby)?
        {
            Piece::Out => {}
            Piece::Waiting => {
                if let Some(flusher) = flusher {
                    flusher.watch(ex);
                }
            }
            Piece::Closed => return Err(Error::new(ruby.exception_io_error(), "closed stream")),
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
