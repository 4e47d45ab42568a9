//! What a hub keeps in its data directory besides the store: the shared access policies, a CA and a
//! server certificate signed by it. Created on first start, reused afterwards; the server certificate is
//! made again (by the same CA) when the names it must cover change.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use twinhub_core::policy::{default_policies, SharedAccessPolicy};

pub const POLICIES_FILE: &str = "policies.json";
pub const CA_CERT_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key.pem";
const SERVER_CERT_FILE: &str = "server.pem";
const SERVER_KEY_FILE: &str = "server.key.pem";
/// The names the current server certificate covers, one per line, to tell when it must be made again.
const SERVER_NAMES_FILE: &str = "server.names";

#[derive(Debug, thiserror::Error)]
pub enum MaterialError {
    #[error("cannot use the data directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid policies file: {source}")]
    Policies {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("no shared access policy named '{0}' (the hub has iothubowner, service, device, registryRead, registryReadWrite)")]
    UnknownPolicy(String),
    #[error("certificate generation failed: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("{0} holds no certificate or key in PEM form")]
    Pem(PathBuf),
}

pub struct HubMaterial {
    pub data_dir: PathBuf,
    pub policies: Vec<SharedAccessPolicy>,
    pub ca_cert_path: PathBuf,
    pub server_cert_pem: String,
    pub server_key_pem: String,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> MaterialError + '_ {
    move |source| MaterialError::Io {
        path: path.to_owned(),
        source,
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, MaterialError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(io_error(path)(error)),
    }
}

/// Writes a file atomically (temporary file, fsync, rename), private to the owner: it may hold keys.
fn write_private(path: &Path, contents: &str) -> Result<(), MaterialError> {
    use std::io::Write;
    let temporary = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&temporary).map_err(io_error(&temporary))?;
    file.write_all(contents.as_bytes()).map_err(io_error(&temporary))?;
    file.sync_all().map_err(io_error(&temporary))?;
    std::fs::rename(&temporary, path).map_err(io_error(path))
}

fn ca_params() -> Result<CertificateParams, MaterialError> {
    // Deterministic, so the issuer can be rebuilt from the stored key alone to sign new server certificates.
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "twinhub local CA");
    name.push(DnType::OrganizationName, "twinhub");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2049, 12, 31);
    Ok(params)
}

/// What every node of a cluster must share: the policies, and the CA that signs each node's server
/// certificate (each node makes its own, for its own names, from the shared CA).
pub const SHARED_FILES: [&str; 3] = [POLICIES_FILE, CA_CERT_FILE, CA_KEY_FILE];

impl HubMaterial {
    /// The shared files of `data_dir` (see [`SHARED_FILES`]), creating the material first when missing.
    pub fn shared_files(data_dir: &Path, names: &[String]) -> Result<Vec<(String, Vec<u8>)>, MaterialError> {
        HubMaterial::open_or_create(data_dir, names)?;
        SHARED_FILES
            .iter()
            .map(|name| {
                let path = data_dir.join(name);
                std::fs::read(&path)
                    .map(|content| ((*name).to_owned(), content))
                    .map_err(io_error(&path))
            })
            .collect()
    }

    /// Takes the cluster's shared files into `data_dir`, replacing what differs. A different CA also
    /// retires the server certificate, which the next [`HubMaterial::open_or_create`] makes again from
    /// it. Names other than [`SHARED_FILES`] are ignored. Returns whether anything changed.
    pub fn adopt_shared(data_dir: &Path, files: &[(String, Vec<u8>)]) -> Result<bool, MaterialError> {
        std::fs::create_dir_all(data_dir).map_err(io_error(data_dir))?;
        let mut changed = false;
        for (name, content) in files.iter().filter(|(name, _)| SHARED_FILES.contains(&name.as_str())) {
            let path = data_dir.join(name);
            if std::fs::read(&path).ok().as_deref() == Some(content.as_slice()) {
                continue;
            }
            let text = String::from_utf8(content.clone()).map_err(|_| MaterialError::Pem(path.clone()))?;
            write_private(&path, &text)?;
            changed = true;
            if name == CA_KEY_FILE || name == CA_CERT_FILE {
                let _ = std::fs::remove_file(data_dir.join(SERVER_NAMES_FILE));
            }
        }
        Ok(changed)
    }

