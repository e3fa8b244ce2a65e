//! The real `cue-prefetch` binary on loopback, against a catalog written here, a real
//! `cue-origin` (live signal) and a real upstream HTTP server (slow, failing, flapping).

mod support;

use std::collections::HashSet;
use std::time::Duration;

use cue_testkit::client::request;
use serde_json::{json, Value};
use support::*;

fn body(r: &cue_testkit::client::Response) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
}

#[test]
fn contract_against_a_catalog() {
    let dir = tempfile::tempdir().unwrap();
    write_event(
        dir.path(),
        "fight-night",
        &json!({"window": window_now(), "ttl_s": 600, "stages": {
            "round-1": {"hero": "https://cdn.example/{device}/r1.jpg", "tags": ["for-{device}", 3]},
            "round-2": {"{device}": null, "n": 2.5}
        }}),
    );
    write_event(
        dir.path(),
        "gala",
        &json!({"window": window_now(), "ttl_s": 60, "stages": {"intro": "x"}}),
    );
    let p = start_prefetch(dir.path(), &["--origin-http", ""]);
    let tok = device_token("tv-1", &["fight-night"]);

    // 200, {device} everywhere in strings, Cache-Control with jitter, ETag.
    let r = p.prefetch(
        "fight-night",
        "tv-42",
        &device_token("tv-42", &["fight-night"]),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        body(&r),
        json!({"event": "fight-night", "device": "tv-42", "stages": {
            "round-1": {"hero": "https://cdn.example/tv-42/r1.jpg", "tags": ["for-tv-42", 3]},
            "round-2": {"tv-42": null, "n": 2.5}
        }})
    );
    let etag = r.header("etag").unwrap().to_string();
    let mut ages = HashSet::new();
    for _ in 0..20 {
        let r = p.prefetch(
            "fight-night",
            "tv-42",
            &device_token("tv-42", &["fight-night"]),
            None,
        );
        assert_eq!(r.header("etag"), Some(etag.as_str()), "same map, same tag");
        let cc = r.header("cache-control").unwrap();
        let age: u64 = cc.strip_prefix("max-age=").unwrap().parse().unwrap();
        assert!(
            (480..=600).contains(&age),
            "{cc}: ttl 600 with the default 0.2 jitter"
        );
        ages.insert(age);
    }
    assert!(ages.len() > 5, "max-age is jittered per response: {ages:?}");
    assert_ne!(
        p.prefetch(
            "fight-night",
            "tv-43",
            &device_token("tv-43", &["fight-night"]),
            None
        )
        .header("etag"),
        Some(etag.as_str())
    );

    // 304 on If-None-Match, with the headers again and no body.
    let auth = format!("Bearer {}", device_token("tv-42", &["fight-night"]));
    let r = p.get(
        "/v1/events/fight-night/prefetch?device=tv-42",
        &[("Authorization", &auth), ("If-None-Match", &etag)],
    );
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert!(r.header("cache-control").unwrap().starts_with("max-age="));
    let r = p.get(
        "/v1/events/fight-night/prefetch?device=tv-42",
        &[("Authorization", &auth), ("If-None-Match", "\"other\"")],
    );
    assert_eq!(r.status, 200);

    // Token in the query (browsers); device defaults to the token's sub; device ids are escaped.
    let r = p.get(&format!("/v1/events/fight-night/prefetch?token={tok}"), &[]);
    assert_eq!(body(&r)["device"], "tv-1");
    let r = p.prefetch(
        "fight-night",
        "a%22b%20c",
        &device_token("a\"b c", &["fight-night"]),
        None,
    );
    assert_eq!(body(&r)["stages"]["round-1"]["tags"][0], "for-a\"b c");

    // Refusals.
    let r = p.get("/v1/events/fight-night/prefetch?device=d", &[]);
    assert_eq!(r.status, 401, "missing token");
    assert_eq!(p.prefetch("fight-night", "d", "garbage", None).status, 401);
    let expired = keys().mint_device(
        "d",
        &["*".into()],
        cue_common::time::unix_now_s() - 7200,
        3600,
    );
    assert_eq!(p.prefetch("fight-night", "d", &expired, None).status, 401);
    let publisher = keys().mint_publisher(cue_common::time::unix_now_s(), 60);
    assert_eq!(
        p.prefetch("fight-night", "d", &publisher, None).status,
        401,
        "not a device token"
    );
    let star = device_token("d", &["*"]);
    // A device token fetches its own map only.
    let r = p.prefetch("fight-night", "tv-99", &tok, None);
    assert_eq!(r.status, 403, "tv-1's token for tv-99's map: {}", r.body);
    assert_eq!(
        p.prefetch("no-such-event", "d", &device_token("d", &["*"]), None)
            .status,
        404
    );
    assert_eq!(
        p.prefetch("BadName", "d", &device_token("d", &["*"]), None)
            .status,
        404
    );
    assert_eq!(
        p.prefetch("gala", "d", &device_token("d", &["fight-night"]), None)
            .status,
        403,
        "token is for fight-night only"
    );
    assert_eq!(
        p.prefetch("gala", "d", &device_token("d", &["*"]), None)
            .status,
        200
    );
    assert_eq!(
        p.prefetch("gala", "d", &device_token("d", &["*"]), Some("urgent"))
            .status,
        400
    );
    assert_eq!(
        p.get(
            "/v1/events/gala/prefetch?device=",
            &[("Authorization", &format!("Bearer {star}"))]
        )
        .status,
        400
    );
    assert_eq!(
        request_method(&p, "POST", "/v1/events/gala/prefetch?device=d").status,
        405
    );

    // The schedule: inside the window, stable per device, spread over a fleet.
    let w = body(&p.get("/v1/events/fight-night/schedule?device=x", &[]))["window"].clone();
    let (start, end) = (
        w["start_ms"].as_u64().unwrap(),
        w["end_ms"].as_u64().unwrap(),
    );
    let at = |d: &str| {
        body(&p.get(&format!("/v1/events/fight-night/schedule?device={d}"), &[]))["prefetch_at"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(at("tv-42"), at("tv-42"));
    let mut slots = [0u32; 4];
    for i in 0..200 {
        let t = at(&format!("dev-{i}"));
        assert!((start..end).contains(&t));
        slots[((t - start) * 4 / (end - start)) as usize] += 1;
    }
    assert!(
        slots.iter().all(|&n| (30..=70).contains(&n)),
        "spread over the window: {slots:?}"
    );
    assert_eq!(p.get("/v1/events/nope/schedule?device=x", &[]).status, 404);
    assert_eq!(
        p.get(
            "/v1/events/gala/schedule?device=x",
            &[("Authorization", "Bearer bad")]
        )
        .status,
        401
    );

    let m = p.get("/metrics", &[]).body;
    assert!(
        m.contains("cue_prefetch_served_total{class=\"normal\"}"),
        "{m}"
    );
    assert!(p.metric("cue_prefetch_not_modified_total{class=\"normal\"}") >= 1.0);
    let h = body(&p.get("/healthz", &[]));
    assert_eq!(h["status"], "ok");
    assert_eq!(h["events"], 2);
}

fn request_method(p: &Prefetch, method: &str, path: &str) -> cue_testkit::client::Response {
    cue_testkit::client::request(p.http, method, path, &[], b"").unwrap()
}

#[test]
fn live_event_sheds_background_and_serves_critical() {
    let origin = start_origin();
    let dir = tempfile::tempdir().unwrap();
    let stages = json!({"round-1": {"x": "{device}"}});
    write_event(
        dir.path(),
        "fight",
        &json!({"window": window_now(), "ttl_s": 600, "stages": stages}),
    );
    write_event(
        dir.path(),
        "quiet",
        &json!({"window": window_now(), "ttl_s": 600, "stages": stages}),
    );
    let n = now_ms();
    let past = json!({"start_ms": n - 7_200_000, "end_ms": n - 3_600_000});
    write_event(
        dir.path(),
        "rerun",
        &json!({"window": past, "ttl_s": 600, "stages": stages}),
    );
    let origin_url = format!("http://{}", origin.http);
    let p = start_prefetch(
        dir.path(),
        &["--origin-http", &origin_url, "--live-poll-ms", "100"],
    );

    // Not live yet: every class is served.
    for c in ["critical", "normal", "background"] {
        assert_eq!(
            p.prefetch("fight", "d", &device_token("d", &["*"]), Some(c))
                .status,
            200,
            "{c} before the event is live"
        );
    }
    origin.publish("fight", "round-1");
    origin.publish("rerun", "round-1");
    wait_until(Duration::from_secs(10), || {
        p.prefetch("fight", "d", &device_token("d", &["*"]), Some("background"))
            .status
            == 503
    });

    let r = p.prefetch("fight", "d", &device_token("d", &["*"]), Some("background"));
    assert_eq!(r.status, 503);
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (5..=10).contains(&retry),
        "jittered Retry-After in [5, 10]: {retry}"
    );
    assert_eq!(
        p.prefetch("fight", "d", &critical_token("d"), Some("critical"))
            .status,
        200,
        "critical is never shed"
    );
    // Asking for critical without the claim is asking for normal.
    let before = p.metric("cue_prefetch_critical_demoted_total");
    let r = p.prefetch("fight", "d", &device_token("d", &["*"]), Some("critical"));
    assert_eq!(r.status, 200, "normal, not shed while unloaded");
    assert_eq!(
        p.metric("cue_prefetch_critical_demoted_total"),
        before + 1.0
    );
    let r = p.prefetch("fight", "d", &device_token("d", &["*"]), Some("background"));
    assert_eq!(r.status, 503, "a header alone cannot lift a request");
    assert_eq!(
        p.prefetch("fight", "d", &device_token("d", &["*"]), None)
            .status,
        200,
        "normal is shed only when live and loaded"
    );
    // Another event with no cue, and an event whose window is over, are not live.
    assert_eq!(
        p.prefetch("quiet", "d", &device_token("d", &["*"]), Some("background"))
            .status,
        200
    );
    assert_eq!(
        p.prefetch("rerun", "d", &device_token("d", &["*"]), Some("background"))
            .status,
        200
    );
    assert!(p.metric("cue_prefetch_shed_total{class=\"background\"}") >= 2.0);
    assert_eq!(p.metric("cue_prefetch_shed_total{class=\"critical\"}"), 0.0);
    wait_until(Duration::from_secs(2), || {
        p.metric("cue_prefetch_live_events") == 1.0
    });
    assert_eq!(body(&p.get("/healthz", &[]))["live"], json!(["fight"]));
}

#[test]
fn load_sheds_background_then_normal_never_critical() {
    // A slow upstream holds requests in flight; in-flight thresholds 3 and 6.
    let up = Upstream::start();
    up.set_delay(Duration::from_millis(1500));
    let dir = tempfile::tempdir().unwrap();
    let tpl = up.template();
    let p = start_prefetch(
        dir.path(),
        &[
            "--origin-http",
            "",
            "--upstream",
            &tpl,
            "--shed-in-flight",
            "3,6",
            "--upstream-timeout-ms",
            "5000",
        ],
    );
    let http = p.http;
    let hold = |n: usize, tag: &'static str| -> Vec<std::thread::JoinHandle<u16>> {
        (0..n)
            .map(|i| {
                std::thread::spawn(move || {
                    let auth = format!("Bearer {}", critical_token(&format!("{tag}-{i}")));
                    cue_testkit::client::request(
                        http,
                        "GET",
                        &format!("/v1/events/slow/prefetch?device={tag}-{i}"),
                        &[("Authorization", &auth), ("X-Cue-Priority", "critical")],
                        b"",
                    )
                    .unwrap()
                    .status
                })
            })
            .collect()
    };
    let first = hold(4, "a");
    wait_until(Duration::from_secs(5), || {
        p.metric("cue_prefetch_in_flight") >= 4.0
    });
    assert_eq!(
        p.prefetch("slow", "x", &device_token("x", &["*"]), Some("background"))
            .status,
        503,
        "elevated: background shed"
    );
    let more = hold(4, "b");
    wait_until(Duration::from_secs(5), || {
        p.metric("cue_prefetch_in_flight") >= 8.0
    });
    assert_eq!(
        p.prefetch("slow", "y", &device_token("y", &["*"]), None)
            .status,
        503,
        "high: normal shed"
    );
    for h in first.into_iter().chain(more) {
        assert_eq!(
            h.join().unwrap(),
            200,
            "critical requests are served through the load"
        );
    }
    assert_eq!(p.metric("cue_prefetch_shed_total{class=\"critical\"}"), 0.0);
}

