//! Sends the app's `[status, headers, body]`. Status and headers become a
//! [`ResponseHead`]; the body is sent by its kind:
//!
//! - `to_ary` (an Array): read whole, one write with a Content-Length;
//! - `to_path` (a file, status 200): head, then sendfile(2) without the GVL;
//! - `each`: head first, then each chunk as the app produces it (chunked on
//!   HTTP/1.1, close-delimited on HTTP/1.0);
//! - `call` (a Rack 3 streaming body): head, then `body.call(stream)`.
//!
//! A `rack.hijack` response header is a partial hijack: the head is sent and
//! the proc gets the socket. `body.close` is always called.

use std::sync::Arc;

use magnus::rb_sys::AsRawValue;
use magnus::value::ReprValue;
use magnus::{Error, RArray, RString, Ruby, Value};

use super::errors::{invalid, OrRaise};
use super::gvl::Gvl;
use super::headers::read_head;
use super::hijack::hijack_io;
use super::snapshot::Snapshot;
use super::stream::{finish_body, Stream};
use super::{id, CALL, CLOSE, EACH, TO_ARY, TO_PATH};
use crate::http::response::{Framing, ResponseHead};
use crate::serve::flusher::Flusher;
use crate::serve::Exchange;

ids! {
    WRITE_EACH = "write_each";
}

/// How an exchange ended.
pub enum Outcome {
    /// The response is out (or queued for the IO thread).
    Sent { keep_alive: bool },
    /// The app took the socket.
    Hijacked,
}

/// Sends the response triple. `keep_alive` is whether the request allows
/// the connection to stay open.
pub fn send(
    ruby: &Ruby,
    ex: &Arc<Exchange>,
    triple: Value,
    keep_alive: bool,
    flusher: Option<&Flusher>,
) -> Result<Outcome, Error> {
    let triple = RArray::from_value(triple)
        .filter(|a| a.len() == 3)
        .ok_or_else(|| invalid(ruby, "the app must return [status, headers, body]"))?;
    let body: Value = triple.entry(2)?;
    let sent = if ex.hijacked() {
        Ok(Outcome::Hijacked)
    } else {
        send_parts(
            ruby,
            ex,
            triple.entry(0)?,
            triple.entry(1)?,
            body,
            keep_alive,
            flusher,
        )
    };
    let closed = close_body(ruby, body);
    let outcome = sent?;
    closed?;
    Ok(outcome)
}

fn send_parts(
    ruby: &Ruby,
    ex: &Arc<Exchange>,
    status: Value,
    headers: Value,
    body: Value,
    keep_alive: bool,
    flusher: Option<&Flusher>,
) -> Result<Outcome, Error> {
    let (head, asks) = read_head(ruby, status, headers)?;
    if let Some(hijack) = asks.hijack {
        return partial_hijack(ruby, ex, &head, hijack);
    }
    if let Some(protocol) = asks.protocol {
        return switch_protocols(ruby, ex, &head, protocol, body, flusher);
    }
    let mut body = body;
    // A plain Array is its own `to_ary`: no method lookup and call for it.
    let plain_array =
        RArray::from_value(body).filter(|a| a.class().as_raw() == ruby.class_array().as_raw());
    if plain_array.is_some() || body.respond_to(id(ruby, &TO_ARY), false)? {
        // Rack 2 bodies may answer to_ary with nil (Rails 6.1 does): then
        // they are streamed with each, as Puma does.
        let array: Value = match plain_array {
            Some(array) => array.as_value(),
            None => body.funcall(id(ruby, &TO_ARY), ())?,
        };
        if let Some(chunks) = RArray::from_value(array) {
            if let Some(outcome) = send_array(ruby, ex, &head, chunks, keep_alive)? {
                return Ok(outcome);
            }
            // A length the app set that the Array does not match, or a
            // Transfer-Encoding of its own: framed piece by piece below.
            body = array;
        }
    }
    if let Some((file, len)) = file_body(ruby, ex, &head, body)? {
        let mut out = Vec::with_capacity(256);
        let keep_alive = head.write(&mut out, ex.version, Framing::Length(len), keep_alive);
        ex.set_head(head.status(), out.len(), Framing::Length(len));
        ex.send_file(&Gvl(ruby), out, file, len).or_raise(ruby)?;
        ex.mark_finished();
        return Ok(Outcome::Sent { keep_alive });
    }
    let each = body.respond_to(id(ruby, &EACH), false)?;
    if !each && !body.respond_to(id(ruby, &CALL), false)? {
        return Err(invalid(ruby, "the body must respond to each or call"));
    }
    let framing = head.framing(ex.version, ex.head_request, None);
    let mut out = Vec::with_capacity(256);
    let keep_alive = head.write(&mut out, ex.version, framing, keep_alive);
    ex.set_head(head.status(), out.len(), framing);
    match flusher {
        // An `each` body: its first piece carries the head.
        Some(flusher) if each && ResponseHead::sends_body(framing) => {
            if ex.queue_head(&Gvl(ruby), &out).or_raise(ruby)? {
                flusher.watch(ex);
            }
        }
        // A Rack 3 streaming body may read before it writes: the head
        // goes out now (with the GVL held; a head is small).
        _ => ex.send_now(&Gvl(ruby), &[&out]).or_raise(ruby)?,
    }
    if ResponseHead::sends_body(framing) {
        let stream = Stream(ex.clone(), flusher.cloned());
        if each {
            // Butterflies::Stream.write_each (lib/butterflies/stream.rb).
            use magnus::TypedData;
            let _: Value = Stream::class(ruby).funcall(id(ruby, &WRITE_EACH), (body, stream))?;
        } else {
            let _: Value = body.funcall(id(ruby, &CALL), (stream,))?;
        }
    }
    finish_body(ruby, ex)?;
    Ok(Outcome::Sent { keep_alive })
}

