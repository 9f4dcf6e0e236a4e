//! Names and numbers every part of a simulated cluster agrees on.

/// Simulated wall time starts here (2025-11-28T00:00:00Z) so timestamps look real.
pub const SIM_EPOCH_MS: u64 = 1_764_288_000_000;

/// Port every simulated node listens on, for peers and clients alike.
pub const PEER_PORT: u16 = 7401;

/// The turmoil host name of node `id`.
pub fn node_name(id: u64) -> String {
    format!("node{id}")
}
