//! Certificates: read from PEM, checked against their keys, and served by
//! SNI name from a store that a reload swaps whole. Handshakes under way
//! keep the store they started with; the next one sees the new store.

use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::settings::{CertSpec, Pem};
use super::TlsError;

/// One loaded certificate chain and its signing key.
#[derive(Debug)]
struct Entry {
    /// The SNI name it was given for, lower-cased, if one was.
    host: Option<String>,
    key: Arc<CertifiedKey>,
}

/// The certificates of one TLS bind. The first is the default.
#[derive(Debug)]
pub struct Certs {
    store: RwLock<Arc<Vec<Entry>>>,
}

impl Certs {
    /// Reads every certificate and key; the first problem is an error
    /// naming its file.
    pub fn load(specs: &[CertSpec], provider: &CryptoProvider) -> Result<Certs, TlsError> {
        Ok(Certs {
            store: RwLock::new(Arc::new(read_all(specs, provider)?)),
        })
    }

    /// Reads them all again and swaps the store; on an error the old one
    /// stays.
    pub fn reload(&self, specs: &[CertSpec], provider: &CryptoProvider) -> Result<(), TlsError> {
        let fresh = Arc::new(read_all(specs, provider)?);
        match self.store.write() {
            Ok(mut store) => *store = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }

    fn current(&self) -> Arc<Vec<Entry>> {
        match self.store.read() {
            Ok(store) => store.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The default certificate's end-entity DER (tests and the banner).
    pub fn default_cert(&self) -> Option<CertificateDer<'static>> {
        let store = self.current();
        store.first().and_then(|e| e.key.cert.first().cloned())
    }

    /// The certificate for a client that asked for `name` (or none).
    fn pick(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let store = self.current();
        let Some(name) = name else {
            return store.first().map(|e| e.key.clone());
        };
        let name = name.to_ascii_lowercase();
        if let Some(entry) = store.iter().find(|e| e.host.as_deref() == Some(&name)) {
            return Some(entry.key.clone());
        }
        let wanted = ServerName::try_from(name.as_str()).ok();
        let covers = |entry: &&Entry| {
            let (Some(wanted), Some(der)) = (&wanted, entry.key.cert.first()) else {
                return false;
            };
            webpki::EndEntityCert::try_from(der)
                .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(wanted).is_ok())
        };
        store
            .iter()
            .find(covers)
            .or(store.first())
            .map(|e| e.key.clone())
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

fn read_all(specs: &[CertSpec], provider: &CryptoProvider) -> Result<Vec<Entry>, TlsError> {
    if specs.is_empty() {
        return Err(TlsError::Config(
            "a TLS bind needs a certificate and its key".into(),
        ));
    }
    specs
        .iter()
        .map(|spec| {
            Ok(Entry {
                host: spec.host.as_ref().map(|h| h.to_ascii_lowercase()),
                key: Arc::new(read_pair(spec, provider)?),
            })
        })
        .collect()
}

/// A chain and its key, checked to belong together.
fn read_pair(spec: &CertSpec, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain = read_chain(&spec.cert)?;
    let key = read_key(&spec.key)?;
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::File {
            file: spec.key.describe(),
            problem: format!("unusable private key: {e}"),
        })?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|_| TlsError::File {
        file: spec.key.describe(),
        problem: format!(
            "is not the key of the certificate in {}",
            spec.cert.describe()
        ),
    })?;
    Ok(certified)
}

/// Every certificate in a PEM source, in order (the end entity first).
pub fn read_chain(pem: &Pem) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(pem)?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::File {
            file: pem.describe(),
            problem: format!("not a PEM certificate: {e}"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::File {
            file: pem.describe(),
            problem: "holds no certificate (expected -----BEGIN CERTIFICATE-----)".into(),
        });
    }
    Ok(chain)
}

fn read_key(pem: &Pem) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(pem)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::File {
        file: pem.describe(),
        problem: match e {
            rustls_pki_types::pem::Error::NoItemsFound => {
                "holds no private key (expected -----BEGIN PRIVATE KEY-----)".into()
            }
            e => format!("not a PEM private key: {e}"),
        },
    })
}

fn read(pem: &Pem) -> Result<Vec<u8>, TlsError> {
    match pem {
        Pem::Inline(text) => Ok(text.as_bytes().to_vec()),
        Pem::File(path) => std::fs::read(path).map_err(|e| TlsError::File {
            file: pem.describe(),
            problem: format!("cannot be read: {e}"),
        }),
    }
}
