//! multipart/form-data, both ways, for the fakes' file routes.

/// One part: its field name, its filename if any, its bytes.
pub struct Part {
    pub name: String,
    pub filename: Option<String>,
    pub data: Vec<u8>,
}

/// The boundary of a `multipart/form-data; boundary=...` content type.
pub fn boundary(content_type: &str) -> Option<String> {
    content_type
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))
        .map(|b| b.trim_matches('"').to_string())
}

fn header_param(headers: &str, key: &str) -> Option<String> {
    let lower = headers.to_ascii_lowercase();
    let needle = format!("{key}=\"");
    let mut from = 0;
    // `name="` must not match inside `filename="`.
    while let Some(at) = lower[from..].find(&needle).map(|p| p + from) {
        let preceded = lower[..at].chars().last().is_none_or(|c| c == ' ' || c == ';');
        if preceded {
            let start = at + needle.len();
            let end = headers[start..].find('"')? + start;
            return Some(headers[start..end].to_string());
        }
        from = at + needle.len();
    }
    None
}

/// Where `needle` first occurs in `hay` at or after `from`. Horspool's
/// search skips up to the needle's length per step: the fakes run as debug
/// builds, where a window-by-window search of a 23 MB upload (the static
/// contextfs) took most of a second and dominated a sandbox's create.
fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let n = needle.len();
    if n == 0 || from > hay.len() {
        return (n == 0 && from <= hay.len()).then_some(from);
    }
    let mut skip = [n; 256];
    for (i, &b) in needle[..n - 1].iter().enumerate() {
        skip[b as usize] = n - 1 - i;
    }
    let mut at = from;
    while at + n <= hay.len() {
        let last = hay[at + n - 1];
        if last == needle[n - 1] && hay[at..at + n] == *needle {
            return Some(at);
        }
        at += skip[last as usize];
    }
    None
}

/// Every part of a multipart body (`None` if it is malformed).
pub fn parse(content_type: &str, body: &[u8]) -> Option<Vec<Part>> {
    let boundary = boundary(content_type)?;
    let delimiter = format!("\r\n--{boundary}");
    let mut parts = Vec::new();
    // The body starts with the first delimiter (without its leading CRLF).
    let mut at = find(body, &delimiter.as_bytes()[2..], 0)? + delimiter.len() - 2;
    loop {
        let rest = body.get(at..)?;
        if rest.starts_with(b"--") {
            return Some(parts);
        }
        let part_start = at + 2; // CRLF after the delimiter
        let headers_end = find(body, b"\r\n\r\n", part_start)?;
        let headers = String::from_utf8_lossy(&body[part_start..headers_end]).to_string();
        let content_start = headers_end + 4;
        let next = find(body, delimiter.as_bytes(), content_start)?;
        parts.push(Part {
            name: header_param(&headers, "name").unwrap_or_default(),
            filename: header_param(&headers, "filename"),
            data: body[content_start..next].to_vec(),
        });
        at = next + delimiter.len();
    }
}

/// A part to build: field name, filename, content type, bytes.
pub type OutPart<'a> = (&'a str, Option<&'a str>, Option<&'a str>, &'a [u8]);

/// Builds a multipart/form-data body; returns (content type, body).
pub fn build(parts: &[OutPart<'_>]) -> (String, Vec<u8>) {
    let boundary = format!("fake-{}", hex::encode(rand::random::<[u8; 12]>()));
    let mut body = Vec::new();
    for (name, filename, content_type, data) in parts {
        body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"").as_bytes());
        if let Some(f) = filename {
            body.extend_from_slice(format!("; filename=\"{}\"", f.replace('"', "%22")).as_bytes());
        }
        body.extend_from_slice(b"\r\n");
        if let Some(t) = content_type {
            body.extend_from_slice(format!("Content-Type: {t}\r\n").as_bytes());
        }
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip() {
        let (content_type, body) = build(&[
            ("files[0].path", None, None, b"/tmp/a"),
            (
                "files[0].file",
                Some("/tmp/a"),
                Some("application/octet-stream"),
                b"x\r\ny",
            ),
        ]);
        let parts = parse(&content_type, &body).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(
            (parts[0].name.as_str(), &parts[0].data[..]),
            ("files[0].path", &b"/tmp/a"[..])
        );
        assert_eq!(parts[1].filename.as_deref(), Some("/tmp/a"));
        assert_eq!(parts[1].data, b"x\r\ny");
        assert!(parse("multipart/form-data; boundary=XYZ", b"--XYZ--\r\n")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn binary_parts_with_near_delimiters_survive() {
        // Bytes that look like the start of a delimiter, and every byte value.
        let mut data: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        data.extend_from_slice(b"\r\n--fake-\r\n--\r\n\r\n--f");
        data.extend((0..5000u32).map(|i| (i * 7 % 251) as u8));
        let (content_type, body) = build(&[
            ("files[0].path", None, None, b"/tmp/bin"),
            ("files[0].file", Some("/tmp/bin"), None, &data),
            ("files[1].file", Some("/tmp/empty"), None, b""),
        ]);
        let parts = parse(&content_type, &body).unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[1].data, data);
        assert!(parts[2].data.is_empty());
        assert_eq!(find(b"abcabd", b"abd", 0), Some(3));
        assert_eq!(find(b"abcabd", b"abd", 4), None);
        assert_eq!(find(b"ab", b"abc", 0), None);
    }
}
