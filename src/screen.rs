//! Request screening: checks on the raw bytes of an HTTP/1 request head that Pingora
//! is more lenient about than an edge proxy should be, plus the size limits of
//! `[proxy]`. Runs once per request, before routing; a rejected request never
//! reaches an upstream, gets a 4xx and its connection is closed.
//!
//! Pingora itself already answers 400 for: two different `Content-Length` values, an
//! invalid `Content-Length`, `Transfer-Encoding` on HTTP/1.0, obsolete line folding,
//! a final transfer coding other than `chunked`, over 256 headers or a head over
//! 1 MiB. On top of that, this rejects what it lets through:
//!
//! - `Content-Length` together with `Transfer-Encoding` (Pingora drops the length and
//!   goes on: the classic CL.TE smuggling shape);
//! - repeated `Content-Length` fields or lists, even with equal values (Pingora would
//!   forward both fields);
//! - any `Transfer-Encoding` but exactly `chunked`, or more than one such field;
//! - a bare LF line ending (RFC 9112 §2.2 lets a server accept it; a proxy whose
//!   upstream may not is safer refusing it);
//! - heads, header counts and targets over the configured limits (431, 431, 414).
//!
//! [`screen_head`] also returns the body's [`Framing`], with which the proxy keeps
//! track of where each request ends on its connection; an `Upgrade` request followed
//! by any byte is refused there ([`crate::conn::sent_beyond`]).

use crate::config::ClientLimits;

/// Why a request is refused: its status and a short reason for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub reason: &'static str,
}

const fn reject<T>(status: u16, reason: &'static str) -> Result<T, Rejection> {
    Err(Rejection { status, reason })
}

/// How the body of a screened request is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length: n`, or no body at all (`Length(0)`).
    Length(u64),
    /// `Transfer-Encoding: chunked`: its length on the wire is not known from the head.
    Chunked,
}

/// Screens a raw HTTP/1 request head (request line, header lines, blank line) and
/// tells how its body is framed.
pub fn screen_head(raw: &[u8], limits: &ClientLimits) -> Result<Framing, Rejection> {
    if raw.len() > limits.max_header_size {
        return reject(431, "request head larger than max_header_size");
    }
    // Empty lines (CRLF) before the request line are ignored (RFC 9112 §2.2); they
    // are part of the head Pingora read.
    let mut raw = raw;
    while let Some(rest) = raw.strip_prefix(b"\r\n") {
        raw = rest;
    }
    let mut lines = raw.split(|&b| b == b'\n').peekable();
    let Some(request_line) = lines.next() else {
        return reject(400, "empty request");
    };
    let Some(request_line) = request_line.strip_suffix(b"\r") else {
        return reject(400, "bare LF line ending");
    };
    let target_len = request_line
        .split(|&b| b == b' ')
        .nth(1)
        .map_or(0, <[u8]>::len);
    if target_len > limits.max_uri_length {
        return reject(414, "request target longer than max_uri_length");
    }
    let mut headers = 0usize;
    let mut content_lengths = 0usize;
    let mut transfer_encodings = 0usize;
    let mut length = 0u64;
    while let Some(line) = lines.next() {
        if line.is_empty() {
            // Only what follows the head's last LF may be empty; anywhere else it is
            // a blank line ended by a bare LF.
            if lines.peek().is_some() {
                return reject(400, "bare LF line ending");
            }
            continue;
        }
        let Some(line) = line.strip_suffix(b"\r") else {
            return reject(400, "bare LF line ending");
        };
        if line.is_empty() {
            continue; // the blank line that ends the head
        }
        headers += 1;
        if headers > limits.max_headers {
            return reject(431, "more header fields than max_headers");
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return reject(400, "header line without a colon");
        };
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if name.eq_ignore_ascii_case(b"content-length") {
            content_lengths += 1;
            if content_lengths > 1 || value.contains(&b',') {
                return reject(400, "more than one Content-Length");
            }
            length = match parse_length(value) {
                Some(n) => n,
                None => return reject(400, "invalid Content-Length"),
            };
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encodings += 1;
            if transfer_encodings > 1 || !value.eq_ignore_ascii_case(b"chunked") {
                return reject(400, "Transfer-Encoding other than a single chunked");
            }
        }
    }
    if content_lengths > 0 && transfer_encodings > 0 {
        return reject(400, "Content-Length with Transfer-Encoding");
    }
    Ok(if transfer_encodings > 0 {
        Framing::Chunked
    } else {
        Framing::Length(length)
    })
}

