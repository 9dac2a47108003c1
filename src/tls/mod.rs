//! TLS in the IO threads, with rustls and no async runtime: a bind's
//! context ([`Tls`]: its certificates, the two server configs, the ticket
//! keys) and a connection's [`Session`], which the connection feeds the
//! socket's bytes and takes plaintext from. Nothing here knows Ruby.
//!
//! - Handshakes start with rustls's `Acceptor`, which shows the
//!   ClientHello before a config is chosen: a client that offers ALPN
//!   without `http/1.1` (h2 only) gets a handshake without ALPN and speaks
//!   HTTP/1.1, instead of the `no_application_protocol` alert rustls sends
//!   when no protocol matches.
//! - Certificates are picked per handshake by SNI name ([`certs`]) from a
//!   store a reload swaps whole.
//! - Session tickets are sealed with keys every process of a cluster
//!   derives from one secret ([`tickets`]).

pub mod certs;
pub mod client_cert;
pub mod session;
pub mod settings;
pub mod tickets;

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls::{RootCertStore, SupportedCipherSuite};

pub use session::Session;
pub use settings::{CertSpec, Pem, TlsSettings, Verify};
pub use tickets::TicketKeys;

/// What can go wrong setting TLS up; each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{file}: {problem}")]
    File { file: String, problem: String },
    #[error("{0}")]
    Config(String),
}

/// What a connection's handshake established, for the app's env: made
/// once per connection, shared by its requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Info {
    /// The verified client certificate's subject (RFC 4514).
    pub client_subject: Option<String>,
    /// The verified client certificate, PEM.
    pub client_cert: Option<String>,
    /// The host name the client asked for (SNI).
    pub server_name: Option<String>,
}

impl Info {
    pub fn of(session: &Session) -> Info {
        let cert = session.peer_cert();
        Info {
            client_subject: cert.and_then(|c| client_cert::subject(c)),
            client_cert: cert.map(|c| client_cert::pem(c)),
            server_name: session.server_name().map(str::to_string),
        }
    }
}

/// The ALPN protocol offered: HTTP/1.1 only.
const HTTP_1_1: &[u8] = b"http/1.1";

/// One TLS bind: its settings (kept for reloads), its certificates and the
/// server configs its handshakes use.
#[derive(Debug)]
pub struct Tls {
    settings: TlsSettings,
    provider: Arc<CryptoProvider>,
    certs: Arc<certs::Certs>,
    /// For clients that offer `http/1.1` by ALPN.
    with_alpn: Arc<ServerConfig>,
    /// For clients that offer no ALPN, or none we speak.
    without_alpn: Arc<ServerConfig>,
}

/// The ticket keys of this process: made on first use (in a cluster, by
/// the master before it forks), or continued from what an exec'd
/// worker's master passed ([`adopt_ticket_keys`]).
static TICKET_KEYS: OnceLock<Arc<TicketKeys>> = OnceLock::new();

/// This process's ticket keys.
pub fn ticket_keys() -> Result<Arc<TicketKeys>, TlsError> {
    if let Some(keys) = TICKET_KEYS.get() {
        return Ok(keys.clone());
    }
    let fresh = Arc::new(TicketKeys::generate().map_err(|e| TlsError::Config(e.to_string()))?);
    Ok(TICKET_KEYS.get_or_init(|| fresh).clone())
}

/// Continues the ticket keys of the process that exported them; false if
/// this process has keys already or the bytes are not an export.
pub fn adopt_ticket_keys(bytes: &[u8]) -> bool {
    TicketKeys::import(bytes).is_some_and(|keys| TICKET_KEYS.set(Arc::new(keys)).is_ok())
}

impl Tls {
    /// Reads the certificates and builds the configs; an error names the
    /// file or setting at fault.
    pub fn new(settings: TlsSettings) -> Result<Arc<Tls>, TlsError> {
        let provider = Arc::new(provider(settings.suites.as_deref())?);
        let certs = Arc::new(certs::Certs::load(&settings.certs, &provider)?);
        let verifier = match (settings.verify, &settings.client_ca) {
            (Verify::None, _) => WebPkiClientVerifier::no_client_auth(),
            (_, None) => {
                return Err(TlsError::Config(
                    "verify_mode peer or force_peer needs ca (the CA certificates clients' \
                     certificates are checked against)"
                        .into(),
                ))
            }
            (verify, Some(ca)) => {
                let mut roots = RootCertStore::empty();
                for cert in certs::read_chain(ca)? {
                    roots.add(cert).map_err(|e| TlsError::File {
                        file: ca.describe(),
                        problem: format!("not a usable CA certificate: {e}"),
                    })?;
                }
                let builder =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
                let builder = if verify == Verify::Peer {
                    builder.allow_unauthenticated()
                } else {
                    builder
                };
                builder
                    .build()
                    .map_err(|e| TlsError::Config(format!("ca {}: {e}", ca.describe())))?
            }
        };
        let tickets = ticket_keys()?;
        let build = |alpn: bool| -> Result<Arc<ServerConfig>, TlsError> {
            let mut config = ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .map_err(|e| TlsError::Config(format!("ssl_ciphersuites: {e}")))?
                .with_client_cert_verifier(verifier.clone())
                .with_cert_resolver(certs.clone());
            if alpn {
                config.alpn_protocols = vec![HTTP_1_1.to_vec()];
            }
            config.ticketer = tickets.clone();
            // The server's order (`provider`), not the client's: what
            // testssl.sh asks of a server.
            config.ignore_client_order = true;
            // TLS 1.3 hands out tickets; with the shared keys they resume
            // on any worker.
            config.send_tls13_tickets = 2;
            Ok(Arc::new(config))
        };
        let with_alpn = build(true)?;
        let without_alpn = build(false)?;
        Ok(Arc::new(Tls {
            settings,
            provider,
            certs,
            with_alpn,
            without_alpn,
        }))
    }

