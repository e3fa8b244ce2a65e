//! The edge's TLS identity, shared by `wss` (TLS over TCP) and QUIC (TLS 1.3 inside QUIC):
//! rustls with the ring provider.
//!
//! The certificate comes from `--tls-cert`/`--tls-key` (PEM), or, with neither, is generated at
//! start (rcgen, self-signed for `localhost` and `127.0.0.1`); either way its SHA-256 fingerprint
//! (of the DER end-entity certificate) is logged, so a device or a test can trust it by
//! fingerprint. Both transports resolve the certificate through one [`CertStore`]; `SIGHUP`
//! calls [`CertStore::reload`], which swaps in the files' new contents for new handshakes
//! while established connections keep the keys they negotiated (nothing is dropped).
//!
//! The store is the one piece of state the shards share: read once per TLS handshake under an
//! `RwLock` (written only by a reload), never on the per-cue path.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// ALPN of the QUIC device protocol.
pub const QUIC_ALPN: &[u8] = b"cue/1";

/// Why the TLS identity could not be loaded. The operator's files are wrong: retrying without
/// fixing them does not help.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read or parsed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The key does not fit the certificate, or the provider refuses it.
    #[error("tls_key: {0}")]
    Key(String),
    /// Generating the self-signed certificate failed.
    #[error("self-signed certificate: {0}")]
    Generate(String),
    /// rustls or quinn refused the configuration.
    #[error("tls config: {0}")]
    Config(String),
}

/// Where the certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    /// PEM files: the chain (end entity first) and its private key.
    Files {
        /// Certificate chain.
        cert: PathBuf,
        /// Private key (PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
    },
    /// A self-signed certificate generated at start, for `localhost` and `127.0.0.1`.
    SelfSigned,
}

/// The certificate both transports serve, swappable at run time.
#[derive(Debug)]
pub struct CertStore {
    source: CertSource,
    current: RwLock<(Arc<CertifiedKey>, String)>,
    provider: Arc<CryptoProvider>,
}

impl CertStore {
    /// Loads (or generates) the certificate.
    pub fn new(source: CertSource) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let loaded = load(&source, &provider)?;
        Ok(Arc::new(Self {
            source,
            current: RwLock::new(loaded),
            provider,
        }))
    }

    /// SHA-256 of the DER end-entity certificate, lowercase hex.
    pub fn fingerprint(&self) -> String {
        self.current.read().expect("cert lock").1.clone()
    }

    /// Where the certificate comes from.
    pub fn source(&self) -> &CertSource {
        &self.source
    }

    /// Reads the files again and serves the new certificate to new handshakes; returns its
    /// fingerprint. On error the old certificate stays. A self-signed certificate is kept (a
    /// new one would only break devices that pinned it).
    pub fn reload(&self) -> Result<String, TlsError> {
        if self.source == CertSource::SelfSigned {
            return Ok(self.fingerprint());
        }
        let loaded = load(&self.source, &self.provider)?;
        let fp = loaded.1.clone();
        *self.current.write().expect("cert lock") = loaded;
        Ok(fp)
    }

    /// rustls settings for `wss`: TLS 1.2 and 1.3, ALPN `http/1.1`, no session tickets (a
    /// device reconnecting pays a full handshake; tickets would cost memory per device).
    pub fn wss_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut c = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        c.send_tls13_tickets = 0;
        Ok(Arc::new(c))
    }

    /// rustls settings for QUIC: TLS 1.3 only, ALPN `cue/1`, no 0-RTT, no tickets.
    pub fn quic_config(
        self: &Arc<Self>,
    ) -> Result<Arc<crate::quic::session::LeanServerConfig>, TlsError> {
        let mut c = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        c.alpn_protocols = vec![QUIC_ALPN.to_vec()];
        c.send_tls13_tickets = 0;
        c.max_early_data_size = 0;
        let q = crate::quic::session::LeanServerConfig::new(Arc::new(c))
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(Arc::new(q))
    }
}

#[derive(Debug)]
struct Resolver(Arc<CertStore>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current.read().ok()?.0.clone())
    }
}

