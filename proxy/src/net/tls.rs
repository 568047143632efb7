//! rustls configuration: the server side from `--tls-cert/--tls-key` PEM files, and the
//! upstream client side: like libpq, `prefer`/`require` without a root certificate do not
//! verify the server certificate (encryption without authentication), verify-ca checks the
//! chain against the root certificate(s), verify-full the chain and the host name.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{ring, CryptoProvider};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::error::{ProxyError, Result};

/// Builds the acceptor that terminates client TLS with a certificate chain and key from PEM files.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| ProxyError::Tls(format!("reading {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(ProxyError::Tls(format!(
            "no certificate in {}",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| ProxyError::Tls(format!("reading {}: {e}", key.display())))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ProxyError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ProxyError::Tls(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// How the upstream server's certificate is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verification {
    /// Not at all (libpq's prefer, or require without a root certificate).
    None,
    /// The chain up to a root certificate in the file, not the host name (verify-ca).
    Chain(PathBuf),
    /// The chain and the host name (verify-full).
    ChainAndHost(PathBuf),
}

/// Builds the connector for TLS to the upstream.
pub fn connector(verification: &Verification) -> Result<TlsConnector> {
    Ok(TlsConnector::from(Arc::new(client_config(verification)?)))
}

/// The rustls client configuration for TLS to the upstream.
pub fn client_config(verification: &Verification) -> Result<rustls::ClientConfig> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match verification {
        Verification::None => Arc::new(NoVerification(provider.clone())),
        Verification::Chain(root) => Arc::new(ChainOnly(webpki_verifier(root, &provider)?)),
        Verification::ChainAndHost(root) => webpki_verifier(root, &provider)?,
    };
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ProxyError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// The standard (webpki) verifier over the root certificates in a PEM file.
fn webpki_verifier(
    root: &Path,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>> {
    let unreadable = |e: String| ProxyError::Config(format!("sslrootcert {}: {e}", root.display()));
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(root).map_err(|e| unreadable(e.to_string()))? {
        roots
            .add(cert.map_err(|e| unreadable(e.to_string()))?)
            .map_err(|e| unreadable(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(unreadable("no certificate in the file".into()));
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| unreadable(e.to_string()))
}

/// The server name sent in SNI for an upstream host (a DNS name or an IP address).
pub fn server_name(host: &str) -> Result<ServerName<'static>> {
    ServerName::try_from(host.to_owned())
        .map_err(|e| ProxyError::Config(format!("invalid upstream host {host:?}: {e}")))
}

/// Why a TLS handshake with the upstream `host` failed, in words that name the setting to look
/// at (the host name verify-full checks, the sslrootcert the chain must reach), followed by
/// rustls' own description.
pub fn describe_handshake_error(err: &io::Error, host: &str, root: Option<&Path>) -> String {
    let certificate = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .and_then(|e| match e {
            rustls::Error::InvalidCertificate(cert) => Some(cert),
            _ => None,
        });
    let hint = match certificate {
        Some(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => Some(format!(
            "the server's certificate does not name {host:?}, the host --upstream gives \
                 (sslmode verify-full checks the host name against the certificate)"
        )),
        Some(CertificateError::UnknownIssuer | CertificateError::BadSignature) => Some(format!(
            "the server's certificate does not chain to a certificate in sslrootcert {}",
            root.map_or_else(|| "(none given)".to_owned(), |r| r.display().to_string())
        )),
        Some(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
            Some("the server's certificate has expired".to_owned())
        }
        _ => None,
    };
    match hint {
        Some(hint) => format!("TLS handshake failed: {hint} ({err})"),
        None => format!("TLS handshake failed: {err}"),
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// A tokio-postgres TLS connector with the TLS settings of relayed sessions' upstream
/// connections (see `Upstream::postgres_tls`), for the proxy's own connections to the server.
#[derive(Clone)]
pub struct PostgresTls {
    connector: TlsConnector,
}

impl std::fmt::Debug for PostgresTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresTls").finish_non_exhaustive()
    }
}

impl PostgresTls {
    /// Connects with the same rustls configuration as `connector`.
    pub fn new(connector: &TlsConnector) -> Self {
        PostgresTls {
            connector: connector.clone(),
        }
    }
}

impl<S> MakeTlsConnect<S> for PostgresTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PostgresTlsStream<S>;
    type TlsConnect = PostgresTlsConnect;
    type Error = ProxyError;

    fn make_tls_connect(&mut self, host: &str) -> Result<PostgresTlsConnect> {
        Ok(PostgresTlsConnect {
            connector: self.connector.clone(),
            name: server_name(host)?,
        })
    }
}

/// One connection's TLS handshake, made by `PostgresTls`.
pub struct PostgresTlsConnect {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for PostgresTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PostgresTlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<PostgresTlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let tls = self.connector.connect(self.name, stream).await?;
            Ok(PostgresTlsStream(Box::new(tls)))
        })
    }
}

/// A TLS connection made by `PostgresTls`.
pub struct PostgresTlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for PostgresTlsStream<S> {
    /// None: tokio-postgres then uses SCRAM-SHA-256 with the gs2 flag `n`, which every server
    /// accepts. The server is authenticated by verify-ca/verify-full instead; binding needs the
    /// certificate's own signature hash (RFC 5929), not worth a certificate parser here.
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PostgresTlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(self.0.as_mut()).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PostgresTlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.0.as_mut()).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.0.as_mut()).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.0.as_mut()).poll_shutdown(cx)
    }
}

