//! The WebSocket opening handshake (RFC 6455 section 4) as pure functions over bytes.
//!
//! Server side: [`parse_request`] reads an upgrade request from the connection's read buffer and
//! checks everything RFC 6455 asks of it, so the caller only routes the path, parses the query
//! ([`super::query`]) and checks the token; then it answers with [`write_accept`] or
//! [`write_refusal`]. Client side, for the bench fleet: [`write_client_request`] and
//! [`parse_response`].
//!
//! The head of the request is bounded by the caller's `max_len` (431 past it) and by 32 headers,
//! so a slow or hostile client cannot make the edge hold more than one bounded read buffer.
//! Randomness (the client's nonce) comes from the caller.

use std::io::Write as _;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha1::{Digest as _, Sha1};

/// Most headers a request or response may carry; more is refused (431 for a request).
pub const MAX_HEADERS: usize = 32;

/// Longest response head [`parse_response`] waits for before giving up.
pub const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// The GUID RFC 6455 appends to the client's key before hashing it.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Length of an accept value: base64 of a 20-byte SHA-1.
const ACCEPT_LEN: usize = 28;

/// A handshake that cannot go on, as the HTTP status to answer with.
///
/// On the server side `status` is what the refusal response carries (see
/// [`HandshakeError::write_response`]); the fault is the client's, so the same request will fail
/// again. On the client side ([`parse_response`]) it is 502: the server's answer was unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{status} {reason}")]
pub struct HandshakeError {
    /// HTTP status: 400, 405, 426 or 431 for a request; 502 for a bad response.
    pub status: u16,
    /// Short explanation, fit for the body of the refusal.
    pub reason: &'static str,
}

impl HandshakeError {
    const fn new(status: u16, reason: &'static str) -> Self {
        HandshakeError { status, reason }
    }

    /// Appends the refusal response for this error (see [`write_refusal`]).
    pub fn write_response(&self, out: &mut Vec<u8>) {
        write_refusal(self.status, self.reason, None, out);
    }
}

/// A valid WebSocket upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The path of the request target, before any `?` (for example `/v1/subscribe`).
    pub path: String,
    /// The query without its `?`, still percent-encoded; empty when there is none.
    pub query: String,
    /// `Sec-WebSocket-Key`, checked to be base64 of 16 bytes; feed it to [`write_accept`].
    pub key: String,
    /// The token of an `Authorization: Bearer` header, if there is one. Other schemes are
    /// ignored, so the token may still come in the query.
    pub bearer: Option<String>,
    /// The admission ticket of a `cue_admit` cookie (what the edge's `Set-Cookie` handed out at
    /// an earlier upgrade), if the device sent one of at most [`MAX_TICKET`] bytes.
    pub ticket: Option<String>,
}

/// The cookie an admission ticket travels in.
pub const TICKET_COOKIE: &str = "cue_admit";
/// Longest admission ticket looked at (they are [`cue_common::keys::TICKET_LEN`] bytes).
pub const MAX_TICKET: usize = 64;

/// The `cue_admit` value among `Cookie` headers (`name=value` pairs split by `;`, RFC 6265
/// section 5.4); the first one wins, an over-long value counts as absent.
fn ticket_cookie<'a>(headers: &[httparse::Header<'a>]) -> Option<&'a str> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
        .filter_map(header_str)
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == TICKET_COOKIE)
        .map(|(_, v)| v.trim().trim_matches('"'))
        .filter(|v| !v.is_empty() && v.len() <= MAX_TICKET)
}

