//! `[listen] tls.acme`: the listener's certificate from an ACME CA (Let's
//! Encrypt, or any RFC 8555 CA), as Caddy gets its own, renewed before it
//! ends, with no cron job, no certbot and no port 80.
//!
//! The challenge is `tls-alpn-01` (RFC 8737), answered by the listener itself:
//! while an order is validated, a handshake that offers only the ALPN
//! protocol `acme-tls/1` gets a self-signed certificate that carries the key
//! authorization's digest (`tls::ACME_CHALLENGES`), every other handshake the
//! listener's certificate. Until the first certificate is issued the listener
//! serves a self-signed placeholder for the domains (`tls::listener_tls`).
//!
//! The files: the key and the chain go to `tls.key` and `tls.cert`, the ACME
//! account's credentials beside the certificate (`<cert>.account.json`), each
//! written by the state file's writer (`control::persist::write_atomic`: a
//! fresh temporary file, never a link, fsync, rename, mode 0600). A new
//! certificate is served from the next handshake and shows in
//! `mcpflip_certificate_expiry_timestamp_seconds`, without a reload.
//!
//! In a fleet, one instance orders at a time; its challenge answers are
//! published under `{prefix}.acme/answers/` for every instance to serve, and
//! (`tls.acme.share`) the certificate it gets is kept under
//! `{prefix}.acme/certificates/`, where an instance whose own is missing or
//! due takes it instead of ordering.
//!
//! The ACME protocol itself is the `instant-acme` crate's, over this
//! process's HTTP client and rustls.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType,
    HttpClient, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::control::persist::write_atomic;
use crate::control::Controller;
use crate::tls::{AcmeConfig, TlsConfig, ACME_CHALLENGES};

/// The first wait after a failed order, doubling up to [`MAX_BACKOFF`]:
/// four failures in the first 75 minutes, under Let's Encrypt's limit of
/// five failed validations per name and hour.
const FIRST_BACKOFF: Duration = Duration::from_secs(5 * 60);
const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);
/// Longest wait between two looks at the certificate.
const CHECK_EVERY: Duration = Duration::from_secs(12 * 3600);
/// How long the CA may take to validate an order and to issue it.
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);

/// The account's credentials file: beside the certificate.
fn account_path(cert: &Path) -> PathBuf {
    let mut name = cert.file_name().unwrap_or_default().to_os_string();
    name.push(".account.json");
    cert.with_file_name(name)
}

/// Keeps the listener's certificate issued and fresh until `stop`. In a
/// fleet (`fleet`), one instance orders at a time (a lease-bound lock) and
/// its challenge answers are published for every instance to serve: the
/// CA's validation may reach any of them.
pub async fn run(ctl: Arc<Controller>, fleet: Option<Fleet>, stop: CancellationToken) {
    if let Some(f) = &fleet {
        tokio::spawn(follow(f.clone(), stop.clone()));
    }
    let mut backoff = FIRST_BACKOFF;
    loop {
        let config = ctl.config();
        let Some(tls) = config.listen.tls.clone() else {
            return;
        };
        let Some(acme) = tls.acme.clone() else { return };
        let wait = match due_in(&tls, &acme) {
            Some(wait) => wait,
            None => {
                tracing::info!(domains = ?acme.domains, directory = %acme.directory, "ACME: ordering a certificate");
                let order = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = order_in(fleet.as_ref(), &tls, &acme) => r,
                };
                let order = order.and_then(|got| ctl.refresh_listener_tls().map(|()| got));
                ctl.note_acme(&acme.domains, &acme.directory, |a| match &order {
                    Ok(got) => {
                        match got {
                            Got::Issued => a.issued += 1,
                            Got::Shared => a.shared += 1,
                        }
                        a.issued_at_ms = Some(crate::control::controller::now_ms());
                        a.error = None;
                    }
                    Err(e) => {
                        a.failed += 1;
                        a.error = Some(e.clone());
                    }
                });
                match order {
                    Ok(got) => {
                        backoff = FIRST_BACKOFF;
                        match got {
                            Got::Issued => {
                                tracing::info!(domains = ?acme.domains, cert = %tls.cert.display(), "ACME: certificate issued; the listener serves it from the next handshake")
                            }
                            Got::Shared => {
                                tracing::info!(domains = ?acme.domains, cert = %tls.cert.display(), "ACME: the fleet's certificate taken (another instance ordered it); the listener serves it from the next handshake")
                            }
                        }
                        if due_in(&tls, &acme).is_some() {
                            continue;
                        }
                        tracing::warn!(renew_before = ?acme.renew_before.map(humantime::format_duration), "ACME: the new certificate is due already (renew_before is longer than the CA's certificates last); looking again in 12h");
                        CHECK_EVERY
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = %humantime::format_duration(backoff), "ACME: no certificate this time");
                        let wait = backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        wait
                    }
                }
            }
        };
        ctl.note_acme(&acme.domains, &acme.directory, |a| {
            a.next_check_ms = Some(crate::control::controller::now_ms() + wait.as_millis() as u64);
        });
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// How long until the certificate is due for renewal (`None`: now, or it
/// is missing, unreadable, or not for the configured domains).
fn due_in(tls: &TlsConfig, acme: &AcmeConfig) -> Option<Duration> {
    due(
        &crate::tls::file_identity(&tls.pair()).ok()?,
        acme,
        unix_now(),
    )
}