/// verify-ca: the webpki checks, except that the certificate need not name the host.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            // webpki checks the name only after the chain, so this error means the chain is good.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Accepts any upstream certificate but still checks the handshake signatures.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
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
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // A throw-away test CA and a server certificate for `localhost` it signed (P-256, valid
    // until 2126), made with the openssl CLI; the key protects nothing.
    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBoTCCAUegAwIBAgIUNuwIp+rbif3HEGEo9p7Q4v6BE/IwCgYIKoZIzj0EAwIw\nHTEbMBkGA1UEAwwScGdtbC1wcm94eSB0ZXN0IENBMCAXDTI2MTIwMTIzMTYyNloY\nDzIxMjYxMTA3MjMxNjI2WjAdMRswGQYDVQQDDBJwZ21sLXByb3h5IHRlc3QgQ0Ew\nWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAS0P1nIAcFpTyvjIyw9fN058NoD1FRC\nkMgRkiLIDsc4Gg7PpOHba2nxwfwcoOi5VDA8tZAKg+OSUoT/Iz0XiL1Fo2MwYTAd\nBgNVHQ4EFgQUYDYpGp8CNhTWVtc9kataKSCa0ZYwHwYDVR0jBBgwFoAUYDYpGp8C\nNhTWVtc9kataKSCa0ZYwDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8BAf8EBAMCAgQw\nCgYIKoZIzj0EAwIDSAAwRQIhAInsPh/I7PxJCPxUV5LIfddm73A3pUNH0U9spilv\nkv5dAiAdyJ8U7z2Sd1K5G0VwUTzvHdRBdVjEkSXSjcyRyB/OYQ==\n-----END CERTIFICATE-----\n";
    const LEAF: &str = "-----BEGIN CERTIFICATE-----\nMIIBrTCCAVOgAwIBAgIUE3J8gfl1Bn+8BD0PvWfNk8P+HvcwCgYIKoZIzj0EAwIw\nHTEbMBkGA1UEAwwScGdtbC1wcm94eSB0ZXN0IENBMCAXDTI2MTIwMTIzMTYyNloY\nDzIxMjYxMTA3MjMxNjI2WjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjO\nPQIBBggqhkjOPQMBBwNCAASmF6WQ7+ILQqQiv0Y0oIiV4yDfaJ+W9/+NohkiBo3U\n3ChaiHPUGp2gIhcqwC0PZDhfPZoLunOoNkm+22I0tucao3gwdjAUBgNVHREEDTAL\ngglsb2NhbGhvc3QwCQYDVR0TBAIwADATBgNVHSUEDDAKBggrBgEFBQcDATAdBgNV\nHQ4EFgQUaZoS0MEkNnV2GaxSgxHSDeBMVKUwHwYDVR0jBBgwFoAUYDYpGp8CNhTW\nVtc9kataKSCa0ZYwCgYIKoZIzj0EAwIDSAAwRQIgfeDMy0K3XMqT6TofxSnNPepz\n24IQ2abtncVcve/u6WcCIQD5aS2ME6MbwUTG4sp7fWxFnZ/jeAvGNw3EGuzoe3jI\nTA==\n-----END CERTIFICATE-----\n";
    const LEAF_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgleTGY/IfAOMNrsfG\n//E7An3mQ0EZ02U/znzzrHKUDQ+hRANCAASmF6WQ7+ILQqQiv0Y0oIiV4yDfaJ+W\n9/+NohkiBo3U3ChaiHPUGp2gIhcqwC0PZDhfPZoLunOoNkm+22I0tuca\n-----END PRIVATE KEY-----\n";

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Handshakes through `PostgresTls` with a server presenting LEAF, as `host`; echoes a byte.
    async fn handshake(verification: Verification, host: &str) -> io::Result<()> {
        let dir = std::env::temp_dir().join(format!("pgml-proxy-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let acceptor = acceptor(
            &write(&dir, "leaf.crt", LEAF),
            &write(&dir, "leaf.key", LEAF_KEY),
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            let mut tls = acceptor.accept(tcp).await?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await?;
            tls.write_all(&byte).await?;
            tls.flush().await
        });
        let mut make = PostgresTls::new(&connector(&verification).unwrap());
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let connect =
            MakeTlsConnect::<tokio::net::TcpStream>::make_tls_connect(&mut make, host).unwrap();
        let result = async {
            let mut tls = connect.connect(tcp).await?;
            tls.write_all(b"x").await?;
            tls.flush().await?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await?;
            Ok(())
        }
        .await;
        let _ = server.await;
        result
    }

    #[tokio::test]
    async fn postgres_tls_verifies_as_the_relay_does() {
        let dir = std::env::temp_dir().join(format!("pgml-proxy-tls-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let root = write(&dir, "root.crt", CA);
        let other_root = write(&dir, "other.crt", LEAF);
        handshake(Verification::ChainAndHost(root.clone()), "localhost")
            .await
            .unwrap();
        let misnamed = handshake(Verification::ChainAndHost(root.clone()), "127.0.0.1")
            .await
            .unwrap_err();
        let text = describe_handshake_error(&misnamed, "127.0.0.1", Some(&root));
        assert!(text.contains("does not name \"127.0.0.1\""), "{text}");
        handshake(Verification::Chain(root), "127.0.0.1")
            .await
            .unwrap();
        let unchained = handshake(Verification::Chain(other_root.clone()), "localhost")
            .await
            .unwrap_err();
        let text = describe_handshake_error(&unchained, "localhost", Some(&other_root));
        assert!(
            text.contains("does not chain") && text.contains("other.crt"),
            "{text}"
        );
        handshake(Verification::None, "127.0.0.1").await.unwrap();
    }
}
