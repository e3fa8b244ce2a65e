//! The HTTP API (HTTP/1.1, JSON):
//!
//! * `GET /v1/events/{event}/prefetch?device=ID` (device token) -> `200
//!   {"event","device","stages":{...}}` with `Cache-Control: max-age=N` (the event's TTL with
//!   jitter) and an `ETag`; `304` on a matching `If-None-Match`. `X-Cue-Priority:
//!   critical|normal|background` (default normal) decides who is shed (`503` + `Retry-After`).
//! * `GET /v1/events/{event}/schedule?device=ID` -> `{"prefetch_at":TS_MS,...}`. Never shed: it
//!   is cheap and it is what spreads the load. A token is optional here (the answer is a time
//!   derived from the device id), but a bad one is refused.
//! * `GET /metrics`, `GET /healthz`.
//! * CORS for browser devices on every `/v1/` answer, and `OPTIONS` preflights (`cors.rs`).
//!
//! Order of checks for a prefetch: route, priority header and query (400), token (401), event
//! (404), token allows the event (403), shedding (503), then the map.
//! `device` defaults to the token's `sub`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cue_common::time::unix_now_s;
use cue_common::token::{Claims, TokenError};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, AUTHORIZATION, CACHE_CONTROL,
    CONTENT_TYPE, ETAG, IF_NONE_MATCH, ORIGIN, RETRY_AFTER, VARY,
};
use hyper::{Method, Request, Response, StatusCode};

use crate::app::App;
use crate::catalog::EventSpec;
use crate::cors::{self, CorsPolicy};
use crate::metrics::ClassMetrics;
use crate::query::{self, PrefetchQuery};
use crate::schedule::{jittered_max_age, prefetch_at, retry_after_s};
use crate::shed::{admit, Decision, Priority};
use crate::template::{if_none_match, StageTemplate};
use crate::upstream::UpstreamError;

type Resp = Response<Full<Bytes>>;

fn json(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(body.into()))
        .expect("valid response")
}

fn error(status: StatusCode, msg: &str) -> Resp {
    json(status, serde_json::json!({ "error": msg }).to_string())
}

fn unavailable(app: &App, msg: &str) -> Resp {
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, msg);
    let secs = retry_after_s(app.retry_after_s, app.unit());
    r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
    r
}

/// Counts requests in flight for the load signal.
struct InFlight<'a>(&'a App);

impl<'a> InFlight<'a> {
    fn new(app: &'a App) -> Self {
        app.metrics.in_flight.add(1);
        Self(app)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.metrics.in_flight.add(-1);
    }
}

/// Routes one request.
pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let _g = InFlight::new(&app);
    app.metrics.requests.inc();
    let path = req.uri().path();
    let api = path.starts_with("/v1/");
    let mut resp = if req.method() == Method::OPTIONS && api {
        preflight(&app, &req)
    } else if let Some(rest) = path.strip_prefix("/v1/events/") {
        match (req.method(), rest.split_once('/')) {
            (&Method::GET, Some((event, "prefetch"))) => {
                let event = event.to_string();
                prefetch(&app, &req, &event).await
            }
            (&Method::GET, Some((event, "schedule"))) => schedule(&app, &req, event),
            (_, Some((_, "prefetch" | "schedule"))) => {
                error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            _ => error(StatusCode::NOT_FOUND, "no such route"),
        }
    } else {
        match (req.method(), path) {
            (&Method::GET, "/metrics") => Response::builder()
                .header(CONTENT_TYPE, "text/plain; version=0.0.4")
                .body(Full::new(Bytes::from(render_metrics(&app))))
                .expect("valid response"),
            (&Method::GET, "/healthz") => json(StatusCode::OK, health(&app)),
            (_, "/metrics" | "/healthz") => {
                error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            _ => error(StatusCode::NOT_FOUND, "no such route"),
        }
    };
    if api && req.method() != Method::OPTIONS {
        cors_headers(&app, &req, &mut resp);
    }
    app.metrics.response(resp.status().as_u16());
    Ok(resp)
}

fn origin_of(req: &Request<Incoming>) -> Option<&str> {
    req.headers().get(ORIGIN).and_then(|v| v.to_str().ok())
}

/// CORS headers on an API answer (every status: a page must read a 503's `Retry-After` too).
fn cors_headers(app: &App, req: &Request<Incoming>, resp: &mut Resp) {
    if !app.cors.is_on() {
        return;
    }
    let h = resp.headers_mut();
    if let Some(allow) = app.cors.allow_origin(origin_of(req)) {
        if let Ok(v) = HeaderValue::from_str(allow.as_str()) {
            h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, v);
            h.insert(
                ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(cors::EXPOSE_HEADERS),
            );
        }
    }
    if matches!(app.cors, CorsPolicy::Only(_)) {
        h.append(VARY, HeaderValue::from_static("Origin"));
    }
}

