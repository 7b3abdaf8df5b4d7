//! Option negotiation (RFC 2347) for blksize (RFC 2348), tsize and timeout (RFC 2349) and
//! windowsize (RFC 7440). Pure: requested options + limits + file size in, agreed values out.

use std::time::Duration;

use crate::request::RequestedOption;

/// RFC 1350 block size, used when blksize is not negotiated.
pub const DEFAULT_BLKSIZE: u16 = 512;
/// RFC 2348 bounds on blksize.
pub const MIN_BLKSIZE: u16 = 8;
pub const MAX_BLKSIZE: u16 = 65464;
/// RFC 2349 bounds on timeout, in seconds.
pub const MIN_TIMEOUT_SECS: u64 = 1;
pub const MAX_TIMEOUT_SECS: u64 = 255;

/// What the server is willing to agree to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest blksize granted; requests above it get this value.
    pub max_blksize: u16,
    /// Largest windowsize granted; requests above it get this value.
    pub max_windowsize: u16,
    /// Retransmission timeout unless the client asks for another (timeout option).
    pub default_timeout: Duration,
}

/// The parameters of one transfer after negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub blksize: u16,
    pub windowsize: u16,
    pub timeout: Duration,
    /// The options to acknowledge in an OACK, in the order the client sent them. Empty means the
    /// server sends no OACK and starts with DATA block 1 (RFC 2347).
    pub oack: Vec<(&'static str, String)>,
}

/// Agrees on transfer parameters.
///
/// Unknown options are ignored (RFC 2347). A value that is not a plain decimal number or is out of
/// the option's range is ignored too, as if the option had not been sent: a client with one bad
/// option still gets its file. A repeated option counts once (the first).
pub fn negotiate(requested: &[RequestedOption], limits: &Limits, file_size: u64) -> Negotiated {
    let mut agreed = Negotiated {
        blksize: DEFAULT_BLKSIZE,
        windowsize: 1,
        timeout: limits.default_timeout,
        oack: Vec::new(),
    };
    for option in requested {
        let Some(name) = known_name(&option.name) else {
            continue;
        };
        if agreed.oack.iter().any(|(seen, _)| *seen == name) {
            continue;
        }
        let Some(value) = parse_decimal(&option.value) else {
            continue;
        };
        let reply = match name {
            "blksize" => {
                // RFC 2348: below 8 is invalid; above our cap (or the RFC maximum) we answer with
                // the cap, which the RFC allows since it is smaller than what was asked.
                if value < u64::from(MIN_BLKSIZE) {
                    continue;
                }
                let size = value.min(u64::from(limits.max_blksize.min(MAX_BLKSIZE)));
                agreed.blksize = u16::try_from(size).unwrap_or(limits.max_blksize);
                agreed.blksize.to_string()
            }
            "windowsize" => {
                // RFC 7440: 1..=65535; a larger window than we allow is answered with our cap.
                if value == 0 || value > u64::from(u16::MAX) {
                    continue;
                }
                let size = value.min(u64::from(limits.max_windowsize.max(1)));
                agreed.windowsize = u16::try_from(size).unwrap_or(1);
                agreed.windowsize.to_string()
            }
            "timeout" => {
                if !(MIN_TIMEOUT_SECS..=MAX_TIMEOUT_SECS).contains(&value) {
                    continue;
                }
                agreed.timeout = Duration::from_secs(value);
                value.to_string()
            }
            // RFC 2349: an RRQ carries 0 and the OACK carries the real size.
            _ => file_size.to_string(),
        };
        agreed.oack.push((name, reply));
    }
    agreed
}

fn known_name(name: &str) -> Option<&'static str> {
    ["blksize", "windowsize", "timeout", "tsize"]
        .into_iter()
        .find(|known| name.eq_ignore_ascii_case(known))
}

