//! TLS for PostgreSQL connections (rustls), with libpq's `sslmode` meanings.
//!
//! tokio-postgres knows `sslmode` disable, prefer and require, and no
//! `sslrootcert`. Candystore reads both from DATABASE_URL itself:
//!
//! | sslmode | TLS | certificate checked |
//! |---|---|---|
//! | `disable` | never | - |
//! | `prefer` (the default) | if the server offers it | no |
//! | `require` | always | no; against `sslrootcert` when one is given (as libpq) |
//! | `verify-ca` | always | chain against `sslrootcert` |
//! | `verify-full` | always | chain against `sslrootcert`, and the host name |
//!
//! `sslrootcert` is a PEM file of CA certificates; `verify-ca` and `verify-full`
//! need one (or `sslrootcert=system` for the operating system's roots).

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error as TlsError, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

/// What the URL asks of the certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    /// Encrypt, check nothing (`prefer`, `require` without a root).
    Nothing,
    /// The chain must lead to a trusted root; any host name.
    Chain,
    /// The chain and the host name.
    Full,
}

/// A PostgreSQL URL split into what tokio-postgres understands and our TLS part.
#[derive(Debug)]
pub struct TlsParams {
    /// The URL without `sslrootcert`, with `verify-*` given as `require`.
    pub url: String,
    pub verify: Verify,
    pub root_cert: Option<String>,
}

/// Reads `sslmode` and `sslrootcert` from a URL's query string.
pub fn split_url(url: &str) -> Result<TlsParams, String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, q),
        None => (url, ""),
    };
    let mut kept = Vec::new();
    let mut mode = None;
    let mut root_cert = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "sslmode" => mode = Some(v.to_owned()),
            "sslrootcert" => {
                root_cert =
                    Some(percent_decode(v).ok_or("sslrootcert is not percent-encoded text")?)
            }
            _ => kept.push(pair.to_owned()),
        }
    }
    let verify = match (mode.as_deref(), root_cert.is_some()) {
        (None | Some("prefer") | Some("disable") | Some("allow"), _) => Verify::Nothing,
        (Some("require"), false) => Verify::Nothing,
        (Some("require"), true) | (Some("verify-ca"), _) => Verify::Chain,
        (Some("verify-full"), _) => Verify::Full,
        (Some(other), _) => {
            return Err(format!(
                "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, verify-full"
            ));
        }
    };
    if verify != Verify::Nothing && root_cert.is_none() {
        return Err(format!(
            "sslmode={} needs sslrootcert (a PEM file of CA certificates, or \"system\")",
            mode.unwrap_or_default()
        ));
    }
    match mode.as_deref() {
        Some("verify-ca" | "verify-full") => kept.push("sslmode=require".into()),
        Some("allow") => kept.push("sslmode=prefer".into()),
        Some(m) => kept.push(format!("sslmode={m}")),
        None => {}
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok(TlsParams {
        url,
        verify,
        root_cert,
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The rustls connector for these parameters.
pub fn connector(p: &TlsParams) -> Result<MakeRustlsConnect, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let verifier: Arc<dyn ServerCertVerifier> = match (p.verify, &p.root_cert) {
        (Verify::Nothing, _) | (_, None) => Arc::new(NoVerification(provider)),
        (verify, Some(path)) => {
            let roots = Arc::new(roots(path)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| e.to_string())?;
            if verify == Verify::Full {
                webpki
            } else {
                Arc::new(AnyHostName(webpki))
            }
        }
    };
    let config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

fn roots(path: &str) -> Result<rustls::RootCertStore, String> {
    let mut store = rustls::RootCertStore::empty();
    if path == "system" {
        let found = rustls_native_certs_roots()?;
        store.add_parsable_certificates(found);
    } else {
        for cert in CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read sslrootcert {path}: {e}"))?
        {
            let cert = cert.map_err(|e| format!("sslrootcert {path}: {e}"))?;
            store
                .add(cert)
                .map_err(|e| format!("sslrootcert {path}: {e}"))?;
        }
    }
    if store.is_empty() {
        return Err(format!("sslrootcert {path} holds no certificate"));
    }
    Ok(store)
}

/// The operating system's roots, read from the usual bundle locations.
fn rustls_native_certs_roots() -> Result<Vec<CertificateDer<'static>>, String> {
    for path in [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/cert.pem",
    ] {
        if let Ok(iter) = CertificateDer::pem_file_iter(path) {
            return Ok(iter.filter_map(Result::ok).collect());
        }
    }
    Err("no system CA bundle found for sslrootcert=system".into())
}

/// `verify-ca`: the chain must be trusted; the name in it is not compared.
#[derive(Debug)]
struct AnyHostName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(TlsError::InvalidCertificate(
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
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require`: encrypted, the certificate not checked (as libpq).
/// The handshake signatures are still verified.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
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
    ) -> Result<HandshakeSignatureValid, TlsError> {
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
    fn sslmode_and_sslrootcert_are_read_and_translated() {
        let p = split_url("postgres://u@h/db").unwrap();
        assert_eq!(
            (p.url.as_str(), p.verify),
            ("postgres://u@h/db", Verify::Nothing)
        );
        let p = split_url(
            "postgres://u@h/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(
            p.url,
            "postgres://u@h/db?application_name=x&sslmode=require"
        );
        assert_eq!(p.verify, Verify::Full);
        assert_eq!(p.root_cert.as_deref(), Some("/etc/ca.pem"));
        let p = split_url("postgres://u@h/db?sslmode=require&sslrootcert=/ca.pem").unwrap();
        assert_eq!(
            p.verify,
            Verify::Chain,
            "require with a root checks the chain, as libpq"
        );
        assert!(
            split_url("postgres://u@h/db?sslmode=verify-ca")
                .unwrap_err()
                .contains("sslrootcert")
        );
        assert!(
            split_url("postgres://u@h/db?sslmode=sometimes")
                .unwrap_err()
                .contains("sslmode=sometimes")
        );
    }
}
