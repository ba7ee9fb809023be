//! The walletd binary: one executable for the node and its tools. This file is the command
//! line only; every command's work is in the library (`walletd::…`).

use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use walletd::generate::{generate, GenerateOptions};
use walletd::NodeError;
use walletd_benches::workload::Distribution;
use walletd_replay::data_dir::DataDir;
use walletd_replay::ReplayError;

#[global_allocator]
static ALLOCATOR: walletd::memory::HugePages = walletd::memory::HugePages;

/// walletd: a deterministic double-entry wallet ledger engine.
#[derive(Parser)]
#[command(name = "walletd", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

// Parsed once at start-up and matched once: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Commands {
    /// Run the node: recover from the data directory, then serve the binary protocol.
    Serve(ServeArgs),
    /// Run a seeded workload through the ledger, journal (real fsync) and snapshots.
    Generate(GenerateArgs),
    /// Rebuild the state from snapshot and/or journal, verifying the hash chain and every
    /// checkpoint; print what it rebuilt. Exits non-zero on any mismatch. Read-only.
    Replay(ReplayArgs),
    /// Journal maintenance.
    #[command(subcommand)]
    Journal(JournalCommands),
    /// Write a new Ed25519 key pair for signing checkpoints: FILE (the private key, mode 0600,
    /// never inside a data directory) and FILE.pub; prints the public key in hex.
    Keygen(KeygenArgs),
    /// Load generator: drive a server (or a temporary one) and measure throughput and latency,
    /// then verify through lookups that every balance is what was sent.
    Bench(walletd_benches::load::BenchArgs),
    /// Create or show an account on a running server.
    Account(walletd::cli::AccountArgs),
    /// Create, post, void or show a transfer on a running server.
    Transfer(walletd::cli::TransferArgs),
    /// The HTTP/JSON wallet API alone, against an engine at --engine (see docs/HTTP.md); also
    /// `walletd http token`, `walletd http openapi`, `walletd http bench`.
    Http(walletd_http::cli::HttpArgs),
    /// Project the durable journal into a store (its own process; resumable, exactly once).
    #[command(subcommand)]
    Project(ProjectCommands),
    /// Read the history projected into PostgreSQL.
    History(walletd_history::cli::HistoryArgs),
    /// Prove at one op that PostgreSQL, the engine's state and the journal agree; exits
    /// non-zero and names the first difference when they do not.
    Reconcile(walletd_history::cli::ReconcileArgs),
    /// A replicated cluster (`walletd serve --cluster`): initialise it once, or ask a member.
    #[command(subcommand)]
    Cluster(ClusterCommands),
    /// The outbox: publish `transaction.completed` events from the journal.
    #[command(subcommand)]
    Export(walletd::export::ExportCommands),
    /// Deliver `transaction.completed` events as signed webhooks, with a dead-letter topic.
    Notify(walletd::export::NotifyArgs),
}

#[derive(Subcommand)]
enum ClusterCommands {
    /// Initialise a new cluster, once: the members, through one of them (already running with
    /// `walletd serve --cluster`). The membership then lives in the Raft log.
    Init(ClusterInitArgs),
    /// What a member says: its term, the leader it knows, its log and applied index, the members.
    Status(ClusterStatusArgs),
    /// Add a member: start it first (`walletd serve --cluster` on an empty data directory with
    /// its own node id); it catches up from the log as a learner, then becomes a voter.
    Add(ClusterAddArgs),
    /// Remove a voter (a dead member, before replacing it with `add`).
    Remove(ClusterRemoveArgs),
}

#[derive(Args)]
struct ClusterAddArgs {
    /// The Raft address of any member (the change is made by the leader; the tool follows).
    #[arg(long)]
    raft_addr: String,
    /// The new member, ID=RAFT_ADDR/CLIENT_ADDR; its id must be new to the cluster.
    #[arg(long = "member", value_parser = walletd_cluster::tool::member_parse)]
    member: (walletd_cluster::NodeId, walletd_cluster::Member),
}

#[derive(Args)]
struct ClusterRemoveArgs {
    /// The Raft address of any member (the change is made by the leader; the tool follows).
    #[arg(long)]
    raft_addr: String,
    /// The voter to remove.
    #[arg(long)]
    node_id: walletd_cluster::NodeId,
}

#[derive(Args)]
struct ClusterInitArgs {
    /// The Raft address of the member to send the initialisation to (one of --member).
    #[arg(long)]
    raft_addr: String,
    /// A member, ID=RAFT_ADDR/CLIENT_ADDR (repeat for each), e.g. 1=127.0.0.1:7101/127.0.0.1:4101.
    #[arg(long = "member", required = true, value_parser = walletd_cluster::tool::member_parse)]
    members: Vec<(walletd_cluster::NodeId, walletd_cluster::Member)>,
}

