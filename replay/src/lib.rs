//! walletd-replay: the journal applied to a ledger, exactly as the live node applied it.
//!
//! The journal holds commands; what they did is recomputed here by a replica ledger, which is
//! the proof that it is right. Four users share one `Replayer::record_apply`, so what a drill
//! proves is what a restart does and what the platform is told:
//!
//! - **recovery** (`recover`): the newest valid snapshot plus the journal's tail, for a node
//!   that is about to write;
//! - **the drill** (`replay_onto`): the same, read-only, up to any op, every checkpoint's
//!   state hash verified;
//! - **the snapshot replica** (`Snapshotter`), which follows the durable journal and writes
//!   snapshots, on the single node and on every cluster member;
//! - **the follower** (`Follower`), the seam every platform part consumes: each durable op with
//!   its command and its outcome (per-event results and the after-images of the accounts each
//!   event touched), read-only on a live data directory, resumable from any op.
//!
//! The crate knows the data directory's layout (`DataDir`) and the checkpoint record, and
//! depends on the core, the journal and the snapshots; nothing of the network or the pipeline.

pub mod checkpoint;
pub mod data_dir;
pub mod drill;
pub mod durable;
pub mod error;
pub mod follow;
pub mod recovery;
pub mod replay;
pub mod snapshotter;
pub mod trust;

pub use checkpoint::{
    checkpoint_encode, Checkpoint, CheckpointSigner, RecordAt, CHECKPOINT_SIGNED, CHECKPOINT_SIGNED_SIZE_BYTES,
    CHECKPOINT_SIZE_BYTES, CHECKPOINT_SNAPSHOT,
};
pub use data_dir::{DataDir, DirLock};
pub use drill::{audit, drill, truncate, AuditReport, DrillOptions, DrillReport, TruncateReport};
pub use durable::{durable_read, DurableMark, Position};
pub use ed25519_dalek::{SigningKey, VerifyingKey};
pub use error::ReplayError;
pub use follow::{FollowOptions, Follower, Op, Outcome};
pub use recovery::{recover, replay_onto, Recovered, ReplayTarget};
pub use replay::{command_apply, Applied, ReadPlan, ReplayStats, Replayer};
pub use snapshotter::{replica_of, SnapshotTaken, SnapshotWhen, Snapshotter};
pub use trust::{keygen, signing_key_read, verify_key_parse, ChainHead, JournalChecks, TrustReport, Verification};
