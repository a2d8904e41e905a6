//! TLS with rustls (ring provider, its safe defaults: TLS 1.2 and 1.3): the
//! public listener's certificates (one default, more chosen by SNI) and the
//! client certificates it may require (`tls.client_ca`), the
//! development certificate of `mcpflip cert --dev`, and the client side for
//! `https://` upstreams.
//!
//! Every error names the file and what is wrong with it, because these are read
//! at start-up and on `reload`, where an operator fixes them by hand.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use serde::{Deserialize, Serialize};

/// The `[listen] tls` section: the certificate the listener serves.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// More certificates, chosen by the SNI name the client asks for (an
    /// extension: `sni = [{ cert = "...", key = "..." }]`).
    #[serde(default)]
    pub sni: Vec<CertPair>,
    /// Mutual TLS: every client must present a certificate that one of the
    /// CA certificates in this PEM file signed (nginx's
    /// `ssl_client_certificate` with `ssl_verify_client on`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
    /// Revoked client certificates: a PEM file of CRLs (`X509 CRL`) of the
    /// `client_ca` CAs (nginx's `ssl_crl`); re-read on `reload`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_crl: Option<PathBuf>,
    /// With `client_ca`: whether a client without a certificate is refused.
    #[serde(default, skip_serializing_if = "ClientAuth::is_required")]
    pub client_auth: ClientAuth,
    /// The oldest TLS version the listener speaks (nginx's `ssl_protocols`).
    #[serde(default, skip_serializing_if = "TlsVersion::is_default")]
    pub min_version: TlsVersion,
    /// The cipher suites the listener may negotiate, by IANA name
    /// (nginx's `ssl_ciphers`, HAProxy's `ciphers` and `ciphersuites`);
    /// empty: every suite rustls offers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ciphers: Vec<String>,
    /// Certificates from an ACME CA (Let's Encrypt), written to `cert` and
    /// `key` and renewed before they expire (`src/acme.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acme: Option<AcmeConfig>,
}

/// `tls.acme`: the certificate of `cert`/`key` obtained and renewed from an
/// ACME CA, the CA's `tls-alpn-01` challenge answered on the listener itself.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// The names the certificate is for (DNS names that resolve to this
    /// listener, which the CA reaches on port 443).
    pub domains: Vec<String>,
    /// The account's contact (`mailto:` is added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The CA's directory URL.
    #[serde(default = "default_acme_directory")]
    pub directory: String,
    /// The CA certificates the directory's own HTTPS is checked against
    /// (a private ACME CA); the system's roots otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory_ca: Option<PathBuf>,
    /// How long before its end a certificate is renewed (`None`: when a
    /// third of its lifetime is left, as Caddy does).
    #[serde(
        default,
        deserialize_with = "humantime_duration",
        serialize_with = "humantime_out",
        skip_serializing_if = "Option::is_none"
    )]
    pub renew_before: Option<std::time::Duration>,
    /// External account binding, for a CA that asks for one (ZeroSSL,
    /// Google Trust Services): the key id and a file holding the HMAC key
    /// as the CA hands it out (base64url).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eab: Option<AcmeEab>,
    /// In a fleet (`[cluster]`): the issued certificate and its key are kept
    /// in etcd, so that one order serves every instance (`false`: each
    /// instance orders its own, and the key never leaves its host).
    #[serde(default = "default_share", skip_serializing_if = "is_true")]
    pub share: bool,
}

fn default_share() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// `tls.acme.eab`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeEab {
    pub kid: String,
    pub hmac_key_file: PathBuf,
}

impl AcmeEab {
    /// The HMAC key of `hmac_key_file` (base64url, padded or not), decoded.
    pub fn hmac_key(&self) -> Result<Vec<u8>, String> {
        use base64::Engine as _;
        let text = crate::files::read_to_string(&self.hmac_key_file, crate::files::MAX_SECRET)
            .map_err(|e| {
                format!(
                    "tls.acme.eab.hmac_key_file {}: {e}",
                    self.hmac_key_file.display()
                )
            })?;
        let text = text.trim().trim_end_matches('=');
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .ok()
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                format!(
                    "tls.acme.eab.hmac_key_file {}: not a base64url key",
                    self.hmac_key_file.display()
                )
            })
    }
}

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

fn default_acme_directory() -> String {
    LETS_ENCRYPT.to_owned()
}

fn humantime_duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<std::time::Duration>, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn humantime_out<S: serde::Serializer>(
    d: &Option<std::time::Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
        None => s.serialize_none(),
    }
}

