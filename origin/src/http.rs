//! The origin's HTTP/1.1 API: publish, current cue, metrics, health.
//!
//! * `POST /v1/events/{event}/cues` `{"key":"..."}` with a publisher token -> `201` with the
//!   cue once durable; `400` bad input, `401` missing/invalid/expired token, `403` a token that
//!   is not a publisher's, `413` body too large, `429` (with `Retry-After: 1`) a tenant's quota
//!   (docs/tenants.md), `503` (with `Retry-After`) when the cue could
//!   not be made durable or the queue is full. An `Idempotency-Key` header (1-128 visible ASCII
//!   characters) makes a retry within the store's window answer with the first cue. A publisher
//!   token with an `events` claim may publish only those events (`403` for another).
//!   The body may carry `"priority":"critical|normal|background"` (default normal): the event's
//!   class at the edges (docs/protocol.md).
//! * `GET /v1/events/{event}` -> `{"event":"...","current":CUE|null}`.
//! * `GET /metrics`; `GET /healthz` -> `200 {"status":"ok"}`, or `503 {"status":"unhealthy",
//!   "reason":...}` while the store cannot make cues durable.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use crate::store::{Health, Latest, Store};
use cue_common::cue::{valid_key, EventName, Priority};
use cue_common::keys::Verifier;
use cue_common::time::unix_now_s;

/// Largest publish body accepted.
pub const MAX_BODY: usize = 4096;
/// Time a request's head has to arrive (from when the server starts waiting for it).
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Time a publish body has to arrive once the head is in.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Longest `Idempotency-Key` accepted.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

/// What the HTTP handlers need.
pub struct Api {
    /// Where publishes go.
    pub store: Store,
    /// The store's health.
    pub health: Health,
    /// Newest cue per event.
    pub latest: Latest,
    /// Token keys; `None` when auth is off (`--no-auth`).
    pub keys: Option<Verifier>,
    /// Renders `/metrics`.
    pub render_metrics: Box<dyn Fn() -> String + Send + Sync>,
    /// Counts requests by route and status.
    pub requests: cue_common::metrics::Counter,
    /// Counts refused publishes by status.
    pub refused: [cue_common::metrics::Counter; 6],
    /// Quotas and counts per tenant.
    pub tenants: crate::tenants::Tenants,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Api")
    }
}

/// Statuses counted in [`Api::refused`], in order.
pub const REFUSED_STATUSES: [u16; 6] = [400, 401, 403, 413, 429, 503];

type Resp = Response<Full<Bytes>>;

fn json(status: StatusCode, v: &serde_json::Value) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())))
        .expect("valid response")
}

fn error(status: StatusCode, msg: &str) -> Resp {
    json(status, &serde_json::json!({ "error": msg }))
}

/// Routes one request.
pub async fn handle(api: Arc<Api>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    api.requests.inc();
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    // `/v1/events/E...` is the default tenant's event E; `/v1/tenants/T/events/E...` tenant T's.
    let (tenant, segs): (Option<String>, &[&str]) = match segs.as_slice() {
        ["v1", "tenants", t, rest @ ..] if rest.first() == Some(&"events") => {
            (Some(t.to_string()), &segs[3..])
        }
        ["v1", rest @ ..] if rest.first() == Some(&"events") => (None, &segs[1..]),
        _ => (None, &segs[..]),
    };
    let tenant = tenant.as_deref();
    let resp = match (req.method(), segs) {
        (&Method::POST, ["events", event, "cues"]) => match EventName::qualify(tenant, event) {
            Ok(ev) => publish(&api, ev, req).await,
            Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
        },
        (&Method::GET, ["events", event]) => match EventName::qualify(tenant, event) {
            Ok(ev) => current(&api, ev),
            Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
        },
        (&Method::DELETE, ["events", event]) => match EventName::qualify(tenant, event) {
            Ok(ev) => retire(&api, ev, &req).await,
            Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
        },
        (&Method::GET, ["metrics"]) => Response::builder()
            .header("content-type", "text/plain; version=0.0.4")
            .body(Full::new(Bytes::from(render_metrics(&api))))
            .expect("valid response"),
        (&Method::GET, ["healthz"]) => match api.health.borrow().as_deref() {
            None => json(StatusCode::OK, &serde_json::json!({"status":"ok"})),
            Some(why) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"status":"unhealthy","reason":why}),
            ),
        },
        (_, ["events", _, "cues"]) | (_, ["events", _]) | (_, ["metrics"]) | (_, ["healthz"]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => error(StatusCode::NOT_FOUND, "no such route"),
    };
    if let Some(i) = REFUSED_STATUSES
        .iter()
        .position(|&s| s == resp.status().as_u16())
    {
        api.refused[i].inc();
    }
    Ok(resp)
}

