//! The `walletd` binary's library half: what the binary wires together, shared with the
//! benchmarks and the end-to-end tests.

pub mod memory;
