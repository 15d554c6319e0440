//! TLS (rustls with the ring provider): the device listener's acceptor, and the roots the
//! agent's own connections (cloud link, MQTT broker) trust.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::Error;

/// The listener's TLS side.
#[derive(Clone)]
pub struct ServerTls(pub TlsAcceptor);

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls")
    }
}

/// The certificates to trust: those in the PEM file `ca_file`, else the system's roots.
pub fn client_roots(ca_file: Option<&std::path::Path>) -> Result<Arc<rustls::RootCertStore>, Error> {
    match ca_file {
        Some(ca) => match twinlake_sdk::client::Tls::from_ca_pem(&crate::error::read_file(ca)?) {
            Ok(twinlake_sdk::client::Tls::Verify(roots)) => Ok(roots),
            Ok(_) => Err(Error::Tls(format!("{}: no roots", ca.display()))),
            Err(e) => Err(Error::Tls(format!("{}: {e}", ca.display()))),
        },
        None => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            Ok(Arc::new(roots))
        }
    }
}

/// A TLS acceptor from a PEM certificate chain and a PEM private key.
pub fn tls_acceptor(cert_pem: &[u8], key_pem: &[u8]) -> Result<ServerTls, Error> {
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls(format!("certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Tls("the certificate PEM holds no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| Error::Tls(format!("key PEM: {e}")))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Tls(e.to_string()))?;
    Ok(ServerTls(TlsAcceptor::from(Arc::new(config))))
}
