//! The core's image reader, `Ledger::image_read`, on fuzzed bytes (a control byte, then the
//! image). With the control byte's bit 0 set, the image's recorded state hash is first replaced
//! by the one its records hash to, so that images whose records the fuzzer changed still load.
//! No input may panic or hang; an image that loads must image and load again to the same state
//! hash. Images whose config asks for a ledger over the budget are skipped (see walletd_fuzz).
#![no_main]

use libfuzzer_sys::fuzz_target;
use walletd_core::Ledger;
use walletd_fuzz::snapshot::{image_adopt_state_hash, image_within_budget};

fuzz_target!(|input: &[u8]| {
    let Some((&control, image)) = input.split_first() else { return };
    if !image_within_budget(image) {
        return;
    }
    let mut image = image.to_vec();
    if control & 1 != 0 {
        image_adopt_state_hash(&mut image);
    }
    let ledger = match Ledger::image_read(&image) {
        Ok(ledger) => ledger,
        Err(error) => {
            assert!(!error.to_string().is_empty());
            return;
        }
    };
    // Every invariant of a ledger that loaded (the loader refuses what would break one).
    ledger.verify();
    let mut again = Vec::new();
    ledger.image_write(&mut |bytes| again.extend_from_slice(bytes));
    let reloaded = Ledger::image_read(&again).expect("a loaded ledger's image loads");
    assert_eq!(reloaded.state_hash(), ledger.state_hash());
});