    /// Opens the material in `data_dir`, creating what is missing. `names` are the host names and
    /// addresses the server certificate must cover.
    pub fn open_or_create(data_dir: &Path, names: &[String]) -> Result<HubMaterial, MaterialError> {
        std::fs::create_dir_all(data_dir).map_err(io_error(data_dir))?;
        let policies = Self::policies_in(data_dir, true)?;

        let ca_cert_path = data_dir.join(CA_CERT_FILE);
        let ca_key_path = data_dir.join(CA_KEY_FILE);
        let ca_key = match (read_optional(&ca_key_path)?, ca_cert_path.exists()) {
            (Some(pem), true) => KeyPair::from_pem(&pem)?,
            _ => {
                let key = KeyPair::generate()?;
                let certificate = ca_params()?.self_signed(&key)?;
                write_private(&ca_key_path, &key.serialize_pem())?;
                write_private(&ca_cert_path, &certificate.pem())?;
                // A new CA invalidates any server certificate signed by an old one.
                let _ = std::fs::remove_file(data_dir.join(SERVER_NAMES_FILE));
                key
            }
        };

        let names_path = data_dir.join(SERVER_NAMES_FILE);
        let wanted_names = names.join("\n");
        let server_cert_path = data_dir.join(SERVER_CERT_FILE);
        let server_key_path = data_dir.join(SERVER_KEY_FILE);
        let current = (
            read_optional(&names_path)?,
            read_optional(&server_cert_path)?,
            read_optional(&server_key_path)?,
        );
        let (server_cert_pem, server_key_pem) = match current {
            (Some(existing_names), Some(cert), Some(key)) if existing_names == wanted_names => (cert, key),
            _ => {
                let issuer = Issuer::new(ca_params()?, &ca_key);
                let key = KeyPair::generate()?;
                let mut params = CertificateParams::new(Vec::<String>::new())?;
                params.subject_alt_names = names
                    .iter()
                    .map(|name| match name.parse::<IpAddr>() {
                        Ok(address) => Ok(SanType::IpAddress(address)),
                        Err(_) => Ok(SanType::DnsName(name.as_str().try_into()?)),
                    })
                    .collect::<Result<_, rcgen::Error>>()?;
                let mut subject = DistinguishedName::new();
                subject.push(DnType::CommonName, names.first().map_or("twinhub", String::as_str));
                params.distinguished_name = subject;
                params.not_before = rcgen::date_time_ymd(2024, 1, 1);
                params.not_after = rcgen::date_time_ymd(2049, 12, 31);
                params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
                let certificate = params.signed_by(&key, &issuer)?;
                let (cert_pem, key_pem) = (certificate.pem(), key.serialize_pem());
                write_private(&server_key_path, &key_pem)?;
                write_private(&server_cert_path, &cert_pem)?;
                write_private(&names_path, &wanted_names)?;
                (cert_pem, key_pem)
            }
        };
        Ok(HubMaterial {
            data_dir: data_dir.to_owned(),
            policies,
            ca_cert_path,
            server_cert_pem,
            server_key_pem,
        })
    }

    /// The policies stored in `data_dir`; with `create`, made (with random keys) when missing.
    pub fn policies_in(data_dir: &Path, create: bool) -> Result<Vec<SharedAccessPolicy>, MaterialError> {
        let path = data_dir.join(POLICIES_FILE);
        match read_optional(&path)? {
            Some(text) => serde_json::from_str(&text).map_err(|source| MaterialError::Policies { path, source }),
            None if create => {
                let policies = default_policies();
                let text = serde_json::to_string_pretty(&policies).map_err(|source| MaterialError::Policies {
                    path: path.clone(),
                    source,
                })?;
                write_private(&path, &text)?;
                Ok(policies)
            }
            None => Err(MaterialError::Io {
                path,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no hub has run with this data directory yet",
                ),
            }),
        }
    }

    pub fn policy<'a>(policies: &'a [SharedAccessPolicy], name: &str) -> Result<&'a SharedAccessPolicy, MaterialError> {
        policies
            .iter()
            .find(|policy| policy.name == name)
            .ok_or_else(|| MaterialError::UnknownPolicy(name.to_owned()))
    }
}

/// Remembers the host name and hub name a hub last served under, so commands that only get `--data-dir`
/// can print connection strings that match it.
pub const SETTINGS_FILE: &str = "hub.json";

/// What a hub last served as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServedAs {
    pub hostname: String,
    /// The Event Hubs-compatible endpoint's name (`EntityPath`).
    pub hub_name: String,
}

pub fn write_served_as(data_dir: &Path, served: &ServedAs) -> Result<(), MaterialError> {
    write_private(
        &data_dir.join(SETTINGS_FILE),
        &serde_json::json!({ "hostname": served.hostname, "hubName": served.hub_name }).to_string(),
    )
}

pub fn read_served_as(data_dir: &Path) -> Result<ServedAs, MaterialError> {
    let path = data_dir.join(SETTINGS_FILE);
    let text = read_optional(&path)?.ok_or_else(|| MaterialError::Io {
        path: path.clone(),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no hub has run with this data directory yet",
        ),
    })?;
    let settings: serde_json::Value = serde_json::from_str(&text).map_err(|source| MaterialError::Policies {
        path: path.clone(),
        source,
    })?;
    let hostname = settings["hostname"].as_str().unwrap_or("localhost").to_owned();
    let hub_name = settings["hubName"]
        .as_str()
        .map_or_else(|| crate::server::default_hub_name(&hostname), str::to_owned);
    Ok(ServedAs { hostname, hub_name })
}

pub fn read_hostname(data_dir: &Path) -> Result<String, MaterialError> {
    read_served_as(data_dir).map(|served| served.hostname)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_start_creates_and_later_starts_reuse() {
        let dir = std::env::temp_dir().join(format!("twinhub-material-{}", std::process::id()));
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let first = HubMaterial::open_or_create(&dir, &names).unwrap();
        let second = HubMaterial::open_or_create(&dir, &names).unwrap();
        assert_eq!(first.policies, second.policies);
        assert_eq!(first.server_cert_pem, second.server_cert_pem);
        let ca = std::fs::read_to_string(&first.ca_cert_path).unwrap();
        let renamed = HubMaterial::open_or_create(&dir, &["hub.example".to_owned()]).unwrap();
        assert_ne!(renamed.server_cert_pem, first.server_cert_pem);
        assert_eq!(
            std::fs::read_to_string(&renamed.ca_cert_path).unwrap(),
            ca,
            "the CA stays"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
