//! Durations as written in Canary specs and PromQL: `500ms`, `30s`, `1m`, `1h30m`, `1d`.

use std::time::Duration;

use super::{Error, Result};

const UNITS: [(&str, u64); 5] = [
    // Longest suffix first so `ms` is not read as `m` followed by garbage.
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

/// Parses `<int><unit>` groups (units `d h m s ms`, largest first, each at most once),
/// like Prometheus durations. Zero is rejected: a window of nothing measures nothing.
pub fn parse_duration(input: &str) -> Result<Duration> {
    let bad = |reason: &str| Error::BadInterval {
        input: input.into(),
        reason: reason.into(),
    };
    if input.is_empty() {
        return Err(bad("empty"));
    }
    let mut rest = input;
    let mut total_ms: u64 = 0;
    // Size of the previous unit; the next must be strictly smaller.
    let mut previous_unit_ms = u64::MAX;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad("expected a number, e.g. 30s, 1m, 1h30m"));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| bad("number too large"))?;
        rest = &rest[digits..];
        let (suffix, unit_ms) = UNITS
            .iter()
            .find(|(suffix, _)| rest.starts_with(suffix))
            .ok_or_else(|| bad("expected a unit: ms, s, m, h or d"))?;
        if *unit_ms >= previous_unit_ms {
            return Err(bad("units must go from largest to smallest, each once"));
        }
        previous_unit_ms = *unit_ms;
        rest = &rest[suffix.len()..];
        total_ms = number
            .checked_mul(*unit_ms)
            .and_then(|ms| ms.checked_add(total_ms))
            .ok_or_else(|| bad("too long"))?;
    }
    if total_ms == 0 {
        return Err(bad("must be longer than zero"));
    }
    Ok(Duration::from_millis(total_ms))
}

/// Formats a duration for PromQL range selectors: `1h30m`, `1m`, `30s`, `1s500ms`.
/// Sub-millisecond parts are dropped (PromQL has no smaller unit).
pub fn format_duration(duration: Duration) -> String {
    let mut ms = duration.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (suffix, unit_ms) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
        let count = ms / unit_ms;
        if count > 0 {
            out.push_str(&format!("{count}{suffix}"));
            ms %= unit_ms;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_durations() {
        let cases = [
            ("500ms", 500),
            ("30s", 30_000),
            ("1m", 60_000),
            ("90s", 90_000),
            ("1h30m", 5_400_000),
            ("1h0m5s", 3_605_000),
            ("1d", 86_400_000),
            ("2m30s250ms", 150_250),
        ];
        for (input, ms) in cases {
            assert_eq!(
                parse_duration(input),
                Ok(Duration::from_millis(ms)),
                "{input}"
            );
        }
    }

    #[test]
    fn rejects_invalid_durations() {
        let cases = [
            "",
            "0s",
            "0m0s",
            "1",
            "m",
            "1x",
            "1.5m",
            "-1m",
            "1m1h",
            "1m1m",
            "30s ",
            " 30s",
            "1M",
            "1ms1s",
            "99999999999999999999s",
            "5000000000000d",
            "1m]) or vector(1",
        ];
        for input in cases {
            let err = parse_duration(input).expect_err(input);
            assert_eq!(err.label(), "bad_interval", "{input}");
        }
    }

    #[test]
    fn formats_for_promql() {
        let cases = [
            (0, "0s"),
            (1, "1ms"),
            (1_500, "1s500ms"),
            (30_000, "30s"),
            (60_000, "1m"),
            (90_000, "1m30s"),
            (5_400_000, "1h30m"),
            (86_400_000, "24h"),
        ];
        for (ms, text) in cases {
            assert_eq!(format_duration(Duration::from_millis(ms)), text);
        }
    }

    #[test]
    fn format_then_parse_round_trips() {
        for ms in [1, 999, 1_000, 61_001, 3_599_999, 86_400_000] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }
}
