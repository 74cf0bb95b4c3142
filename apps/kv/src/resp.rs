//! The Redis serialization protocol (RESP2): parsing requests (multibulk
//! and inline) and encoding replies.
//!
//! The parser resumes where it stopped: a request that arrives in many
//! pieces is scanned once, not once per piece, so parsing is linear in the
//! request's size. Replies go into an [`Out`], which never grows past its
//! limit and never aborts when memory runs out: the request fails instead.

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

/// One parsed request. Multibulk arguments are ranges of the input buffer;
/// inline arguments (which may be quoted and escaped) are unquoted into a
/// buffer of the request's own.
#[derive(Debug, Default)]
pub struct Request {
    /// Byte ranges of the arguments, in the input or in `unquoted`.
    args: Vec<Range<usize>>,
    /// The arguments of an inline request, unquoted.
    unquoted: Vec<u8>,
    inline: bool,
}

impl Request {
    /// How many arguments the request has.
    pub fn len(&self) -> usize {
        self.args.len()
    }

    /// The arguments, given the input the request was parsed from.
    pub fn args<'a>(&'a self, input: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        let source = if self.inline { &self.unquoted[..] } else { input };
        self.args.iter().map(move |r| &source[r.clone()])
    }
}

/// Where the parser stopped inside an incomplete request.
#[derive(Debug, Default)]
enum Partial {
    /// Nothing parsed yet.
    #[default]
    Start,
    /// Inside a multibulk request: `count` arguments expected, the next one at `pos`.
    Multibulk { count: usize, pos: usize },
    /// Inside an inline request: no newline before `scanned`.
    Inline { scanned: usize },
}

/// A RESP request parser for one connection; keeps its place in a request
/// that has not arrived completely.
#[derive(Debug, Default)]
pub struct Parser {
    partial: Partial,
    req: Request,
    /// Bytes scanned so far (tests check that parsing is linear).
    #[cfg(test)]
    scanned: usize,
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

impl Parser {
    /// Counts `n` bytes scanned.
    fn scanned(&mut self, _n: usize) {
        #[cfg(test)]
        {
            self.scanned += _n;
        }
    }

    /// Parses the request at the start of `buf`. `buf` must start where the
    /// previous call's request started and hold at least what it held then
    /// (more input appended); after a complete request, the next call's
    /// `buf` starts after it. Returns the bytes the request took and the
    /// request, or `Ok(None)` if it is incomplete.
    pub fn parse(&mut self, buf: &[u8]) -> Result<Option<(usize, &Request)>, ProtocolError> {
        let done = match self.partial {
            Partial::Start if buf.is_empty() => return Ok(None),
            Partial::Start if buf[0] != b'*' => self.inline(buf, 0),
            Partial::Inline { scanned } => self.inline(buf, scanned),
            Partial::Start => {
                let Some(end) = line_end(buf, 1) else {
                    return if buf.len() > MAX_INLINE {
                        Err(ProtocolError("too big mbulk count string"))
                    } else {
                        Ok(None)
                    };
                };
                let count = number(&buf[1..end]).ok_or(ProtocolError("invalid multibulk length"))?;
                if count > MAX_ARGS as i64 {
                    return Err(ProtocolError("invalid multibulk length"));
                }
                self.req.args.clear();
                self.req.inline = false;
                self.multibulk(buf, count.max(0) as usize, end + 2)
            }
            Partial::Multibulk { count, pos } => self.multibulk(buf, count, pos),
        };
        match done {
            Ok(Some(n)) => {
                self.partial = Partial::Start;
                Ok(Some((n, &self.req)))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.partial = Partial::Start;
                Err(e)
            }
        }
    }

