//! The duration grammars sluice reads, in one place:
//! - [`parse_go`]: Go's `time.ParseDuration` (Flagger's webhook and load tester
//!   timeouts, Istio's durations), e.g. `300ms`, `1.5s`, `1h30m`;
//! - [`parse_go_or_seconds`]: the same or bare seconds (`90`, `1.5`), for every
//!   command-line flag and the proxy's Istio fields;
//! - [`parse_prometheus`]: Prometheus durations (analysis intervals, PromQL windows),
//!   e.g. `500ms`, `30s`, `1h30m`, `1d`, with [`format_prometheus`] for the way back;
//! - [`parse_gateway_api`]: the Gateway API's durations (HTTPRoute timeouts), e.g.
//!   `10s`, `1m30s`, `500ms`.
//!
//! None accepts a negative duration; [`positive`] also rejects zero.

use std::fmt;
use std::time::Duration;

/// A text that is not a duration: the message names it and shows valid ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("invalid duration {text:?}: {problem}; write e.g. {examples}")]
    Syntax {
        text: String,
        problem: Problem,
        /// Valid texts of the grammar that was asked for.
        examples: &'static str,
    },
    #[error("invalid duration {text:?}: must be longer than zero")]
    Zero { text: String },
}

/// What is wrong with a text that is not a duration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    Empty,
    Negative,
    ExpectedNumber,
    MissingUnit,
    UnknownUnit(String),
    /// Prometheus: each unit at most once, largest first.
    UnitOrder,
    TooLong,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Empty => write!(f, "empty"),
            Problem::Negative => write!(f, "must not be negative"),
            Problem::ExpectedNumber => write!(f, "expected a number"),
            Problem::MissingUnit => write!(f, "missing unit"),
            Problem::UnknownUnit(unit) => write!(f, "unknown unit {unit:?}"),
            Problem::UnitOrder => write!(f, "units must go from largest to smallest, each once"),
            Problem::TooLong => write!(f, "too long"),
        }
    }
}

const GO_EXAMPLES: &str = "300ms, 1.5s, 1h30m (units ns, us, ms, s, m, h)";
const GO_OR_SECONDS_EXAMPLES: &str = "90, 1.5, 300ms, 1h30m (units ns, us, ms, s, m, h)";
const GATEWAY_API_EXAMPLES: &str =
    "10s, 1m30s, 500ms (at most 4 groups of up to 5 digits; units h, m, s, ms)";
const PROMETHEUS_EXAMPLES: &str = "500ms, 30s, 1m, 1h30m, 1d (units ms, s, m, h, d, w, y)";

const NANOS_PER_SECOND: u64 = 1_000_000_000;
/// Go's limit: a `time.Duration` is an int64 of nanoseconds (about 292 years).
const GO_MAX_NANOS: u64 = i64::MAX as u64;

/// Go's `time.ParseDuration` for non-negative values: one or more decimal numbers, each
/// with an optional fraction and a unit `ns`, `us` (`µs`, `μs`), `ms`, `s`, `m` or `h`,
/// e.g. `1h30m`, `1.5s`, `300ms`; `0` alone is allowed, as in Go. Surrounding whitespace
/// is ignored (YAML values, environment variables).
pub fn parse_go(text: &str) -> Result<Duration, DurationError> {
    go(text, false, GO_EXAMPLES)
}

/// [`parse_go`], or a bare non-negative number of seconds (`90`, `1.5`).
pub fn parse_go_or_seconds(text: &str) -> Result<Duration, DurationError> {
    go(text, true, GO_OR_SECONDS_EXAMPLES)
}

fn go(text: &str, bare_seconds: bool, examples: &'static str) -> Result<Duration, DurationError> {
    let bad = |problem| DurationError::Syntax {
        text: text.to_string(),
        problem,
        examples,
    };
    let trimmed = text.trim();
    if trimmed == "0" {
        return Ok(Duration::ZERO);
    }
    if trimmed.starts_with('-') {
        return Err(bad(Problem::Negative));
    }
    let mut rest = trimmed;
    let mut total: u64 = 0;
    loop {
        let (whole, fraction, after) = decimal(rest).map_err(bad)?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit_nanos = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => NANOS_PER_SECOND,
            "m" => 60 * NANOS_PER_SECOND,
            "h" => 3_600 * NANOS_PER_SECOND,
            // A bare number: seconds, if it is the whole text.
            "" if bare_seconds && after.is_empty() && rest.len() == trimmed.len() => {
                NANOS_PER_SECOND
            }
            "" => return Err(bad(Problem::MissingUnit)),
            other => return Err(bad(Problem::UnknownUnit(other.to_string()))),
        };
        total = nanos(whole, fraction, unit_nanos)
            .and_then(|nanos| total.checked_add(nanos))
            .filter(|&nanos| nanos <= GO_MAX_NANOS)
            .ok_or_else(|| bad(Problem::TooLong))?;
        if after.is_empty() {
            return Ok(Duration::from_nanos(total));
        }
        rest = after;
    }
}

