//! Tamper evidence against whoever can write the data directory but holds no key: the keys,
//! and the checks every reader of a journal runs on the records it reads.
//!
//! The journal's hash chain is unkeyed (anyone who can write a segment can recompute it), so
//! on its own it only catches damage. Two anchors the writer of the files cannot forge sit on
//! top of it: checkpoints **signed** with an Ed25519 key kept outside the data directory
//! (`checkpoint.rs`), and a **chain head** `(op, checksum)` held outside (the exporters
//! publish one per event). `JournalChecks` verifies both on every record a replay, a drill or
//! an audit reads, in op order, alongside the chain the journal reader verifies.
//!
//! What "signatures required" means (`--verify-key`): every signed checkpoint read verifies
//! under the key; no unsigned checkpoint follows the last signed one; and the journal ends at
//! most `checkpoint_ops` ops after the last signed checkpoint, where `checkpoint_ops` is the
//! interval that checkpoint was signed with (the signer's promise that its next checkpoint
//! follows within that many ops). A journal that has ops but no signed checkpoint is refused.
//! Without a key, signed checkpoints are counted but cannot be verified; their state hashes are
//! still checked like any checkpoint's.
//!
//! Key files: the private key is text, `walletd-signing-key ed25519 v1` then the 32-byte
//! secret seed in hex, in a file of mode 0600 (a key readable by group or others is refused);
//! the public key is 64 hex digits, on the command line or alone in a file (`FILE.pub`).

use crate::checkpoint::{hex, CheckpointBody, RecordAt, CHECKPOINT_SIGNED};
use crate::error::ReplayError;
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::Serialize;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use walletd_journal::{Record, RecordKind};
use zeroize::Zeroize;

const SIGNING_KEY_HEADER: &str = "walletd-signing-key ed25519 v1";

/// An externally held chain head: the journal record at `op` must have this checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainHead {
    pub op: u64,
    pub checksum: u128,
}

impl std::str::FromStr for ChainHead {
    type Err = String;

    /// `OP:CHECKSUM`, the checksum as 32 hex digits (as `replay` and the exporters print it).
    fn from_str(text: &str) -> Result<ChainHead, String> {
        let usage = || format!("{text:?} is not OP:CHECKSUM (an op, a colon, 32 hex digits)");
        let (op, checksum) = text.split_once(':').ok_or_else(usage)?;
        let op: u64 = op.trim().parse().map_err(|_| usage())?;
        let checksum = checksum.trim();
        if op == 0 || checksum.len() != 32 {
            return Err(usage());
        }
        let checksum = u128::from_str_radix(checksum, 16).map_err(|_| usage())?;
        Ok(ChainHead { op, checksum })
    }
}

/// What a reader of the journal checks beyond the chain.
#[derive(Clone, Copy, Debug, Default)]
pub struct Verification {
    /// Verify every signed checkpoint with this key.
    pub verify_key: Option<VerifyingKey>,
    /// Refuse a journal whose end is not covered by a signed checkpoint (see the module doc).
    /// `--verify-key` sets it; a node that only signs (`--signing-key`) verifies what is signed
    /// with its own key but does not require it, so that it can start signing an old journal.
    pub signatures_required: bool,
    /// The journal must still hold this record.
    pub expect_head: Option<ChainHead>,
}

/// What the checks found, for reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TrustReport {
    /// Signed checkpoints whose signature verified under the verify key.
    pub checkpoints_signed_verified: u64,
    /// Signed checkpoints read without a key to verify them.
    pub checkpoints_signed_unverified: u64,
    /// The last signed checkpoint read (verified, when there was a key).
    pub op_signed_last: Option<u64>,
    /// Ops after it up to the end read: what no signature covers.
    pub ops_unsigned_tail: u64,
    /// The verify key, in hex.
    pub verify_key: Option<String>,
    /// The chain head matched, as `OP:CHECKSUM`.
    pub head_matched: Option<String>,
    /// The last record read, as `OP:CHECKSUM`: the head to hold outside for `--expect-head`.
    pub journal_head: Option<String>,
}

/// The checks, fed every record in op order (`record_check`), then the journal's end
/// (`end_check`).
#[derive(Clone, Debug)]
pub struct JournalChecks {
    verification: Verification,
    config_digest: u128,
    report: TrustReport,
    /// The interval the last signed checkpoint was signed with.
    checkpoint_ops_signed: u64,
    /// The first unsigned checkpoint after the last signed one.
    op_unsigned_after_signed: Option<u64>,
    op_read_last: u64,
    checksum_read_last: u128,
}