/// Seconds since the Unix epoch.
fn unix_now() -> i64 {
    (crate::control::controller::now_ms() / 1000) as i64
}

/// How long after `now` (Unix seconds) a certificate is due for renewal
/// (`None`: now, or it is not for every configured domain): `renew_before`
/// its end, or once a third of its lifetime is left.
fn due(id: &crate::tls::Identity, acme: &AcmeConfig, now: i64) -> Option<Duration> {
    if !acme
        .domains
        .iter()
        .all(|d| id.names.iter().any(|n| n.eq_ignore_ascii_case(d)))
    {
        return None;
    }
    let not_after = id.not_after?;
    let before = match acme.renew_before {
        Some(r) => r.as_secs() as i64,
        None => (not_after - id.not_before?) / 3,
    };
    let due = not_after - before;
    (due > now).then(|| Duration::from_secs((due - now) as u64).min(CHECK_EVERY))
}

/// One order: account, authorizations answered over `tls-alpn-01`, a CSR
/// for a new key, the chain; key and chain written to `tls.key`, `tls.cert`
/// and returned.
async fn order(
    tls: &TlsConfig,
    acme: &AcmeConfig,
    fleet: Option<&Fleet>,
) -> Result<Issued, String> {
    let http = AcmeHttp::new(acme.directory_ca.as_deref())?;
    let account = account(tls, acme, http).await?;
    let identifiers: Vec<Identifier> = acme
        .domains
        .iter()
        .map(|d| Identifier::Dns(d.clone()))
        .collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(|e| format!("new order: {e}"))?;
    let mut answering = Answering::default();
    {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(|e| format!("authorization: {e}"))?;
            match authz.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => return Err(format!("an authorization is {other:?}")),
            }
            let mut challenge = authz
                .challenge(ChallengeType::TlsAlpn01)
                .ok_or("the CA offers no tls-alpn-01 challenge (the only one mcpflip answers)")?;
            let domain = challenge.identifier().to_string();
            let digest = challenge.key_authorization().digest();
            let (answer, shared) = challenge_cert(&domain, digest.as_ref())?;
            if let Some(f) = fleet {
                f.publish(&domain, &shared).await?;
            }
            answering.put(&domain, answer);
            challenge
                .set_ready()
                .await
                .map_err(|e| format!("challenge for {domain}: {e}"))?;
        }
    }
    let retries = RetryPolicy::new().timeout(ORDER_TIMEOUT);
    let status = order
        .poll_ready(&retries)
        .await
        .map_err(|e| format!("waiting for validation: {e}"))?;
    if status != OrderStatus::Ready {
        return Err(format!(
            "the order is {status:?} after validation (the CA could not reach this listener on port 443 for {:?}?)",
            acme.domains
        ));
    }
    if let Some(f) = fleet {
        f.withdraw(&answering.0).await;
    }
    drop(answering);
    let err = |e: rcgen::Error| format!("the certificate request: {e}");
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let params = rcgen::CertificateParams::new(acme.domains.clone()).map_err(err)?;
    let csr = params.serialize_request(&key).map_err(err)?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(|e| format!("finalize: {e}"))?;
    let chain = order
        .poll_certificate(&retries)
        .await
        .map_err(|e| format!("waiting for the certificate: {e}"))?;
    let issued = Issued {
        domains: acme.domains.clone(),
        cert: chain,
        key: key.serialize_pem(),
    };
    issued.install(tls)?;
    Ok(issued)
}

