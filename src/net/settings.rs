//! The engine's settings, each declared once: its name, what it means (one
//! line, the `--help` text), the kind of value with its bounds, and where
//! it lives in [`Config`], whose `new` holds its default. Everything else
//! is derived from this table: the hash reader of `Engine.new`
//! (`src/ruby/engine.rs`), `Butterflies::Engine::SETTINGS` (defaults,
//! bounds and help for the Ruby side: the configuration's defaults and
//! checks, the config file's directives and the command line's flags), and
//! `Engine.defaults`.

use std::time::Duration;

use super::config::Config;

/// The longest duration a setting takes: a day.
pub const MAX_SECONDS: f64 = 86_400.0;
/// The largest count a setting takes unless its field is narrower.
pub const MAX_COUNT: u64 = 1 << 62;

/// A setting's kind of value, its bounds, and its place in [`Config`].
#[derive(Clone, Copy)]
pub enum Value {
    /// Seconds, fractional: above 0 (or at least 0 with `zero`) and at
    /// most [`MAX_SECONDS`].
    Seconds {
        zero: bool,
        get: fn(&Config) -> Duration,
        set: fn(&mut Config, Duration),
    },
    /// Seconds as above, or off (the default).
    OptionalSeconds {
        get: fn(&Config) -> Option<Duration>,
        set: fn(&mut Config, Option<Duration>),
    },
    /// A whole number from `min` to `max`.
    Count {
        min: u64,
        max: u64,
        get: fn(&Config) -> u64,
        set: fn(&mut Config, u64),
    },
}

/// One setting.
#[derive(Clone, Copy)]
pub struct Setting {
    pub name: &'static str,
    pub help: &'static str,
    pub value: Value,
}

/// Why a value was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Refused {
    #[error("{name} must be a number of seconds {low} and at most {MAX_SECONDS}, got {got}")]
    Seconds {
        name: &'static str,
        low: &'static str,
        got: f64,
    },
    #[error("{name} must be a whole number from {min} to {max}, got {got}")]
    Count {
        name: &'static str,
        min: u64,
        max: u64,
        got: u64,
    },
    #[error("{name} takes {kind}")]
    Kind {
        name: &'static str,
        kind: &'static str,
    },
}

macro_rules! seconds {
    ($name:literal, $help:literal, zero: $zero:literal, $($field:ident).+) => {
        Setting {
            name: $name,
            help: $help,
            value: Value::Seconds {
                zero: $zero,
                get: |c| c.$($field).+,
                set: |c, d| c.$($field).+ = d,
            },
        }
    };
}

macro_rules! optional_seconds {
    ($name:literal, $help:literal, $field:ident) => {
        Setting {
            name: $name,
            help: $help,
            value: Value::OptionalSeconds {
                get: |c| c.$field,
                set: |c, d| c.$field = d,
            },
        }
    };
}

macro_rules! count {
    ($name:literal, $help:literal, $min:expr, $max:expr, $($field:ident).+ as $ty:ty) => {
        Setting {
            name: $name,
            help: $help,
            value: Value::Count {
                min: $min,
                max: $max,
                get: |c| c.$($field).+ as u64,
                set: |c, n| c.$($field).+ = <$ty>::try_from(n).unwrap_or(<$ty>::MAX),
            },
        }
    };
}

/// Every setting the engine takes from the user.
pub const SETTINGS: &[Setting] = &[
    seconds!("shutdown_timeout", "Time in-flight requests get on stop", zero: true, shutdown_timeout),
    seconds!("idle_timeout", "Close keep-alive connections idle this long", zero: false, idle_timeout),
    seconds!("header_timeout", "408 when a request head takes longer", zero: false, header_timeout),
    seconds!("body_timeout", "408 when a request body pauses longer", zero: false, body_timeout),
    seconds!("write_timeout", "Drop clients that read nothing this long", zero: false, write_timeout),
    optional_seconds!(
        "request_timeout",
        "503 to a request running longer",
        request_timeout
    ),
    optional_seconds!(
        "request_hard_timeout",
        "Replace a worker whose app thread is stuck this long (cluster mode)",
        request_hard_timeout
    ),
    count!(
        "queue_depth",
        "Requests waiting for an app thread before 503",
        1,
        MAX_COUNT,
        queue_depth as usize
    ),
    Setting {
        name: "idle_spin",
        help: "Microseconds to poll for more work before sleeping, 0: never",
        value: Value::Count {
            min: 0,
            max: MAX_COUNT,
            get: |c| u64::try_from(c.idle_spin.as_micros()).unwrap_or(u64::MAX),
            set: |c, n| c.idle_spin = Duration::from_micros(n),
        },
    },
    count!(
        "backlog",
        "listen(2) backlog",
        1,
        i32::MAX as u64,
        listen.backlog as i32
    ),
    count!(
        "tcp_fastopen",
        "TCP_FASTOPEN queue length, 0: off",
        0,
        u32::MAX as u64,
        listen.tcp_fastopen as u32
    ),
    count!(
        "max_body_bytes",
        "413 for larger request bodies",
        1,
        MAX_COUNT,
        limits.max_body_bytes as u64
    ),
    count!(
        "max_head_bytes",
        "431 for a larger request head",
        1,
        MAX_COUNT,
        limits.max_head_bytes as usize
    ),
    count!(
        "max_target_bytes",
        "414 for a longer request target",
        1,
        MAX_COUNT,
        limits.max_target_bytes as usize
    ),
    count!(
        "max_header_fields",
        "431 for more header fields",
        1,
        MAX_COUNT,
        limits.max_header_fields as usize
    ),
    count!(
        "max_field_bytes",
        "431 for a longer header field line",
        1,
        MAX_COUNT,
        limits.max_field_bytes as usize
    ),
    count!(
        "max_parked_bytes",
        "Response bytes left in memory with IO threads for slow clients",
        0,
        MAX_COUNT,
        max_parked_bytes as usize
    ),
    count!(
        "max_spilled_bytes",
        "Response bytes spilled to disk past those",
        0,
        MAX_COUNT,
        max_spilled_bytes as usize
    ),
];