/// Responses up to this size are copied and written without the GVL;
/// larger ones are written straight from the Ruby strings.
const COPY_BELOW_BYTES: u64 = 64 * 1024;

/// An Array body: its length is known, so head and body go out in one
/// write. A small one is copied and written without releasing the GVL
/// (a non-blocking write; what the socket leaves, the IO thread sends):
/// on Ruby 3.3 every release hands the GVL to a waiting app thread, and
/// taking it back cost a context switch per request. The app thread lets
/// the others in between requests instead, every
/// `app_thread::GVL_BATCH`. A large one
/// goes out with one `writev(2)` straight from frozen snapshots of the
/// Ruby strings ([`Snapshot`]), nothing copied unless the socket does not
/// take it all.
///
/// Only when the body's length is what the head says; otherwise (an app
/// Content-Length that does not match, the app's own Transfer-Encoding)
/// returns `None`, and the Array is framed piece by piece like any body.
fn send_array(
    ruby: &Ruby,
    ex: &Exchange,
    head: &ResponseHead,
    chunks: RArray,
    keep_alive: bool,
) -> Result<Option<Outcome>, Error> {
    let mut total = 0u64;
    // SAFETY: read at once; no Ruby code runs while the slice is held (an
    // Array's iterator would copy the Array first, an object per response).
    for &chunk in unsafe { chunks.as_slice() } {
        let chunk = RString::from_value(chunk)
            .ok_or_else(|| invalid(ruby, "body chunks must be Strings"))?;
        total += chunk.len() as u64;
    }
    let framing = head.framing(ex.version, ex.head_request, Some(total));
    match framing {
        Framing::Length(n) if n == total => {}
        Framing::NoBody | Framing::HeadLength(_) => {}
        _ => return Ok(None),
    }
    if total < COPY_BELOW_BYTES {
        // One buffer for head and body: the only allocation of the response.
        let mut out = Vec::with_capacity(head.len_hint() + total as usize);
        let keep_alive = head.write(&mut out, ex.version, framing, keep_alive);
        ex.set_head(head.status(), out.len(), framing);
        if ResponseHead::sends_body(framing) {
            append_body(&mut out, chunks);
        }
        // Written with the GVL held: the socket takes it at once, or what
        // it leaves goes to the IO thread (see `GVL_BATCH`); held back
        // while a pipelined request follows (`Exchange::send_whole`).
        ex.send_whole(&Gvl(ruby), out).or_raise(ruby)?;
        ex.mark_finished();
        return Ok(Some(Outcome::Sent { keep_alive }));
    }
    let mut out = Vec::with_capacity(head.len_hint());
    let keep_alive = head.write(&mut out, ex.version, framing, keep_alive);
    ex.set_head(head.status(), out.len(), framing);
    // The writes below may release the GVL (a slow client): the body is
    // read from frozen snapshots that no other thread can change or free.
    let snapshot = Snapshot::take(ruby, chunks);
    let bodies = snapshot.parts();
    let mut parts: Vec<&[u8]> = Vec::with_capacity(bodies.len() + 1);
    parts.push(&out);
    if ResponseHead::sends_body(framing) {
        parts.extend_from_slice(&bodies);
    }
    // Written from the snapshots, waiting for a slow client without the
    // GVL; `snapshot` lives (on this stack) until this returns.
    ex.send_borrowed(&Gvl(ruby), &parts).or_raise(ruby)?;
    drop(snapshot);
    ex.mark_finished();
    Ok(Some(Outcome::Sent { keep_alive }))
}

