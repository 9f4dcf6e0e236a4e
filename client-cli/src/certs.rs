//! `natter dev certs`: a cluster CA and one certificate per node, for local clusters.
//!
//! The certificates come from [`natter_node::tls::write_cluster_certs`], the same code the
//! node's own `--dev` mode uses, so whatever the CLI writes is exactly what nodes load.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use natter_node::config::TlsFiles;
use natter_node::tls::node_name;
use rand::SeedableRng;

use crate::error::Error;

/// File name of the cluster CA certificate.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the cluster CA private key.
pub const CA_KEY_FILE: &str = "ca.key";
/// Most nodes one `natter dev certs` call makes certificates for.
pub const CERT_NODES_MAX: u64 = 256;

/// The TLS files of node `node_id` in a directory written by [`write_dev_certs`].
pub fn tls_files(dir: &Path, node_id: u64) -> TlsFiles {
    TlsFiles {
        ca_cert: dir.join(CA_CERT_FILE),
        cert: dir.join(format!("{}.pem", node_name(node_id))),
        key: dir.join(format!("{}.key", node_name(node_id))),
    }
}

/// Writes a new cluster CA and a certificate per node id into `dir` (created if missing),
/// keys readable by their owner only, and returns every file written, CA first.
///
/// Refuses when `dir` already holds a CA key, unless `force`: replacing the CA silently would
/// leave running nodes unable to talk to nodes started with the new certificates.
pub fn write_dev_certs(dir: &Path, node_ids: &[u64], force: bool) -> Result<Vec<PathBuf>, Error> {
    let ca_key = dir.join(CA_KEY_FILE);
    if ca_key.exists() && !force {
        return Err(Error::CaExists(ca_key));
    }
    std::fs::create_dir_all(dir).map_err(Error::io("cannot create", dir))?;
    // Keys must be unpredictable: seed from the OS, never from a fixed or time-based seed.
    let mut rng = rand::rngs::StdRng::from_os_rng();
    natter_node::tls::write_cluster_certs(dir, node_ids, &mut rng)?;
    let mut written = vec![dir.join(CA_CERT_FILE), ca_key];
    for &id in node_ids {
        let files = tls_files(dir, id);
        written.push(files.cert);
        written.push(files.key);
    }
    for key in written.iter().filter(|path| path.extension().is_some_and(|extension| extension == "key")) {
        std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600))
            .map_err(Error::io("cannot restrict permissions of", key))?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_loadable_certificates_with_private_keys() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_dev_certs(dir.path(), &[1, 2], false).unwrap();
        let names: Vec<String> =
            written.iter().map(|path| path.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["ca.pem", "ca.key", "node-1.pem", "node-1.key", "node-2.pem", "node-2.key"]);
        for id in [1, 2] {
            natter_node::tls::PeerTls::load(&tls_files(dir.path(), id)).unwrap().server_config().unwrap();
        }
        let mode = std::fs::metadata(dir.path().join("ca.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn refuses_to_replace_a_ca_without_force() {
        let dir = tempfile::tempdir().unwrap();
        write_dev_certs(dir.path(), &[1], false).unwrap();
        let before = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
        let error = write_dev_certs(dir.path(), &[1], false).unwrap_err();
        assert!(error.to_string().contains("pass --force"), "{error}");
        assert_eq!(std::fs::read_to_string(dir.path().join("ca.pem")).unwrap(), before);
        write_dev_certs(dir.path(), &[1], true).unwrap();
        assert_ne!(std::fs::read_to_string(dir.path().join("ca.pem")).unwrap(), before, "a new CA each time");
    }
}
