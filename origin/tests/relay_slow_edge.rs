//! The relay listener with real TCP: an edge that stops reading cannot stall the others. The
//! publisher side (a broadcast send) never waits for any edge; the stuck edge lags, is
//! resynchronised from the newest state, and is dropped once its socket takes no bytes for the
//! write timeout, while a healthy edge ends on the newest cue.

use std::io::{Read, Write};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use cue_common::cue::Cue;
use cue_common::relay::{self, Frame};
use cue_origin::relay::{serve, RelayMetrics, RelayOptions};
use tokio::sync::{broadcast, watch};

fn hello(id: &str) -> Vec<u8> {
    let mut b = Vec::new();
    relay::encode(
        &Frame::Hello {
            version: cue_common::relay::VERSION,
            edge_id: id.into(),
            since: vec![],
        },
        &mut b,
    );
    b
}

#[test]
fn a_stuck_edge_does_not_stall_a_healthy_one() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let latest = Arc::new(RwLock::new(cue_origin::store::State::default()));
    let (live, _) = broadcast::channel(64);
    let metrics = Arc::new(RelayMetrics::default());
    let (_stop_tx, stop_rx) = watch::channel(false);
    let (_health_tx, health) = watch::channel(None);
    let opts = RelayOptions {
        heartbeat: Duration::from_millis(200),
        dead_after: Duration::from_secs(3),
        write_timeout: Duration::from_millis(1000),
        max_edges: 8,
        tls: None,
    };
    rt.spawn(serve(
        listener,
        latest.clone(),
        live.clone(),
        opts,
        metrics.clone(),
        health,
        stop_rx,
    ));

    // The stuck edge: says HELLO, then never reads.
    let mut stuck = std::net::TcpStream::connect(addr).unwrap();
    stuck.write_all(&hello("stuck")).unwrap();
    // The healthy edge reads everything on its own thread and reports the newest seq.
    let mut good = std::net::TcpStream::connect(addr).unwrap();
    good.write_all(&hello("good")).unwrap();
    good.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let reader = std::thread::spawn(move || {
        let (mut buf, mut newest) = (Vec::new(), 0u64);
        let mut chunk = vec![0u8; 64 * 1024];
        while newest < 100_000 {
            let n = good
                .read(&mut chunk)
                .expect("healthy edge keeps getting bytes");
            assert!(n > 0, "healthy edge was disconnected");
            buf.extend_from_slice(&chunk[..n]);
            let mut used = 0;
            while let Some((f, k)) = relay::decode(&buf[used..]).unwrap() {
                used += k;
                if let Frame::Cue(c) = f {
                    assert!(c.seq() > newest, "seqs only go up");
                    newest = c.seq();
                }
            }
            buf.drain(..used);
        }
        newest
    });
    let t = Instant::now();
    while metrics.edges.get() < 2 {
        assert!(t.elapsed() < Duration::from_secs(5), "edges not linked");
        std::thread::sleep(Duration::from_millis(10));
    }
    // 100k cues as fast as the publisher can make them: far more than the stuck edge's socket
    // buffers and the broadcast buffer hold.
    let key = "k".repeat(60);
    for seq in 1..=100_000u64 {
        let c = Cue::new("fight", &key, seq, seq).unwrap();
        latest.write().unwrap().insert(c.event().clone(), c.clone());
        let _ = live.send(cue_origin::store::Live::Cue(c, Default::default()));
        if seq % 5_000 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    assert_eq!(
        reader.join().unwrap(),
        100_000,
        "healthy edge ends on the newest cue"
    );
    let t = Instant::now();
    while metrics.dropped.get() == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "stuck edge never dropped"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        metrics.resyncs.get() >= 1,
        "lagging edges are resynchronised, not queued"
    );
    drop(stuck);
}
