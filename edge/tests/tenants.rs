//! Tenants with the real binaries on loopback: two tenants and the default one follow an event
//! of the same name on one edge without meeting; each device sees the bare name it asked for.

mod support;

use std::time::Duration;

use cue_common::time::unix_now_s;
use support::*;

#[test]
fn a_tenants_device_follows_its_own_event_of_a_shared_name_and_never_gets_anothers() {
    let dir = tempfile::tempdir().unwrap();
    let origin = start_origin(dir.path(), free_addr(), free_addr());
    let edge = start_edge(origin.relay, free_addr(), free_addr(), &[]);
    let tenants = [Some("acme"), Some("brand-b"), None];
    let mut devs: Vec<Ws> = tenants
        .iter()
        .map(|t| subscribe(edge.ws, "events=fight", Some(&device_of(*t, &["fight"]))).unwrap())
        .collect();
    // Each tenant publishes its own `fight`; each device gets exactly its tenant's cue, under
    // the bare name, in the same JSON as before tenants.
    let names = ["acme-1", "brand-b-1", "default-1"];
    let mut seqs = Vec::new();
    for (t, k) in tenants.iter().zip(names) {
        seqs.push(publish_as(origin.http, *t, "fight", k));
    }
    for (i, d) in devs.iter_mut().enumerate() {
        assert_eq!(next_cue(d), ("fight".into(), names[i].into(), seqs[i]));
        assert!(
            quiet_for(d, Duration::from_millis(300)),
            "device {i} got another tenant's cue"
        );
    }
    // A device coming later is caught up with its tenant's current cue only.
    for (i, t) in tenants.iter().enumerate() {
        let mut late =
            subscribe(edge.ws, "events=fight", Some(&device_of(*t, &["fight"]))).unwrap();
        assert_eq!(next_cue(&mut late).1, names[i]);
        assert!(quiet_for(&mut late, Duration::from_millis(200)));
    }
    // `since` names the bare event too.
    let mut resumed = subscribe(
        edge.ws,
        &format!("events=fight&since=fight:{}", seqs[0]),
        Some(&device_of(Some("acme"), &["fight"])),
    )
    .unwrap();
    assert!(
        quiet_for(&mut resumed, Duration::from_millis(300)),
        "nothing newer than since"
    );
    // No name reaches another tenant's event: a qualified name is not an event name, and a
    // token for `*` of one tenant is still that tenant's.
    let star = device_of(Some("acme"), &["*"]);
    let err = subscribe(edge.ws, "events=brand-b/fight", Some(&star)).unwrap_err();
    assert_eq!(err.0, 400, "{}", err.1);
    let mut a2 = subscribe(edge.ws, "events=fight", Some(&star)).unwrap();
    assert_eq!(next_cue(&mut a2).1, "acme-1");
    // A token with a tenant that is not a tenant name admits nothing.
    let bad = keys().mint(&cue_common::token::Claims {
        sub: Some("d".into()),
        events: Some(vec!["fight".into()]),
        role: None,
        priority: None,
        tenant: Some("Not A Tenant".into()),
        exp: unix_now_s() + 600,
    });
    let err = subscribe(edge.ws, "events=fight", Some(&bad)).unwrap_err();
    assert_eq!(err.0, 401, "{}", err.1);
    // The next cue of one tenant still reaches only its devices.
    let s = publish_as(origin.http, Some("brand-b"), "fight", "brand-b-2");
    assert_eq!(
        next_cue(&mut devs[1]),
        ("fight".into(), "brand-b-2".into(), s)
    );
    assert!(quiet_for(&mut devs[0], Duration::from_millis(300)));
    assert!(quiet_for(&mut devs[2], Duration::from_millis(300)));
    // Each tenant's fanout deliveries are its own in the metrics (over the shards that saw it).
    let m = edge.metrics();
    let delivered = |t: &str| {
        let label = format!("tenant=\"{t}\"}}");
        m.lines()
            .filter(|l| l.starts_with("cue_edge_tenant_deliveries_total{") && l.contains(&label))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum::<f64>()
    };
    assert_eq!(
        (
            delivered("acme"),
            delivered("brand-b"),
            delivered("_default")
        ),
        (1.0, 2.0, 1.0)
    );
}

