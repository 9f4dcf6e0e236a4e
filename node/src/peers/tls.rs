//! Inter-node mutual TLS: the cluster CA, node certificates, and the rustls/quinn configs.
//!
//! Keys are Ed25519 derived from seeds the caller draws from [`crate::env::Entropy`]: Ed25519
//! signatures are deterministic (ECDSA's are not, and their length varies), and rcgen's default
//! validity dates are fixed, so a seeded simulation produces the same certificates every run.
//! Each node certificate names `node-<id>`; a client checks that name, so a connection to node 3
//! is refused unless the peer holds node 3's certificate from this cluster's CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ED25519};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};

/// Certificate files for inter-node mutual TLS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The cluster CA certificate (PEM); peers must present certificates it signed.
    pub ca_cert: PathBuf,
    /// This node's certificate (PEM), signed by the CA, naming `node-<id>`.
    pub cert: PathBuf,
    /// This node's private key (PEM).
    pub key: PathBuf,
}

/// ALPN of inter-node connections.
pub const PEER_ALPN: &[u8] = b"natter-peer/1";
/// ALPN of client sessions (DESIGN §5), served on the same endpoint.
pub const CLIENT_ALPN: &[u8] = b"natter/1";
/// Names besides `node-<id>` a node certificate carries, so local clients can verify a node
/// they reach on loopback.
pub const LOCAL_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// Why TLS material could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Generating a certificate failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A PEM file did not hold what was expected.
    #[error("{path}: expected {expected}")]
    Pem {
        /// The file.
        path: String,
        /// What it should hold.
        expected: &'static str,
    },
    /// rustls refused the material.
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// quinn refused the rustls config.
    #[error("quic tls configuration: {0}")]
    Quic(String),
    /// The client certificate verifier could not be built.
    #[error("client verifier: {0}")]
    Verifier(String),
}

/// A PEM certificate and its PEM private key.
#[derive(Debug, Clone)]
pub struct CertifiedKey {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// PKCS#8 private key, PEM.
    pub key_pem: String,
}

/// An Ed25519 key pair from a 32-byte seed.
fn key_from_seed(seed: [u8; 32]) -> Result<KeyPair, TlsError> {
    // PKCS#8 v1 wrapping of an Ed25519 private key (RFC 8410): fixed prefix, then the seed.
    const PREFIX: [u8; 16] =
        [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    let mut der = PREFIX.to_vec();
    der.extend_from_slice(&seed);
    Ok(KeyPair::from_pkcs8_der_and_sign_algo(&PrivatePkcs8KeyDer::from(der), &PKCS_ED25519)?)
}

fn seeded_key(rng: &mut impl RngCore) -> Result<KeyPair, TlsError> {
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    key_from_seed(seed)
}

fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, "natter cluster CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(params)
}

/// The name a node's certificate carries and its peers check.
pub fn node_name(node_id: u64) -> String {
    format!("node-{node_id}")
}