#[derive(Args)]
struct ClusterStatusArgs {
    /// The member's Raft address.
    #[arg(long)]
    raft_addr: String,
}

/// `walletd serve --cluster`: the flags of a replicated member.
#[derive(Args)]
struct ClusterServeArgs {
    /// Run as a member of a replicated cluster (Raft): writes go through the leader and are
    /// acknowledged once a majority holds them durably. Needs --node-id and --raft-addr; the
    /// members are given once, to `walletd cluster init`.
    #[arg(long)]
    cluster: bool,
    /// This member's id (a data directory belongs to one id for life).
    #[arg(long, requires = "cluster")]
    node_id: Option<u64>,
    /// Address for the members' Raft RPCs (and `walletd cluster init`/`status`).
    #[arg(long, requires = "cluster")]
    raft_addr: Option<std::net::SocketAddr>,
    /// Milliseconds between the leader's heartbeats.
    #[arg(long, default_value_t = walletd_cluster::RaftTimeouts::default().heartbeat_ms)]
    heartbeat_ms: u64,
    /// A follower's election timeout in milliseconds, drawn once between the min and the max:
    /// it stands for election after the leader's lease (the max) plus this much silence.
    #[arg(long, default_value_t = walletd_cluster::RaftTimeouts::default().election_timeout_min_ms)]
    election_timeout_min_ms: u64,
    #[arg(long, default_value_t = walletd_cluster::RaftTimeouts::default().election_timeout_max_ms)]
    election_timeout_max_ms: u64,
    /// Entries per AppendEntries RPC at most, 1..=32 (an entry is one request, up to a full
    /// batch): fewer keep replication RPCs short, so followers hear from a busy leader often;
    /// too few leave followers trailing, which slows failover.
    #[arg(long, default_value_t = walletd_cluster::APPEND_ENTRIES_MAX_DEFAULT,
          value_parser = clap::value_parser!(u64).range(1..=32))]
    raft_append_entries_max: u64,
    /// Entries applied between two snapshots (anchors in the journal: cheap). Each lets the
    /// Raft log before it be purged, less `--raft-log-keep`; a member behind the purged log
    /// is caught up by fetching the journal it lacks from another member.
    #[arg(long, default_value_t = walletd_cluster::SNAPSHOT_ENTRIES_DEFAULT,
          value_parser = clap::value_parser!(u64).range(1..))]
    raft_snapshot_entries: u64,
    /// Entries kept in the Raft log behind the newest snapshot.
    #[arg(long, default_value_t = walletd_cluster::LOG_KEEP_ENTRIES_DEFAULT)]
    raft_log_keep: u64,
    /// Milliseconds a write may wait to commit (a leader without a majority) before it is
    /// answered `unavailable`.
    #[arg(long, default_value_t = 10_000)]
    write_timeout_ms: u64,
}