impl JournalChecks {
    /// `config_digest` is `checkpoint::config_digest` of the config the journal replays with
    /// (signatures are bound to it).
    pub fn new(verification: Verification, config_digest: u128) -> JournalChecks {
        let report = TrustReport {
            verify_key: verification.verify_key.map(|key| hex(&key.to_bytes())),
            ..TrustReport::default()
        };
        JournalChecks {
            verification,
            config_digest,
            report,
            checkpoint_ops_signed: 0,
            op_unsigned_after_signed: None,
            op_read_last: 0,
            checksum_read_last: 0,
        }
    }

    /// Checks one verified record (the journal reader has checked its checksum and chain).
    pub fn record_check(&mut self, record: &Record<'_>) -> Result<(), ReplayError> {
        assert!(record.op >= 1, "journal ops start at 1");
        assert!(record.op > self.op_read_last, "records come in op order");
        self.op_read_last = record.op;
        self.checksum_read_last = record.checksum;
        if let Some(head) = self.verification.expect_head.filter(|head| head.op == record.op) {
            if record.checksum != head.checksum {
                return Err(ReplayError::ChainHead {
                    op: head.op,
                    reason: format!(
                        "the journal record at op {} has checksum {:032x}, the external chain head says {:032x}: the \
                         journal was rewritten at or before op {}",
                        head.op, record.checksum, head.checksum, head.op
                    ),
                });
            }
            self.report.head_matched = Some(format!("{}:{:032x}", head.op, head.checksum));
        }
        if record.kind == RecordKind::Checkpoint {
            self.checkpoint_check(record)?;
        }
        Ok(())
    }

    fn checkpoint_check(&mut self, record: &Record<'_>) -> Result<(), ReplayError> {
        let body =
            CheckpointBody::decode(record.body).map_err(|reason| ReplayError::BadRecord { op: record.op, reason })?;
        let Some(seal) = body.seal else {
            if self.report.op_signed_last.is_some() && self.op_unsigned_after_signed.is_none() {
                self.op_unsigned_after_signed = Some(record.op);
            }
            return Ok(());
        };
        assert!(body.checkpoint.flags & CHECKPOINT_SIGNED != 0);
        match &self.verification.verify_key {
            Some(key) => {
                let at =
                    RecordAt { op: record.op, timestamp_ns: record.timestamp_ns, checksum_prev: record.checksum_prev };
                body.seal_verify(key, &at, self.config_digest)
                    .map_err(|reason| ReplayError::CheckpointSignature { op: record.op, reason })?;
                self.report.checkpoints_signed_verified += 1;
            }
            None => self.report.checkpoints_signed_unverified += 1,
        }
        self.report.op_signed_last = Some(record.op);
        self.checkpoint_ops_signed = seal.checkpoint_ops;
        self.op_unsigned_after_signed = None;
        Ok(())
    }

    /// The journal read ends at `op_end`: the head must have been reached, and, when
    /// signatures are required, the end must be covered.
    pub fn end_check(mut self, op_end: u64) -> Result<TrustReport, ReplayError> {
        assert!(op_end >= self.op_read_last, "the end is not before the last record read");
        if let Some(head) = self.verification.expect_head {
            if self.report.head_matched.is_none() {
                let reason = if op_end < head.op {
                    format!(
                        "the journal no longer reaches op {}: it ends at op {op_end}; acknowledged ops were removed",
                        head.op
                    )
                } else {
                    format!("the record at op {} was not read", head.op)
                };
                return Err(ReplayError::ChainHead { op: head.op, reason });
            }
        }
        if self.op_read_last > 0 {
            self.report.journal_head = Some(format!("{}:{:032x}", self.op_read_last, self.checksum_read_last));
        }
        let op_signed_last = self.report.op_signed_last.unwrap_or(0);
        self.report.ops_unsigned_tail = op_end - op_signed_last.min(op_end);
        if self.verification.signatures_required {
            self.coverage_check(op_end)?;
        }
        Ok(self.report)
    }

