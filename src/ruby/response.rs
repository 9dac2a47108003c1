//! Reads the app's response triple into bytes while the GVL is held, so the
//! write that follows needs nothing from Ruby. The body's `close` is always
//! called, whatever else fails.

use magnus::value::{Lazy, ReprValue};
use magnus::{Error, RArray, RHash, RString, Ruby, Value};

use crate::http::response::{push_chunk, Framing, ResponseHead, LAST_CHUNK};
use crate::http::Version;

/// `each` with a Ruby block, returning the chunks; Rust cannot pass a
/// capturing closure as a block.
static COLLECT_EACH: Lazy<Value> = Lazy::new(|ruby| {
    ruby.eval("->(body) { chunks = []; body.each { |chunk| chunks << chunk }; chunks }")
        .unwrap_or_else(|_| ruby.qnil().as_value())
});

/// What the request asked for, as far as the response framing cares.
#[derive(Clone, Copy)]
pub struct Wanted {
    pub version: Version,
    pub head_request: bool,
    pub keep_alive: bool,
}

/// Serialises the response triple. Returns the bytes and whether the
/// connection stays open after them.
pub fn serialize(ruby: &Ruby, triple: Value, wanted: &Wanted) -> Result<(Vec<u8>, bool), Error> {
    let triple = RArray::from_value(triple)
        .filter(|a| a.len() == 3)
        .ok_or_else(|| invalid(ruby, "the app must return [status, headers, body]"))?;
    let status: Value = triple.entry(0)?;
    let headers: Value = triple.entry(1)?;
    let body: Value = triple.entry(2)?;
    let read = read_parts(ruby, status, headers, body);
    let closed = close_body(body);
    let (head, body) = read?;
    closed?;

    let total: u64 = body.chunks.iter().map(|c| c.len() as u64).sum();
    let body_len = body.from_array.then_some(total);
    let framing = head.framing(wanted.version, wanted.head_request, body_len);
    let mut out = Vec::with_capacity(256 + total as usize);
    let keep_alive = head.write(&mut out, wanted.version, framing, wanted.keep_alive);
    let chunks = body.chunks;
    match framing {
        Framing::None | Framing::HeadLength(_) => {}
        Framing::Chunked => {
            for chunk in &chunks {
                push_chunk(&mut out, chunk);
            }
            out.extend_from_slice(LAST_CHUNK);
        }
        Framing::Length(_) | Framing::AppFramed | Framing::UntilClose => {
            for chunk in &chunks {
                out.extend_from_slice(chunk);
            }
        }
    }
    Ok((out, keep_alive))
}

/// The body as read: its chunks, and whether it was an Array (so its
/// length is known up front and it gets a Content-Length).
struct Body {
    chunks: Vec<Vec<u8>>,
    from_array: bool,
}

/// Reads status, headers and every body chunk.
fn read_parts(
    ruby: &Ruby,
    status: Value,
    headers: Value,
    body: Value,
) -> Result<(ResponseHead, Body), Error> {
    let status = magnus::Integer::from_value(status)
        .and_then(|i| i.to_i64().ok())
        .ok_or_else(|| invalid(ruby, "the status must be an Integer"))?;
    let mut head = ResponseHead::new(status).map_err(|e| invalid(ruby, &e.to_string()))?;
    let headers =
        RHash::from_value(headers).ok_or_else(|| invalid(ruby, "the headers must be a Hash"))?;
    headers.foreach(|name: RString, value: Value| {
        add_field(ruby, &mut head, name, value)?;
        Ok(magnus::r_hash::ForEach::Continue)
    })?;
    let from_array = body.respond_to("to_ary", false)?;
    let chunks: RArray = if from_array {
        body.funcall("to_ary", ())?
    } else if body.respond_to("each", false)? {
        ruby.get_inner(&COLLECT_EACH).funcall("call", (body,))?
    } else {
        return Err(invalid(ruby, "the body must respond to each"));
    };
    let mut out = Vec::with_capacity(chunks.len());
    for chunk in chunks.into_iter() {
        let chunk = RString::from_value(chunk)
            .ok_or_else(|| invalid(ruby, "body chunks must be Strings"))?;
        out.push(copy_bytes(chunk));
    }
    Ok((
        head,
        Body {
            chunks: out,
            from_array,
        },
    ))
}

/// One header: Rack 2 joins several values with "\n", Rack 3 gives an Array.
/// `rack.*` keys are for the server, never sent.
fn add_field(
    ruby: &Ruby,
    head: &mut ResponseHead,
    name: RString,
    value: Value,
) -> Result<(), Error> {
    let name = copy_bytes(name);
    if name.starts_with(b"rack.") {
        return Ok(());
    }
    let mut add = |value: Value| -> Result<(), Error> {
        let value = RString::from_value(value)
            .ok_or_else(|| invalid(ruby, "header values must be Strings"))?;
        for line in copy_bytes(value).split(|&b| b == b'\n') {
            head.field(&name, line)
                .map_err(|e| invalid(ruby, &e.to_string()))?;
        }
        Ok(())
    };
    match RArray::from_value(value) {
        Some(values) => values.into_iter().try_for_each(add),
        None => add(value),
    }
}

/// Calls `body.close` if the body has one.
fn close_body(body: Value) -> Result<(), Error> {
    if body.respond_to("close", false)? {
        let _: Value = body.funcall("close", ())?;
    }
    Ok(())
}

/// Copies a Ruby string's bytes into Rust.
fn copy_bytes(s: RString) -> Vec<u8> {
    // SAFETY: the slice is copied at once, before any Ruby code can run and
    // move or free the string; `s` is on the stack, so the GC keeps it.
    unsafe { s.as_slice() }.to_vec()
}

fn invalid(ruby: &Ruby, message: &str) -> Error {
    Error::new(
        ruby.exception_type_error(),
        format!("invalid Rack response: {message}"),
    )
}
