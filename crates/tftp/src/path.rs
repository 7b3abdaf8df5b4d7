//! Mapping a requested file name to a file under the TFTP root, refusing anything that could leave
//! it. Two steps: [`sanitize`] is pure (name rules), [`open_in_root`] touches the file system
//! (symlinks, file type).

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;

use crate::packet::ErrorCode;

/// Longest file name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// Why a requested name is not served. The `Display` text is the reason logged; clients get
/// [`PathError::reply`].
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("empty file name")]
    Empty,
    #[error("file name of {0} bytes is longer than {MAX_NAME_LEN}")]
    TooLong(usize),
    #[error("file name contains NUL")]
    Nul,
    #[error("file name has a `..` component")]
    ParentComponent,
    #[error("{0} resolves outside the tftp root")]
    OutsideRoot(PathBuf),
    #[error("{0} is not a regular file")]
    NotRegularFile(PathBuf),
    #[error("{0} not found")]
    NotFound(PathBuf),
    #[error("permission denied on {0}")]
    PermissionDenied(PathBuf),
    #[error("opening {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl PathError {
    /// The TFTP error code and message sent to the client. The message says what class of rule
    /// was broken without echoing server paths.
    pub fn reply(&self) -> (ErrorCode, &'static str) {
        match self {
            Self::NotFound(_) => (ErrorCode::FileNotFound, "file not found"),
            Self::Empty | Self::TooLong(_) | Self::Nul => (
                ErrorCode::AccessViolation,
                "access violation: invalid file name",
            ),
            Self::ParentComponent | Self::OutsideRoot(_) => (
                ErrorCode::AccessViolation,
                "access violation: outside the tftp root",
            ),
            Self::NotRegularFile(_) => (ErrorCode::AccessViolation, "access violation: not a file"),
            Self::PermissionDenied(_) => (ErrorCode::AccessViolation, "access violation"),
            Self::Io { .. } => (ErrorCode::NotDefined, "cannot open file"),
        }
    }
}

/// Turns a requested name into a relative path with only normal components.
///
/// A leading `/` means the root (as `tftpd-hpa -s` does), `\` is a separator (Windows-style
/// clients), empty and `.` components are skipped, and any `..` is refused outright, even one that
/// would stay inside the root: no legitimate boot file name needs it.
pub fn sanitize(requested: &[u8]) -> Result<PathBuf, PathError> {
    if requested.len() > MAX_NAME_LEN {
        return Err(PathError::TooLong(requested.len()));
    }
    if requested.contains(&0) {
        return Err(PathError::Nul);
    }
    let mut relative = PathBuf::new();
    for part in requested.split(|&b| b == b'/' || b == b'\\') {
        match part {
            b"" | b"." => {}
            b".." => return Err(PathError::ParentComponent),
            name => relative.push(OsStr::from_bytes(name)),
        }
    }
    // Every component pushed is a plain name, so the result cannot be absolute or climb.
    if relative.as_os_str().is_empty() {
        return Err(PathError::Empty);
    }
    Ok(relative)
}

/// Opens `relative` (from [`sanitize`]) under `root`, which must already be canonical.
///
/// The path is canonicalized and must still lie under the root, so symlinks may point within the
/// root but not out of it. The open uses `O_NOFOLLOW` (a last component swapped for a symlink after
/// the check fails instead of being followed) and `O_NONBLOCK` (a FIFO cannot hang the open); the
/// opened descriptor must be a regular file. Returns the file and its size.
pub fn open_in_root(root: &Path, relative: &Path) -> Result<(File, u64), PathError> {
    let joined = root.join(relative);
    let resolved = joined.canonicalize().map_err(|e| io_error(&joined, e))?;
    if !resolved.starts_with(root) {
        return Err(PathError::OutsideRoot(relative.to_path_buf()));
    }
    let file = File::options()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits())
        .open(&resolved)
        .map_err(|e| io_error(&resolved, e))?;
    let meta = file.metadata().map_err(|e| io_error(&resolved, e))?;
    if !meta.is_file() {
        return Err(PathError::NotRegularFile(relative.to_path_buf()));
    }
    Ok((file, meta.len()))
}