/// `{"event": E[, "tenant": T]}` of a response about `event` (its bare name and tenant).
fn about(event: &EventName) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    m.insert("event".into(), event.local().into());
    if let Some(t) = event.tenant() {
        m.insert("tenant".into(), t.into());
    }
    m
}

fn current(api: &Api, event: EventName) -> Resp {
    let (cur, retired) = {
        let l = api.latest.read().expect("latest lock");
        (
            l.get(&event).map(|c| c.for_device().to_value()),
            l.is_retired(&event),
        )
    };
    let mut body = about(&event);
    body.insert("current".into(), cur.unwrap_or(serde_json::Value::Null));
    if retired {
        // The same shape, so a poller reads it either way.
        body.insert("error".into(), "event retired".into());
        return json(StatusCode::NOT_FOUND, &body.into());
    }
    json(StatusCode::OK, &body.into())
}

/// Checks a publisher token for `event` (its tenant's, by its bare name): the refusal to
/// answer, or `None` when it may.
fn publisher_refusal(api: &Api, event: &EventName, token: Option<&str>) -> Option<Resp> {
    let keys = api.keys.as_ref()?;
    let Some(token) = token else {
        return Some(error(
            StatusCode::UNAUTHORIZED,
            "missing token (Authorization: Bearer)",
        ));
    };
    match keys.verify(token, unix_now_s()) {
        Ok(c) if c.is_publisher() && c.tenant() != event.tenant() => Some(error(
            StatusCode::FORBIDDEN,
            &match event.tenant() {
                Some(t) => format!("publisher token is not for tenant {t}"),
                None => "publisher token is for a tenant: use /v1/tenants/TENANT/events/...".into(),
            },
        )),
        Ok(c) if c.may_publish(event.local()) => None,
        Ok(c) if c.is_publisher() => Some(error(
            StatusCode::FORBIDDEN,
            "publisher token is not allowed this event",
        )),
        Ok(_) => Some(error(
            StatusCode::FORBIDDEN,
            "token is not a publisher token",
        )),
        Err(e) => Some(error(StatusCode::UNAUTHORIZED, &e.to_string())),
    }
}

/// `DELETE /v1/events/{event}`: retires the event (publisher token allowed it). `204` once the
/// retirement is durable, `404` when the event has no cue.
async fn retire(api: &Api, event: EventName, req: &Request<Incoming>) -> Resp {
    if let Some(r) = publisher_refusal(api, &event, bearer(req)) {
        return r;
    }
    match api.store.retire(event).await {
        Ok(true) => Response::builder()
            .status(StatusCode::NO_CONTENT)
            .body(Full::new(Bytes::new()))
            .expect("valid response"),
        Ok(false) => error(StatusCode::NOT_FOUND, "no cue: never published, or retired"),
        Err(e) => unavailable(&e),
    }
}

