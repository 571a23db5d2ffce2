//! A client certificate as a credential: which names and addresses it stands for.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};

/// A TLS client certificate the connection presented and the client CA verified.
#[derive(Debug, Clone)]
pub struct ClientCert(pub Arc<CertificateDer<'static>>);

impl ClientCert {
    /// Whether the certificate names `name` (a DNS name or an IP address) exactly among its
    /// subject alternative names. A wildcard entry (`*.example.com`) names nothing here: a
    /// certificate issued for every host of a domain must not stand for one particular host.
    pub fn names(&self, name: &str) -> bool {
        let Ok(cert) = webpki::EndEntityCert::try_from(self.0.as_ref()) else {
            return false;
        };
        if let Ok(ip) = name.parse::<IpAddr>() {
            // IP address entries are compared byte for byte; there are no wildcards.
            let ip = ServerName::IpAddress(ip.into());
            return cert.verify_is_valid_for_subject_name(&ip).is_ok();
        }
        let name = name.strip_suffix('.').unwrap_or(name);
        cert.valid_dns_names()
            .any(|n| !n.starts_with('*') && n.eq_ignore_ascii_case(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    fn cert(sans: &[&str]) -> ClientCert {
        let params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let key = KeyPair::generate().unwrap();
        let der = params.self_signed(&key).unwrap().der().clone();
        ClientCert(Arc::new(der))
    }

    #[test]
    fn a_certificate_names_its_exact_dns_names_and_addresses_only() {
        let c = cert(&["app1.example.com", "10.0.1.7", "2001:db8::7"]);
        assert!(c.names("app1.example.com"));
        assert!(c.names("APP1.example.com"));
        assert!(c.names("app1.example.com."));
        assert!(c.names("10.0.1.7"));
        assert!(c.names("2001:db8::7"));
        assert!(!c.names("app2.example.com"));
        assert!(!c.names("example.com"));
        assert!(!c.names("10.0.1.8"));
        assert!(!c.names("::ffff:10.0.1.7"), "no address family games");
        assert!(!c.names(""));
    }

    #[test]
    fn a_wildcard_certificate_stands_for_no_particular_host() {
        let c = cert(&["*.example.com"]);
        assert!(!c.names("ops.example.com"));
        assert!(!c.names("*.example.com"));
        assert!(!c.names("example.com"));
    }
}