/// A non-empty run of ASCII digits (no sign, no spaces); saturates instead of overflowing.
fn parse_decimal(value: &str) -> Option<u64> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(value.bytes().fold(0u64, |acc, digit| {
        acc.saturating_mul(10)
            .saturating_add(u64::from(digit - b'0'))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_blksize: 1468,
        max_windowsize: 64,
        default_timeout: Duration::from_millis(1000),
    };

    fn opts(pairs: &[(&str, &str)]) -> Vec<RequestedOption> {
        pairs
            .iter()
            .map(|(n, v)| RequestedOption::new(n, v))
            .collect()
    }

    fn run(pairs: &[(&str, &str)]) -> Negotiated {
        negotiate(&opts(pairs), &LIMITS, 123_456)
    }

    fn oack(n: &Negotiated) -> Vec<(&str, &str)> {
        n.oack.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    #[test]
    fn no_options_means_rfc1350_defaults_and_no_oack() {
        let n = run(&[]);
        assert_eq!(n.blksize, 512);
        assert_eq!(n.windowsize, 1);
        assert_eq!(n.timeout, Duration::from_millis(1000));
        assert!(n.oack.is_empty());
    }

    #[test]
    fn blksize_within_cap_is_granted() {
        let n = run(&[("blksize", "1024")]);
        assert_eq!(n.blksize, 1024);
        assert_eq!(oack(&n), [("blksize", "1024")]);
        assert_eq!(run(&[("blksize", "8")]).blksize, 8);
    }

    #[test]
    fn blksize_above_cap_gets_the_cap() {
        assert_eq!(oack(&run(&[("blksize", "1500")])), [("blksize", "1468")]);
        assert_eq!(oack(&run(&[("blksize", "65464")])), [("blksize", "1468")]);
        assert_eq!(
            oack(&run(&[("blksize", "99999999999999999999999")])),
            [("blksize", "1468")]
        );
        let big = Limits {
            max_blksize: 65464,
            ..LIMITS
        };
        let n = negotiate(&opts(&[("blksize", "70000")]), &big, 1);
        assert_eq!(n.blksize, 65464);
    }

    #[test]
    fn blksize_below_8_or_garbage_is_ignored() {
        for value in [
            "7", "0", "", "abc", "-512", "+512", " 512", "512 ", "1e3", "0x200",
        ] {
            let n = run(&[("blksize", value)]);
            assert_eq!(n.blksize, 512, "value {value:?}");
            assert!(n.oack.is_empty(), "value {value:?}");
        }
    }

    #[test]
    fn tsize_is_answered_with_the_real_size() {
        assert_eq!(oack(&run(&[("tsize", "0")])), [("tsize", "123456")]);
        // A non-zero value in an RRQ is meaningless; the answer is still the real size.
        assert_eq!(oack(&run(&[("tsize", "7")])), [("tsize", "123456")]);
        assert_eq!(
            negotiate(&opts(&[("tsize", "0")]), &LIMITS, 0).oack,
            [("tsize", "0".to_owned())]
        );
        assert!(run(&[("tsize", "x")]).oack.is_empty());
    }

    #[test]
    fn timeout_bounds() {
        let n = run(&[("timeout", "1")]);
        assert_eq!(n.timeout, Duration::from_secs(1));
        assert_eq!(oack(&n), [("timeout", "1")]);
        assert_eq!(run(&[("timeout", "255")]).timeout, Duration::from_secs(255));
        for value in ["0", "256", "1000", "", "2.5"] {
            let n = run(&[("timeout", value)]);
            assert_eq!(n.timeout, LIMITS.default_timeout, "value {value:?}");
            assert!(n.oack.is_empty(), "value {value:?}");
        }
    }

    #[test]
    fn windowsize_bounds() {
        assert_eq!(oack(&run(&[("windowsize", "1")])), [("windowsize", "1")]);
        assert_eq!(run(&[("windowsize", "8")]).windowsize, 8);
        assert_eq!(oack(&run(&[("windowsize", "64")])), [("windowsize", "64")]);
        assert_eq!(
            oack(&run(&[("windowsize", "65535")])),
            [("windowsize", "64")]
        );
        for value in ["0", "65536", "-1", "many"] {
            let n = run(&[("windowsize", value)]);
            assert_eq!(n.windowsize, 1, "value {value:?}");
            assert!(n.oack.is_empty(), "value {value:?}");
        }
    }

    #[test]
    fn unknown_options_are_ignored() {
        let n = run(&[
            ("multicast", ""),
            ("rollover", "0"),
            ("blksize", "1468"),
            ("utimeout", "5"),
        ]);
        assert_eq!(oack(&n), [("blksize", "1468")]);
        assert!(run(&[("multicast", "")]).oack.is_empty());
    }

    #[test]
    fn all_options_together_keep_client_order() {
        let n = run(&[
            ("tsize", "0"),
            ("blksize", "1468"),
            ("windowsize", "8"),
            ("timeout", "3"),
        ]);
        assert_eq!(
            oack(&n),
            [
                ("tsize", "123456"),
                ("blksize", "1468"),
                ("windowsize", "8"),
                ("timeout", "3")
            ]
        );
        assert_eq!((n.blksize, n.windowsize), (1468, 8));
    }

    #[test]
    fn repeated_option_counts_once() {
        let n = run(&[("blksize", "1024"), ("BLKSIZE", "512")]);
        assert_eq!(oack(&n), [("blksize", "1024")]);
        // A malformed first copy does not hide a valid second one.
        let n = run(&[("blksize", "junk"), ("blksize", "800")]);
        assert_eq!(oack(&n), [("blksize", "800")]);
    }
}
