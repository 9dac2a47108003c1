//! Builds the Rack env for one request: a copy of its app thread's
//! [`Template`] (a slot for each key every request sets, then the server's
//! constant keys), the slots filled in place, then this request's other
//! keys (header fields, TLS). Keys are frozen, interned strings made once.

use magnus::rb_sys::AsRawValue;
use magnus::value::{BoxValue, Lazy, ReprValue};
use magnus::{prelude::*, Error, RClass, RHash, RModule, RString, Ruby, Value};

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
    HTTP_VERSION = "HTTP_VERSION";
    RACK_PROTOCOL = "rack.protocol";
    REMOTE_ADDR = "REMOTE_ADDR";
    BUTTERFLIES_PROXY = "butterflies.proxy";
    RACK_URL_SCHEME = "rack.url_scheme";
    RACK_HIJACK_P = "rack.hijack?";
    HTTPS_KEY = "HTTPS";
    HTTPS_SCHEME = "https";
    ON = "on";
    SSL_CLIENT_VERIFY = "SSL_CLIENT_VERIFY";
    SSL_CLIENT_S_DN = "SSL_CLIENT_S_DN";
    SSL_CLIENT_CERT = "SSL_CLIENT_CERT";
    SSL_SERVER_NAME = "SSL_SERVER_NAME";
    SUCCESS = "SUCCESS";
    NONE = "NONE";
    CONTENT_TYPE = "CONTENT_TYPE";
    CONTENT_LENGTH = "CONTENT_LENGTH";
    RACK_INPUT = "rack.input";
    HTTP_1_0 = "HTTP/1.0";
    HTTP_1_1 = "HTTP/1.1";
    pub(super) RACK_RESPONSE_FINISHED = "rack.response_finished";
    pub(super) RACK_AFTER_REPLY = "rack.after_reply";
    pub(super) RACK_HIJACK = "rack.hijack";
    pub(super) RACK_EARLY_HINTS = "rack.early_hints";
}

/// The keys every request sets, in the order of the template's slots.
static SLOT_KEYS: [&Lazy<RString>; SLOTS] = [
    &REQUEST_METHOD,
    &PATH_INFO,
    &QUERY_STRING,
    &REQUEST_URI,
    &SERVER_PROTOCOL,
    &HTTP_VERSION,
    &REMOTE_ADDR,
    &SERVER_NAME,
    &SERVER_PORT,
    &RACK_INPUT,
    &RACK_RESPONSE_FINISHED,
    &RACK_AFTER_REPLY,
    &H_HOST,
];
const SLOTS: usize = 13;

/// An app thread's env template: `SLOT_KEYS` with nil values, then the
/// server's constant keys (and this thread's `rack.hijack` and
/// `rack.early_hints`). Each env is a copy whose slots are written in place
/// ([`super::hash_walk`]); no key of the template is hashed per request.
pub struct Template {
    hash: BoxValue<RHash>,
    keys: [RString; SLOTS],
}

