//! Builds the Rack env for one request: a copy of the server's base env
//! (constant keys set once by the Ruby side) plus this request's keys. Keys
//! are frozen, interned strings made once.

use magnus::value::{Lazy, ReprValue};
use magnus::{prelude::*, Error, RClass, RHash, RString, Ruby, Value};

use std::os::fd::IntoRawFd;

use crate::http::request::BodyFraming;
use crate::net::{Body, Request};

keys! {
    REQUEST_METHOD = "REQUEST_METHOD";
    PATH_INFO = "PATH_INFO";
    QUERY_STRING = "QUERY_STRING";
    REQUEST_URI = "REQUEST_URI";
    SERVER_NAME = "SERVER_NAME";
    SERVER_PORT = "SERVER_PORT";
    SERVER_PROTOCOL = "SERVER_PROTOCOL";
    REMOTE_ADDR = "REMOTE_ADDR";
    CONTENT_TYPE = "CONTENT_TYPE";
    CONTENT_LENGTH = "CONTENT_LENGTH";
    RACK_INPUT = "rack.input";
    HTTP_1_0 = "HTTP/1.0";
    HTTP_1_1 = "HTTP/1.1";
}

/// Env keys of the header fields most requests carry, made once, so the
/// common case neither builds nor interns a key string.
macro_rules! common_headers {
    ($($name:ident = $field:literal => $key:literal;)*) => {
        $(static $name: Lazy<RString> = Lazy::new(|ruby| ruby.str_new($key).to_interned_str());)*
        fn common_key(ruby: &Ruby, field: &[u8]) -> Option<RString> {
            $(if field.eq_ignore_ascii_case($field.as_bytes()) { return Some(ruby.get_inner(&$name)); })*
            None
        }
    };
}

common_headers! {
    H_HOST = "host" => "HTTP_HOST";
    H_USER_AGENT = "user-agent" => "HTTP_USER_AGENT";
    H_ACCEPT = "accept" => "HTTP_ACCEPT";
    H_ACCEPT_ENCODING = "accept-encoding" => "HTTP_ACCEPT_ENCODING";
    H_ACCEPT_LANGUAGE = "accept-language" => "HTTP_ACCEPT_LANGUAGE";
    H_CONNECTION = "connection" => "HTTP_CONNECTION";
    H_COOKIE = "cookie" => "HTTP_COOKIE";
    H_REFERER = "referer" => "HTTP_REFERER";
    H_CACHE_CONTROL = "cache-control" => "HTTP_CACHE_CONTROL";
    H_ORIGIN = "origin" => "HTTP_ORIGIN";
    H_AUTHORIZATION = "authorization" => "HTTP_AUTHORIZATION";
    H_IF_NONE_MATCH = "if-none-match" => "HTTP_IF_NONE_MATCH";
    H_IF_MODIFIED_SINCE = "if-modified-since" => "HTTP_IF_MODIFIED_SINCE";
    H_X_FORWARDED_FOR = "x-forwarded-for" => "HTTP_X_FORWARDED_FOR";
    H_X_FORWARDED_PROTO = "x-forwarded-proto" => "HTTP_X_FORWARDED_PROTO";
    H_X_REQUEST_ID = "x-request-id" => "HTTP_X_REQUEST_ID";
    H_UPGRADE = "upgrade" => "HTTP_UPGRADE";
}

static STRING_IO: Lazy<RClass> = Lazy::new(|ruby| {
    ruby.class_object()
        .const_get("StringIO")
        .unwrap_or_else(|_| ruby.class_object())
});

/// The env and its `rack.input` (a File for a spooled body, which the
/// caller closes after the response).
pub struct Built {
    pub env: RHash,
    pub spooled_input: Option<Value>,
}

