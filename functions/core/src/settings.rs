//! How a setting's text reads, the same for every source: `metahub serve`'s flags and environment (clap) and the
//! Lambda functions' environment and SSM parameters read the same values to the same settings.

use crate::error::{Error, Result};
use std::time::Duration;

/// A duration: a bare number of seconds (`300`), or humantime's `5m`, `10s`, `1h 30m`, `500ms`.
pub fn parse_duration(value: &str) -> Result<Duration> {
    if let Ok(seconds) = value.trim().parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(value.trim())
        .map_err(|e| Error::invalid(format!("{value:?} is not a duration ({e}); write e.g. 300, 5m or 10s")))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
