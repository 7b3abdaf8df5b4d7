//! Server configuration, as it appears in the appliance's TOML (`[tftp]` section).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::options::{Limits, MAX_BLKSIZE, MAX_TIMEOUT_SECS, MIN_BLKSIZE};

/// Every key is optional; see `docs/tftp.md`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TftpConfig {
    /// Directory served; nothing outside it is ever read.
    pub root: PathBuf,
    /// Listening address.
    pub bind: SocketAddr,
    /// Largest blksize granted (RFC 2348). 1468 fills a 1500-byte Ethernet MTU.
    pub max_blksize: u16,
    /// Largest windowsize granted (RFC 7440).
    pub max_windowsize: u16,
    /// Retransmission timeout in milliseconds, unless the client sends the `timeout` option.
    pub timeout_ms: u64,
    /// Retransmissions after a timeout before a transfer is abandoned.
    pub retries: u32,
    /// Transfers served at once (a thread each). A request beyond them gets error 0 "server
    /// busy", which firmware answers by asking again.
    pub max_transfers: usize,
}

impl Default for TftpConfig {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/srv/tftp"),
            bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 69)),
            max_blksize: 1468,
            max_windowsize: 64,
            timeout_ms: 1000,
            retries: 5,
            max_transfers: 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("max_blksize = {0} is outside {MIN_BLKSIZE}..={MAX_BLKSIZE}")]
    MaxBlksize(u16),
    #[error("max_windowsize must be at least 1")]
    MaxWindowsize,
    #[error("timeout_ms = {0} is outside 1..={max}", max = MAX_TIMEOUT_SECS * 1000)]
    Timeout(u64),
    #[error("max_transfers must be at least 1")]
    MaxTransfers,
}

impl TftpConfig {
    /// Checks the values serde cannot: ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(MIN_BLKSIZE..=MAX_BLKSIZE).contains(&self.max_blksize) {
            return Err(ConfigError::MaxBlksize(self.max_blksize));
        }
        if self.max_windowsize == 0 {
            return Err(ConfigError::MaxWindowsize);
        }
        if !(1..=MAX_TIMEOUT_SECS * 1000).contains(&self.timeout_ms) {
            return Err(ConfigError::Timeout(self.timeout_ms));
        }
        if self.max_transfers == 0 {
            return Err(ConfigError::MaxTransfers);
        }
        Ok(())
    }

    /// What option negotiation may grant.
    pub fn limits(&self) -> Limits {
        Limits {
            max_blksize: self.max_blksize,
            max_windowsize: self.max_windowsize,
            default_timeout: Duration::from_millis(self.timeout_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_section_gives_the_defaults() {
        let config: TftpConfig = toml::from_str("").expect("parse");
        assert_eq!(config, TftpConfig::default());
        assert_eq!(config.bind, "0.0.0.0:69".parse().expect("addr"));
        assert_eq!((config.max_blksize, config.max_windowsize), (1468, 64));
        assert_eq!((config.timeout_ms, config.retries), (1000, 5));
        assert_eq!(config.max_transfers, 1024);
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn every_key_parses() {
        let config: TftpConfig = toml::from_str(
            r#"
            root = "/var/lib/metalcast/tftp"
            bind = "192.0.2.1:6969"
            max_blksize = 8192
            max_windowsize = 16
            timeout_ms = 500
            retries = 3
            max_transfers = 64
            "#,
        )
        .expect("parse");
        assert_eq!(
            config,
            TftpConfig {
                root: "/var/lib/metalcast/tftp".into(),
                bind: "192.0.2.1:6969".parse().expect("addr"),
                max_blksize: 8192,
                max_windowsize: 16,
                timeout_ms: 500,
                retries: 3,
                max_transfers: 64,
            }
        );
        assert_eq!(config.limits().default_timeout, Duration::from_millis(500));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = toml::from_str::<TftpConfig>("blksize = 1468").expect_err("unknown key");
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn out_of_range_values_are_rejected() {
        let bad = |f: fn(&mut TftpConfig)| {
            let mut config = TftpConfig::default();
            f(&mut config);
            config.validate()
        };
        assert_eq!(bad(|c| c.max_blksize = 7), Err(ConfigError::MaxBlksize(7)));
        assert_eq!(
            bad(|c| c.max_blksize = 65465),
            Err(ConfigError::MaxBlksize(65465))
        );
        assert_eq!(
            bad(|c| c.max_windowsize = 0),
            Err(ConfigError::MaxWindowsize)
        );
        assert_eq!(bad(|c| c.timeout_ms = 0), Err(ConfigError::Timeout(0)));
        assert_eq!(
            bad(|c| c.timeout_ms = 255_001),
            Err(ConfigError::Timeout(255_001))
        );
        assert_eq!(bad(|c| c.max_transfers = 0), Err(ConfigError::MaxTransfers));
        assert_eq!(bad(|c| c.max_blksize = 65464), Ok(()));
        assert_eq!(bad(|c| c.max_blksize = 8), Ok(()));
    }
}