#[test]
fn one_tenants_publish_flood_at_its_quota_leaves_anothers_publishes_and_cues_alone() {
    let dir = tempfile::tempdir().unwrap();
    // Every named tenant may publish 20 cues a second.
    let origin = start_origin_with(
        dir.path(),
        free_addr(),
        free_addr(),
        &["--tenant-publishes-per-s", "20"],
    );
    let edge = start_edge(origin.relay, free_addr(), free_addr(), &[]);
    let mut b = subscribe(
        edge.ws,
        "events=fight",
        Some(&device_of(Some("brand-b"), &["fight"])),
    )
    .unwrap();
    // acme floods (one publish after another) while brand-b publishes 10 cues.
    let http = origin.http;
    let flood = std::thread::spawn(move || {
        let (mut ok, mut refused, mut said) = (0, 0, String::new());
        for i in 0..400 {
            let r = try_publish_as(http, Some("acme"), "fight", &format!("a-{i}"));
            match r.status {
                201 => ok += 1,
                429 => {
                    refused += 1;
                    said = r.body;
                }
                s => panic!("acme publish {i}: {s} {}", r.body),
            }
        }
        (ok, refused, said)
    });
    for i in 0..10 {
        let s = publish_as(http, Some("brand-b"), "fight", &format!("b-{i}"));
        assert_eq!(next_cue(&mut b), ("fight".into(), format!("b-{i}"), s));
        std::thread::sleep(Duration::from_millis(60));
    }
    let (ok, refused, said) = flood.join().unwrap();
    assert!(
        refused > 0 && ok >= 20,
        "acme: {ok} published, {refused} refused"
    );
    let v: serde_json::Value = serde_json::from_str(&said).unwrap();
    assert_eq!(v["tenant"], "acme");
    assert_eq!(v["quota"], "publishes_per_s");
    assert_eq!(v["limit"], 20);
    assert!(v["error"]
        .as_str()
        .unwrap()
        .contains("tenant acme is at its quota"));
    let m = cue_testkit::client::request(http, "GET", "/metrics", &[], b"")
        .unwrap()
        .body;
    assert_eq!(
        metric(
            &m,
            "cue_origin_tenant_refused_total{tenant=\"acme\",quota=\"publishes_per_s\"}"
        ),
        refused as f64
    );
    assert_eq!(
        metric(&m, "cue_origin_tenant_publishes_total{tenant=\"brand-b\"}"),
        10.0
    );
    assert_eq!(
        metric(&m, "cue_origin_tenant_publishes_total{tenant=\"acme\"}"),
        ok as f64
    );
}