/// A fraction's digits as an integer and its scale (`.25` is (25, 100)).
struct Fraction {
    digits: u64,
    scale: u64,
}

/// Splits `12.5rest` into 12, .5 and `rest`. At least one digit, before or after the
/// point, as in Go.
fn decimal(text: &str) -> Result<(u64, Fraction, &str), Problem> {
    if text.is_empty() {
        return Err(Problem::Empty);
    }
    let int_len = text.bytes().take_while(u8::is_ascii_digit).count();
    let whole = match int_len {
        0 => 0,
        _ => text[..int_len].parse().map_err(|_| Problem::TooLong)?,
    };
    let mut rest = &text[int_len..];
    let mut fraction = Fraction {
        digits: 0,
        scale: 1,
    };
    let mut fraction_len = 0;
    if let Some(after_point) = rest.strip_prefix('.') {
        fraction_len = after_point.bytes().take_while(u8::is_ascii_digit).count();
        // Digits past the 18th change the result by less than a nanosecond.
        for digit in after_point.bytes().take(fraction_len.min(18)) {
            fraction.digits = fraction.digits * 10 + u64::from(digit - b'0');
            fraction.scale *= 10;
        }
        rest = &after_point[fraction_len..];
    }
    if int_len == 0 && fraction_len == 0 {
        return Err(Problem::ExpectedNumber);
    }
    Ok((whole, fraction, rest))
}

/// `whole.fraction` units of `unit_nanos` each, in nanoseconds (the fraction truncated).
fn nanos(whole: u64, fraction: Fraction, unit_nanos: u64) -> Option<u64> {
    let part = u128::from(fraction.digits) * u128::from(unit_nanos) / u128::from(fraction.scale);
    whole
        .checked_mul(unit_nanos)?
        .checked_add(u64::try_from(part).ok()?)
}

/// Prometheus units, largest first.
const PROMETHEUS_UNITS: [(&str, u64); 7] = [
    ("y", 365 * 86_400_000),
    ("w", 7 * 86_400_000),
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// Prometheus durations: `<integer><unit>` groups with units `y w d h m s ms`, each at
/// most once and largest first, e.g. `1h30m`, `30s`, `500ms`; `0` alone is allowed, as in
/// Prometheus. Nothing is trimmed: the text is what PromQL would read.
pub fn parse_prometheus(text: &str) -> Result<Duration, DurationError> {
    let bad = |problem| DurationError::Syntax {
        text: text.to_string(),
        problem,
        examples: PROMETHEUS_EXAMPLES,
    };
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err(bad(Problem::Empty));
    }
    if text.starts_with('-') {
        return Err(bad(Problem::Negative));
    }
    let mut total_ms: u64 = 0;
    // Size of the previous unit; the next must be strictly smaller.
    let mut previous_unit_ms = u64::MAX;
    for group in unit_groups(text) {
        let (number, unit) = group.map_err(bad)?;
        let number: u64 = number.parse().map_err(|_| bad(Problem::TooLong))?;
        let unit_ms = match PROMETHEUS_UNITS.iter().find(|(name, _)| *name == unit) {
            Some((_, unit_ms)) => *unit_ms,
            None if unit.is_empty() => return Err(bad(Problem::MissingUnit)),
            None => return Err(bad(Problem::UnknownUnit(unit.to_string()))),
        };
        if unit_ms >= previous_unit_ms {
            return Err(bad(Problem::UnitOrder));
        }
        previous_unit_ms = unit_ms;
        total_ms = number
            .checked_mul(unit_ms)
            .and_then(|ms| ms.checked_add(total_ms))
            .ok_or_else(|| bad(Problem::TooLong))?;
    }
    Ok(Duration::from_millis(total_ms))
}

