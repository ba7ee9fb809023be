//! Amounts as decimal strings, converted exactly to and from the engine's minor units.
//!
//! JSON numbers are floats in most clients, so money never travels as one: an amount is a
//! string of ASCII digits with at most the currency's scale of decimals after one point
//! (`"12.34"` for USD, `"1200"` for JPY). Anything else is refused with its own code rather
//! than guessed at: a sign, an exponent, whitespace, a missing digit on either side of the
//! point, more decimals than the scale (even zeros: `"1.500"` is not USD), or a value that does
//! not fit the engine's u128. The parser works digit by digit with checked arithmetic, so it is
//! exact and cannot overflow or panic on any input; `amount_format` is its inverse.

use core::fmt;

/// The longest amount string accepted: u128::MAX has 39 digits; a point and slack for
/// leading zeros. Longer strings are refused before any arithmetic.
pub const AMOUNT_LENGTH_MAX: usize = 64;

/// The largest scale a currency may have: 10^38 still fits in a u128.
pub const SCALE_MAX: u8 = 38;

/// Why an amount string was refused. Each has a stable code (`code()`), part of the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AmountError {
    /// The string is empty.
    Empty,
    /// Longer than `AMOUNT_LENGTH_MAX`.
    TooLong,
    /// It starts with `+` or `-`.
    Sign,
    /// It has an `e` or `E` (scientific notation).
    Exponent,
    /// It has a space, tab or newline anywhere.
    Whitespace,
    /// Any other character that is not a digit or a single point, or a point without digits on
    /// both sides (`".5"`, `"5."`), or two points.
    Malformed,
    /// More digits after the point than the currency's scale.
    TooManyDecimals { scale: u8 },
    /// The value in minor units does not fit in 128 bits.
    Overflow,
}

impl AmountError {
    /// The stable error code of the API's error body.
    pub fn code(self) -> &'static str {
        match self {
            AmountError::Empty => "amount_empty",
            AmountError::TooLong => "amount_too_long",
            AmountError::Sign => "amount_signed",
            AmountError::Exponent => "amount_exponent",
            AmountError::Whitespace => "amount_whitespace",
            AmountError::Malformed => "amount_malformed",
            AmountError::TooManyDecimals { .. } => "amount_too_many_decimals",
            AmountError::Overflow => "amount_overflow",
        }
    }

    /// Every code, for the docs test.
    pub const CODES: &'static [&'static str] = &[
        "amount_empty",
        "amount_too_long",
        "amount_signed",
        "amount_exponent",
        "amount_whitespace",
        "amount_malformed",
        "amount_too_many_decimals",
        "amount_overflow",
    ];
}

impl fmt::Display for AmountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AmountError::Empty => f.write_str("the amount is empty: send a decimal string such as \"12.34\""),
            AmountError::TooLong => write!(f, "the amount is longer than {AMOUNT_LENGTH_MAX} characters"),
            AmountError::Sign => {
                f.write_str("the amount has a sign: amounts are unsigned, the direction is in the request")
            }
            AmountError::Exponent => {
                f.write_str("the amount uses an exponent: write every digit (\"1200\", not \"1.2e3\")")
            }
            AmountError::Whitespace => f.write_str("the amount contains whitespace"),
            AmountError::Malformed => {
                f.write_str("the amount is not a decimal: digits, optionally one point with digits on both sides")
            }
            AmountError::TooManyDecimals { scale } => {
                write!(f, "the amount has more decimals than the currency's {scale}")
            }
            AmountError::Overflow => f.write_str("the amount is too large for the ledger"),
        }
    }
}

impl std::error::Error for AmountError {}