#[test]
fn slow_upstream_gets_one_call_per_key() {
    let up = Upstream::start();
    up.set_delay(Duration::from_millis(500));
    let dir = tempfile::tempdir().unwrap();
    let tpl = up.template();
    let p = start_prefetch(dir.path(), &["--origin-http", "", "--upstream", &tpl]);
    let threads: Vec<_> = (0..40)
        .map(|i| {
            let http = p.http;
            std::thread::spawn(move || {
                // 40 concurrent misses over 2 keys.
                let dev = if i % 2 == 0 { "tv-1" } else { "tv-2" };
                let auth = format!("Bearer {}", device_token(dev, &["*"]));
                let r = cue_testkit::client::request(
                    http,
                    "GET",
                    &format!("/v1/events/ev/prefetch?device={dev}"),
                    &[("Authorization", &auth)],
                    b"",
                )
                .unwrap();
                (r.status, serde_json::from_str::<Value>(&r.body).ok())
            })
        })
        .collect();
    for t in threads {
        let (st, b) = t.join().unwrap();
        assert_eq!(st, 200);
        let b = b.unwrap();
        assert_eq!(
            b["stages"]["round-1"]["for"], b["device"],
            "{{device}} works in upstream maps"
        );
    }
    assert_eq!(up.calls_for("ev/tv-1"), 1);
    assert_eq!(up.calls_for("ev/tv-2"), 1);
    assert_eq!(up.max_concurrent_per_key(), 1);
    assert_eq!(p.metric("cue_prefetch_upstream_calls_total"), 2.0);
    assert!(p.metric("cue_prefetch_cache_coalesced_total") >= 30.0);
    // Upstream 404 is a 404 (and is cached too).
    assert_eq!(
        p.prefetch("missing", "d", &device_token("d", &["*"]), None)
            .status,
        404
    );
    assert_eq!(
        p.prefetch("missing", "d", &device_token("d", &["*"]), None)
            .status,
        404
    );
    assert_eq!(up.calls_for("missing/d"), 1);
}