/// A CORS preflight: `204` with what the API takes when the page's origin, the method (`GET`)
/// and the headers asked for are allowed; else `403` naming what is not (the browser then
/// refuses the request without sending it).
fn preflight(app: &App, req: &Request<Incoming>) -> Resp {
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    let verdict = app.cors.preflight(
        origin_of(req),
        header(ACCESS_CONTROL_REQUEST_METHOD),
        header(ACCESS_CONTROL_REQUEST_HEADERS),
    );
    let allow = match verdict {
        Ok(a) => a,
        Err(why) => {
            app.metrics.cors_refused.inc();
            return error(StatusCode::FORBIDDEN, &why);
        }
    };
    app.metrics.cors_preflights.inc();
    let mut r = Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(Full::new(Bytes::new()))
        .expect("valid response");
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(allow.as_str()) {
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    h.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET"),
    );
    h.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(cors::ALLOW_HEADERS),
    );
    h.insert(
        ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from(cors::PREFLIGHT_MAX_AGE_S),
    );
    if matches!(app.cors, CorsPolicy::Only(_)) {
        h.insert(VARY, HeaderValue::from_static("Origin"));
    }
    r
}

fn bearer<'a>(req: &'a Request<Incoming>, q: &'a PrefetchQuery<'a>) -> Option<&'a str> {
    if let Some(v) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some((scheme, t)) = v.split_once(' ') {
            if scheme.eq_ignore_ascii_case("bearer") {
                return Some(t.trim());
            }
        }
    }
    q.token.as_deref()
}

/// Verifies the token when auth is on (`Ok(None)` when it is off); the error is the 401's
/// message.
fn authenticate(app: &App, token: Option<&str>) -> Result<Option<Claims>, String> {
    let keys = app.keys.read().expect("keys lock");
    let Some(keys) = keys.as_ref() else {
        return Ok(None);
    };
    match keys.verify(token.unwrap_or(""), unix_now_s()) {
        Ok(c) if c.events.is_some() && !c.is_publisher() => Ok(Some(c)),
        Ok(_) => Err("not a device token (no events claim)".into()),
        Err(TokenError::Missing) => Err("missing token (Authorization: Bearer, or token=)".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A refusal (status and message), made a response by the caller.
struct Refusal(StatusCode, String);

impl Refusal {
    fn into_resp(self) -> Resp {
        error(self.0, &self.1)
    }
}

/// A prefetch request that passed every check but shedding.
struct Checked<'a> {
    class: Priority,
    device: &'a str,
    spec: Option<Arc<EventSpec>>,
    /// The event's name in the catalog, the live set and the upstream cache: `TENANT/EVENT`
    /// for a device of a tenant (its token says which), the bare name for the default tenant.
    key: String,
}

/// The catalog name of the URL's bare `event` for a device of `claims`' tenant; `None` when
/// the name is no event name (the caller answers 404).
fn catalog_key(claims: Option<&Claims>, event: &str) -> Option<String> {
    cue_common::cue::EventName::qualify(claims.and_then(Claims::tenant), event)
        .ok()
        .map(|e| e.as_str().to_string())
}

/// The device a request is about: `device=`, else the token's `sub`. With a token, `device=`
/// must be its `sub` (403 otherwise): one device's personalised map is not another's.
fn device_of<'a>(q: &'a PrefetchQuery<'a>, claims: Option<&'a Claims>) -> Result<&'a str, Refusal> {
    match (&q.device, claims.and_then(|c| c.sub.as_deref())) {
        (Some(d), Some(sub)) if d.as_ref() != sub => Err(Refusal(
            StatusCode::FORBIDDEN,
            "device= is not this token's device (sub)".into(),
        )),
        (Some(_), None) if claims.is_some() => Err(Refusal(
            StatusCode::FORBIDDEN,
            "token has no device (sub)".into(),
        )),
        (Some(d), _) => Ok(d.as_ref()),
        (None, Some(sub)) if !sub.is_empty() && sub.len() <= query::MAX_DEVICE => Ok(sub),
        _ => Err(Refusal(
            StatusCode::BAD_REQUEST,
            "device missing (device=ID)".into(),
        )),
    }
}

