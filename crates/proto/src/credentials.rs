//! How an operator gets into an installed node: root's password hash and SSH public keys.
//!
//! Checked where they enter (API and CLI) and again by the agent before it writes them, so a
//! value that would corrupt `/etc/shadow` or `authorized_keys` never reaches a node.

use serde::{Deserialize, Serialize};

/// Written into the installed tree; empty means "leave the image's accounts as they are".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// A crypt(3) hash for root (`$y$…` from `mkpasswd`, `$6$…` from `openssl passwd -6`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_password_hash: Option<String>,
    /// Lines for root's `~/.ssh/authorized_keys`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_authorized_keys: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialError {
    #[error(
        "root password hash {0:?} is not a crypt(3) hash: use `mkpasswd -m yescrypt` or \
         `openssl passwd -6` (the password itself is never stored)"
    )]
    PasswordHash(String),
    #[error(
        "SSH key {0:?} is not an authorized_keys line: expected \
         [options] TYPE BASE64 [comment], TYPE one of {TYPES}",
        TYPES = KEY_TYPES.join(", ")
    )]
    AuthorizedKey(String),
}

/// Hash methods of libxcrypt, which Debian's login uses; DES and MD5 are refused as too weak.
const HASH_METHODS: [&str; 5] = ["y", "gy", "7", "6", "5"];

const KEY_TYPES: [&str; 8] = [
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-dss",
];

/// `$ID$[PARAMS$]SALT$HASH` with a method Debian's libxcrypt knows, and nothing that could
/// end a field of `/etc/shadow`.
pub fn validate_password_hash(hash: &str) -> Result<(), CredentialError> {
    let err = || CredentialError::PasswordHash(hash.to_string());
    let mut fields = hash.split('$');
    if fields.next() != Some("") {
        return Err(err());
    }
    let method = fields.next().ok_or_else(err)?;
    let rest: Vec<&str> = fields.collect();
    let charset_ok = hash
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'$' | b'.' | b'/' | b'=' | b','));
    let hash_ok = rest.len() >= 2 && rest.last().is_some_and(|h| h.len() >= 16);
    if HASH_METHODS.contains(&method) && charset_ok && hash_ok && hash.len() <= 512 {
        Ok(())
    } else {
        Err(err())
    }
}

/// One `authorized_keys` line (sshd(8)): optional options, a key type, the base64 key blob,
/// an optional comment. Options are passed through as written.
pub fn validate_authorized_key(line: &str) -> Result<(), CredentialError> {
    let err = || CredentialError::AuthorizedKey(line.to_string());
    if line.len() > 16 * 1024 || line.contains(['\n', '\r', '\0']) {
        return Err(err());
    }
    let fields: Vec<&str> = line.split_whitespace().collect();
    let at = fields
        .iter()
        .position(|f| KEY_TYPES.contains(f))
        .ok_or_else(err)?;
    // Options, when present, are one field (no spaces outside quotes is the common case).
    let blob = fields.get(at + 1).ok_or_else(err)?;
    let base64_ok = blob.len() % 4 == 0
        && blob.len() >= 16
        && blob
            .trim_end_matches('=')
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
    if at <= 1 && base64_ok {
        Ok(())
    } else {
        Err(err())
    }
}

impl Credentials {
    pub fn validate(&self) -> Result<(), CredentialError> {
        if let Some(hash) = &self.root_password_hash {
            validate_password_hash(hash)?;
        }
        self.ssh_authorized_keys
            .iter()
            .try_for_each(|k| validate_authorized_key(k))
    }

    pub fn is_empty(&self) -> bool {
        self.root_password_hash.is_none() && self.ssh_authorized_keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YESCRYPT: &str =
        "$y$j9T$Qq3s1Yd3cJxHhWmrnTXqY.$0bh5u3yUCn2.QA8ZB6mSb1WmX6WQeYwZIyQpc5FV.qD";
    const SHA512: &str = "$6$saltsalt$qFmFH.bQmmtXzyBY0s9v7Oicd2z4XSIecDzlB5KiA2/jctKu9YterLp8wwnSq.qc.eoxqOmSuNp2xS0ktL3nh/";
    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHbN5Lf0Sw8dBmz3ajM5J1rJ2Ka7iKx3CqQy9m5F6PZq ops@bastion";

    #[test]
    fn crypt_hashes_of_known_methods_pass() {
        assert_eq!(validate_password_hash(YESCRYPT), Ok(()));
        assert_eq!(validate_password_hash(SHA512), Ok(()));
    }

    #[test]
    fn plain_passwords_weak_methods_and_field_breakers_are_refused() {
        for bad in [
            "hunter2",
            "",
            "$1$salt$abcdefghijklmnopqrstuv",
            "abcdefghijklm",
            "$6$salt$short",
            "$6$salt$abcdefghijklmnopqrstuv:0:0",
            "$6$salt$abcdefghijklmnopqrstuv\nroot::",
            "$y$j9T$salt$abcdefghijklmnopqrstuv ",
        ] {
            assert!(
                matches!(
                    validate_password_hash(bad),
                    Err(CredentialError::PasswordHash(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn authorized_key_lines_with_and_without_options_pass() {
        assert_eq!(validate_authorized_key(ED25519), Ok(()));
        let with_options = format!("from=\"10.0.0.0/8\",no-pty {ED25519}");
        assert_eq!(validate_authorized_key(&with_options), Ok(()));
        let no_comment = ED25519.rsplit_once(' ').unwrap().0;
        assert_eq!(validate_authorized_key(no_comment), Ok(()));
    }

    #[test]
    fn private_keys_and_broken_lines_are_refused() {
        let two_lines = format!("{ED25519}\n{ED25519}");
        for bad in [
            "",
            "-----BEGIN OPENSSH PRIVATE KEY-----",
            "ssh-ed25519",
            "ssh-ed25519 not*base64",
            "ssh-foo AAAAC3NzaC1lZDI1NTE5AAAAIHbN5Lf0",
            two_lines.as_str(),
        ] {
            assert!(
                matches!(
                    validate_authorized_key(bad),
                    Err(CredentialError::AuthorizedKey(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn credentials_check_every_field() {
        let mut c = Credentials {
            root_password_hash: Some(YESCRYPT.into()),
            ssh_authorized_keys: vec![ED25519.into()],
        };
        assert_eq!(c.validate(), Ok(()));
        c.ssh_authorized_keys.push("nope".into());
        assert!(c.validate().is_err());
        assert!(Credentials::default().is_empty());
    }
}
