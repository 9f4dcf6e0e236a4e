//! Inter-node mutual TLS: a node holding a certificate from another CA is refused in both
//! directions, while a certificate from the cluster CA is accepted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use natter_node::env::NodeEnv;
use natter_node::rpc::{PeerRequest, PeerResponse};
use natter_node::tls::{generate_ca, generate_node, PeerTls};

use natter_node::transport::{CallError, PeerHandler, Transport};
use natter_raft::placement::ShardId;
use natter_raft::types::Runtime;
use rand::SeedableRng;
use rustls::pki_types::pem::PemObject;

/// Answers every request with `UnknownShard`: enough to prove a request got through.
struct Nobody;

impl PeerHandler for Nobody {
    fn handle(&self, _request: PeerRequest, _snapshot: Vec<u8>) -> BoxFuture<'static, PeerResponse> {
        Box::pin(async { PeerResponse::UnknownShard })
    }
}

fn ca_pem(ca_seed: u64) -> (String, String) {
    let ca = generate_ca(&mut rand::rngs::StdRng::seed_from_u64(ca_seed)).unwrap();
    (ca.cert_pem, ca.key_pem)
}

/// TLS for `node` with a certificate signed by CA `signer`, trusting CA `trusted`.
fn tls_signed_by(signer: u64, trusted: u64, node: u64) -> PeerTls {
    let (_, signer_key) = ca_pem(signer);
    let (trusted_cert, _) = ca_pem(trusted);
    let mut node_rng = rand::rngs::StdRng::seed_from_u64(signer * 100 + node);
    let cert = generate_node(&signer_key, node, &mut node_rng).unwrap();
    PeerTls::from_pem(trusted_cert.as_bytes(), cert.cert_pem.as_bytes(), cert.key_pem.as_bytes()).unwrap()
}

fn tls(ca_seed: u64, node: u64) -> PeerTls {
    tls_signed_by(ca_seed, ca_seed, node)
}

async fn transport(tls: &PeerTls, peers: BTreeMap<u64, SocketAddr>) -> Arc<Transport> {
    let env = NodeEnv::production(PathBuf::from("/nonexistent"));
    let transport = Transport::bind(&env, "127.0.0.1:0".parse().unwrap(), tls, peers).await.unwrap();
    transport.serve(Arc::new(Nobody));
    transport
}

async fn ping(from: &Arc<Transport>, to: u64) -> Result<PeerResponse, CallError> {
    from.call(to, &PeerRequest::ReadIndex { shard: ShardId(0) }, None, Duration::from_secs(3)).await
}

/// Dials `addr` on the peer ALPN trusting the cluster CA but presenting no certificate, and
/// tries one RPC.
async fn anonymous_peer_call(addr: SocketAddr) -> Result<PeerResponse, String> {
    let (ca_cert, _) = ca_pem(1);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_slice(ca_cert.as_bytes()).unwrap()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    crypto.alpn_protocols = vec![natter_node::tls::PEER_ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let attempt = async {
        let connection = endpoint
            .connect_with(quinn::ClientConfig::new(Arc::new(crypto)), addr, "node-1")
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
        let request = PeerRequest::ReadIndex { shard: ShardId(0) };
        natter_node::rpc::write_frame(&mut send, &request).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        natter_node::rpc::read_frame::<PeerResponse>(&mut recv).await.map_err(|e| e.to_string())
    };
    tokio::time::timeout(Duration::from_secs(3), attempt).await.map_err(|_| "timed out".to_string())?
}

#[test]
fn a_certificate_from_another_ca_is_refused() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(Runtime::scope(3, async {
        const CLUSTER_CA: u64 = 1;
        const OTHER_CA: u64 = 2;
        let node_1 = transport(&tls(CLUSTER_CA, 1), BTreeMap::new()).await;
        let node_1_addr = node_1.local_addr().unwrap();

        // A genuine node 2 gets through.
        let genuine = transport(&tls(CLUSTER_CA, 2), BTreeMap::from([(1, node_1_addr)])).await;
        assert!(matches!(ping(&genuine, 1).await, Ok(PeerResponse::UnknownShard)), "genuine peer must be served");

        // An impostor node 2 whose certificate another CA signed is refused by node 1 (the
        // impostor trusts the cluster CA, so the refusal is node 1's) ...
        let impostor = transport(&tls_signed_by(OTHER_CA, CLUSTER_CA, 2), BTreeMap::from([(1, node_1_addr)])).await;
        let refused = ping(&impostor, 1).await;
        assert!(refused.is_err(), "node 1 served a peer whose certificate it did not sign: {refused:?}");

        // ... and node 1 refuses to talk to it when it is the one dialling.
        let impostor = transport(&tls(OTHER_CA, 2), BTreeMap::new()).await;
        let impostor_addr = impostor.local_addr().unwrap();
        let dialler = transport(&tls(CLUSTER_CA, 1), BTreeMap::from([(2, impostor_addr)])).await;
        let refused = ping(&dialler, 2).await;
        assert!(
            matches!(refused, Err(CallError::Unreachable { .. })),
            "node 1 accepted a server certificate from another CA: {refused:?}"
        );

        // A peer that presents no certificate at all (as clients may) is refused on the peer
        // ALPN: the handshake completes, the RPC does not.
        let refused = anonymous_peer_call(node_1_addr).await;
        assert!(refused.is_err(), "node 1 served a peer RPC without a certificate: {refused:?}");

        // A genuine certificate for the wrong node name is refused too: node 1 dials "node 2"
        // but finds node 3's certificate.
        let wrong_name = transport(&tls(CLUSTER_CA, 3), BTreeMap::new()).await;
        let dialler = transport(&tls(CLUSTER_CA, 1), BTreeMap::from([(2, wrong_name.local_addr().unwrap())])).await;
        let refused = ping(&dialler, 2).await;
        assert!(matches!(refused, Err(CallError::Unreachable { .. })), "wrong node name accepted: {refused:?}");
    }));
}