/// Parses the upgrade request at the start of `buf`.
///
/// Returns `Ok(None)` while the head is incomplete and `buf` is shorter than `max_len`, so the
/// caller should read more; an incomplete head at `max_len` or more, a head longer than
/// `max_len`, or more than [`MAX_HEADERS`] headers is 431. On success also returns how many
/// bytes the head took; a well-behaved client sends nothing after it until the 101.
///
/// Refusals: not GET is 405 (answer with `Allow: GET`); not HTTP/1.1, a malformed head or a
/// target that is not a path is 400; a GET without `Upgrade: websocket` and `Connection: upgrade`
/// is 426; a `Sec-WebSocket-Version` other than 13 is 426 (answer with
/// `Sec-WebSocket-Version: 13`, which [`write_refusal`] does); a missing or malformed
/// `Sec-WebSocket-Key`, a missing `Host`, or a repeated key, version, `Host` or `Authorization`
/// header, is 400.
pub fn parse_request(
    buf: &[u8],
    max_len: usize,
) -> Result<Option<(Request, usize)>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let consumed = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > max_len => {
            return Err(HandshakeError::new(431, "request head too large"));
        }
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= max_len => {
            return Err(HandshakeError::new(431, "request head too large"));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HandshakeError::new(431, "too many headers"));
        }
        Err(_) => return Err(HandshakeError::new(400, "malformed request")),
    };

    if req.method != Some("GET") {
        return Err(HandshakeError::new(405, "only GET is allowed"));
    }
    if req.version != Some(1) {
        return Err(HandshakeError::new(400, "HTTP/1.1 required"));
    }
    let target = req.path.unwrap_or_default();
    if !target.starts_with('/') {
        return Err(HandshakeError::new(400, "request target must be a path"));
    }
    let headers = req.headers;

    if !has_token(headers, "upgrade", "websocket") || !has_token(headers, "connection", "upgrade") {
        return Err(HandshakeError::new(426, "websocket upgrade required"));
    }
    match single_header(headers, "sec-websocket-version") {
        Err(()) => return Err(HandshakeError::new(400, "repeated Sec-WebSocket-Version")),
        Ok(Some("13")) => {}
        Ok(_) => return Err(HandshakeError::new(426, "Sec-WebSocket-Version must be 13")),
    }
    // RFC 6455 section 4.2.1 asks for exactly one Host; the edge does not route on it.
    match single_header(headers, "host") {
        Ok(Some(_)) => {}
        Ok(None) => return Err(HandshakeError::new(400, "missing Host")),
        Err(()) => return Err(HandshakeError::new(400, "repeated Host")),
    }
    let key = match single_header(headers, "sec-websocket-key") {
        Err(()) => return Err(HandshakeError::new(400, "repeated Sec-WebSocket-Key")),
        Ok(None) => return Err(HandshakeError::new(400, "missing Sec-WebSocket-Key")),
        Ok(Some(key)) if !valid_key(key) => {
            return Err(HandshakeError::new(
                400,
                "Sec-WebSocket-Key is not base64 of 16 bytes",
            ));
        }
        Ok(Some(key)) => key,
    };
    // A repeated Authorization is refused rather than resolved: a proxy in front may have
    // checked the other one.
    let bearer = match single_header(headers, "authorization") {
        Err(()) => return Err(HandshakeError::new(400, "repeated Authorization")),
        Ok(auth) => auth.and_then(bearer_token),
    };

    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let request = Request {
        path: path.to_owned(),
        query: query.to_owned(),
        key: key.to_owned(),
        bearer: bearer.map(str::to_owned),
        ticket: ticket_cookie(headers).map(str::to_owned),
    };
    Ok(Some((request, consumed)))
}

/// The value of a header as trimmed UTF-8; a header that is not UTF-8 counts as absent.
fn header_str<'a>(h: &httparse::Header<'a>) -> Option<&'a str> {
    std::str::from_utf8(h.value.trim_ascii()).ok()
}

/// The one value of header `name`: `Ok(None)` when absent, `Err` when it appears more than once.
fn single_header<'a>(headers: &[httparse::Header<'a>], name: &str) -> Result<Option<&'a str>, ()> {
    let mut found = None;
    for h in headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)) {
        if found.is_some() {
            return Err(());
        }
        found = Some(header_str(h).unwrap_or_default());
    }
    Ok(found)
}

