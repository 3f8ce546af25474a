//! Calendar dates of the proleptic Gregorian calendar in UTC, the one
//! implementation behind every date syncer prints or parses (conflict copy
//! names, `log inspect` times, WHEN arguments). Pure arithmetic
//! (H. Hinnant's algorithms), exact for every `i64` day number in range.

use crate::ids::Timestamp;

/// Days since 1970-01-01 of the date `y-m-d` (`m` in 1..=12).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date `(year, month, day)` of a day number (inverse of
/// [`days_from_civil`]).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, m, d)
}

/// Days in month `m` of year `y`.
pub(crate) fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// The UTC calendar date `(year, month, day)` of a timestamp.
pub fn civil_date(t: Timestamp) -> (i64, u32, u32) {
    civil_from_days(t.secs().div_euclid(86_400))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn civil_date_matches_known_days() {
        assert_eq!(civil_date(Timestamp(0)), (1970, 1, 1));
        assert_eq!(civil_date(Timestamp::from_secs_nanos(1_795_600_000, 0)), (2026, 11, 25));
        assert_eq!(civil_date(Timestamp::from_secs_nanos(951_782_400, 0)), (2000, 2, 29));
        assert_eq!(civil_date(Timestamp::from_secs_nanos(-86_400, 0)), (1969, 12, 31));
        assert_eq!(days_in_month(2000, 2), 29);
        assert_eq!(days_in_month(1900, 2), 28);
    }

    proptest! {
        #[test]
        fn day_numbers_round_trip(z in -100_000_000i64..100_000_000) {
            let (y, m, d) = civil_from_days(z);
            prop_assert!((1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m));
            prop_assert_eq!(days_from_civil(y, m, d), z);
        }
    }
}