/// Parses a decimal string into minor units of a currency with `scale` decimals.
pub fn amount_parse(text: &str, scale: u8) -> Result<u128, AmountError> {
    assert!(scale <= SCALE_MAX, "a currency's scale is at most {SCALE_MAX}");
    let bytes = text.as_bytes();
    amount_parse_check(bytes)?;
    let point = bytes.iter().position(|&byte| byte == b'.');
    let (integer, fraction) = match point {
        Some(index) => (&bytes[..index], &bytes[index + 1..]),
        None => (bytes, &bytes[..0]),
    };
    if integer.is_empty() || (point.is_some() && fraction.is_empty()) {
        return Err(AmountError::Malformed);
    }
    if fraction.len() > usize::from(scale) {
        return Err(AmountError::TooManyDecimals { scale });
    }
    let mut value: u128 = 0;
    for &digit in integer.iter().chain(fraction) {
        assert!(digit.is_ascii_digit(), "checked above");
        value =
            value.checked_mul(10).and_then(|v| v.checked_add(u128::from(digit - b'0'))).ok_or(AmountError::Overflow)?;
    }
    for _ in fraction.len()..usize::from(scale) {
        value = value.checked_mul(10).ok_or(AmountError::Overflow)?;
    }
    Ok(value)
}

/// The character checks, in the order their codes are most useful to a client.
fn amount_parse_check(bytes: &[u8]) -> Result<(), AmountError> {
    if bytes.is_empty() {
        return Err(AmountError::Empty);
    }
    if bytes.len() > AMOUNT_LENGTH_MAX {
        return Err(AmountError::TooLong);
    }
    if bytes.iter().any(|byte| byte.is_ascii_whitespace()) {
        return Err(AmountError::Whitespace);
    }
    if bytes[0] == b'+' || bytes[0] == b'-' {
        return Err(AmountError::Sign);
    }
    if bytes.iter().any(|&byte| byte == b'e' || byte == b'E') {
        return Err(AmountError::Exponent);
    }
    let points = bytes.iter().filter(|&&byte| byte == b'.').count();
    if points > 1 || bytes.iter().any(|&byte| byte != b'.' && !byte.is_ascii_digit()) {
        return Err(AmountError::Malformed);
    }
    Ok(())
}

/// Minor units as a decimal string with exactly `scale` decimals (`1234`, 2 → `"12.34"`).
pub fn amount_format(minor: u128, scale: u8) -> String {
    assert!(scale <= SCALE_MAX, "a currency's scale is at most {SCALE_MAX}");
    let digits = minor.to_string();
    let scale = usize::from(scale);
    if scale == 0 {
        return digits;
    }
    let padded =
        if digits.len() <= scale { format!("{}{digits}", "0".repeat(scale + 1 - digits.len())) } else { digits };
    let split = padded.len() - scale;
    let formatted = format!("{}.{}", &padded[..split], &padded[split..]);
    assert!(formatted.len() == padded.len() + 1);
    formatted
}

