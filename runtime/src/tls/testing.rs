//! Certificates for tests, made with rcgen: a CA, and server and client
//! certificates it signs, written as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// A CA whose certificate is `<dir>/<name>-ca.pem`.
pub struct Pki {
    dir: PathBuf,
    name: String,
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate's file.
    pub ca: PathBuf,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").field("ca", &self.ca).finish()
    }
}

impl Pki {
    /// A new CA named `name`, its files under `dir`.
    ///
    /// # Panics
    ///
    /// When rcgen or the file system fails (tests only).
    #[allow(clippy::unwrap_used)]
    pub fn new(dir: &Path, name: &str) -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{name} test CA"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        let ca = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca, cert.pem()).unwrap();
        Pki {
            dir: dir.to_owned(),
            name: name.to_owned(),
            issuer: Issuer::new(params, key),
            ca,
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses), as
    /// `(cert, key)` files named after `file`.
    pub fn server(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        self.leaf(file, names, &[ExtendedKeyUsagePurpose::ServerAuth])
    }

    /// A certificate for `names` good for both ends of a connection, as
    /// the nodes of a Redis Cluster need on their TLS cluster bus.
    pub fn peer(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let usages = [
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.leaf(file, names, &usages)
    }

    /// A client certificate whose common name is `name`.
    pub fn client(&self, file: &str, name: &str) -> (PathBuf, PathBuf) {
        self.leaf(file, &[name], &[ExtendedKeyUsagePurpose::ClientAuth])
    }

    #[allow(clippy::unwrap_used)]
    fn leaf(
        &self,
        file: &str,
        names: &[&str],
        usages: &[ExtendedKeyUsagePurpose],
    ) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let sans: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(sans).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = usages.to_vec();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (
            self.dir.join(format!("{}-{file}.pem", self.name)),
            self.dir.join(format!("{}-{file}-key.pem", self.name)),
        );
        // Written to a temporary name and renamed, as a rotated Secret is.
        for (path, pem) in [(&c, cert.pem()), (&k, key.serialize_pem())] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, pem).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
        (c, k)
    }
}
