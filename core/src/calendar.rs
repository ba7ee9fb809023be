//! UTC calendar periods of the engine's nanosecond timestamps, for the velocity limits. Pure
//! integer arithmetic (Howard Hinnant's days-from-civil inverse): no clock, no time zone data.

pub(crate) const NS_PER_DAY: u64 = 86_400 * 1_000_000_000;

/// Days since 1970-01-01 (UTC) of a timestamp.
#[inline]
pub(crate) fn day_of(timestamp_ns: u64) -> u32 {
    let day = timestamp_ns / NS_PER_DAY;
    assert!(day <= u64::from(u32::MAX));
    day as u32
}

/// Months since 1970-01 of a day number: (year − 1970) × 12 + (month − 1).
pub(crate) fn month_of_day(day: u32) -> u32 {
    let (year, month, _) = civil_from_days(i64::from(day));
    let months = (year - 1970) * 12 + i64::from(month) - 1;
    assert!(months >= 0);
    months as u32
}

/// (year, month 1..=12, day 1..=31) of a day count since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    assert!((1..=12).contains(&month));
    assert!((1..=31).contains(&day));
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(31), (1970, 2, 1));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        // 2000-02-29 (a leap day in a century divisible by 400) is day 11016.
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
        // 2026-11-22 is day 20779.
        assert_eq!(civil_from_days(20_779), (2026, 11, 22));
        assert_eq!(month_of_day(20_779), (2026 - 1970) * 12 + 10);
    }

    #[test]
    fn months_step_by_one_at_each_first_of_month() {
        let mut previous = month_of_day(0);
        for day in 1..40_000u32 {
            let month = month_of_day(day);
            let (_, _, day_of_month) = civil_from_days(i64::from(day));
            if day_of_month == 1 {
                assert_eq!(month, previous + 1, "day {day}");
            } else {
                assert_eq!(month, previous, "day {day}");
            }
            previous = month;
        }
    }
}