/// The Gateway API's duration (GEP-2257, `^([0-9]{1,5}(h|m|s|ms)){1,4}$`), as its CRDs
/// check it: what this accepts the API server accepts in an HTTPRoute.
pub fn parse_gateway_api(text: &str) -> Result<Duration, DurationError> {
    let bad = |problem| DurationError::Syntax {
        text: text.to_string(),
        problem,
        examples: GATEWAY_API_EXAMPLES,
    };
    if text.is_empty() {
        return Err(bad(Problem::Empty));
    }
    if text.starts_with('-') {
        return Err(bad(Problem::Negative));
    }
    let mut total_ms: u64 = 0;
    for (i, group) in unit_groups(text).enumerate() {
        let (number, unit) = group.map_err(bad)?;
        if number.len() > 5 || i >= 4 {
            return Err(bad(Problem::TooLong));
        }
        let number: u64 = number.parse().map_err(|_| bad(Problem::TooLong))?;
        let unit_ms = match unit {
            "h" => 3_600_000,
            "m" => 60_000,
            "s" => 1_000,
            "ms" => 1,
            "" => return Err(bad(Problem::MissingUnit)),
            other => return Err(bad(Problem::UnknownUnit(other.to_string()))),
        };
        total_ms += number * unit_ms;
    }
    Ok(Duration::from_millis(total_ms))
}

/// The `<digits><unit>` groups of `text`, in order, as the Prometheus and Gateway API
/// grammars write them; the unit is everything up to the next digit.
fn unit_groups(text: &str) -> impl Iterator<Item = Result<(&str, &str), Problem>> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            rest = "";
            return Some(Err(Problem::ExpectedNumber));
        }
        let (number, after) = rest.split_at(digits);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        rest = after;
        Some(Ok((number, unit)))
    })
}

/// `parse(text)`, rejecting zero: a timeout or window of nothing would fail every call
/// or measure nothing.
pub fn positive(
    text: &str,
    parse: fn(&str) -> Result<Duration, DurationError>,
) -> Result<Duration, DurationError> {
    match parse(text)? {
        d if d.is_zero() => Err(DurationError::Zero {
            text: text.to_string(),
        }),
        d => Ok(d),
    }
}

