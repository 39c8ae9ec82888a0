//! The settings `metahub serve` and the Lambda functions share, read once: [`SharedSettings::read`] takes each value
//! from one `METAHUB_*` name through a lookup (serve: its flag if given, else the environment; Lambda: the
//! environment), parses it with the one parser below and fills in the one default. The same text means the same
//! setting to both runtimes.

use crate::cache::{CacheOptions, DEFAULT_CACHE_BYTES, DEFAULT_MAX_STALE, DEFAULT_TAG_TTL};
use crate::error::{Error, Result};
use crate::names::MachineTypeName;
use crate::service::IndexDigestPulls;
use crate::token::MAX_TOKEN_TTL_SECONDS;
use std::fmt;
use std::time::Duration;

/// The `service` of challenges and the audience of tokens, by default.
pub const DEFAULT_SERVICE: &str = "metahub";
/// Token lifetime by default (at most [`MAX_TOKEN_TTL_SECONDS`]).
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(300);
/// One upstream HTTP request's timeout by default (Lambda caps it to its time budget).
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

/// The variables both runtimes read, each naming one field of [`SharedSettings`].
pub const PUBLIC_URL: &str = "METAHUB_PUBLIC_URL";
pub const SERVICE: &str = "METAHUB_SERVICE";
pub const ANONYMOUS_MACHINE_TYPE: &str = "METAHUB_ANONYMOUS_MACHINE_TYPE";
pub const TAG_TTL: &str = "METAHUB_TAG_TTL";
pub const INDEX_DIGEST_PULLS: &str = "METAHUB_INDEX_DIGEST_PULLS";
pub const TOKEN_TTL: &str = "METAHUB_TOKEN_TTL";
pub const CACHE_MIB: &str = "METAHUB_CACHE_MIB";
pub const MAX_STALE: &str = "METAHUB_MAX_STALE";
pub const UPSTREAM_TIMEOUT: &str = "METAHUB_UPSTREAM_TIMEOUT";

/// Every shared variable, in the order they are read.
pub const VARIABLES: [&str; 9] = [
    PUBLIC_URL,
    SERVICE,
    ANONYMOUS_MACHINE_TYPE,
    TAG_TTL,
    INDEX_DIGEST_PULLS,
    TOKEN_TTL,
    CACHE_MIB,
    MAX_STALE,
    UPSTREAM_TIMEOUT,
];

/// What both runtimes configure the same way. The origin secret, admin authentication, signing keys, the store
/// and the upstream list are each runtime's own (flags and files; SSM parameters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedSettings {
    /// The URL clients reach MetaHub at (an http(s) URL, no trailing `/`); unset: the runtime's default (serve:
    /// `http://LISTEN`; Lambda: the viewer's host behind CloudFront).
    pub public_url: Option<String>,
    pub service: String,
    /// Granted to token requests without credentials; `None`: they are refused.
    pub anonymous_machine_type: Option<MachineTypeName>,
    pub token_ttl: Duration,
    /// Tag window, memory and stale window; the rest of [`CacheOptions`] at its defaults.
    pub cache: CacheOptions,
    pub index_digest_pulls: IndexDigestPulls,
    pub upstream_timeout: Duration,
}

/// The defaults that depend on where MetaHub runs; every other default is a constant of this module or the cache's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeDefaults {
    pub cache_bytes: usize,
    pub upstream_timeout: Duration,
}

impl Default for RuntimeDefaults {
    /// `metahub serve`'s.
    fn default() -> Self {
        RuntimeDefaults { cache_bytes: DEFAULT_CACHE_BYTES, upstream_timeout: DEFAULT_UPSTREAM_TIMEOUT }
    }
}

/// A value a setting refuses, naming the variable so that each runtime can name it its way (serve names the flag
/// when the value came from one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingError {
    pub variable: &'static str,
    pub value: String,
    /// What is wrong, without the variable or the value.
    pub problem: String,
}

impl fmt::Display for SettingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={:?}: {}", self.variable, self.value, self.problem)
    }
}

impl std::error::Error for SettingError {}

impl SharedSettings {
    /// Reads every shared setting through `lookup`, keyed by its environment variable name; an empty (or blank)
    /// value counts as unset, as CloudFormation passes optional parameters.
    pub fn read(
        lookup: impl Fn(&str) -> Option<String>,
        defaults: RuntimeDefaults,
    ) -> std::result::Result<SharedSettings, SettingError> {
        // Each variable's text through its parser, the error naming both.
        fn parsed<T>(
            lookup: &impl Fn(&str) -> Option<String>,
            variable: &'static str,
            parse: impl FnOnce(&str) -> Result<T>,
        ) -> std::result::Result<Option<T>, SettingError> {
            let Some(value) = lookup(variable).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()) else {
                return Ok(None);
            };
            parse(&value).map(Some).map_err(|e| SettingError { variable, value, problem: e.message })
        }
        let tag_ttl = parsed(&lookup, TAG_TTL, parse_duration)?.unwrap_or(DEFAULT_TAG_TTL);
        Ok(SharedSettings {
            public_url: parsed(&lookup, PUBLIC_URL, parse_public_url)?,
            service: parsed(&lookup, SERVICE, |v| Ok(v.to_owned()))?.unwrap_or_else(|| DEFAULT_SERVICE.to_owned()),
            // Checked now: a typo would otherwise fail every anonymous pull later.
            anonymous_machine_type: parsed(&lookup, ANONYMOUS_MACHINE_TYPE, str::parse)?,
            token_ttl: parsed(&lookup, TOKEN_TTL, parse_token_ttl)?.unwrap_or(DEFAULT_TOKEN_TTL),
            cache: CacheOptions {
                // zero turns the window off: every pull checks upstream
                tag_ttl: Some(tag_ttl).filter(|d| !d.is_zero()),
                max_bytes: parsed(&lookup, CACHE_MIB, parse_mib)?.unwrap_or(defaults.cache_bytes),
                max_stale: parsed(&lookup, MAX_STALE, parse_duration)?.unwrap_or(DEFAULT_MAX_STALE),
                ..CacheOptions::default()
            },
            index_digest_pulls: parsed(&lookup, INDEX_DIGEST_PULLS, str::parse)?.unwrap_or_default(),
            upstream_timeout: parsed(&lookup, UPSTREAM_TIMEOUT, parse_duration)?.unwrap_or(defaults.upstream_timeout),
        })
    }
}

