//! TLS for the emulator ([`super::EmulatorBuilder::tls`]): a CA generated at each start and a
//! server certificate it signs for `localhost` and `127.0.0.1` (and the bound IP, when it is a
//! specific other one). Nothing is written to disk here; the CA's PEM is handed to clients
//! ([`super::RunningEmulator::ca_pem`]) and the keys live only in memory.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// The generated CA and the server side of the TLS setup.
pub(crate) struct Pki {
    /// PEM of the CA certificate (the one trust root clients need).
    pub(crate) ca_pem: String,
    /// rustls configuration serving the CA-signed certificate.
    pub(crate) server_config: Arc<rustls::ServerConfig>,
}

/// Generates a fresh CA and a server certificate signed by it, valid for `localhost`,
/// `127.0.0.1` and `bound` (unless unspecified).
pub(crate) fn generate(bound: IpAddr) -> io::Result<Pki> {
    let ca_key = KeyPair::generate().map_err(pki_error)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(pki_error)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "audience-operator-aep-emulator-ca");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).map_err(pki_error)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut serving = CertificateParams::new(vec!["localhost".to_owned()]).map_err(pki_error)?;
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    serving.subject_alt_names.push(SanType::IpAddress(loopback));
    if !bound.is_unspecified() && bound != loopback {
        serving.subject_alt_names.push(SanType::IpAddress(bound));
    }
    serving.distinguished_name.push(DnType::CommonName, "aep-emulator");
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_key = KeyPair::generate().map_err(pki_error)?;
    let serving_cert = serving.signed_by(&serving_key, &issuer).map_err(pki_error)?;

    // The process-wide ring provider, as every client of the crate uses.
    aep::install_crypto_provider();
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![serving_cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(serving_key.serialize_der())),
        )
        .map_err(io::Error::other)?;
    // The server speaks HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Pki {
        ca_pem: ca_cert.pem(),
        server_config: Arc::new(config),
    })
}

fn pki_error(e: rcgen::Error) -> io::Error {
    io::Error::other(format!("generating the emulator's TLS certificates: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_one_pem_certificate_and_the_server_config_speaks_http1() {
        let pki = generate(IpAddr::V4(Ipv4Addr::UNSPECIFIED)).expect("PKI generates");
        assert!(pki.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(pki.ca_pem.matches("BEGIN CERTIFICATE").count(), 1);
        assert_eq!(pki.server_config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        let other = generate(IpAddr::V4(Ipv4Addr::LOCALHOST)).expect("PKI generates");
        assert_ne!(pki.ca_pem, other.ca_pem, "every start gets a fresh CA");
    }
}