#[derive(Subcommand)]
enum ProjectCommands {
    /// History and audit in PostgreSQL: accounts, transfers, holds, double entries.
    Postgres(walletd_history::cli::ProjectArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Where the journal, snapshots and ledger.conf live (created if missing).
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    /// Address for the binary protocol.
    #[arg(long, default_value = "127.0.0.1:4100")]
    addr: std::net::SocketAddr,
    /// Address for Prometheus metrics (GET /metrics); off unless given.
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Client connections at once; more are answered `busy` and closed.
    #[arg(long, default_value_t = 256)]
    connections_max: usize,
    /// Ring slots (a power of two), each one request of up to 8189 events.
    #[arg(long, default_value_t = 64)]
    ring_slots: usize,
    /// How idle pipeline threads wait: park (spin, yield, then sleep until another pipeline thread
    /// makes progress), backoff (spin, yield, then sleep 50 µs at a time), yield, busy-spin.
    #[arg(long, default_value = "park")]
    wait: walletd::pipeline::WaitKind,
    /// Pin journal, apply and reply threads to these cores, e.g. 0,1,1 (default: unpinned).
    #[arg(long, value_delimiter = ',', num_args = 3)]
    pin_cores: Option<Vec<usize>>,
    /// Seconds a started frame may take to arrive whole before the connection is closed.
    #[arg(long, default_value_t = 10)]
    frame_timeout_s: u64,
    /// Seconds a connection may send nothing, with no request of its own in flight, before it
    /// is closed (so idle sockets cannot hold every connection slot).
    #[arg(long, default_value_t = 300)]
    idle_timeout_s: u64,
    /// Ops between checkpoints (state hash in the journal).
    #[arg(long, default_value_t = 256)]
    checkpoint_ops: u64,
    /// Ops between snapshots. With --cluster: each member snapshots its ledger at the first
    /// checkpoint this many ops after its newest snapshot.
    #[arg(long, default_value_t = 16384)]
    snapshot_ops: u64,
    /// Journal segment size in bytes.
    #[arg(long, default_value_t = 256 << 20)]
    segment_size: u64,
    /// For a new data directory: accounts it can hold.
    #[arg(long, default_value_t = 1 << 20)]
    accounts_max: u32,
    /// For a new data directory: the idempotency window, in transfers remembered (rounded up so
    /// that it plus 8189 is a power of two). A transfer id older than the newest forgotten one
    /// is refused `id_too_old`.
    #[arg(long, default_value_t = (1 << 20) - 8189)]
    transfers_max: u32,
    /// Address of the HTTP/JSON wallet API served in this process (default 127.0.0.1:8080;
    /// if that default is taken, the node serves without it), or `off`. With --cluster it is
    /// off unless an address is given; the gateway follows `not_leader` to the leader.
    #[arg(long)]
    http: Option<String>,
    #[command(flatten)]
    http_gateway: walletd_http::cli::GatewayFlags,
    #[command(flatten)]
    trust: TrustArgs,
    /// Refuse to start unless the journal's record at OP has this checksum (an externally held
    /// chain head, e.g. the last one the exporter published).
    #[arg(long, value_name = "OP:CHECKSUM")]
    expect_head: Option<walletd_replay::ChainHead>,
    #[command(flatten)]
    cluster: ClusterServeArgs,
}

/// Tamper evidence at start-up and while running (see ARCHITECTURE.md, "Threat model").
#[derive(Args)]
struct TrustArgs {
    /// Sign every checkpoint with this Ed25519 private key (from `walletd keygen`): mode 0600,
    /// kept outside the data directory.
    #[arg(long, value_name = "FILE")]
    signing_key: Option<PathBuf>,
    /// Refuse to start unless the journal verifies under this public key (64 hex digits, or a
    /// file holding them): every signed checkpoint's signature, no unsigned checkpoint after the
    /// last signed one, and no more than its checkpoint_ops ops after it.
    #[arg(long, value_name = "HEX|FILE")]
    verify_key: Option<String>,
}

#[derive(Args)]
struct GenerateArgs {
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    #[arg(long)]
    transfers: u64,
    #[arg(long, default_value_t = 10_000)]
    accounts: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Events per batch (at most 8189).
    #[arg(long, default_value_t = 8189)]
    batch: usize,
    /// Batches per fsync (group commit).
    #[arg(long, default_value_t = 1)]
    commit_batches: u64,
    /// Ops between snapshots.
    #[arg(long, default_value_t = 1024)]
    snapshot_ops: u64,
    /// Percent of transfers that are holds, posted or voided in the next batch.
    #[arg(long, default_value_t = 5)]
    two_phase_percent: u64,
    /// uniform, zipf or hot.
    #[arg(long, default_value = "uniform")]
    distribution: Distribution,
    #[arg(long, default_value_t = 256 << 20)]
    segment_size: u64,
    /// Print `durable <op>` after every commit (for crash tests).
    #[arg(long)]
    print_durable: bool,
    #[command(flatten)]
    trust: TrustArgs,
}

#[derive(Args)]
struct ReplayArgs {
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    /// Ignore snapshots: replay the whole journal (archive/ included) from op 1.
    #[arg(long)]
    from_genesis: bool,
    /// Stop after this op.
    #[arg(long)]
    until_op: Option<u64>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Only verify the journal's hash chain (and signatures, and the chain head), without
    /// applying anything (fast).
    #[arg(long)]
    audit: bool,
    /// Verify every signed checkpoint with this public key (64 hex digits, or a file holding
    /// them), and refuse a journal whose end no signature covers: an unsigned checkpoint after
    /// the last signed one, or more ops after it than the checkpoint_ops it was signed with.
    #[arg(long, value_name = "HEX|FILE")]
    verify_key: Option<String>,
    /// Refuse unless the journal's record at OP has this checksum (an externally held chain
    /// head: the exporters publish one with every event).
    #[arg(long, value_name = "OP:CHECKSUM")]
    expect_head: Option<walletd_replay::ChainHead>,
}

#[derive(Args)]
struct KeygenArgs {
    /// Where to write the private key (FILE.pub gets the public key). Must not exist.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Subcommand)]
enum JournalCommands {
    /// Cut the journal at a corrupt record, moving what follows to journal/quarantine/: the
    /// explicit operator action that start-up's corruption message names, as
    /// `walletd journal truncate <SEGMENT> <OFFSET>`. Run it with walletd stopped.
    Truncate(TruncateArgs),
    /// Print the journal's records: op, time, kind, checksum, and each event with the trace id
    /// its request carried. Read-only, safe on a live data directory.
    Print(PrintArgs),
}

#[derive(Args)]
struct PrintArgs {
    /// The data directory whose journal is printed.
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    /// The first op printed.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    from: u64,
    /// Records printed at most.
    #[arg(long, default_value_t = u64::MAX)]
    count: u64,
    /// Only the record lines, not their events.
    #[arg(long)]
    no_events: bool,
}

#[derive(Args)]
struct TruncateArgs {
    /// The segment file the corruption message named.
    #[arg(value_name = "SEGMENT", required_unless_present = "segment")]
    segment_path: Option<PathBuf>,
    /// The byte offset the corruption message named.
    #[arg(value_name = "OFFSET", required_unless_present = "offset")]
    offset_bytes: Option<u64>,
    /// The segment, as a flag.
    #[arg(long, conflicts_with = "segment_path")]
    segment: Option<PathBuf>,
    /// The offset, as a flag.
    #[arg(long, conflicts_with = "offset_bytes")]
    offset: Option<u64>,
    /// The data directory (default: the one the segment is in).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let cli = Cli::parse();
    if matches!(cli.command, Commands::Generate(_) | Commands::Replay(_) | Commands::Journal(_)) {
        pipe_closed_ends_quietly();
    }
    let result: Result<(), String> = match cli.command {
        Commands::Serve(args) if args.cluster.cluster => cluster_serve_command(args),
        Commands::Serve(args) => serve_command(args).map_err(|error| error.to_string()),
        Commands::Cluster(ClusterCommands::Init(args)) => {
            let members = args.members.into_iter().collect();
            walletd_cluster::tool::init(&args.raft_addr, members).map_err(|error| error.to_string()).map(|()| {
                println!("cluster initialised through {}", args.raft_addr);
            })
        }
        Commands::Cluster(ClusterCommands::Status(args)) => match walletd_cluster::tool::status(&args.raft_addr) {
            Ok(status) => {
                println!("{}", serde_json::to_string_pretty(&status).expect("a status encodes"));
                Ok(())
            }
            Err(error) => Err(error.to_string()),
        },
        Commands::Cluster(ClusterCommands::Add(args)) => {
            let (id, member) = args.member;
            let voters = walletd_cluster::tool::member_add(&args.raft_addr, id, member);
            voters.map(|voters| voters_print("added", id, &voters)).map_err(|error| error.to_string())
        }
        Commands::Cluster(ClusterCommands::Remove(args)) => {
            let voters = walletd_cluster::tool::member_remove(&args.raft_addr, args.node_id);
            voters.map(|voters| voters_print("removed", args.node_id, &voters)).map_err(|error| error.to_string())
        }
        Commands::Generate(args) => generate_command(args).map_err(|error| error.to_string()),
        Commands::Replay(args) => replay_command(args).map_err(|error| error.to_string()),
        Commands::Journal(JournalCommands::Truncate(args)) => truncate_command(args).map_err(|error| error.to_string()),
        Commands::Journal(JournalCommands::Print(args)) => print_command(args).map_err(|error| error.to_string()),
        Commands::Keygen(args) => keygen_command(args).map_err(|error| error.to_string()),
        Commands::Bench(args) => walletd_benches::load::bench_command(args, &walletd::serve::bench_server_start)
            .map_err(|error| error.to_string()),
        Commands::Account(args) => {
            walletd::cli::account_command(&args.addr, args.command).map_err(|error| error.to_string())
        }
        Commands::Transfer(args) => {
            let addr = args.addr.clone();
            walletd::cli::transfer_command(&addr, args.command()).map_err(|error| error.to_string())
        }
        Commands::Http(args) => walletd_http::cli::http_command(args).map_err(|error| error.to_string()),
        Commands::Project(ProjectCommands::Postgres(args)) => {
            walletd_history::cli::project_command(args).map_err(|error| error.to_string())
        }
        Commands::History(args) => walletd_history::cli::history_command(args).map_err(|error| error.to_string()),
        Commands::Reconcile(args) => match walletd_history::cli::reconcile_command(args) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(3),
            Err(error) => Err(error.to_string()),
        },
        Commands::Export(command) => walletd::export::export_command(command).map_err(|error| error.to_string()),
        Commands::Notify(args) => walletd::export::notify_command(args).map_err(|error| error.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Not eprintln!: with stderr closed there is no one to tell, and no reason to panic.
            let _ = writeln!(std::io::stderr(), "walletd: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The report tools print many lines; a reader that stopped reading (`walletd replay | head`)
/// wants no more, so a closed pipe ends the process quietly, as it does for `cat`, instead of
/// a panic with a backtrace. Only for those tools: the server gets EPIPE as an error on a
/// socket, and the people's CLI handles it itself (exit 0).
fn pipe_closed_ends_quietly() {
    // SAFETY: restores the default disposition of one signal before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Set by SIGINT/SIGTERM.
static STOP_REQUESTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn stop_on_signal(_signal: libc::c_int) {
    STOP_REQUESTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

fn serve_command(args: ServeArgs) -> Result<(), NodeError> {
    if !args.ring_slots.is_power_of_two() {
        eprintln!("walletd: --ring-slots must be a power of two");
        std::process::exit(2);
    }
    let pin_cores = args.pin_cores.map(|cores| [cores[0], cores[1], cores[2]]);
    let mut trust = trust_from(&args.trust, &args.data_dir)?;
    trust.verification.expect_head = args.expect_head;
    let pipeline = walletd::pipeline::PipelineOptions {
        ring_slots: args.ring_slots,
        wait: args.wait,
        pin_cores,
        checkpoint_ops: args.checkpoint_ops.max(1),
        snapshot_ops: args.snapshot_ops.max(1),
        trust,
        ..walletd::pipeline::PipelineOptions::default()
    };
    let mut config = walletd::generate::config_for(u64::from(args.accounts_max) / 2);
    config.accounts_max = args.accounts_max.max(2);
    config.transfers_max = args.transfers_max.max(1);
    let options = walletd::serve::ServeOptions {
        data_dir: DataDir::new(&args.data_dir),
        addr: args.addr,
        metrics_addr: args.metrics_addr,
        node: walletd::node::NodeOptions { config, segment_size_bytes: args.segment_size, pipeline },
        server: walletd_gateway::server::ServerOptions {
            connections_max: args.connections_max.max(1),
            frame_timeout: std::time::Duration::from_secs(args.frame_timeout_s.max(1)),
            idle_timeout: std::time::Duration::from_secs(args.idle_timeout_s.max(1)),
            ..walletd_gateway::server::ServerOptions::default()
        },
    };
    serving_process_hooks();
    let server = walletd::serve::serve_start(options)?;
    let started = &server.started;
    tracing::info!(
        addr = %server.local_addr,
        data_dir = %args.data_dir.display(),
        op = started.op,
        accounts = started.accounts,
        snapshot_op = ?started.snapshot_op,
        ops_replayed = started.ops_replayed,
        checkpoints_signed_verified = started.trust.checkpoints_signed_verified,
        op_signed_last = ?started.trust.op_signed_last,
        "walletd serving"
    );
    println!("walletd listening on {} (data dir {}, op {})", server.local_addr, args.data_dir.display(), started.op);
    if let Some(metrics) = server.metrics_addr {
        println!("metrics on http://{metrics}/metrics");
    }
    let http = match http_embed(&args.http, server.local_addr, &args.data_dir, &args.http_gateway) {
        Ok(http) => http,
        Err(error) => {
            server.shutdown();
            eprintln!("walletd: {error}");
            std::process::exit(2);
        }
    };
    while !STOP_REQUESTED.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    tracing::info!("stopping: finishing and answering the requests already taken");
    if let Some(http) = http {
        http.stop();
    }
    server.shutdown();
    tracing::info!("stopped");
    Ok(())
}

/// For a serving node: SIGINT and SIGTERM ask it to stop (`STOP_REQUESTED`), and a panic
/// stops the process. A panic is a broken invariant: a node with one thread gone is neither up
/// nor down, so it fails stop and a restart recovers from disk.
fn serving_process_hooks() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, stop_on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, stop_on_signal as *const () as libc::sighandler_t);
    }
    let report_panic = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report_panic(info);
        eprintln!("walletd: a thread panicked; stopping (fail-stop). Restart to recover from disk.");
        std::process::exit(70);
    }));
}

/// `cluster: node 4 added; voters 1=RAFT/CLIENT 3=… 4=…`
fn voters_print(
    what: &str,
    id: walletd_cluster::NodeId,
    voters: &std::collections::BTreeMap<u64, walletd_cluster::Member>,
) {
    let voters: Vec<String> =
        voters.iter().map(|(id, member)| format!("{id}={}/{}", member.raft_addr, member.client_addr)).collect();
    println!("cluster: node {id} {what}; voters {}", voters.join(" "));
}

/// A member's start-up, one line: `cluster: node N started from the ledger snapshot at op S
/// (R journal records replayed to op X)`, or `… started from the journal (R records replayed
/// to op X)`; then a line for each thing recovery repaired or set aside.
fn recovery_print(node_id: walletd_cluster::NodeId, recovery: &walletd_cluster::Recovery) {
    let (op, records) = (recovery.op, recovery.records_replayed);
    match recovery.snapshot_op {
        Some(snapshot) => println!(
            "cluster: node {node_id} started from the ledger snapshot at op {snapshot} ({records} journal records \
             replayed to op {op})"
        ),
        None => println!("cluster: node {node_id} started from the journal ({records} records replayed to op {op})"),
    }
    for note in &recovery.notes {
        println!("cluster: node {node_id} recovery: {note}");
    }
    let trust = &recovery.trust;
    if let Some(key) = &trust.verify_key {
        let signed_last = trust.op_signed_last.map_or("none".to_string(), |op| format!("op {op}"));
        println!(
            "cluster: node {node_id} verified {} signed checkpoints with key {key}; the last at {signed_last}, {} ops \
             after it",
            trust.checkpoints_signed_verified, trust.ops_unsigned_tail
        );
    }
    if let Some(head) = &trust.head_matched {
        println!("cluster: node {node_id} chain head {head} matches the expected head");
    }
}

/// `walletd serve --cluster`: a replicated member (see walletd_cluster), with the HTTP gateway
/// when `--http ADDR` is given and `/metrics` with `--metrics-addr`. With `--signing-key` every
/// checkpoint is signed (every member must hold the same key); `--verify-key` and
/// `--expect-head` are checked at start-up as on the single node.
fn cluster_serve_command(args: ServeArgs) -> Result<(), String> {
    let (Some(node_id), Some(raft_addr)) = (args.cluster.node_id, args.cluster.raft_addr) else {
        return Err("--cluster needs --node-id N and --raft-addr HOST:PORT".to_string());
    };
    let trust = trust_from(&args.trust, &args.data_dir).map_err(|error| error.to_string())?;
    let mut verification = trust.start_verification().map_err(|error| error.to_string())?;
    verification.expect_head = args.expect_head;
    let mut config = walletd::generate::config_for(u64::from(args.accounts_max) / 2);
    config.accounts_max = args.accounts_max.max(2);
    let timeouts = walletd_cluster::RaftTimeouts {
        heartbeat_ms: args.cluster.heartbeat_ms.max(1),
        election_timeout_min_ms: args.cluster.election_timeout_min_ms,
        election_timeout_max_ms: args.cluster.election_timeout_max_ms,
    };
    if timeouts.election_timeout_min_ms <= timeouts.heartbeat_ms
        || timeouts.election_timeout_max_ms <= timeouts.election_timeout_min_ms
    {
        return Err("Raft timeouts: need heartbeat < election-timeout-min < election-timeout-max".to_string());
    }
    let options = walletd_cluster::ClusterOptions {
        node_id,
        data_dir: DataDir::new(&args.data_dir),
        addr: args.addr,
        raft_addr,
        config,
        segment_size_bytes: args.segment_size,
        server: walletd_gateway::server::ServerOptions {
            connections_max: args.connections_max.max(1),
            frame_timeout: std::time::Duration::from_secs(args.frame_timeout_s.max(1)),
            idle_timeout: std::time::Duration::from_secs(args.idle_timeout_s.max(1)),
            ..walletd_gateway::server::ServerOptions::default()
        },
        timeouts,
        write_timeout: std::time::Duration::from_millis(args.cluster.write_timeout_ms.max(1)),
        checkpoint_entries: args.checkpoint_ops.max(1),
        in_flight_max: args.ring_slots.max(1) * 4,
        append_entries_max: args.cluster.raft_append_entries_max,
        snapshot_entries: args.cluster.raft_snapshot_entries,
        log_keep_entries: args.cluster.raft_log_keep,
        ledger_snapshot_ops: args.snapshot_ops.max(1),
        signing_key: trust.signing_key,
        verification,
    };
    serving_process_hooks();
    let node = walletd_cluster::cluster_start(options).map_err(|error| error.to_string())?;
    println!("walletd listening on {} (data dir {}, op {})", node.local_addr, args.data_dir.display(), node.op);
    println!("raft on {} (node {})", node.raft_addr, node.node_id);
    recovery_print(node.node_id, &node.recovery);
    if let Some((op, fetched)) = node.install_finished {
        println!(
            "cluster: node {} finished an interrupted snapshot install at op {op} ({fetched} journal records fetched)",
            node.node_id
        );
    }
    let metrics_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(addr) = args.metrics_addr {
        let metrics = node.metrics();
        let serving =
            walletd::serve::metrics_http_serve(addr, std::sync::Arc::clone(&metrics_stop), move || metrics.render());
        match serving {
            Ok(local) => println!("metrics on http://{local}/metrics"),
            Err(error) => {
                node.shutdown();
                return Err(error.to_string());
            }
        }
    }
    // The HTTP gateway only when asked (`--http ADDR`): members sharing a machine would share
    // the single node's default port. It talks to this member, which names the leader to it.
    let http = match args.http.as_deref() {
        None | Some("off") => None,
        Some(_) => match http_embed(&args.http, node.local_addr, &args.data_dir, &args.http_gateway) {
            Ok(http) => http,
            Err(error) => {
                node.shutdown();
                return Err(error);
            }
        },
    };
    node.leader_report_start();
    while !STOP_REQUESTED.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    tracing::info!("stopping");
    metrics_stop.store(true, std::sync::atomic::Ordering::Release);
    if let Some(http) = http {
        http.stop();
    }
    node.shutdown();
    Ok(())
}

/// The HTTP gateway embedded in `serve` (the same client path as `walletd http`). Its line is
/// written after the two that scripts read ("listening", "metrics"), ignoring a closed stdout.
fn http_embed(
    http: &Option<String>,
    engine: std::net::SocketAddr,
    data_dir: &std::path::Path,
    flags: &walletd_http::cli::GatewayFlags,
) -> Result<Option<walletd_http::Embedded>, String> {
    let config = |reason: String| reason;
    let listen = match http.as_deref() {
        Some("off") => return Ok(None),
        Some(addr) => addr.parse().map_err(|_| config(format!("--http {addr}: not an address (HOST:PORT or off)")))?,
        None => std::net::SocketAddr::from(([127, 0, 0, 1], 8080)),
    };
    let embedded = walletd_http::cli::serve_embedded(listen, http.is_some(), engine, data_dir, flags)
        .map_err(|error| config(format!("HTTP gateway: {error}")))?;
    if let Some(embedded) = &embedded {
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), "http on http://{}", embedded.local_addr);
    }
    Ok(embedded)
}

