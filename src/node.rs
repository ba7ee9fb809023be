//! A node: a data directory recovered, the snapshot replica started beside it, and the
//! pipeline running on the recovered ledger and journal. The network front (the gateway)
//! feeds `Node::pipeline`; `walletd serve` puts the two together.

use crate::error::NodeError;
use crate::pipeline::{pipeline_start, Pipeline, PipelineOptions, ReplyRoute};
use crate::writer::SystemClock;
use walletd_core::Config;
use walletd_journal::{FileStorage, Storage};
use walletd_replay::checkpoint::hex;
use walletd_replay::data_dir::DataDir;
use walletd_replay::recovery::recover;
use walletd_replay::{replica_of, ReplayError, SigningKey, SnapshotWhen, Snapshotter, TrustReport, Verification};
use walletd_snapshot::SNAPSHOTS_KEPT_DEFAULT;

/// Tamper evidence (`walletd_replay::trust`): checkpoints are signed with `signing_key` (kept
/// outside the data directory), and start-up verifies the journal as `verification` says
/// before anything is appended to it.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    pub signing_key: Option<SigningKey>,
    pub verification: Verification,
}

impl Trust {
    /// What start-up verifies: `verification`, and a node that signs also verifies every signed
    /// checkpoint with its own key. Refused: a signing key with a different verify key, and a
    /// verify key without a signing key (either way the next start would refuse what this one
    /// writes).
    pub fn start_verification(&self) -> Result<Verification, NodeError> {
        let mut verification = self.verification;
        let Some(signing_key) = &self.signing_key else {
            if verification.signatures_required {
                return Err(NodeError::Replay(ReplayError::Key {
                    path: None,
                    reason: "a verify key without a signing key: this node would append unsigned checkpoints, \
                             which the next start with the verify key refuses; give the signing key too"
                        .to_string(),
                }));
            }
            return Ok(verification);
        };
        let own = signing_key.verifying_key();
        match verification.verify_key {
            Some(key) if key != own => Err(NodeError::Replay(ReplayError::Key {
                path: None,
                reason: format!(
                    "the signing key's public key is {}, not the verify key {}",
                    hex(&own.to_bytes()),
                    hex(&key.to_bytes())
                ),
            })),
            _ => {
                verification.verify_key = Some(own);
                Ok(verification)
            }
        }
    }

    /// Whether a node starting on a journal that ends at `op_last` must write a checkpoint
    /// first: it signs, and the journal does not end with a signed checkpoint.
    pub fn seal_first(&self, op_last: u64, trust: &TrustReport) -> bool {
        self.signing_key.is_some() && trust.op_signed_last != Some(op_last)
    }
}

#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// The config a new data directory gets (an existing one keeps its own).
    pub config: Config,
    pub segment_size_bytes: u64,
    pub pipeline: PipelineOptions,
}

/// What start-up found, for the log.
#[derive(Clone, Debug)]
pub struct Started {
    pub op: u64,
    pub accounts: u32,
    pub snapshot_op: Option<u64>,
    pub ops_replayed: u64,
    pub torn_tail: bool,
    pub snapshots_skipped: usize,
    pub recovery_notes: Vec<String>,
    pub config: Config,
    /// What start-up's signature and chain-head checks found.
    pub trust: TrustReport,
}

pub struct Node {
    pub pipeline: Pipeline,
    pub started: Started,
    /// Held for the node's life: no other process may write this directory meanwhile.
    _lock: walletd_replay::DirLock,
}

impl Node {
    /// Opens (or creates) the data directory, recovers, and starts the pipeline.
    pub fn start(data_dir: &DataDir, options: NodeOptions, route: ReplyRoute) -> Result<Node, NodeError> {
        Node::start_on(FileStorage::default(), data_dir, options, route)
    }

    /// `start` with the journal on `storage`: the real file system in `start`; a test passes
    /// one that wraps it (a sync that waits for the test, to prove replies wait for it).
    pub fn start_on<S>(
        storage: S,
        data_dir: &DataDir,
        options: NodeOptions,
        route: ReplyRoute,
    ) -> Result<Node, NodeError>
    where
        S: Storage + Send + 'static,
        S::File: Send,
    {
        let lock = data_dir.lock()?;
        data_dir.open_or_create(options.config)?;
        let verification = options.pipeline.trust.start_verification()?;
        let recovered = recover(storage.clone(), data_dir, options.segment_size_bytes, &verification)?;
        let notes = recovered.notes();
        let op = recovered.journal.op_durable();
        let mut pipeline_options = options.pipeline;
        pipeline_options.checkpoint_first = pipeline_options.trust.seal_first(op, &recovered.replay.trust);
        let started = Started {
            op,
            accounts: recovered.ledger.accounts_count(),
            snapshot_op: recovered.snapshot.as_ref().map(|(header, _)| header.op),
            ops_replayed: recovered.replay.records,
            torn_tail: recovered.journal_recovered.torn_tail.is_some(),
            snapshots_skipped: recovered.snapshots_skipped.len(),
            recovery_notes: notes,
            config: recovered.config,
            trust: recovered.replay.trust.clone(),
        };
        let replica = replica_of(&recovered.ledger);
        let op_snapshot = started.snapshot_op.unwrap_or(0);
        let kept = SNAPSHOTS_KEPT_DEFAULT;
        let snapshotter =
            Snapshotter::start(replica, op, op_snapshot, storage, data_dir.clone(), kept, SnapshotWhen::Asked)?;
        pipeline_options.durable_mark_dir = Some(data_dir.root.clone());
        let pipeline =
            pipeline_start(recovered.ledger, recovered.journal, snapshotter, SystemClock, route, pipeline_options);
        Ok(Node { pipeline, started, _lock: lock })
    }

    /// Drains the pipeline (see `Pipeline::shutdown`), then releases the directory's lock.
    pub fn shutdown(self) {
        self.pipeline.shutdown();
    }
}