    fn multibulk(&mut self, buf: &[u8], count: usize, mut pos: usize) -> Result<Option<usize>, ProtocolError> {
        while self.req.args.len() < count {
            self.partial = Partial::Multibulk { count, pos };
            if pos >= buf.len() {
                return Ok(None);
            }
            if buf[pos] != b'$' {
                return Err(ProtocolError("expected '$'"));
            }
            let found = line_end(buf, pos + 1);
            self.scanned(found.map_or(buf.len(), |e| e + 2) - pos);
            let Some(end) = found else {
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
            if self.req.args.len() == self.req.args.capacity() && self.req.args.try_reserve(1).is_err() {
                return Err(ProtocolError("out of memory for the arguments"));
            }
            self.req.args.push(start..stop);
            pos = stop + 2;
        }
        Ok(Some(pos))
    }

    fn inline(&mut self, buf: &[u8], scanned: usize) -> Result<Option<usize>, ProtocolError> {
        let found = buf[scanned..].iter().position(|&b| b == b'\n').map(|p| scanned + p);
        self.scanned(found.map_or(buf.len(), |nl| nl + 1) - scanned);
        let Some(nl) = found else {
            if buf.len() > MAX_INLINE {
                return Err(ProtocolError("too big inline request"));
            }
            self.partial = Partial::Inline { scanned: buf.len() };
            return Ok(None);
        };
        if nl > MAX_INLINE {
            return Err(ProtocolError("too big inline request"));
        }
        let line = &buf[..nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        self.req.inline = true;
        split_args(line, &mut self.req.unquoted, &mut self.req.args)?;
        Ok(Some(nl + 1))
    }
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Splits an inline request line into arguments the way Redis does
/// (`sdssplitargs`): words separated by white space; `"..."` with the
/// escapes `\n \r \t \b \a \\ \" \xHH`; `'...'` with `\'`. A closing quote
/// must be followed by white space or the end of the line.
fn split_args(line: &[u8], out: &mut Vec<u8>, args: &mut Vec<Range<usize>>) -> Result<(), ProtocolError> {
    const UNBALANCED: ProtocolError = ProtocolError("unbalanced quotes in request");
    out.clear();
    args.clear();
    let mut i = 0;
    loop {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= line.len() {
            return Ok(());
        }
        let start = out.len();
        let (mut in_double, mut in_single) = (false, false);
        loop {
            let c = line.get(i).copied();
            if in_double {
                match c {
                    None => return Err(UNBALANCED),
                    Some(b'\\') if line.get(i + 1) == Some(&b'x') => {
                        match (line.get(i + 2).copied().and_then(hex), line.get(i + 3).copied().and_then(hex)) {
                            (Some(h), Some(l)) => {
                                out.push(h << 4 | l);
                                i += 3;
                            }
                            _ => out.push(b'\\'),
                        }
                    }
                    Some(b'\\') if i + 1 < line.len() => {
                        i += 1;
                        out.push(match line[i] {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 8,
                            b'a' => 7,
                            other => other,
                        });
                    }
                    Some(b'"') => {
                        if line.get(i + 1).is_some_and(|b| !b.is_ascii_whitespace()) {
                            return Err(UNBALANCED);
                        }
                        i += 1;
                        break;
                    }
                    Some(b) => out.push(b),
                }
            } else if in_single {
                match c {
                    None => return Err(UNBALANCED),
                    Some(b'\\') if line.get(i + 1) == Some(&b'\'') => {
                        i += 1;
                        out.push(b'\'');
                    }
                    Some(b'\'') => {
                        if line.get(i + 1).is_some_and(|b| !b.is_ascii_whitespace()) {
                            return Err(UNBALANCED);
                        }
                        i += 1;
                        break;
                    }
                    Some(b) => out.push(b),
                }
            } else {
                match c {
                    None => break,
                    Some(b) if b.is_ascii_whitespace() => break,
                    Some(b'"') => in_double = true,
                    Some(b'\'') => in_single = true,
                    Some(b) => out.push(b),
                }
            }
            i += 1;
        }
        args.push(start..out.len());
    }
}

/// Why a reply could not be completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// The connection's output would pass its limit (a client that does not read).
    Limit,
    /// The heap has no room for it.
    Memory,
}

/// A connection's pending output with a hard limit. Appending never
/// aborts: past the limit, or when memory runs out, the output is marked
/// as overflowed and nothing more is written (the connection is then
/// closed without its pending replies, as Redis does past its
/// `client-output-buffer-limit`).
#[derive(Debug)]
pub struct Out {
    buf: Vec<u8>,
    limit: usize,
    overflow: Option<Overflow>,
}

impl Out {
    /// Output that goes on after `buf` (what is pending) and may hold `limit` bytes.
    pub fn new(buf: Vec<u8>, limit: usize) -> Out {
        Out { buf, limit, overflow: None }
    }

    /// The bytes, and whether (and why) a reply did not fit.
    pub fn finish(self) -> (Vec<u8>, Option<Overflow>) {
        (self.buf, self.overflow)
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether a reply did not fit.
    pub fn overflow(&self) -> Option<Overflow> {
        self.overflow
    }

    /// Appends `bytes` if they fit; else marks the overflow.
    pub fn put(&mut self, bytes: &[u8]) {
        if self.overflow.is_some() {
            return;
        }
        if self.buf.len() + bytes.len() > self.limit {
            self.overflow = Some(Overflow::Limit);
            return;
        }
        if self.buf.capacity() - self.buf.len() < bytes.len() {
            let want = bytes.len().max(self.buf.len()).min(self.limit - self.buf.len());
            if !flexos_alloc::has_room(want) || self.buf.try_reserve(want).is_err() {
                self.overflow = Some(Overflow::Memory);
                return;
            }
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Drops what was written after the first `len` bytes (a reply given up).
    pub fn truncate(&mut self, len: usize) {
        self.buf.truncate(len);
    }
}

/// Appends `+s\r\n`.
pub fn simple(out: &mut Out, s: &str) {
    out.put(b"+");
    out.put(s.as_bytes());
    out.put(b"\r\n");
}

/// Appends `-msg\r\n` (msg starts with the error code, e.g. `ERR ...`).
pub fn error(out: &mut Out, msg: &str) {
    error_bytes(out, msg.as_bytes());
}

/// [`error`] for a message that quotes a client's bytes; CR and LF become spaces.
pub fn error_bytes(out: &mut Out, msg: &[u8]) {
    let clean: Vec<u8> = msg.iter().map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }).collect();
    out.put(b"-");
    out.put(&clean);
    out.put(b"\r\n");
}

fn decimal(v: i64, digits: &mut [u8; 20]) -> &[u8] {
    let mut n = digits.len();
    let mut rest = v;
    loop {
        n -= 1;
        digits[n] = b'0' + (rest % 10).unsigned_abs() as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    &digits[n..]
}

fn prefixed(out: &mut Out, prefix: u8, v: i64) {
    let mut digits = [0u8; 20];
    let mut line = [0u8; 24];
    line[0] = prefix;
    let mut n = 1;
    if v < 0 {
        line[1] = b'-';
        n = 2;
    }
    let d = decimal(v, &mut digits);
    line[n..n + d.len()].copy_from_slice(d);
    n += d.len();
    line[n..n + 2].copy_from_slice(b"\r\n");
    out.put(&line[..n + 2]);
}

/// Appends `:v\r\n`.
pub fn integer(out: &mut Out, v: i64) {
    prefixed(out, b':', v);
}

/// Appends a bulk string.
pub fn bulk(out: &mut Out, data: &[u8]) {
    prefixed(out, b'$', data.len() as i64);
    out.put(data);
    out.put(b"\r\n");
}

/// Appends the null bulk string.
pub fn null(out: &mut Out) {
    out.put(b"$-1\r\n");
}

/// Appends the null array.
pub fn null_array(out: &mut Out) {
    out.put(b"*-1\r\n");
}

/// Appends an array header of `n` elements.
pub fn array(out: &mut Out, n: usize) {
    prefixed(out, b'*', n as i64);
}

#[cfg(test)]
mod tests {
    use super::*;

    type Parsed = Option<(usize, Vec<Vec<u8>>)>;

    fn parse_all(buf: &[u8]) -> Result<Parsed, ProtocolError> {
        let mut p = Parser::default();
        Ok(p.parse(buf)?.map(|(n, req)| (n, req.args(buf).map(<[u8]>::to_vec).collect())))
    }

    fn args(line: &str) -> Result<Vec<String>, ProtocolError> {
        let buf = format!("{line}\r\n");
        Ok(parse_all(buf.as_bytes())?.unwrap().1.into_iter().map(|a| String::from_utf8_lossy(&a).into()).collect())
    }

    #[test]
    fn multibulk_and_inline() {
        let buf = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\nPING\r\n";
        let (n, a) = parse_all(buf).unwrap().unwrap();
        assert_eq!(a, vec![b"SET".to_vec(), b"k".to_vec(), b"".to_vec()]);
        let rest = &buf[n..];
        let (m, a) = parse_all(rest).unwrap().unwrap();
        assert_eq!((m, a), (6, vec![b"PING".to_vec()]));
    }

    #[test]
    fn incomplete_requests_wait_for_more_and_resume() {
        let full = b"*2\r\n$3\r\nGET\r\n$5\r\nhello\r\n";
        // One byte at a time through one parser: it resumes where it stopped.
        let mut p = Parser::default();
        for cut in 0..full.len() {
            assert!(p.parse(&full[..cut]).unwrap().is_none(), "cut at {cut}");
        }
        let (n, req) = p.parse(full).unwrap().unwrap();
        assert_eq!(n, full.len());
        assert_eq!(req.args(full).collect::<Vec<_>>(), vec![&b"GET"[..], b"hello"]);
        // Inline too.
        let mut p = Parser::default();
        let line = b"SET k \"a b\"\r\n";
        for cut in 0..line.len() {
            assert!(p.parse(&line[..cut]).unwrap().is_none(), "cut at {cut}");
        }
        let (_, req) = p.parse(line).unwrap().unwrap();
        assert_eq!(req.args(line).collect::<Vec<_>>(), vec![&b"SET"[..], b"k", b"a b"]);
    }

    #[test]
    fn a_request_in_many_pieces_is_parsed_in_linear_time() {
        // 200,000 arguments arriving 1 KiB at a time: resuming scans each byte about once.
        let mut buf = b"*200001\r\n$5\r\nRPUSH\r\n".to_vec();
        for _ in 0..200_000 {
            buf.extend_from_slice(b"$1\r\nx\r\n");
        }
        let mut p = Parser::default();
        let mut calls = 0;
        let mut end = 0;
        let done = loop {
            end = (end + 1024).min(buf.len());
            calls += 1;
            if let Some((n, req)) = p.parse(&buf[..end]).unwrap() {
                break (n, req.len());
            }
        };
        assert_eq!(done, (buf.len(), 200_001));
        assert_eq!(calls, buf.len().div_ceil(1024));
        // Header lines are scanned once each, plus the piece of one line cut at each call's end.
        assert!(p.scanned <= buf.len() + 16 * calls, "{} bytes scanned for {}", p.scanned, buf.len());
    }

    #[test]
    fn quoted_inline_arguments_as_redis_splits_them() {
        assert_eq!(args("SET k \"hello world\"").unwrap(), ["SET", "k", "hello world"]);
        assert_eq!(args("SET k 'it''s'").unwrap_err(), ProtocolError("unbalanced quotes in request"));
        assert_eq!(args("SET k 'it\\'s'").unwrap(), ["SET", "k", "it's"]);
        assert_eq!(args("ECHO \"a\\tb\\x41\\\"\"").unwrap(), ["ECHO", "a\tbA\""]);
        assert_eq!(args("ECHO \"open").unwrap_err(), ProtocolError("unbalanced quotes in request"));
        assert_eq!(args("ECHO \"a\"b").unwrap_err(), ProtocolError("unbalanced quotes in request"));
        assert_eq!(args("  GET   k  ").unwrap(), ["GET", "k"]);
        assert_eq!(args("ECHO \"\"").unwrap(), ["ECHO", ""]);
        assert!(args("").unwrap().is_empty());
    }

    #[test]
    fn malformed_requests_are_errors() {
        for bad in [&b"*x\r\n"[..], b"*1\r\n:3\r\n", b"*1\r\n$-5\r\n", b"*1\r\n$3\r\nabcXY", b"*99999999999\r\n"] {
            assert!(parse_all(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let alphabet = b"*$\r\n0123456789-abc \"'\\x";
        for _ in 0..200_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 40) as usize;
            let buf: Vec<u8> =
                (0..len).map(|i| alphabet[((state >> (i % 60)) as usize + i * 7) % alphabet.len()]).collect();
            let mut p = Parser::default();
            // Fed in two pieces, as a connection would.
            let cut = (state as usize >> 8) % (len + 1);
            let _ = p.parse(&buf[..cut]);
            if let Ok(Some((n, req))) = p.parse(&buf) {
                assert!(n <= buf.len());
                assert!(req.args(&buf).count() == req.len());
            }
        }
    }

    #[test]
    fn replies() {
        let mut out = Out::new(Vec::new(), 1 << 20);
        integer(&mut out, -120);
        bulk(&mut out, b"ab");
        null(&mut out);
        array(&mut out, 2);
        error(&mut out, "ERR x\r\ny");
        integer(&mut out, i64::MIN);
        let (bytes, overflow) = out.finish();
        assert_eq!(bytes, b":-120\r\n$2\r\nab\r\n$-1\r\n*2\r\n-ERR x  y\r\n:-9223372036854775808\r\n");
        assert_eq!(overflow, None);
    }

    #[test]
    fn output_stops_at_its_limit() {
        let mut out = Out::new(b"+OK\r\n".to_vec(), 16);
        bulk(&mut out, b"0123456789");
        assert_eq!(out.overflow(), Some(Overflow::Limit));
        bulk(&mut out, b"");
        let (bytes, _) = out.finish();
        assert!(bytes.len() <= 16, "{bytes:?}");
    }
}