fn generate_command(args: GenerateArgs) -> Result<(), NodeError> {
    if args.batch < 2 || args.batch > 8189 {
        eprintln!("walletd: --batch must be between 2 and 8189");
        std::process::exit(2);
    }
    let options = GenerateOptions {
        transfers: args.transfers,
        accounts: args.accounts.max(2),
        seed: args.seed,
        batch_size: args.batch,
        commit_batches: args.commit_batches.max(1),
        snapshot_ops: args.snapshot_ops.max(1),
        segment_size_bytes: args.segment_size,
        two_phase_percent: args.two_phase_percent.min(100),
        distribution: args.distribution,
        print_durable: args.print_durable,
        trust: trust_from(&args.trust, &args.data_dir)?,
        ..GenerateOptions::default()
    };
    let data_dir = DataDir::new(&args.data_dir);
    let report = generate(&data_dir, &options)?;
    println!("data dir      {}", args.data_dir.display());
    for note in &report.recovery_notes {
        println!("recovery      {note}");
    }
    println!("ops durable   {}", report.op_durable);
    println!("accounts      {}", report.accounts);
    println!("transfers     {} submitted, {} created in total", report.transfers_submitted, report.transfers_created);
    println!(
        "time          {:.3} s, {:.0} transfers/s, {} fsyncs",
        report.seconds,
        report.transfers_submitted as f64 / report.seconds,
        report.commits
    );
    println!("state hash    {:032x}", report.state_hash);
    if let Some(largest) = report.snapshots.iter().max_by_key(|s| s.size_bytes) {
        let mut seconds: Vec<f64> = report.snapshots.iter().map(|s| s.seconds).collect();
        seconds.sort_by(f64::total_cmp);
        println!(
            "snapshot save {:.3} s median, {:.3} s max, on the replica thread; largest {} MB",
            seconds[seconds.len() / 2],
            seconds[seconds.len() - 1],
            largest.size_bytes / 1_000_000
        );
    }
    if report.recovery_seconds > 0.0 {
        println!("recovery      {:.3} s before the run", report.recovery_seconds);
    }
    println!(
        "snapshots     {} written (newest at op {}), {} segments archived, apply-thread stall per snapshot ≤ {} µs",
        report.snapshots.len(),
        report.snapshots.last().map_or(0, |s| s.op),
        report.segments_archived,
        report.checkpoint_ns_max.div_ceil(1000)
    );
    Ok(())
}

