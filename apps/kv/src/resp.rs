//! The Redis serialization protocol (RESP2): parsing requests (multibulk
//! and inline) and encoding replies.

use std::ops::Range;

/// The most arguments in one request.
pub const MAX_ARGS: usize = 1024 * 1024;
/// The largest bulk argument.
pub const MAX_BULK: usize = 64 * 1024 * 1024;
/// The longest inline request or multibulk header line.
pub const MAX_INLINE: usize = 64 * 1024;

/// Why a request cannot be parsed; the connection is answered with
/// `-ERR Protocol error: ...` and closed, as Redis does.
#[derive(Debug, PartialEq, Eq)]
pub struct ProtocolError(pub &'static str);

/// One parsed request: argument ranges in the input buffer.
#[derive(Debug, Default)]
pub struct Request {
    /// Byte ranges of the arguments in the buffer that was parsed.
    pub args: Vec<Range<usize>>,
}

fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    buf[from..].windows(2).position(|w| w == b"\r\n").map(|p| from + p)
}

fn number(bytes: &[u8]) -> Option<i64> {
    if bytes.is_empty() || bytes.len() > 19 {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// Parses the request at the start of `buf` into `req` (cleared first).
/// Returns the bytes it took, `Ok(None)` if the request is incomplete.
pub fn parse(buf: &[u8], req: &mut Request) -> Result<Option<usize>, ProtocolError> {
    req.args.clear();
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != b'*' {
        return parse_inline(buf, req);
    }
    let Some(end) = line_end(buf, 1) else {
        return if buf.len() > MAX_INLINE { Err(ProtocolError("too big mbulk count string")) } else { Ok(None) };
    };
    let count = number(&buf[1..end]).ok_or(ProtocolError("invalid multibulk length"))?;
    if count > MAX_ARGS as i64 {
        return Err(ProtocolError("invalid multibulk length"));
    }
    let mut pos = end + 2;
    for _ in 0..count.max(0) {
        if pos >= buf.len() {
            return Ok(None);
        }
        if buf[pos] != b'$' {
            return Err(ProtocolError("expected '$'"));
        }
        let Some(end) = line_end(buf, pos + 1) else {
            return if buf.len() - pos > MAX_INLINE {
                Err(ProtocolError("too big bulk count string"))
            } else {
                Ok(None)
            };
        };
        let len = number(&buf[pos + 1..end]).ok_or(ProtocolError("invalid bulk length"))?;
        if !(0..=MAX_BULK as i64).contains(&len) {
            return Err(ProtocolError("invalid bulk length"));
        }
        let start = end + 2;
        let stop = start + len as usize;
        if buf.len() < stop + 2 {
            return Ok(None);
        }
        if &buf[stop..stop + 2] != b"\r\n" {
            return Err(ProtocolError("bulk not terminated by CRLF"));
        }
        req.args.push(start..stop);
        pos = stop + 2;
    }
    Ok(Some(pos))
}

fn parse_inline(buf: &[u8], req: &mut Request) -> Result<Option<usize>, ProtocolError> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() > MAX_INLINE { Err(ProtocolError("too big inline request")) } else { Ok(None) };
    };
    let line_end = if nl > 0 && buf[nl - 1] == b'\r' { nl - 1 } else { nl };
    let mut i = 0;
    while i < line_end {
        while i < line_end && buf[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= line_end {
            break;
        }
        if buf[i] == b'"' || buf[i] == b'\'' {
            return Err(ProtocolError("quoted inline arguments are not supported"));
        }
        let start = i;
        while i < line_end && !buf[i].is_ascii_whitespace() {
            i += 1;
        }
        req.args.push(start..i);
    }
    Ok(Some(nl + 1))
}

/// Appends `+s\r\n`.
pub fn simple(out: &mut Vec<u8>, s: &str) {
    out.push(b'+');
    out.extend_from_slice(s.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends `-msg\r\n` (msg starts with the error code, e.g. `ERR ...`).
pub fn error(out: &mut Vec<u8>, msg: &str) {
    out.push(b'-');
    out.extend(msg.bytes().map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
    out.extend_from_slice(b"\r\n");
}

fn decimal(out: &mut Vec<u8>, mut v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    let mut digits = [0u8; 20];
    let mut n = 0;
    loop {
        digits[n] = b'0' + (v % 10).unsigned_abs() as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend(digits[..n].iter().rev());
}

/// Appends `:v\r\n`.
pub fn integer(out: &mut Vec<u8>, v: i64) {
    out.push(b':');
    decimal(out, v);
    out.extend_from_slice(b"\r\n");
}

/// Appends a bulk string.
pub fn bulk(out: &mut Vec<u8>, data: &[u8]) {
    out.push(b'$');
    decimal(out, data.len() as i64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Appends the null bulk string.
pub fn null(out: &mut Vec<u8>) {
    out.extend_from_slice(b"$-1\r\n");
}

/// Appends an array header of `n` elements.
pub fn array(out: &mut Vec<u8>, n: usize) {
    out.push(b'*');
    decimal(out, n as i64);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args<'a>(buf: &'a [u8], req: &Request) -> Vec<&'a [u8]> {
        req.args.iter().map(|r| &buf[r.clone()]).collect()
    }

    #[test]
    fn multibulk_and_inline() {
        let mut req = Request::default();
        let buf = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\nPING\r\n";
        let n = parse(buf, &mut req).unwrap().unwrap();
        assert_eq!(args(buf, &req), vec![&b"SET"[..], b"k", b""]);
        let rest = &buf[n..];
        assert_eq!(parse(rest, &mut req).unwrap(), Some(6));
        assert_eq!(args(rest, &req), vec![&b"PING"[..]]);
    }

    #[test]
    fn incomplete_requests_wait_for_more() {
        let full = b"*2\r\n$3\r\nGET\r\n$5\r\nhello\r\n";
        let mut req = Request::default();
        for cut in 0..full.len() {
            assert_eq!(parse(&full[..cut], &mut req), Ok(None), "cut at {cut}");
        }
        assert_eq!(parse(full, &mut req), Ok(Some(full.len())));
    }

    #[test]
    fn malformed_requests_are_errors() {
        let mut req = Request::default();
        for bad in [&b"*x\r\n"[..], b"*1\r\n:3\r\n", b"*1\r\n$-5\r\n", b"*1\r\n$3\r\nabcXY", b"*99999999999\r\n"] {
            assert!(parse(bad, &mut req).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut req = Request::default();
        let alphabet = b"*$\r\n0123456789-abc ";
        for _ in 0..200_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 40) as usize;
            let buf: Vec<u8> =
                (0..len).map(|i| alphabet[((state >> (i % 60)) as usize + i * 7) % alphabet.len()]).collect();
            if let Ok(Some(n)) = parse(&buf, &mut req) {
                assert!(n <= buf.len());
                assert!(req.args.iter().all(|r| r.end <= n));
            }
        }
    }

    #[test]
    fn replies() {
        let mut out = Vec::new();
        integer(&mut out, -120);
        bulk(&mut out, b"ab");
        null(&mut out);
        array(&mut out, 2);
        error(&mut out, "ERR x\r\ny");
        assert_eq!(out, b":-120\r\n$2\r\nab\r\n$-1\r\n*2\r\n-ERR x  y\r\n");
        let mut out = Vec::new();
        integer(&mut out, i64::MIN);
        assert_eq!(out, b":-9223372036854775808\r\n");
    }
}