impl TlsConfig {
    /// `cert` and `key` as a pair.
    pub fn pair(&self) -> CertPair {
        CertPair {
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }
}

impl AcmeConfig {
    /// What is wrong with it, if anything.
    pub fn check(&self) -> Result<(), String> {
        if self.domains.is_empty() || self.domains.len() > 100 {
            return Err("tls.acme.domains: between 1 and 100 names".into());
        }
        for d in &self.domains {
            let ok = !d.is_empty()
                && d.len() <= 253
                && d.split('.').count() >= 2
                && d.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                });
            if !ok {
                return Err(format!(
                    "tls.acme.domains: {d:?} is not a DNS name the CA can validate over tls-alpn-01 (no wildcards, no addresses)"
                ));
            }
        }
        if !self.directory.starts_with("https://") {
            return Err(format!(
                "tls.acme.directory: {:?} is not an https:// URL",
                self.directory
            ));
        }
        if self
            .renew_before
            .is_some_and(|r| r < std::time::Duration::from_secs(3600))
        {
            return Err("tls.acme.renew_before: at least 1h".into());
        }
        if let Some(eab) = &self.eab {
            if eab.kid.is_empty() || eab.kid.len() > 256 {
                return Err("tls.acme.eab.kid: 1 to 256 characters".into());
            }
            eab.hmac_key()?;
        }
        Ok(())
    }
}

/// The ALPN protocol of the ACME `tls-alpn-01` challenge (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The `tls-alpn-01` answers the listener serves while an order is
/// validated, by domain (`src/acme.rs` puts and takes them).
pub static ACME_CHALLENGES: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<String, Arc<CertifiedKey>>>,
> = std::sync::LazyLock::new(Default::default);

/// A rustls signing key of `key`'s PKCS#8 DER.
pub fn signing_key(pkcs8: &[u8]) -> Result<Arc<dyn rustls::sign::SigningKey>, rustls::Error> {
    let der = PrivateKeyDer::Pkcs8(pkcs8.to_vec().into());
    provider().key_provider.load_private_key(der)
}

/// What the listener serves under `tls.acme` until the CA issued a
/// certificate: a self-signed one for the domains (clients refuse it; the
/// listener still starts and answers the CA's challenge).
fn acme_placeholder(acme: &AcmeConfig) -> Result<Loaded, String> {
    let err = |e: rcgen::Error| format!("tls.acme: cannot make the placeholder certificate: {e}");
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let mut params = rcgen::CertificateParams::new(acme.domains.clone()).map_err(err)?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        "mcpflip: waiting for the ACME CA",
    );
    let cert = params.self_signed(&key).map_err(err)?;
    let signing =
        signing_key(&key.serialize_der()).map_err(|e| format!("tls.acme: placeholder key: {e}"))?;
    Ok(Loaded {
        key: Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing)),
        names: acme.domains.clone(),
        not_after: None,
        not_before: None,
    })
}

/// `tls.min_version`: TLS 1.2 (and 1.3), or 1.3 alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    V1_2,
    #[serde(rename = "1.3")]
    V1_3,
}

impl TlsVersion {
    fn is_default(&self) -> bool {
        *self == TlsVersion::default()
    }

    /// The versions a listener with this minimum speaks.
    fn versions(self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        static BOTH: [&rustls::SupportedProtocolVersion; 2] =
            [&rustls::version::TLS13, &rustls::version::TLS12];
        static TLS13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        match self {
            TlsVersion::V1_2 => &BOTH,
            TlsVersion::V1_3 => &TLS13,
        }
    }
}

/// `tls.client_auth`: what `client_ca` asks of a client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// A certificate the CA signed, or no connection (nginx's
    /// `ssl_verify_client on`).
    #[default]
    Required,
    /// A client without a certificate is served too; one it presents must
    /// verify (nginx's `ssl_verify_client optional`), and only then is it
    /// told to the slot.
    Optional,
}

impl ClientAuth {
    fn is_required(&self) -> bool {
        *self == ClientAuth::Required
    }
}

/// A certificate chain and its private key (PEM files).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The cipher suites rustls offers here, by IANA name, strongest first.
pub fn cipher_names() -> Vec<String> {
    rustls::crypto::ring::default_provider()
        .cipher_suites
        .iter()
        .map(|s| format!("{:?}", s.suite()))
        .collect()
}

/// The provider with only the suites `names` lists (in the provider's order
/// of preference, not the list's); all of them when `names` is empty.
fn with_ciphers(names: &[String]) -> Result<Arc<CryptoProvider>, String> {
    if names.is_empty() {
        return Ok(provider());
    }
    let mut p = rustls::crypto::ring::default_provider();
    let known = cipher_names();
    if let Some(bad) = names.iter().find(|n| !known.contains(n)) {
        return Err(format!(
            "tls.ciphers: unknown cipher suite {bad:?}; the suites are {}",
            known.join(", ")
        ));
    }
    p.cipher_suites
        .retain(|s| names.iter().any(|n| *n == format!("{:?}", s.suite())));
    Ok(Arc::new(p))
}

/// A certificate chain and its key, loaded and checked.
#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    /// DNS names (and IP addresses, as text) the leaf certificate is for.
    names: Vec<String>,
    /// The leaf's notAfter, seconds since the Unix epoch (`None`: unparsable).
    not_after: Option<i64>,
    /// The leaf's notBefore, likewise.
    not_before: Option<i64>,
}

