//! Errors into Ruby exceptions, in one place: each error of the Rust side
//! maps to one Ruby class here, and nowhere else.
//!
//! Butterflies' own classes (`lib/butterflies/errors.rb`, required before
//! the extension) are looked up once, when the extension loads
//! ([`init`]): never lazily from an app thread, where a first lookup
//! racing with boot deadlocked (see docs/ARCHITECTURE.md, "Lazily made
//! Ruby values").

use std::io;

use magnus::value::Lazy;
use magnus::{prelude::*, Error, ExceptionClass, RModule, Ruby};

use crate::serve::ExchangeError;

static CLIENT_DISCONNECTED: Lazy<ExceptionClass> = Lazy::new(|ruby| {
    own_class(ruby, "ClientDisconnected").unwrap_or_else(|_| ruby.exception_io_error())
});
static BIND_ERROR: Lazy<ExceptionClass> = Lazy::new(|ruby| {
    own_class(ruby, "BindError").unwrap_or_else(|_| ruby.exception_runtime_error())
});

static CONFIG_ERROR: Lazy<ExceptionClass> =
    Lazy::new(|ruby| own_class(ruby, "ConfigError").unwrap_or_else(|_| ruby.exception_arg_error()));

fn own_class(ruby: &Ruby, name: &str) -> Result<ExceptionClass, Error> {
    ruby.class_object()
        .const_get::<_, RModule>("Butterflies")?
        .const_get::<_, ExceptionClass>(name)
}

/// Looks Butterflies' exception classes up, once; fails loudly if
/// `butterflies/errors` was not loaded first.
pub fn init(ruby: &Ruby) -> Result<(), Error> {
    own_class(ruby, "ClientDisconnected")?;
    own_class(ruby, "BindError")?;
    own_class(ruby, "ConfigError")?;
    Lazy::force(&CLIENT_DISCONNECTED, ruby);
    Lazy::force(&BIND_ERROR, ruby);
    Lazy::force(&CONFIG_ERROR, ruby);
    Ok(())
}

/// What the extension itself fails with.
#[derive(Debug, thiserror::Error)]
pub enum ExtError {
    /// An address could not be resolved or bound.
    #[error("{0}")]
    Bind(String),
    /// The engine's threads could not start.
    #[error("cannot start: {0}")]
    Start(io::Error),
    /// A system call on the engine's own descriptors failed.
    #[error("{0}")]
    Io(io::Error),
    /// The process could not be pinned to a CPU.
    #[error("cannot pin to a CPU: {0}")]
    Pin(io::Error),
    /// The app's response breaks the Rack SPEC.
    #[error("invalid Rack response: {0}")]
    InvalidResponse(String),
    /// A value the Ruby side should never have sent.
    #[error("{0}")]
    Config(String),
    /// A TLS bind's certificate, key or setting is unusable: the
    /// operator's to fix (`Butterflies::ConfigError`).
    #[error("{0}")]
    Tls(String),
}

/// An error on its way into Ruby.
pub trait IntoRuby {
    fn into_ruby(self, ruby: &Ruby) -> Error;
}

impl IntoRuby for ExtError {
    fn into_ruby(self, ruby: &Ruby) -> Error {
        let class = match &self {
            ExtError::Bind(_) => ruby.get_inner(&BIND_ERROR),
            ExtError::Start(_) | ExtError::Pin(_) => ruby.exception_runtime_error(),
            ExtError::Io(_) => ruby.exception_io_error(),
            ExtError::InvalidResponse(_) => ruby.exception_type_error(),
            ExtError::Config(_) => ruby.exception_arg_error(),
            ExtError::Tls(_) => ruby.get_inner(&CONFIG_ERROR),
        };
        Error::new(class, self.to_string())
    }
}

impl IntoRuby for ExchangeError<Error> {
    fn into_ruby(self, ruby: &Ruby) -> Error {
        match self {
            ExchangeError::Interrupted(raised) => raised,
            e @ ExchangeError::Disconnected(_) => {
                Error::new(ruby.get_inner(&CLIENT_DISCONNECTED), e.to_string())
            }
            e @ (ExchangeError::Read(_) | ExchangeError::Hijack(_)) => {
                Error::new(ruby.exception_io_error(), e.to_string())
            }
        }
    }
}

/// `result.or_raise(ruby)?`: a Rust error as the Ruby exception it maps to.
pub trait OrRaise<T> {
    fn or_raise(self, ruby: &Ruby) -> Result<T, Error>;
}

impl<T, E: IntoRuby> OrRaise<T> for Result<T, E> {
    fn or_raise(self, ruby: &Ruby) -> Result<T, Error> {
        self.map_err(|e| e.into_ruby(ruby))
    }
}

/// The app's response breaks the Rack SPEC: a `TypeError` naming what.
pub fn invalid(ruby: &Ruby, message: &str) -> Error {
    ExtError::InvalidResponse(message.to_string()).into_ruby(ruby)
}

/// Whether an error is our own "client went away" (not the app's fault).
pub fn is_disconnect(ruby: &Ruby, error: &Error) -> bool {
    error.is_kind_of(ruby.get_inner(&CLIENT_DISCONNECTED))
}
