//! A test PKI: a CA of its own, a server certificate for 127.0.0.1 and a
//! client certificate it signed (rcgen), as PEM files; for etcd's and
//! mcpflip's listeners with client certificate authentication.

use std::path::Path;

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as
/// PEM files in `dir`: `(ca, server cert, server key, client cert, client key)`.
pub fn certificates(dir: &Path) -> [std::path::PathBuf; 5] {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    };
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "mcpflip test CA");
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let leaf = |names: Vec<String>, usage: Vec<ExtendedKeyUsagePurpose>, cn: &str| {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(names).expect("params");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = usage;
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
    let files = [
        ("ca.crt", ca_cert.pem()),
        ("server.crt", server),
        ("server.key", server_key),
        ("client.crt", client),
        ("client.key", client_key),
    ];
    files.map(|(name, pem)| {
        let p = dir.join(name);
        std::fs::write(&p, pem).expect("write pem");
        p
    })
}