/// What a certificate and its key are for, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// DNS names (and IP addresses, as text) of the leaf.
    pub names: Vec<String>,
    /// The leaf's notBefore and notAfter, seconds since the Unix epoch
    /// (`None`: unparsable).
    pub not_before: Option<i64>,
    pub not_after: Option<i64>,
}

/// A certificate the listener serves, for `mcpflip_certificate_expiry_timestamp_seconds`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The certificate file.
    pub file: PathBuf,
    /// Its first DNS name or IP address (the file name when it has none).
    pub name: String,
    /// The leaf's notAfter, seconds since the Unix epoch.
    pub not_after: i64,
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    crate::files::read(path, crate::files::MAX_PEM)
        .map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
}

/// Reads the PEM certificates of `path` (leaf first).
pub fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    parse_chain(&read(path, "certificate file")?, path)
}

/// The PEM certificates of `pem` (leaf first), read from `path`.
fn parse_chain(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{}: no certificate in it (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(chain)
}

/// The DNS names (and addresses) of the leaf certificate in `path`.
pub fn certificate_names(path: &Path) -> Result<Vec<String>, String> {
    let chain = read_chain(path)?;
    let leaf = chain
        .first()
        .ok_or_else(|| format!("{}: no certificate in it", path.display()))?;
    Ok(inspect(leaf, path).0)
}

/// A certificate and its key, read and checked to belong together (a
/// client certificate), and the certificate's notAfter (Unix seconds;
/// `None` when it cannot be read).
pub fn load_identity(pair: &CertPair) -> Result<(Arc<CertifiedKey>, Option<i64>), String> {
    load(pair).map(|l| (l.key, l.not_after))
}

fn load(pair: &CertPair) -> Result<Loaded, String> {
    let cert = read(&pair.cert, "certificate file")?;
    let key = read(&pair.key, "key file")?;
    load_pem(&cert, &key, pair)
}

/// What a PEM certificate chain and its PEM key are for, checked to belong
/// together as `load` checks files (`pair` names them in errors).
pub fn pem_identity(cert: &[u8], key: &[u8], pair: &CertPair) -> Result<Identity, String> {
    load_pem(cert, key, pair).map(|l| Identity {
        names: l.names,
        not_before: l.not_before,
        not_after: l.not_after,
    })
}

/// [`pem_identity`] of the files of `pair`.
pub fn file_identity(pair: &CertPair) -> Result<Identity, String> {
    let cert = read(&pair.cert, "certificate file")?;
    let key = read(&pair.key, "key file")?;
    pem_identity(&cert, &key, pair)
}

fn load_pem(cert: &[u8], pem: &[u8], pair: &CertPair) -> Result<Loaded, String> {
    let chain = parse_chain(cert, &pair.cert)?;
    let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        format!(
            "{}: no private key in it (PKCS#8, PKCS#1 or SEC1 PEM): {e}",
            pair.key.display()
        )
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| format!("{}: unusable private key: {e}", pair.key.display()))?;
    let key = CertifiedKey::new(chain, signing);
    key.keys_match().map_err(|e| {
        format!(
            "{} does not belong to the certificate {} ({e})",
            pair.key.display(),
            pair.cert.display()
        )
    })?;
    let (names, validity) = inspect(&key.cert[0], &pair.cert);
    Ok(Loaded {
        key: Arc::new(key),
        names,
        not_after: validity.map(|v| v.1),
        not_before: validity.map(|v| v.0),
    })
}

/// Warns about a certificate outside its validity period; returns its names
/// and its notBefore and notAfter.
fn inspect(leaf: &CertificateDer<'_>, path: &Path) -> (Vec<String>, Option<(i64, i64)>) {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) else {
        tracing::warn!(cert = %path.display(), "cannot parse the certificate to check its dates and names");
        return (Vec::new(), None);
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let validity = cert.validity();
    if validity.not_after.timestamp() < now {
        tracing::warn!(cert = %path.display(), expired = %validity.not_after, "the certificate has EXPIRED: clients will refuse it");
    } else if validity.not_before.timestamp() > now {
        tracing::warn!(cert = %path.display(), valid_from = %validity.not_before, "the certificate is not valid yet");
    } else if validity.not_after.timestamp() - now < 14 * 24 * 3600 {
        tracing::warn!(cert = %path.display(), expires = %validity.not_after, "the certificate expires within 14 days");
    }
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => {
                    names.push(d.to_ascii_lowercase())
                }
                x509_parser::extensions::GeneralName::IPAddress(ip) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*ip) {
                        names.push(std::net::IpAddr::from(a).to_string());
                    } else if let Ok(a) = <[u8; 16]>::try_from(*ip) {
                        names.push(std::net::IpAddr::from(a).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    (
        names,
        Some((
            validity.not_before.timestamp(),
            validity.not_after.timestamp(),
        )),
    )
}

/// Picks a certificate by SNI name (exact, then `*.` wildcard); the default otherwise.
#[derive(Debug)]
struct SniResolver {
    default: Arc<CertifiedKey>,
    by_name: Vec<(String, Arc<CertifiedKey>)>,
    /// `tls.acme`: a handshake that offers only `acme-tls/1` is the CA's
    /// validation, answered from [`ACME_CHALLENGES`].
    acme: bool,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if self.acme
            && hello
                .alpn()
                .is_some_and(|mut p| p.any(|p| p == ACME_TLS_ALPN))
        {
            let sni = hello.server_name()?.to_ascii_lowercase();
            let challenges = ACME_CHALLENGES.lock().ok()?;
            return challenges.get(&sni).cloned();
        }
        let Some(sni) = hello.server_name() else {
            return Some(Arc::clone(&self.default));
        };
        let sni = sni.to_ascii_lowercase();
        let wildcard = sni.split_once('.').map(|(_, rest)| format!("*.{rest}"));
        self.by_name
            .iter()
            .find(|(n, _)| *n == sni)
            .or_else(|| {
                wildcard
                    .as_ref()
                    .and_then(|w| self.by_name.iter().find(|(n, _)| n == w))
            })
            .map(|(_, k)| Arc::clone(k))
            .or_else(|| Some(Arc::clone(&self.default)))
    }
}

