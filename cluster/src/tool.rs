//! The cluster tools: `walletd cluster init` (once, explicitly, for a new cluster),
//! `walletd cluster status`, and the membership changes `walletd cluster add` and `remove`,
//! each a request to one member's Raft port (a membership change follows the member's answer
//! to the leader).

use crate::error::ClusterError;
use crate::network::{tool_request, MembershipRefusal, PeerReply, PeerRequest, Status, MEMBER_CATCH_UP_TIMEOUT};
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

/// Adds a new member through the member at `raft_addr` (any member: the request follows to the
/// leader). The new member must already run (`walletd serve --cluster` on an empty data
/// directory, with its node id); it catches up from the log as a learner, then becomes a voter.
/// Returns the voters after the change.
pub fn member_add(raft_addr: &str, id: NodeId, member: Member) -> Result<BTreeMap<NodeId, Member>, ClusterError> {
    membership_change(raft_addr, &PeerRequest::MemberAdd(id, member), MEMBER_CATCH_UP_TIMEOUT + TOOL_TIMEOUT)
}

/// Removes the voter `id` through the member at `raft_addr` (following to the leader).
/// Returns the voters after the change.
pub fn member_remove(raft_addr: &str, id: NodeId) -> Result<BTreeMap<NodeId, Member>, ClusterError> {
    membership_change(raft_addr, &PeerRequest::MemberRemove(id), TOOL_TIMEOUT)
}

/// Redirects followed at most: a leader changing under the tool more often than this is an
/// election storm, reported rather than chased.
const REDIRECTS_MAX: usize = 3;

fn membership_change(
    raft_addr: &str,
    request: &PeerRequest,
    timeout: Duration,
) -> Result<BTreeMap<NodeId, Member>, ClusterError> {
    let mut addr = raft_addr.to_string();
    for _ in 0..=REDIRECTS_MAX {
        let io = |source| ClusterError::Io { what: format!("send the membership change to {addr}"), source };
        match tool_request(&addr, request, timeout).map_err(io)? {
            PeerReply::Membership(Ok(voters)) => return Ok(voters),
            PeerReply::Membership(Err(MembershipRefusal::NotLeader(Some((_, leader))))) if leader.raft_addr != addr => {
                addr = leader.raft_addr;
            }
            PeerReply::Membership(Err(MembershipRefusal::NotLeader(_))) => {
                return Err(ClusterError::Refused(format!(
                    "{addr} is not the leader and knows none: wait for an election (`walletd cluster status`) and retry"
                )))
            }
            PeerReply::Membership(Err(MembershipRefusal::Refused(reason))) => {
                return Err(ClusterError::Refused(format!("{addr} refused the membership change: {reason}")))
            }
            other => {
                return Err(ClusterError::Refused(format!("{addr} answered the membership change with {other:?}")))
            }
        }
    }
    Err(ClusterError::Refused(format!("the leader changed {REDIRECTS_MAX} times during the membership change: retry")))
}
