//! Parsing human memory sizes such as `256M` or `1G`.

/// Parses `N`, `NK`, `NM`, `NG`, `NT` (binary units; a bare number means MiB).
pub fn parse_mem_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 10),
        Some((i, 'M' | 'm')) => (&t[..i], 20),
        Some((i, 'G' | 'g')) => (&t[..i], 30),
        Some((i, 'T' | 't')) => (&t[..i], 40),
        _ => (t, 20),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid memory size {text:?}: expected e.g. 256M or 1G"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("memory size {text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_rejects_garbage() {
        assert_eq!(parse_mem_size("256M"), Ok(256 << 20));
        assert_eq!(parse_mem_size("1G"), Ok(1 << 30));
        assert_eq!(parse_mem_size("4096k"), Ok(4 << 20));
        assert_eq!(parse_mem_size("128"), Ok(128 << 20));
        assert!(parse_mem_size("lots").is_err());
        assert!(parse_mem_size("-1M").is_err());
        assert!(parse_mem_size("99999999999999G").is_err());
    }
}