#[test]
fn failing_and_flapping_upstream_serve_stale_with_one_call_at_a_time() {
    let up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    // The catalog gives the event a 1 s TTL; the cache's own jitter is off to make expiry exact.
    write_event(
        dir.path(),
        "ev",
        &json!({"window": window_now(), "ttl_s": 1}),
    );
    let tpl = up.template();
    let p = start_prefetch(
        dir.path(),
        &[
            "--origin-http",
            "",
            "--upstream",
            &tpl,
            "--cache-ttl-jitter",
            "0",
            "--negative-ttl-ms",
            "1000",
            "--upstream-timeout-ms",
            "300",
        ],
    );
    let tok = device_token("tv", &["*"]);

    // Cold and failing: 503 with Retry-After; the error is cached, so a burst makes one call.
    up.set_mode(FAIL);
    for _ in 0..10 {
        let r = p.prefetch("ev", "cold", &device_token("cold", &["*"]), None);
        assert_eq!(r.status, 503);
        assert!(r.header("retry-after").is_some());
    }
    assert_eq!(up.calls_for("ev/cold"), 1, "negative caching");

    // Filled, then the upstream fails: the expired map keeps being served.
    up.set_mode(OK);
    assert_eq!(
        p.prefetch("ev", "tv", &device_token("tv", &["*"]), None)
            .status,
        200
    );
    assert_eq!(up.calls_for("ev/tv"), 1);
    up.set_mode(FAIL);
    std::thread::sleep(Duration::from_millis(1100));
    let t = std::time::Instant::now();
    let mut served = 0;
    while t.elapsed() < Duration::from_millis(2500) {
        let r = p.prefetch("ev", "tv", &device_token("tv", &["*"]), None);
        assert_eq!(
            r.status, 200,
            "stale but valid while the upstream fails: {}",
            r.body
        );
        assert_eq!(
            body(&r)["stages"]["round-1"]["call"],
            1,
            "the last good map"
        );
        served += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(served > 50);
    // ~2.5 s of failures with a 1 s negative TTL: a refresh at most once a second.
    let failing_calls = up.calls_for("ev/tv") - 1;
    assert!(
        (1..=4).contains(&failing_calls),
        "{failing_calls} calls while failing"
    );

    // Slow as well as flapping: concurrent devices, never more than one call per key at once.
    up.set_mode(FLAP);
    up.set_delay(Duration::from_millis(100));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (http, tok) = (p.http, tok.clone());
            std::thread::spawn(move || {
                let auth = format!("Bearer {tok}");
                let t = std::time::Instant::now();
                let mut statuses = Vec::new();
                while t.elapsed() < Duration::from_millis(3000) {
                    let r = cue_testkit::client::request(
                        http,
                        "GET",
                        "/v1/events/ev/prefetch?device=tv",
                        &[("Authorization", &auth)],
                        b"",
                    )
                    .unwrap();
                    statuses.push(r.status);
                    std::thread::sleep(Duration::from_millis(10));
                }
                statuses
            })
        })
        .collect();
    for t in threads {
        assert!(
            t.join().unwrap().iter().all(|&s| s == 200),
            "flapping upstream: devices always get a map"
        );
    }
    assert_eq!(
        up.max_concurrent_per_key(),
        1,
        "single-flight held throughout"
    );
    assert!(p.metric("cue_prefetch_cache_stale_total") > 0.0);
    assert!(p.metric("cue_prefetch_upstream_errors_total{kind=\"status\"}") >= 2.0);
}

