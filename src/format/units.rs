//! Sizes and UUIDs as the tools read and print them.

/// Parse a byte count with an optional binary suffix (K, M, G, T, P; an
/// optional trailing "iB" or "B"): "4G", "512M", "1TiB", "4096".
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, shift) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 10),
        Some('M') => (&t[..t.len() - 1], 20),
        Some('G') => (&t[..t.len() - 1], 30),
        Some('T') => (&t[..t.len() - 1], 40),
        Some('P') => (&t[..t.len() - 1], 50),
        _ => (t, 0),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (like 4096, 512M, 4G or 1T)"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("'{s}' is too large"))
}

/// "0123abcd-..." for a UUID.
pub fn format_uuid(u: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, b) in u.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Parse a UUID in its usual 8-4-4-4-12 hex form.
pub fn parse_uuid(s: &str) -> Result<[u8; 16], String> {
    let hex: String = s.chars().filter(|&c| c != '-').collect();
    let groups: Vec<usize> = s.split('-').map(str::len).collect();
    if hex.len() != 32 || groups != [8, 4, 4, 4, 12] {
        return Err(format!(
            "'{s}' is not a UUID (like 0b5f1c2e-8a41-4f0e-9d3c-2a6b7e1f4c90)"
        ));
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        // `get`: a multi-byte character makes a pair that is no char boundary.
        let pair = hex.get(2 * i..2 * i + 2).unwrap_or_default();
        *b = u8::from_str_radix(pair, 16)
            .map_err(|_| format!("'{s}' is not a UUID: bad hex digit"))?;
    }
    Ok(out)
}

/// A human-readable size: "4.0 GiB".
pub fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units.get(i).unwrap_or(&"PiB"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("4G").unwrap(), 4 << 30);
        assert_eq!(parse_size("1TiB").unwrap(), 1 << 40);
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert!(parse_size("x").is_err() && parse_size("99999999999P").is_err());
    }

    #[test]
    fn uuids() {
        let u = parse_uuid("0b5f1c2e-8a41-4f0e-9d3c-2a6b7e1f4c90").unwrap();
        assert_eq!(format_uuid(&u), "0b5f1c2e-8a41-4f0e-9d3c-2a6b7e1f4c90");
        assert!(parse_uuid("0b5f1c2e8a414f0e9d3c2a6b7e1f4c90").is_err());
        assert!(parse_uuid("zb5f1c2e-8a41-4f0e-9d3c-2a6b7e1f4c90").is_err());
    }

    /// A multi-byte character at an odd byte offset used to split a hex
    /// pair inside the character and panic (`mkfs -U`).
    #[test]
    fn parse_uuid_multibyte_char_is_an_error() {
        assert!(parse_uuid("0\u{e9}00000-0000-0000-0000-000000000000").is_err());
        assert!(parse_uuid("\u{e9}000000-0000-0000-0000-000000000000").is_err());
    }
}
