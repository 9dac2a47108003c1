//! The app's status and headers as a [`ResponseHead`]: Rack 2 newline-joined
//! values and Rack 3 arrays alike, `rack.*` keys kept for the server (a
//! `rack.hijack` proc is handed back), anything that could split a response
//! refused. Shared by the response and by `rack.early_hints`.

use magnus::value::ReprValue;
use magnus::{Error, RArray, RHash, RString, Ruby, Value};

use super::errors::invalid;
use crate::http::response::ResponseHead;

/// What the `rack.*` response headers ask of the server.
#[derive(Default)]
pub struct ServerRequests {
    /// `rack.hijack`: a partial hijack's proc.
    pub hijack: Option<Value>,
    /// `rack.protocol` (Rack 3.1): switch the connection to this protocol.
    pub protocol: Option<RString>,
}

/// Status and headers; also what the `rack.*` headers ask for.
pub fn read_head(
    ruby: &Ruby,
    status: Value,
    headers: Value,
) -> Result<(ResponseHead, ServerRequests), Error> {
    let status = status_code(ruby, status)?;
    let mut head = ResponseHead::new(status).map_err(|e| invalid(ruby, &e.to_string()))?;
    let headers =
        RHash::from_value(headers).ok_or_else(|| invalid(ruby, "the headers must be a Hash"))?;
    let mut asks = ServerRequests::default();
    let mut failed = None;
    // Reads only: nothing in the walk runs Ruby code (see `each_pair`).
    super::hash_walk::each_pair(headers, |name, value| {
        let read = (|| {
            let name = RString::from_value(name)
                .ok_or_else(|| invalid(ruby, "header names must be Strings"))?;
            // SAFETY: compared at once, before any Ruby code runs.
            match unsafe { name.as_slice() } {
                b"rack.hijack" => asks.hijack = Some(value),
                b"rack.protocol" => {
                    let protocol = RString::from_value(value)
                        .ok_or_else(|| invalid(ruby, "rack.protocol must be a String"))?;
                    asks.protocol = Some(protocol);
                }
                _ => add_field(ruby, &mut head, name, value)?,
            }
            Ok(())
        })();
        read.map_err(|e| failed = Some(e)).is_ok()
    });
    if let Some(error) = failed {
        return Err(error);
    }
    let hijack = asks.hijack;
    // An interim status is never a final response: the client would wait
    // for the real one (101 only with a hijack, which takes the socket).
    if (100..200).contains(&status) && !(status == 101 && hijack.is_some()) {
        return Err(invalid(
            ruby,
            &format!("status {status} is interim, not a final response"),
        ));
    }
    Ok((head, asks))
}

/// The status: an Integer, or (Rack 2) a String whose `to_i` is a status
/// (`"200"`).
fn status_code(ruby: &Ruby, status: Value) -> Result<i64, Error> {
    if let Some(i) = magnus::Integer::from_value(status).and_then(|i| i.to_i64().ok()) {
        return Ok(i);
    }
    if RString::from_value(status).is_some() {
        let code: i64 = status.funcall("to_i", ())?;
        if (100..=599).contains(&code) {
            return Ok(code);
        }
    }
    Err(invalid(ruby, "the status must be an Integer"))
}

/// One header: Rack 2 joins several values with "\n", Rack 3 gives an Array.
/// `rack.*` keys are for the server, never sent.
pub fn add_field(
    ruby: &Ruby,
    head: &mut ResponseHead,
    name: RString,
    value: Value,
) -> Result<(), Error> {
    // SAFETY: compared at once; no Ruby code runs meanwhile.
    if unsafe { name.as_slice() }.starts_with(b"rack.") {
        return Ok(());
    }
    let add = |head: &mut ResponseHead, value: Value| -> Result<(), Error> {
        let value = RString::from_value(value)
            .ok_or_else(|| invalid(ruby, "header values must be Strings"))?;
        // SAFETY: both slices are used at once, and `field` runs no Ruby
        // code, so neither string can change or move meanwhile; `name` and
        // `value` are on the stack, where the GC sees them.
        let (name, value) = unsafe { (name.as_slice(), value.as_slice()) };
        for line in value.split(|&b| b == b'\n') {
            head.field(name, line)
                .map_err(|e| invalid(ruby, &e.to_string()))?;
        }
        Ok(())
    };
    match RArray::from_value(value) {
        // By index: no copy of the Array, and nothing here runs Ruby code.
        Some(values) => (0..values.len()).try_for_each(|i| add(head, values.entry(i as isize)?)),
        None => add(head, value),
    }
}
