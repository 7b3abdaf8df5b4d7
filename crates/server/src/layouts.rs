//! Disk layouts by name: TOML files in the configured layouts directory.

use std::io;
use std::path::PathBuf;

use metalcast_layout::Layout;
use metalcast_proto::NamedLayout;

#[derive(Debug, thiserror::Error)]
pub enum LayoutsError {
    #[error("layout name {0:?} is not valid: use letters, digits, '.', '_' and '-'")]
    BadName(String),
    #[error("no layout {name:?} in {dir}")]
    Missing { name: String, dir: PathBuf },
    #[error("reading layout {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("layout {name:?}: {source}")]
    Invalid {
        name: String,
        #[source]
        source: metalcast_layout::LayoutError,
    },
}

#[derive(Debug, Clone)]
pub struct Layouts {
    pub dir: PathBuf,
}

impl Layouts {
    /// Reads and checks layout `name` (`dir/name.toml`). Read on every use: layouts are small,
    /// and an operator's edit takes effect on the next boot without a restart.
    pub fn load(&self, name: &str) -> Result<(NamedLayout, Layout), LayoutsError> {
        let valid = !name.is_empty()
            && name.len() <= 128
            && !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !valid {
            return Err(LayoutsError::BadName(name.to_string()));
        }
        let path = self.dir.join(format!("{name}.toml"));
        let toml = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(LayoutsError::Missing {
                    name: name.to_string(),
                    dir: self.dir.clone(),
                });
            }
            Err(source) => return Err(LayoutsError::Read { path, source }),
        };
        let layout = Layout::from_toml(&toml).map_err(|source| LayoutsError::Invalid {
            name: name.to_string(),
            source,
        })?;
        Ok((
            NamedLayout {
                name: name.to_string(),
                toml,
            },
            layout,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_leave_the_directory() {
        let layouts = Layouts {
            dir: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../layouts")),
        };
        for bad in ["", "../etc/passwd", ".hidden", "a/b", "x y"] {
            assert!(
                matches!(layouts.load(bad), Err(LayoutsError::BadName(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            layouts.load("no-such-layout"),
            Err(LayoutsError::Missing { .. })
        ));
        let (named, _) = layouts.load("raid1-lvm-uefi").unwrap();
        assert_eq!(named.name, "raid1-lvm-uefi");
        assert!(named.toml.contains("raid"));
    }

    #[test]
    fn an_invalid_layout_names_its_field() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.toml"), "[[raid]]\nname = 1\n").unwrap();
        let layouts = Layouts {
            dir: dir.path().to_path_buf(),
        };
        let err = layouts.load("bad").unwrap_err().to_string();
        assert!(err.starts_with("layout \"bad\": "), "{err}");
    }
}
