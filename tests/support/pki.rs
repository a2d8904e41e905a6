//! A test PKI: a CA of its own, a server certificate for 127.0.0.1, two
//! client certificates it signed and a CRL that revokes the second (rcgen),
//! as PEM files; for etcd's and mcpflip's listeners with client certificate
//! authentication.

use std::path::{Path, PathBuf};

use mcpflip::config::CertPair;

/// The files of one test PKI.
pub struct Pki {
    pub ca: PathBuf,
    pub server: PathBuf,
    pub server_key: PathBuf,
    /// A client certificate the CA signed (CN `mcpflip`).
    pub member: CertPair,
    /// Another one (CN `gone`, serial 3), revoked by `crl`.
    pub revoked: CertPair,
    /// The CA's CRL.
    pub crl: PathBuf,
}

impl Pki {
    /// Issues everything into `dir` (made if missing).
    pub fn new(dir: &Path) -> Pki {
        use rcgen::{
            date_time_ymd, BasicConstraints, CertificateParams, CertificateRevocationListParams,
            DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose,
            RevocationReason, RevokedCertParams, SerialNumber,
        };
        std::fs::create_dir_all(dir).expect("pki dir");
        let write = |name: &str, pem: String| {
            let p = dir.join(name);
            std::fs::write(&p, pem).expect("write pem");
            p
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
        let issuer = rcgen::Issuer::from_params(&ca, &ca_key);
        let mut serial = 0u64;
        let mut leaf =
            |name: &str, names: Vec<String>, usage: Vec<ExtendedKeyUsagePurpose>, cn: &str| {
                let key = KeyPair::generate().expect("key");
                let mut p = CertificateParams::new(names).expect("params");
                p.distinguished_name.push(DnType::CommonName, cn);
                p.extended_key_usages = usage;
                serial += 1;
                p.serial_number = Some(SerialNumber::from(serial));
                let cert = p.signed_by(&key, &issuer).expect("sign");
                CertPair {
                    cert: write(&format!("{name}.crt"), cert.pem()),
                    key: write(&format!("{name}.key"), key.serialize_pem()),
                }
            };
        // etcd's gateway dials its own gRPC server with the server certificate
        // as its client certificate: with --client-cert-auth it must allow both.
        // (mcpflip's listener serves it as well.)
        let server = leaf(
            "server",
            vec!["127.0.0.1".into(), "localhost".into()],
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            "etcd",
        );
        let client_auth = || vec![ExtendedKeyUsagePurpose::ClientAuth];
        let member = leaf("client", vec![], client_auth(), "mcpflip");
        let revoked = leaf("revoked", vec![], client_auth(), "gone");
        let crl = CertificateRevocationListParams {
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
        .signed_by(&issuer)
        .expect("crl");
        Pki {
            ca: write("ca.crt", ca_cert.pem()),
            server: server.cert,
            server_key: server.key,
            member,
            revoked,
            crl: write("ca.crl", crl.pem().expect("crl pem")),
        }
    }

    /// A `[listen] tls` table that serves the server certificate and asks
    /// for client certificates this CA signed, with the keys `extra` adds
    /// (`client_auth = "optional"`, ...).
    pub fn listen(&self, extra: &str) -> String {
        self.listen_for(&self.ca, extra)
    }

    /// The SHA-256 of the member's certificate, in hex (what the slot is told
    /// in `X-Forwarded-Client-Cert` and the access log's `client_cert`).
    pub fn member_hash(&self) -> String {
        let der = mcpflip::tls::read_chain(&self.member.cert)
            .expect("client cert")
            .remove(0);
        ring::digest::digest(&ring::digest::SHA256, der.as_ref())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// [`Pki::listen`] asking for clients of the CA `client_ca` instead.
    pub fn listen_for(&self, client_ca: &Path, extra: &str) -> String {
        format!(
            "{{ cert = \"{}\", key = \"{}\", client_ca = \"{}\"{extra} }}",
            self.server.display(),
            self.server_key.display(),
            client_ca.display()
        )
    }
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as
/// PEM files in `dir`: `(ca, server cert, server key, client cert, client key)`.
pub fn certificates(dir: &Path) -> [PathBuf; 5] {
    let pki = Pki::new(dir);
    [
        pki.ca,
        pki.server,
        pki.server_key,
        pki.member.cert,
        pki.member.key,
    ]
}