/// A `Content-Length` value: ASCII digits only (no sign, no list), at most 19 of them.
fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Screens what an HTTP/2 request has in place of a raw head.
pub fn screen_parsed(
    target_len: usize,
    headers: usize,
    limits: &ClientLimits,
) -> Result<(), Rejection> {
    if target_len > limits.max_uri_length {
        return reject(414, "request target longer than max_uri_length");
    }
    if headers > limits.max_headers {
        return reject(431, "more header fields than max_headers");
    }
    Ok(())
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &v[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: &str) -> Result<Framing, Rejection> {
        screen_head(raw.as_bytes(), &ClientLimits::default())
    }

    fn status(raw: &str) -> u16 {
        check(raw).err().map_or(200, |r| r.status)
    }

    #[test]
    fn ordinary_heads_pass() {
        assert_eq!(
            check("GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Ok(Framing::Length(0))
        );
        assert_eq!(
            check("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n"),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            check("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:  Chunked \r\n\r\n"),
            Ok(Framing::Chunked)
        );
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        let cl_te =
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(status(cl_te), 400);
        assert_eq!(
            status("POST / HTTP/1.1\r\nContent-Length: 4\r\ncontent-length: 4\r\n\r\n"),
            400
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nContent-Length: 4, 4\r\n\r\n"),
            400
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            400
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
            400
        );
        assert_eq!(status("GET / HTTP/1.1\nHost: a\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a\r\n\n"), 400);
    }

    #[test]
    fn limits_give_431_and_414() {
        let limits = ClientLimits {
            max_header_size: 1024,
            max_headers: 3,
            max_uri_length: 16,
            ..ClientLimits::default()
        };
        let many = "GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\nd: 4\r\n\r\n";
        assert_eq!(
            screen_head(many.as_bytes(), &limits).unwrap_err().status,
            431
        );
        let big = format!("GET / HTTP/1.1\r\na: {}\r\n\r\n", "x".repeat(1100));
        assert_eq!(
            screen_head(big.as_bytes(), &limits).unwrap_err().status,
            431
        );
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "x".repeat(16));
        assert_eq!(
            screen_head(long.as_bytes(), &limits).unwrap_err().status,
            414
        );
        assert_eq!(screen_parsed(17, 1, &limits).unwrap_err().status, 414);
        assert_eq!(screen_parsed(1, 4, &limits).unwrap_err().status, 431);
        assert_eq!(screen_parsed(16, 3, &limits), Ok(()));
    }

    #[test]
    fn empty_lines_before_the_request_line_are_skipped() {
        assert_eq!(
            check("\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n"),
            Ok(Framing::Length(2))
        );
        let long = format!("\r\nGET http://a/{} HTTP/1.1\r\n\r\n", "x".repeat(9000));
        assert_eq!(status(&long), 414);
        assert_eq!(status("\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    }

    #[test]
    fn content_length_must_be_plain_digits() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b"18446744073709551615"), None);
        assert_eq!(
            parse_length(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        for bad in ["", "+3", "-1", "3 ", "0x10", "1e3"] {
            assert_eq!(parse_length(bad.as_bytes()), None, "{bad:?}");
        }
        assert_eq!(
            status("POST / HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n"),
            400
        );
    }
}