    /// Reads the certificates again. New handshakes use them; connections
    /// keep theirs. On an error the old ones stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.certs.reload(&self.settings.certs, &self.provider)
    }

    /// The default certificate's end-entity DER.
    pub fn default_cert(&self) -> Option<rustls_pki_types::CertificateDer<'static>> {
        self.certs.default_cert()
    }

    /// What the client's ALPN offer asks for.
    fn config_for(&self, hello: &rustls::server::ClientHello<'_>) -> Arc<ServerConfig> {
        let offers_http1 = hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == HTTP_1_1));
        if offers_http1 {
            self.with_alpn.clone()
        } else {
            self.without_alpn.clone()
        }
    }
}

/// The ring provider, with the cipher suites named (all, if none).
fn provider(names: Option<&[String]>) -> Result<CryptoProvider, TlsError> {
    // ring, not aws-lc-rs: the gem compiles on install, and ring builds
    // in a third of the time (docs/ARCHITECTURE.md, "TLS"). rustls marks
    // it deprecated because it has no post-quantum key exchange.
    #[allow(deprecated)]
    let mut provider = rustls::crypto::ring::default_provider();
    let Some(names) = names else {
        // Mozilla's "intermediate" order: TLS 1.3 first, then AES-128-GCM,
        // AES-256-GCM, ChaCha20. AES-128 first also keeps handshakes on
        // SHA-256 (SHA-384's key schedule cost 11% of a handshake-bound
        // run's CPU: docs/PERFORMANCE.md, "TLS").
        provider.cipher_suites.sort_by_key(|suite| {
            let name = format!("{:?}", suite.suite());
            let cipher = ["AES_128", "AES_256", "CHACHA20"]
                .iter()
                .position(|c| name.contains(c))
                .unwrap_or(3);
            (!name.starts_with("TLS13"), cipher)
        });
        return Ok(provider);
    };
    let mut chosen: Vec<SupportedCipherSuite> = Vec::new();
    for name in names {
        let suite = provider
            .cipher_suites
            .iter()
            .find(|s| suite_names(s).iter().any(|n| n.eq_ignore_ascii_case(name)))
            .ok_or_else(|| {
                let known: Vec<String> = provider
                    .cipher_suites
                    .iter()
                    .map(|s| suite_names(s)[0].clone())
                    .collect();
                TlsError::Config(format!(
                    "ssl_ciphersuites: unknown cipher suite {name:?} (known: {})",
                    known.join(", ")
                ))
            })?;
        if !chosen.iter().any(|s| s.suite() == suite.suite()) {
            chosen.push(*suite);
        }
    }
    provider.cipher_suites = chosen;
    Ok(provider)
}

/// The names a suite goes by: IANA's, rustls's, and OpenSSL's for TLS 1.2.
fn suite_names(suite: &SupportedCipherSuite) -> Vec<String> {
    let rustls_name = format!("{:?}", suite.suite());
    let mut names = vec![rustls_name.replace("TLS13_", "TLS_"), rustls_name.clone()];
    if let Some(rest) = rustls_name.strip_prefix("TLS_ECDHE_") {
        // TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 -> ECDHE-RSA-AES128-GCM-SHA256
        if let Some((auth, cipher)) = rest.split_once("_WITH_") {
            let cipher = cipher
                .replace("AES_128_", "AES128_")
                .replace("AES_256_", "AES256_")
                .replace("CHACHA20_POLY1305_SHA256", "CHACHA20_POLY1305");
            names.push(format!("ECDHE-{auth}-{cipher}").replace('_', "-"));
        }
    }
    names
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn suites_go_by_their_iana_rustls_and_openssl_names() {
        let all = rustls::crypto::ring::ALL_CIPHER_SUITES;
        let names: Vec<Vec<String>> = all.iter().map(suite_names).collect();
        let flat: Vec<&str> = names.iter().flatten().map(String::as_str).collect();
        for expected in [
            "TLS_AES_128_GCM_SHA256",
            "TLS13_CHACHA20_POLY1305_SHA256",
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            "ECDHE-RSA-AES128-GCM-SHA256",
            "ECDHE-ECDSA-CHACHA20-POLY1305",
            "ECDHE-RSA-AES256-GCM-SHA384",
        ] {
            assert!(flat.contains(&expected), "{expected} not in {flat:?}");
        }
        let chosen = provider(Some(&["TLS_AES_256_GCM_SHA384".into()])).unwrap();
        assert_eq!(chosen.cipher_suites.len(), 1);
        let default: Vec<String> = provider(None)
            .unwrap()
            .cipher_suites
            .iter()
            .take(4)
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        assert_eq!(
            default,
            [
                "TLS13_AES_128_GCM_SHA256",
                "TLS13_AES_256_GCM_SHA384",
                "TLS13_CHACHA20_POLY1305_SHA256",
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"
            ]
        );
        let err = provider(Some(&["RC4-MD5".into()])).unwrap_err().to_string();
        assert!(err.contains("unknown cipher suite \"RC4-MD5\""), "{err}");
    }
}
