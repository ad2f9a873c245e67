//! Wall-clock time as text: RFC 3339 timestamps written (event and metrics
//! times) and read (credential expirations), without a date-time crate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date (year, month, day) of a day since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// `2026-11-25T21:54:08.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days in month `m` (1–12) of year `y` (proleptic Gregorian).
fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// `2026-11-25T21:54:08Z`, with an optional fraction (ignored) and a `Z` or
/// `+hh:mm` offset.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || sec > 60
    {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(r) = rest.strip_prefix('.') {
        let digits = r.bytes().take_while(u8::is_ascii_digit).count();
        rest = &r[digits..];
    }
    let offset = match rest {
        "Z" | "z" | "" => 0,
        r if r.len() == 6 && (r.starts_with('+') || r.starts_with('-')) => {
            let sign = if r.starts_with('-') { -1 } else { 1 };
            sign * (r.get(1..3)?.parse::<i64>().ok()? * 3600
                + r.get(4..6)?.parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset;
    u64::try_from(secs)
        .ok()
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

/// Nanoseconds since the epoch of an RFC 3339 time, with its fraction (to
/// the nanosecond; further digits are dropped).
pub fn epoch_nanos(time: &str) -> Option<u64> {
    let (secs, nanos) = epoch(time)?;
    secs.checked_mul(1_000_000_000)?
        .checked_add(u64::from(nanos))
}

/// An RFC 3339 time as seconds since the epoch and the nanoseconds its
/// fraction gives (digits past the ninth ignored).
pub fn epoch(time: &str) -> Option<(u64, u32)> {
    let secs = parse_rfc3339(time)?
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_secs();
    let frac = time
        .get(19..)
        .and_then(|r| r.strip_prefix('.'))
        .unwrap_or("");
    let mut nanos = 0u32;
    for (i, d) in frac.bytes().take_while(u8::is_ascii_digit).enumerate() {
        if i < 9 {
            nanos += u32::from(d - b'0') * 10u32.pow(8 - i as u32);
        }
    }
    Some((secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_nanos_keeps_the_fraction() {
        let t = |s: &str| epoch_nanos(s);
        assert_eq!(t("1970-01-01T00:00:01Z"), Some(1_000_000_000));
        assert_eq!(t("1970-01-01T00:00:01.5Z"), Some(1_500_000_000));
        assert_eq!(t("1970-01-01T00:00:01.123456789123Z"), Some(1_123_456_789));
        assert_eq!(t("1970-01-01T00:00:00.000001+00:00"), Some(1_000));
        assert_eq!(
            t("2026-11-30T01:02:03.456Z"),
            Some(1_796_000_523_456_000_000)
        );
        assert_eq!(t("not a time"), None);
    }

    #[test]
    fn written() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn read() {
        let t = |s| parse_rfc3339(s).map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs());
        assert_eq!(t("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(t("2025-11-25T21:54:08Z"), Some(1_764_107_648));
        assert_eq!(t("2025-11-25T21:54:08.123456Z"), Some(1_764_107_648));
        assert_eq!(t("2025-11-25T22:54:08+01:00"), Some(1_764_107_648));
        assert_eq!(t("2000-02-29T00:00:00Z"), Some(951_782_400));
        assert_eq!(t("2025-13-01T00:00:00Z"), None);
        assert_eq!(t("yesterday"), None);
        // Days past the month's end: no silent roll-over into the next.
        let valid = |day: &str| parse_rfc3339(&format!("{day}T00:00:00Z")).is_some();
        for bad in [
            "2026-02-31",
            "2026-02-29",
            "1900-02-29",
            "2026-04-31",
            "2026-01-32",
        ] {
            assert!(!valid(bad), "{bad}");
        }
        for good in ["2024-02-29", "2000-02-29", "2026-04-30", "2026-12-31"] {
            assert!(valid(good), "{good}");
        }
    }

    #[test]
    fn round_trip_over_four_centuries() {
        for days in (-1_000..146_097 * 2).step_by(97) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        let t = UNIX_EPOCH + Duration::from_secs(4_102_444_799); // 2099-12-31T23:59:59
        assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
    }
}