/// The public listener's TLS config: ALPN h2 and http/1.1, TLS 1.2 and 1.3.
pub fn server_config(tls: &TlsConfig) -> Result<Arc<ServerConfig>, String> {
    listener_tls(tls).map(|(cfg, _)| cfg)
}

/// [`server_config`], and the certificates it serves (for their expiry metric),
/// from one reading of the files.
pub fn listener_tls(tls: &TlsConfig) -> Result<(Arc<ServerConfig>, Vec<CertificateInfo>), String> {
    let default_pair = tls.pair();
    let default = match &tls.acme {
        // Nothing issued yet: a placeholder until the CA answers.
        Some(acme) if !tls.cert.exists() || !tls.key.exists() => acme_placeholder(acme)?,
        _ => load(&default_pair)?,
    };
    if let Some(acme) = &tls.acme {
        acme.check()?;
    }
    let mut certificates = Vec::new();
    let mut note = |pair: &CertPair, loaded: &Loaded| {
        if let Some(not_after) = loaded.not_after {
            let name = loaded.names.first().cloned().unwrap_or_else(|| {
                pair.cert
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
            certificates.push(CertificateInfo {
                file: pair.cert.clone(),
                name,
                not_after,
            });
        }
    };
    note(&default_pair, &default);
    let mut by_name = Vec::new();
    for pair in &tls.sni {
        let extra = load(pair)?;
        note(pair, &extra);
        if extra.names.is_empty() {
            return Err(format!(
                "{}: an SNI certificate needs DNS names in its subjectAltName",
                pair.cert.display()
            ));
        }
        for n in extra.names {
            by_name.push((n, Arc::clone(&extra.key)));
        }
    }
    let builder = ServerConfig::builder_with_provider(with_ciphers(&tls.ciphers)?)
        .with_protocol_versions(tls.min_version.versions())
        .map_err(|e| match e {
            // The only suites left are for a version the listener does not speak.
            rustls::Error::General(_) if !tls.ciphers.is_empty() => format!(
                "tls.ciphers: none of {:?} is a TLS 1.3 suite (TLS13_*), which min_version = \"1.3\" needs",
                tls.ciphers
            ),
            e => format!("TLS setup: {e}"),
        })?;
    if tls.client_ca.is_none() && tls.client_auth == ClientAuth::Optional {
        return Err("tls.client_auth: \"optional\" needs tls.client_ca (the CAs a certificate presented must be signed by)".into());
    }
    let builder = match (&tls.client_ca, &tls.client_crl) {
        (None, None) => builder.with_no_client_auth(),
        (None, Some(_)) => {
            return Err("tls.client_crl: revocation lists need tls.client_ca (the CAs whose clients they revoke)".into())
        }
        (Some(ca), crl) => builder.with_client_cert_verifier(client_verifier(
            ca,
            crl.as_deref(),
            tls.client_auth,
        )?),
    };
    let mut cfg = builder.with_cert_resolver(Arc::new(SniResolver {
        default: default.key,
        by_name,
        acme: tls.acme.is_some(),
    }));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if tls.acme.is_some() {
        cfg.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
    }
    Ok((Arc::new(cfg), certificates))
}

/// `tls.client_ca`: a verifier that asks every client for a certificate and
/// takes only one that a CA of `path` signed (chain, validity, and the
/// client-authentication usage when the certificate names its usages), not
/// revoked by a CRL of `crl`; with `auth` optional, also a client with none.
fn client_verifier(
    path: &Path,
    crl: Option<&Path>,
    auth: ClientAuth,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let shown = || format!("tls.client_ca {}", path.display());
    let mut roots = RootCertStore::empty();
    for cert in read_chain(path).map_err(|e| format!("tls.client_ca: {e}"))? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", shown()))?;
    }
    let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    if let Some(crl) = crl {
        builder = builder.with_crls(read_crls(crl)?);
    }
    if auth == ClientAuth::Optional {
        builder = builder.allow_unauthenticated();
    }
    builder.build().map_err(|e| format!("{}: {e}", shown()))
}

/// `tls.client_crl`: the revocation lists in `path` (PEM, one or more).
fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let pem = read(path, "CRL file").map_err(|e| format!("tls.client_crl: {e}"))?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls.client_crl {}: not a PEM CRL: {e}", path.display()))?;
    if crls.is_empty() {
        return Err(format!(
            "tls.client_crl {}: no CRL in it (expected -----BEGIN X509 CRL-----)",
            path.display()
        ));
    }
    Ok(crls)
}

