//! The upstream recommendation service: a URL template, and a pooled HTTP/1.1 client (hyper)
//! with a whole-call timeout, bounded concurrency and a bounded answer size. The answer is the
//! `stages` object (or `{"stages":{...}}`), checked with the catalog's limits and compiled like a
//! catalog map, so `{device}` works in upstream maps too.
//!
//! The same client polls the origin's `GET /v1/events/{event}` for the live signal.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;
use tokio::time::{timeout_at, Instant};

use crate::catalog::{check_stages, parse_bounded, CatalogLimits};
use crate::query::encode;
use crate::template::StageTemplate;

/// A parsed `--upstream` template: `http://HOST[:PORT]/PATH?..{event}..{device}..`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlTemplate {
    /// Literal pieces and placeholders, in order.
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Event,
    Device,
    Tenant,
}

impl UrlTemplate {
    /// Parses and checks a template: plain `http://` (the upstream sits next to the service),
    /// a host, `{event}` somewhere; `{device}` optional (without it, one map per event is
    /// fetched and shared by every device, personalised by `{device}` inside it).
    pub fn parse(s: &str) -> Result<Self, String> {
        parse_http_base(s)?;
        if !s.contains("{event}") {
            return Err(format!("{s:?} has no {{event}} placeholder"));
        }
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(i) = rest.find('{') {
            let (lit, tail) = rest.split_at(i);
            if !lit.is_empty() {
                parts.push(Part::Lit(lit.to_string()));
            }
            if let Some(t) = tail.strip_prefix("{event}") {
                parts.push(Part::Event);
                rest = t;
            } else if let Some(t) = tail.strip_prefix("{device}") {
                parts.push(Part::Device);
                rest = t;
            } else if let Some(t) = tail.strip_prefix("{tenant}") {
                parts.push(Part::Tenant);
                rest = t;
            } else {
                return Err(format!(
                    "{s:?}: only {{event}}, {{device}} and {{tenant}} may appear in braces"
                ));
            }
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_string()));
        }
        let t = Self { parts };
        t.expand("e", "d")
            .parse::<Uri>()
            .map_err(|e| format!("{s:?}: not a URL: {e}"))?;
        Ok(t)
    }

    /// True when the URL names the device (one upstream map per device).
    pub fn per_device(&self) -> bool {
        self.parts.contains(&Part::Device)
    }

    /// True when the URL names the tenant (so tenants' events may be fetched from it).
    pub fn per_tenant(&self) -> bool {
        self.parts.contains(&Part::Tenant)
    }

    /// The URL for `event` and `device` of the default tenant, both percent-encoded.
    pub fn expand(&self, event: &str, device: &str) -> String {
        self.expand_for(None, event, device)
    }

    /// The URL for the bare `event` of `tenant` and `device`, percent-encoded; `{tenant}` is
    /// the tenant's name, `_default` for the default tenant.
    pub fn expand_for(&self, tenant: Option<&str>, event: &str, device: &str) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(l) => out.push_str(l),
                Part::Event => out.push_str(&encode(event)),
                Part::Device => out.push_str(&encode(device)),
                Part::Tenant => out.push_str(&encode(tenant.unwrap_or("_default"))),
            }
        }
        out
    }
}

/// Checks `s` is `http://HOST[:PORT]...` and returns it without a trailing `/`.
pub fn parse_http_base(s: &str) -> Result<&str, String> {
    let rest = s
        .strip_prefix("http://")
        .ok_or_else(|| format!("{s:?} must start with http://"))?;
    let host = rest.split(['/', '?']).next().unwrap_or("");
    if host.is_empty() {
        return Err(format!("{s:?} has no host"));
    }
    Ok(s.trim_end_matches('/'))
}

/// Why an upstream (or origin) call failed. Every variant but `NotFound` is worth retrying later.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// 404: the upstream does not know this event/device; answered as 404.
    #[error("upstream: not found")]
    NotFound,
    /// Another non-200 status.
    #[error("upstream: status {0}")]
    Status(u16),
    /// No answer within the timeout (including the wait for a concurrency slot).
    #[error("upstream: timed out after {0:?}")]
    Timeout(Duration),
    /// Connection or protocol failure.
    #[error("upstream: {0}")]
    Io(String),
    /// The answer is larger than the limit.
    #[error("upstream: answer larger than {0} bytes")]
    TooLarge(usize),
    /// The answer is not a valid stage map.
    #[error("upstream: bad answer: {0}")]
    BadBody(String),
    /// Not called: too many requests already wait for this key, or the cache has no room for
    /// another call in flight.
    #[error("too many requests waiting for the upstream")]
    Busy,
}

impl UpstreamError {
    /// Label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::Status(_) => "status",
            Self::Timeout(_) => "timeout",
            Self::Io(_) => "io",
            Self::TooLarge(_) => "too_large",
            Self::BadBody(_) => "bad_body",
            Self::Busy => "busy",
        }
    }
}

