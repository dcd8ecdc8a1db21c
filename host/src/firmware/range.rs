//! HTTP `Range` requests (RFC 9110 §14) for resumable firmware downloads.
//! One range per request is served; devices resume with `bytes=N-`.

use std::ops::Range;

#[derive(Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable Range header: send the whole object.
    Full,
    /// Send these bytes with 206.
    Partial(Range<u64>),
    /// 416.
    Unsatisfiable,
}

/// Interprets a `Range` header against an object of `size` bytes.
/// Syntactically invalid or multi-range headers are ignored (the whole
/// object is sent), as RFC 9110 allows.
pub fn parse(header: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((start, end)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let (start, end) = (start.trim(), end.trim());
    let range = match (start.is_empty(), end.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match end.parse::<u64>() {
            Ok(0) => return RangeRequest::Unsatisfiable,
            Ok(n) => size.saturating_sub(n)..size,
            Err(_) => return RangeRequest::Full,
        },
        // bytes=N-: from N to the end.
        (false, true) => match start.parse::<u64>() {
            Ok(s) => s..size,
            Err(_) => return RangeRequest::Full,
        },
        (false, false) => match (start.parse::<u64>(), end.parse::<u64>()) {
            (Ok(s), Ok(e)) if s <= e => s..e.saturating_add(1).min(size),
            _ => return RangeRequest::Full,
        },
        (true, true) => return RangeRequest::Full,
    };
    if range.start >= size || range.is_empty() {
        RangeRequest::Unsatisfiable
    } else {
        RangeRequest::Partial(range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeRequest::*;

    #[test]
    fn ranges() {
        assert_eq!(parse(None, 100), Full);
        assert_eq!(parse(Some("bytes=0-9"), 100), Partial(0..10));
        assert_eq!(parse(Some("bytes=90-"), 100), Partial(90..100));
        assert_eq!(parse(Some("bytes=-10"), 100), Partial(90..100));
        assert_eq!(parse(Some("bytes=-500"), 100), Partial(0..100));
        assert_eq!(parse(Some("bytes=50-500"), 100), Partial(50..100));
        assert_eq!(parse(Some("bytes=100-"), 100), Unsatisfiable);
        assert_eq!(parse(Some("bytes=-0"), 100), Unsatisfiable);
        assert_eq!(parse(Some("bytes=0-0"), 0), Unsatisfiable);
        assert_eq!(parse(Some("bytes=9-3"), 100), Full);
        assert_eq!(parse(Some("bytes=0-1,5-6"), 100), Full);
        assert_eq!(parse(Some("items=0-1"), 100), Full);
        assert_eq!(parse(Some("bytes=x-"), 100), Full);
    }
}