/// The signing key and what start-up verifies, from the flags: a verify key makes signatures
/// required.
fn trust_from(args: &TrustArgs, data_dir: &std::path::Path) -> Result<walletd::node::Trust, NodeError> {
    let signing_key = match &args.signing_key {
        Some(path) => Some(walletd_replay::signing_key_read(path, data_dir)?),
        None => None,
    };
    let verify_key = args.verify_key.as_deref().map(walletd_replay::verify_key_parse).transpose()?;
    let verification =
        walletd_replay::Verification { verify_key, signatures_required: verify_key.is_some(), expect_head: None };
    Ok(walletd::node::Trust { signing_key, verification })
}

fn keygen_command(args: KeygenArgs) -> Result<(), NodeError> {
    let generated = walletd_replay::keygen(&args.out)?;
    eprintln!(
        "walletd: wrote the private key to {} (mode 0600: keep it off the data directory's disk and backups) and \
         the public key to {}",
        generated.private_path.display(),
        generated.public_path.display()
    );
    println!("{}", walletd_replay::checkpoint::hex(&generated.public_key.to_bytes()));
    Ok(())
}

fn replay_command(args: ReplayArgs) -> Result<(), NodeError> {
    let data_dir = DataDir::new(&args.data_dir);
    let verify_key = args.verify_key.as_deref().map(walletd_replay::verify_key_parse).transpose()?;
    let verification = walletd_replay::Verification {
        verify_key,
        signatures_required: verify_key.is_some(),
        expect_head: args.expect_head,
    };
    if args.audit {
        let report = walletd_replay::audit(&data_dir, &verification)?;
        if args.json {
            println!("{}", serde_json::to_string(&report).expect("report serialises"));
        } else {
            audit_print(&report);
        }
        return Ok(());
    }
    let options =
        walletd_replay::DrillOptions { from_genesis: args.from_genesis, until_op: args.until_op, verification };
    let report = walletd_replay::drill(&data_dir, &options)?;
    for skipped in &report.snapshots_skipped {
        tracing::warn!(error = %skipped, "skipping a snapshot that failed its checks");
    }
    if args.json {
        println!("{}", serde_json::to_string(&report).expect("report serialises"));
    } else {
        replay_print(&report);
    }
    Ok(())
}

