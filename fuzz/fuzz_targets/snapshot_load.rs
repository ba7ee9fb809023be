//! The snapshot loader on a fuzzed file: `snapshot_load_newest` on a directory holding it
//! (header, size, BLAKE3 trailer, then `Ledger::image_read`, then the header's state hash),
//! through a real file because the loader maps it. The control byte's repairs are in
//! walletd_fuzz::snapshot. No input may panic or hang; a snapshot that loads carries the op
//! its name says and the state hash its header says, and its ledger images and loads again.
#![no_main]

use std::cell::RefCell;
use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use walletd_core::Ledger;
use walletd_fuzz::snapshot::{image_within_budget, snapshot_image, snapshot_repair, NAME_OFF_BY_ONE};
use walletd_snapshot::{snapshot_file_name, snapshot_load_newest, SnapshotError};

thread_local! {
    /// A directory of this process's own (the script points TMPDIR at a scratch directory),
    /// and the file the previous input left in it.
    static DIR: RefCell<(PathBuf, Option<PathBuf>)> = RefCell::new({
        let dir = std::env::temp_dir().join(format!("walletd-fuzz-snapshot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the scratch directory");
        (dir, None)
    });
}

fuzz_target!(|input: &[u8]| {
    let Some((&control, file)) = input.split_first() else { return };
    if !snapshot_image(file).is_none_or(image_within_budget) {
        return;
    }
    let mut file = file.to_vec();
    snapshot_repair(control, &mut file);
    let op = file.get(16..24).map_or(0, |bytes| u64::from_le_bytes(bytes.try_into().expect("8 bytes")));
    let name_op = if control & NAME_OFF_BY_ONE != 0 { op.wrapping_add(1) } else { op };
    DIR.with_borrow_mut(|(dir, previous)| {
        if let Some(path) = previous.take() {
            std::fs::remove_file(path).expect("remove the previous input's file");
        }
        let path = dir.join(snapshot_file_name(name_op));
        std::fs::write(&path, &file).expect("write the snapshot file");
        *previous = Some(path);
        let (loaded, skipped) = snapshot_load_newest(dir).expect("only Corrupt is skipped; I/O works here");
        for error in &skipped {
            assert!(matches!(error, SnapshotError::Corrupt { .. }));
            assert!(!error.to_string().is_empty());
        }
        let Some(loaded) = loaded else {
            assert_eq!(skipped.len(), 1, "the one snapshot is loaded or skipped");
            return;
        };
        assert_eq!(loaded.header.op, name_op);
        assert_eq!(loaded.ledger.state_hash(), loaded.header.state_hash);
        loaded.ledger.verify();
        let mut image = Vec::new();
        loaded.ledger.image_write(&mut |bytes| image.extend_from_slice(bytes));
        let again = Ledger::image_read(&image).expect("a loaded ledger's image loads");
        assert_eq!(again.state_hash(), loaded.ledger.state_hash());
    });
});