/// Copies the body (chunks already checked to be Strings) after the head.
fn append_body(out: &mut Vec<u8>, chunks: RArray) {
    // SAFETY: copied at once; no Ruby code runs (nothing allocates) while
    // the Array's and the strings' slices are held.
    for s in unsafe { chunks.as_slice() }
        .iter()
        .filter_map(|&v| RString::from_value(v))
    {
        // SAFETY: as above.
        out.extend_from_slice(unsafe { s.as_slice() });
    }
}

/// A body whose `to_path` names a readable file, answered in full (200, not
/// HEAD, and any Content-Length the app set matches the file): sent by
/// sendfile. Anything else (ranges, HEAD) goes through `each`.
fn file_body(
    ruby: &Ruby,
    ex: &Exchange,
    head: &ResponseHead,
    body: Value,
) -> Result<Option<(std::fs::File, u64)>, Error> {
    if head.status() != 200
        || ex.head_request
        || head.app_transfer_encoding()
        || !body.respond_to(id(ruby, &TO_PATH), false)?
    {
        return Ok(None);
    }
    let path: String = body.funcall(id(ruby, &TO_PATH), ())?;
    let Ok(file) = std::fs::File::open(&path) else {
        return Ok(None);
    };
    let Ok(meta) = file.metadata() else {
        return Ok(None);
    };
    if !meta.is_file() || head.content_length.is_some_and(|n| n != meta.len()) {
        return Ok(None);
    }
    let _ = ruby;
    Ok(Some((file, meta.len())))
}

/// `rack.hijack` in the response headers: send the head, then give the
/// socket to the app's proc.
fn partial_hijack(
    ruby: &Ruby,
    ex: &Arc<Exchange>,
    head: &ResponseHead,
    hijack: Value,
) -> Result<Outcome, Error> {
    if ex.over_tls() {
        // Refused before the head goes out: the app's error gets its 500.
        return Err(Error::new(
            ruby.exception_io_error(),
            crate::net::handoff::tls_hijack_refused().to_string(),
        ));
    }
    let mut out = Vec::with_capacity(256);
    head.write_raw(&mut out, ex.version);
    ex.set_head(head.status(), out.len(), Framing::NoBody);
    ex.send(&Gvl(ruby), out).or_raise(ruby)?;
    let io = hijack_io(ruby, ex)?;
    let _: Value = hijack.funcall("call", (io,))?;
    Ok(Outcome::Hijacked)
}

/// `rack.protocol` in the response headers (Rack 3.1): `101 Switching
/// Protocols` to one the client offered, then the body (a callable) gets
/// the connection as a Rack stream, both ways; the connection closes after.
fn switch_protocols(
    ruby: &Ruby,
    ex: &Arc<Exchange>,
    head: &ResponseHead,
    protocol: RString,
    body: Value,
    flusher: Option<&Flusher>,
) -> Result<Outcome, Error> {
    // SAFETY: copied at once; no Ruby code runs while the slice is held.
    let protocol = unsafe { protocol.as_slice() }.to_vec();
    let token = |&b: &u8| crate::http::syntax::is_tchar(b) || b == b'/';
    if protocol.is_empty() || !protocol.iter().all(token) || !ex.offered_protocol(&protocol) {
        return Err(invalid(
            ruby,
            "rack.protocol names a protocol the client did not offer",
        ));
    }
    if !body.respond_to(id(ruby, &CALL), false)? {
        return Err(invalid(ruby, "a rack.protocol body must respond to call"));
    }
    let mut out = Vec::with_capacity(256);
    head.write_upgrade(&mut out, &protocol);
    ex.set_head(head.status(), out.len(), Framing::UntilClose);
    ex.close_after();
    ex.send(&Gvl(ruby), out).or_raise(ruby)?;
    let stream = Stream(ex.clone(), flusher.cloned());
    let _: Value = body.funcall(id(ruby, &CALL), (stream,))?;
    finish_body(ruby, ex)?;
    Ok(Outcome::Sent { keep_alive: false })
}

/// Calls `body.close` if the body has one.
fn close_body(ruby: &Ruby, body: Value) -> Result<(), Error> {
    if body.respond_to(id(ruby, &CLOSE), false)? {
        let _: Value = body.funcall(id(ruby, &CLOSE), ())?;
    }
    Ok(())
}
