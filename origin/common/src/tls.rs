//! TLS for the relay between origin and edges: TLS 1.3 with mutual authentication, rustls with
//! the ring provider, certificates from PEM files, reloadable.
//!
//! - The origin ([`relay_server_config`]) presents its certificate and accepts only dialers
//!   whose certificate chains to the relay client CA; a dialer without one never completes the
//!   handshake, so it reads nothing, not even an answer to its HELLO.
//! - The edge ([`relay_client_config`]) accepts only an origin whose certificate chains to the
//!   origin CA and names the host it dialled, and presents its own certificate.
//!
//! Both configs live in a [`Reloadable`]: `SIGHUP` loads the files again for new links; links up
//! stay on the certificates they were made with.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why a TLS setting could not be loaded: the file and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct TlsFileError {
    /// The file (or setting) at fault.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

fn err(p: &Path, m: impl std::fmt::Display) -> TlsFileError {
    TlsFileError {
        path: p.display().to_string(),
        message: m.to_string(),
    }
}

/// The ring provider every Cue TLS config uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A PEM certificate chain (leaf first).
pub fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(path, e))?;
    if chain.is_empty() {
        return Err(err(path, "no CERTIFICATE block"));
    }
    Ok(chain)
}

/// A PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| err(path, e))
}

/// The certificates of a PEM CA file as trust roots.
pub fn read_roots(path: &Path) -> Result<Arc<rustls::RootCertStore>, TlsFileError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in read_chain(path)? {
        roots.add(c).map_err(|e| err(path, e))?;
    }
    Ok(Arc::new(roots))
}

/// The files of one side of the relay's TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayTlsFiles {
    /// This side's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA the other side's certificate must chain to (PEM).
    pub ca: PathBuf,
}

/// The origin's relay listener config: TLS 1.3, the origin's certificate, client certificates
/// required and checked against `files.ca`.
pub fn relay_server_config(
    files: &RelayTlsFiles,
) -> Result<Arc<rustls::ServerConfig>, TlsFileError> {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        read_roots(&files.ca)?,
        provider(),
    )
    .build()
    .map_err(|e| err(&files.ca, e))?;
    let c = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| err(&files.cert, e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(read_chain(&files.cert)?, read_key(&files.key)?)
        .map_err(|e| err(&files.key, e))?;
    Ok(Arc::new(c))
}

/// The edge's relay dialler config: TLS 1.3, origins' certificates checked against `files.ca`
/// (and the name dialled), the edge's own certificate presented.
pub fn relay_client_config(
    files: &RelayTlsFiles,
) -> Result<Arc<rustls::ClientConfig>, TlsFileError> {
    let c = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| err(&files.cert, e))?
        .with_root_certificates(read_roots(&files.ca)?)
        .with_client_auth_cert(read_chain(&files.cert)?, read_key(&files.key)?)
        .map_err(|e| err(&files.key, e))?;
    Ok(Arc::new(c))
}

/// A config loaded from files, reloaded on demand (`SIGHUP`): readers get the current one, a
/// failed reload keeps the previous one and says why.
pub struct Reloadable<T> {
    current: RwLock<Arc<T>>,
    load: Box<dyn Fn() -> Result<Arc<T>, TlsFileError> + Send + Sync>,
}

impl<T> std::fmt::Debug for Reloadable<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reloadable(..)")
    }
}

impl<T> Reloadable<T> {
    /// Loads once now (an error is the caller's to report), keeping `load` for reloads.
    pub fn new(
        load: impl Fn() -> Result<Arc<T>, TlsFileError> + Send + Sync + 'static,
    ) -> Result<Self, TlsFileError> {
        let first = load()?;
        Ok(Self {
            current: RwLock::new(first),
            load: Box::new(load),
        })
    }

    /// The config in force.
    pub fn get(&self) -> Arc<T> {
        self.current.read().expect("tls config lock").clone()
    }

    /// Loads the files again; on error the config in force stays.
    pub fn reload(&self) -> Result<(), TlsFileError> {
        let next = (self.load)()?;
        *self.current.write().expect("tls config lock") = next;
        Ok(())
    }
}

/// The host part of a `HOST:PORT` relay address as the name a certificate must carry: a DNS
/// name, or an IP address (brackets removed).
pub fn server_name(addr: &str) -> Result<rustls::pki_types::ServerName<'static>, String> {
    let (host, _) = crate::config::host_port(addr)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("'{addr}': {host} is not a name a certificate can carry: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_from_addresses() {
        assert!(matches!(
            server_name("origin-a.example:7001").unwrap(),
            rustls::pki_types::ServerName::DnsName(_)
        ));
        assert!(matches!(
            server_name("127.0.0.1:7001").unwrap(),
            rustls::pki_types::ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]:7001").unwrap(),
            rustls::pki_types::ServerName::IpAddress(_)
        ));
        assert!(server_name("nope").is_err());
    }

    #[test]
    fn missing_and_empty_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = read_chain(&empty).unwrap_err();
        assert_eq!(e.path, empty.display().to_string());
        assert!(e.message.contains("no CERTIFICATE"), "{e}");
        let e = read_key(&dir.path().join("missing.pem")).unwrap_err();
        assert!(e.path.ends_with("missing.pem"), "{e}");
    }
}
