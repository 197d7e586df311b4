//! Helpers shared by the fuzz targets: they turn arbitrary input into
//! arguments that stay inside the test harnesses' contracts (descriptor
//! counts, buffer sizes), so a panic means the device misbehaved, not that
//! the harness was misused.

use husk_devices::virtio::test_utils::BUF_SIZE;

/// Most descriptor chains one input may post; keeps each run short.
pub const MAX_CHAINS: usize = 32;

/// `bytes` cut to what one harness descriptor buffer holds.
pub fn fit_buf(bytes: &[u8]) -> &[u8] {
    &bytes[..bytes.len().min(BUF_SIZE as usize)]
}

/// Splits `bytes` into at most `max_parts` non-empty pieces at the cut points
/// the input chose, each piece fitting a descriptor buffer. Empty input gives
/// no pieces.
pub fn split_parts<'a>(bytes: &'a [u8], cuts: &[u16], max_parts: usize) -> Vec<&'a [u8]> {
    let mut parts = Vec::new();
    let mut rest = bytes;
    for &cut in cuts.iter().take(max_parts.saturating_sub(1)) {
        if rest.is_empty() {
            break;
        }
        let at = (usize::from(cut) % rest.len()).max(1);
        let (head, tail) = rest.split_at(at);
        parts.push(fit_buf(head));
        rest = tail;
    }
    if !rest.is_empty() && parts.len() < max_parts {
        parts.push(fit_buf(rest));
    }
    parts
}
