//! TLS to Kinesis with `AWS_CA_BUNDLE`: the certificates of a PEM file are
//! trusted in addition to the built-in (Mozilla, webpki-roots) roots, as the
//! AWS CLI and SDKs do (a TLS-inspecting proxy's or a private CA's). ureq's
//! own TLS connector takes either its built-in roots or a given list, not
//! both, so with a bundle this connector wraps connections instead; without
//! one ureq's default is used unchanged. The bundle is read with
//! `files::read_file`'s bounds (a regular file, 1 MiB at most, no blocking
//! open).

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout, Transport,
    TransportAdapter,
};

/// The most read of `AWS_CA_BUNDLE`: five times the Mozilla bundle
/// (~220 KB), and the certificates parsed from it stay in memory.
pub const CA_BUNDLE_MAX_BYTES: u64 = 1 << 20;

/// Why a bundle's certificates cannot be used.
#[derive(Debug)]
pub enum BundleError {
    /// The file could not be read within its bounds.
    Read(crate::files::FileProblem),
    /// It is not PEM text.
    NotPem(ureq::Error),
    /// No certificate in it could be used (`ignored` could not be parsed).
    NoCertificate { ignored: usize },
    /// rustls refused the configuration.
    Tls(rustls::Error),
}

impl std::fmt::Display for BundleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BundleError::Read(e) => write!(f, "{e}"),
            BundleError::NotPem(e) => write!(f, "not a PEM file: {e}"),
            BundleError::NoCertificate { ignored } => {
                write!(
                    f,
                    "no usable certificate in it ({ignored} could not be parsed)"
                )
            }
            BundleError::Tls(e) => write!(f, "{e}"),
        }
    }
}

/// TLS with the built-in roots and a bundle's certificates.
#[derive(Debug, Clone)]
pub struct BundleTls {
    config: Arc<ClientConfig>,
}

impl BundleTls {
    /// Reads the bundle at `path` (once, when the Kinesis client is made:
    /// after the first `event/next`, not on the cold-start path): a regular
    /// file of at most `CA_BUNDLE_MAX_BYTES`, opened without blocking.
    pub fn from_file(path: &str) -> Result<(BundleTls, usize), BundleError> {
        let pem = crate::files::read_file(path, CA_BUNDLE_MAX_BYTES).map_err(BundleError::Read)?;
        BundleTls::new(&pem)
    }

    /// From the PEM text of a bundle; the number of certificates it added.
    pub fn new(pem: &[u8]) -> Result<(BundleTls, usize), BundleError> {
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let mut certs: Vec<CertificateDer<'static>> = Vec::new();
        for item in ureq::tls::parse_pem(pem) {
            match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => {
                    certs.push(CertificateDer::from(c.der().to_vec()))
                }
                Ok(_) => {} // keys and the like: not roots
                Err(e) => return Err(BundleError::NotPem(e)),
            }
        }
        let (added, ignored) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(BundleError::NoCertificate { ignored });
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(BundleError::Tls)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok((
            BundleTls {
                config: Arc::new(config),
            },
            added,
        ))
    }
}

impl<In: Transport> Connector<In> for BundleTls {
    type Out = Either<In, BundleTransport>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        let Some(transport) = chained else {
            return Ok(None);
        };
        if !details.needs_tls() || transport.is_tls() {
            return Ok(Some(Either::A(transport)));
        }
        let host = details
            .uri
            .authority()
            .map(|a| a.host().trim_start_matches('[').trim_end_matches(']'))
            .unwrap_or_default();
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| ureq::Error::Tls("invalid server name for TLS"))?;
        let mut conn = ClientConnection::new(self.config.clone(), name)
            .map_err(|e| ureq::Error::Io(std::io::Error::other(e)))?;
        let mut sock = TransportAdapter::new(transport.boxed(), details.current_time.clone());
        sock.set_timeout(details.timeout);
        conn.complete_io(&mut sock)?;
        let buffers = LazyBuffers::new(
            details.config.input_buffer_size(),
            details.config.output_buffer_size(),
        );
        Ok(Some(Either::B(BundleTransport {
            buffers,
            stream: StreamOwned { conn, sock },
        })))
    }
}

/// A TLS connection made by `BundleTls`.
pub struct BundleTransport {
    buffers: LazyBuffers,
    stream: StreamOwned<ClientConnection, TransportAdapter>,
}

impl std::fmt::Debug for BundleTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BundleTransport")
    }
}

impl Transport for BundleTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        self.stream.get_mut().set_timeout(timeout);
        let output = &self.buffers.output()[..amount];
        self.stream.write_all(output)?;
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.stream.get_mut().set_timeout(timeout);
        let input = self.buffers.input_append_buf();
        let amount = self.stream.read(input)?;
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    fn is_open(&mut self) -> bool {
        self.stream.get_mut().get_mut().is_open()
    }

    fn is_tls(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_without_certificates_is_refused() {
        let e = BundleTls::new(b"no pem here").unwrap_err();
        assert!(
            matches!(e, BundleError::NoCertificate { ignored: 0 }),
            "{e}"
        );
        assert!(e.to_string().contains("no usable certificate"), "{e}");
        let key_only =
            b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIB\n-----END PRIVATE KEY-----\n";
        assert!(BundleTls::new(key_only).is_err());
    }
}