/// Appends the SHA-256 of `bytes` to `out`, in lowercase hex.
pub fn sha256_hex(out: &mut String, bytes: &[u8]) {
    use std::fmt::Write;
    for b in ring::digest::digest(&ring::digest::SHA256, bytes).as_ref() {
        let _ = write!(out, "{b:02x}");
    }
}

/// The `X-Forwarded-Client-Cert` value for a client certificate the
/// listener verified, in Envoy's format: `Hash=` (the SHA-256 of its DER, in
/// hex), then `Subject="..."` (its distinguished name) and a `DNS=` or
/// `URI=` per subject alternative name. Bounded: past 4 KiB, the hash alone.
pub fn forwarded_client_cert(leaf: &CertificateDer<'_>) -> Option<http::HeaderValue> {
    use x509_parser::extensions::GeneralName;
    const MAX: usize = 4096;
    let mut v = String::from("Hash=");
    sha256_hex(&mut v, leaf.as_ref());
    let hash_only = v.len();
    if let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) {
        let subject = cert.subject().to_string();
        if !subject.is_empty() {
            v.push_str(";Subject=");
            quoted(&mut v, &subject);
        }
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => {
                        v.push_str(";DNS=");
                        quoted_if_needed(&mut v, d);
                    }
                    GeneralName::URI(u) => {
                        v.push_str(";URI=");
                        quoted_if_needed(&mut v, u);
                    }
                    _ => {}
                }
            }
        }
    }
    // Only visible ASCII goes in a header value: a name that is not is left out.
    if v.len() > MAX || !v.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        v.truncate(hash_only);
    }
    http::HeaderValue::try_from(v).ok()
}

/// `s` in double quotes, `"` and `\` escaped.
fn quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// `s` as it is, or quoted when it holds a separator of the header.
fn quoted_if_needed(out: &mut String, s: &str) {
    if s.contains([',', ';', '=', '"', '\\']) {
        quoted(out, s);
    } else {
        out.push_str(s);
    }
}

/// The client side for `https://` upstreams: the system roots, or only the
/// certificates of `ca` when given. Upstreams are spoken to in HTTP/1.1.
pub fn client_config(ca: Option<&Path>) -> Result<ClientConfig, String> {
    client_config_with_identity(ca, None)
}

/// What an `https://` slot's TLS client trusts and presents, which `reload`
/// swaps under the slot's open connections: the CA certificates of `[[slot]]
/// ca` (else the system's roots) and the client certificate of `cert` and
/// `key`, if any. Open connections keep what they were made with; the next
/// handshake takes the new ones, so a CA or a client certificate is renewed
/// without a new generation (no session of the slot is cut).
///
/// It keeps the slot's TLS sessions too: a resumed session neither presents
/// a certificate nor verifies the slot's again, so a swap forgets them, and
/// the next connection makes a full handshake.
#[derive(Debug)]
pub struct SlotTls {
    key: arc_swap::ArcSwapOption<CertifiedKey>,
    trust: arc_swap::ArcSwap<Trust>,
    sessions: arc_swap::ArcSwap<rustls::client::ClientSessionMemoryCache>,
}

/// The CA certificates a slot's client trusts, and the verifier made of them.
#[derive(Debug)]
struct Trust {
    certs: Vec<CertificateDer<'static>>,
    verifier: Arc<rustls::client::WebPkiServerVerifier>,
}

impl Trust {
    fn of(ca: Option<&Path>) -> Result<Trust, String> {
        let certs = trusted(ca)?;
        let roots = root_store(&certs, ca)?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .map_err(|e| format!("TLS setup: {e}"))?;
        Ok(Trust { certs, verifier })
    }
}

/// TLS sessions kept per slot for resumption (rustls's default).
const SLOT_SESSIONS: usize = 256;

impl SlotTls {
    /// Trusting `ca` (else the system's roots), presenting `identity`.
    pub fn new(
        ca: Option<&Path>,
        identity: Option<Arc<CertifiedKey>>,
    ) -> Result<Arc<SlotTls>, String> {
        Ok(Arc::new(SlotTls {
            key: arc_swap::ArcSwapOption::new(identity),
            trust: arc_swap::ArcSwap::from_pointee(Trust::of(ca)?),
            sessions: arc_swap::ArcSwap::from_pointee(
                rustls::client::ClientSessionMemoryCache::new(SLOT_SESSIONS),
            ),
        }))
    }