/// A signed balance (credits − debits) of two u128 sides, formatted: a leading `-` when the
/// debits are larger. Exact for every pair (no i128 overflow).
pub fn balance_format(credits: u128, debits: u128, scale: u8) -> String {
    if credits >= debits {
        amount_format(credits - debits, scale)
    } else {
        format!("-{}", amount_format(debits - credits, scale))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_documented_cases() {
        let cases: &[(&str, u8, Result<u128, AmountError>)] = &[
            ("12.34", 2, Ok(1234)),
            ("12.3", 2, Ok(1230)),
            ("12", 2, Ok(1200)),
            ("0.01", 2, Ok(1)),
            ("0", 2, Ok(0)),
            ("007.50", 2, Ok(750)),
            ("1200", 0, Ok(1200)),
            ("1.5", 0, Err(AmountError::TooManyDecimals { scale: 0 })),
            ("1.500", 2, Err(AmountError::TooManyDecimals { scale: 2 })),
            ("", 2, Err(AmountError::Empty)),
            ("-1", 2, Err(AmountError::Sign)),
            ("+1", 2, Err(AmountError::Sign)),
            ("1e3", 2, Err(AmountError::Exponent)),
            ("1E3", 2, Err(AmountError::Exponent)),
            (" 1", 2, Err(AmountError::Whitespace)),
            ("1 ", 2, Err(AmountError::Whitespace)),
            ("1\n", 2, Err(AmountError::Whitespace)),
            (".5", 2, Err(AmountError::Malformed)),
            ("5.", 2, Err(AmountError::Malformed)),
            ("1.2.3", 2, Err(AmountError::Malformed)),
            ("1,5", 2, Err(AmountError::Malformed)),
            ("0x10", 2, Err(AmountError::Malformed)),
            ("١٢", 2, Err(AmountError::Malformed)),
            ("NaN", 2, Err(AmountError::Malformed)),
            ("340282366920938463463374607431768211455", 0, Ok(u128::MAX)),
            ("340282366920938463463374607431768211456", 0, Err(AmountError::Overflow)),
            ("3402823669209384634633746074317682114.55", 2, Ok(u128::MAX)),
            ("3402823669209384634633746074317682114.56", 2, Err(AmountError::Overflow)),
            ("3402823669209384634633746074317682115", 2, Err(AmountError::Overflow)),
        ];
        for (text, scale, expected) in cases {
            assert_eq!(amount_parse(text, *scale), *expected, "{text:?} at scale {scale}");
        }
        assert_eq!(amount_parse(&"1".repeat(65), 0), Err(AmountError::TooLong));
    }

    #[test]
    fn formats_with_exactly_the_scale() {
        assert_eq!(amount_format(1234, 2), "12.34");
        assert_eq!(amount_format(5, 2), "0.05");
        assert_eq!(amount_format(0, 2), "0.00");
        assert_eq!(amount_format(1200, 0), "1200");
        assert_eq!(amount_format(1, 3), "0.001");
        assert_eq!(balance_format(100, 250, 2), "-1.50");
        assert_eq!(balance_format(0, u128::MAX, 0), format!("-{}", u128::MAX));
    }

    /// The value a decimal string means, computed another way: as a string of digits padded
    /// to the scale, compared with the u128's own decimal form.
    fn reference(integer: &str, fraction: &str, scale: u8) -> Option<u128> {
        let padded = format!("{integer}{fraction}{}", "0".repeat(usize::from(scale) - fraction.len()));
        padded.parse::<u128>().ok()
    }

    proptest! {
        #[test]
        fn format_then_parse_is_identity(minor in any::<u128>(), scale in 0u8..=SCALE_MAX) {
            prop_assert_eq!(amount_parse(&amount_format(minor, scale), scale), Ok(minor));
        }

        #[test]
        fn parse_agrees_with_the_reference(
            integer in "[0-9]{1,40}",
            fraction in "[0-9]{0,6}",
            scale in 0u8..=6,
        ) {
            let text = if fraction.is_empty() { integer.clone() } else { format!("{integer}.{fraction}") };
            let parsed = amount_parse(&text, scale);
            if fraction.len() > usize::from(scale) {
                prop_assert_eq!(parsed, Err(AmountError::TooManyDecimals { scale }));
            } else {
                match reference(&integer, &fraction, scale) {
                    Some(value) => prop_assert_eq!(parsed, Ok(value)),
                    None => prop_assert_eq!(parsed, Err(AmountError::Overflow)),
                }
            }
        }

        #[test]
        fn any_string_parses_or_is_refused_without_panicking(text in "\\PC{0,70}", scale in 0u8..=SCALE_MAX) {
            if let Ok(minor) = amount_parse(&text, scale) {
                // Whatever was accepted is digits and at most one point, and means `minor`.
                prop_assert!(text.bytes().all(|b| b.is_ascii_digit() || b == b'.'));
                let canonical = amount_format(minor, scale);
                prop_assert_eq!(amount_parse(&canonical, scale), Ok(minor));
            }
        }

        #[test]
        fn junk_around_a_valid_amount_is_refused(minor in any::<u64>(), junk in "[ +\\-eE,_a-z]") {
            let valid = amount_format(u128::from(minor), 2);
            let before = format!("{junk}{valid}");
            let after = format!("{valid}{junk}");
            prop_assert!(amount_parse(&before, 2).is_err());
            prop_assert!(amount_parse(&after, 2).is_err());
        }
    }
}