/// A new cluster CA.
pub fn generate_ca(rng: &mut impl RngCore) -> Result<CertifiedKey, TlsError> {
    let key = seeded_key(rng)?;
    let cert = ca_params()?.self_signed(&key)?;
    Ok(CertifiedKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// A certificate for `node_id`, signed by the CA whose private key is `ca_key_pem`.
pub fn generate_node(ca_key_pem: &str, node_id: u64, rng: &mut impl RngCore) -> Result<CertifiedKey, TlsError> {
    let ca_key = KeyPair::from_pem(ca_key_pem)?;
    let issuer = Issuer::new(ca_params()?, ca_key);
    let key = seeded_key(rng)?;
    let mut names = vec![node_name(node_id)];
    names.extend(LOCAL_NAMES.iter().map(|name| name.to_string()));
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name.push(DnType::CommonName, node_name(node_id));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer)?;
    Ok(CertifiedKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

fn write(path: &Path, text: &str) -> Result<(), TlsError> {
    let io = |source| TlsError::Io { path: path.display().to_string(), source };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::write(path, text).map_err(io)
}

/// Writes a CA (`ca.pem`, `ca.key`) and a certificate per node (`node-N.pem`, `node-N.key`)
/// into `dir`.
pub fn write_cluster_certs(dir: &Path, node_ids: &[u64], rng: &mut impl RngCore) -> Result<(), TlsError> {
    let ca = generate_ca(rng)?;
    write(&dir.join("ca.pem"), &ca.cert_pem)?;
    write(&dir.join("ca.key"), &ca.key_pem)?;
    for &id in node_ids {
        let node = generate_node(&ca.key_pem, id, rng)?;
        write(&dir.join(format!("{}.pem", node_name(id))), &node.cert_pem)?;
        write(&dir.join(format!("{}.key", node_name(id))), &node.key_pem)?;
    }
    Ok(())
}

/// For `--dev`: creates the CA and this node's certificate where `files` says, unless all
/// three files already exist.
pub fn ensure_dev_certs(files: &TlsFiles, node_id: u64, rng: &mut impl RngCore) -> Result<(), TlsError> {
    if files.ca_cert.exists() && files.cert.exists() && files.key.exists() {
        return Ok(());
    }
    let ca = generate_ca(rng)?;
    let node = generate_node(&ca.key_pem, node_id, rng)?;
    write(&files.ca_cert, &ca.cert_pem)?;
    write(&files.ca_cert.with_extension("key"), &ca.key_pem)?;
    write(&files.cert, &node.cert_pem)?;
    write(&files.key, &node.key_pem)
}

/// Loaded TLS material of one node.
#[derive(Debug, Clone)]
pub struct PeerTls {
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key_der: Vec<u8>,
}

impl PeerTls {
    /// Reads the files named by the config.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Io { path: path.display().to_string(), source })
        };
        Self::from_pem(&read(&files.ca_cert)?, &read(&files.cert)?, &read(&files.key)?)
    }

    /// Builds from PEM bytes.
    pub fn from_pem(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        let pem_error = |expected| TlsError::Pem { path: "pem".into(), expected };
        let ca = CertificateDer::from_pem_slice(ca_pem).map_err(|_| pem_error("a CA certificate"))?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|_| pem_error("certificates"))?;
        if chain.is_empty() {
            return Err(pem_error("at least one certificate"));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| pem_error("a private key"))?;
        Ok(Self { ca, chain, key_der: key.secret_der().to_vec() })
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn roots(&self) -> Result<Arc<rustls::RootCertStore>, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone())?;
        Ok(Arc::new(roots))
    }

    /// The QUIC server config: TLS 1.3, ALPNs for peers and clients. A certificate a client
    /// presents must chain to the cluster CA; clients may present none, and the transport
    /// refuses a peer (`natter-peer/1`) connection that presented none.
    pub fn server_config(&self) -> Result<quinn::ServerConfig, TlsError> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(self.roots()?, Self::provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let mut crypto = rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key())?;
        crypto.alpn_protocols = vec![PEER_ALPN.to_vec(), CLIENT_ALPN.to_vec()];
        let crypto =
            quinn::crypto::rustls::QuicServerConfig::try_from(crypto).map_err(|e| TlsError::Quic(e.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(Arc::new(transport_config(Side::Server)));
        Ok(config)
    }

    /// The QUIC client config: presents this node's certificate, trusts only the cluster CA.
    pub fn client_config(&self) -> Result<quinn::ClientConfig, TlsError> {
        let mut crypto = rustls::ClientConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain.clone(), self.key())?;
        crypto.alpn_protocols = vec![PEER_ALPN.to_vec()];
        let crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(crypto).map_err(|e| TlsError::Quic(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(transport_config(Side::Client)));
        Ok(config)
    }
}

/// Most concurrent RPC streams one peer may open (every shard group's RPCs share a connection).
/// The transport raises an inbound connection to this once it is known to be a peer's.
pub const PEER_STREAMS_MAX: u32 = 4096;
/// Streams a client connection may open: its one session stream. Every connection starts with
/// this limit (quinn allocates state for every stream the limit allows, ~90 bytes each, so
/// 4096 would cost every idle client session ~380 KiB).
pub const CLIENT_STREAMS_MAX: u32 = 1;

/// Which end of a connection a transport config is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Accepting: peers' inbound connections and every client session.
    Server,
    /// Dialling a peer.
    Client,
}

fn transport_config(side: Side) -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    let streams = match side {
        Side::Server => CLIENT_STREAMS_MAX,
        Side::Client => PEER_STREAMS_MAX,
    };
    transport.max_concurrent_bidi_streams(streams.into());
    transport.max_concurrent_uni_streams(0u32.into());
    // A peer that died (SIGKILL, power loss) sends no close; its connection is noticed dead
    // only by the idle timeout. Keep-alives every 500 ms let a 3 s timeout detect that quickly
    // without tearing down live but quiet connections. Only the dialling side sends them: a
    // ping is acknowledged, which keeps both ends' idle timers fresh, so the accepting side
    // need not ping too. That matters for client sessions, which share the server config:
    // each natter-client pings every second, and thousands of idle sessions would otherwise
    // cost the node a ping each every 500 ms on top.
    if side == Side::Client {
        transport.keep_alive_interval(Some(Duration::from_millis(500)));
    }
    transport.max_idle_timeout(Some(Duration::from_secs(3).try_into().expect("valid idle timeout")));
    transport
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn seeded_certificates_are_reproducible() {
        let make = || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(5);
            let ca = generate_ca(&mut rng).unwrap();
            let node = generate_node(&ca.key_pem, 3, &mut rng).unwrap();
            (ca.cert_pem, node.cert_pem, node.key_pem)
        };
        assert_eq!(make(), make());
    }

    #[test]
    fn generated_material_loads() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let ca = generate_ca(&mut rng).unwrap();
        let node = generate_node(&ca.key_pem, 1, &mut rng).unwrap();
        let tls = PeerTls::from_pem(ca.cert_pem.as_bytes(), node.cert_pem.as_bytes(), node.key_pem.as_bytes()).unwrap();
        tls.server_config().unwrap();
        tls.client_config().unwrap();
        assert!(PeerTls::from_pem(b"junk", node.cert_pem.as_bytes(), node.key_pem.as_bytes()).is_err());
    }
}