/// Priority (400), token (401), event (404), token allows the event (403), device (400).
fn check<'a>(
    app: &App,
    req: &Request<Incoming>,
    q: &'a PrefetchQuery<'a>,
    claims: &'a mut Option<Claims>,
    event: &str,
) -> Result<Checked<'a>, Refusal> {
    let class = match req.headers().get("x-cue-priority") {
        None => Priority::Normal,
        Some(v) => v.to_str().ok().and_then(Priority::parse).ok_or_else(|| {
            Refusal(
                StatusCode::BAD_REQUEST,
                "X-Cue-Priority must be critical, normal or background".into(),
            )
        })?,
    };
    *claims =
        authenticate(app, bearer(req, q)).map_err(|m| Refusal(StatusCode::UNAUTHORIZED, m))?;
    // `critical` (never shed) is the token's to grant; asked for without the claim it is
    // `normal`. With auth off the header is taken as it is.
    let class = match (class, claims.as_ref()) {
        (Priority::Critical, Some(c)) if !c.grants_critical() => {
            app.metrics.critical_demoted.inc();
            Priority::Normal
        }
        (c, _) => c,
    };
    app.metrics.class[class.index()].requests.inc();
    app.metrics
        .tenant_request(claims.as_ref().and_then(|c| c.tenant()));
    let Some(key) = catalog_key(claims.as_ref(), event) else {
        return Err(Refusal(StatusCode::NOT_FOUND, "unknown event".into()));
    };
    let spec = app.catalog.read().expect("catalog lock").get(&key).cloned();
    if spec.is_none() && app.upstream.as_ref().is_none_or(|u| !u.serves(&key)) {
        return Err(Refusal(StatusCode::NOT_FOUND, "unknown event".into()));
    }
    if claims.as_ref().is_some_and(|c| !c.allows_event(event)) {
        return Err(Refusal(
            StatusCode::FORBIDDEN,
            "token does not allow this event".into(),
        ));
    }
    let device = device_of(q, claims.as_ref())?;
    Ok(Checked {
        class,
        device,
        spec,
        key,
    })
}

async fn prefetch(app: &Arc<App>, req: &Request<Incoming>, event: &str) -> Resp {
    let t0 = Instant::now();
    let q = match query::parse(req.uri().query().unwrap_or("")) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let mut claims = None;
    let Checked {
        class,
        device,
        spec,
        key,
    } = match check(app, req, &q, &mut claims, event) {
        Ok(c) => c,
        Err(r) => return r.into_resp(),
    };
    let cm = &app.metrics.class[class.index()];

    let live = spec.as_ref().is_some_and(|s| {
        app.live
            .read()
            .expect("live lock")
            .is_live(&key, s.window, now_ms())
    });
    if admit(class, app.load_level(), live) == Decision::Shed {
        cm.shed.inc();
        let why = if live {
            "event is live: shedding lower priorities"
        } else {
            "overloaded: shedding lower priorities"
        };
        return unavailable(app, why);
    }

    let ttl_s = spec.as_ref().map_or(app.default_ttl_s, |s| s.ttl_s);
    let embedded = spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .filter(|_| app.upstream.is_none());
    let template: Arc<StageTemplate> = match embedded {
        Some(t) => t,
        None => match app
            .upstream_map(&key, device, Duration::from_secs(ttl_s))
            .await
        {
            Ok(t) => t,
            Err(UpstreamError::NotFound) => {
                return error(StatusCode::NOT_FOUND, "unknown event or device (upstream)")
            }
            Err(e) => return unavailable(app, &e.to_string()),
        },
    };
    let resp = respond(app, req, &template, device, ttl_s, cm);
    cm.latency.observe_us(t0.elapsed().as_micros() as u64);
    resp
}

