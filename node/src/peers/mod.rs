//! Node to node: mutual TLS against the cluster CA ([`tls`]), one QUIC connection per peer
//! carrying every RPC with a deadline ([`transport`]), and the RPC messages ([`rpc`]).

pub mod rpc;
pub mod tls;
pub mod transport;
