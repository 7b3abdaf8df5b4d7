//! The boot parameters the iPXE script puts on the kernel command line.

use metalcast_proto::image::{HexError, PublicKey};
use metalcast_proto::{MacAddr, MacParseError, cmdline};

/// Where the appliance is, who this node is and how it proves it.
pub struct BootParams {
    /// Base URL of the appliance without a trailing `/`, e.g. `http://10.0.0.1:8080`.
    pub url: String,
    /// Per-boot bearer token; never logged.
    pub token: String,
    /// MAC of the NIC the node booted from.
    pub mac: MacAddr,
    /// The appliance's image-signing key. Optional: without it the agent still registers and
    /// applies layouts, but refuses to install an image it cannot verify.
    pub key: Option<PublicKey>,
    /// The `console=` arguments the agent was booted with, in order: the installed system
    /// gets the same consoles, so an operator's serial console keeps working after reboot.
    pub consoles: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CmdlineError {
    #[error("{0}= is missing from the kernel command line")]
    Missing(&'static str),
    #[error("{key}= is empty on the kernel command line")]
    Empty { key: &'static str },
    #[error("{key}= does not hold a MAC address")]
    BadMac {
        key: &'static str,
        #[source]
        source: MacParseError,
    },
    #[error("{key}={value:?} is not an http:// URL (the agent speaks plain HTTP only)")]
    BadUrl { key: &'static str, value: String },
    #[error("{key}= is not an ed25519 public key")]
    BadKey {
        key: &'static str,
        #[source]
        source: HexError,
    },
}

impl BootParams {
    /// Reads the parameters out of a kernel command line (the text of `/proc/cmdline`).
    pub fn parse(line: &str) -> Result<Self, CmdlineError> {
        let words = split(line);
        let get = |key: &'static str| -> Result<String, CmdlineError> {
            // The kernel lets a later duplicate override an earlier one; do the same.
            let value = words
                .iter()
                .rev()
                .find_map(|w| w.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
                .ok_or(CmdlineError::Missing(key))?;
            if value.is_empty() {
                return Err(CmdlineError::Empty { key });
            }
            Ok(value.to_string())
        };

        let url = get(cmdline::URL)?;
        let Some(host) = url.strip_prefix("http://") else {
            return Err(CmdlineError::BadUrl {
                key: cmdline::URL,
                value: url,
            });
        };
        if host.trim_end_matches('/').is_empty() {
            return Err(CmdlineError::BadUrl {
                key: cmdline::URL,
                value: url,
            });
        }
        let url = url.trim_end_matches('/').to_string();
        let token = get(cmdline::TOKEN)?;
        let mac = get(cmdline::MAC)?
            .parse()
            .map_err(|source| CmdlineError::BadMac {
                key: cmdline::MAC,
                source,
            })?;
        let key = match get(cmdline::KEY) {
            Ok(hex) => Some(hex.parse().map_err(|source| CmdlineError::BadKey {
                key: cmdline::KEY,
                source,
            })?),
            Err(CmdlineError::Missing(_)) => None,
            Err(e) => return Err(e),
        };
        let consoles = words
            .iter()
            .filter_map(|w| w.strip_prefix("console="))
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect();
        Ok(Self {
            url,
            token,
            mac,
            key,
            consoles,
        })
    }
}

/// Splits a command line into words the way the kernel does: on whitespace, except inside
/// double quotes, which are removed (`key="a b"` is the word `key=a b`).
fn split(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "initrd=initramfs.cpio.zst console=ttyS0 metalcast.url=http://10.0.0.1:8080/ \
                        metalcast.token=abc123 metalcast.mac=52-54-00-12-34-56 quiet\n";

    #[test]
    fn reads_all_three_parameters() {
        let p = BootParams::parse(LINE).unwrap();
        assert_eq!(p.url, "http://10.0.0.1:8080");
        assert_eq!(p.token, "abc123");
        assert_eq!(p.mac.to_string(), "52:54:00:12:34:56");
        assert!(p.key.is_none());
    }

    #[test]
    fn keeps_the_consoles_in_order() {
        let p = BootParams::parse(&format!(
            "console=tty0 {LINE} console=ttyS0,115200n8 console="
        ))
        .unwrap();
        assert_eq!(p.consoles, ["tty0", "ttyS0", "ttyS0,115200n8"]);
    }

    #[test]
    fn reads_the_optional_key() {
        let hex = "ab".repeat(32);
        let p = BootParams::parse(&format!("{LINE} metalcast.key={hex}")).unwrap();
        assert_eq!(p.key.unwrap().to_string(), hex);
        for bad in [
            "metalcast.key=abc",
            "metalcast.key=",
            &format!("metalcast.key={}", "AB".repeat(32)),
        ] {
            assert!(
                BootParams::parse(&format!("{LINE} {bad}")).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn names_the_missing_key() {
        let err = BootParams::parse(
            "console=ttyS0 metalcast.url=http://x metalcast.mac=52:54:00:12:34:56",
        )
        .err()
        .unwrap();
        assert!(
            matches!(err, CmdlineError::Missing("metalcast.token")),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "metalcast.token= is missing from the kernel command line"
        );
    }

    #[test]
    fn a_longer_key_with_the_same_prefix_is_not_the_key() {
        let err = BootParams::parse(
            "metalcast.urlx=http://x metalcast.token=t metalcast.mac=52:54:00:12:34:56",
        )
        .err()
        .unwrap();
        assert!(
            matches!(err, CmdlineError::Missing("metalcast.url")),
            "{err}"
        );
    }

    #[test]
    fn rejects_https_empty_values_and_bad_macs() {
        let base = "metalcast.token=t metalcast.mac=52:54:00:12:34:56";
        assert!(matches!(
            BootParams::parse(&format!("metalcast.url=https://x {base}")),
            Err(CmdlineError::BadUrl { .. })
        ));
        assert!(matches!(
            BootParams::parse(&format!("metalcast.url=http:// {base}")),
            Err(CmdlineError::BadUrl { .. })
        ));
        assert!(matches!(
            BootParams::parse(
                "metalcast.url=http://x metalcast.token= metalcast.mac=52:54:00:12:34:56"
            ),
            Err(CmdlineError::Empty {
                key: "metalcast.token"
            })
        ));
        assert!(matches!(
            BootParams::parse("metalcast.url=http://x metalcast.token=t metalcast.mac=52:54:00"),
            Err(CmdlineError::BadMac { .. })
        ));
    }

    #[test]
    fn last_duplicate_wins_and_quotes_group_words() {
        let p = BootParams::parse(
            "metalcast.url=http://old metalcast.url=http://new:80 metalcast.token=\"a b\" metalcast.mac=52:54:00:12:34:56",
        )
        .unwrap();
        assert_eq!(p.url, "http://new:80");
        assert_eq!(p.token, "a b");
    }

    #[test]
    fn split_handles_quotes_and_runs_of_spaces() {
        assert_eq!(split("  a  \"b c\"d e=\"\" \n"), vec!["a", "b cd", "e="]);
        assert!(split("").is_empty());
    }
}