/// A certificate and its key, as PEM: as an order returns it, and as the
/// fleet keeps it in etcd (`tls.acme.share`).
#[derive(Serialize, Deserialize)]
struct Issued {
    domains: Vec<String>,
    cert: String,
    key: String,
}

impl Issued {
    /// Writes key and chain to `tls.key` and `tls.cert`.
    fn install(&self, tls: &TlsConfig) -> Result<(), String> {
        // The key first: a certificate is never on disk without its key.
        write_atomic(&tls.key, self.key.as_bytes()).map_err(|e| e.to_string())?;
        write_atomic(&tls.cert, self.cert.as_bytes()).map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Whether it may be served for `acme` now: the key is the
    /// certificate's, and it is for every domain and not due for renewal.
    fn fresh(&self, tls: &TlsConfig, acme: &AcmeConfig) -> Result<bool, String> {
        let id = crate::tls::pem_identity(self.cert.as_bytes(), self.key.as_bytes(), &tls.pair())?;
        Ok(due(&id, acme, unix_now()).is_some())
    }
}

/// How the listener's certificate came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Got {
    /// Ordered from the CA by this instance.
    Issued,
    /// Another instance of the fleet ordered it (`tls.acme.share`).
    Shared,
}

/// The account of `<cert>.account.json`, or a new one saved there.
async fn account(tls: &TlsConfig, acme: &AcmeConfig, http: AcmeHttp) -> Result<Account, String> {
    let path = account_path(&tls.cert);
    if let Ok(text) = crate::files::read_to_string(&path, crate::files::MAX_SECRET * 4) {
        let credentials: AccountCredentials = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not an ACME account: {e}", path.display()))?;
        return Account::builder_with_http(Box::new(http))
            .from_credentials(credentials)
            .await
            .map_err(|e| format!("the account of {}: {e}", path.display()));
    }
    let contact = acme.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let eab = match &acme.eab {
        Some(eab) => Some(instant_acme::ExternalAccountKey::new(
            eab.kid.clone(),
            &eab.hmac_key()?,
        )),
        None => None,
    };
    let (account, credentials) = Account::builder_with_http(Box::new(http))
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            acme.directory.clone(),
            eab.as_ref(),
        )
        .await
        .map_err(|e| format!("a new account at {}: {e}", acme.directory))?;
    let json = serde_json::to_vec(&credentials).map_err(|e| e.to_string())?;
    write_atomic(&path, &json).map_err(|e| e.to_string())?;
    tracing::info!(account = %path.display(), "ACME: account created");
    Ok(account)
}

/// The `tls-alpn-01` answer for `domain`: self-signed, with the
/// `acmeIdentifier` extension holding the key authorization's SHA-256.
fn challenge_cert(domain: &str, digest: &[u8]) -> Result<(Arc<CertifiedKey>, Answer), String> {
    let err = |e: rcgen::Error| format!("the tls-alpn-01 certificate: {e}");
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()]).map_err(err)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(err)?;
    let shared = Answer {
        cert: cert.der().to_vec(),
        key: key.serialize_der(),
    };
    Ok((shared.certified()?, shared))
}

/// A `tls-alpn-01` answer as the fleet holds it: DER of the certificate and
/// of its PKCS#8 key (a throwaway pair, good for that challenge alone).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Answer {
    #[serde(with = "b64")]
    cert: Vec<u8>,
    #[serde(with = "b64")]
    key: Vec<u8>,
}

mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

