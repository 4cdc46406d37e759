//! TLS settings of the SIP driver (SIP over TLS, RFC 3261 §26.2 and RFC 5630): the rustls
//! client config that checks a provider's certificate and the server config of the TLS
//! listener, both built from PEM files named in the properties. No I/O besides reading
//! those files once at startup; the connections themselves are the driver's.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("{what}: cannot read {path}: {message}")]
    Pem {
        what: &'static str,
        path: String,
        message: String,
    },
    #[error("{what}: {path} holds no {kind}")]
    Empty {
        what: &'static str,
        path: String,
        kind: &'static str,
    },
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

/// What the properties say about SIP over TLS.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// PEM CA certificates the provider's certificate must chain to; None: the system's.
    pub ca_file: Option<std::path::PathBuf>,
    /// false: accept any certificate (lab and tests only; `sip_tls_verify=false`).
    pub verify: bool,
    /// PEM certificate chain and private key of the TLS listener; both or neither.
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    // Explicit: both of rustls's providers are in the tree, so the implicit default panics.
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let pem_err = |e: rustls::pki_types::pem::Error| TlsSetupError::Pem {
        what,
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err)?;
    if certs.is_empty() {
        return Err(TlsSetupError::Empty {
            what,
            path: path.display().to_string(),
            kind: "CERTIFICATE",
        });
    }
    Ok(certs)
}

/// The client config for connections to providers: their certificate is checked against
/// `ca_file` (else the system's roots) and the name we looked up, unless `verify` is off.
pub fn client_config(s: &TlsSettings) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
    let config = if !s.verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match &s.ca_file {
            Some(path) => {
                for c in certs("sip_tls_ca_file", path)? {
                    roots
                        .add(c)
                        .map_err(|e| TlsSetupError::Rustls(format!("sip_tls_ca_file: {e}")))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for e in &found.errors {
                    tracing::warn!(error = %e, "system CA certificates: not all could be read");
                }
                let (added, ignored) = roots.add_parsable_certificates(found.certs);
                tracing::debug!(added, ignored, "system CA certificates for SIP over TLS");
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// The server config of the TLS listener, when a certificate and key are set.
pub fn server_config(s: &TlsSettings) -> Result<Option<Arc<rustls::ServerConfig>>, TlsSetupError> {
    let (cert, key) = match (&s.cert_file, &s.key_file) {
        (Some(c), Some(k)) => (c, k),
        (None, None) => return Ok(None),
        _ => {
            return Err(TlsSetupError::Rustls(
                "sip_tls_cert_file and sip_tls_key_file go together".into(),
            ))
        }
    };
    let chain = certs("sip_tls_cert_file", cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsSetupError::Pem {
        what: "sip_tls_key_file",
        path: key.display().to_string(),
        message: e.to_string(),
    })?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsSetupError::Rustls(format!("sip_tls_cert_file/sip_tls_key_file: {e}")))?;
    Ok(Some(Arc::new(config)))
}

/// The name a provider's certificate must carry: the host we looked up, else the address
/// we connect to (an IP-address SAN).
pub fn server_name(host: Option<&str>, addr: std::net::SocketAddr) -> ServerName<'static> {
    host.and_then(|h| {
        ServerName::try_from(h.trim_start_matches('[').trim_end_matches(']').to_string()).ok()
    })
    .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()))
}

/// `sip_tls_verify=false`: the handshake's signatures are still checked (the peer holds the
/// key of the certificate it shows), but not who signed the certificate nor its names.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_empty_files_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let s = TlsSettings {
            ca_file: Some(empty.clone()),
            verify: true,
            ..Default::default()
        };
        let e = client_config(&s).unwrap_err().to_string();
        assert!(
            e.contains("sip_tls_ca_file") && e.contains("CERTIFICATE"),
            "{e}"
        );
        let s = TlsSettings {
            cert_file: Some(dir.path().join("nope.pem")),
            key_file: Some(empty),
            ..Default::default()
        };
        let e = server_config(&s).unwrap_err().to_string();
        assert!(e.contains("sip_tls_cert_file"), "{e}");
        let s = TlsSettings {
            cert_file: Some(dir.path().join("c.pem")),
            ..Default::default()
        };
        assert!(server_config(&s).is_err());
        assert!(server_config(&TlsSettings::default()).unwrap().is_none());
        // System roots and the lab switch both build.
        assert!(client_config(&TlsSettings::default()).is_ok());
        assert!(client_config(&TlsSettings {
            verify: true,
            ..Default::default()
        })
        .is_ok());
    }

    #[test]
    fn a_self_signed_pair_makes_a_listener_and_a_trusting_client() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::generate_simple_self_signed(vec!["sip.example".into()]).unwrap();
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&c, key.cert.pem()).unwrap();
        std::fs::write(&k, key.signing_key.serialize_pem()).unwrap();
        let s = TlsSettings {
            ca_file: Some(c.clone()),
            verify: true,
            cert_file: Some(c),
            key_file: Some(k),
        };
        assert!(server_config(&s).unwrap().is_some());
        assert!(client_config(&s).is_ok());
        let addr: std::net::SocketAddr = "192.0.2.1:5061".parse().unwrap();
        assert_eq!(
            server_name(Some("sip.example"), addr),
            ServerName::try_from("sip.example").unwrap()
        );
        assert_eq!(
            server_name(None, addr),
            ServerName::IpAddress("192.0.2.1".parse::<std::net::IpAddr>().unwrap().into())
        );
    }
}