/// True when some `name` header holds `token` in its comma-separated list (case-insensitive).
/// Lists may be split over repeated headers (RFC 9110 section 5.3).
fn has_token(headers: &[httparse::Header<'_>], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .filter_map(header_str)
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The token of a `Bearer` credential (scheme case-insensitive, RFC 7235); `None` for other
/// schemes and for an empty token.
fn bearer_token(auth: &str) -> Option<&str> {
    let (scheme, token) = auth.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// True when `key` is padded base64 of exactly 16 bytes (RFC 6455 section 4.1), which is always
/// 24 characters.
fn valid_key(key: &str) -> bool {
    let mut decoded = [0u8; 18];
    key.len() == 24 && BASE64.decode_slice(key, &mut decoded) == Ok(16)
}

/// The base64 key for a client nonce; the bench client draws 16 random bytes per connection.
pub fn client_key(nonce: [u8; 16]) -> String {
    BASE64.encode(nonce)
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`: base64 of the SHA-1 of the key followed by
/// the RFC 6455 GUID.
pub fn accept_key(key: &str) -> String {
    String::from_utf8(accept_raw(key).to_vec()).expect("base64 is ASCII")
}

/// [`accept_key`] on the stack, so that [`write_accept`] allocates only into `out`.
fn accept_raw(key: &str) -> [u8; ACCEPT_LEN] {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(ACCEPT_GUID.as_bytes());
    let digest = sha.finalize();
    let mut raw = [0u8; ACCEPT_LEN];
    let n = BASE64
        .encode_slice(digest, &mut raw)
        .expect("28 bytes hold base64 of 20");
    debug_assert_eq!(n, ACCEPT_LEN);
    raw
}

/// Appends the `101 Switching Protocols` response that accepts the upgrade for `key`.
pub fn write_accept(key: &str, ticket: Option<&Ticket<'_>>, out: &mut Vec<u8>) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\n\
          Upgrade: websocket\r\n\
          Connection: Upgrade\r\n\
          Sec-WebSocket-Accept: ",
    );
    out.extend_from_slice(&accept_raw(key));
    if let Some(t) = ticket {
        // Only this edge's subscribe path gets it back; scripts cannot read it; a browser keeps
        // it from wss:// pages (and localhost); it lives as long as the token.
        let _ = write!(
            out,
            "\r\nSet-Cookie: {TICKET_COOKIE}={}; Max-Age={}; Path=/v1/subscribe; HttpOnly; Secure; SameSite=None",
            t.value, t.max_age_s
        );
    }
    out.extend_from_slice(b"\r\n\r\n");
}

/// An admission ticket to hand a device in the 101 (`Set-Cookie: cue_admit=...`).
#[derive(Debug, Clone, Copy)]
pub struct Ticket<'a> {
    /// The ticket.
    pub value: &'a str,
    /// Seconds it stays valid (until the token expires).
    pub max_age_s: u64,
}

/// The standard reason phrase for the statuses the edge answers with.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        // Statuses the edge does not send: a phrase by class. Clients ignore phrases anyway.
        _ if status / 100 == 4 => "Client Error",
        _ if status / 100 == 5 => "Server Error",
        _ => "Unknown",
    }
}

/// Appends a complete refusal response: status line, `Connection: close`, a `text/plain` body of
/// `reason` and a newline, and `Retry-After` when given (the caller jitters it).
///
/// Adds what the status requires: `Upgrade: websocket` and `Sec-WebSocket-Version: 13` for 426
/// (RFC 9110 section 15.5.22, RFC 6455 section 4.4), `Allow: GET` for 405. The caller closes the
/// connection once it is written.
pub fn write_refusal(status: u16, reason: &str, retry_after_s: Option<u32>, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\n\
         Connection: close\r\n\
         Content-Type: text/plain\r\n\
         Content-Length: {}\r\n",
        reason_phrase(status),
        reason.len() + 1,
    );
    if let Some(secs) = retry_after_s {
        let _ = write!(out, "Retry-After: {secs}\r\n");
    }
    match status {
        405 => out.extend_from_slice(b"Allow: GET\r\n"),
        426 => out.extend_from_slice(b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"),
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(reason.as_bytes());
    out.push(b'\n');
}

/// Appends a client upgrade request (the bench fleet's side). `key` comes from [`client_key`];
/// `path_and_query` starts with `/` and is already percent-encoded; `ticket` is what
/// [`response_ticket`] found in an earlier 101.
pub fn write_client_request(
    host: &str,
    path_and_query: &str,
    key: &str,
    bearer: Option<&str>,
    ticket: Option<&str>,
    out: &mut Vec<u8>,
) {
    let _ = write!(
        out,
        "GET {path_and_query} HTTP/1.1\r\n\
         Host: {host}\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\n\
         Sec-WebSocket-Version: 13\r\n"
    );
    if let Some(token) = bearer {
        let _ = write!(out, "Authorization: Bearer {token}\r\n");
    }
    if let Some(t) = ticket {
        let _ = write!(out, "Cookie: {TICKET_COOKIE}={t}\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The admission ticket a 101 head (`head`, as [`parse_response`] measured it) hands out in
/// `Set-Cookie: cue_admit=...`, if any (the bench fleet's side).
pub fn response_ticket(head: &[u8]) -> Option<String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    resp.parse(head).ok()?;
    resp.headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("set-cookie"))
        .filter_map(header_str)
        .filter_map(|v| v.split(';').next()?.trim().split_once('='))
        .find(|(name, _)| *name == TICKET_COOKIE)
        .map(|(_, v)| v.to_owned())
}

/// Parses the server's response head at the start of `buf` (the bench fleet's side).
///
/// Returns `Ok(None)` while the head is incomplete, else the status and the bytes the head took.
/// For 101 it checks the upgrade headers and that `Sec-WebSocket-Accept` equals
/// `expected_accept` (from [`accept_key`] of the key sent), and refuses any extension or
/// subprotocol, since none was offered; frames may follow the head directly. Any other status is
/// returned as is; its body (`Content-Length` bytes) follows the head. Errors carry status 502.
pub fn parse_response(
    buf: &[u8],
    expected_accept: &str,
) -> Result<Option<(u16, usize)>, HandshakeError> {
    let bad = |reason| Err(HandshakeError::new(502, reason));
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let consumed = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > MAX_RESPONSE_HEAD => {
            return bad("response head too large")
        }
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_RESPONSE_HEAD => {
            return bad("response head too large")
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return bad("malformed response"),
    };
    let status = resp.code.unwrap_or_default();
    if status != 101 {
        return Ok(Some((status, consumed)));
    }

    let headers = resp.headers;
    if !has_token(headers, "upgrade", "websocket") || !has_token(headers, "connection", "upgrade") {
        return bad("101 without websocket upgrade headers");
    }
    match single_header(headers, "sec-websocket-accept") {
        Ok(Some(accept)) if accept == expected_accept => {}
        Ok(Some(_)) => return bad("wrong Sec-WebSocket-Accept"),
        Ok(None) => return bad("missing Sec-WebSocket-Accept"),
        Err(()) => return bad("repeated Sec-WebSocket-Accept"),
    }
    if headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("sec-websocket-extensions"))
    {
        return bad("server chose an extension that was not offered");
    }
    if headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("sec-websocket-protocol"))
    {
        return bad("server chose a subprotocol that was not offered");
    }
    Ok(Some((101, consumed)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const RFC_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    /// A valid upgrade request with `extra` header lines (each ending in CRLF) added.
    fn request_with(target: &str, extra: &str) -> Vec<u8> {
        format!(
            "GET {target} HTTP/1.1\r\nHost: edge.example\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {RFC_KEY}\r\n\
             Sec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
        .into_bytes()
    }

    /// The request from `request_with` with `header` (a name) removed.
    fn request_without(header: &str) -> Vec<u8> {
        let full = String::from_utf8(request_with("/", "")).unwrap();
        full.split("\r\n")
            .filter(|l| {
                !l.to_ascii_lowercase()
                    .starts_with(&format!("{}:", header.to_lowercase()))
            })
            .collect::<Vec<_>>()
            .join("\r\n")
            .into_bytes()
    }

    fn parsed(buf: &[u8]) -> (Request, usize) {
        parse_request(buf, 8192).unwrap().expect("complete")
    }

    fn status(buf: &[u8]) -> u16 {
        parse_request(buf, 8192).unwrap_err().status
    }

    fn replace(buf: &[u8], from: &str, to: &str) -> Vec<u8> {
        let s = String::from_utf8(buf.to_vec()).unwrap();
        assert!(s.contains(from), "{from} not in request");
        s.replacen(from, to, 1).into_bytes()
    }

    #[test]
    fn rfc_accept_key() {
        assert_eq!(accept_key(RFC_KEY), RFC_ACCEPT);
    }

    #[test]
    fn rfc_example_request() {
        let req = b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
            Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
            Origin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\n\
            Sec-WebSocket-Version: 13\r\n\r\n";
        let (r, n) = parsed(req);
        assert_eq!(n, req.len());
        assert_eq!(
            r,
            Request {
                path: "/chat".into(),
                query: String::new(),
                key: RFC_KEY.into(),
                bearer: None,
                ticket: None
            }
        );
    }

    #[test]
    fn splits_path_and_query_and_reports_consumed() {
        let mut buf = request_with("/v1/subscribe?events=a,b&format=json", "");
        let head = buf.len();
        buf.extend_from_slice(b"\x81\x80early frame bytes");
        let (r, n) = parsed(&buf);
        assert_eq!(
            (r.path.as_str(), r.query.as_str(), n),
            ("/v1/subscribe", "events=a,b&format=json", head)
        );
    }

    #[test]
    fn takes_bearer_tokens_only() {
        let bearer = |line: &str| parsed(&request_with("/", line)).0.bearer;
        assert_eq!(
            bearer("Authorization: Bearer abc.def.ghi\r\n").as_deref(),
            Some("abc.def.ghi")
        );
        assert_eq!(
            bearer("authorization: bearer  tok \r\n").as_deref(),
            Some("tok")
        );
        assert_eq!(bearer("Authorization: Basic dXNlcjpwYXNz\r\n"), None);
        assert_eq!(bearer("Authorization: Bearer\r\n"), None);
        assert_eq!(bearer(""), None);
    }

    #[test]
    fn header_names_and_tokens_are_case_insensitive() {
        let req = b"GET / HTTP/1.1\r\nHOST: x\r\nupgrade: WebSocket\r\n\
            connection: keep-alive, UPGRADE\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
            SEC-WEBSOCKET-VERSION: 13\r\n\r\n";
        assert_eq!(parsed(req).0.key, RFC_KEY);
        // A Connection list split over two headers.
        let split = replace(
            &request_with("/", "Connection: upgrade\r\n"),
            "Connection: Upgrade",
            "Connection: keep-alive",
        );
        assert!(parse_request(&split, 8192).is_ok());
    }

    #[test]
    fn incomplete_head_waits() {
        let full = request_with("/", "");
        for k in 0..full.len() {
            assert_eq!(parse_request(&full[..k], 8192), Ok(None), "prefix {k}");
        }
    }

    #[test]
    fn incomplete_head_at_the_limit_is_431() {
        let full = request_with("/", "");
        let cut = &full[..full.len() - 2];
        assert_eq!(parse_request(cut, cut.len()).unwrap_err().status, 431);
    }

    #[test]
    fn complete_head_over_the_limit_is_431() {
        let full = request_with("/", "");
        assert_eq!(
            parse_request(&full, full.len() - 1).unwrap_err().status,
            431
        );
        assert!(parse_request(&full, full.len()).unwrap().is_some());
    }

    #[test]
    fn too_many_headers_is_431() {
        let extra: String = (0..MAX_HEADERS)
            .map(|i| format!("X-Pad-{i}: y\r\n"))
            .collect();
        assert_eq!(status(&request_with("/", &extra)), 431);
    }

    #[test]
    fn not_get_is_405() {
        assert_eq!(status(&replace(&request_with("/", ""), "GET", "POST")), 405);
    }

    #[test]
    fn not_http_1_1_is_400() {
        assert_eq!(
            status(&replace(&request_with("/", ""), "HTTP/1.1", "HTTP/1.0")),
            400
        );
    }

    #[test]
    fn malformed_head_is_400() {
        assert_eq!(status(b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n"), 400);
    }

    #[test]
    fn target_that_is_not_a_path_is_400() {
        assert_eq!(
            status(&request_with("http://edge.example/v1/subscribe", "")),
            400
        );
    }

    #[test]
    fn plain_get_is_426() {
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), 426);
    }

    #[test]
    fn missing_upgrade_is_426() {
        assert_eq!(status(&request_without("upgrade")), 426);
        assert_eq!(
            status(&replace(
                &request_with("/", ""),
                "Upgrade: websocket",
                "Upgrade: h2c"
            )),
            426
        );
    }

    #[test]
    fn connection_without_upgrade_token_is_426() {
        let req = replace(
            &request_with("/", ""),
            "Connection: Upgrade",
            "Connection: keep-alive",
        );
        assert_eq!(status(&req), 426);
        assert_eq!(status(&request_without("connection")), 426);
    }

    #[test]
    fn wrong_version_is_426() {
        let req = replace(&request_with("/", ""), "Version: 13", "Version: 8");
        assert_eq!(status(&req), 426);
        assert_eq!(status(&request_without("sec-websocket-version")), 426);
    }

    #[test]
    fn repeated_version_is_400() {
        assert_eq!(
            status(&request_with("/", "Sec-WebSocket-Version: 13\r\n")),
            400
        );
    }

    #[test]
    fn missing_or_repeated_host_is_400() {
        assert_eq!(status(&request_without("host")), 400);
        assert_eq!(status(&request_with("/", "Host: other.example\r\n")), 400);
    }

    #[test]
    fn missing_key_is_400() {
        assert_eq!(status(&request_without("sec-websocket-key")), 400);
    }

    #[test]
    fn key_not_base64_of_16_bytes_is_400() {
        for bad in [
            "not base64 at all!!!!!!!",
            "AAAAAAAAAAAAAAAAAAAAAAA=", // 17 bytes
            "AAAAAAAAAAAAAAAAAAAA",     // 15 bytes
            "dGhlIHNhbXBsZSBub25jZQ",   // 16 bytes, padding missing
            "dGhlIHNhbXBsZSBub25jZR==", // non-zero trailing bits
            "",
        ] {
            let req = replace(&request_with("/", ""), RFC_KEY, bad);
            assert_eq!(status(&req), 400, "key {bad:?}");
        }
    }

    #[test]
    fn repeated_key_is_400() {
        assert_eq!(
            status(&request_with(
                "/",
                &format!("Sec-WebSocket-Key: {RFC_KEY}\r\n")
            )),
            400
        );
    }

    #[test]
    fn repeated_authorization_is_400() {
        let extra = "Authorization: Bearer a\r\nAuthorization: Bearer b\r\n";
        assert_eq!(status(&request_with("/", extra)), 400);
    }

    #[test]
    fn accept_response_is_exact() {
        let mut out = b"kept".to_vec();
        write_accept(RFC_KEY, None, &mut out);
        assert_eq!(
            out,
            b"keptHTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
    }

    /// Parses a refusal with httparse: status, the headers as (lowercase name, value), body.
    fn parse_refusal(out: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(n) = resp.parse(out).unwrap() else {
            panic!("partial")
        };
        let headers = resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_lowercase(),
                    String::from_utf8(h.value.to_vec()).unwrap(),
                )
            })
            .collect();
        (resp.code.unwrap(), headers, out[n..].to_vec())
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn refusal_is_a_complete_response() {
        let mut out = Vec::new();
        write_refusal(503, "draining", Some(17), &mut out);
        assert!(out.starts_with(b"HTTP/1.1 503 Service Unavailable\r\n"));
        let (status, headers, body) = parse_refusal(&out);
        assert_eq!(status, 503);
        assert_eq!(body, b"draining\n");
        assert_eq!(header(&headers, "connection"), Some("close"));
        assert_eq!(header(&headers, "content-type"), Some("text/plain"));
        assert_eq!(header(&headers, "content-length"), Some("9"));
        assert_eq!(header(&headers, "retry-after"), Some("17"));
        assert_eq!(header(&headers, "allow"), None);
        assert_eq!(header(&headers, "sec-websocket-version"), None);
    }

    #[test]
    fn refusal_426_names_the_version() {
        let mut out = Vec::new();
        HandshakeError {
            status: 426,
            reason: "websocket upgrade required",
        }
        .write_response(&mut out);
        let (status, headers, _) = parse_refusal(&out);
        assert_eq!(status, 426);
        assert_eq!(header(&headers, "sec-websocket-version"), Some("13"));
        assert_eq!(header(&headers, "upgrade"), Some("websocket"));
        assert_eq!(header(&headers, "retry-after"), None);
    }

    #[test]
    fn refusal_405_allows_get() {
        let mut out = Vec::new();
        write_refusal(405, "only GET is allowed", None, &mut out);
        assert_eq!(header(&parse_refusal(&out).1, "allow"), Some("GET"));
    }

    #[test]
    fn reason_phrases() {
        let phrases = [
            (400, "Bad Request"),
            (401, "Unauthorized"),
            (403, "Forbidden"),
            (404, "Not Found"),
            (405, "Method Not Allowed"),
            (426, "Upgrade Required"),
            (431, "Request Header Fields Too Large"),
            (500, "Internal Server Error"),
            (503, "Service Unavailable"),
        ];
        for (status, phrase) in phrases {
            assert_eq!(reason_phrase(status), phrase);
            let mut out = Vec::new();
            write_refusal(status, "x", None, &mut out);
            assert!(out.starts_with(format!("HTTP/1.1 {status} {phrase}\r\n").as_bytes()));
        }
    }

    #[test]
    fn error_display() {
        let e = HandshakeError {
            status: 400,
            reason: "missing Sec-WebSocket-Key",
        };
        assert_eq!(e.to_string(), "400 missing Sec-WebSocket-Key");
    }

    #[test]
    fn client_request_is_accepted_by_the_server() {
        let key = client_key([7; 16]);
        let mut out = Vec::new();
        write_client_request(
            "edge:8080",
            "/v1/subscribe?events=a",
            &key,
            Some("jwt"),
            Some("t1"),
            &mut out,
        );
        let (r, n) = parsed(&out);
        assert_eq!(n, out.len());
        assert_eq!(
            r,
            Request {
                path: "/v1/subscribe".into(),
                query: "events=a".into(),
                key: key.clone(),
                bearer: Some("jwt".into()),
                ticket: Some("t1".into()),
            }
        );
        let mut out = Vec::new();
        write_client_request("edge", "/", &key, None, None, &mut out);
        assert_eq!(parsed(&out).0.bearer, None);
        assert_eq!(parsed(&out).0.ticket, None);
    }

    #[test]
    fn ticket_cookie_round_trip_and_limits() {
        let mut out = Vec::new();
        let t = Ticket {
            value: "abc_DEF-1",
            max_age_s: 3600,
        };
        write_accept(RFC_KEY, Some(&t), &mut out);
        assert_eq!(parse_response(&out, RFC_ACCEPT), Ok(Some((101, out.len()))));
        assert_eq!(response_ticket(&out).as_deref(), Some("abc_DEF-1"));
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.contains("Max-Age=3600; Path=/v1/subscribe; HttpOnly; Secure"));
        out.clear();
        write_accept(RFC_KEY, None, &mut out);
        assert_eq!(response_ticket(&out), None);
        // The server side: among other cookies, split over headers, quoted; not over-long.
        let ticket = |cookies: &str| {
            let req = format!(
                "GET /v1/subscribe HTTP/1.1\r\nHost: e\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
                 Sec-WebSocket-Key: {RFC_KEY}\r\n{cookies}\r\n"
            );
            parsed(req.as_bytes()).0.ticket
        };
        assert_eq!(
            ticket("Cookie: a=1; cue_admit=T2; b=3\r\n").as_deref(),
            Some("T2")
        );
        assert_eq!(
            ticket("Cookie: a=1\r\nCookie: cue_admit=\"T3\"\r\n").as_deref(),
            Some("T3")
        );
        assert_eq!(ticket("Cookie: xcue_admit=T4\r\n"), None);
        assert_eq!(ticket("Cookie: cue_admit=\r\n"), None);
        assert_eq!(
            ticket(&format!("Cookie: cue_admit={}\r\n", "x".repeat(65))),
            None
        );
        assert_eq!(ticket(""), None);
    }

    #[test]
    fn client_accepts_the_servers_101() {
        let mut out = Vec::new();
        write_accept(RFC_KEY, None, &mut out);
        let head = out.len();
        out.extend_from_slice(&[0x81, 0x00]); // a frame right behind the head
        assert_eq!(parse_response(&out, RFC_ACCEPT), Ok(Some((101, head))));
        for k in 0..head {
            assert_eq!(parse_response(&out[..k], RFC_ACCEPT), Ok(None));
        }
    }

    #[test]
    fn client_refuses_a_wrong_accept() {
        let mut out = Vec::new();
        write_accept("AAAAAAAAAAAAAAAAAAAAAA==", None, &mut out);
        assert_eq!(parse_response(&out, RFC_ACCEPT).unwrap_err().status, 502);
        let missing = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        assert_eq!(
            parse_response(missing, RFC_ACCEPT).unwrap_err().reason,
            "missing Sec-WebSocket-Accept"
        );
    }

    #[test]
    fn client_refuses_101_without_upgrade_headers() {
        let resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: {RFC_ACCEPT}\r\n\r\n"
        );
        assert_eq!(
            parse_response(resp.as_bytes(), RFC_ACCEPT)
                .unwrap_err()
                .status,
            502
        );
    }

    #[test]
    fn client_refuses_unoffered_extensions() {
        let mut out = Vec::new();
        write_accept(RFC_KEY, None, &mut out);
        out.truncate(out.len() - 2);
        out.extend_from_slice(b"Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n");
        assert_eq!(parse_response(&out, RFC_ACCEPT).unwrap_err().status, 502);
    }

    #[test]
    fn client_gets_refusal_statuses() {
        let mut out = Vec::new();
        write_refusal(503, "shedding", Some(3), &mut out);
        let body = b"shedding\n".len();
        assert_eq!(
            parse_response(&out, RFC_ACCEPT),
            Ok(Some((503, out.len() - body)))
        );
    }

    #[test]
    fn client_gives_up_on_endless_heads() {
        let junk = vec![b'a'; MAX_RESPONSE_HEAD];
        let mut buf = b"HTTP/1.1 101 OK\r\nX: ".to_vec();
        buf.extend_from_slice(&junk);
        assert_eq!(parse_response(&buf, RFC_ACCEPT).unwrap_err().status, 502);
    }

    proptest! {
        #[test]
        fn parse_request_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512), max in 0..1024usize) {
            let _ = parse_request(&bytes, max);
            let _ = parse_response(&bytes, RFC_ACCEPT);
        }

        #[test]
        fn parse_request_never_panics_on_mutated_requests(
            edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..4),
            cut in any::<usize>(),
        ) {
            let mut buf = request_with("/v1/subscribe?events=a", "Authorization: Bearer t\r\n");
            for (i, v) in edits {
                let n = buf.len();
                buf[i % n] = v;
            }
            let cut = cut % (buf.len() + 1);
            if let Ok(Some((_, n))) = parse_request(&buf[..cut], 4096) {
                prop_assert!(n <= cut);
            }
        }

        #[test]
        fn any_nonce_gives_a_valid_key(nonce in any::<[u8; 16]>()) {
            let key = client_key(nonce);
            let mut req = Vec::new();
            write_client_request("h", "/", &key, None, None, &mut req);
            prop_assert_eq!(parsed(&req).0.key, key.clone());
            let mut resp = Vec::new();
            write_accept(&key, None, &mut resp);
            prop_assert_eq!(parse_response(&resp, &accept_key(&key)), Ok(Some((101, resp.len()))));
        }
    }
}