fn io_error(path: &Path, source: io::Error) -> PathError {
    match source.kind() {
        io::ErrorKind::NotFound => PathError::NotFound(path.to_path_buf()),
        io::ErrorKind::PermissionDenied => PathError::PermissionDenied(path.to_path_buf()),
        // ENOTDIR: a file used as a directory ("file.bin/x") does not exist either.
        io::ErrorKind::NotADirectory => PathError::NotFound(path.to_path_buf()),
        _ => PathError::Io {
            path: path.to_path_buf(),
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::fs::symlink;

    use super::*;
    use crate::testutil::TempDir;

    #[test]
    fn plain_and_nested_names() {
        assert_eq!(sanitize(b"ipxe.efi").ok(), Some(PathBuf::from("ipxe.efi")));
        assert_eq!(
            sanitize(b"pxelinux.cfg/01-52-54-00-12-34-56").ok(),
            Some(PathBuf::from("pxelinux.cfg/01-52-54-00-12-34-56"))
        );
        assert_eq!(sanitize(b"./a//b/./c").ok(), Some(PathBuf::from("a/b/c")));
    }

    #[test]
    fn leading_slash_is_relative_to_the_root() {
        assert_eq!(sanitize(b"/ipxe.efi").ok(), Some(PathBuf::from("ipxe.efi")));
        assert_eq!(
            sanitize(b"/etc/passwd").ok(),
            Some(PathBuf::from("etc/passwd"))
        );
    }

    #[test]
    fn backslashes_are_separators_and_never_escape() {
        assert_eq!(
            sanitize(b"\\boot\\x64\\wdsnbp.com").ok(),
            Some(PathBuf::from("boot/x64/wdsnbp.com"))
        );
        assert!(matches!(
            sanitize(b"..\\..\\etc\\passwd"),
            Err(PathError::ParentComponent)
        ));
        assert!(matches!(
            sanitize(b"a\\..\\..\\x"),
            Err(PathError::ParentComponent)
        ));
    }

    #[test]
    fn parent_components_are_refused() {
        for name in [
            &b"../etc/passwd"[..],
            b"/../x",
            b"a/../../x",
            b"a/..",
            b"..",
            b"a/../b",
        ] {
            let err = sanitize(name).expect_err("must refuse");
            assert!(matches!(err, PathError::ParentComponent), "{name:?}: {err}");
            assert_eq!(err.reply().0, ErrorCode::AccessViolation);
        }
        // Dots that are not a parent component are ordinary names.
        assert_eq!(sanitize(b"...").ok(), Some(PathBuf::from("...")));
        assert_eq!(sanitize(b"a..b").ok(), Some(PathBuf::from("a..b")));
    }

    #[test]
    fn nul_empty_and_overlong_names_are_refused() {
        assert!(matches!(sanitize(b"ipxe.efi\0../x"), Err(PathError::Nul)));
        for name in [&b""[..], b"/", b"./", b"\\"] {
            assert!(matches!(sanitize(name), Err(PathError::Empty)), "{name:?}");
        }
        let long = vec![b'a'; MAX_NAME_LEN + 1];
        assert!(matches!(sanitize(&long), Err(PathError::TooLong(256))));
        assert!(sanitize(&long[..MAX_NAME_LEN]).is_ok());
    }

    fn open(root: &Path, name: &[u8]) -> Result<(File, u64), PathError> {
        open_in_root(root, &sanitize(name)?)
    }

    #[test]
    fn opens_files_and_follows_symlinks_inside_the_root() {
        let dir = TempDir::new("path-inside");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("sub")).expect("mkdir");
        std::fs::write(root.join("sub/file"), b"hello").expect("write");
        symlink("sub/file", root.join("link")).expect("symlink");
        let root = root.canonicalize().expect("canonical root");

        let (mut file, len) = open(&root, b"/sub/file").expect("open");
        assert_eq!(len, 5);
        let mut text = String::new();
        file.read_to_string(&mut text).expect("read");
        assert_eq!(text, "hello");
        assert_eq!(open(&root, b"link").expect("open link").1, 5);
    }

    #[test]
    fn symlinks_out_of_the_root_are_refused() {
        let dir = TempDir::new("path-symlink");
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).expect("mkdir");
        std::fs::write(dir.path().join("secret"), b"x").expect("write");
        symlink("../secret", root.join("escape")).expect("symlink");
        symlink(dir.path(), root.join("outdir")).expect("symlink");
        let root = root.canonicalize().expect("canonical root");

        for name in [&b"escape"[..], b"outdir/secret"] {
            let err = open(&root, name).expect_err("must refuse");
            assert!(matches!(err, PathError::OutsideRoot(_)), "{err}");
            assert_eq!(err.reply().0, ErrorCode::AccessViolation);
        }
    }

    #[test]
    fn missing_files_and_directories() {
        let dir = TempDir::new("path-missing");
        std::fs::create_dir_all(dir.path().join("sub")).expect("mkdir");
        std::fs::write(dir.path().join("file"), b"x").expect("write");
        let root = dir.path().canonicalize().expect("canonical root");

        for name in [&b"nope"[..], b"sub/nope", b"file/x"] {
            let err = open(&root, name).expect_err("must refuse");
            assert!(matches!(err, PathError::NotFound(_)), "{err}");
            assert_eq!(err.reply().0, ErrorCode::FileNotFound);
        }
        let err = open(&root, b"sub").expect_err("directory");
        assert!(matches!(err, PathError::NotRegularFile(_)), "{err}");
    }

    #[test]
    fn fifo_is_refused_without_blocking() {
        let dir = TempDir::new("path-fifo");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(
            &fifo,
            nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
        )
        .expect("mkfifo");
        let root = dir.path().canonicalize().expect("canonical root");
        let err = open(&root, b"fifo").expect_err("fifo");
        assert!(matches!(err, PathError::NotRegularFile(_)), "{err}");
    }
}
