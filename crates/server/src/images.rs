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

/// Free bytes chunk uploads leave on the data disk by default: the database, its WAL and the
/// log need room to record leases and events after an import has taken the rest.
pub const DEFAULT_RESERVE: u64 = 512 << 20;

/// The chunk store and the signing key, shared by the handlers.
#[derive(Debug, Clone)]
pub struct Images {
    pub store: Arc<Store>,
    pub key: Arc<SigningKey>,
    /// Free bytes a chunk upload must leave on the store's file system.
    pub reserve: u64,
}

/// Why a chunk upload was turned away.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the appliance's data disk has {} MiB free; chunk uploads stop {} MiB short of full so \
     that its database and log keep room (images.reserve_mb)",
    free >> 20,
    reserve >> 20
)]
pub struct NoRoom {
    pub free: u64,
    pub reserve: u64,
}

/// Whether `len` more bytes fit on a file system with `free` bytes while leaving `reserve`.
pub fn room_for(len: u64, free: u64, reserve: u64) -> Result<(), NoRoom> {
    if len > free || free - len < reserve {
        return Err(NoRoom { free, reserve });
    }
    Ok(())
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
            reserve: DEFAULT_RESERVE,
        })
    }

    /// Refuses `len` bytes that would leave less than the reserve free on the store's file
    /// system. A file system that cannot say how full it is lets the upload through.
    pub fn check_room(&self, len: u64) -> Result<(), NoRoom> {
        match nix::sys::statvfs::statvfs(self.store.root()) {
            Ok(fs) => {
                let free = fs.blocks_available().saturating_mul(fs.fragment_size());
                room_for(len, free, self.reserve)
            }
            Err(e) => {
                tracing::debug!(error = %e, "statvfs on the chunk store failed");
                Ok(())
            }
        }
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
    fn uploads_leave_the_reserve_free() {
        const MIB: u64 = 1 << 20;
        assert_eq!(room_for(MIB, 600 * MIB, 512 * MIB), Ok(()));
        assert_eq!(room_for(88 * MIB, 600 * MIB, 512 * MIB), Ok(()));
        let err = room_for(88 * MIB + 1, 600 * MIB, 512 * MIB).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the appliance's data disk has 600 MiB free; chunk uploads stop 512 MiB short of \
             full so that its database and log keep room (images.reserve_mb)"
        );
        assert!(room_for(10, 5, 0).is_err(), "more than is free never fits");
        let dir = tempfile::tempdir().unwrap();
        let mut images = Images::open(dir.path()).unwrap();
        images.reserve = 0;
        assert_eq!(images.check_room(0), Ok(()));
        images.reserve = u64::MAX;
        assert!(images.check_room(1).is_err());
    }

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