/// Formats a duration for PromQL range selectors: `1h30m`, `1m`, `30s`, `1s500ms`.
/// Sub-millisecond parts are dropped (PromQL has no smaller unit).
pub fn format_prometheus(duration: Duration) -> String {
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

    type Parse = fn(&str) -> Result<Duration, DurationError>;

    #[derive(Debug)]
    enum Want {
        Is(Duration),
        Bad(Problem),
        Zero,
    }

    #[test]
    fn grammars() {
        let go: Parse = parse_go;
        let go_s: Parse = parse_go_or_seconds;
        let prom: Parse = parse_prometheus;
        let gw: Parse = parse_gateway_api;
        let pos_go: Parse = |t| positive(t, parse_go);
        let ns = Duration::from_nanos;
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        let unit = |u: &str| Bad(Problem::UnknownUnit(u.into()));
        use Problem::*;
        use Want::*;
        let cases: &[(Parse, &str, Want)] = &[
            // Go
            (go, "1h30m", Is(s(5_400))),
            (go, "1.5s", Is(ms(1_500))),
            (go, "1.5h", Is(s(5_400))),
            (go, ".5s", Is(ms(500))),
            (go, "1.s", Is(s(1))),
            (go, "300ms", Is(ms(300))),
            (go, "250000us", Is(ms(250))),
            (go, "250000µs", Is(ms(250))),
            (go, "250000μs", Is(ms(250))),
            (go, "5000000ns", Is(ms(5))),
            (go, "0.000000001s", Is(ns(1))),
            (go, "0.1234567891234567891s", Is(ns(123_456_789))),
            (go, "30s1h1m1m", Is(s(3_600 + 120 + 30))),
            (go, "0", Is(Duration::ZERO)),
            (go, "0s", Is(Duration::ZERO)),
            (go, " 2s ", Is(s(2))),
            (go, "2562047h47m16.854775807s", Is(ns(i64::MAX as u64))),
            (go, "2562047h47m16.854775808s", Bad(TooLong)),
            (go, "99999999999999999999h", Bad(TooLong)),
            (go, "", Bad(Empty)),
            (go, "  ", Bad(Empty)),
            (go, "-1s", Bad(Negative)),
            (go, "1s-2s", unit("s-")),
            (go, "+1s", Bad(ExpectedNumber)),
            (go, "s", Bad(ExpectedNumber)),
            (go, ".s", Bad(ExpectedNumber)),
            (go, "90", Bad(MissingUnit)),
            (go, "1..5s", Bad(MissingUnit)),
            (go, "1s2", Bad(MissingUnit)),
            (go, "1d", unit("d")),
            (go, "10x", unit("x")),
            (go, "1 s", unit(" s")),
            // Go or bare seconds
            (go_s, "90", Is(s(90))),
            (go_s, "1.5", Is(ms(1_500))),
            (go_s, " 3 ", Is(s(3))),
            (go_s, "0", Is(Duration::ZERO)),
            (go_s, "0.0", Is(Duration::ZERO)),
            (go_s, "1h30m", Is(s(5_400))),
            (go_s, "250ms", Is(ms(250))),
            (go_s, "9223372037", Bad(TooLong)),
            (go_s, "", Bad(Empty)),
            (go_s, "-3", Bad(Negative)),
            (go_s, "1e3", unit("e")),
            (go_s, "10m5", Bad(MissingUnit)),
            (go_s, "1 fortnight", unit(" fortnight")),
            // Gateway API
            (gw, "10s", Is(s(10))),
            (gw, "1m30s", Is(s(90))),
            (gw, "500ms", Is(ms(500))),
            (gw, "1h1m1s1ms", Is(ms(3_661_001))),
            (gw, "0s", Is(Duration::ZERO)),
            (gw, "99999s", Is(s(99_999))),
            (gw, "100000s", Bad(TooLong)),
            (gw, "1h1m1s1ms1h", Bad(TooLong)),
            (gw, "1.5s", unit(".")),
            (gw, "1d", unit("d")),
            (gw, "10", Bad(MissingUnit)),
            (gw, "0", Bad(MissingUnit)),
            (gw, "", Bad(Empty)),
            (gw, "-1s", Bad(Negative)),
            (gw, "s", Bad(ExpectedNumber)),
            // Prometheus
            (prom, "500ms", Is(ms(500))),
            (prom, "30s", Is(s(30))),
            (prom, "1m", Is(s(60))),
            (prom, "1h30m", Is(s(5_400))),
            (prom, "1h0m5s", Is(s(3_605))),
            (prom, "2m30s250ms", Is(ms(150_250))),
            (prom, "1d", Is(s(86_400))),
            (prom, "1w", Is(s(7 * 86_400))),
            (prom, "1y2w", Is(s(379 * 86_400))),
            (prom, "0", Is(Duration::ZERO)),
            (prom, "0s", Is(Duration::ZERO)),
            (prom, "", Bad(Empty)),
            (prom, "-1m", Bad(Negative)),
            (prom, "m", Bad(ExpectedNumber)),
            (prom, " 30s", Bad(ExpectedNumber)),
            (prom, "1", Bad(MissingUnit)),
            (prom, "1x", unit("x")),
            (prom, "1M", unit("M")),
            (prom, "1.5m", unit(".")),
            (prom, "30s ", unit("s ")),
            (prom, "1m]) or vector(1", unit("m]) or vector(")),
            (prom, "1m1h", Bad(UnitOrder)),
            (prom, "1m1m", Bad(UnitOrder)),
            (prom, "1ms1s", Bad(UnitOrder)),
            (prom, "99999999999999999999s", Bad(TooLong)),
            (prom, "5000000000000d", Bad(TooLong)),
            // Zero rejected, other errors passed through
            (pos_go, "1ns", Is(ns(1))),
            (pos_go, "0s", Zero),
            (pos_go, "0", Zero),
            (pos_go, "1x", unit("x")),
        ];
        for (parse, text, want) in cases {
            let got = parse(text);
            match (want, &got) {
                (Is(want), Ok(got)) => assert_eq!(got, want, "{text:?}"),
                (Bad(want), Err(DurationError::Syntax { problem, .. })) => {
                    assert_eq!(problem, want, "{text:?}")
                }
                (Zero, Err(DurationError::Zero { .. })) => {}
                _ => panic!("{text:?}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn errors_name_the_text_and_valid_forms() {
        let err = parse_go("10x").unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid duration \"10x\": unknown unit \"x\"; write e.g. 300ms, 1.5s, 1h30m \
             (units ns, us, ms, s, m, h)"
        );
        let err = parse_prometheus("1.5m").unwrap_err().to_string();
        assert!(err.starts_with("invalid duration \"1.5m\": "), "{err}");
        assert!(err.contains("e.g. 500ms, 30s"), "{err}");
        let err = positive("0s", parse_go_or_seconds).unwrap_err().to_string();
        assert_eq!(err, "invalid duration \"0s\": must be longer than zero");
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
            assert_eq!(format_prometheus(Duration::from_millis(ms)), text);
        }
        assert_eq!(format_prometheus(Duration::from_micros(1_999)), "1ms");
    }

    #[test]
    fn format_then_parse_round_trips() {
        for ms in [1, 999, 1_000, 61_001, 3_599_999, 86_400_000] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse_prometheus(&format_prometheus(d)), Ok(d));
        }
    }
}
