//! The appliance's ed25519 signing key: a PKCS#8 PEM file readable by its owner only
//! (`openssl pkey -in FILE -pubout` shows the public half).

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, spki::der::pem::LineEnding};
pub use ed25519_dalek::{SigningKey, VerifyingKey};
use metalcast_proto::image::PublicKey;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is readable by group or others (mode {mode:o}); run chmod 600 on it")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{0} is not an ed25519 private key in PKCS#8 PEM form")]
    Format(PathBuf),
    #[error("generating the key")]
    Random(#[source] getrandom::Error),
    #[error("{0} is not a valid ed25519 public key")]
    Public(PublicKey),
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> KeyError + 'a {
    move |source| KeyError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Creates a new key at `path` (mode 0600; fails if the file exists).
pub fn generate_key_file(path: &Path) -> Result<SigningKey, KeyError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(KeyError::Random)?;
    let key = SigningKey::from_bytes(&seed);
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|_| KeyError::Format(path.to_path_buf()))?;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err("creating", path))?;
    f.write_all(pem.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io_err("writing", path))?;
    Ok(key)
}

/// Loads the key at `path`, refusing a file others can read.
pub fn load_key_file(path: &Path) -> Result<SigningKey, KeyError> {
    let meta = fs::metadata(path).map_err(io_err("reading", path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let pem = fs::read_to_string(path).map_err(io_err("reading", path))?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|_| KeyError::Format(path.to_path_buf()))
}

/// Loads the key at `path`, creating it first if there is no file.
pub fn load_or_generate_key_file(path: &Path) -> Result<SigningKey, KeyError> {
    match generate_key_file(path) {
        Err(KeyError::Io { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists => {
            load_key_file(path)
        }
        other => other,
    }
}

/// The wire form of a verifying key.
pub fn public_key(key: &VerifyingKey) -> PublicKey {
    PublicKey(key.to_bytes())
}

/// A verifying key from its wire form (as an agent gets it from its boot parameters).
pub fn verifying_key(key: &PublicKey) -> Result<VerifyingKey, KeyError> {
    VerifyingKey::from_bytes(&key.0).map_err(|_| KeyError::Public(*key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_load_back_and_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.key");
        let key = load_or_generate_key_file(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(
            fs::read_to_string(&path)
                .unwrap()
                .starts_with("-----BEGIN PRIVATE KEY-----")
        );
        let again = load_or_generate_key_file(&path).unwrap();
        assert_eq!(key.to_bytes(), again.to_bytes());
        assert!(generate_key_file(&path).is_err());

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_key_file(&path),
            Err(KeyError::Permissions { .. })
        ));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, "garbage").unwrap();
        assert!(matches!(load_key_file(&path), Err(KeyError::Format(_))));

        let pk = public_key(&key.verifying_key());
        assert_eq!(verifying_key(&pk).unwrap(), key.verifying_key());
    }
}