/// A value as Ruby gives it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Given {
    Seconds(f64),
    Count(u64),
}

impl Setting {
    /// The setting called `name`.
    pub fn named(name: &str) -> Option<&'static Setting> {
        SETTINGS.iter().find(|s| s.name == name)
    }

    /// Sets this setting in `config` to `given`, if within its bounds.
    pub fn apply(&self, config: &mut Config, given: Given) -> Result<(), Refused> {
        match (self.value, given) {
            (Value::Seconds { zero, set, .. }, Given::Seconds(s)) => {
                set(config, self.duration(s, zero)?);
            }
            (Value::OptionalSeconds { set, .. }, Given::Seconds(s)) => {
                set(config, Some(self.duration(s, false)?));
            }
            (Value::Count { min, max, set, .. }, Given::Count(n)) => {
                if n < min || n > max {
                    return Err(Refused::Count {
                        name: self.name,
                        min,
                        max,
                        got: n,
                    });
                }
                set(config, n);
            }
            (Value::Count { .. }, Given::Seconds(_)) => {
                return Err(Refused::Kind {
                    name: self.name,
                    kind: "a whole number",
                })
            }
            (_, Given::Count(n)) => return self.apply(config, Given::Seconds(n as f64)),
        }
        Ok(())
    }

    /// Its default, as [`Config::new`] has it (None: off).
    pub fn default_value(&self) -> Option<Given> {
        let config = Config::new(Vec::new());
        match self.value {
            Value::Seconds { get, .. } => Some(Given::Seconds(get(&config).as_secs_f64())),
            Value::OptionalSeconds { get, .. } => {
                get(&config).map(|d| Given::Seconds(d.as_secs_f64()))
            }
            Value::Count { get, .. } => Some(Given::Count(get(&config))),
        }
    }

    fn duration(&self, seconds: f64, zero: bool) -> Result<Duration, Refused> {
        let low_ok = if zero { seconds >= 0.0 } else { seconds > 0.0 };
        if seconds.is_finite() && low_ok && seconds <= MAX_SECONDS {
            return Ok(Duration::from_secs_f64(seconds));
        }
        Err(Refused::Seconds {
            name: self.name,
            low: if zero { ">= 0" } else { "above 0" },
            got: seconds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_setting_is_named_once_and_reads_back_what_it_sets() {
        for (i, setting) in SETTINGS.iter().enumerate() {
            assert!(
                SETTINGS[i + 1..].iter().all(|s| s.name != setting.name),
                "{} twice",
                setting.name
            );
            let mut config = Config::new(Vec::new());
            let value = match setting.value {
                Value::Count { min, .. } => Given::Count(min + 7),
                _ => Given::Seconds(7.5),
            };
            setting.apply(&mut config, value).unwrap();
            let back = match setting.value {
                Value::Seconds { get, .. } => Given::Seconds(get(&config).as_secs_f64()),
                Value::OptionalSeconds { get, .. } => {
                    Given::Seconds(get(&config).map_or(0.0, |d| d.as_secs_f64()))
                }
                Value::Count { get, .. } => Given::Count(get(&config)),
            };
            assert_eq!(back, value, "{}", setting.name);
        }
    }

    #[test]
    fn values_out_of_bounds_are_refused_with_the_bounds() {
        let mut config = Config::new(Vec::new());
        let queue = Setting::named("queue_depth").unwrap();
        assert_eq!(
            queue
                .apply(&mut config, Given::Count(0))
                .unwrap_err()
                .to_string(),
            format!("queue_depth must be a whole number from 1 to {MAX_COUNT}, got 0")
        );
        let idle = Setting::named("idle_timeout").unwrap();
        for bad in [0.0, -1.0, f64::INFINITY, f64::NAN, MAX_SECONDS + 1.0] {
            assert!(
                idle.apply(&mut config, Given::Seconds(bad)).is_err(),
                "{bad}"
            );
        }
        let shutdown = Setting::named("shutdown_timeout").unwrap();
        assert!(shutdown.apply(&mut config, Given::Seconds(0.0)).is_ok());
        let backlog = Setting::named("backlog").unwrap();
        assert!(backlog.apply(&mut config, Given::Count(1 << 40)).is_err());
        assert!(queue.apply(&mut config, Given::Seconds(1.5)).is_err());
    }

    #[test]
    fn defaults_are_the_configs() {
        let config = Config::new(Vec::new());
        let default = |name| Setting::named(name).unwrap().default_value();
        assert_eq!(
            default("idle_timeout"),
            Some(Given::Seconds(config.idle_timeout.as_secs_f64()))
        );
        assert_eq!(
            default("max_parked_bytes"),
            Some(Given::Count(config.max_parked_bytes as u64))
        );
        assert_eq!(default("request_timeout"), None, "off");
    }
}