fn replay_print(report: &walletd_replay::DrillReport) {
    let from = report.snapshot_op.map_or("genesis".to_string(), |op| format!("snapshot at op {op}"));
    println!(
        "replayed      from {from} to op {} ({} records, {} checkpoints verified)",
        report.ops, report.records, report.checkpoints_verified
    );
    println!("journal       reaches op {}, every record verified", report.journal_op_last);
    if let Some(torn) = &report.torn_tail {
        println!(
            "torn tail     a record cut short after op {}: {torn} (zeroed at the next start)",
            report.journal_op_last
        );
    }
    println!("accounts      {}", report.accounts);
    println!("transfers     {} created, {} pending open", report.transfers, report.pending);
    for ledger in &report.ledgers {
        println!(
            "ledger {:<6} debits_posted {} = credits_posted {}; debits_pending {} = credits_pending {}",
            ledger.ledger, ledger.debits_posted, ledger.credits_posted, ledger.debits_pending, ledger.credits_pending
        );
    }
    println!("state hash    {}", report.state_hash);
    trust_print(&report.trust);
    if report.snapshot_op.is_some() {
        println!("snapshot load {:.3} s", report.snapshot_load_seconds);
    }
    println!("replay        {:.3} s, {:.0} transfers/s", report.seconds, report.transfers_per_second);
}

