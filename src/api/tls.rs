//! TLS for the API: the server certificate and key, and the CA that signs client certificates
//! (mTLS), read from PEM files at start and on every SIGHUP.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use super::settings::TlsConfig;

/// The crypto provider everything TLS in bender uses (ring: it builds without cmake or Go).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            format!(
                "{key} = {:?}: cannot read PEM certificates: {e}",
                path.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "{key} = {:?}: holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\")",
            path.display()
        ));
    }
    Ok(certs)
}

fn crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let crls = CertificateRevocationListDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            format!(
                "api.tls.client_crl = {:?}: cannot read PEM CRLs: {e}",
                path.display()
            )
        })?;
    if crls.is_empty() {
        return Err(format!(
            "api.tls.client_crl = {:?}: holds no PEM CRL (\"-----BEGIN X509 CRL-----\")",
            path.display()
        ));
    }
    Ok(crls)
}

/// Builds the server's TLS config. Errors name the key and the file.
pub fn server_config(tls: &TlsConfig) -> Result<Arc<ServerConfig>, String> {
    let chain = certs(&tls.cert, "api.tls.cert")?;
    let meta = std::fs::metadata(&tls.key)
        .map_err(|e| format!("api.tls.key = {:?}: {e}", tls.key.display()))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o007 != 0 {
        return Err(format!(
            "api.tls.key = {:?} is accessible to every user (mode {mode:04o}): make it 0640 (group bender) or 0600",
            tls.key.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| {
        format!(
            "api.tls.key = {:?}: cannot read a PEM private key: {e}",
            tls.key.display()
        )
    })?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("api.tls: {e}"))?;
    let builder =
        match &tls.client_ca {
            None if tls.client_crl.is_some() => return Err(
                "api.tls.client_crl: needs api.tls.client_ca, the CA whose revocations it lists"
                    .into(),
            ),
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in certs(ca, "api.tls.client_ca")? {
                    roots
                        .add(c)
                        .map_err(|e| format!("api.tls.client_ca = {:?}: {e}", ca.display()))?;
                }
                let mut verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
                if let Some(crl) = &tls.client_crl {
                    verifier = verifier
                        .with_crls(crls(crl)?)
                        .only_check_end_entity_revocation();
                }
                let verifier = if tls.require_client_cert {
                    verifier
                } else {
                    verifier.allow_unauthenticated()
                };
                let verifier = verifier
                    .build()
                    .map_err(|e| format!("api.tls.client_ca = {:?}: {e}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("api.tls: the certificate and key do not go together: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
