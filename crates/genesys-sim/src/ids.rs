//! Random identifiers: access tokens, execution and invocation ids, correlation ids, and the
//! ISO-8601 timestamps the Genesys API uses.
//!
//! Randomness comes from `fastrand` (not cryptographic): the simulator's tokens only have to be
//! unguessable by accident, not by an attacker.

use std::time::{SystemTime, UNIX_EPOCH};

/// A fresh access token: 64 URL-safe characters, no fixed prefix (so the 6-character prefix logged
/// in [`crate::LoggedRequest::token_prefix`] tells tokens apart).
pub(crate) fn access_token() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    (0..64)
        .map(|_| char::from(ALPHABET[fastrand::usize(..ALPHABET.len())]))
        .collect()
}

/// A random version-4 UUID in its usual text form, like Genesys entity ids and correlation ids.
pub(crate) fn uuid() -> String {
    let a = fastrand::u32(..);
    let b = fastrand::u16(..);
    let c = fastrand::u16(..) & 0x0fff | 0x4000;
    let d = fastrand::u16(..) & 0x3fff | 0x8000;
    let e = fastrand::u64(..) & 0xffff_ffff_ffff;
    format!("{a:08x}-{b:04x}-{c:04x}-{d:04x}-{e:012x}")
}

/// `t` as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC, millisecond precision), e.g. for `dateLaunched`.
pub(crate) fn iso8601(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn iso8601_formats_known_instants() {
        let table = [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (1_700_000_000_123, "2023-11-14T22:13:20.123Z"),
        ];
        for (ms, want) in table {
            assert_eq!(iso8601(UNIX_EPOCH + Duration::from_millis(ms)), want);
        }
    }

    #[test]
    fn uuid_has_the_version_4_shape() {
        let id = uuid();
        let parts: Vec<_> = id.split('-').map(str::len).collect();
        assert_eq!(parts, vec![8, 4, 4, 4, 12]);
        assert_eq!(&id[14..15], "4");
        assert!(id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
    }

    #[test]
    fn access_tokens_are_long_and_distinct() {
        let (a, b) = (access_token(), access_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}