    fn coverage_check(&self, op_end: u64) -> Result<(), ReplayError> {
        assert!(self.verification.verify_key.is_some(), "signatures are required only with a key");
        if let Some(op) = self.op_unsigned_after_signed {
            return Err(ReplayError::SignaturesMissing {
                op,
                reason: format!(
                    "the checkpoint at op {op} is unsigned, after the signed checkpoint at op {}: it was written \
                     without --signing-key, or the journal after op {} was rewritten",
                    self.report.op_signed_last.expect("an unsigned checkpoint after a signed one"),
                    self.report.op_signed_last.expect("a signed one")
                ),
            });
        }
        let Some(op_signed_last) = self.report.op_signed_last else {
            if op_end == 0 {
                return Ok(());
            }
            return Err(ReplayError::SignaturesMissing {
                op: op_end,
                reason: format!(
                    "no signed checkpoint among the ops read (the journal ends at op {op_end}): this journal is not \
                     signed, or its signed checkpoints were rewritten; a node started with --signing-key (and \
                     without --verify-key, once) signs it from there on"
                ),
            });
        };
        assert!(op_end >= op_signed_last, "a checkpoint read lies within the journal read");
        let uncovered = op_end - op_signed_last;
        if uncovered > self.checkpoint_ops_signed {
            return Err(ReplayError::SignaturesMissing {
                op: op_signed_last,
                reason: format!(
                    "{uncovered} ops (to op {op_end}) follow the last signed checkpoint at op {op_signed_last}, more \
                     than the {} it was signed to be followed within: its successors were removed or rewritten",
                    self.checkpoint_ops_signed
                ),
            });
        }
        Ok(())
    }
}

/// Reads a verify key: 64 hex digits, or a file holding them (e.g. `keygen`'s `FILE.pub`).
pub fn verify_key_parse(text: &str) -> Result<VerifyingKey, ReplayError> {
    let (hex_text, path) = if text.len() == 64 && text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        (text.to_string(), None)
    } else {
        let path = PathBuf::from(text);
        let contents = fs::read_to_string(&path).map_err(|source| ReplayError::Key {
            path: Some(path.clone()),
            reason: format!("not 64 hex digits, and not a readable file: {source}"),
        })?;
        (contents.trim().to_string(), Some(path))
    };
    let key_error = |reason: &str| ReplayError::Key { path: path.clone(), reason: reason.to_string() };
    let bytes: [u8; 32] = hex_decode(&hex_text).ok_or_else(|| key_error("a public key is 64 hex digits"))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| key_error("not a valid Ed25519 public key"))
}

/// Reads the private key at `path`. Refused: a file readable by group or others, and a file
/// inside `data_dir` or inside any data directory (one with a `ledger.conf`) (whoever writes the directory would hold it).
pub fn signing_key_read(path: &Path, data_dir: &Path) -> Result<SigningKey, ReplayError> {
    let key_error = |reason: String| ReplayError::Key { path: Some(path.to_path_buf()), reason };
    let metadata = fs::metadata(path).map_err(|source| key_error(format!("cannot read: {source}")))?;
    let mode = metadata.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(key_error(format!(
            "mode {:o} lets group or others read the signing key: `chmod 600` it (and consider it exposed)",
            mode & 0o777
        )));
    }
    if let Some(dir) = key_inside_data_dir(path, Some(data_dir)) {
        return Err(key_error(format!(
            "the signing key is inside the data directory {}: whoever can write the journal could sign with \
             it; keep it elsewhere",
            dir.display()
        )));
    }
    let mut contents = fs::read_to_string(path).map_err(|source| key_error(format!("cannot read: {source}")))?;
    let parsed = signing_key_parse(&contents);
    contents.zeroize();
    parsed.ok_or_else(|| key_error(format!("not a walletd signing key (`{SIGNING_KEY_HEADER}` then 64 hex digits)")))
}

fn signing_key_parse(contents: &str) -> Option<SigningKey> {
    let mut lines = contents.lines();
    if lines.next()?.trim() != SIGNING_KEY_HEADER {
        return None;
    }
    let mut seed: [u8; 32] = hex_decode(lines.next()?.trim())?;
    let key = SigningKey::from_bytes(&seed);
    seed.zeroize();
    Some(key)
}

/// What `keygen` wrote.
#[derive(Clone, Debug)]
pub struct KeyGenerated {
    pub private_path: PathBuf,
    pub public_path: PathBuf,
    pub public_key: VerifyingKey,
}

/// Writes a new key pair: `out` (the private key, mode 0600, never overwritten) and
/// `out.pub` (the public key in hex). Refuses to write inside a data directory.
pub fn keygen(out: &Path) -> Result<KeyGenerated, ReplayError> {
    let key_error = |path: &Path, reason: String| ReplayError::Key { path: Some(path.to_path_buf()), reason };
    if let Some(dir) = key_inside_data_dir(out, None) {
        return Err(key_error(
            out,
            format!(
                "{} is a walletd data directory: a signing key kept there signs for whoever can write the journal",
                dir.display()
            ),
        ));
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|error| key_error(out, format!("no randomness from the OS: {error}")))?;
    let key = SigningKey::from_bytes(&seed);
    let mut text = format!("{SIGNING_KEY_HEADER}\n{}\n", hex(&seed));
    seed.zeroize();
    let public_path = PathBuf::from(format!("{}.pub", out.display()));
    let written = key_file_write(out, text.as_bytes(), 0o600);
    text.zeroize();
    written.map_err(|source| key_error(out, format!("cannot create (it must not exist yet): {source}")))?;
    let public_key = key.verifying_key();
    key_file_write(&public_path, format!("{}\n", hex(&public_key.to_bytes())).as_bytes(), 0o644)
        .map_err(|source| key_error(&public_path, format!("cannot create (it must not exist yet): {source}")))?;
    Ok(KeyGenerated { private_path: out.to_path_buf(), public_path, public_key })
}

