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
//! The ACME protocol itself is the `instant-acme` crate's, over this
//! process's HTTP client and rustls.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType,
    HttpClient, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rustls::sign::CertifiedKey;
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

/// Keeps the listener's certificate issued and fresh until `stop`.
pub async fn run(ctl: Arc<Controller>, stop: CancellationToken) {
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
                    r = order(&tls, &acme) => r,
                };
                let order = order.and_then(|()| ctl.refresh_listener_tls());
                ctl.note_acme(&acme.domains, &acme.directory, |a| match &order {
                    Ok(()) => {
                        a.issued += 1;
                        a.issued_at_ms = Some(crate::control::controller::now_ms());
                        a.error = None;
                    }
                    Err(e) => {
                        a.failed += 1;
                        a.error = Some(e.clone());
                    }
                });
                match order {
                    Ok(()) => {
                        backoff = FIRST_BACKOFF;
                        tracing::info!(domains = ?acme.domains, cert = %tls.cert.display(), "ACME: certificate issued; the listener serves it from the next handshake");
                        if due_in(&tls, &acme).is_some() {
                            continue;
                        }
                        tracing::warn!(renew_before = %humantime::format_duration(acme.renew_before), "ACME: the new certificate is due already (renew_before is longer than the CA's certificates last); looking again in 12h");
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
    let pair = crate::config::CertPair {
        cert: tls.cert.clone(),
        key: tls.key.clone(),
    };
    let (_, not_after) = crate::tls::load_identity(&pair).ok()?;
    let names = crate::tls::certificate_names(&tls.cert).ok()?;
    if !acme
        .domains
        .iter()
        .all(|d| names.iter().any(|n| n.eq_ignore_ascii_case(d)))
    {
        return None;
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs() as i64;
    let due = not_after? - acme.renew_before.as_secs() as i64;
    (due > now).then(|| Duration::from_secs((due - now) as u64).min(CHECK_EVERY))
}

/// One order: account, authorizations answered over `tls-alpn-01`, a CSR
/// for a new key, the chain; key and chain written to `tls.key`, `tls.cert`.
async fn order(tls: &TlsConfig, acme: &AcmeConfig) -> Result<(), String> {
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
            answering.put(&domain, challenge_cert(&domain, digest.as_ref())?);
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
    // The key first: a certificate is never on disk without its key.
    write_atomic(&tls.key, key.serialize_pem().as_bytes()).map_err(|e| e.to_string())?;
    write_atomic(&tls.cert, chain.as_bytes()).map_err(|e| e.to_string())?;
    Ok(())
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
    let (account, credentials) = Account::builder_with_http(Box::new(http))
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            acme.directory.clone(),
            None,
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
fn challenge_cert(domain: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let err = |e: rcgen::Error| format!("the tls-alpn-01 certificate: {e}");
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()]).map_err(err)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(err)?;
    let signing = crate::tls::signing_key(&key.serialize_der())
        .map_err(|e| format!("the tls-alpn-01 key: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
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
