//! The TFTP root the appliance stages for itself: copies of the iPXE builds it hands out.
//!
//! Copies rather than links, because the TFTP server refuses any link that leaves its root
//! (Debian's `/usr/lib/ipxe/ipxe.efi` points into `/boot`).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("creating the TFTP root {path}")]
    CreateRoot {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Copies each of `names` from `from` into `root` when missing or different. A name absent
/// from `from` is skipped and returned, so the caller can warn that those clients cannot boot.
pub fn stage(from: &Path, root: &Path, names: &[String]) -> Result<Vec<String>, StageError> {
    fs::create_dir_all(root).map_err(|source| StageError::CreateRoot {
        path: root.to_path_buf(),
        source,
    })?;
    let mut missing = Vec::new();
    for name in names {
        let src = from.join(name);
        // fs::read follows links: the target's bytes are what we serve.
        let bytes = match fs::read(&src) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing.push(name.clone());
                continue;
            }
            Err(source) => return Err(StageError::Read { path: src, source }),
        };
        let dest = root.join(name);
        if fs::read(&dest).is_ok_and(|old| old == bytes) {
            continue;
        }
        // Write beside and rename, so a transfer in progress never sees a half-written file.
        let tmp = root.join(format!(".{name}.tmp"));
        fs::write(&tmp, &bytes)
            .and_then(|()| fs::rename(&tmp, &dest))
            .map_err(|source| StageError::Write { path: dest, source })?;
    }
    Ok(missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn copies_link_targets_and_refreshes_changed_files() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("ipxe");
        let elsewhere = dir.path().join("boot");
        fs::create_dir_all(&from).unwrap();
        fs::create_dir_all(&elsewhere).unwrap();
        fs::write(from.join("undionly.kpxe"), b"bios").unwrap();
        fs::write(elsewhere.join("ipxe.efi"), b"uefi").unwrap();
        std::os::unix::fs::symlink(elsewhere.join("ipxe.efi"), from.join("ipxe.efi")).unwrap();
        let root = dir.path().join("data/tftp");

        let missing = stage(
            &from,
            &root,
            &names(&["undionly.kpxe", "ipxe.efi", "snponly.efi"]),
        )
        .unwrap();
        assert_eq!(missing, vec!["snponly.efi".to_string()]);
        assert_eq!(fs::read(root.join("ipxe.efi")).unwrap(), b"uefi");
        assert!(
            !fs::symlink_metadata(root.join("ipxe.efi"))
                .unwrap()
                .is_symlink()
        );

        fs::write(from.join("undionly.kpxe"), b"bios v2").unwrap();
        stage(&from, &root, &names(&["undionly.kpxe"])).unwrap();
        assert_eq!(fs::read(root.join("undionly.kpxe")).unwrap(), b"bios v2");
        let leftovers: Vec<_> = fs::read_dir(&root)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers.len(), 2, "{leftovers:?}");
    }
}