/// A pooled HTTP/1.1 client with bounded concurrency.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Empty<Bytes>>,
    permits: Arc<Semaphore>,
    timeout: Duration,
    max_bytes: usize,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpClient")
    }
}

impl HttpClient {
    /// A client allowing `concurrency` calls at once, each bounded by `timeout` and `max_bytes`.
    pub fn new(concurrency: usize, timeout: Duration, max_bytes: usize) -> Self {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(concurrency)
            .build(conn);
        Self {
            client,
            permits: Arc::new(Semaphore::new(concurrency)),
            timeout,
            max_bytes,
        }
    }

    /// `GET url`; the body of a 200 answer.
    pub async fn get(&self, url: &str) -> Result<Bytes, UpstreamError> {
        let deadline = Instant::now() + self.timeout;
        let to = UpstreamError::Timeout(self.timeout);
        let uri: Uri = url
            .parse()
            .map_err(|e| UpstreamError::Io(format!("bad URL {url}: {e}")))?;
        let _permit = timeout_at(deadline, self.permits.acquire())
            .await
            .map_err(|_| to.clone())?
            .map_err(|_| UpstreamError::Io("client closed".into()))?;
        let resp = timeout_at(deadline, self.client.get(uri))
            .await
            .map_err(|_| to.clone())?
            .map_err(|e| UpstreamError::Io(e.to_string()))?;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Err(UpstreamError::NotFound),
            s => return Err(UpstreamError::Status(s.as_u16())),
        }
        let body = timeout_at(
            deadline,
            Limited::new(resp.into_body(), self.max_bytes).collect(),
        )
        .await
        .map_err(|_| to)?;
        match body {
            Ok(b) => Ok(b.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                Err(UpstreamError::TooLarge(self.max_bytes))
            }
            Err(e) => Err(UpstreamError::Io(e.to_string())),
        }
    }
}

/// Parses an upstream answer for `event` into a compiled map.
pub fn parse_answer(
    event: &str,
    body: &[u8],
    limits: &CatalogLimits,
) -> Result<StageTemplate, UpstreamError> {
    let v = parse_bounded(body, limits).map_err(|p| UpstreamError::BadBody(p.to_string()))?;
    // `{"stages":{...}}` is accepted as a wrapper when it is the only key.
    let stages = match v.as_object() {
        Some(o) if o.len() == 1 && o.get("stages").is_some_and(|s| s.is_object()) => &o["stages"],
        _ => &v,
    };
    let m = check_stages(stages, limits).map_err(|p| UpstreamError::BadBody(p.to_string()))?;
    Ok(StageTemplate::compile(event, m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_placeholder_names_the_tenant() {
        let t = UrlTemplate::parse("http://h/{tenant}/recs?event={event}").unwrap();
        assert!(t.per_tenant() && !t.per_device());
        assert_eq!(
            t.expand_for(Some("acme"), "fight", "d"),
            "http://h/acme/recs?event=fight"
        );
        assert_eq!(
            t.expand_for(None, "fight", "d"),
            "http://h/_default/recs?event=fight"
        );
        assert!(!UrlTemplate::parse("http://h/{event}").unwrap().per_tenant());
        assert!(UrlTemplate::parse("http://h/{event}/{who}").is_err());
    }

    #[test]
    fn templates() {
        let t =
            UrlTemplate::parse("http://127.0.0.1:9000/recs?event={event}&device={device}").unwrap();
        assert!(t.per_device());
        assert_eq!(
            t.expand("fight", "tv 1/é"),
            "http://127.0.0.1:9000/recs?event=fight&device=tv%201%2F%C3%A9"
        );
        let shared = UrlTemplate::parse("http://h/{event}.json").unwrap();
        assert!(!shared.per_device());
        assert!(UrlTemplate::parse("https://h/{event}")
            .unwrap_err()
            .contains("http://"));
        assert!(UrlTemplate::parse("http://h/x")
            .unwrap_err()
            .contains("{event}"));
        assert!(UrlTemplate::parse("http://h/{event}/{user}")
            .unwrap_err()
            .contains("braces"));
        assert!(UrlTemplate::parse("http:///{event}")
            .unwrap_err()
            .contains("no host"));
    }

    #[test]
    fn answers() {
        let l = CatalogLimits::default();
        let t = parse_answer("e", br#"{"r1":{"u":"{device}"}}"#, &l).unwrap();
        assert_eq!(t.stages(), 1);
        let w = parse_answer("e", br#"{"stages":{"r1":1,"r2":2}}"#, &l).unwrap();
        assert_eq!(w.stages(), 2);
        assert!(matches!(
            parse_answer("e", b"[1]", &l),
            Err(UpstreamError::BadBody(_))
        ));
        assert!(matches!(
            parse_answer("e", br#"{"bad key":1}"#, &l),
            Err(UpstreamError::BadBody(_))
        ));
    }
}
