//! TLS for the gRPC port: mutual TLS between replicas, and TLS from clients.
//!
//! - A replica's certificate, key and the mesh CA are PEM files, the shape a
//!   Kubernetes Secret or cert-manager produces. They are read again when
//!   they change (looked at no more than once a second, when a connection
//!   is made), so rotating them needs no restart; a set that does not load
//!   leaves the last good one in use.
//! - A certificate names its holder in its DNS subject alternative names. A
//!   replica is a peer when its certificate chains to the mesh CA and one of
//!   its names is a peer's host, or matches a `*.suffix` pattern: the hosts
//!   of `replication.peers`, `*.` and the discovery name, and
//!   `tls.peer_names`. An operator's certificate carries a name from
//!   `tls.operator_names`.
//! - On the accepting side a certificate is optional (clients authenticate
//!   otherwise), but one that is presented must be a peer's or an
//!   operator's, or the handshake fails.
//! - Dialing a peer, its certificate must be valid for the name dialed or
//!   name a peer (peers found by discovery are dialed by address).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};

/// How often certificate files are looked at for a change, at most.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Pem { path: PathBuf, what: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The PEM files of one TLS identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// This side's certificate chain, its own first.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA the other side's certificate must chain to.
    pub ca: PathBuf,
}

/// What a loaded set of files holds.
struct Material {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn pem_error(path: &Path, what: impl std::fmt::Display) -> TlsError {
    TlsError::Pem {
        path: path.to_owned(),
        what: what.to_string(),
    }
}

/// The certificates in a PEM file; at least one.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, format!("not PEM certificates ({e})")))?;
    match certs.is_empty() {
        true => Err(pem_error(path, "holds no certificate")),
        false => Ok(certs),
    }
}

/// The mesh CA's certificates as trust roots.
pub fn read_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certificates(path)? {
        roots
            .add(cert)
            .map_err(|e| pem_error(path, format!("not a usable CA certificate ({e})")))?;
    }
    Ok(Arc::new(roots))
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    // The message never quotes the file: it holds a secret.
    let unusable = || pem_error(path, "holds no PEM private key this replica can use");
    let key = PrivateKeyDer::from_pem_slice(&read(path)?).map_err(|_| unusable())?;
    rustls::crypto::ring::sign::any_supported_type(&key).map_err(|_| unusable())?;
    Ok(key)
}

impl TlsFiles {
    fn load(&self) -> Result<Material, TlsError> {
        Ok(Material {
            certs: read_certificates(&self.cert)?,
            key: read_key(&self.key)?,
            roots: read_roots(&self.ca)?,
        })
    }

    /// When and how large each file is: a change to any means a reload.
    fn stamp(&self) -> Vec<Option<(SystemTime, u64)>> {
        [&self.cert, &self.key, &self.ca]
            .iter()
            .map(|p| {
                let m = std::fs::metadata(p).ok()?;
                Some((m.modified().ok()?, m.len()))
            })
            .collect()
    }
}

/// A replica's TLS settings (`[tls]`, checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshTls {
    pub files: TlsFiles,
    /// Peer certificate names beyond those the topology implies.
    pub peer_names: Vec<String>,
    pub operator_names: Vec<String>,
}

impl MeshTls {
    /// Checks that the files load, and the names' shape; the error names
    /// the setting.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let f = &self.files;
        read_certificates(&f.cert).map_err(|e| ("tls.cert_file", e.to_string()))?;
        read_key(&f.key).map_err(|e| ("tls.key_file", e.to_string()))?;
        read_roots(&f.ca).map_err(|e| ("tls.ca_file", e.to_string()))?;
        server(f.clone(), Arc::new(MeshNames::default))
            .map_err(|e| ("tls.key_file", format!("with tls.cert_file: {e}")))?;
        let valid = |n: &String| {
            let n = n.strip_prefix("*.").unwrap_or(n);
            !n.is_empty()
                && n.split('.').all(|label| {
                    !label.is_empty()
                        && label
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ':')
                })
        };
        for (key, names) in [
            ("tls.peer_names", &self.peer_names),
            ("tls.operator_names", &self.operator_names),
        ] {
            if let Some(bad) = names.iter().find(|n| !valid(n)) {
                return Err((
                    key,
                    format!("{bad:?} is not a host name or *.suffix pattern"),
                ));
            }
        }
        Ok(())
    }

    /// Peer and operator names, given the names the topology implies.
    pub fn names(&self, topology: impl IntoIterator<Item = String>) -> MeshNames {
        let mut peers = NameRules::new(&self.peer_names);
        for name in topology {
            peers.add(&name);
        }
        MeshNames {
            peers,
            operators: NameRules::new(&self.operator_names),
        }
    }
}

/// Host names, and `*.suffix` patterns matching any name under `suffix`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameRules {
    exact: Vec<String>,
    suffixes: Vec<String>,
}

impl NameRules {
    pub fn new<S: AsRef<str>>(patterns: impl IntoIterator<Item = S>) -> Self {
        let mut rules = Self::default();
        for p in patterns {
            rules.add(p.as_ref());
        }
        rules
    }