impl Answer {
    fn certified(&self) -> Result<Arc<CertifiedKey>, String> {
        let signing =
            crate::tls::signing_key(&self.key).map_err(|e| format!("the tls-alpn-01 key: {e}"))?;
        Ok(Arc::new(CertifiedKey::new(
            vec![rustls::pki_types::CertificateDer::from(self.cert.clone())],
            signing,
        )))
    }
}

/// Orders under the fleet's ACME lock when in a fleet (waiting for another
/// instance's order to end), else at once. With `tls.acme.share`, a fresh
/// certificate another instance ordered is taken instead, and one ordered
/// here is kept in etcd for the others.
async fn order_in(
    fleet: Option<&Fleet>,
    tls: &TlsConfig,
    acme: &AcmeConfig,
) -> Result<Got, String> {
    let Some(f) = fleet else {
        return order(tls, acme, None).await.map(|_| Got::Issued);
    };
    let lease = f.lock().await?;
    let result = async {
        if acme.share {
            match f.shared(tls, acme).await {
                Ok(Some(shared)) => {
                    shared.install(tls)?;
                    return Ok(Got::Shared);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "ACME: the fleet's certificate could not be read; ordering one")
                }
            }
        }
        let issued = order(tls, acme, Some(f)).await?;
        if acme.share {
            if let Err(e) = f.share(acme, &issued).await {
                tracing::warn!(error = %e, "ACME: the new certificate could not be kept in etcd; the other instances will order their own");
            }
        }
        Ok(Got::Issued)
    }
    .await;
    let _ = f.etcd.revoke(lease).await;
    result
}

/// What the fleet's ACME keys need: its etcd and its prefix.
#[derive(Clone)]
pub struct Fleet {
    etcd: crate::cluster::etcd::Etcd,
    /// `{prefix}.acme/`.
    namespace: String,
}

/// The largest value read back from the fleet's ACME keys: a certificate
/// and its key as files may be (`files::MAX_PEM` each), and JSON around them.
const MAX_SHARED: u64 = 2 * crate::files::MAX_PEM + 4096;

/// How long the fleet's ACME lock and a published answer live at most.
const FLEET_LEASE: Duration = Duration::from_secs(180);

impl Fleet {
    pub fn new(etcd: crate::cluster::etcd::Etcd, prefix: &str) -> Fleet {
        Fleet {
            etcd,
            namespace: format!("{prefix}.acme/"),
        }
    }

    fn answer_key(&self, domain: &str) -> Vec<u8> {
        format!("{}answers/{}", self.namespace, domain.to_ascii_lowercase()).into_bytes()
    }

