//! `Range: bytes=...` on blob and file GETs (RFC 9110 §14): one range is
//! answered 206 with exactly those bytes; several ranges get the whole body
//! (200, which RFC 9110 allows); a header that does not parse is ignored.

/// One byte range as asked for, before the size is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=first-last` or `bytes=first-`.
    From { first: u64, last: Option<u64> },
    /// `bytes=-n`: the last `n` bytes.
    Suffix(u64),
}

/// A range that holds no byte of the content (416).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsatisfiable;

/// The single range a `Range` header asks for; `None` for no header, a
/// header this server ignores (another unit, bad syntax) or several ranges.
pub fn parse(header: Option<&str>) -> Option<ByteRange> {
    let raw = header?.trim();
    let (unit, spec) = raw.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return None;
    }
    let (first, last) = spec.trim().split_once('-')?;
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    match (first.trim().is_empty(), last.trim().is_empty()) {
        (true, true) => None,
        (true, false) => number(last).map(ByteRange::Suffix),
        (false, true) => number(first).map(|first| ByteRange::From { first, last: None }),
        (false, false) => {
            let (first, last) = (number(first)?, number(last)?);
            (first <= last).then_some(ByteRange::From {
                first,
                last: Some(last),
            })
        }
    }
}

impl ByteRange {
    /// `(offset, len)` of this range in content of `size` bytes.
    pub fn resolve(self, size: u64) -> Result<(u64, u64), Unsatisfiable> {
        match self {
            ByteRange::From { first, .. } if first >= size => Err(Unsatisfiable),
            ByteRange::From { first, last } => {
                let last = last.unwrap_or(u64::MAX).min(size - 1);
                Ok((first, last - first + 1))
            }
            ByteRange::Suffix(0) => Err(Unsatisfiable),
            ByteRange::Suffix(_) if size == 0 => Err(Unsatisfiable),
            ByteRange::Suffix(n) => {
                let len = n.min(size);
                Ok((size - len, len))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_ranges_parse() {
        assert_eq!(
            parse(Some("bytes=0-99")),
            Some(ByteRange::From {
                first: 0,
                last: Some(99)
            })
        );
        assert_eq!(
            parse(Some("bytes=100-")),
            Some(ByteRange::From { first: 100, last: None })
        );
        assert_eq!(parse(Some("bytes=-5")), Some(ByteRange::Suffix(5)));
        assert_eq!(
            parse(Some("Bytes = 1-2 ")),
            Some(ByteRange::From {
                first: 1,
                last: Some(2)
            })
        );
    }

    #[test]
    fn what_is_not_one_byte_range_is_ignored() {
        for header in [
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=5-1",
            "bytes=-",
            "bytes=a-b",
            "bytes=+1-2",
            "bytes 0-1",
            "",
        ] {
            assert_eq!(parse(Some(header)), None, "{header}");
        }
        assert_eq!(parse(None), None);
    }

    #[test]
    fn ranges_resolve_against_the_size() {
        let from = |first, last| ByteRange::From { first, last };
        assert_eq!(from(0, Some(99)).resolve(1000), Ok((0, 100)));
        assert_eq!(from(990, Some(2000)).resolve(1000), Ok((990, 10)));
        assert_eq!(from(10, None).resolve(1000), Ok((10, 990)));
        assert_eq!(from(1000, None).resolve(1000), Err(Unsatisfiable));
        assert_eq!(from(0, None).resolve(0), Err(Unsatisfiable));
        assert_eq!(ByteRange::Suffix(10).resolve(1000), Ok((990, 10)));
        assert_eq!(ByteRange::Suffix(5000).resolve(1000), Ok((0, 1000)));
        assert_eq!(ByteRange::Suffix(0).resolve(1000), Err(Unsatisfiable));
        assert_eq!(ByteRange::Suffix(3).resolve(0), Err(Unsatisfiable));
    }
}