    /// The TLS client config that trusts, presents and resumes through `self`.
    pub fn config(self: &Arc<Self>) -> Result<ClientConfig, String> {
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::clone(self) as _)
            .with_client_cert_resolver(Arc::clone(self) as _);
        config.resumption = rustls::client::Resumption::store(Arc::clone(self) as _);
        Ok(config)
    }

    /// The client certificate the next handshake presents.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.key.load_full()
    }

    /// Takes what `read` trusts and presents where it differs, for the next
    /// handshake on (no session made before is resumed then); says what
    /// changed.
    pub fn update(&self, read: &SlotTls) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let (was, now) = (self.current(), read.current());
        if was.as_ref().map(|k| &k.cert) != now.as_ref().map(|k| &k.cert) {
            changed.push(match (&was, &now) {
                (_, None) => "client certificate dropped",
                (None, Some(_)) => "client certificate set",
                (Some(_), Some(_)) => "client certificate re-read",
            });
            self.key.store(now);
        }
        let trust = read.trust.load_full();
        if self.trust.load().certs != trust.certs {
            changed.push("trusted CAs re-read");
            self.trust.store(trust);
        }
        if !changed.is_empty() {
            self.sessions
                .store(Arc::new(rustls::client::ClientSessionMemoryCache::new(
                    SLOT_SESSIONS,
                )));
        }
        changed
    }
}

impl rustls::client::ResolvesClientCert for SlotTls {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        self.key.load().is_some()
    }
}

/// The slot's certificate, checked by the CAs trusted now.
impl rustls::client::danger::ServerCertVerifier for SlotTls {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.trust.load().verifier.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.trust
            .load()
            .verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.trust
            .load()
            .verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.trust.load().verifier.supported_verify_schemes()
    }
}

/// The sessions made with what is trusted and presented now.
impl rustls::client::ClientSessionStore for SlotTls {
    fn set_kx_hint(&self, server: ServerName<'static>, group: rustls::NamedGroup) {
        self.sessions.load().set_kx_hint(server, group);
    }
    fn kx_hint(&self, server: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.sessions.load().kx_hint(server)
    }
    fn set_tls12_session(
        &self,
        server: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.sessions.load().set_tls12_session(server, value);
    }
    fn tls12_session(
        &self,
        server: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.sessions.load().tls12_session(server)
    }
    fn remove_tls12_session(&self, server: &ServerName<'static>) {
        self.sessions.load().remove_tls12_session(server);
    }
    fn insert_tls13_ticket(
        &self,
        server: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.sessions.load().insert_tls13_ticket(server, value);
    }
    fn take_tls13_ticket(
        &self,
        server: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.sessions.load().take_tls13_ticket(server)
    }
}

/// The CA certificates of `ca`, else the system's roots.
fn trusted(ca: Option<&Path>) -> Result<Vec<CertificateDer<'static>>, String> {
    match ca {
        Some(path) => read_chain(path),
        None => {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                let why: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
                return Err(format!(
                    "cannot load the system's root certificates: none found{}",
                    if why.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", why.join("; "))
                    }
                ));
            }
            Ok(found.certs)
        }
    }
}

/// A root store of `certs`: every one of `ca` must be usable; of the
/// system's, those that are (some stores carry certificates webpki cannot
/// read), at least one.
fn root_store(
    certs: &[CertificateDer<'static>],
    ca: Option<&Path>,
) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in certs {
                roots
                    .add(cert.clone())
                    .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
            }
        }
        None => {
            roots.add_parsable_certificates(certs.iter().cloned());
            if roots.is_empty() {
                return Err("cannot load the system's root certificates: none usable".into());
            }
        }
    }
    Ok(roots)
}

/// A TLS client that trusts `ca` (else the system's roots) and, with
/// `identity`, presents that certificate and key (etcd's client
/// certificate authentication).
pub fn client_config_with_identity(
    ca: Option<&Path>,
    identity: Option<&CertPair>,
) -> Result<ClientConfig, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    // No ALPN here: the HTTPS connector sets it (http/1.1) itself.
    let builder = builder.with_root_certificates(root_store(&trusted(ca)?, ca)?);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some(pair) => {
            let loaded = load(pair)?;
            let chain = loaded.key.cert.clone();
            let pem = read(&pair.key, "key file")?;
            let der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
                format!(
                    "{}: no private key in it (PKCS#8, PKCS#1 or SEC1 PEM): {e}",
                    pair.key.display()
                )
            })?;
            builder
                .with_client_auth_cert(chain, der)
                .map_err(|e| format!("{}: unusable client certificate: {e}", pair.cert.display()))
        }
    }
}