fn audit_print(report: &walletd_replay::AuditReport) {
    println!(
        "audited       ops 1..={}: {} records, {} bytes, hash chain intact",
        report.ops, report.records, report.bytes
    );
    if let Some(torn) = &report.torn_tail {
        println!("torn tail     a record cut short after op {}: {torn} (zeroed at the next start)", report.ops);
    }
    trust_print(&report.trust);
    println!("time          {:.3} s, {:.0} records/s", report.seconds, report.records_per_second);
}

fn trust_print(trust: &walletd_replay::TrustReport) {
    let signed_last = trust.op_signed_last.map_or("none".to_string(), |op| format!("op {op}"));
    match &trust.verify_key {
        Some(key) => println!(
            "signatures    {} checkpoints signed and verified with key {key}; the last at {signed_last}, {} ops after it",
            trust.checkpoints_signed_verified, trust.ops_unsigned_tail
        ),
        None if trust.checkpoints_signed_unverified > 0 => println!(
            "signatures    {} signed checkpoints, not verified (no --verify-key); the last at {signed_last}",
            trust.checkpoints_signed_unverified
        ),
        None => {}
    }
    if let Some(head) = &trust.head_matched {
        println!("chain head    {head} matches the expected head");
    }
    if let Some(head) = &trust.journal_head {
        println!("journal head  {head}");
    }
}

