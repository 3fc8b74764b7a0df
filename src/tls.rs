//! TLS material and configuration (docs/design.md §6 `tls`, `wss://` upstreams): PEM certificates
//! and keys from Secrets made into what rustls serves, the certificates of a snapshot by
//! hostname for SNI, and the client configuration that verifies an upstream. Parsing is pure
//! (compile calls it, and the same bytes are parsed only once); only [`system_roots`] reads
//! the machine's trust store, once.
//!
//! TLS 1.2 and 1.3 only, with rustls' `ring` provider, whose suites are all AEAD with forward
//! secrecy: nothing legacy to switch off.

use std::fmt;
use std::sync::{Arc, LazyLock, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::memo::ContentMemo;

/// The Secret keys of a `kubernetes.io/tls` Secret.
pub const CERT_KEY: &str = "tls.crt";
/// The private key's Secret key.
pub const PRIVATE_KEY: &str = "tls.key";
/// The Secret key of a CA bundle for verifying an upstream.
pub const CA_KEY: &str = "ca.crt";

/// What is wrong with TLS material from a Secret, said so a person can fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaterialError {
    /// No PEM certificate in the data.
    #[error("`{0}` holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)")]
    NoCertificate(&'static str),
    /// No PEM private key in the data.
    #[error("`{PRIVATE_KEY}` holds no PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC)")]
    NoKey,
    /// The key cannot sign (an unsupported algorithm or a damaged key).
    #[error("the private key in `{PRIVATE_KEY}` cannot be used: {0}")]
    UnusableKey(String),
    /// The key does not belong to the first certificate.
    #[error(
        "the private key in `{PRIVATE_KEY}` does not belong to the first certificate in `{CERT_KEY}` (the first must be the server's own, then its intermediates)"
    )]
    KeyMismatch,
    /// A CA bundle certificate that cannot be a trust anchor.
    #[error("a certificate in `{CA_KEY}` cannot be used as a trust anchor: {0}")]
    BadAnchor(String),
}

/// The crypto provider every TLS configuration uses.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Most parsed certificates, and CA bundles, remembered across compiles.
const MEMO_CAPACITY: usize = 256;

/// A certificate chain (end entity first) and its private key, both PEM, ready to serve;
/// the same bytes again give the same `Arc` without parsing again.
pub fn certified_key(chain_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>, MaterialError> {
    static MEMO: LazyLock<ContentMemo<Result<Arc<CertifiedKey>, MaterialError>>> =
        LazyLock::new(|| ContentMemo::new(MEMO_CAPACITY));
    MEMO.get_or_parse(&[chain_pem, key_pem], || {
        parse_certified_key(chain_pem, key_pem).map(Arc::new)
    })
}

fn parse_certified_key(chain_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, MaterialError> {
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| MaterialError::NoCertificate(CERT_KEY))?;
    if chain.is_empty() {
        return Err(MaterialError::NoCertificate(CERT_KEY));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| MaterialError::NoKey)?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => MaterialError::KeyMismatch,
        other => MaterialError::UnusableKey(other.to_string()),
    })
}

/// The certificates of one snapshot by hostname: exact names, and `*.suffix` wildcards that
/// match one or more labels before the suffix (as routes' hostnames do).
#[derive(Debug, Default, Clone)]
pub struct Certificates {
    exact: foldhash::HashMap<String, Arc<CertifiedKey>>,
    wildcard: foldhash::HashMap<String, Arc<CertifiedKey>>,
}

impl Certificates {
    /// Serves `key` for `hostname` (`name` or `*.suffix`) unless one is already set: callers
    /// insert in route age order, so the oldest route's certificate wins.
    pub fn insert(&mut self, hostname: &str, key: Arc<CertifiedKey>) {
        let (map, name) = match hostname.strip_prefix("*.") {
            Some(suffix) => (&mut self.wildcard, suffix),
            None => (&mut self.exact, hostname),
        };
        map.entry(name.to_owned()).or_insert(key);
    }

    /// The certificate for an SNI name (any case): the exact name first, then the nearest
    /// wildcard.
    pub fn lookup(&self, sni: &str) -> Option<&Arc<CertifiedKey>> {
        let name = sni.strip_suffix('.').unwrap_or(sni).to_ascii_lowercase();
        if let Some(key) = self.exact.get(&name) {
            return Some(key);
        }
        let mut rest = name.as_str();
        while let Some((_, suffix)) = rest.split_once('.') {
            if let Some(key) = self.wildcard.get(suffix) {
                return Some(key);
            }
            rest = suffix;
        }
        None
    }

    /// Whether no hostname has a certificate.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }
}

/// A server configuration that picks certificates with `resolver`; TLS 1.2 and 1.3, HTTP/2
/// (WebSockets as extended CONNECT streams, RFC 8441) or HTTP/1.1, as the client prefers.
pub fn server_config(resolver: Arc<dyn rustls::server::ResolvesServerCert>) -> ServerConfig {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Stateless session tickets, under keys that rotate every 6 hours (each valid for 12):
    // any client this process served can resume, not only the last 128 as with rustls'
    // default in-memory cache of 256 sessions. Each replica has keys of its own (see the
    // README's TLS section for why they are not shared).
    config.ticketer = rustls::crypto::ring::Ticketer::new()
        .expect("the system's random source gives ticket keys");
    config
}

