//! Cross-origin access for browser devices (the Fetch standard's CORS protocol), sans-IO.
//!
//! A device page is served from the app's own origin (`https://app.example`), not from
//! cue-prefetch, so a browser lets the page read a map only when the answer names the page's
//! origin in `Access-Control-Allow-Origin`, and sends a preflight `OPTIONS` first because the
//! SDK sends `Authorization`, `If-None-Match` and `X-Cue-Priority`. Every request carries its
//! token itself (never a cookie), so `*` exposes nothing a page could not fetch with the token
//! anyway; a list of origins narrows which pages may use the API from a browser.

/// What the answers carry for browsers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsPolicy {
    /// No CORS headers: browsers refuse cross-origin reads (`cors_origins = []`).
    Off,
    /// Any page (`["*"]`, the default).
    Any,
    /// These origins only (`scheme://host[:port]`, compared exactly, ASCII case-insensitive).
    Only(Vec<String>),
}

/// Request headers a preflight may ask for (`Access-Control-Allow-Headers`).
pub const ALLOW_HEADERS: &str = "Authorization, If-None-Match, X-Cue-Priority";
/// The same names, as a preflight's `Access-Control-Request-Headers` spells them (any case).
const ALLOWED_REQUEST_HEADERS: [&str; 3] = ["authorization", "if-none-match", "x-cue-priority"];
/// Response headers a page may read besides the CORS-safelisted ones (`Cache-Control` is one).
pub const EXPOSE_HEADERS: &str = "ETag, Retry-After";
/// How long a browser may reuse a preflight's answer, s (Chromium caps it at 7200).
pub const PREFLIGHT_MAX_AGE_S: u32 = 7200;
/// Longest origin accepted in the configuration.
const MAX_ORIGIN_LEN: usize = 256;

impl CorsPolicy {
    /// The policy of the `cors_origins` setting: `[]` off, `["*"]` any, else a list of origins.
    pub fn parse(origins: &[String]) -> Result<CorsPolicy, String> {
        if origins.is_empty() {
            return Ok(CorsPolicy::Off);
        }
        if origins.iter().any(|o| o == "*") {
            if origins.len() > 1 {
                return Err("\"*\" allows every origin and cannot be listed with others".into());
            }
            return Ok(CorsPolicy::Any);
        }
        let mut list = Vec::with_capacity(origins.len());
        for o in origins {
            check_origin(o)?;
            list.push(o.to_ascii_lowercase());
        }
        Ok(CorsPolicy::Only(list))
    }

    /// `Access-Control-Allow-Origin` for a request whose `Origin` header is `origin`; `None`
    /// when the answer carries no CORS header (policy off, no `Origin`, or not allowed).
    pub fn allow_origin<'a>(&self, origin: Option<&'a str>) -> Option<AllowOrigin<'a>> {
        let origin = origin?;
        match self {
            CorsPolicy::Off => None,
            CorsPolicy::Any => Some(AllowOrigin::Any),
            CorsPolicy::Only(list) => list
                .iter()
                .any(|o| o.eq_ignore_ascii_case(origin))
                .then_some(AllowOrigin::Echo(origin)),
        }
    }

    /// A preflight's verdict from its `Origin`, `Access-Control-Request-Method` and
    /// `Access-Control-Request-Headers`: the `Access-Control-Allow-Origin` of a `204`, or what
    /// is not allowed (the page's origin, a method other than `GET`, a header the API does not
    /// take).
    pub fn preflight<'a>(
        &self,
        origin: Option<&'a str>,
        method: Option<&str>,
        headers: Option<&str>,
    ) -> Result<AllowOrigin<'a>, String> {
        let allow = self
            .allow_origin(origin)
            .ok_or("origin not allowed (cors_origins)")?;
        if method.is_some_and(|m| m != "GET") {
            return Err("the API takes GET only".into());
        }
        let refused = headers.unwrap_or("").split(',').map(str::trim).find(|h| {
            !h.is_empty()
                && !ALLOWED_REQUEST_HEADERS
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(h))
        });
        match refused {
            Some(h) => Err(format!("header {} not allowed", h.to_ascii_lowercase())),
            None => Ok(allow),
        }
    }

    /// Whether the policy lets any browser page in (then answers vary by `Origin`).
    pub fn is_on(&self) -> bool {
        !matches!(self, CorsPolicy::Off)
    }
}

