//! HTTP/1.x requests (parsed with `httparse`) and responses.

/// The largest request head accepted.
pub const MAX_HEAD: usize = 16 * 1024;
/// The most header lines in a request.
pub const MAX_HEADERS: usize = 64;

/// A parsed request head.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    /// The method (`GET`, `HEAD`, ...).
    pub method: String,
    /// The decoded path, without query string.
    pub path: Vec<u8>,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
    /// Bytes of body that follow the head (`Content-Length`).
    pub body_len: usize,
}

/// What parsing the start of a buffer gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A complete head of `usize` bytes.
    Complete(Request, usize),
    /// More bytes are needed.
    Partial,
    /// Not HTTP (answer 400 and close), with the reason.
    Bad(&'static str),
}

/// Parses the request head at the start of `buf`.
pub fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Parsed::Bad("request head too large"),
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Bad("malformed request"),
    };
    if head_len > MAX_HEAD {
        return Parsed::Bad("request head too large");
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Parsed::Bad("malformed request");
    };
    let mut keep_alive = version == 1;
    let mut body_len = 0;
    let mut hosts = 0;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            if v.contains("close") {
                keep_alive = false;
            } else if v.contains("keep-alive") {
                keep_alive = true;
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            match std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse().ok()) {
                Some(n) => body_len = n,
                None => return Parsed::Bad("invalid Content-Length"),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Bad("request bodies with Transfer-Encoding are not supported");
        }
    }
    // RFC 9112 section 3.2: an HTTP/1.1 request has exactly one Host header.
    if version == 1 && hosts != 1 {
        return Parsed::Bad(if hosts == 0 {
            "an HTTP/1.1 request needs a Host header"
        } else {
            "more than one Host header"
        });
    }
    let raw_path = target.split('?').next().unwrap_or_default();
    if !raw_path.starts_with('/') {
        return Parsed::Bad("the request target must be an absolute path");
    }
    let Some(path) = percent_decode(raw_path.as_bytes()) else { return Parsed::Bad("invalid percent-encoding") };
    if path.contains(&0) {
        return Parsed::Bad("NUL in path");
    }
    Parsed::Complete(Request { method: method.to_owned(), path, keep_alive, body_len }, head_len)
}

fn percent_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let hex = std::str::from_utf8(s.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Some(out)
}

/// The content type for a file name.
pub fn content_type(path: &[u8]) -> &'static str {
    let ext = path.rsplit(|&b| b == b'.').next().filter(|e| e.len() < path.len()).unwrap_or_default();
    match ext.to_ascii_lowercase().as_slice() {
        b"html" | b"htm" => "text/html; charset=utf-8",
        b"css" => "text/css",
        b"js" => "text/javascript",
        b"txt" => "text/plain; charset=utf-8",
        b"json" => "application/json",
        b"png" => "image/png",
        b"jpg" | b"jpeg" => "image/jpeg",
        b"gif" => "image/gif",
        b"svg" => "image/svg+xml",
        b"ico" => "image/x-icon",
        _ => "application/octet-stream",
    }
}

/// Appends a response head; the body (if any) follows it.
pub fn head(out: &mut Vec<u8>, status: u16, reason: &str, content_type: &str, len: usize, keep_alive: bool) {
    use std::io::Write;
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let _ = write!(
        out,
        "HTTP/1.1 {status} {reason}\r\nServer: flexos-httpd\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\nConnection: {connection}\r\n"
    );
    if status == 405 {
        out.extend_from_slice(b"Allow: GET, HEAD\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends a complete error response with a short text body.
pub fn error(out: &mut Vec<u8>, status: u16, reason: &str, keep_alive: bool, with_body: bool) {
    let body = format!("{status} {reason}\n");
    head(out, status, reason, "text/plain; charset=utf-8", body.len(), keep_alive);
    if with_body {
        out.extend_from_slice(body.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        let r = b"GET /a%20b.html?x=1 HTTP/1.1\r\nHost: x\r\n\r\nrest";
        match parse(r) {
            Parsed::Complete(req, n) => {
                assert_eq!(req.method, "GET");
                assert_eq!(req.path, b"/a b.html");
                assert!(req.keep_alive);
                assert_eq!(&r[n..], b"rest");
            }
            other => panic!("{other:?}"),
        }
        match parse(b"HEAD / HTTP/1.0\r\n\r\n") {
            Parsed::Complete(req, _) => assert!(!req.keep_alive),
            other => panic!("{other:?}"),
        }
        match parse(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n") {
            Parsed::Complete(req, _) => assert!(req.keep_alive),
            other => panic!("{other:?}"),
        }
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost"), Parsed::Partial);
        assert_eq!(parse(b"GET / HTTP/1.1\r\n\r\n"), Parsed::Bad("an HTTP/1.1 request needs a Host header"));
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), Parsed::Bad("more than one Host header"));
        assert!(matches!(parse(b"GET / HTTP/1.0\r\n\r\n"), Parsed::Complete(..)), "HTTP/1.0 needs none");
        assert!(matches!(parse(b"GET nothing HTTP/1.1\r\nHost: x\r\n\r\n"), Parsed::Bad(_)));
        assert!(matches!(parse(b"\x01\x02 / HTTP/1.1\r\n\r\n"), Parsed::Bad(_)));
        assert!(matches!(parse(b"GET /%zz HTTP/1.1\r\n\r\n"), Parsed::Bad(_)));
    }

    #[test]
    fn types() {
        assert_eq!(content_type(b"/index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type(b"/x.CSS"), "text/css");
        assert_eq!(content_type(b"/noext"), "application/octet-stream");
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut state = 0x853c_49e6_748f_ea9bu64;
        let pieces: &[&[u8]] =
            &[b"GET ", b"/", b" HTTP/1.1", b"\r\n", b"Host: a", b"%", b"Content-Length: 9", b"\x00", b"x"];
        for _ in 0..100_000 {
            let mut buf = Vec::new();
            for _ in 0..(state % 9) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                buf.extend_from_slice(pieces[(state % pieces.len() as u64) as usize]);
            }
            state = state.wrapping_add(1);
            if let Parsed::Complete(_, n) = parse(&buf) {
                assert!(n <= buf.len());
            }
        }
    }
}