impl Template {
    /// `base`: the server's constant keys (none of them a slot's key);
    /// `per_thread`: keys whose values are this thread's own.
    pub fn new(ruby: &Ruby, base: RHash, per_thread: &[(RString, Value)]) -> Result<Self, Error> {
        let keys = SLOT_KEYS.map(|key| ruby.get_inner(key));
        let mut pairs: Vec<Value> = Vec::with_capacity(2 * (SLOTS + base.len() + per_thread.len()));
        // The slots first: the walk that fills them stops after the last.
        for key in keys {
            pairs.extend([key.as_value(), ruby.qnil().as_value()]);
        }
        base.foreach(|key: Value, value: Value| {
            pairs.extend([key, value]);
            Ok(magnus::r_hash::ForEach::Continue)
        })?;
        for (key, value) in per_thread {
            pairs.extend([key.as_value(), *value]);
        }
        let hash = ruby.hash_new();
        // The values in `pairs` live in `base`, `per_thread` and statics,
        // which outlive this.
        hash.bulk_insert(&pairs)?;
        if hash.len() != pairs.len() / 2 {
            return Err(Error::new(
                ruby.exception_arg_error(),
                "the base env repeats a key the server sets per request",
            ));
        }
        hash.freeze();
        Ok(Template {
            hash: BoxValue::new(hash),
            keys,
        })
    }
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

/// `env["butterflies.proxy"]`: what the connection's PROXY protocol header
/// said. "version" (1 or 2); "source" and "destination" ("ip:port", absent
/// for LOCAL and UNKNOWN headers); and the v2 TLVs given: "authority",
/// "unique_id" and "alpn" (binary strings but the authority), "aws_vpce_id".
fn proxy_hash(ruby: &Ruby, header: &crate::proxy::Header) -> Result<RHash, Error> {
    let hash = ruby.hash_new();
    let version = match header.version {
        Some(crate::proxy::header::Version::V1) => 1,
        _ => 2,
    };
    hash.aset("version", version)?;
    if let Some(a) = header.addresses {
        hash.aset("source", a.source.to_string())?;
        hash.aset("destination", a.destination.to_string())?;
    }
    let tlvs = &header.tlvs;
    if let Some(authority) = &tlvs.authority {
        hash.aset("authority", authority.as_str())?;
    }
    if let Some(id) = &tlvs.unique_id {
        hash.aset("unique_id", ruby.str_from_slice(id))?;
    }
    if let Some(alpn) = &tlvs.alpn {
        hash.aset("alpn", ruby.str_from_slice(alpn))?;
    }
    if let Some(vpce) = &tlvs.aws_vpce_id {
        hash.aset("aws_vpce_id", vpce.as_str())?;
    }
    Ok(hash)
}

static STRING_IO: Lazy<RClass> = Lazy::new(|ruby| {
    ruby.class_object()
        .const_get("StringIO")
        .unwrap_or_else(|_| ruby.class_object())
});

/// `rack.input` of every request without a body (`Butterflies::NullInput`),
/// or nil when the Ruby side did not define it.
static NULL_INPUT: Lazy<Value> = Lazy::new(|ruby| {
    ruby.class_object()
        .const_get::<_, RModule>("Butterflies")
        .and_then(|m| m.const_get::<_, RClass>("NullInput"))
        .and_then(|c| c.const_get::<_, Value>("INSTANCE"))
        .unwrap_or_else(|_| ruby.qnil().as_value())
});

/// Makes the lazily made values whose making runs Ruby code (a constant
/// lookup). Called once, before any app thread runs: made on first
/// use instead, two app threads could race for one, the first switch
/// threads inside Ruby code, and the second wait for it while holding the
/// GVL, a deadlock (seen in the cluster USR2 spec: 1 start in 10 hung).
pub fn warm(ruby: &Ruby) {
    Lazy::force(&STRING_IO, ruby);
    Lazy::force(&NULL_INPUT, ruby);
}

/// Common methods as frozen strings made once.
macro_rules! methods {
    ($($name:ident = $text:literal;)*) => {
        keys! { $($name = $text;)* }
        fn common_method(ruby: &Ruby, method: &[u8]) -> Option<RString> {
            $(if method == $text.as_bytes() { return Some(ruby.get_inner(&$name)); })*
            None
        }
    };
}

methods! {
    M_GET = "GET";
    M_POST = "POST";
    M_HEAD = "HEAD";
    M_PUT = "PUT";
    M_PATCH = "PATCH";
    M_DELETE = "DELETE";
    M_OPTIONS = "OPTIONS";
}

/// The env and its `rack.input` (a File for a spooled body, which the
/// caller closes after the response).
pub struct Built {
    pub env: RHash,
    pub spooled_input: Option<Value>,
}

/// Key/value pairs gathered on the stack (where the GC sees them) and put
/// into the env hash in one `rb_hash_bulk_insert`, so the hash is sized
/// once instead of growing and rehashing key by key.
struct Pairs {
    items: [Value; PAIRS],
    len: usize,
    env: RHash,
    /// Pairs already moved into `env` (more fields than fit).
    spilled: bool,
}

const PAIRS: usize = 2 * 48;

/// Where a key given before is.
enum Found {
    /// Its value is at this index of `Pairs::items`.
    Stack(usize),
    /// It went into the hash already.
    Spilled,
}

impl Pairs {
    /// Pairs to go into `env`. Its keys (the server's constant ones) are
    /// never looked up: no request key can repeat them, so only pairs
    /// spilled past the stack array are searched in the hash.
    fn new(ruby: &Ruby, env: RHash) -> Self {
        Pairs {
            items: [ruby.qnil().as_value(); PAIRS],
            len: 0,
            env,
            spilled: false,
        }
    }