/// 200 with the map, or 304 when `If-None-Match` matches; `ETag` and jittered `max-age` on both.
fn respond(
    app: &App,
    req: &Request<Incoming>,
    template: &StageTemplate,
    device: &str,
    ttl_s: u64,
    cm: &ClassMetrics,
) -> Resp {
    let etag = template.etag(device);
    let max_age = jittered_max_age(ttl_s, app.max_age_jitter, app.unit());
    let matched = req
        .headers()
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| if_none_match(v, &etag));
    let mut resp = if matched {
        cm.not_modified.inc();
        Response::builder()
            .status(StatusCode::NOT_MODIFIED)
            .body(Full::new(Bytes::new()))
            .expect("valid response")
    } else {
        cm.served.inc();
        json(StatusCode::OK, template.render(device))
    };
    let h = resp.headers_mut();
    h.insert(ETAG, HeaderValue::from_str(&etag).expect("hex etag"));
    h.insert(
        CACHE_CONTROL,
        HeaderValue::from_str(&format!("max-age={max_age}")).expect("ascii"),
    );
    resp
}

fn schedule(app: &App, req: &Request<Incoming>, event: &str) -> Resp {
    let q = match query::parse(req.uri().query().unwrap_or("")) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let token = bearer(req, &q);
    let claims = match token {
        Some(_) => match authenticate(app, token) {
            Ok(c) => c,
            Err(m) => return error(StatusCode::UNAUTHORIZED, &m),
        },
        None => None,
    };
    let spec = catalog_key(claims.as_ref(), event)
        .and_then(|k| app.catalog.read().expect("catalog lock").get(&k).cloned());
    let Some(spec) = spec else {
        return error(StatusCode::NOT_FOUND, "unknown event");
    };
    let device = match device_of(&q, claims.as_ref()) {
        Ok(d) => d,
        Err(r) => return r.into_resp(),
    };
    app.metrics.schedules.inc();
    let at = prefetch_at(spec.window, device);
    json(
        StatusCode::OK,
        serde_json::json!({
            "prefetch_at": at,
            "event": event,
            "device": device,
            "window": {"start_ms": spec.window.start_ms, "end_ms": spec.window.end_ms},
        })
        .to_string(),
    )
}

fn health(app: &App) -> String {
    let cat = app.catalog.read().expect("catalog lock").clone();
    let now = now_ms();
    let live = app.live.read().expect("live lock");
    let mut live_events: Vec<&str> = cat
        .events
        .values()
        .filter(|s| live.is_live(&s.name, s.window, now))
        .map(|s| s.name.as_str())
        .collect();
    live_events.sort();
    serde_json::json!({
        "status": "ok",
        "events": cat.events.len(),
        "live": live_events,
        "load_level": app.load_level() as u8,
        "source": if app.upstream.is_some() { "upstream" } else { "catalog" },
    })
    .to_string()
}

fn render_metrics(app: &App) -> String {
    let cache = app.upstream.as_ref().map(|u| {
        let c = u.cache.lock().expect("cache lock");
        (c.stats(), c.len(), c.bytes())
    });
    let mut s = app.metrics.render(cache);
    cue_common::metrics::build_info(&mut s, "prefetch");
    cue_common::metrics::process(&mut s);
    s
}
