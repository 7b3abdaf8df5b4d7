//! The appliance's image library: the chunk store at `data_dir/images` and the ed25519 key
//! at `data_dir/keys/appliance.key` that signs every manifest it accepts.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use metalcast_image::{KeyError, SigningKey, Store, StoreError};
use metalcast_proto::image::PublicKey;

/// The chunk store's directory inside the data directory.
pub const IMAGES_DIR: &str = "images";
/// The signing key's file inside the data directory.
pub const KEY_FILE: &str = "keys/appliance.key";
/// Unreferenced chunks younger than this survive gc: they may belong to an upload whose
/// manifest has not arrived yet.
pub const GC_GRACE: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum ImagesError {
    #[error("opening the chunk store")]
    Store(#[from] StoreError),
    #[error("loading the appliance signing key")]
    Key(#[from] KeyError),
    #[error("creating key directory {}", path.display())]
    KeyDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The chunk store and the signing key, shared by the handlers.
#[derive(Debug, Clone)]
pub struct Images {
    pub store: Arc<Store>,
    pub key: Arc<SigningKey>,
}

impl Images {
    /// Opens the store and loads the key, generating it (mode 0600, in a 0700 directory) on
    /// first start. Blocks.
    pub fn open(data_dir: &Path) -> Result<Images, ImagesError> {
        let store = Store::open(data_dir.join(IMAGES_DIR))?;
        let key_path = data_dir.join(KEY_FILE);
        if let Some(dir) = key_path.parent()
            && !dir.is_dir()
        {
            let key_dir = |source| ImagesError::KeyDir {
                path: dir.to_path_buf(),
                source,
            };
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(key_dir)?;
            // The mode given to mkdir is cut by the umask; the key's directory is private.
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(key_dir)?;
        }
        let key = metalcast_image::load_or_generate_key_file(&key_path)?;
        Ok(Images {
            store: Arc::new(store),
            key: Arc::new(key),
        })
    }

    /// The key agents must trust (`metalcast.key=` on their command line).
    pub fn public_key(&self) -> PublicKey {
        metalcast_image::public_key(&self.key.verifying_key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_generates_a_private_key_once() {
        let dir = tempfile::tempdir().unwrap();
        let first = Images::open(dir.path()).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join(KEY_FILE)), 0o600);
        assert_eq!(mode(&dir.path().join("keys")), 0o700);
        assert!(dir.path().join(IMAGES_DIR).join("chunks").is_dir());
        let again = Images::open(dir.path()).unwrap();
        assert_eq!(first.public_key(), again.public_key());
    }
}
