//! TLS of an HTTP listener: a certificate chain and its private key from PEM files, loaded once
//! at start. A file that cannot be read, holds no certificate or key, or a key that does not
//! fit the certificate stops the process before it listens, with an error naming the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// TLS settings of a listener: both files, or neither (plain HTTP).
#[derive(Debug, Clone, Default, Args)]
pub struct TlsArgs {
    /// PEM file with the API listener's certificate chain (server certificate first, then any
    /// intermediates). With --tls-key-file, the API is served over HTTPS only (HTTP/2 and
    /// HTTP/1.1); without both, over plain HTTP.
    #[arg(long, env = "ESK_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM file with the private key of --tls-cert-file (PKCS#8, PKCS#1 or SEC1). Keep it
    /// readable by the service's user only.
    #[arg(long, env = "ESK_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
}

/// Why the TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// One of the two files is set without the other.
    #[error("--tls-cert-file and --tls-key-file go together, but {missing} is not set")]
    Incomplete {
        /// The setting that is missing.
        missing: &'static str,
    },
    /// A file could not be read.
    #[error("cannot read the TLS {what} file {}: {source}", .path.display())]
    Read {
        /// "certificate" or "key".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file is not PEM, or its PEM is damaged.
    #[error("the TLS {what} file {} is not valid PEM: {source}", .path.display())]
    Pem {
        /// "certificate" or "key".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("the TLS certificate file {} holds no PEM certificate", .path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no private key.
    #[error("the TLS key file {} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)", .path.display())]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// The key does not belong to the certificate, or rustls refuses it.
    #[error("the TLS key file {} does not fit the certificate in {}: {source}", .key.display(), .cert.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
}

impl TlsArgs {
    /// The acceptor of the configured certificate, `None` when TLS is off (neither file set).
    pub fn acceptor(&self) -> Result<Option<TlsAcceptor>, TlsError> {
        let (cert, key) = match (&self.tls_cert_file, &self.tls_key_file) {
            (None, None) => return Ok(None),
            (Some(cert), Some(key)) => (cert, key),
            (Some(_), None) => {
                return Err(TlsError::Incomplete {
                    missing: "--tls-key-file",
                })
            }
            (None, Some(_)) => {
                return Err(TlsError::Incomplete {
                    missing: "--tls-cert-file",
                })
            }
        };
        let chain = certificates(cert)?;
        let private_key = private_key(key)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|builder| {
                builder
                    .with_no_client_auth()
                    .with_single_cert(chain, private_key)
            })
            .map_err(|source| TlsError::Mismatch {
                cert: cert.clone(),
                key: key.clone(),
                source,
            })?;
        // HTTP/2 when the client offers it, else HTTP/1.1.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Some(TlsAcceptor::from(Arc::new(config))))
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read("certificate", path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            what: "certificate",
            path: path.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(chain)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read("key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|source| match source {
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_owned(),
        },
        source => TlsError::Pem {
            what: "key",
            path: path.to_owned(),
            source,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cert: Option<&Path>, key: Option<&Path>) -> TlsArgs {
        TlsArgs {
            tls_cert_file: cert.map(Path::to_owned),
            tls_key_file: key.map(Path::to_owned),
        }
    }

    fn scratch(name: &str, content: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("esk-tls-unit-{}-{name}", std::process::id()));
        let written = std::fs::write(&path, content);
        assert!(written.is_ok(), "{written:?}");
        path
    }

    #[test]
    fn neither_file_is_plain_http() {
        assert!(matches!(args(None, None).acceptor(), Ok(None)));
    }

    #[test]
    fn one_file_alone_is_refused() {
        let cert = Path::new("/nonexistent/cert.pem");
        let error = args(Some(cert), None).acceptor().err();
        assert!(
            matches!(
                error,
                Some(TlsError::Incomplete {
                    missing: "--tls-key-file"
                })
            ),
            "{error:?}"
        );
    }

    #[test]
    fn a_missing_file_is_named() {
        let cert = Path::new("/nonexistent/esk-cert.pem");
        let key = Path::new("/nonexistent/esk-key.pem");
        let error = args(Some(cert), Some(key)).acceptor().err();
        let message = error.as_ref().map(ToString::to_string).unwrap_or_default();
        assert!(
            matches!(
                error,
                Some(TlsError::Read {
                    what: "certificate",
                    ..
                })
            ),
            "{error:?}"
        );
        assert!(message.contains("/nonexistent/esk-cert.pem"), "{message}");
    }

    #[test]
    fn files_without_pem_are_refused_by_name() {
        let cert = scratch("empty-cert.pem", "not a certificate\n");
        let key = scratch("empty-key.pem", "not a key\n");
        let error = args(Some(&cert), Some(&key)).acceptor().err();
        assert!(
            matches!(&error, Some(TlsError::NoCertificate { path }) if *path == cert),
            "{error:?}"
        );
        let _ = std::fs::remove_file(&cert);
        let _ = std::fs::remove_file(&key);
    }
}