/// The files `mcpflip cert --dev` writes.
#[derive(Debug)]
pub struct DevCert {
    /// The development CA to trust (in a browser, `curl --cacert`, `SSL_CERT_FILE`, `NODE_EXTRA_CA_CERTS`).
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Writes a development CA and a server certificate it signed, for localhost,
/// 127.0.0.1, ::1 and `extra_names`, into `dir`. Refuses to overwrite unless `force`.
pub fn write_dev_cert(dir: &Path, extra_names: &[String], force: bool) -> Result<DevCert, String> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let out = DevCert {
        ca: dir.join("dev-ca.crt"),
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
    };
    if !force {
        if let Some(p) = [&out.ca, &out.cert, &out.key]
            .into_iter()
            .find(|p| p.exists())
        {
            return Err(format!(
                "{} exists; pass --force to replace the development certificate",
                p.display()
            ));
        }
    }
    let err = |e: rcgen::Error| format!("cannot make the development certificate: {e}");
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "mcpflip development CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key).map_err(err)?;

    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    names.extend(extra_names.iter().cloned());
    let key = KeyPair::generate().map_err(err)?;
    let mut params = CertificateParams::new(names).map_err(err)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "mcpflip development server");
    // Valid from yesterday for 800 days (clients such as Apple's refuse > 825).
    let today = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| (d.as_secs() / 86_400) as i64)
        .unwrap_or(0);
    let (y, m, d) = civil_from_days(today - 1);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = civil_from_days(today + 800);
    params.not_after = rcgen::date_time_ymd(y, m, d);
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let cert = params.signed_by(&key, &issuer).map_err(err)?;

    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    write_file(&out.ca, ca.pem().as_bytes(), 0o644)?;
    // The chain clients get: the leaf, then the CA that signed it.
    write_file(
        &out.cert,
        format!("{}{}", cert.pem(), ca.pem()).as_bytes(),
        0o644,
    )?;
    write_file(&out.key, key.serialize_pem().as_bytes(), 0o600)?;
    Ok(out)
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i32, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = (yoe + era * 400 + i64::from(m <= 2)) as i32;
    (y, m, d)
}

