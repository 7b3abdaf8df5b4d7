//! PAX extended header records (POSIX.1-2001 `pax` format) and the raw ustar header fields
//! the stream tracker and writer need.

/// Key prefix of an extended attribute record (the star/GNU tar/bsdtar convention).
pub(crate) const XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";

pub(crate) const BLOCK: u64 = 512;

/// Byte ranges of the ustar header fields used here.
pub(crate) mod field {
    use std::ops::Range;
    pub const NAME: Range<usize> = 0..100;
    pub const SIZE: Range<usize> = 124..136;
    pub const CHKSUM: Range<usize> = 148..156;
    pub const TYPEFLAG: usize = 156;
    pub const MAGIC: Range<usize> = 257..263;
    pub const PREFIX: Range<usize> = 345..500;
    /// Old GNU sparse header: "more sparse records follow in extension blocks".
    pub const GNU_IS_EXTENDED: usize = 482;
    /// In a GNU sparse extension block.
    pub const GNU_EXT_IS_EXTENDED: usize = 504;
}

/// Appends one `"%d %s=%s\n"` record, where the length counts the whole record including itself.
pub(crate) fn push_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let rest = key.len() + value.len() + 3; // space, '=', newline
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed pax record at byte {0} of the extended header")]
pub(crate) struct RecordError(pub usize);

/// A pax record's key and value.
pub(crate) type Record<'a> = (&'a [u8], &'a [u8]);

/// Splits extended header data into (key, value) pairs.
pub(crate) fn parse_records(mut data: &[u8]) -> Result<Vec<Record<'_>>, RecordError> {
    let mut out = Vec::new();
    let mut at = 0;
    while !data.is_empty() {
        // Some writers pad the data with NULs; nothing follows them.
        if data.iter().all(|&b| b == 0) {
            break;
        }
        let sp = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or(RecordError(at))?;
        let len: usize = std::str::from_utf8(&data[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(RecordError(at))?;
        if len <= sp + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(RecordError(at));
        }
        let body = &data[sp + 1..len - 1];
        let eq = body
            .iter()
            .position(|&b| b == b'=')
            .ok_or(RecordError(at))?;
        out.push((&body[..eq], &body[eq + 1..]));
        data = &data[len..];
        at += len;
    }
    Ok(out)
}

/// A PAX time value: seconds with an optional fraction, possibly negative.
pub(crate) fn format_time(sec: i64, nsec: u32) -> String {
    if nsec == 0 {
        return sec.to_string();
    }
    if sec >= 0 {
        format!("{sec}.{nsec:09}")
    } else {
        // -1.25 is 1.25 s before the epoch: sec = -2, nsec = 750_000_000.
        let whole = -(sec + 1);
        format!("-{whole}.{:09}", 1_000_000_000 - nsec)
    }
}

pub(crate) fn parse_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    // Digits beyond nanoseconds are dropped, as GNU tar does.
    let mut nsec: u32 = 0;
    for (i, d) in frac.bytes().take(9).enumerate() {
        nsec += u32::from(d - b'0') * 10u32.pow(8 - i as u32);
    }
    if !neg {
        Some((whole, nsec))
    } else if nsec == 0 {
        Some((-whole, 0))
    } else {
        Some((-whole - 1, 1_000_000_000 - nsec))
    }
}

/// A numeric header field: octal ASCII (NUL/space terminated) or GNU base-256.
pub(crate) fn parse_numeric(field: &[u8]) -> Option<u64> {
    match field.first() {
        Some(&b) if b & 0x80 != 0 => {
            if b & 0x40 != 0 {
                return None; // negative
            }
            let mut v: u64 = u64::from(b & 0x3f);
            for &x in &field[1..] {
                v = v.checked_mul(256)?.checked_add(u64::from(x))?;
            }
            Some(v)
        }
        _ => {
            let s: Vec<u8> = field
                .iter()
                .copied()
                .skip_while(|&c| c == b' ')
                .take_while(|&c| c != 0 && c != b' ')
                .collect();
            if s.is_empty() {
                return Some(0);
            }
            let s = std::str::from_utf8(&s).ok()?;
            u64::from_str_radix(s, 8).ok()
        }
    }
}

