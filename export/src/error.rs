//! The operating errors of the exporter and the notifier, one enum for the crate. Each says
//! what failed and what the operator can do; the exporter stops on any of them and a restart
//! resumes exactly (the resume rule in `exporter.rs`), so none needs recovering in place.

use walletd_replay::ReplayError;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading the data directory (the follower) failed.
    #[error("following the journal: {0}")]
    Follow(#[from] ReplayError),
    /// The Kafka client refused a setting, a request failed for good, or the producer hit a
    /// fatal error (for the idempotent producer: a gap it cannot close).
    #[error("kafka: {context}: {source}")]
    Kafka { context: String, source: rdkafka::error::KafkaError },
    /// What is in the topic contradicts what the exporter would have written there.
    #[error("the topic {topic} partition {partition} does not continue this journal: {reason}")]
    Topic { topic: String, partition: i32, reason: String },
    /// A message on the topic that is not an event of this schema (the exporter never writes one).
    #[error("the message at {topic}/{partition}@{offset} is not a transaction.completed event: {reason}")]
    BadMessage { topic: String, partition: i32, offset: i64, reason: String },
    /// A broker answered the exporter's own producer with an error code or bytes it cannot
    /// read; the session ends and a new one resumes from the topic's ends.
    #[error("the broker: {0}")]
    Broker(String),
    /// A partition's end kept moving while the exporter read it: requests are still being
    /// written there (a killed exporter's, or this process's from a session that ended).
    #[error("the topic {topic} partition {partition}: its end kept moving over {attempts} reads; is another exporter writing to it?")]
    EndMoving { topic: String, partition: i32, attempts: u32 },
    /// A broker that did not answer in time.
    #[error("the broker did not answer: {0}; is it running and are --brokers right?")]
    Timeout(String),
    /// An address to listen on (metrics) could not be bound, or another socket failed.
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    /// A flag with a value that cannot work.
    #[error("invalid option: {0}")]
    Option(String),
}

impl ExportError {
    /// Whether the exporter may end the session and resume from the topic's ends: what went
    /// wrong is between it and the broker (a connection, a timeout, an error code). Everything
    /// else (the journal, the topic contradicting it, an option) stops the process.
    pub fn is_resumable(&self) -> bool {
        match self {
            ExportError::Io { .. }
            | ExportError::Timeout(_)
            | ExportError::Kafka { .. }
            | ExportError::Broker(_)
            | ExportError::EndMoving { .. } => true,
            ExportError::Follow(_)
            | ExportError::Topic { .. }
            | ExportError::BadMessage { .. }
            | ExportError::Option(_) => false,
        }
    }

    pub fn kafka(context: impl Into<String>) -> impl FnOnce(rdkafka::error::KafkaError) -> ExportError {
        let context = context.into();
        move |source| ExportError::Kafka { context, source }
    }

    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ExportError {
        let context = context.into();
        move |source| ExportError::Io { context, source }
    }
}