#[test]
fn bad_settings_exit_2_with_one_line_and_sigterm_stops() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cue-prefetch"))
            .args(args)
            .env("CUE_AUTH_SECRET", SECRET)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--max-age-jitter", "2"]);
    assert_eq!(code, Some(2));
    assert_eq!(
        err.trim().lines().count(),
        2,
        "a problem and the count: {err}"
    );
    assert!(
        err.trim_end()
            .ends_with("1 config problem; nothing started"),
        "{err}"
    );
    assert!(err.contains("max_age_jitter"), "{err}");
    let (code, err) = run(&["--upstream", "ftp://x"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("upstream"), "{err}");
    let (code, _) = run(&["--no-such-flag"]);
    assert_eq!(code, Some(2));
    std::fs::write(
        dir.path().join("broken.json"),
        r#"{"window":{"start_ms":9,"end_ms":1},"stages":{}}"#,
    )
    .unwrap();
    let (code, err) = run(&["--catalog", dir.path().to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("broken.json") && err.contains("end_ms"),
        "{err}"
    );
    let (code, err) = run(&["--catalog", "/definitely/not/here"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("/definitely/not/here"), "{err}");
    let (_, help) = {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cue-prefetch"))
            .arg("--help")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    for flag in [
        "--http",
        "--origin-http",
        "--catalog",
        "--upstream",
        "--config",
        "--no-auth",
    ] {
        assert!(help.contains(flag), "--help documents {flag}");
    }

    std::fs::remove_file(dir.path().join("broken.json")).unwrap();
    write_event(
        dir.path(),
        "e",
        &json!({"window": window_now(), "stages": {"k": 1}}),
    );
    let mut p = start_prefetch(dir.path(), &["--origin-http", ""]);
    p.proc.sigterm();
    assert_eq!(p.proc.wait_exit(Duration::from_secs(5)), Some(0));
}

#[test]
fn catalog_changes_are_picked_up_and_bad_ones_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_event(
        dir.path(),
        "a",
        &json!({"window": window_now(), "stages": {"k": "v1"}}),
    );
    let p = start_prefetch(
        dir.path(),
        &["--origin-http", "", "--catalog-reload-ms", "100"],
    );
    let v1 = p.prefetch("a", "d", &device_token("d", &["*"]), None);
    assert_eq!(body(&v1)["stages"]["k"], "v1");
    write_event(
        dir.path(),
        "a",
        &json!({"window": window_now(), "stages": {"k": "v2"}}),
    );
    write_event(
        dir.path(),
        "b",
        &json!({"window": window_now(), "stages": {"k": 1}}),
    );
    wait_until(Duration::from_secs(5), || {
        p.prefetch("b", "d", &device_token("d", &["*"]), None)
            .status
            == 200
    });
    let v2 = p.prefetch("a", "d", &device_token("d", &["*"]), None);
    assert_eq!(body(&v2)["stages"]["k"], "v2");
    assert_ne!(
        v1.header("etag"),
        v2.header("etag"),
        "a new map has a new ETag"
    );
    std::fs::write(dir.path().join("a.json"), "{ broken").unwrap();
    wait_until(Duration::from_secs(5), || {
        p.metric("cue_prefetch_catalog_reload_errors_total") >= 1.0
    });
    assert_eq!(
        body(&p.prefetch("a", "d", &device_token("d", &["*"]), None))["stages"]["k"],
        "v2",
        "previous catalog kept"
    );
}

#[test]
fn sighup_reloads_or_is_ignored_but_never_stops_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let p = start_prefetch(dir.path(), &["--origin-http", ""]);
    // SAFETY: kill(2) on our own child's pid has no memory effects.
    unsafe { libc::kill(p.proc.0.id() as i32, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        p.get("/healthz", &[]).status,
        200,
        "SIGHUP ended cue-prefetch"
    );
}

#[test]
fn each_tenant_gets_its_own_stage_map_and_live_signal_for_a_shared_event_name() {
    let origin = start_origin();
    let dir = tempfile::tempdir().unwrap();
    // The default tenant's `fight` at the top level, acme's and brand-b's in their directories.
    let spec =
        |v: &str| json!({"window": window_now(), "ttl_s": 600, "stages": {"round-1": {"who": v}}});
    write_event(dir.path(), "fight", &spec("default"));
    for t in ["acme", "brand-b"] {
        std::fs::create_dir(dir.path().join(t)).unwrap();
        write_event(&dir.path().join(t), "fight", &spec(t));
    }
    // A directory that is not a tenant name is ignored, as other files are.
    std::fs::create_dir(dir.path().join("Not_A_Tenant")).unwrap();
    write_event(&dir.path().join("Not_A_Tenant"), "fight", &spec("nobody"));
    let origin_url = format!("http://{}", origin.http);
    let p = start_prefetch(
        dir.path(),
        &["--origin-http", &origin_url, "--live-poll-ms", "100"],
    );
    let token = |t: Option<&str>| {
        keys().mint_tenant_device(
            t,
            "d",
            &["fight".into()],
            cue_common::time::unix_now_s(),
            600,
        )
    };
    for (t, who) in [
        (Some("acme"), "acme"),
        (Some("brand-b"), "brand-b"),
        (None, "default"),
    ] {
        let r = p.prefetch("fight", "d", &token(t), None);
        assert_eq!(r.status, 200, "{t:?}: {}", r.body);
        let b = body(&r);
        assert_eq!(b["event"], "fight", "the bare name");
        assert_eq!(b["stages"]["round-1"]["who"], who, "{t:?}");
        let r = p.get(
            "/v1/events/fight/schedule?device=d",
            &[("Authorization", &format!("Bearer {}", token(t)))],
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // A tenant with no such event in the catalog gets 404, not another tenant's map.
    let r = p.prefetch("fight", "d", &token(Some("brand-c")), None);
    assert_eq!(r.status, 404, "{}", r.body);
    // The live signal is per tenant: acme's cue makes acme's `fight` live, nobody else's.
    origin.publish_as(Some("acme"), "fight", "round-1");
    wait_until(Duration::from_secs(10), || {
        body(&p.get("/healthz", &[]))["live"] == json!(["acme/fight"])
    });
    assert_eq!(
        p.prefetch("fight", "d", &token(Some("acme")), Some("background"))
            .status,
        503,
        "acme's event is live: background is shed"
    );
    assert_eq!(
        p.prefetch("fight", "d", &token(Some("brand-b")), Some("background"))
            .status,
        200,
        "brand-b's is not"
    );
    assert_eq!(body(&p.get("/healthz", &[]))["events"], 3);
    let m = p.get("/metrics", &[]).body;
    assert!(
        m.contains("cue_prefetch_tenant_requests_total{tenant=\"acme\"}"),
        "{m}"
    );
    assert!(
        m.contains("cue_prefetch_tenant_requests_total{tenant=\"_default\"} 1"),
        "{m}"
    );
}

#[test]
fn an_upstream_serves_tenants_only_when_its_url_names_the_tenant() {
    let up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let acme = keys().mint_tenant_device(
        Some("acme"),
        "tv-1",
        &["ev".into()],
        cue_common::time::unix_now_s(),
        600,
    );
    // Without {tenant}: the upstream could not tell acme's `ev` from anyone's; 404, no call.
    let p = start_prefetch(
        dir.path(),
        &["--origin-http", "", "--upstream", &up.template()],
    );
    let r = p.prefetch("ev", "tv-1", &acme, None);
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(up.calls_for("ev/tv-1"), 0);
    // The default tenant is served as before.
    assert_eq!(
        p.prefetch("ev", "tv-1", &device_token("tv-1", &["*"]), None)
            .status,
        200
    );
    drop(p);
    // With {tenant} in the URL, acme's request names acme.
    let tpl = format!("{}&tenant={{tenant}}", up.template());
    let p = start_prefetch(dir.path(), &["--origin-http", "", "--upstream", &tpl]);
    let r = p.prefetch("ev", "tv-1", &acme, None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(body(&r)["event"], "ev");
    assert_eq!(
        up.calls_for("ev/tv-1"),
        2,
        "the default tenant's call and acme's"
    );
}

#[test]
fn browsers_get_cors_answers_and_preflights_for_allowed_pages_only() {
    let dir = tempfile::tempdir().unwrap();
    write_event(
        dir.path(),
        "fight",
        &json!({"window": window_now(), "ttl_s": 600, "stages": {"round-1": 1}}),
    );
    let tok = device_token("tv-1", &["fight"]);
    let auth = format!("Bearer {tok}");
    let path = "/v1/events/fight/prefetch?device=tv-1";
    let preflight = |p: &Prefetch, origin: &str, headers: &str| {
        request(
            p.http,
            "OPTIONS",
            path,
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "GET"),
                ("Access-Control-Request-Headers", headers),
            ],
            b"",
        )
        .unwrap()
    };

    // The default: any page.
    let p = start_prefetch(dir.path(), &["--origin-http", "none"]);
    let r = preflight(
        &p,
        "https://app.example",
        "authorization,if-none-match,x-cue-priority",
    );
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("access-control-allow-methods"), Some("GET"));
    assert_eq!(r.header("access-control-max-age"), Some("7200"));
    let allowed = r
        .header("access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    for h in ["authorization", "if-none-match", "x-cue-priority"] {
        assert!(allowed.contains(h), "{allowed}");
    }
    let r = p.get(
        path,
        &[("Authorization", &auth), ("Origin", "https://app.example")],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("ETag, Retry-After")
    );
    // A refusal is readable by the page too (its status and Retry-After).
    let r = p.get(path, &[("Origin", "https://app.example")]);
    assert_eq!(r.status, 401);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    // No Origin (not a browser): no CORS headers.
    let r = p.get(path, &[("Authorization", &auth)]);
    assert_eq!(r.header("access-control-allow-origin"), None);
    // A header the API does not take, or another method: refused, named.
    let r = preflight(&p, "https://app.example", "x-evil");
    assert_eq!(r.status, 403);
    assert!(r.body.contains("x-evil"), "{}", r.body);
    let r = request(
        p.http,
        "OPTIONS",
        path,
        &[
            ("Origin", "https://app.example"),
            ("Access-Control-Request-Method", "DELETE"),
        ],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(p.metric("cue_prefetch_cors_preflights_total"), 1.0);
    assert_eq!(p.metric("cue_prefetch_cors_refused_total"), 2.0);
    drop(p);

    // A list: its origins are echoed with Vary: Origin, others get nothing.
    let p = start_prefetch(
        dir.path(),
        &[
            "--origin-http",
            "none",
            "--cors-origins",
            "https://app.example,http://127.0.0.1:8000",
        ],
    );
    let r = preflight(&p, "http://127.0.0.1:8000", "authorization");
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://127.0.0.1:8000")
    );
    assert_eq!(r.header("vary"), Some("Origin"));
    let r = preflight(&p, "https://evil.example", "authorization");
    assert_eq!(r.status, 403);
    assert!(r.body.contains("origin not allowed"), "{}", r.body);
    let r = p.get(
        path,
        &[("Authorization", &auth), ("Origin", "https://evil.example")],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(r.header("vary"), Some("Origin"));
    drop(p);

    // none: no CORS header at all; preflights refused.
    let p = start_prefetch(
        dir.path(),
        &["--origin-http", "none", "--cors-origins", "none"],
    );
    let r = p.get(
        path,
        &[("Authorization", &auth), ("Origin", "https://app.example")],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(
        preflight(&p, "https://app.example", "authorization").status,
        403
    );
}

#[test]
fn a_bad_cors_origin_is_a_config_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cue-prefetch"))
        .args(["--catalog"])
        .arg(dir.path())
        .args([
            "--cors-origins",
            "https://app.example/path",
            "--check-config",
        ])
        .env("CUE_AUTH_SECRET", SECRET)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cors_origins") && err.contains("https://app.example/path"),
        "{err}"
    );
}