    fn push(&mut self, key: impl ReprValue, value: impl ReprValue) -> Result<(), Error> {
        if self.len == PAIRS {
            self.spill()?;
        }
        self.items[self.len] = key.as_value();
        self.items[self.len + 1] = value.as_value();
        self.len += 2;
        Ok(())
    }

    /// Where `key` was already given, and its value (keys are interned,
    /// so identity is equality).
    fn get(&self, key: RString) -> Option<(Found, Value)> {
        let raw = key.as_value().as_raw();
        if let Some(at) = (0..self.len)
            .step_by(2)
            .find(|&i| self.items[i].as_raw() == raw)
        {
            return Some((Found::Stack(at + 1), self.items[at + 1]));
        }
        if self.spilled {
            return self.env.get(key).map(|v| (Found::Spilled, v));
        }
        None
    }

    /// Replaces the value of a key `get` found.
    fn replace(&mut self, found: Found, key: RString, value: Value) -> Result<(), Error> {
        match found {
            Found::Stack(at) => {
                self.items[at] = value;
                Ok(())
            }
            Found::Spilled => self.env.aset(key, value),
        }
    }

    fn spill(&mut self) -> Result<(), Error> {
        if self.len == 0 {
            return Ok(());
        }
        self.env.bulk_insert(&self.items[..self.len])?;
        self.len = 0;
        self.spilled = true;
        Ok(())
    }

    fn finish(mut self) -> Result<RHash, Error> {
        self.spill()?;
        Ok(self.env)
    }
}

/// A few bytes formatted on the stack (an address, a port).
struct Small {
    buf: [u8; 64],
    len: usize,
}

impl Small {
    fn new() -> Self {
        Small {
            buf: [0; 64],
            len: 0,
        }
    }

