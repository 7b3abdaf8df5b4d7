//! The per-node iPXE scripts served at `/boot/{mac}.ipxe`, and what goes into them.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use metalcast_proto::image::PublicKey;
use metalcast_proto::{MacAddr, cmdline};

use crate::token::Token;

/// Longest DNS name (RFC 1035, without the trailing dot).
const MAX_DNS_NAME: usize = 253;
const MAX_DNS_LABEL: usize = 63;

/// A validated `host[:port]` from a Host header: the address iPXE used to reach us, and
/// the one the node must use again. Validation keeps anything but an address out of the
/// script and the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpHost(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Host {0:?}: expected host[:port] (a DNS name, an IPv4 address or [IPv6])")]
pub struct HostError(String);

impl FromStr for HttpHost {
    type Err = HostError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || HostError(s.to_string());
        let (host_ok, port) = if let Some(rest) = s.strip_prefix('[') {
            let (inner, after) = rest.split_once(']').ok_or_else(err)?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(err)?),
            };
            (inner.parse::<Ipv6Addr>().is_ok(), port)
        } else {
            let (host, port) = match s.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            };
            (host.parse::<Ipv4Addr>().is_ok() || is_dns_name(host), port)
        };
        let port_ok = port.is_none_or(|p| {
            p.bytes().all(|c| c.is_ascii_digit()) && p.parse::<u16>().is_ok_and(|n| n != 0)
        });
        if host_ok && port_ok {
            Ok(HttpHost(s.to_string()))
        } else {
            Err(err())
        }
    }
}

impl fmt::Display for HttpHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_DNS_NAME
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= MAX_DNS_LABEL
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-')
        })
}

/// Boot the agent: kernel and initramfs from this appliance, with the appliance URL, the
/// node's fresh token, its MAC and the key image manifests must be signed with on the kernel
/// command line. `initrd=initrd` lets the kernel's EFI entry point find the initrd iPXE exposes
/// under UEFI.
pub fn agent_script(
    host: &HttpHost,
    mac: MacAddr,
    token: &Token,
    key: &PublicKey,
    kernel_args: &str,
) -> String {
    let url = format!("http://{host}");
    let hyph = mac.to_hyphenated();
    let extra = if kernel_args.is_empty() {
        String::new()
    } else {
        format!(" {kernel_args}")
    };
    format!(
        "#!ipxe\n\
         # metalcast: boot the agent on {mac}\n\
         kernel {url}/boot/files/vmlinuz?mac={hyph} initrd=initrd {u}={url} {t}={token} {m}={mac} {k}={key}{extra}\n\
         initrd --name initrd {url}/boot/files/initramfs?mac={hyph}\n\
         boot\n",
        u = cmdline::URL,
        t = cmdline::TOKEN,
        m = cmdline::MAC,
        k = cmdline::KEY,
        token = token.as_str(),
    )
}

/// Boot the node's own disk. Under UEFI `exit 1` hands control back to the firmware as a
/// failed boot option, so it goes on down its boot order to the installed OS (a successful
/// return makes EDK2-based firmware stop and show its boot menu); under BIOS iPXE boots the
/// first disk.
pub fn local_disk_script(mac: MacAddr) -> String {
    format!(
        "#!ipxe\n\
         # metalcast: {mac} is provisioned, boot its local disk\n\
         iseq ${{platform}} efi && exit 1 ||\n\
         sanboot --no-describe --drive 0x80\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_accepted() {
        for ok in [
            "10.0.0.1",
            "10.0.0.1:8080",
            "metalcast.lab",
            "metalcast-1.example.org:80",
            "[fe80::1]",
            "[2001:db8::1]:8080",
        ] {
            assert_eq!(
                ok.parse::<HttpHost>().map(|h| h.to_string()),
                Ok(ok.to_string())
            );
        }
    }

    #[test]
    fn hosts_refused() {
        for bad in [
            "",
            ":80",
            "10.0.0.1:",
            "10.0.0.1:0",
            "10.0.0.1:65536",
            "10.0.0.1:+80",
            "a b",
            "host\nkernel evil",
            "x.lab/path",
            "-bad.lab",
            "a..b",
            "[fe80::1",
            "[fe80::1]x",
            "[nothost]:80",
            "fe80::1",
            "user@host",
        ] {
            assert!(bad.parse::<HttpHost>().is_err(), "{bad:?}");
        }
        assert!(
            format!("{}.lab", "a".repeat(64))
                .parse::<HttpHost>()
                .is_err()
        );
    }

    #[test]
    fn agent_script_for_a_discovered_node() {
        let host: HttpHost = "10.0.0.1:8080".parse().unwrap();
        let mac: MacAddr = "52:54:00:12:34:56".parse().unwrap();
        let token = Token::generate().unwrap();
        let t = token.as_str();
        let key = PublicKey([0xa5; 32]);
        let k = "a5".repeat(32);
        let script = agent_script(
            &host,
            mac,
            &token,
            &key,
            "console=ttyS0,115200 console=tty0",
        );
        assert_eq!(
            script,
            format!(
                "#!ipxe\n\
                 # metalcast: boot the agent on 52:54:00:12:34:56\n\
                 kernel http://10.0.0.1:8080/boot/files/vmlinuz?mac=52-54-00-12-34-56 initrd=initrd \
                 metalcast.url=http://10.0.0.1:8080 metalcast.token={t} metalcast.mac=52:54:00:12:34:56 \
                 metalcast.key={k} console=ttyS0,115200 console=tty0\n\
                 initrd --name initrd http://10.0.0.1:8080/boot/files/initramfs?mac=52-54-00-12-34-56\n\
                 boot\n"
            )
        );
        let bare = agent_script(&host, mac, &token, &key, "");
        assert!(bare.contains(&format!("metalcast.key={k}\n")));
    }

    #[test]
    fn local_disk_script_for_a_provisioned_node() {
        let mac: MacAddr = "52:54:00:12:34:56".parse().unwrap();
        assert_eq!(
            local_disk_script(mac),
            "#!ipxe\n\
             # metalcast: 52:54:00:12:34:56 is provisioned, boot its local disk\n\
             iseq ${platform} efi && exit 1 ||\n\
             sanboot --no-describe --drive 0x80\n"
        );
    }
}