/// Whether a header's checksum field matches its bytes (unsigned sum, as POSIX says; the
/// historic signed sum is accepted too).
pub(crate) fn checksum_ok(block: &[u8; 512]) -> bool {
    let Some(stored) = parse_numeric(&block[field::CHKSUM]) else {
        return false;
    };
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, &b) in block.iter().enumerate() {
        let b = if field::CHKSUM.contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    stored == unsigned || i64::try_from(stored).is_ok_and(|s| s == signed)
}

/// The member name of a ustar header (prefix/name joined), or the old-style name.
pub(crate) fn header_name(block: &[u8; 512]) -> Vec<u8> {
    let cstr = |f: &[u8]| f[..f.iter().position(|&b| b == 0).unwrap_or(f.len())].to_vec();
    let name = cstr(&block[field::NAME]);
    if &block[field::MAGIC] == b"ustar\0" {
        let prefix = cstr(&block[field::PREFIX]);
        if !prefix.is_empty() {
            let mut p = prefix;
            p.push(b'/');
            p.extend_from_slice(&name);
            return p;
        }
    }
    name
}

pub(crate) fn align_up(n: u64) -> u64 {
    n.div_ceil(BLOCK) * BLOCK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_lengths_count_themselves() {
        for (k, vlen) in [
            ("path", 0usize),
            ("path", 3),
            ("x", 93),
            ("x", 94),
            ("y", 994),
        ] {
            let mut out = Vec::new();
            let v = vec![b'v'; vlen];
            push_record(&mut out, k.as_bytes(), &v);
            let sp = out.iter().position(|&b| b == b' ').unwrap();
            let len: usize = std::str::from_utf8(&out[..sp]).unwrap().parse().unwrap();
            assert_eq!(len, out.len(), "{k} {vlen}");
            assert_eq!(parse_records(&out).unwrap(), vec![(k.as_bytes(), &v[..])]);
        }
    }

    #[test]
    fn records_may_hold_binary_values_and_reject_garbage() {
        let mut out = Vec::new();
        push_record(&mut out, b"SCHILY.xattr.user.a", b"\x00\n=\xff");
        push_record(&mut out, b"mtime", b"1.5");
        let recs = parse_records(&out).unwrap();
        assert_eq!(recs[0].1, b"\x00\n=\xff");
        assert_eq!(recs[1], (&b"mtime"[..], &b"1.5"[..]));
        assert!(parse_records(b"12 path=ab\n").is_err());
        assert!(parse_records(b"x path=ab\n").is_err());
        assert!(parse_records(b"9 pathab\n").is_err());
    }

    #[test]
    fn times_round_trip_including_before_the_epoch() {
        for (s, n) in [
            (0i64, 0u32),
            (1_700_000_000, 123_456_789),
            (5, 0),
            (-2, 750_000_000),
            (-1, 1),
            (-7, 0),
        ] {
            let text = format_time(s, n);
            assert_eq!(parse_time(text.as_bytes()), Some((s, n)), "{text}");
        }
        assert_eq!(format_time(-2, 750_000_000), "-1.250000000");
        assert_eq!(parse_time(b"12.5"), Some((12, 500_000_000)));
        assert_eq!(parse_time(b"1.1234567891"), Some((1, 123_456_789)));
        assert_eq!(parse_time(b"x"), None);
        assert_eq!(parse_time(b"-.5"), None);
    }

    #[test]
    fn numeric_fields() {
        assert_eq!(parse_numeric(b"0000644\0"), Some(0o644));
        assert_eq!(parse_numeric(b"   17 \0"), Some(0o17));
        assert_eq!(parse_numeric(b"\0\0\0"), Some(0));
        assert_eq!(parse_numeric(&[0x80, 0, 0, 0, 0, 0, 1, 0]), Some(256));
        assert_eq!(parse_numeric(b"0009\0"), None);
    }

    #[test]
    fn checksum_of_a_tar_crate_header() {
        let mut h = tar::Header::new_ustar();
        h.set_path("a/b").unwrap();
        h.set_size(3);
        h.set_cksum();
        let mut block = [0u8; 512];
        block.copy_from_slice(h.as_bytes());
        assert!(checksum_ok(&block));
        assert_eq!(header_name(&block), b"a/b");
        block[0] ^= 1;
        assert!(!checksum_ok(&block));
    }
}
