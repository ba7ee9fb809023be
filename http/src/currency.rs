//! Currencies: the gateway's configuration maps each ISO 4217 code to an engine ledger and a
//! scale (decimals of its minor unit). The ledger is the ISO numeric code, so two gateways
//! configured alike agree on every id and ledger. A currency can be added later; its ledger
//! and scale must never change once money moved in it.

use crate::amount::SCALE_MAX;
use crate::error::HttpError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Currency {
    /// ISO 4217 alphabetic code, e.g. "USD".
    pub code: String,
    /// The engine ledger.
    pub ledger: u32,
    /// Decimals of the minor unit: USD 2, JPY 0, BHD 3.
    pub scale: u8,
    /// Its settlement account (derived from the code; kept to compare without hashing).
    pub settlement: walletd_core::AccountId,
}

#[derive(Clone, Debug)]
pub struct Currencies {
    list: Vec<Currency>,
}

/// `CODE:LEDGER:SCALE` entries of the default configuration.
pub const CURRENCIES_DEFAULT: &str = "USD:840:2,EUR:978:2,GBP:826:2,JPY:392:0,BHD:048:3";

impl Currencies {
    /// Parses `USD:840:2,JPY:392:0`.
    pub fn parse(text: &str) -> Result<Currencies, HttpError> {
        let mut list = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|entry| !entry.is_empty()) {
            let parts: Vec<&str> = entry.split(':').collect();
            let bad = || HttpError::Config(format!("currency {entry:?}: write CODE:LEDGER:SCALE, e.g. USD:840:2"));
            let [code, ledger, scale] = parts[..] else { return Err(bad()) };
            let ledger: u32 = ledger.parse().map_err(|_| bad())?;
            let scale: u8 = scale.parse().map_err(|_| bad())?;
            if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) || ledger == 0 || scale > SCALE_MAX {
                return Err(bad());
            }
            if ledger == crate::ids::ANCHOR_LEDGER {
                return Err(HttpError::Config(format!("currency {code}: ledger {ledger} is reserved")));
            }
            if list.iter().any(|c: &Currency| c.code == code || c.ledger == ledger) {
                return Err(HttpError::Config(format!("currency {code}: its code or ledger is listed twice")));
            }
            list.push(Currency { code: code.into(), ledger, scale, settlement: crate::ids::settlement_id(code) });
        }
        if list.is_empty() {
            return Err(HttpError::Config("no currency configured".into()));
        }
        Ok(Currencies { list })
    }

    pub fn get(&self, code: &str) -> Option<&Currency> {
        self.list.iter().find(|currency| currency.code == code)
    }

    pub fn by_ledger(&self, ledger: u32) -> Option<&Currency> {
        self.list.iter().find(|currency| currency.ledger == ledger)
    }

    pub fn all(&self) -> &[Currency] {
        &self.list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_parses_and_bad_entries_are_refused() {
        let currencies = Currencies::parse(CURRENCIES_DEFAULT).unwrap();
        assert_eq!(currencies.get("JPY").unwrap().scale, 0);
        assert_eq!(currencies.get("BHD").unwrap().ledger, 48);
        assert_eq!(currencies.by_ledger(840).unwrap().code, "USD");
        for bad in ["usd:840:2", "USD:0:2", "USD:840", "USD:840:39", "USD:840:2,USD:978:2", ""] {
            assert!(Currencies::parse(bad).is_err(), "{bad}");
        }
    }
}