/// Writes a certificate file; never through a symlink someone put in its place.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    f.write_all(bytes)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `tls` section of `cert` and `key`, every other key at its default.
    fn tls_of(cert: &Path, key: &Path) -> TlsConfig {
        TlsConfig {
            cert: cert.to_owned(),
            key: key.to_owned(),
            sni: vec![],
            client_ca: None,
            client_crl: None,
            client_auth: Default::default(),
            min_version: Default::default(),
            ciphers: Vec::new(),
            acme: None,
        }
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_781), (2026, 11, 24));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn dev_cert_files_are_never_written_through_a_symlink() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").expect("victim");
        std::os::unix::fs::symlink(&victim, dir.path().join("server.key")).expect("link");
        let e = write_dev_cert(dir.path(), &[], true).expect_err("a linked key file");
        assert!(e.contains("server.key"), "{e}");
        assert_eq!(std::fs::read(&victim).expect("victim"), b"precious");
    }

    /// `tls.ciphers`: a list keeps only those suites; an unknown name or a
    /// list with no suite for the versions spoken is refused, naming why.
    #[test]
    fn a_cipher_list_keeps_its_suites_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dev = write_dev_cert(dir.path(), &[], false).expect("dev cert");
        let with = |ciphers: &[&str], min_version: TlsVersion| TlsConfig {
            min_version,
            ciphers: ciphers.iter().map(|c| c.to_string()).collect(),
            ..tls_of(&dev.cert, &dev.key)
        };
        let names = cipher_names();
        assert!(
            names.contains(&"TLS13_AES_256_GCM_SHA384".to_owned()),
            "{names:?}"
        );
        assert!(
            names.contains(&"TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384".to_owned()),
            "{names:?}"
        );
        let kept = with_ciphers(&["TLS13_AES_256_GCM_SHA384".into()]).expect("known");
        let kept: Vec<String> = kept
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        assert_eq!(kept, ["TLS13_AES_256_GCM_SHA384"]);
        server_config(&with(&["TLS13_AES_256_GCM_SHA384"], TlsVersion::V1_3)).expect("usable");
        server_config(&with(&[], TlsVersion::V1_2)).expect("every suite by default");

        let e =
            server_config(&with(&["ECDHE-RSA-AES256-GCM-SHA384"], TlsVersion::V1_2)).unwrap_err();
        assert!(
            e.contains("unknown cipher suite \"ECDHE-RSA-AES256-GCM-SHA384\"")
                && e.contains("TLS13_AES_128_GCM_SHA256"),
            "{e}"
        );
        let e = server_config(&with(
            &["TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"],
            TlsVersion::V1_3,
        ))
        .unwrap_err();
        assert!(
            e.contains("is a TLS 1.3 suite") && e.contains("min_version"),
            "{e}"
        );
    }

    #[test]
    fn dev_cert_loads_and_bad_files_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dev = write_dev_cert(dir.path(), &[], false).expect("dev cert");
        let tls = tls_of(&dev.cert, &dev.key);
        let cfg = server_config(&tls).expect("loads");
        assert_eq!(
            cfg.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert!(write_dev_cert(dir.path(), &[], false)
            .unwrap_err()
            .contains("--force"));
        client_config(Some(&dev.ca)).expect("the dev CA is a usable root");

        let other = tempfile::tempdir().expect("tempdir");
        let dev2 = write_dev_cert(other.path(), &[], false).expect("second dev cert");
        let mismatched = tls_of(&dev.cert, &dev2.key);
        let e = server_config(&mismatched).unwrap_err();
        assert!(e.contains("does not belong to the certificate"), "{e}");
        let missing = tls_of(&dir.path().join("nope.crt"), &dev.key);
        let e = server_config(&missing).unwrap_err();
        assert!(
            e.contains("cannot read the certificate file") && e.contains("nope.crt"),
            "{e}"
        );
        let empty = dir.path().join("empty.crt");
        std::fs::write(&empty, "not pem\n").expect("write");
        let e = server_config(&tls_of(&empty, &dev.key)).unwrap_err();
        assert!(e.contains("no certificate in it"), "{e}");
        let e = server_config(&tls_of(&dev.cert, &dev.cert)).unwrap_err();
        assert!(e.contains("no private key"), "{e}");
    }

    #[test]
    fn a_client_certificate_is_told_by_hash_subject_and_names_within_bounds() {
        use rcgen::{CertificateParams, DnType, KeyPair, SanType};
        let make = |cn: &str, sans: Vec<SanType>| {
            let key = KeyPair::generate().expect("key");
            let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
            p.distinguished_name.push(DnType::CommonName, cn);
            p.subject_alt_names = sans;
            let der = p.self_signed(&key).expect("cert").der().clone();
            let hash: String = ring::digest::digest(&ring::digest::SHA256, der.as_ref())
                .as_ref()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            (der, hash)
        };
        let (der, hash) = make(
            "a\"b",
            vec![
                SanType::DnsName("mcp.example".try_into().expect("dns")),
                SanType::URI("spiffe://corp/agent;v=1".try_into().expect("uri")),
            ],
        );
        let v = forwarded_client_cert(&der).expect("a value");
        assert_eq!(
            v.to_str().expect("ascii"),
            format!(
                "Hash={hash};Subject=\"CN=a\\\"b\";DNS=mcp.example;URI=\"spiffe://corp/agent;v=1\""
            )
        );
        // Too long, or not visible ASCII: the hash alone.
        for cn in ["x".repeat(5000), "caf\u{e9}".to_owned()] {
            let (der, hash) = make(&cn, vec![]);
            let v = forwarded_client_cert(&der).expect("a value");
            assert_eq!(v.to_str().expect("ascii"), format!("Hash={hash}"));
        }
    }

    #[test]
    fn a_client_crl_needs_a_client_ca_and_a_bad_one_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dev = write_dev_cert(dir.path(), &[], false).expect("dev cert");
        let junk = dir.path().join("junk.crl");
        std::fs::write(&junk, "not pem\n").expect("write");
        let with = |ca: Option<PathBuf>, crl: PathBuf| TlsConfig {
            client_ca: ca,
            client_crl: Some(crl),
            ..tls_of(&dev.cert, &dev.key)
        };
        let e = server_config(&with(None, junk.clone())).unwrap_err();
        assert!(e.contains("need tls.client_ca"), "{e}");
        let optional = TlsConfig {
            client_auth: ClientAuth::Optional,
            ..tls_of(&dev.cert, &dev.key)
        };
        let e = server_config(&optional).unwrap_err();
        assert!(e.contains("needs tls.client_ca"), "{e}");
        let e = server_config(&with(Some(dev.ca.clone()), junk)).unwrap_err();
        assert!(
            e.starts_with("tls.client_crl ") && e.contains("no CRL in it"),
            "{e}"
        );
        let e =
            server_config(&with(Some(dev.ca.clone()), dir.path().join("nope.crl"))).unwrap_err();
        assert!(
            e.starts_with("tls.client_crl: ") && e.contains("nope.crl"),
            "{e}"
        );
    }

    #[test]
    fn a_bad_client_ca_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dev = write_dev_cert(dir.path(), &[], false).expect("dev cert");
        let with_ca = |ca: PathBuf| TlsConfig {
            client_ca: Some(ca),
            ..tls_of(&dev.cert, &dev.key)
        };
        server_config(&with_ca(dev.ca.clone())).expect("the dev CA verifies clients");
        let e = server_config(&with_ca(dir.path().join("nope.pem"))).unwrap_err();
        assert!(
            e.starts_with("tls.client_ca: ") && e.contains("nope.pem"),
            "{e}"
        );
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not pem\n").expect("write");
        let e = server_config(&with_ca(junk)).unwrap_err();
        assert!(
            e.starts_with("tls.client_ca: ") && e.contains("no certificate in it"),
            "{e}"
        );
    }
}
