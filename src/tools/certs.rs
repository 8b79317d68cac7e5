//! Certificates for the local mesh and the tests: a mesh CA, and the
//! certificates it issues to replicas and operators, written as the PEM
//! files `[tls]` reads.

use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::OffsetDateTime;

use crate::tls::TlsFiles;

/// A certificate authority made on the spot.
pub struct MeshCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// A certificate and its private key, in PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl MeshCa {
    pub fn new(name: &str) -> Result<Self, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let pem = params.self_signed(&key)?.pem();
        Ok(Self {
            issuer: Issuer::new(params, key),
            pem,
        })
    }

    /// The CA's certificate (what `tls.ca_file` holds).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A certificate naming `names` (DNS names or IP addresses), valid for
    /// a year, for serving and for dialing.
    pub fn issue(&self, names: &[&str]) -> Result<Issued, rcgen::Error> {
        let now = OffsetDateTime::now_utc();
        self.issue_valid(
            names,
            now - Duration::from_secs(3600),
            now + Duration::from_secs(365 * 86400),
        )
    }

    /// As [`MeshCa::issue`], valid from `not_before` to `not_after`.
    pub fn issue_valid(
        &self,
        names: &[&str],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Issued, rcgen::Error> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        params.not_before = not_before;
        params.not_after = not_after;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        Ok(Issued {
            cert_pem: params.signed_by(&key, &self.issuer)?.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes `ca.pem`, `<stem>.pem` and `<stem>.key` (the last readable by
    /// its owner only) into `dir`, for a certificate naming `names`.
    pub fn write(&self, dir: &Path, stem: &str, names: &[&str]) -> std::io::Result<TlsFiles> {
        let issued = self.issue(names).map_err(std::io::Error::other)?;
        self.write_issued(dir, stem, &issued)
    }

    /// Writes an issued certificate's files, as [`MeshCa::write`] does.
    pub fn write_issued(
        &self,
        dir: &Path,
        stem: &str,
        issued: &Issued,
    ) -> std::io::Result<TlsFiles> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(dir)?;
        let files = TlsFiles {
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}.key")),
            ca: dir.join("ca.pem"),
        };
        std::fs::write(&files.ca, &self.pem)?;
        std::fs::write(&files.cert, &issued.cert_pem)?;
        let mut key = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&files.key)?;
        std::io::Write::write_all(&mut key, issued.key_pem.as_bytes())?;
        Ok(files)
    }
}
