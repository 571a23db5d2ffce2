//! Durations and instants as people read them in tables (`--json` keeps the exact values).

use std::time::{Duration, SystemTime};

/// A duration rounded to what matters: `4s`, `1.5s`, `250ms`, `2m 30s`, `1h 5m`.
pub(super) fn duration(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    if ms < 10_000 {
        let tenths = (ms + 50) / 100;
        return if tenths % 10 == 0 {
            format!("{}s", tenths / 10)
        } else {
            format!("{}.{}s", tenths / 10, tenths % 10)
        };
    }
    let s = (ms + 500) / 1_000;
    match s {
        0..=119 => format!("{s}s"),
        120..=3_599 if s % 60 == 0 => format!("{}m", s / 60),
        120..=3_599 => format!("{}m {}s", s / 60, s % 60),
        _ if s % 3600 / 60 == 0 => format!("{}h", s / 3600),
        _ => format!("{}h {}m", s / 3600, s % 3600 / 60),
    }
}

/// Milliseconds, as [`duration`].
pub(super) fn millis(ms: u64) -> String {
    duration(Duration::from_millis(ms))
}

/// An RFC 3339 instant relative to `now`: `in 3.2s`, `5s ago`; the text itself if it does not
/// parse.
pub(super) fn relative(at: &str, now: SystemTime) -> String {
    let Ok(t) = humantime::parse_rfc3339_weak(at) else {
        return at.to_string();
    };
    match t.duration_since(now) {
        Ok(ahead) => format!("in {}", duration(ahead)),
        Err(e) => format!("{} ago", duration(e.duration())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_rounded_for_people() {
        for (ms, text) in [
            (250, "250ms"),
            (1_000, "1s"),
            (3_333, "3.3s"),
            (4_000, "4s"),
            (10_000, "10s"),
            (90_000, "90s"),
            (150_000, "2m 30s"),
            (3_600_000, "1h"),
            (3_900_000, "1h 5m"),
        ] {
            assert_eq!(millis(ms), text, "{ms}");
        }
    }

    #[test]
    fn instants_are_shown_from_now() {
        let now = humantime::parse_rfc3339("2026-12-01T10:00:00Z").unwrap();
        assert_eq!(relative("2026-12-01T10:00:03.200Z", now), "in 3.2s");
        assert_eq!(relative("2026-12-01T09:59:55.123456789Z", now), "4.9s ago");
        assert_eq!(relative("not a time", now), "not a time");
    }
}