/// SHA-256 of `der`, lowercase hex.
pub fn sha256_hex(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn load(
    source: &CertSource,
    provider: &CryptoProvider,
) -> Result<(Arc<CertifiedKey>, String), TlsError> {
    let (chain, key): (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) = match source {
        CertSource::SelfSigned => {
            let g = rcgen::generate_simple_self_signed(vec![
                "localhost".to_string(),
                "127.0.0.1".to_string(),
            ])
            .map_err(|e| TlsError::Generate(e.to_string()))?;
            let key = PrivatePkcs8KeyDer::from(g.key_pair.serialize_der());
            (vec![g.cert.der().clone()], key.into())
        }
        CertSource::Files { cert, key } => {
            let file_err = |p: &PathBuf, m: String| TlsError::File {
                path: p.display().to_string(),
                message: m,
            };
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| file_err(cert, e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| file_err(cert, e.to_string()))?;
            if chain.is_empty() {
                return Err(file_err(cert, "no CERTIFICATE block".into()));
            }
            let k = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e.to_string()))?;
            (chain, k)
        }
    };
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Key(e.to_string()))?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match()
        .map_err(|e| TlsError::Key(format!("does not match the certificate: {e}")))?;
    let fp = sha256_hex(ck.cert[0].as_ref());
    Ok((Arc::new(ck), fp))
}

/// How a device trusts an edge by certificate fingerprint (the self-signed certificate's
/// SHA-256 the edge logs, or any other): exactly the certificate whose DER hashes to it, with
/// handshake signatures still checked against its key. Used by the bench fleets and the tests.
#[derive(Debug)]
pub struct PinnedFingerprint {
    sha256: String,
    provider: Arc<CryptoProvider>,
}

impl PinnedFingerprint {
    /// A verifier for the lowercase or uppercase hex SHA-256 `sha256`.
    pub fn new(sha256: &str) -> Arc<Self> {
        Arc::new(Self {
            sha256: sha256.to_lowercase(),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        })
    }
}

impl rustls::client::danger::ServerCertVerifier for PinnedFingerprint {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if sha256_hex(end_entity) == self.sha256 {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "certificate fingerprint mismatch".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &std::path::Path, name: &str) -> (PathBuf, PathBuf, String) {
        let g = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, g.cert.pem()).unwrap();
        std::fs::write(&k, g.key_pair.serialize_pem()).unwrap();
        (c, k, sha256_hex(g.cert.der()))
    }

    #[test]
    fn pinned_fingerprint_accepts_only_its_certificate() {
        use rustls::client::danger::ServerCertVerifier;
        let a = rcgen::generate_simple_self_signed(vec!["a.test".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b.test".into()]).unwrap();
        let pin = PinnedFingerprint::new(&sha256_hex(a.cert.der()).to_uppercase());
        let check = |der: &CertificateDer<'_>| {
            pin.verify_server_cert(
                der,
                &[],
                &rustls::pki_types::ServerName::try_from("any").unwrap(),
                &[],
                rustls::pki_types::UnixTime::now(),
            )
        };
        assert!(check(a.cert.der()).is_ok());
        assert!(check(b.cert.der()).is_err());
    }

    #[test]
    fn self_signed_has_a_fingerprint_and_configs_build() {
        let s = CertStore::new(CertSource::SelfSigned).unwrap();
        assert_eq!(s.fingerprint().len(), 64);
        assert_eq!(s.reload().unwrap(), s.fingerprint());
        s.wss_config().unwrap();
        s.quic_config().unwrap();
    }

    #[test]
    fn files_load_and_reload_swaps_the_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k, fp_a) = write_pair(dir.path(), "a.test");
        let s = CertStore::new(CertSource::Files {
            cert: c.clone(),
            key: k.clone(),
        })
        .unwrap();
        assert_eq!(s.fingerprint(), fp_a);
        let (c2, k2, fp_b) = write_pair(dir.path(), "b.test");
        std::fs::copy(&c2, &c).unwrap();
        std::fs::copy(&k2, &k).unwrap();
        assert_eq!(s.reload().unwrap(), fp_b);
        // A broken file on reload keeps the current certificate.
        std::fs::write(&c, "not pem").unwrap();
        assert!(s.reload().is_err());
        assert_eq!(s.fingerprint(), fp_b);
    }

    #[test]
    fn mismatched_or_missing_files_are_refused_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _, _) = write_pair(dir.path(), "a.test");
        let (_, k2, _) = write_pair(dir.path(), "b.test");
        let e = CertStore::new(CertSource::Files { cert: c, key: k2 }).unwrap_err();
        assert!(e.to_string().contains("does not match"), "{e}");
        let e = CertStore::new(CertSource::Files {
            cert: dir.path().join("none.crt"),
            key: dir.path().join("none.key"),
        })
        .unwrap_err();
        assert!(e.to_string().contains("none.crt"), "{e}");
    }
}