fn bearer(req: &Request<Incoming>) -> Option<&str> {
    let v = req
        .headers()
        .get(hyper::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

async fn publish(api: &Api, event: EventName, req: Request<Incoming>) -> Resp {
    if let Some(r) = publisher_refusal(api, &event, bearer(&req)) {
        return r;
    }
    let idempotency = match req.headers().get("idempotency-key") {
        None => None,
        Some(v) => match v.to_str() {
            Ok(k)
                if (1..=MAX_IDEMPOTENCY_KEY).contains(&k.len())
                    && k.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                Some(k.to_string())
            }
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "Idempotency-Key must be 1-128 visible ASCII characters",
                )
            }
        },
    };
    let body = match tokio::time::timeout(
        BODY_TIMEOUT,
        Limited::new(req.into_body(), MAX_BODY).collect(),
    )
    .await
    {
        Err(_) => return error(StatusCode::REQUEST_TIMEOUT, "body not received within 10 s"),
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return error(StatusCode::PAYLOAD_TOO_LARGE, "body larger than 4096 bytes")
        }
        Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, &format!("reading body: {e}")),
    };
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        key: String,
        #[serde(default)]
        priority: Option<String>,
    }
    let (key, priority) = match serde_json::from_slice::<Body>(&body) {
        Ok(b) => (b.key, b.priority),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("body must be {{\"key\":\"...\"[,\"priority\":\"...\"]}}: {e}"),
            )
        }
    };
    let class = match priority.as_deref().map(Priority::parse) {
        None => Priority::Normal,
        Some(Some(p)) => p,
        Some(None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "priority must be critical, normal or background",
            )
        }
    };
    if !valid_key(&key) {
        return error(
            StatusCode::BAD_REQUEST,
            "key must be 1-64 chars of [A-Za-z0-9._:-]",
        );
    }
    // The tenant's quotas (a new event counts against max_events; its events are counted
    // only then).
    let new_event = !api.latest.read().expect("latest lock").contains_key(&event);
    let count = || {
        let l = api.latest.read().expect("latest lock");
        l.keys().filter(|e| e.tenant() == event.tenant()).count()
    };
    if let Err(q) = api
        .tenants
        .admit(&event, new_event, count, std::time::Instant::now())
    {
        let mut r = json(
            StatusCode::TOO_MANY_REQUESTS,
            &serde_json::json!({
                "error": q.to_string(),
                "tenant": q.tenant,
                "quota": q.kind.as_str(),
                "limit": q.limit,
            }),
        );
        r.headers_mut()
            .insert("retry-after", hyper::header::HeaderValue::from(1u32));
        return r;
    }
    match api
        .store
        .publish(event, &key, class, idempotency.as_deref())
        .await
    {
        Ok(cue) => {
            api.tenants.published(cue.event().tenant());
            let mut body = cue.for_device().to_value();
            if let Some(t) = cue.event().tenant() {
                body["tenant"] = t.into();
            }
            json(StatusCode::CREATED, &body)
        }
        Err(e) => unavailable(&e),
    }
}

/// `503` with the store's reason and `Retry-After`.
fn unavailable(e: &crate::store::PublishError) -> Resp {
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
    r.headers_mut().insert(
        "retry-after",
        hyper::header::HeaderValue::from(e.retry_after_s()),
    );
    r
}

fn render_metrics(api: &Api) -> String {
    use cue_common::metrics::{header, sample, single};
    let mut s = (api.render_metrics)();
    api.tenants.render(&mut s);
    cue_common::metrics::build_info(&mut s, "origin");
    cue_common::metrics::process(&mut s);
    single(
        &mut s,
        "cue_origin_http_requests_total",
        "counter",
        "HTTP requests.",
        api.requests.get(),
    );
    header(
        &mut s,
        "cue_origin_http_refused_total",
        "counter",
        "HTTP requests refused, by status.",
    );
    for (i, st) in REFUSED_STATUSES.iter().enumerate() {
        sample(
            &mut s,
            "cue_origin_http_refused_total",
            &format!("status=\"{st}\""),
            api.refused[i].get(),
        );
    }
    s
}
