//! What a TLS bind asks for, as the configuration gives it: certificate
//! and key sources, the client-certificate policy, the cipher suites. No
//! file is read here.

use std::path::PathBuf;

/// Where a PEM document comes from. A file is read again on reload; an
/// inline one stays as it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pem {
    File(PathBuf),
    Inline(String),
}

impl Pem {
    /// How errors name it: the path, or "inline PEM".
    pub fn describe(&self) -> String {
        match self {
            Pem::File(path) => path.display().to_string(),
            Pem::Inline(_) => "inline PEM".to_string(),
        }
    }
}

/// One certificate chain and its key. `host`, when given, is the SNI name
/// it serves first; otherwise the names it serves are those it was issued
/// for (its subjectAltName).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSpec {
    pub host: Option<String>,
    pub cert: Pem,
    pub key: Pem,
}

/// Whether clients present a certificate (Puma's `verify_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verify {
    /// None is asked for.
    #[default]
    None,
    /// Asked for, checked against the CA when given, optional.
    Peer,
    /// Required: a handshake without a valid one fails.
    ForcePeer,
}

impl Verify {
    pub fn parse(name: &str) -> Option<Verify> {
        match name {
            "none" => Some(Verify::None),
            "peer" => Some(Verify::Peer),
            "force_peer" => Some(Verify::ForcePeer),
            _ => None,
        }
    }
}

/// One TLS bind's settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsSettings {
    /// The first is served when the client names no host, or one no
    /// certificate covers.
    pub certs: Vec<CertSpec>,
    /// CA certificates client certificates are checked against.
    pub client_ca: Option<Pem>,
    pub verify: Verify,
    /// Cipher suite names (IANA `TLS_AES_128_GCM_SHA256`, OpenSSL
    /// `ECDHE-RSA-AES128-GCM-SHA256`, or rustls `TLS13_AES_128_GCM_SHA256`);
    /// `None`: the provider's defaults.
    pub suites: Option<Vec<String>>,
}
