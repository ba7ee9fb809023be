//! `walletd serve`: the node behind the gateway. The gateway's connection threads are the
//! receive stage; checked requests go into the pipeline's channel (blocking when full, so the
//! sockets stop being read); the pipeline's replies are routed back to their connections. A
//! ping's reply carries the server's limits (`ServerInfo`: the idempotency window, events per
//! request, timeouts), known once recovery has read the data directory's pinned config.
//! Optionally a Prometheus endpoint serves `/metrics`.
//!
//! Shutdown (SIGINT/SIGTERM, or `RunningServer::shutdown`): stop accepting and stop reading
//! new frames; drain the pipeline, so every request already taken is journaled, fsynced,
//! applied and answered; let the snapshot replica catch up; close the connections.

use crate::error::NodeError;
use crate::metrics::Metrics;
use crate::node::{Node, NodeOptions, Started};
use crate::pipeline::{Reply, ReplyRoute, Request};
use crossbeam_channel::Sender;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use walletd_gateway::protocol::{FrameHeader, FrameOperation, Status, FLAG_TIMESTAMP, SERVER_INFO_SIZE_BYTES};
use walletd_gateway::server::{
    serve, server_info, Acceptor, Connections, EngineStopped, ServerOptions, ServerRequest, Submit,
};
use walletd_replay::data_dir::DataDir;

#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub data_dir: DataDir,
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub node: NodeOptions,
    pub server: ServerOptions,
}

/// A server running in this process.
pub struct RunningServer {
    pub local_addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub started: Started,
    node: Node,
    connections: Arc<Connections>,
    /// Stops the metrics endpoint.
    stop: Arc<AtomicBool>,
    acceptor: Acceptor,
}

/// The pipeline as the gateway's engine.
struct Engine {
    requests: Sender<Request>,
}

impl Submit for Engine {
    fn submit(&self, request: ServerRequest) -> Result<(), EngineStopped> {
        let request = Request {
            connection: request.connection,
            request_id: request.request_id,
            client_id: request.client_id,
            operation: request.operation,
            event_count: request.event_count,
            command: request.command,
            timestamp_reply: request.timestamp_reply,
        };
        self.requests.send(request).map_err(|_| EngineStopped)
    }
}

/// Recovers the node, starts the pipeline and listens. Returns once it is serving.
pub fn serve_start(options: ServeOptions) -> Result<RunningServer, NodeError> {
    let listener = TcpListener::bind(options.addr)
        .map_err(|source| NodeError::Io { path: format!("listen on {}", options.addr).into(), source })?;
    let local_addr = listener.local_addr().map_err(|source| NodeError::Io { path: "listener".into(), source })?;
    let connections = Arc::new(Connections::default());
    let ping_body = Arc::new(OnceLock::new());
    let route = reply_route(Arc::clone(&connections), Arc::clone(&ping_body));
    let node = Node::start(&options.data_dir, options.node.clone(), route)?;
    let mut server_options = options.server.clone();
    server_options.event_count_max = server_options.event_count_max.min(node.started.config.batch_events_max);
    // Set before the acceptor starts, so no ping can be answered without it.
    let info = server_info(&node.started.config, &server_options);
    assert!(ping_body.set(info.encode()).is_ok(), "the ping body is set once");
    let engine: Arc<dyn Submit> = Arc::new(Engine { requests: node.pipeline.requests() });
    let stop = Arc::new(AtomicBool::new(false));
    let acceptor = serve(listener, server_options, engine, Arc::clone(&connections))
        .map_err(|source| NodeError::Io { path: "accept thread".into(), source })?;
    let metrics_addr = match options.metrics_addr {
        Some(addr) => {
            Some(metrics_serve(addr, Arc::clone(&node.pipeline.metrics), Arc::clone(&connections), Arc::clone(&stop))?)
        }
        None => None,
    };
    Ok(RunningServer { local_addr, metrics_addr, started: node.started.clone(), node, connections, stop, acceptor })
}

impl RunningServer {
    /// Stops taking work, finishes and answers everything taken, and closes.
    pub fn shutdown(self) {
        self.stop.store(true, Ordering::Release);
        self.acceptor.stop();
        self.node.shutdown();
        self.connections.close_all();
    }
}

