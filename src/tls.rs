//! TLS configuration: certificates loaded into rustls for clients, and connectors toward PostgreSQL.
//! No protocol logic lives here; the SSLRequest dialogue is in `client::handshake` and `server`.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{ServerTlsMode, TlsConfig, TlsMode};
use crate::server::ServerError;
use crate::stream::Stream;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let data = std::fs::read(path).map_err(|e| format!("[tls] cannot read certificate {path}: {e}"))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut data.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("[tls] bad PEM in {path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("[tls] no certificate found in {path}"));
    }
    Ok(certs)
}

fn load_key(path: &str) -> Result<PrivateKeyDer<'static>, String> {
    let data = std::fs::read(path).map_err(|e| format!("[tls] cannot read key {path}: {e}"))?;
    rustls_pemfile::private_key(&mut data.as_slice())
        .map_err(|e| format!("[tls] bad PEM in {path}: {e}"))?
        .ok_or_else(|| format!("[tls] no private key found in {path}"))
}

/// TLS we terminate for clients.
pub struct ClientTls {
    /// The acceptor.
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Client policy (allow/prefer/require).
    pub mode: TlsMode,
    /// `tls-server-end-point` channel binding data: SHA-256 of our leaf certificate.
    pub cert_hash: Vec<u8>,
}

impl ClientTls {
    /// Loads certificate and key (and the client CA for mutual TLS); `None` when client TLS is
    /// disabled. `require_client_cert` makes a client certificate mandatory (auth type cert).
    pub fn from_config(c: &TlsConfig, require_client_cert: bool) -> Result<Option<ClientTls>, String> {
        if c.mode == TlsMode::Disable {
            return Ok(None);
        }
        // Each file is read before any is refused, so one report names every missing one.
        let ca = (!c.client_ca.is_empty()).then(|| load_certs(&c.client_ca));
        let (certs, key) = match (load_certs(&c.cert), load_key(&c.key), ca.as_ref().and_then(|r| r.as_ref().err())) {
            (Ok(certs), Ok(key), None) => (certs, key),
            (certs, key, ca) => {
                let errors = [certs.err(), key.err(), ca.cloned()];
                return Err(errors.into_iter().flatten().collect::<Vec<_>>().join("\n  - "));
            }
        };
        let cert_hash = crate::auth::scram::sha256(&certs[0]).to_vec();
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("[tls] {e}"))?;
        let builder = if c.client_ca.is_empty() {
            builder.with_no_client_auth()
        } else {
            let mut roots = rustls::RootCertStore::empty();
            for cert in ca.unwrap_or_else(|| load_certs(&c.client_ca))? {
                roots.add(cert).map_err(|e| format!("[tls] bad CA certificate in client_ca: {e}"))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let verifier = if require_client_cert { verifier } else { verifier.allow_unauthenticated() };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| format!("[tls] client_ca: {e}"))?)
        };
        let mut cfg = builder
            .with_single_cert(certs, key)
            .map_err(|e| format!("[tls] certificate and key do not fit together: {e}"))?;
        // PostgreSQL 17's direct TLS requires ALPN "postgresql"; harmless for SSLRequest clients.
        cfg.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(Some(ClientTls { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(cfg)), mode: c.mode, cert_hash }))
    }
}

/// TLS toward PostgreSQL.
pub struct ServerTls {
    connector: tokio_rustls::TlsConnector,
    mode: ServerTlsMode,
}

impl ServerTls {
    /// Builds the connector; `None` when server TLS is disabled.
    pub fn from_config(c: &TlsConfig) -> Result<Option<ServerTls>, String> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("[tls] {e}"))?;
        let cfg = match c.server_mode {
            ServerTlsMode::Disable => return Ok(None),
            ServerTlsMode::Prefer | ServerTlsMode::Require => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
                .with_no_client_auth(),
            ServerTlsMode::VerifyCa | ServerTlsMode::VerifyFull => {
                if c.server_ca.is_empty() {
                    return Err("[tls] server_mode verify-ca/verify-full needs server_ca".into());
                }
                let mut roots = rustls::RootCertStore::empty();
                for cert in load_certs(&c.server_ca)? {
                    roots.add(cert).map_err(|e| format!("[tls] bad CA certificate in server_ca: {e}"))?;
                }
                let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                    .build()
                    .map_err(|e| format!("[tls] {e}"))?;
                let verifier: Arc<dyn ServerCertVerifier> =
                    if c.server_mode == ServerTlsMode::VerifyCa { Arc::new(CaOnly(webpki)) } else { webpki };
                builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth()
            }
        };
        Ok(Some(ServerTls { connector: tokio_rustls::TlsConnector::from(Arc::new(cfg)), mode: c.server_mode }))
    }

    /// SSLRequest, then the handshake if the server agrees (or plain TCP under `prefer`).
    pub async fn connect(&self, mut tcp: TcpStream, host: &str) -> Result<Stream, ServerError> {
        tcp.write_all(&[0, 0, 0, 8, 4, 210, 22, 47]).await?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await?;
        match answer[0] {
            b'S' => {}
            b'N' if self.mode == ServerTlsMode::Prefer => return Ok(Stream::Plain(tcp)),
            b'N' => return Err(ServerError::Tls("server does not support TLS".into())),
            _ => return Err(ServerError::Tls("unexpected answer to SSLRequest".into())),
        }
        let name =
            ServerName::try_from(host.to_string()).map_err(|_| ServerError::Tls("invalid server name".into()))?;
        let tls = self.connector.connect(name, tcp).await.map_err(|e| ServerError::Tls(e.to_string()))?;
        Ok(Stream::TlsConnected(Box::new(tls)))
    }
}

/// `require`: encrypt, but accept any certificate (libpq's sslmode=require).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to our CA; the host name is not checked (libpq's meaning).
#[derive(Debug)]
struct CaOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for CaOnly {
    fn verify_server_cert(
        &self,
        end: &CertificateDer<'_>,
        inter: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end, inter, name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
