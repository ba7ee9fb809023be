//! `walletd export kafka` and `walletd notify`: the command line of the outbox processes. The
//! work is in `walletd-export`; this parses flags into its options.

use clap::{Args, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use walletd_export::exporter::{export_kafka, ExportOptions};
use walletd_export::notify::{notify, redrive, NotifyOptions};
use walletd_export::ExportError;

#[derive(Subcommand)]
pub enum ExportCommands {
    /// Publish a `transaction.completed` event per completed transfer to Kafka, exactly once,
    /// following the durable journal of a data directory (live or offline) from where the topic
    /// says it left off.
    Kafka(ExportKafkaArgs),
}

#[derive(Args)]
pub struct ExportKafkaArgs {
    /// The data directory to follow (read-only).
    #[arg(long, default_value = "./data")]
    pub data_dir: PathBuf,
    /// Bootstrap brokers, host:port[,host:port…].
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    #[arg(long, default_value = walletd_export::EVENT_TYPE)]
    pub topic: String,
    /// Partitions of the topic: created with this many, or checked to have them.
    #[arg(long, default_value_t = 32)]
    pub partitions: i32,
    /// Replication factor when the exporter creates the topic.
    #[arg(long, default_value_t = 1)]
    pub replication_factor: i32,
    /// The event format (only json in schema version 1).
    #[arg(long, default_value = "json", value_parser = ["json"])]
    pub format: String,
    /// Address for Prometheus metrics (GET /metrics), e.g. the lag in ops and seconds.
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// Milliseconds to wait on start before reading the topic's ends, so that a killed
    /// exporter's produce requests the broker already received are finished first.
    #[arg(long, default_value_t = 2000)]
    pub fence_ms: u64,
    /// Exit once every durable op is exported (an offline export).
    #[arg(long)]
    pub exit_when_caught_up: bool,
    /// The lock file that keeps a second exporter of this topic off (flock; released when the
    /// process dies). Default: export.TOPIC.lock in the data directory.
    #[arg(long)]
    pub lock_file: Option<PathBuf>,
    /// A Produce request is closed once it holds this many events (one record batch per
    /// partition; an op's events may be split over requests).
    #[arg(long, default_value_t = 20_000)]
    pub request_events_max: u32,
    /// … or this many bytes of records.
    #[arg(long, default_value_t = 8 << 20)]
    pub request_size_max_bytes: usize,
    /// Connections to each broker: the partitions are dealt over them, each connection with
    /// its own window of requests in flight (a broker may serve its connections side by side).
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Produce requests written on one connection and not yet answered, at most.
    #[arg(long, default_value_t = 4)]
    pub requests_in_flight_max: usize,
    /// How long a request may take before the session ends and a new one resumes.
    #[arg(long, default_value_t = 30_000)]
    pub request_timeout_ms: u64,
}

#[derive(Args)]
pub struct NotifyArgs {
    #[command(subcommand)]
    pub command: Option<NotifyCommands>,
    #[command(flatten)]
    pub options: NotifyFlags,
}

#[derive(Subcommand)]
pub enum NotifyCommands {
    /// Move the dead-letter topic's messages onto the retry topic (after fixing the cause), then
    /// exit; a running notifier delivers them.
    Redrive(NotifyFlags),
}

#[derive(Args, Clone)]
pub struct NotifyFlags {
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    #[arg(long, default_value = walletd_export::EVENT_TYPE)]
    pub topic: String,
    #[arg(long, default_value = "walletd-notify")]
    pub group: String,
    /// Where to POST each event.
    #[arg(long, default_value = "http://127.0.0.1:8080/webhooks/walletd")]
    pub webhook_url: String,
    /// The HMAC-SHA256 key of the signature header; read from WALLETD_WEBHOOK_SECRET if unset.
    #[arg(long, default_value = "")]
    pub secret: String,
    /// Attempts per event before it goes to the dead-letter topic.
    #[arg(long, default_value_t = 8)]
    pub attempts: u32,
    #[arg(long, default_value_t = 100)]
    pub backoff_initial_ms: u64,
    #[arg(long, default_value_t = 30_000)]
    pub backoff_max_ms: u64,
    #[arg(long, default_value_t = 10_000)]
    pub request_timeout_ms: u64,
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
}

pub fn export_command(command: ExportCommands) -> Result<(), ExportError> {
    let ExportCommands::Kafka(args) = command;
    let options = ExportOptions {
        partitions: args.partitions,
        replication_factor: args.replication_factor,
        metrics_addr: args.metrics_addr,
        fence: Duration::from_millis(args.fence_ms),
        exit_when_caught_up: args.exit_when_caught_up,
        request_events_max: args.request_events_max,
        request_size_max_bytes: args.request_size_max_bytes,
        connections: args.connections,
        requests_in_flight_max: args.requests_in_flight_max,
        request_timeout: Duration::from_millis(args.request_timeout_ms),
        lock_path: args.lock_file,
        ..ExportOptions::new(args.data_dir, &args.brokers, &args.topic)
    };
    let report = export_kafka(&options)?;
    println!(
        "exported {} events ({} already in the topic), acknowledged through op {}; {} sessions resumed after an error",
        report.events_exported, report.events_skipped, report.acked_through, report.sessions_resumed
    );
    Ok(())
}

fn notify_options(flags: &NotifyFlags) -> NotifyOptions {
    let secret = match flags.secret.as_str() {
        "" => std::env::var("WALLETD_WEBHOOK_SECRET").unwrap_or_default(),
        given => given.to_string(),
    };
    NotifyOptions {
        group_id: flags.group.clone(),
        attempts_max: flags.attempts,
        backoff_initial: Duration::from_millis(flags.backoff_initial_ms),
        backoff_max: Duration::from_millis(flags.backoff_max_ms),
        request_timeout: Duration::from_millis(flags.request_timeout_ms),
        metrics_addr: flags.metrics_addr,
        ..NotifyOptions::new(&flags.brokers, &flags.topic, &flags.webhook_url, secret.as_bytes())
    }
}

pub fn notify_command(args: NotifyArgs) -> Result<(), ExportError> {
    match args.command {
        Some(NotifyCommands::Redrive(flags)) => {
            let moved = redrive(&notify_options(&flags))?;
            println!("re-drove {moved} dead letters onto {}", notify_options(&flags).retry_topic());
        }
        None => {
            if notify_options(&args.options).secret.is_empty() {
                return Err(ExportError::Option(
                    "a webhook secret is required (--secret or WALLETD_WEBHOOK_SECRET)".into(),
                ));
            }
            notify(&notify_options(&args.options))?;
        }
    }
    Ok(())
}