/// The value of `Access-Control-Allow-Origin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllowOrigin<'a> {
    /// `*`.
    Any,
    /// The request's own origin (then `Vary: Origin`, so a cache keeps answers apart).
    Echo(&'a str),
}

impl AllowOrigin<'_> {
    /// The header value.
    pub fn as_str(&self) -> &str {
        match self {
            AllowOrigin::Any => "*",
            AllowOrigin::Echo(o) => o,
        }
    }
}

/// `scheme://host[:port]` with scheme http or https, no path, query, user or fragment.
fn check_origin(o: &str) -> Result<(), String> {
    if o.len() > MAX_ORIGIN_LEN {
        return Err(format!("origin longer than {MAX_ORIGIN_LEN} bytes"));
    }
    let rest = o
        .strip_prefix("https://")
        .or_else(|| o.strip_prefix("http://"))
        .ok_or_else(|| format!("{o:?}: an origin is http://HOST[:PORT] or https://HOST[:PORT]"))?;
    let ok = !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    if !ok {
        return Err(format!(
            "{o:?}: an origin is http://HOST[:PORT] or https://HOST[:PORT], with no path"
        ));
    }
    if let Some((_, port)) = rest.rsplit_once(':').filter(|_| !rest.ends_with(']')) {
        if port.parse::<u16>().is_err() {
            return Err(format!("{o:?}: bad port"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn empty_is_off_star_is_any() {
        assert_eq!(CorsPolicy::parse(&[]).unwrap(), CorsPolicy::Off);
        assert_eq!(CorsPolicy::parse(&s(&["*"])).unwrap(), CorsPolicy::Any);
        assert!(CorsPolicy::parse(&s(&["*", "https://a.example"])).is_err());
    }

    #[test]
    fn a_list_echoes_only_its_origins() {
        let p = CorsPolicy::parse(&s(&["https://App.example", "http://127.0.0.1:8000"])).unwrap();
        assert_eq!(
            p.allow_origin(Some("https://app.example")),
            Some(AllowOrigin::Echo("https://app.example"))
        );
        assert_eq!(
            p.allow_origin(Some("http://127.0.0.1:8000"))
                .unwrap()
                .as_str(),
            "http://127.0.0.1:8000"
        );
        assert_eq!(p.allow_origin(Some("https://evil.example")), None);
        assert_eq!(p.allow_origin(Some("https://app.example.evil")), None);
        assert_eq!(p.allow_origin(None), None);
    }

    #[test]
    fn any_and_off() {
        assert_eq!(
            CorsPolicy::Any.allow_origin(Some("null")).unwrap().as_str(),
            "*"
        );
        assert_eq!(
            CorsPolicy::Off.allow_origin(Some("https://a.example")),
            None
        );
    }

    #[test]
    fn a_preflight_names_what_it_refuses() {
        let p = CorsPolicy::Any;
        let ok = p.preflight(
            Some("https://a.example"),
            Some("GET"),
            Some("Authorization, if-none-match,X-Cue-Priority"),
        );
        assert_eq!(ok, Ok(AllowOrigin::Any));
        assert_eq!(
            p.preflight(Some("https://a.example"), None, None),
            Ok(AllowOrigin::Any)
        );
        assert!(p
            .preflight(Some("https://a.example"), Some("DELETE"), None)
            .unwrap_err()
            .contains("GET only"));
        assert_eq!(
            p.preflight(
                Some("https://a.example"),
                Some("GET"),
                Some("authorization, X-Evil")
            ),
            Err("header x-evil not allowed".into())
        );
        assert!(p
            .preflight(None, Some("GET"), None)
            .unwrap_err()
            .contains("origin not allowed"));
        assert!(CorsPolicy::Off
            .preflight(Some("https://a.example"), Some("GET"), None)
            .is_err());
    }

    #[test]
    fn bad_origins_say_why() {
        for bad in [
            "app.example",
            "https://",
            "https://app.example/",
            "https://app.example/path",
            "ftp://app.example",
            "https://app.example:99999",
            "https://user@app.example",
            "https://app example",
        ] {
            let e = CorsPolicy::parse(&s(&[bad])).unwrap_err();
            assert!(e.contains("origin") || e.contains("port"), "{bad}: {e}");
        }
        assert!(CorsPolicy::parse(&s(&["https://[::1]:8443"])).is_ok());
        assert!(CorsPolicy::parse(&s(&["https://[::1]"])).is_ok());
    }
}
