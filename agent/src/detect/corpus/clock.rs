//! Timestamps of the corpora: `YYYY-MM-DD HH:MM:SS[.ffffff]` (or with a `T`), or
//! Unix seconds.

/// Unix seconds, or None when `text` is neither form (or names no real time: a year
/// outside 0–9999, an hour past 23, a number that is not finite).
pub fn parse_time(text: &str) -> Option<f64> {
    let t = text.trim().trim_matches('"');
    if let Ok(s) = t.parse::<f64>() {
        return s.is_finite().then_some(s);
    }
    let (date, time) = t.split_once([' ', 'T']).unwrap_or((t, "00:00:00"));
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time = time.trim_end_matches('Z');
    let mut h = time.split(':');
    let hour: f64 = h.next()?.parse().ok()?;
    let minute: f64 = h.next().unwrap_or("0").parse().ok()?;
    let second: f64 = h.next().unwrap_or("0").parse().ok()?;
    if !(0..=9999).contains(&y)
        || !(1..=12).contains(&m)
        || !(1..=31).contains(&day)
        || !(0.0..24.0).contains(&hour)
        || !(0.0..60.0).contains(&minute)
        || !(0.0..61.0).contains(&second)
    {
        return None;
    }
    Some(days_from_civil(y, m, day) as f64 * 86_400.0 + hour * 3600.0 + minute * 60.0 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse() {
        assert_eq!(parse_time("1970-01-01 00:00:00"), Some(0.0));
        assert_eq!(
            parse_time("2014-04-10 07:15:00.000000"),
            Some(1_397_114_100.0)
        );
        assert_eq!(parse_time("2014-04-10T07:15:00Z"), Some(1_397_114_100.0));
        assert_eq!(parse_time("1397114100"), Some(1_397_114_100.0));
        assert_eq!(parse_time("yesterday"), None);
        // Found by fuzz_inputs::csv_series: a year that overflowed the day count.
        assert_eq!(parse_time("202626262626262626-01-01T00:00:01Z"), None);
        assert_eq!(parse_time("inf"), None);
        assert_eq!(parse_time("2026-01-01T25:00:00Z"), None);
    }
}
