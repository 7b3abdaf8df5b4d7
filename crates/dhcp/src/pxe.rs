//! PXE and iPXE: who the client is, which boot file it gets, and the PXE vendor options.

use std::fmt;

use crate::config::Chainload;

/// Option 60 prefix of PXE clients (PXE spec 2.1, "PXEClient:Arch:xxxxx:UNDI:yyyzzz").
pub(crate) const PXE_CLASS: &[u8] = b"PXEClient";
/// Option 77 value iPXE sends.
const IPXE_USER_CLASS: &[u8] = b"iPXE";

/// PXE vendor sub-option (option 43) PXE_DISCOVERY_CONTROL (PXE spec 2.1, table 2-1).
const PXE_DISCOVERY_CONTROL: u8 = 6;
/// Discovery control bit 3: a boot file is in this offer, download it without discovery.
const DISCOVERY_BOOT_FILE_DIRECT: u8 = 8;
const SUBOPTION_END: u8 = 255;

/// Firmware family from option 93 (RFC 4578 2.1, IANA "Processor Architecture Types").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Firmware {
    /// 0: Intel x86PC.
    Bios,
    /// 6: EFI IA32, 7: EFI BC (x86-64 in practice), 9: EFI x86-64.
    Uefi,
}

impl Firmware {
    pub(crate) fn from_arch(arch: u16) -> Option<Firmware> {
        match arch {
            0 => Some(Firmware::Bios),
            6 | 7 | 9 => Some(Firmware::Uefi),
            _ => None,
        }
    }
}

/// What kind of client sent the request, for decisions and for the node's event line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Client {
    /// Option 60 starts with "PXEClient" (firmware PXE, and iPXE too).
    pub pxe: bool,
    /// Option 77 says "iPXE".
    pub ipxe: bool,
    pub arch: Option<u16>,
}

impl Client {
    pub(crate) fn new(
        class_id: Option<&[u8]>,
        user_class: Option<&[u8]>,
        arch: Option<u16>,
    ) -> Self {
        Client {
            pxe: class_id.is_some_and(|c| c.starts_with(PXE_CLASS)),
            ipxe: user_class.is_some_and(is_ipxe_user_class),
            arch,
        }
    }
}

impl fmt::Display for Client {
    /// `iPXE (bios)`, `PXE (uefi)`, `PXE (arch 16)`, `client`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let who = match (self.ipxe, self.pxe) {
            (true, _) => "iPXE",
            (false, true) => "PXE",
            (false, false) => "client",
        };
        match self.arch {
            None => f.write_str(who),
            Some(a) => match Firmware::from_arch(a) {
                Some(Firmware::Bios) => write!(f, "{who} (bios)"),
                Some(Firmware::Uefi) => write!(f, "{who} (uefi)"),
                None => write!(f, "{who} (arch {a})"),
            },
        }
    }
}

/// iPXE sends option 77 as the bare string "iPXE"; RFC 3004 clients send a list of
/// length-prefixed classes. Either form counts.
fn is_ipxe_user_class(value: &[u8]) -> bool {
    if value == IPXE_USER_CLASS {
        return true;
    }
    let mut rest = value;
    while let Some((&len, tail)) = rest.split_first() {
        let Some(class) = tail.get(..usize::from(len)) else {
            return false;
        };
        if class == IPXE_USER_CLASS {
            return true;
        }
        rest = &tail[class.len()..];
    }
    false
}

/// The boot file decision (see docs/dhcp.md, "Who gets which boot file").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BootChoice {
    /// The iPXE binary for this firmware, over TFTP.
    Binary(Firmware),
    /// The per-node iPXE script URL over HTTP.
    Script,
    /// No boot file: not a network-boot client we know how to serve.
    Nothing,
}

/// `recently_chainloaded`: the TFTP service reported a finished boot file transfer to this
/// MAC within the chainload window, so this iPXE is ours.
pub(crate) fn choose(
    client: &Client,
    chainload: Chainload,
    recently_chainloaded: bool,
) -> BootChoice {
    let firmware = client.arch.and_then(Firmware::from_arch);
    if client.ipxe {
        let ours = chainload == Chainload::NonIpxe || recently_chainloaded;
        return match firmware {
            Some(fw) if !ours => BootChoice::Binary(fw),
            // With no binary to offer, the script is the only way forward.
            _ => BootChoice::Script,
        };
    }
    match firmware {
        Some(fw) => BootChoice::Binary(fw),
        None => BootChoice::Nothing,
    }
}

