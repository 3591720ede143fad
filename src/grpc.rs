//! gRPC calls answered by sluice itself. A gRPC client reads a call's outcome from
//! `grpc-status`, not from the HTTP status, so a refused call is answered the gRPC way: HTTP 200,
//! a trailers-only response (one HEADERS frame that ends the stream) with `grpc-status`, a
//! `grpc-message` carrying what sluice would have said in its body, and the same
//! `Retry-After` and RateLimit headers an HTTP client gets.

use bytes::Bytes;
use http::HeaderMap;
use pingora::http::ResponseHeader;

/// The gRPC status codes sluice answers with (grpc/doc/statuscodes.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    ResourceExhausted = 8,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

/// Whether a request is a gRPC call: `content-type: application/grpc` (or `+proto`, `+json`).
pub fn is_call(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The gRPC status of a response sluice would send with HTTP `status`.
pub fn code_of(status: u16) -> Code {
    match status {
        401 => Code::Unauthenticated,
        400..=428 | 431 => Code::InvalidArgument,
        429 => Code::ResourceExhausted,
        502 | 503 => Code::Unavailable,
        504 => Code::DeadlineExceeded,
        _ if status < 500 => Code::ResourceExhausted,
        _ => Code::Internal,
    }
}

/// The gRPC form of a response sluice made: `code` (from the refusal it answers, as a route's
/// `refusal.status` may be anything), the body as `grpc-message`, and the rate-limit headers.
pub fn answer(head: &ResponseHeader, body: &Bytes, code: Code) -> pingora::Result<ResponseHeader> {
    let mut h = ResponseHeader::build(200, Some(8))?;
    h.insert_header("Content-Type", "application/grpc")?;
    h.insert_header("grpc-status", (code as u8).to_string())?;
    let message = String::from_utf8_lossy(body);
    h.insert_header("grpc-message", percent_encode(message.trim()))?;
    for name in [
        "retry-after",
        "ratelimit-policy",
        "ratelimit",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "www-authenticate",
    ] {
        if let Some(v) = head.headers.get(name) {
            h.insert_header(name, v.clone())?;
        }
    }
    Ok(h)
}

/// `grpc-message` is percent-encoded: every byte outside printable ASCII, and `%` itself.
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_becomes_a_trailers_only_answer_with_its_headers() {
        let mut head = ResponseHeader::build(429, None).unwrap();
        head.insert_header("Retry-After", "7").unwrap();
        head.insert_header("RateLimit", "\"api\";r=0;t=7").unwrap();
        head.insert_header("Content-Length", "12").unwrap();
        let body = Bytes::from_static(b"{\"error\":\"rate_limited\",\"why\":\"100%\xc3\xa9\"}\n");
        let h = answer(&head, &body, code_of(429)).unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(h.headers["grpc-status"], "8");
        assert_eq!(
            h.headers["grpc-message"],
            "{\"error\":\"rate_limited\",\"why\":\"100%25%C3%A9\"}"
        );
        assert_eq!(h.headers["retry-after"], "7");
        assert_eq!(h.headers["ratelimit"], "\"api\";r=0;t=7");
        assert!(h.headers.get("content-length").is_none());
    }

    #[test]
    fn statuses_map_to_the_grpc_codes_clients_know() {
        assert_eq!(code_of(429), Code::ResourceExhausted);
        assert_eq!(code_of(503), Code::Unavailable);
        assert_eq!(code_of(502), Code::Unavailable);
        assert_eq!(code_of(504), Code::DeadlineExceeded);
        assert_eq!(code_of(401), Code::Unauthenticated);
        assert_eq!(code_of(414), Code::InvalidArgument);
        assert_eq!(code_of(500), Code::Internal);
    }

    #[test]
    fn only_grpc_content_types_are_calls() {
        let mut h = HeaderMap::new();
        assert!(!is_call(&h));
        h.insert("content-type", "application/grpc+proto".parse().unwrap());
        assert!(is_call(&h));
        h.insert("content-type", "application/json".parse().unwrap());
        assert!(!is_call(&h));
    }
}
