//! When this member may stand for election.
//!
//! openraft 0.9 has no pre-vote: a member that stands raises the term, and a leader that sees a
//! higher term steps down, even when the candidate cannot win. A member misses the leader for
//! the lease plus its election timeout (300–400 ms with the defaults) when it is busy: fsyncing
//! large AppendEntries while it catches up, or installing a snapshot (the leader's replication
//! to it waits for the install). Standing then deposes a healthy leader, and since the member's
//! log is behind it loses, stands again with a higher term, and so on: an election storm, seen
//! after every catch-up from the log in `scripts/cluster-bench` runs with `LAGGING=1`.
//!
//! A member whose Raft log is behind the commit index the leader last sent it cannot win: a
//! majority holds a longer log, and each of them refuses its vote. So it does not stand while
//! it is behind, nor while it installs a snapshot; it stands again only after `quiet` (a few
//! election timeouts) with neither, by which time the leader's heartbeats have reset its timer.
//! This costs no availability: whenever a majority is up, one of the members holding the
//! commit index stands. And a hold for being behind lapses after `2 × quiet` without another
//! AppendEntries (the leader that said so is gone, and what it said is stale), so members that
//! all last heard themselves behind still elect someone, only later.

use crate::types::Raft;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

pub struct Elections {
    raft: OnceLock<Raft>,
    quiet: Duration,
    state: Mutex<Holds>,
}

#[derive(Default)]
struct Holds {
    /// The Raft log ends before the commit index the leader last sent.
    behind: bool,
    /// A snapshot install is running.
    installing: bool,
    /// Elections are off (this module turned them off and has not turned them on again).
    off: bool,
    /// Counts changes, so that a delayed turning-on that a newer hold overtook does nothing.
    generation: u64,
}

impl Elections {
    pub fn new(quiet: Duration) -> Arc<Elections> {
        Arc::new(Elections { raft: OnceLock::new(), quiet, state: Mutex::new(Holds::default()) })
    }

    /// Gives the running Raft (on its runtime). A member that starts counts as behind until the
    /// first AppendEntries says otherwise (or the hold lapses): restarted after a while, it
    /// would otherwise stand before the leader reaches it. `walletd cluster init` elects the
    /// first leader directly, not through the election timer this holds back.
    pub fn raft_set(self: &Arc<Self>, raft: Raft) {
        let _ = self.raft.set(raft);
        self.behind_set(true);
    }

    /// After an AppendEntries: whether this member's log still ends before the leader's commit.
    pub fn behind_set(self: &Arc<Self>, behind: bool) {
        let generation = self.update(|holds| holds.behind = behind);
        if behind {
            let elections = Arc::clone(self);
            tokio::spawn(async move {
                tokio::time::sleep(elections.quiet * 2).await;
                let unchanged = elections.state.lock().expect("the elections lock").generation == generation;
                if unchanged {
                    elections.update(|holds| holds.behind = false);
                }
            });
        }
    }

    pub fn installing_set(self: &Arc<Self>, installing: bool) {
        self.update(|holds| holds.installing = installing);
    }

    /// Applies `change` and turns elections off, or on after the quiet period, to match;
    /// returns the generation after it.
    fn update(self: &Arc<Self>, change: impl FnOnce(&mut Holds)) -> u64 {
        let Some(raft) = self.raft.get() else {
            let mut holds = self.state.lock().expect("the elections lock");
            change(&mut holds);
            holds.generation += 1;
            return holds.generation;
        };
        let mut holds = self.state.lock().expect("the elections lock");
        let (behind, installing) = (holds.behind, holds.installing);
        change(&mut holds);
        let held = holds.behind || holds.installing;
        if held {
            if !holds.off {
                raft.runtime_config().elect(false);
                holds.off = true;
            }
            holds.generation += 1;
        } else if holds.off && (behind || installing) {
            // The last hold just cleared: elections come back after the quiet period, unless a
            // hold returns meanwhile.
            holds.generation += 1;
            let generation = holds.generation;
            let elections = Arc::clone(self);
            tokio::spawn(async move {
                tokio::time::sleep(elections.quiet).await;
                let mut holds = elections.state.lock().expect("the elections lock");
                if holds.generation == generation && holds.off {
                    if let Some(raft) = elections.raft.get() {
                        raft.runtime_config().elect(true);
                    }
                    holds.off = false;
                }
            });
        }
        holds.generation
    }
}