    pub fn add(&mut self, pattern: &str) {
        let pattern = pattern.trim().trim_end_matches('.').to_ascii_lowercase();
        match pattern.strip_prefix("*.") {
            Some(suffix) if !suffix.is_empty() => self.suffixes.push(format!(".{suffix}")),
            _ if !pattern.is_empty() => self.exact.push(pattern),
            _ => {}
        }
    }

    pub fn matches(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.exact.contains(&name)
            || self
                .suffixes
                .iter()
                .any(|s| name.len() > s.len() && name.ends_with(s.as_str()))
    }

    /// Whether a certificate carrying `name` is one these rules allow. A
    /// wildcard name (`*.headless.ns.svc`, one certificate shared by every
    /// pod under a headless Service) stands for any one label under its
    /// suffix: it is allowed where every such name is, or where a host
    /// listed exactly is one.
    pub fn allows_certificate_name(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let Some(suffix) = name.strip_prefix('*') else {
            return self.matches(&name);
        };
        self.suffixes.iter().any(|s| s == suffix)
            || self.exact.iter().any(|e| {
                e.strip_suffix(suffix)
                    .is_some_and(|label| !label.is_empty() && !label.contains('.'))
            })
    }

    /// The first of a certificate's `names` these rules allow.
    pub fn first<'a>(&self, names: &'a [String]) -> Option<&'a String> {
        names.iter().find(|n| self.allows_certificate_name(n))
    }
}

/// The DNS names (lowercased) and IP addresses a certificate's subject
/// alternative names carry; none when it cannot be parsed.
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(name) => Some(name.to_ascii_lowercase()),
            GeneralName::IPAddress(ip) => match ip.len() {
                4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).ok()?).to_string()),
                16 => Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).ok()?).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Who a certificate from the mesh CA belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertRole {
    /// A replica of the mesh, by the certificate's name that made it one.
    Peer(String),
    Operator(String),
}

/// Which certificate names are peers and which operators.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeshNames {
    pub peers: NameRules,
    pub operators: NameRules,
}

impl MeshNames {
    /// The role of a certificate, by its names: a peer before an operator.
    pub fn role(&self, der: &[u8]) -> Option<CertRole> {
        let names = certificate_names(der);
        if let Some(name) = self.peers.first(&names) {
            return Some(CertRole::Peer(name.clone()));
        }
        self.operators
            .first(&names)
            .map(|name| CertRole::Operator(name.clone()))
    }
}

/// The host part of `host:port` (an IPv6 address in brackets loses them).
pub fn host_of(address: &str) -> &str {
    let address = address
        .split_once("://")
        .map_or(address, |(_, rest)| rest)
        .trim_end_matches('/');
    let host = match address.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => address,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Where the current names come from: read at each handshake, so a config
/// reload that adds a peer lets its certificate in.
pub type NameSource = Arc<dyn Fn() -> MeshNames + Send + Sync>;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Certificate files loaded into a config of type `T`, loaded again when
/// they change.
pub struct Reloading<T> {
    files: TlsFiles,
    build: Box<dyn Fn(Material) -> Result<T, TlsError> + Send + Sync>,
    state: Mutex<LoadState<T>>,
}

struct LoadState<T> {
    checked: Instant,
    stamp: Vec<Option<(SystemTime, u64)>>,
    current: Arc<T>,
}

impl<T> Reloading<T> {
    fn new(
        files: TlsFiles,
        build: impl Fn(Material) -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Self, TlsError> {
        let stamp = files.stamp();
        let current = Arc::new(build(files.load()?)?);
        Ok(Self {
            files,
            build: Box::new(build),
            state: Mutex::new(LoadState {
                checked: Instant::now(),
                stamp,
                current,
            }),
        })
    }

    /// The config from the files as they are now (as of at most a second
    /// ago).
    pub fn current(&self) -> Arc<T> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.checked.elapsed() < RELOAD_CHECK {
            return state.current.clone();
        }
        state.checked = Instant::now();
        let stamp = self.files.stamp();
        if stamp != state.stamp {
            match self.files.load().and_then(|m| (self.build)(m)) {
                Ok(config) => {
                    tracing::info!(cert = %self.files.cert.display(), "TLS certificate files reloaded");
                    state.current = Arc::new(config);
                    state.stamp = stamp;
                }
                // Kept as it was; tried again at the next check (a rotation
                // may be half written).
                Err(e) => {
                    tracing::warn!(error = %e, "TLS files changed but do not load; the last good ones stay in use")
                }
            }
        }
        state.current.clone()
    }
}

/// The accepting side of a replica's gRPC port.
pub type ServerTls = Reloading<ServerConfig>;

/// Loads the accepting side: this replica's certificate, and the mesh CA
/// that a certificate a caller presents must chain to.
pub fn server(files: TlsFiles, names: NameSource) -> Result<ServerTls, TlsError> {
    Reloading::new(files, move |m| {
        let provider = provider();
        let inner = rustls::server::WebPkiClientVerifier::builder_with_provider(
            m.roots.clone(),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
        let verifier = Arc::new(MeshClientVerifier {
            inner,
            names: names.clone(),
        });
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(m.certs, m.key)
            .map_err(|e| TlsError::Config(format!("certificate and key: {e}")))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    })
}

/// The dialing side of a replica: presents its certificate, and takes a
/// peer's when it chains to the mesh CA and is valid for the name dialed or
/// names a peer.
pub fn peer_client(
    files: TlsFiles,
    names: NameSource,
) -> Result<Reloading<ClientConfig>, TlsError> {
    Reloading::new(files, move |m| {
        let verifier = Arc::new(MeshServerVerifier {
            roots: m.roots,
            provider: provider(),
            names: names.clone(),
        });
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(m.certs, m.key)
            .map_err(|e| TlsError::Config(format!("certificate and key: {e}")))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    })
}

/// A client's TLS to a replica: the CA its certificate must chain to (by
/// the name dialed), and optionally a certificate to present (an
/// operator's).
pub fn client(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = read_roots(ca)?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(read_certificates(cert)?, read_key(key)?)
            .map_err(|e| TlsError::Config(format!("certificate and key: {e}")))?,
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Takes a certificate that chains to the mesh CA and names a peer or an
/// operator; a caller may also present none.
struct MeshClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    names: NameSource,
}

impl std::fmt::Debug for MeshClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MeshClientVerifier")
    }
}