/// Option 43 for PXE clients, encapsulated sub-options (RFC 2132 8.4 layout: code, length,
/// value, then END): PXE_DISCOVERY_CONTROL = "boot the file in this offer directly", so the
/// client neither waits for boot server replies nor shows a menu.
pub(crate) const VENDOR_OPTIONS: [u8; 4] = [
    PXE_DISCOVERY_CONTROL,
    1,
    DISCOVERY_BOOT_FILE_DIRECT,
    SUBOPTION_END,
];

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Decodes encapsulated sub-options, as a PXE client would read option 43.
    pub(crate) fn decode_suboptions(mut data: &[u8]) -> Option<Vec<(u8, Vec<u8>)>> {
        let mut out = Vec::new();
        loop {
            match data {
                [] | [SUBOPTION_END, ..] => return Some(out),
                [0, rest @ ..] => data = rest,
                [code, len, rest @ ..] => {
                    let value = rest.get(..usize::from(*len))?;
                    out.push((*code, value.to_vec()));
                    data = &rest[value.len()..];
                }
                [_] => return None,
            }
        }
    }

    fn client(ipxe: bool, arch: Option<u16>) -> Client {
        Client {
            pxe: true,
            ipxe,
            arch,
        }
    }

    #[test]
    fn arch_picks_firmware() {
        assert_eq!(Firmware::from_arch(0), Some(Firmware::Bios));
        for a in [6, 7, 9] {
            assert_eq!(Firmware::from_arch(a), Some(Firmware::Uefi), "arch {a}");
        }
        for a in [1, 2, 8, 10, 11, 16, 0xffff] {
            assert_eq!(Firmware::from_arch(a), None, "arch {a}");
        }
    }

    #[test]
    fn firmware_pxe_gets_its_binary_whatever_the_policy() {
        for policy in [Chainload::Always, Chainload::NonIpxe] {
            for recent in [false, true] {
                assert_eq!(
                    choose(&client(false, Some(0)), policy, recent),
                    BootChoice::Binary(Firmware::Bios)
                );
                assert_eq!(
                    choose(&client(false, Some(9)), policy, recent),
                    BootChoice::Binary(Firmware::Uefi)
                );
                assert_eq!(
                    choose(&client(false, Some(16)), policy, recent),
                    BootChoice::Nothing
                );
                assert_eq!(
                    choose(&client(false, None), policy, recent),
                    BootChoice::Nothing
                );
            }
        }
    }

    #[test]
    fn ipxe_is_chainloaded_once_under_always() {
        let c = client(true, Some(7));
        assert_eq!(
            choose(&c, Chainload::Always, false),
            BootChoice::Binary(Firmware::Uefi)
        );
        assert_eq!(choose(&c, Chainload::Always, true), BootChoice::Script);
        assert_eq!(choose(&c, Chainload::NonIpxe, false), BootChoice::Script);
        assert_eq!(choose(&c, Chainload::NonIpxe, true), BootChoice::Script);
    }

    #[test]
    fn ipxe_with_unknown_arch_gets_the_script() {
        assert_eq!(
            choose(&client(true, Some(16)), Chainload::Always, false),
            BootChoice::Script
        );
        assert_eq!(
            choose(&client(true, None), Chainload::Always, false),
            BootChoice::Script
        );
    }

    #[test]
    fn user_class_forms() {
        assert!(is_ipxe_user_class(b"iPXE"));
        assert!(is_ipxe_user_class(b"\x04iPXE"));
        assert!(is_ipxe_user_class(b"\x03abc\x04iPXE"));
        assert!(!is_ipxe_user_class(b"\x09iPXE"));
        assert!(!is_ipxe_user_class(b"gPXE"));
        assert!(!is_ipxe_user_class(b""));
    }

    #[test]
    fn client_labels() {
        assert_eq!(client(true, Some(0)).to_string(), "iPXE (bios)");
        assert_eq!(client(false, Some(7)).to_string(), "PXE (uefi)");
        assert_eq!(client(false, Some(16)).to_string(), "PXE (arch 16)");
        assert_eq!(
            Client {
                pxe: false,
                ipxe: false,
                arch: None
            }
            .to_string(),
            "client"
        );
        assert!(Client::new(Some(b"PXEClient:Arch:00000:UNDI:002001"), None, None).pxe);
        assert!(!Client::new(Some(b"MSFT 5.0"), None, None).pxe);
    }

    #[test]
    fn vendor_options_say_boot_file_direct() {
        let subs = decode_suboptions(&VENDOR_OPTIONS).unwrap();
        assert_eq!(subs, vec![(6, vec![8])]);
    }
}