#[test]
fn a_tenants_device_quota_refuses_its_devices_while_anothers_are_admitted() {
    let dir = tempfile::tempdir().unwrap();
    let origin = start_origin(dir.path(), free_addr(), free_addr());
    // 2 devices and 1 event per named tenant, split between the edge's 2 shards.
    let conf = edge_config(
        dir.path(),
        "tenant_max_devices = 2\ntenant_max_events = 2\n",
    );
    let edge = start_edge(origin.relay, free_addr(), free_addr(), &["--config", &conf]);
    let acme = device_of(Some("acme"), &["fight", "gala", "other"]);
    let (mut admitted, mut refused) = (Vec::new(), Vec::new());
    for _ in 0..8 {
        match subscribe(edge.ws, "events=fight", Some(&acme)) {
            Ok(ws) => admitted.push(ws),
            Err(e) => refused.push(e),
        }
    }
    assert!(
        (1..=2).contains(&admitted.len()) && !refused.is_empty(),
        "acme: {} admitted",
        admitted.len()
    );
    for (status, body) in &refused {
        assert_eq!(*status, 429, "{body}");
        assert!(
            body.contains("tenant acme is at its quota max_devices"),
            "{body}"
        );
        assert!(
            body.contains("retry-after=") && !body.ends_with("retry-after="),
            "{body}"
        );
    }
    // brand-b is not held back by acme.
    let b = device_of(Some("brand-b"), &["fight"]);
    // Its own quota is 1 per shard too: tries until both shards hold one (bounded).
    let bs: Vec<Ws> = (0..20)
        .filter_map(|_| subscribe(edge.ws, "events=fight", Some(&b)).ok())
        .collect();
    assert!(
        (1..=2).contains(&bs.len()),
        "brand-b: {} admitted",
        bs.len()
    );
    // A device that leaves frees its place.
    let left = admitted.len();
    drop(admitted);
    let mut back = 0;
    for _ in 0..50 {
        if subscribe(edge.ws, "events=fight", Some(&acme)).is_ok() {
            back += 1;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(back, 1, "after {left} acme devices left");
    // Events: a device that would follow more of its tenant's events than the quota (1 per
    // shard) is refused, whichever shard takes it.
    let c = device_of(Some("brand-c"), &["fight", "gala"]);
    let (status, body) = subscribe(edge.ws, "events=fight,gala", Some(&c)).unwrap_err();
    assert_eq!(status, 429, "{body}");
    assert!(
        body.contains("tenant brand-c is at its quota max_events (1 in this shard)"),
        "{body}"
    );
    let m = edge.metrics();
    assert!(metric(&m, "cue_edge_tenant_refused_total") >= refused.len() as f64);
    assert!(m.contains("tenant=\"acme\",quota=\"max_devices\""), "{m}");
    assert_eq!(
        metric(&m, "cue_edge_refused_total{shard=\"0\",status=\"429\"}")
            + metric(&m, "cue_edge_refused_total{shard=\"1\",status=\"429\"}"),
        metric(&m, "cue_edge_tenant_refused_total")
    );
    assert!(m.contains("cue_edge_tenant_devices{shard="), "{m}");
}

#[test]
fn a_quic_device_of_a_tenant_gets_its_tenants_cue_and_quota_refusals_name_it() {
    use support::quic::{endpoint, hello, logged_fingerprint};
    let dir = tempfile::tempdir().unwrap();
    let origin = start_origin(dir.path(), free_addr(), free_addr());
    let conf = edge_config(dir.path(), "[tenant_quotas.brand-b]\nmax_devices = 1\n");
    let log = dir.path().join("edge.log");
    let edge = start_edge_logged(
        origin.relay,
        free_addr(),
        free_addr(),
        &["--config", &conf],
        Some(&log),
    );
    let fp = logged_fingerprint(&log);
    let hello_of = |t: Option<&str>| {
        format!(
            "{{\"events\":[\"fight\"],\"token\":\"{}\"}}\n",
            device_of(t, &["fight"])
        )
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ep = endpoint(&fp);
        let (v, mut acme) = hello(&ep, edge.quic, hello_of(Some("acme")).as_bytes())
            .await
            .unwrap();
        assert_eq!(v["ok"], true, "{v}");
        publish_as(origin.http, None, "fight", "default-1");
        let s = publish_as(origin.http, Some("acme"), "fight", "acme-1");
        assert_eq!(acme.cue().await, ("fight".into(), "acme-1".into(), s));
        // brand-b may hold 1 device in a shard: of 4 hellos, some are refused with the
        // tenant and the quota named, and a retry hint.
        let mut refused = Vec::new();
        let mut held = Vec::new();
        for _ in 0..4 {
            let (v, d) = hello(&ep, edge.quic, hello_of(Some("brand-b")).as_bytes())
                .await
                .unwrap();
            if v["ok"] == true {
                held.push(d);
            } else {
                refused.push(v);
            }
        }
        assert!(
            (1..=2).contains(&held.len()) && !refused.is_empty(),
            "{refused:?}"
        );
        for v in &refused {
            assert_eq!(v["status"], 429, "{v}");
            assert!(
                v["error"]
                    .as_str()
                    .unwrap()
                    .contains("tenant brand-b is at its quota max_devices (1 in this shard)"),
                "{v}"
            );
            assert!(v["retry_after"].as_u64().is_some(), "{v}");
        }
    });
}