/// How a route's gateway-to-upstream connection is secured.
#[derive(Clone)]
pub struct UpstreamTls {
    /// The name sent as SNI and verified in the upstream's certificate.
    pub server_name: ServerName<'static>,
    /// A client configuration trusting a route's own CA bundle; `None` trusts the system's.
    pub roots: Option<Arc<ClientConfig>>,
    /// Where the trust anchors come from (`system`, or the Secret), for display and
    /// comparison.
    pub anchors: String,
}

impl UpstreamTls {
    /// The client configuration to connect with.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.roots.clone().unwrap_or_else(system_roots)
    }
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .field("anchors", &self.anchors)
            .finish()
    }
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.server_name == other.server_name
            && self.anchors == other.anchors
            && match (&self.roots, &other.roots) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
    }
}

impl Eq for UpstreamTls {}

/// The machine's trust store (read once), for upstreams without their own CA bundle.
pub fn system_roots() -> Arc<ClientConfig> {
    static SYSTEM: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    SYSTEM
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "reading the system trust store");
            }
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            tracing::debug!(added, ignored, "system trust anchors loaded");
            client_config(roots)
        })
        .clone()
}

/// A client configuration trusting only the CA certificates in `bundle_pem`; the same bytes
/// again give the same `Arc` without parsing again.
pub fn ca_bundle(bundle_pem: &[u8]) -> Result<Arc<ClientConfig>, MaterialError> {
    static MEMO: LazyLock<ContentMemo<Result<Arc<ClientConfig>, MaterialError>>> =
        LazyLock::new(|| ContentMemo::new(MEMO_CAPACITY));
    MEMO.get_or_parse(&[bundle_pem], || parse_ca_bundle(bundle_pem))
}

fn parse_ca_bundle(bundle_pem: &[u8]) -> Result<Arc<ClientConfig>, MaterialError> {
    let certs = CertificateDer::pem_slice_iter(bundle_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| MaterialError::NoCertificate(CA_KEY))?;
    if certs.is_empty() {
        return Err(MaterialError::NoCertificate(CA_KEY));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| MaterialError::BadAnchor(e.to_string()))?;
    }
    Ok(client_config(roots))
}

fn client_config(roots: RootCertStore) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let cert = rcgen::generate_simple_self_signed(names).expect("certificate");
        (cert.cert.pem(), cert.signing_key.serialize_pem())
    }

    #[test]
    fn a_chain_and_its_key_make_a_certified_key() {
        let (cert, key) = self_signed(&["chat.example.test"]);
        let ck = certified_key(cert.as_bytes(), key.as_bytes()).expect("valid");
        assert_eq!(ck.cert.len(), 1);
    }

    #[test]
    fn bad_material_says_what_is_wrong() {
        let (cert, key) = self_signed(&["a.example.test"]);
        let (_, other_key) = self_signed(&["b.example.test"]);
        assert_eq!(
            certified_key(b"not pem", key.as_bytes()).unwrap_err(),
            MaterialError::NoCertificate(CERT_KEY)
        );
        assert_eq!(
            certified_key(cert.as_bytes(), b"").unwrap_err(),
            MaterialError::NoKey
        );
        let mismatch = certified_key(cert.as_bytes(), other_key.as_bytes()).unwrap_err();
        assert_eq!(mismatch, MaterialError::KeyMismatch);
        assert!(
            mismatch.to_string().contains("does not belong"),
            "{mismatch}"
        );
    }

    #[test]
    fn sni_picks_the_exact_name_then_the_nearest_wildcard() {
        let (cert, key) = self_signed(&["x.test"]);
        let a = certified_key(cert.as_bytes(), key.as_bytes()).expect("a");
        let (cert, key) = self_signed(&["y.test"]);
        let b = certified_key(cert.as_bytes(), key.as_bytes()).expect("b");
        let mut certs = Certificates::default();
        certs.insert("chat.example.test", a.clone());
        certs.insert("*.example.test", b.clone());
        // The first insert for a name wins.
        certs.insert("chat.example.test", b.clone());
        assert!(Arc::ptr_eq(
            certs.lookup("Chat.Example.Test").expect("exact"),
            &a
        ));
        assert!(Arc::ptr_eq(
            certs.lookup("x.y.example.test").expect("wild"),
            &b
        ));
        assert!(certs.lookup("example.test").is_none());
        assert!(certs.lookup("evil-example.test").is_none());
    }

    #[test]
    fn a_ca_bundle_must_hold_certificates() {
        let (cert, _) = self_signed(&["ca.test"]);
        assert!(ca_bundle(cert.as_bytes()).is_ok());
        assert_eq!(
            ca_bundle(b"").unwrap_err(),
            MaterialError::NoCertificate(CA_KEY)
        );
    }
}