    fn of(value: impl std::fmt::Display) -> Self {
        use std::fmt::Write;
        let mut small = Small::new();
        let _ = write!(small, "{value}");
        small
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl std::fmt::Write for Small {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let slot = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        slot.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// The env for `request`: a copy of `template` with its slots filled,
/// and this request's other keys. A spooled body's file moves into the
/// env's `rack.input`.
pub fn build(ruby: &Ruby, template: &Template, request: &mut Request) -> Result<Built, Error> {
    // A copy keeps the template keys' stored hashes and their order (`dup`
    // by method call would cost a method lookup).
    let env = magnus::rb_sys::protect(|| {
        // SAFETY: the template is a live Hash (boxed by the app thread);
        // rb_hash_dup only allocates, and protect catches NoMemoryError.
        unsafe { rb_sys::rb_hash_dup(template.hash.as_raw()) }
    })?;
    // SAFETY: a VALUE Ruby just returned, alive on this stack.
    let env = unsafe { <Value as magnus::rb_sys::FromRawValue>::from_raw(env) };
    let env = RHash::from_value(env).ok_or_else(|| {
        Error::new(
            ruby.exception_type_error(),
            "the env template is not a Hash",
        )
    })?;
    let spooled = matches!(request.body, Body::File { .. });
    let input = input(ruby, request)?;
    let head = &request.head;
    let bin = |bytes: &[u8]| ruby.str_from_slice(bytes);

    let method = match common_method(ruby, head.method()) {
        Some(method) => method,
        None => bin(head.method()).to_interned_str(),
    };
    let protocol = ruby.get_inner(match head.version {
        crate::http::Version::Http10 => &HTTP_1_0,
        crate::http::Version::Http11 => &HTTP_1_1,
    });
    let remote_addr = match request.peer.ip() {
        std::net::IpAddr::V4(v4) => bin(crate::http::ascii::ipv4(v4, &mut [0; 15])),
        v6 => bin(Small::of(v6).bytes()),
    };
    // An absolute-form target's authority wins over the Host field (RFC
    // 9112 §3.2.2), for HTTP_HOST as for SERVER_NAME/PORT. Its scheme is
    // ignored: rack.url_scheme is the connection's.
    let host = head.authority().or(head.header("host"));
    let (mut local_name, mut local_port) = (Small::new(), Small::new());
    let (name, port) = server_name_and_port(host, request, &mut local_name, &mut local_port);
    // On this stack (where the GC sees them) until they are in the env.
    let slots: [Value; SLOTS] = [
        method.as_value(),
        bin(head.path()).as_value(),
        bin(head.query()).as_value(),
        bin(head.target()).as_value(),
        // As Puma: HTTP_VERSION is the protocol version, never a client's
        // `Version:` field (which Rack 3.0's Lint would refuse).
        protocol.as_value(),
        protocol.as_value(),
        remote_addr.as_value(),
        bin(name).as_value(),
        bin(port).as_value(),
        input,
        ruby.ary_new().as_value(),
        ruby.ary_new().as_value(),
        match host {
            Some(host) => bin(host).as_value(),
            None => ruby.qnil().as_value(),
        },
    ];
    let spooled_input = spooled.then_some(input);
    if !super::hash_walk::fill(env, &template.keys, &slots) {
        for (key, value) in template.keys.iter().zip(slots) {
            env.aset(*key, value)?;
        }
    }
    if host.is_none() {
        // HTTP/1.0 without a Host field: no HTTP_HOST at all.
        let _: Option<Value> = env.delete(ruby.get_inner(&H_HOST))?;
    }
    let mut pairs = Pairs::new(ruby, env);
    if let Some(upgrade) = head.header("upgrade") {
        // Rack 3.1: the protocols the client offers to switch to.
        let offered = ruby.ary_from_iter(
            upgrade
                .split(|&b| b == b',')
                .map(<[u8]>::trim_ascii)
                .filter(|p| !p.is_empty())
                .map(|p| ruby.str_from_slice(p)),
        );
        pairs.push(ruby.get_inner(&RACK_PROTOCOL), offered)?;
    }
    if let Some(header) = &request.proxy {
        pairs.push(
            ruby.get_inner(&BUTTERFLIES_PROXY),
            proxy_hash(ruby, header)?,
        )?;
    }
    if let Some(tls) = &request.tls {
        push_tls(ruby, &mut pairs, tls)?;
    }

    for (field, value) in head.headers() {
        set_header(ruby, &mut pairs, field, value)?;
    }
    if head.body == BodyFraming::Chunked {
        let length = bin(Small::of(request.body.len()).bytes());
        match pairs.get(ruby.get_inner(&CONTENT_LENGTH)) {
            Some((found, _)) => {
                pairs.replace(found, ruby.get_inner(&CONTENT_LENGTH), length.as_value())?
            }
            None => pairs.push(ruby.get_inner(&CONTENT_LENGTH), length)?,
        }
    }
    Ok(Built {
        env: pairs.finish()?,
        spooled_input,
    })
}

/// `rack.input`: the shared empty input, a StringIO over the body, or the
/// spooled body's file (which moves out of `request`).
fn input(ruby: &Ruby, request: &mut Request) -> Result<Value, Error> {
    let null_input = ruby.get_inner(&NULL_INPUT);
    match std::mem::replace(&mut request.body, Body::Memory(Vec::new())) {
        Body::Memory(bytes) if bytes.is_empty() && !null_input.is_nil() => Ok(null_input),
        Body::Memory(bytes) => ruby
            .get_inner(&STRING_IO)
            .funcall("new", (ruby.str_from_slice(&bytes),)),
        Body::File { file, .. } => {
            let fd = file.into_raw_fd();
            let file: Result<Value, Error> = ruby.class_file().funcall("for_fd", (fd, "rb"));
            if file.is_err() {
                let _ = nix::unistd::close(fd);
            }
            file
        }
    }
}

/// One header field as its CGI-style env key. Names with `_` are dropped
/// (as nginx does), so `X_Forwarded_For` can never pass for
/// `X-Forwarded-For`. Repeated fields are joined with ", " ("; " for Cookie).
fn set_header(ruby: &Ruby, pairs: &mut Pairs, field: &[u8], value: &[u8]) -> Result<(), Error> {
    if field.contains(&b'_')
        || field.eq_ignore_ascii_case(b"transfer-encoding")
        || field.eq_ignore_ascii_case(b"version")
        // In its slot already (the parser allows one).
        || field.eq_ignore_ascii_case(b"host")
    {
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
    match pairs.get(key) {
        None => pairs.push(key, ruby.str_from_slice(value)),
        Some((found, previous)) => {
            let Some(previous) = RString::from_value(previous) else {
                return Ok(());
            };
            if field.eq_ignore_ascii_case(b"content-length") {
                // Equal repeats only (the parser refused differing ones).
                return Ok(());
            }
            let joined = ruby.str_buf_new(0);
            joined.buf_append(previous)?;
            joined.cat(if field.eq_ignore_ascii_case(b"cookie") {
                "; "
            } else {
                ", "
            });
            joined.cat(value);
            pairs.replace(found, key, joined.as_value())
        }
    }
}

/// SERVER_NAME and SERVER_PORT from the Host field (`[::1]:8080` gives
/// `[::1]` and `8080`), else from the address the connection came in on
/// (formatted into `name` and `port`).
fn server_name_and_port<'a>(
    host: Option<&'a [u8]>,
    request: &Request,
    name: &'a mut Small,
    port: &'a mut Small,
) -> (&'a [u8], &'a [u8]) {
    let Some(host) = host.filter(|h| !h.is_empty()) else {
        *name = Small::of(request.local.ip());
        *port = Small::of(request.local.port());
        return (name.bytes(), port.bytes());
    };
    match host.iter().rposition(|&b| b == b':') {
        Some(colon) if !host[colon..].contains(&b']') => (&host[..colon], &host[colon + 1..]),
        _ if request.tls.is_some() => (host, b"443"),
        _ => (host, b"80"),
    }
}

/// A request that came over TLS: the scheme, `HTTPS`, and what nginx and
/// Apache tell apps of the client certificate. `rack.hijack?` is false:
/// the socket carries records, not the bytes the app would write.
fn push_tls(ruby: &Ruby, pairs: &mut Pairs, tls: &crate::tls::Info) -> Result<(), Error> {
    pairs.push(
        ruby.get_inner(&RACK_URL_SCHEME),
        ruby.get_inner(&HTTPS_SCHEME),
    )?;
    pairs.push(ruby.get_inner(&HTTPS_KEY), ruby.get_inner(&ON))?;
    pairs.push(ruby.get_inner(&RACK_HIJACK_P), ruby.qfalse())?;
    let verified = if tls.client_cert.is_some() {
        &SUCCESS
    } else {
        &NONE
    };
    pairs.push(ruby.get_inner(&SSL_CLIENT_VERIFY), ruby.get_inner(verified))?;
    if let Some(subject) = &tls.client_subject {
        pairs.push(ruby.get_inner(&SSL_CLIENT_S_DN), ruby.str_new(subject))?;
    }
    if let Some(cert) = &tls.client_cert {
        pairs.push(ruby.get_inner(&SSL_CLIENT_CERT), ruby.str_new(cert))?;
    }
    if let Some(name) = &tls.server_name {
        pairs.push(ruby.get_inner(&SSL_SERVER_NAME), ruby.str_new(name))?;
    }
    Ok(())
}
