//! What fmn's CPU custom ops share.
use candle_core::{Layout, Result};

/// The elements `layout` covers in `data`, or an error naming the op and input when the
/// layout is not contiguous.
pub(crate) fn contiguous_slice<'a, T>(
    data: &'a [T],
    layout: &Layout,
    op: &str,
    what: &str,
) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: {what} must be contiguous"),
    }
}