impl std::fmt::Debug for MeshServerVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MeshServerVerifier")
    }
}

impl ClientCertVerifier for MeshClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        match (self.names)().role(end_entity) {
            Some(_) => Ok(verified),
            None => Err(rustls::Error::General(
                "the certificate names no peer or operator of this replica".into(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Takes a peer's certificate that chains to the mesh CA and is valid for
/// the name dialed, or names a peer.
struct MeshServerVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    names: NameSource,
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        if rustls::client::verify_server_name(&cert, server_name).is_ok() {
            return Ok(ServerCertVerified::assertion());
        }
        match (self.names)().role(end_entity) {
            Some(CertRole::Peer(_)) => Ok(ServerCertVerified::assertion()),
            _ => Err(rustls::Error::General(format!(
                "the certificate is not valid for {} and names no peer",
                server_name.to_str()
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A tonic connector that dials `host:port` and speaks TLS over it, with
/// the config `config` returns at each dial (so a reload is picked up by
/// the next connection).
pub fn dialer<F>(
    config: F,
) -> impl tower::Service<
    http::Uri,
    Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone
+ Send
+ 'static
where
    F: Fn() -> Arc<ClientConfig> + Clone + Send + Sync + 'static,
{
    tower::service_fn(move |uri: http::Uri| {
        let config = config();
        async move {
            let invalid =
                |what: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
            let host = uri
                .host()
                .ok_or_else(|| invalid(format!("{uri} names no host")))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri
                .port_u16()
                .ok_or_else(|| invalid(format!("{uri} names no port")))?;
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(host)
                .map_err(|e| invalid(format!("{uri}: not a TLS server name ({e})")))?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_exactly_or_under_a_suffix() {
        let rules = NameRules::new(["replica-0.example", "*.headless.ns.svc", "  "]);
        assert!(rules.matches("replica-0.example"));
        assert!(rules.matches("REPLICA-0.example."));
        assert!(rules.matches("r-1.headless.ns.svc"));
        assert!(
            !rules.matches("headless.ns.svc"),
            "the suffix alone is not under it"
        );
        assert!(!rules.matches("r-1.headless.ns.svc.evil"));
        assert!(!rules.matches("xreplica-0.example"));
        assert!(!rules.matches(""));
    }

    #[test]
    fn a_wildcard_certificate_stands_for_one_label_under_its_suffix() {
        let listed = NameRules::new(["r-0.headless.ns.svc", "r-1.headless.ns.svc"]);
        assert!(listed.allows_certificate_name("*.headless.ns.svc"));
        assert!(
            !listed.allows_certificate_name("*.ns.svc"),
            "two labels under it"
        );
        assert!(!listed.allows_certificate_name("*.other.ns.svc"));
        let pattern = NameRules::new(["*.headless.ns.svc"]);
        assert!(pattern.allows_certificate_name("*.headless.ns.svc"));
        assert!(pattern.allows_certificate_name("r-7.headless.ns.svc"));
        assert!(!pattern.allows_certificate_name("*.svc"));
        assert_eq!(
            listed.first(&["stranger.example".into(), "*.headless.ns.svc".into()]),
            Some(&"*.headless.ns.svc".to_owned())
        );
    }

    #[test]
    fn the_host_of_an_address() {
        assert_eq!(host_of("replica-0.h.ns.svc:7700"), "replica-0.h.ns.svc");
        assert_eq!(host_of("http://127.0.0.1:7700/"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7700"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
    }
}
