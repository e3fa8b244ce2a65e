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