/// A duration: a bare number of seconds (`300`), or humantime's `5m`, `10s`, `1h 30m`, `500ms`. The error names
/// neither the value nor the setting: its caller does.
pub fn parse_duration(value: &str) -> Result<Duration> {
    if let Ok(seconds) = value.trim().parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(value.trim())
        .map_err(|e| Error::invalid(format!("not a duration ({e}); write e.g. 300, 5m or 10s")))
}

/// A duration of whole seconds, 1s to the longest token lifetime.
fn parse_token_ttl(value: &str) -> Result<Duration> {
    let ttl = parse_duration(value)?;
    if !(1..=MAX_TOKEN_TTL_SECONDS).contains(&ttl.as_secs()) || ttl.subsec_nanos() != 0 {
        return Err(Error::invalid(format!("a token lifetime is whole seconds, 1s to {MAX_TOKEN_TTL_SECONDS}s")));
    }
    Ok(ttl)
}

/// A number of MiB, as bytes.
fn parse_mib(value: &str) -> Result<usize> {
    value
        .parse::<usize>()
        .ok()
        .and_then(|mib| mib.checked_mul(1 << 20))
        .ok_or_else(|| Error::invalid("not a number of MiB".to_owned()))
}

/// An http(s) URL, without its trailing `/`.
fn parse_public_url(value: &str) -> Result<String> {
    if !(value.starts_with("https://") || value.starts_with("http://")) || value.contains(char::is_whitespace) {
        return Err(Error::invalid("not an http(s):// URL".to_owned()));
    }
    Ok(value.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn read(vars: &[(&str, &str)]) -> std::result::Result<SharedSettings, SettingError> {
        let map: HashMap<&str, &str> = vars.iter().copied().collect();
        SharedSettings::read(|name| map.get(name).map(|v| v.to_string()), RuntimeDefaults::default())
    }

    #[test]
    fn bare_seconds_and_units_read_alike() {
        assert_eq!(parse_duration("300").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        for bad in ["", "-1", "five", "5 parsecs"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn nothing_set_is_every_default() {
        let s = read(&[]).unwrap();
        assert_eq!(s.public_url, None);
        assert_eq!(s.service, DEFAULT_SERVICE);
        assert_eq!(s.anonymous_machine_type, None);
        assert_eq!(s.token_ttl, DEFAULT_TOKEN_TTL);
        assert_eq!(s.cache, CacheOptions::default());
        assert_eq!(s.index_digest_pulls, IndexDigestPulls::Verbatim);
        assert_eq!(s.upstream_timeout, DEFAULT_UPSTREAM_TIMEOUT);
        let blank: Vec<(&str, &str)> = VARIABLES.iter().map(|v| (*v, " ")).collect();
        assert_eq!(read(&blank).unwrap(), s, "empty counts as unset");
    }

    #[test]
    fn every_value_read() {
        let s = read(&[
            (PUBLIC_URL, "https://hub.example/"),
            (SERVICE, "hub"),
            (ANONYMOUS_MACHINE_TYPE, "hsw-m60"),
            (TAG_TTL, "0"),
            (INDEX_DIGEST_PULLS, "refuse"),
            (TOKEN_TTL, "600"),
            (CACHE_MIB, "64"),
            (MAX_STALE, "1h"),
            (UPSTREAM_TIMEOUT, "5"),
        ])
        .unwrap();
        assert_eq!(s.public_url.as_deref(), Some("https://hub.example"));
        assert_eq!(s.service, "hub");
        assert_eq!(s.anonymous_machine_type.unwrap(), "hsw-m60");
        assert_eq!(s.cache.tag_ttl, None, "0 turns the tag window off");
        assert_eq!(s.index_digest_pulls, IndexDigestPulls::Refuse);
        assert_eq!(s.token_ttl, Duration::from_secs(600));
        assert_eq!(s.cache.max_bytes, 64 << 20);
        assert_eq!(s.cache.max_stale, Duration::from_secs(3600));
        assert_eq!(s.upstream_timeout, Duration::from_secs(5));
    }

    #[test]
    fn a_bad_value_is_one_line_naming_the_variable_and_the_value() {
        for (variable, bad) in [
            (PUBLIC_URL, "hub.example"),
            (ANONYMOUS_MACHINE_TYPE, "hsw m60"),
            (TAG_TTL, "soon"),
            (INDEX_DIGEST_PULLS, "sometimes"),
            (TOKEN_TTL, "2h"),
            (TOKEN_TTL, "1500ms"),
            (CACHE_MIB, "16MiB"),
            (MAX_STALE, "-1"),
            (UPSTREAM_TIMEOUT, "fast"),
        ] {
            let e = read(&[(variable, bad)]).unwrap_err();
            assert_eq!((e.variable, e.value.as_str()), (variable, bad));
            let line = e.to_string();
            assert!(line.starts_with(&format!("{variable}={bad:?}: ")), "{line}");
            assert!(!line.contains('\n'), "{line}");
        }
    }
}
