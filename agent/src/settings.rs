//! The building blocks every configuration section is made of: the error that names a
//! bad key, and the parsers of durations and thresholds. A leaf: the modules that own a
//! section import it, never `config`.

use std::time::Duration;

use serde::{Deserialize, Deserializer};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is invalid{location}: {message}")]
    Parse {
        path: String,
        location: String,
        message: String,
    },
    #[error("config key `{key}` {problem}")]
    Invalid { key: &'static str, problem: String },
    /// For keys inside arrays of tables, e.g. `actions.rules[0].program`.
    #[error("config key `{key}` {problem}")]
    InvalidKey { key: String, problem: String },
}

/// `"auto"` or a duration such as `"20ms"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Threshold {
    #[default]
    Auto,
    Fixed(Duration),
}

impl<'de> Deserialize<'de> for Threshold {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text.trim() == "auto" {
            return Ok(Self::Auto);
        }
        parse_duration(&text)
            .map(Self::Fixed)
            .map_err(|e| serde::de::Error::custom(format!("{e}, or \"auto\"")))
    }
}

/// For `#[serde(deserialize_with = "duration")]`.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

/// Parses `10s`, `500ms`, `1m30s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid duration \"{text}\" ({e}); write it like \"10s\" or \"1m\""))
}