fn key_file_write(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    // The mode given at creation is masked by the umask; set it exactly.
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// The data directory `path` would lie in: `data_dir` itself if given and `path` is under it,
/// or the nearest ancestor that holds a `ledger.conf` (every data directory has one).
fn key_inside_data_dir(path: &Path, data_dir: Option<&Path>) -> Option<PathBuf> {
    let absolute = |p: &Path| -> PathBuf {
        let joined =
            if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir().unwrap_or_default().join(p) };
        // Resolve what exists (symlinks, `..`); a path that does not exist yet keeps its parent's resolution.
        match (joined.canonicalize(), joined.parent().and_then(|parent| parent.canonicalize().ok())) {
            (Ok(resolved), _) => resolved,
            (Err(_), Some(parent)) => parent.join(joined.file_name().unwrap_or_default()),
            (Err(_), None) => joined,
        }
    };
    let path = absolute(path);
    if let Some(dir) = data_dir.map(absolute) {
        if path.starts_with(&dir) {
            return Some(dir);
        }
    }
    path.ancestors().skip(1).find(|ancestor| ancestor.join("ledger.conf").is_file()).map(Path::to_path_buf)
}

fn hex_decode<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.is_ascii() {
        return None;
    }
    let mut bytes = [0u8; N];
    for (index, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * index..2 * index + 2], 16).ok()?;
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{Checkpoint, CheckpointSigner};
    use walletd_core::Config;

    /// A journal of `ops` ops as the checks see it: a checkpoint at each op of `checkpoints`
    /// (signed when the flag says), commands elsewhere; record `op` has checksum `op`.
    fn records_check(checks: &mut JournalChecks, ops: u64, checkpoints: &[(u64, bool)]) -> Result<(), ReplayError> {
        let signer = CheckpointSigner::new(SigningKey::from_bytes(&[3; 32]), 5, &Config::small());
        let state = Checkpoint { state_hash: 1, timestamp_last: 2, flags: 0, accounts_count: 3, transfers_created: 4 };
        for op in 1..=ops {
            let at = RecordAt { op, timestamp_ns: op, checksum_prev: u128::from(op - 1) };
            let (kind, body) = match checkpoints.iter().find(|(at_op, _)| *at_op == op) {
                Some((_, true)) => (RecordKind::Checkpoint, signer.sign(&state, &at).to_vec()),
                Some((_, false)) => (RecordKind::Checkpoint, state.encode().to_vec()),
                None => (RecordKind::CommandBatch, vec![0; 16]),
            };
            let record = Record {
                op,
                timestamp_ns: at.timestamp_ns,
                kind,
                body: &body,
                checksum_prev: at.checksum_prev,
                checksum: u128::from(op),
            };
            checks.record_check(&record)?;
        }
        Ok(())
    }

    fn required() -> JournalChecks {
        let key = SigningKey::from_bytes(&[3; 32]).verifying_key();
        let verification = Verification { verify_key: Some(key), signatures_required: true, expect_head: None };
        JournalChecks::new(verification, crate::checkpoint::config_digest(&Config::small()))
    }

    fn run(mut checks: JournalChecks, ops: u64, checkpoints: &[(u64, bool)]) -> Result<TrustReport, ReplayError> {
        records_check(&mut checks, ops, checkpoints)?;
        checks.end_check(ops)
    }

    #[test]
    fn required_signatures_cover_the_end_within_the_signed_interval() {
        // Signed at 1 and 7 (interval 5): the end may be at most 5 ops after op 7.
        let report = run(required(), 12, &[(1, true), (7, true)]).expect("covered");
        assert_eq!((report.checkpoints_signed_verified, report.op_signed_last), (2, Some(7)));
        assert_eq!(report.ops_unsigned_tail, 5);
        let refused = run(required(), 13, &[(1, true), (7, true)]).unwrap_err();
        assert!(matches!(refused, ReplayError::SignaturesMissing { op: 7, .. }), "{refused}");
        // An unsigned checkpoint before a signed one is covered by it; after the last, refused.
        run(required(), 10, &[(2, false), (4, true), (6, false), (8, true)]).expect("covered");
        let refused = run(required(), 10, &[(4, true), (6, false), (8, false)]).unwrap_err();
        assert!(matches!(refused, ReplayError::SignaturesMissing { op: 6, .. }), "{refused}");
        // A journal with ops and no signed checkpoint is refused; an empty one is not.
        let refused = run(required(), 3, &[(2, false)]).unwrap_err();
        assert!(matches!(refused, ReplayError::SignaturesMissing { .. }), "{refused}");
        run(required(), 0, &[]).expect("nothing to cover");
    }

    #[test]
    fn without_a_requirement_only_what_is_signed_is_checked() {
        let key = SigningKey::from_bytes(&[3; 32]).verifying_key();
        let digest = crate::checkpoint::config_digest(&Config::small());
        let verification = Verification { verify_key: Some(key), signatures_required: false, expect_head: None };
        let report = run(JournalChecks::new(verification, digest), 30, &[(2, true), (4, false)]).expect("not required");
        assert_eq!(report.op_signed_last, Some(2));
        let unverified = run(JournalChecks::new(Verification::default(), 0), 5, &[(2, true)]).expect("no key");
        assert_eq!((unverified.checkpoints_signed_unverified, unverified.checkpoints_signed_verified), (1, 0));
        // A signature that does not verify is refused whether or not signatures are required.
        let other = SigningKey::from_bytes(&[4; 32]).verifying_key();
        let verification = Verification { verify_key: Some(other), ..verification };
        let refused = run(JournalChecks::new(verification, digest), 5, &[(2, true)]).unwrap_err();
        assert!(matches!(refused, ReplayError::CheckpointSignature { op: 2, .. }), "{refused}");
    }

    #[test]
    fn an_expected_head_must_match_and_be_reached() {
        let checks = |op, checksum| {
            let verification =
                Verification { expect_head: Some(ChainHead { op, checksum }), ..Verification::default() };
            JournalChecks::new(verification, 0)
        };
        let report = run(checks(4, 4), 6, &[]).expect("matches");
        assert_eq!(report.head_matched.as_deref(), Some("4:00000000000000000000000000000004"));
        assert_eq!(report.journal_head.as_deref(), Some("6:00000000000000000000000000000006"));
        assert!(matches!(run(checks(4, 5), 6, &[]).unwrap_err(), ReplayError::ChainHead { op: 4, .. }));
        let short = run(checks(9, 9), 6, &[]).unwrap_err();
        assert!(short.to_string().contains("no longer reaches op 9"), "{short}");
    }

    #[test]
    fn chain_heads_parse() {
        let head: ChainHead = "12:000000000000000000000000000000ff".parse().expect("parses");
        assert_eq!(head, ChainHead { op: 12, checksum: 0xff });
        for bad in ["12", "x:00", "0:000000000000000000000000000000ff", "12:ff", "12:zz000000000000000000000000000000"]
        {
            assert!(bad.parse::<ChainHead>().is_err(), "{bad}");
        }
    }

    #[test]
    fn keygen_writes_a_private_key_only_its_owner_reads_and_refuses_data_directories() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("node.key");
        let generated = keygen(&out).expect("keygen");
        assert_eq!(fs::metadata(&out).expect("key").permissions().mode() & 0o777, 0o600);
        let elsewhere = dir.path().join("data");
        let key = signing_key_read(&out, &elsewhere).expect("reads back");
        assert_eq!(key.verifying_key(), generated.public_key);
        let public = generated.public_path.to_str().expect("utf-8");
        assert_eq!(verify_key_parse(public).expect("the .pub file"), generated.public_key);
        let public_hex = hex(&generated.public_key.to_bytes());
        assert_eq!(verify_key_parse(&public_hex).expect("hex"), generated.public_key);
        assert!(keygen(&out).is_err(), "an existing key is never overwritten");

        // Inside the data directory it is given, or any directory that looks like one.
        assert!(signing_key_read(&out, dir.path()).unwrap_err().to_string().contains("inside the data directory"));
        fs::write(dir.path().join("ledger.conf"), b"").expect("a data directory's marker");
        assert!(keygen(&dir.path().join("other.key")).unwrap_err().to_string().contains("data directory"));

        fs::set_permissions(&out, fs::Permissions::from_mode(0o640)).expect("chmod");
        assert!(signing_key_read(&out, &elsewhere).unwrap_err().to_string().contains("chmod 600"));
        assert!(verify_key_parse("abcd").is_err());
    }
}
