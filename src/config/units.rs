//! Durations (`"30s"`, `"150s"`, `"24h"`, `"7d"`) and sizes (`"16MiB"`,
//! `"16KiB"`, `"1000"`) as written in the configuration file.

use std::time::Duration;

/// Parses a duration such as `"30s"`, `"1m 30s"`, `"24h"` or `"7d"`.
/// A bare number is rejected: the unit is always written.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() || text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "'{text}' is not a duration: write a number with a unit, like \"30s\", \"5m\" or \"24h\""
        ));
    }
    humantime::parse_duration(text).map_err(|e| format!("'{text}' is not a duration: {e}"))
}

/// Parses a size in bytes: a number with an optional unit `B`, `KB`, `MB`,
/// `GB` (powers of 1000) or `KiB`, `MiB`, `GiB` (powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    let bad = || {
        format!("'{text}' is not a size: write a number with a unit, like \"16MiB\" or \"512KiB\"")
    };
    let number: u64 = digits.parse().map_err(|_| bad())?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "MB" => 1000 * 1000,
        "GB" => 1000 * 1000 * 1000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(bad()),
    };
    number.checked_mul(factor).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_with_units_parse() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("150s").unwrap(), Duration::from_secs(150));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    }

    #[test]
    fn durations_without_units_are_rejected() {
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn sizes_parse_in_both_unit_families() {
        assert_eq!(parse_size("16MiB").unwrap(), 16 << 20);
        assert_eq!(parse_size("16KiB").unwrap(), 16 << 10);
        assert_eq!(parse_size("2 MB").unwrap(), 2_000_000);
        assert_eq!(parse_size("1000").unwrap(), 1000);
    }

    #[test]
    fn bad_sizes_are_rejected() {
        assert!(parse_size("16 furlongs").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("-1KiB").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }
}
