//! The cluster tools: `walletd cluster init` (once, explicitly, for a new cluster) and
//! `walletd cluster status`, each one request to one member's Raft port.

use crate::error::ClusterError;
use crate::network::{tool_request, PeerReply, PeerRequest, Status};
use crate::types::{Member, NodeId};
use std::collections::BTreeMap;
use std::time::Duration;

const TOOL_TIMEOUT: Duration = Duration::from_secs(10);

/// Parses `ID=RAFT_ADDR/CLIENT_ADDR`, e.g. `1=127.0.0.1:7101/127.0.0.1:4101`.
pub fn member_parse(text: &str) -> Result<(NodeId, Member), String> {
    let usage = || format!("{text:?}: a member is ID=RAFT_ADDR/CLIENT_ADDR, e.g. 1=127.0.0.1:7101/127.0.0.1:4101");
    let (id, addrs) = text.split_once('=').ok_or_else(usage)?;
    let (raft_addr, client_addr) = addrs.split_once('/').ok_or_else(usage)?;
    let id: NodeId = id.trim().parse().map_err(|_| usage())?;
    for addr in [raft_addr, client_addr] {
        addr.parse::<std::net::SocketAddr>()
            .map_err(|error| format!("{text:?}: {addr:?} is not HOST:PORT ({error})"))?;
    }
    Ok((id, Member { raft_addr: raft_addr.to_string(), client_addr: client_addr.to_string() }))
}

/// Initialises a new cluster of `members` through the member at `raft_addr` (one of them).
pub fn init(raft_addr: &str, members: BTreeMap<NodeId, Member>) -> Result<(), ClusterError> {
    if members.is_empty() {
        return Err(ClusterError::Refused("a cluster needs at least one member".into()));
    }
    if !members.values().any(|member| member.raft_addr == raft_addr) {
        return Err(ClusterError::Refused(format!("{raft_addr} is not the Raft address of any member given")));
    }
    let io = |source| ClusterError::Io { what: format!("send init to {raft_addr}"), source };
    match tool_request(raft_addr, &PeerRequest::Init(members), TOOL_TIMEOUT).map_err(io)? {
        PeerReply::Init(Ok(())) => Ok(()),
        PeerReply::Init(Err(reason)) => Err(ClusterError::Refused(format!("{raft_addr} refused init: {reason}"))),
        other => Err(ClusterError::Refused(format!("{raft_addr} answered init with {other:?}"))),
    }
}

/// What the member at `raft_addr` says about itself and its view of the cluster.
pub fn status(raft_addr: &str) -> Result<Status, ClusterError> {
    let io = |source| ClusterError::Io { what: format!("ask {raft_addr} for its status"), source };
    match tool_request(raft_addr, &PeerRequest::Status, TOOL_TIMEOUT).map_err(io)? {
        PeerReply::Status(status) => Ok(status),
        other => Err(ClusterError::Refused(format!("{raft_addr} answered status with {other:?}"))),
    }
}