/// The env for `request`, built on a copy of `base`. A spooled body's file
/// moves into the env's `rack.input`.
pub fn build(ruby: &Ruby, base: RHash, request: &mut Request) -> Result<Built, Error> {
    let env: RHash = base.funcall("dup", ())?;
    let head = &request.head;
    let bin = |bytes: &[u8]| ruby.str_from_slice(bytes);

    env.aset(
        ruby.get_inner(&REQUEST_METHOD),
        bin(head.method()).to_interned_str(),
    )?;
    env.aset(ruby.get_inner(&PATH_INFO), bin(head.path()))?;
    env.aset(ruby.get_inner(&QUERY_STRING), bin(head.query()))?;
    env.aset(ruby.get_inner(&REQUEST_URI), bin(head.target()))?;
    let protocol = match head.version {
        crate::http::Version::Http10 => &HTTP_1_0,
        crate::http::Version::Http11 => &HTTP_1_1,
    };
    env.aset(ruby.get_inner(&SERVER_PROTOCOL), ruby.get_inner(protocol))?;
    env.aset(
        ruby.get_inner(&REMOTE_ADDR),
        ruby.str_new(&request.peer.ip().to_string()),
    )?;

    let (name, port) = server_name_and_port(head.authority().or(head.header("host")), request);
    env.aset(ruby.get_inner(&SERVER_NAME), bin(&name))?;
    env.aset(ruby.get_inner(&SERVER_PORT), ruby.str_new(&port))?;

    for (field, value) in head.headers() {
        set_header(ruby, env, field, value)?;
    }
    if head.body == BodyFraming::Chunked {
        env.aset(
            ruby.get_inner(&CONTENT_LENGTH),
            ruby.str_new(&request.body.len().to_string()),
        )?;
    }
    let (input, spooled_input) =
        match std::mem::replace(&mut request.body, Body::Memory(Vec::new())) {
            Body::Memory(bytes) => {
                let input: Value = ruby.get_inner(&STRING_IO).funcall("new", (bin(&bytes),))?;
                (input, None)
            }
            Body::File { file, .. } => {
                let fd = file.into_raw_fd();
                let file: Result<Value, Error> = ruby.class_file().funcall("for_fd", (fd, "rb"));
                if file.is_err() {
                    let _ = nix::unistd::close(fd);
                }
                let file = file?;
                (file, Some(file))
            }
        };
    env.aset(ruby.get_inner(&RACK_INPUT), input)?;
    Ok(Built { env, spooled_input })
}

/// One header field as its CGI-style env key. Names with `_` are dropped
/// (as nginx does), so `X_Forwarded_For` can never pass for
/// `X-Forwarded-For`. Repeated fields are joined with ", " ("; " for Cookie).
fn set_header(ruby: &Ruby, env: RHash, field: &[u8], value: &[u8]) -> Result<(), Error> {
    if field.contains(&b'_') || field.eq_ignore_ascii_case(b"transfer-encoding") {
        return Ok(());
    }
    let key = if field.eq_ignore_ascii_case(b"content-type") {
        ruby.get_inner(&CONTENT_TYPE)
    } else if field.eq_ignore_ascii_case(b"content-length") {
        ruby.get_inner(&CONTENT_LENGTH)
    } else if let Some(key) = common_key(ruby, field) {
        key
    } else {
        let mut key = Vec::with_capacity(field.len() + 5);
        key.extend_from_slice(b"HTTP_");
        key.extend(field.iter().map(|&b| {
            if b == b'-' {
                b'_'
            } else {
                b.to_ascii_uppercase()
            }
        }));
        ruby.str_from_slice(&key).to_interned_str()
    };
    match env.get(key).and_then(RString::from_value) {
        Some(previous) if !field.eq_ignore_ascii_case(b"content-length") => {
            let joined = ruby.str_buf_new(0);
            joined.buf_append(previous)?;
            joined.cat(if field.eq_ignore_ascii_case(b"cookie") {
                "; "
            } else {
                ", "
            });
            joined.cat(value);
            env.aset(key, joined)
        }
        _ => env.aset(key, ruby.str_from_slice(value)),
    }
}

/// SERVER_NAME and SERVER_PORT from the Host field (`[::1]:8080` gives
/// `[::1]` and `8080`), else from the address the connection came in on.
fn server_name_and_port(host: Option<&[u8]>, request: &Request) -> (Vec<u8>, String) {
    let default_port = request.local.port().to_string();
    let Some(host) = host.filter(|h| !h.is_empty()) else {
        return (request.local.ip().to_string().into_bytes(), default_port);
    };
    let port_at = match host.iter().rposition(|&b| b == b':') {
        Some(colon) if !host[colon..].contains(&b']') => Some(colon),
        _ => None,
    };
    match port_at {
        Some(colon) => (
            host[..colon].to_vec(),
            String::from_utf8_lossy(&host[colon + 1..]).into_owned(),
        ),
        None => (host.to_vec(), "80".to_string()),
    }
}
