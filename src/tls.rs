//! The TLS listener's certificate: read from PEM files, checked as a pair (`--check` too), and
//! replaced in place when SIGHUP re-reads the files: new handshakes get the new certificate,
//! connections already open keep the one they were made with. A pair that does not load keeps
//! the one in use.

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Reads a certificate chain and its private key, and checks that they belong together.
pub fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<CertifiedKey>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| format!("cannot read {}: {e}", cert_file.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", cert_file.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("{}: no PEM private key: {e}", key_file.display()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("{}: unsupported private key: {e}", key_file.display()))?;
    let pair = CertifiedKey::new(certs, signer);
    pair.keys_match().map_err(|e| {
        format!(
            "{} and {} do not belong together: {e}",
            cert_file.display(),
            key_file.display()
        )
    })?;
    Ok(Arc::new(pair))
}

/// The certificate every handshake on the TLS listener gets, swapped on reload.
#[derive(Debug)]
pub struct Certificate {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: ArcSwap<CertifiedKey>,
}

impl Certificate {
    pub fn new(cert_file: &Path, key_file: &Path) -> Result<Certificate, String> {
        Ok(Certificate {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            current: ArcSwap::new(load(cert_file, key_file)?),
        })
    }

    /// Re-reads the files; on failure the certificate in use stays, and the reason is returned.
    pub fn reload(&self) -> Result<(), String> {
        let pair = load(&self.cert_file, &self.key_file)?;
        self.current.store(pair);
        Ok(())
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}