    /// Takes the fleet's ACME lock (two instances' challenges for one name
    /// cannot both be answered): waits while another instance holds it.
    /// Returns its lease, to revoke when done.
    async fn lock(&self) -> Result<i64, String> {
        let key = format!("{}lock", self.namespace).into_bytes();
        let me = std::process::id().to_string();
        let started = tokio::time::Instant::now();
        loop {
            match self.etcd.try_lock(&key, me.as_bytes(), FLEET_LEASE).await {
                Ok(Ok(lease)) => return Ok(lease.id),
                Ok(Err(_)) => {}
                Err(e) => return Err(format!("the fleet's ACME lock: {e}")),
            }
            if started.elapsed() > FLEET_LEASE {
                return Err("another instance of the fleet has been ordering for 3 min".into());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Publishes the answer for `domain` (for every instance to serve).
    async fn publish(&self, domain: &str, answer: &Answer) -> Result<(), String> {
        let value = serde_json::to_vec(answer).map_err(|e| e.to_string())?;
        let err =
            |e: crate::cluster::etcd::EtcdError| format!("publishing the challenge answer: {e}");
        let lease = self.etcd.grant(FLEET_LEASE).await.map_err(err)?;
        self.etcd
            .put(&self.answer_key(domain), &value, lease.id)
            .await
            .map_err(err)?;
        Ok(())
    }

    /// The key of the fleet's certificate for `acme`'s domains from its
    /// directory (a hash: the domains in any order and case are one set).
    fn certificate_key(&self, acme: &AcmeConfig) -> Vec<u8> {
        let mut domains: Vec<String> = acme
            .domains
            .iter()
            .map(|d| d.to_ascii_lowercase())
            .collect();
        domains.sort_unstable();
        domains.dedup();
        let mut hash = String::new();
        crate::tls::sha256_hex(
            &mut hash,
            format!("{}\n{}", acme.directory, domains.join(",")).as_bytes(),
        );
        format!("{}certificates/{hash}", self.namespace).into_bytes()
    }

    /// The certificate another instance ordered for `acme`, when it may be
    /// served now (`None`: none, or it is due too).
    async fn shared(&self, tls: &TlsConfig, acme: &AcmeConfig) -> Result<Option<Issued>, String> {
        let (kv, _) = self
            .etcd
            .get(&self.certificate_key(acme))
            .await
            .map_err(|e| e.to_string())?;
        let Some(kv) = kv else { return Ok(None) };
        if kv.value.len() as u64 > MAX_SHARED {
            return Err(format!(
                "the fleet's certificate is {} bytes, over {MAX_SHARED}",
                kv.value.len()
            ));
        }
        let shared: Issued = serde_json::from_slice(&kv.value)
            .map_err(|e| format!("the fleet's certificate is not mcpflip's: {e}"))?;
        match shared.fresh(tls, acme) {
            Ok(true) => Ok(Some(shared)),
            Ok(false) => Ok(None),
            Err(e) => Err(format!("the fleet's certificate: {e}")),
        }
    }

    /// Keeps `issued` in etcd for the other instances (no lease: it lasts
    /// until the next order replaces it).
    async fn share(&self, acme: &AcmeConfig, issued: &Issued) -> Result<(), String> {
        let value = serde_json::to_vec(issued).map_err(|e| e.to_string())?;
        self.etcd
            .put(&self.certificate_key(acme), &value, 0)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Takes the answers for `domains` back (their lease would, too).
    async fn withdraw(&self, domains: &[String]) {
        for d in domains {
            let _ = self.etcd.delete(&self.answer_key(d)).await;
        }
    }
}

/// Serves every instance's published answers here, until `stop`: read, then
/// followed with a watch; read again after an error.
async fn follow(fleet: Fleet, stop: CancellationToken) {
    use crate::cluster::etcd::{WatchBatch, WatchEvent};
    let prefix = format!("{}answers/", fleet.namespace);
    let domain_of = |key: &[u8]| {
        std::str::from_utf8(key)
            .ok()
            .and_then(|k| k.strip_prefix(prefix.as_str()))
            .map(str::to_owned)
    };
    let put = |key: &[u8], value: &[u8]| {
        let Some(domain) = domain_of(key) else { return };
        if value.len() as u64 > MAX_SHARED {
            tracing::warn!(%domain, bytes = value.len(), "a published tls-alpn-01 answer is too large: ignored");
            return;
        }
        let answer = serde_json::from_slice::<Answer>(value)
            .map_err(|e| e.to_string())
            .and_then(|a| a.certified());
        match answer {
            Ok(answer) => {
                if let Ok(mut c) = ACME_CHALLENGES.lock() {
                    c.insert(domain, answer);
                }
            }
            Err(e) => {
                tracing::warn!(%domain, error = %e, "a published tls-alpn-01 answer is not mcpflip's: ignored")
            }
        }
    };
    loop {
        let round = async {
            let (kvs, revision) = fleet.etcd.get_prefix(prefix.as_bytes()).await?;
            for kv in &kvs {
                put(&kv.key, &kv.value);
            }
            let mut watch = fleet.etcd.watch(prefix.as_bytes(), revision + 1).await?;
            loop {
                match watch.next().await? {
                    WatchBatch::Events { events, .. } => {
                        for e in events {
                            match e {
                                WatchEvent::Put(kv) => put(&kv.key, &kv.value),
                                WatchEvent::Delete { key, .. } => {
                                    if let (Some(d), Ok(mut c)) =
                                        (domain_of(&key), ACME_CHALLENGES.lock())
                                    {
                                        c.remove(&d);
                                    }
                                }
                            }
                        }
                    }
                    _ => return Ok::<(), crate::cluster::etcd::EtcdError>(()),
                }
            }
        };
        let ended = tokio::select! {
            _ = stop.cancelled() => return,
            r = round => r,
        };
        if let Err(e) = ended {
            tracing::debug!(error = %e, "the fleet's ACME answers: reading again");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// The challenge answers of one order, taken back when it is dropped.
#[derive(Default)]
struct Answering(Vec<String>);

impl Answering {
    fn put(&mut self, domain: &str, cert: Arc<CertifiedKey>) {
        let domain = domain.to_ascii_lowercase();
        if let Ok(mut c) = ACME_CHALLENGES.lock() {
            c.insert(domain.clone(), cert);
        }
        self.0.push(domain);
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        if let Ok(mut c) = ACME_CHALLENGES.lock() {
            for d in &self.0 {
                c.remove(d);
            }
        }
    }
}

/// `instant-acme`'s HTTP client: hyper with this process's rustls (the
/// system's roots, or `directory_ca`).
struct AcmeHttp {
    client: Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        BodyWrapper<Bytes>,
    >,
}

impl AcmeHttp {
    fn new(ca: Option<&Path>) -> Result<AcmeHttp, String> {
        let tls = crate::tls::client_config(ca)?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        Ok(AcmeHttp {
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let sent = self.client.request(req);
        Box::pin(async move {
            let resp = tokio::time::timeout(Duration::from_secs(30), sent)
                .await
                .map_err(|_| instant_acme::Error::Str("the ACME CA did not answer within 30 s"))?
                .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
            Ok(BytesResponse::from(resp))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    fn acme(renew_before: Option<Duration>) -> AcmeConfig {
        let mut a: AcmeConfig =
            toml::from_str("domains = [\"mcp.example.com\"]").expect("tls.acme");
        a.renew_before = renew_before;
        a
    }

    fn cert(not_before: i64, not_after: i64) -> crate::tls::Identity {
        crate::tls::Identity {
            names: vec!["mcp.example.com".into()],
            not_before: Some(not_before),
            not_after: Some(not_after),
        }
    }

    #[test]
    fn by_default_a_certificate_is_renewed_when_a_third_of_its_life_is_left() {
        let now = 1_800_000_000;
        let days = |d: i64| Some(Duration::from_secs((d * DAY) as u64).min(CHECK_EVERY));
        // 90 days, issued 10 days ago: due at day 60, in 50 days (looked at
        // again within 12 h).
        assert_eq!(
            due(&cert(now - 10 * DAY, now + 80 * DAY), &acme(None), now),
            days(50)
        );
        // Let's Encrypt's 6-day certificates: due at day 4, not at once as
        // a fixed 30 days would have it.
        let six = cert(now, now + 6 * DAY);
        assert_eq!(
            due(&six, &acme(None), now),
            Some(CHECK_EVERY),
            "due in 4 days"
        );
        assert_eq!(due(&six, &acme(None), now + 4 * DAY), None);
        assert_eq!(
            due(&six, &acme(Some(Duration::from_secs(30 * DAY as u64))), now),
            None
        );
        // 45 days with 20 left: due in 5; with 14 left, now.
        assert_eq!(
            due(&cert(now - 25 * DAY, now + 20 * DAY), &acme(None), now),
            Some(Duration::from_secs(5 * DAY as u64)).map(|d| d.min(CHECK_EVERY))
        );
        assert_eq!(
            due(&cert(now - 31 * DAY, now + 14 * DAY), &acme(None), now),
            None
        );
        // renew_before, when set, is what counts.
        assert_eq!(
            due(
                &cert(now - 10 * DAY, now + 80 * DAY),
                &acme(Some(Duration::from_secs(79 * DAY as u64))),
                now
            ),
            days(1)
        );
    }

    #[test]
    fn a_certificate_not_for_every_domain_is_due() {
        let now = 1_800_000_000;
        let mut a = acme(None);
        a.domains.push("other.example.com".into());
        assert_eq!(due(&cert(now, now + 90 * DAY), &a, now), None);
        a.domains.pop();
        a.domains[0] = "MCP.example.com".into();
        assert!(due(&cert(now, now + 90 * DAY), &a, now).is_some());
    }
}