fn print_command(args: PrintArgs) -> Result<(), NodeError> {
    let options =
        walletd::journal_print::PrintOptions { op_first: args.from, count_max: args.count, events: !args.no_events };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    walletd::journal_print::journal_print(&args.data_dir, options, &mut out)?;
    out.flush().map_err(|source| NodeError::Io { path: args.data_dir.clone(), source })
}

fn truncate_command(args: TruncateArgs) -> Result<(), NodeError> {
    let segment = args.segment_path.or(args.segment).expect("clap requires a segment");
    let offset = args.offset_bytes.or(args.offset).expect("clap requires an offset");
    // DIR/journal/segment-….wal → DIR
    let data_dir = match args.data_dir {
        Some(dir) => dir,
        None => segment.parent().and_then(|journal| journal.parent()).map(PathBuf::from).ok_or_else(|| {
            ReplayError::DataDir {
                path: segment.clone(),
                reason: "cannot tell the data directory: pass --data-dir".into(),
            }
        })?,
    };
    let report = walletd_replay::truncate(&DataDir::new(&data_dir), &segment, offset)?;
    println!("truncated     {:?}", report.truncated);
    for (op, moved) in &report.snapshots_quarantined {
        println!(
            "quarantined   snapshot at op {op} (past the journal's new end, op {}): {}",
            report.op_last,
            moved.display()
        );
    }
    Ok(())
}