/// Replies from the pipeline, framed and routed to their connections; a ping's carries the
/// server info.
fn reply_route(connections: Arc<Connections>, ping_body: Arc<OnceLock<[u8; SERVER_INFO_SIZE_BYTES]>>) -> ReplyRoute {
    Arc::new(move |reply: &Reply<'_>| {
        let request = FrameHeader {
            operation: reply.operation.code(),
            request_id: reply.request_id,
            client_id: reply.client_id,
            ..FrameHeader::default()
        };
        let op = if is_mutating(reply.operation) { reply.op } else { 0 };
        let mut header = FrameHeader::reply_to(&request, Status::Ok, op, reply.record_count);
        if reply.timestamp_reply {
            header.flags |= FLAG_TIMESTAMP;
        }
        let body = match reply.operation {
            FrameOperation::Ping => {
                assert!(reply.body.is_empty() && reply.record_count == 0, "the pipeline answers a ping empty");
                &ping_body.get().expect("the ping body is set before the gateway accepts")[..]
            }
            _ => reply.body,
        };
        connections.reply(reply.connection, &header, body);
    })
}

fn is_mutating(operation: FrameOperation) -> bool {
    match operation {
        FrameOperation::Ledger(operation) => operation.is_mutating(),
        FrameOperation::Snapshot => true,
        FrameOperation::Ping => false,
    }
}

/// Serves `GET /metrics` in the Prometheus text format on `addr`; returns the bound address.
fn metrics_serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    connections: Arc<Connections>,
    stop: Arc<AtomicBool>,
) -> Result<SocketAddr, NodeError> {
    metrics_http_serve(addr, stop, move || {
        let counters = &connections.counters;
        metrics.connections_open.store(counters.connections_open.load(Ordering::Relaxed), Ordering::Relaxed);
        metrics.connections_refused.store(counters.connections_refused.load(Ordering::Relaxed), Ordering::Relaxed);
        metrics.frame_errors.store(counters.frame_errors.load(Ordering::Relaxed), Ordering::Relaxed);
        metrics.render()
    })
}

/// A minimal HTTP endpoint on `addr` answering `GET /metrics` with `render()` until `stop` is
/// set; returns the bound address.
pub fn metrics_http_serve(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    render: impl Fn() -> String + Send + 'static,
) -> Result<SocketAddr, NodeError> {
    let io = |source| NodeError::Io { path: format!("metrics listener {addr}").into(), source };
    let listener = TcpListener::bind(addr).map_err(io)?;
    let local = listener.local_addr().map_err(io)?;
    listener.set_nonblocking(true).map_err(io)?;
    std::thread::Builder::new()
        .name("metrics".to_string())
        .spawn(move || {
            while !stop.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((stream, _)) => metrics_answer(stream, &render),
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
                }
            }
        })
        .map_err(|source| NodeError::Io { path: "metrics thread".into(), source })?;
    Ok(local)
}

fn metrics_answer(mut stream: std::net::TcpStream, render: &impl Fn() -> String) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(2)));
    let mut request_line = String::new();
    if BufReader::new(&stream).read_line(&mut request_line).is_err() {
        return;
    }
    let (status, body) = if request_line.starts_with("GET /metrics") {
        ("200 OK", render())
    } else {
        ("404 Not Found", "only /metrics is served here\n".to_string())
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// The server `walletd bench` starts when it names no `--addr`: the node in this process on a
/// fresh data directory, with real fsync, as `walletd serve` would run it.
pub fn bench_server_start(
    dir: &std::path::Path,
    accounts: u64,
) -> Result<walletd_benches::load::StartedServer, String> {
    let options = ServeOptions {
        data_dir: DataDir::new(dir),
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        metrics_addr: None,
        node: NodeOptions {
            config: crate::generate::config_for(accounts),
            segment_size_bytes: 256 << 20,
            pipeline: crate::pipeline::PipelineOptions::default(),
        },
        server: ServerOptions::default(),
    };
    let server = serve_start(options).map_err(|error| error.to_string())?;
    let addr = server.local_addr;
    Ok(walletd_benches::load::StartedServer { addr, stop: Box::new(move || server.shutdown()) })
}
