//! walletd-gateway: the wire protocol and the Rust client library.
//!
//! `protocol` is the codec that the server and every client share: the 64-byte frame header,
//! its checks and the bodies of every request and reply, so the two sides cannot drift apart.
//! `client` is a blocking, thread-safe client that pipelines requests on one connection and
//! coalesces concurrent creates into shared frames; `cluster_client` wraps it for a cluster,
//! following `not_leader` replies to the leader; `async_client` (feature `tokio`) is the same
//! pipelining and batching on tokio tasks, for callers that run on a tokio runtime (the HTTP
//! gateway), without threads of its own. The crate depends on the core's records and
//! nothing else of ours (not the journal, the snapshots or the node), so a client can be built
//! without the engine. docs/PROTOCOL.md documents the protocol byte by byte.

#[cfg(feature = "tokio")]
pub mod async_client;
pub mod client;
pub mod cluster_client;
pub mod protocol;
pub mod server;

#[cfg(feature = "tokio")]
pub use async_client::{AsyncClient, AsyncClientOptions, FrameObserved, FrameObserver};
pub use client::{Balances, Client, ClientError, ClientOptions, Created, Reply};
pub use cluster_client::ClusterClient;
pub use protocol::{
    check_reply, check_request, FrameError, FrameHeader, FrameOperation, Request, RequestScratch, ServerInfo, Status,
    BODY_SIZE_MAX_BYTES, EVENT_COUNT_MAX, FLAG_TIMESTAMP, FLAG_TRACED, HEADER_SIZE_BYTES, TRACED_BODY_SIZE_MAX_BYTES,
};
