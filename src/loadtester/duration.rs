//! Go's `time.ParseDuration` syntax, which Flagger's `metadata.timeout` uses.

use std::time::Duration;

/// Parses `1h`, `1m30s`, `1.5h`, `500ms`, `100us`: decimal numbers (with an optional
/// fraction), each followed by a unit `ns us µs ms s m h`. Unlike Go, zero and negative
/// values are rejected: a timeout of nothing would kill every command at once.
pub fn parse_go_duration(input: &str) -> Result<Duration, String> {
    let text = input.trim();
    if text.is_empty() {
        return Err("empty; expected e.g. 30s, 5m, 1h30m".into());
    }
    let is_number = |c: char| c.is_ascii_digit() || c == '.';
    let mut rest = text;
    let mut seconds = 0f64;
    while !rest.is_empty() {
        let split = rest.find(|c: char| !is_number(c)).unwrap_or(rest.len());
        let (number, tail) = rest.split_at(split);
        if number.is_empty() || number == "." {
            return Err("expected a number, e.g. 30s, 5m, 1h30m".into());
        }
        let value: f64 = number
            .parse()
            .map_err(|_| format!("{number:?} is not a number"))?;
        let split = tail.find(is_number).unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(split);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err("missing unit (ns, us, ms, s, m, h)".into()),
            other => return Err(format!("unknown unit {other:?} (ns, us, ms, s, m, h)")),
        };
        seconds += value * scale;
        rest = tail;
    }
    if seconds <= 0.0 {
        return Err("must be longer than zero".into());
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| "too long".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        let ms = Duration::from_millis;
        let cases: &[(&str, Result<Duration, &str>)] = &[
            ("1h", Ok(ms(3_600_000))),
            ("10m", Ok(ms(600_000))),
            ("30s", Ok(ms(30_000))),
            ("1m30s", Ok(ms(90_000))),
            ("1h30m", Ok(ms(5_400_000))),
            ("1.5s", Ok(ms(1_500))),
            ("1.5h", Ok(ms(5_400_000))),
            ("500ms", Ok(ms(500))),
            ("250000us", Ok(ms(250))),
            ("250000µs", Ok(ms(250))),
            ("5000000ns", Ok(ms(5))),
            (" 2s ", Ok(ms(2_000))),
            ("", Err("empty")),
            ("10", Err("missing unit")),
            ("10x", Err("unknown unit")),
            ("s", Err("expected a number")),
            ("0s", Err("longer than zero")),
            ("-1s", Err("expected a number")),
            ("1..5s", Err("not a number")),
            ("99999999999999999999h", Err("too long")),
        ];
        for (input, want) in cases {
            let got = parse_go_duration(input);
            match (want, &got) {
                (Ok(want), Ok(got)) => assert_eq!(got, want, "{input:?}"),
                (Err(want), Err(got)) => assert!(got.contains(want), "{input:?}: {got}"),
                _ => panic!("{input:?}: want {want:?}, got {got:?}"),
            }
        }
    }
}
