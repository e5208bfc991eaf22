//! Timestamps. Stored and returned as RFC 3339 in UTC with exactly three fractional digits,
//! so that their text order is their time order (the store sorts and compares them as text).

use time::OffsetDateTime;
use time::format_description::FormatItem;
use time::macros::format_description;

const FORMAT: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// The current time as `2026-11-21T05:00:00.123Z`.
pub fn now() -> String {
    format(OffsetDateTime::now_utc())
}

/// Formats any instant as the canonical timestamp text.
pub fn format(at: OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC)
        .format(FORMAT)
        .unwrap_or_else(|_| String::from("1970-01-01T00:00:00.000Z"))
}

/// The canonical timestamp text of `now - age`.
pub fn ago(age: std::time::Duration) -> String {
    let age = time::Duration::try_from(age).unwrap_or(time::Duration::ZERO);
    format(OffsetDateTime::now_utc() - age)
}

/// The canonical timestamp text of `now + age`.
pub fn later(age: std::time::Duration) -> String {
    let age = time::Duration::try_from(age).unwrap_or(time::Duration::ZERO);
    format(OffsetDateTime::now_utc() + age)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_have_fixed_width() {
        let t = super::now();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.ends_with('Z'));
        assert!(super::ago(std::time::Duration::from_secs(60)) < t);
    }
}
