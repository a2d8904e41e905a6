//! A test PKI: a CA of its own, a server certificate for 127.0.0.1 and a
//! client certificate it signed (rcgen), as PEM files; for etcd's and
//! mcpflip's listeners with client certificate authentication.

use std::path::Path;

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as
/// PEM files in `dir`: `(ca, server cert, server key, client cert, client key)`.
pub fn certificates(dir: &Path) -> [std::path::PathBuf; 5] {
    let [ca, server, server_key, client, client_key, ..] = issue(dir, false);
    [ca, server, server_key, client, client_key]
}

/// [`certificates`], a second client certificate (`revoked.crt`,
/// `revoked.key`) and a CRL of the CA that revokes it (`ca.crl`):
/// `(ca, server cert, server key, client cert, client key, revoked cert,
/// revoked key, crl)`.
pub fn certificates_with_crl(dir: &Path) -> [std::path::PathBuf; 8] {
    issue(dir, true)
}

fn issue(dir: &Path, crl: bool) -> [std::path::PathBuf; 8] {
    use rcgen::{
        date_time_ymd, BasicConstraints, CertificateParams, CertificateRevocationListParams,
        DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose,
        RevocationReason, RevokedCertParams, SerialNumber,
    };
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::CrlSign,
    ];
    ca.distinguished_name
        .push(DnType::CommonName, "mcpflip test CA");
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let mut serial = 0u64;
    let mut leaf = |names: Vec<String>, usage: Vec<ExtendedKeyUsagePurpose>, cn: &str| {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(names).expect("params");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = usage;
        serial += 1;
        p.serial_number = Some(SerialNumber::from(serial));
        let cert = p.signed_by(&key, &ca_cert, &ca_key).expect("sign");
        (cert.pem(), key.serialize_pem())
    };
    // etcd's gateway dials its own gRPC server with the server certificate
    // as its client certificate: with --client-cert-auth it must allow both.
    // (mcpflip's listener serves it as well.)
    let (server, server_key) = leaf(
        vec!["127.0.0.1".into(), "localhost".into()],
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        "etcd",
    );
    let (client, client_key) = leaf(vec![], vec![ExtendedKeyUsagePurpose::ClientAuth], "mcpflip");
    // Serial 3.
    let (revoked, revoked_key) = leaf(vec![], vec![ExtendedKeyUsagePurpose::ClientAuth], "gone");
    let list = CertificateRevocationListParams {
        this_update: date_time_ymd(2026, 1, 1),
        next_update: date_time_ymd(2036, 1, 1),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: vec![RevokedCertParams {
            serial_number: SerialNumber::from(3u64),
            revocation_time: date_time_ymd(2026, 1, 2),
            reason_code: Some(RevocationReason::KeyCompromise),
            invalidity_date: None,
        }],
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&ca_cert, &ca_key)
    .expect("crl")
    .pem()
    .expect("crl pem");
    let mut files = vec![
        ("ca.crt", ca_cert.pem()),
        ("server.crt", server),
        ("server.key", server_key),
        ("client.crt", client),
        ("client.key", client_key),
    ];
    if crl {
        files.extend([
            ("revoked.crt", revoked),
            ("revoked.key", revoked_key),
            ("ca.crl", list),
        ]);
    }
    let files: Vec<std::path::PathBuf> = files
        .into_iter()
        .map(|(name, pem)| {
            let p = dir.join(name);
            std::fs::write(&p, pem).expect("write pem");
            p
        })
        .collect();
    let none = || dir.join("-");
    std::array::from_fn(|i| files.get(i).cloned().unwrap_or_else(none))
}
