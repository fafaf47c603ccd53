//! Extended attributes: one block per inode that has any.
//!
//! Entries are packed after a 24-byte header, sorted by (namespace, name):
//! a namespace byte, the name's length, the value's length (u16), then the
//! name and the value.

use super::codec::{Reader, Writer};
use super::error::{FormatError, Result};
use super::{block_csum, BLOCK_SIZE};

/// Magic of an xattr block.
pub const MAGIC: u32 = 0xEA7B_10F5;
const HDR: usize = 24;
const CSUM_OFF: usize = 16;
const ENTRY_FIXED: usize = 4;
/// Most bytes of names and values in one block.
pub const SPACE: usize = BLOCK_SIZE - HDR;

/// The namespace of an attribute (its name's prefix).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Namespace {
    User = 1,
    Trusted = 2,
    Security = 3,
    /// `system.posix_acl_access` and `system.posix_acl_default`.
    System = 4,
}

impl Namespace {
    pub fn prefix(self) -> &'static str {
        match self {
            Namespace::User => "user.",
            Namespace::Trusted => "trusted.",
            Namespace::Security => "security.",
            Namespace::System => "system.",
        }
    }

    fn from_byte(b: u8) -> Option<Namespace> {
        Some(match b {
            1 => Namespace::User,
            2 => Namespace::Trusted,
            3 => Namespace::Security,
            4 => Namespace::System,
            _ => return None,
        })
    }

    /// Split a full attribute name into namespace and the rest.
    pub fn split(full: &[u8]) -> Option<(Namespace, &[u8])> {
        for ns in [
            Namespace::User,
            Namespace::Trusted,
            Namespace::Security,
            Namespace::System,
        ] {
            if let Some(rest) = full.strip_prefix(ns.prefix().as_bytes()) {
                return Some((ns, rest));
            }
        }
        None
    }
}

/// One attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Xattr {
    pub ns: Namespace,
    /// The name without its namespace prefix (1..=255 bytes).
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

impl Xattr {
    pub fn disk_len(&self) -> usize {
        ENTRY_FIXED + self.name.len() + self.value.len()
    }

    /// The full name, prefix included.
    pub fn full_name(&self) -> Vec<u8> {
        let mut n = self.ns.prefix().as_bytes().to_vec();
        n.extend_from_slice(&self.name);
        n
    }
}

/// True if `attrs` (sorted, unique) fit one block.
pub fn fits(attrs: &[Xattr]) -> bool {
    attrs.iter().map(Xattr::disk_len).sum::<usize>() <= SPACE
}

/// Encode `attrs` (sorted by namespace and name) as block `block` of `owner`.
/// Fails if they don't fit or a name or value is too long.
pub fn encode(seed: u32, block: u64, owner: u64, attrs: &[Xattr]) -> Result<Vec<u8>> {
    if !fits(attrs) {
        return Err(FormatError::invalid(
            "xattr block",
            "attributes don't fit one block",
        ));
    }
    let mut buf = vec![0u8; BLOCK_SIZE];
    let mut w = Writer(&mut buf);
    w.u32(0, MAGIC);
    w.u16(4, attrs.len() as u16);
    w.u64(8, owner);
    let mut off = HDR;
    for a in attrs {
        if a.name.is_empty() || a.name.len() > 255 || a.value.len() > SPACE {
            return Err(FormatError::invalid(
                "xattr",
                "name or value size out of range",
            ));
        }
        w.u8(off, a.ns as u8);
        w.u8(off + 1, a.name.len() as u8);
        w.u16(off + 2, a.value.len() as u16);
        w.bytes(off + ENTRY_FIXED, &a.name);
        w.bytes(off + ENTRY_FIXED + a.name.len(), &a.value);
        off += a.disk_len();
    }
    w.u16(6, (off - HDR) as u16);
    let csum = block_csum(seed, block, &buf, CSUM_OFF);
    Writer(&mut buf).u32(CSUM_OFF, csum);
    Ok(buf)
}

/// Decode xattr block `block` of inode `owner`.
pub fn decode(seed: u32, block: u64, owner: u64, raw: &[u8]) -> Result<Vec<Xattr>> {
    if raw.len() < BLOCK_SIZE {
        return Err(FormatError::invalid("xattr block", "short"));
    }
    let r = Reader(raw);
    if r.u32(0) != MAGIC {
        return Err(FormatError::BadMagic {
            what: "xattr block",
            block,
        });
    }
    let stored = r.u32(CSUM_OFF);
    let computed = block_csum(seed, block, raw, CSUM_OFF);
    FormatError::check_csum("xattr block", block, stored, computed)?;
    let bad = |d: String| FormatError::invalid("xattr block", format!("block {block}: {d}"));
    if r.u64(8) != owner {
        return Err(bad(format!("belongs to inode {}, not {owner}", r.u64(8))));
    }
    let (count, used) = (r.u16(4) as usize, r.u16(6) as usize);
    if used > SPACE {
        return Err(bad(format!("{used} bytes used")));
    }
    let end = HDR + used;
    let mut out: Vec<Xattr> = Vec::with_capacity(count.min(SPACE / ENTRY_FIXED));
    let mut off = HDR;
    for i in 0..count {
        if off + ENTRY_FIXED > end {
            return Err(bad(format!("entry {i} runs past the used bytes")));
        }
        let ns =
            Namespace::from_byte(r.u8(off)).ok_or_else(|| bad(format!("entry {i}: namespace")))?;
        let (nl, vl) = (r.u8(off + 1) as usize, r.u16(off + 2) as usize);
        let body = off + ENTRY_FIXED;
        if nl == 0 || body + nl + vl > end {
            return Err(bad(format!("entry {i}: lengths {nl}/{vl}")));
        }
        let a = Xattr {
            ns,
            name: (raw.get(body..body + nl))
                .ok_or_else(|| bad(format!("entry {i}: lengths {nl}/{vl}")))?
                .to_vec(),
            value: (raw.get(body + nl..body + nl + vl))
                .ok_or_else(|| bad(format!("entry {i}: lengths {nl}/{vl}")))?
                .to_vec(),
        };
        if out
            .last()
            .is_some_and(|p| (p.ns, &p.name) >= (a.ns, &a.name))
        {
            return Err(bad(format!("entry {i} out of order")));
        }
        off = body + nl + vl;
        out.push(a);
    }
    if off != end {
        return Err(bad("used bytes don't match the entries".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let attrs = vec![
            Xattr {
                ns: Namespace::User,
                name: b"a".to_vec(),
                value: b"1".to_vec(),
            },
            Xattr {
                ns: Namespace::User,
                name: b"b".to_vec(),
                value: vec![0; 1000],
            },
            Xattr {
                ns: Namespace::System,
                name: b"posix_acl_access".to_vec(),
                value: vec![2; 28],
            },
        ];
        let raw = encode(1, 50, 7, &attrs).unwrap();
        assert_eq!(decode(1, 50, 7, &raw).unwrap(), attrs);
        assert!(decode(1, 50, 8, &raw).is_err());
        let mut bad = raw.clone();
        bad[30] ^= 1;
        assert!(decode(1, 50, 7, &bad).is_err());
        assert_eq!(
            Namespace::split(b"trusted.x"),
            Some((Namespace::Trusted, &b"x"[..]))
        );
        assert!(Namespace::split(b"other.x").is_none());
    }
}
