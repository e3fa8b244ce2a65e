//! What one token check costs at admission: HS256 (shared secret) against EdDSA (Ed25519) and
//! ES256 (P-256) with public keys only, and an EdDSA token with an admission ticket (what a
//! reconnect costs at any edge process of the host). `cargo bench -p cue-common --bench tokens`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use cue_common::keys::{AdmitCache, KeyAlg, SigningKeys, TicketKey, Verifier};
use cue_common::token::{Claims, TokenKeys};

fn claims() -> Claims {
    Claims {
        sub: Some("tv-123456".into()),
        events: Some(vec!["fight-night".into()]),
        role: None,
        priority: None,
        tenant: None,
        exp: 4_000_000_000,
    }
}

fn verify(c: &mut Criterion) {
    let now = 1_800_000_000;
    let hs = TokenKeys::new(&[7u8; 32]).unwrap();
    let hs_token = hs.mint(&claims());
    let hs = Verifier::Secret(Box::new(hs));
    let mut g = c.benchmark_group("verify_device_token");
    g.bench_function("HS256", |b| {
        b.iter(|| {
            hs.verify_device(black_box(&hs_token), now, ["fight-night"])
                .unwrap()
        })
    });
    for (name, alg) in [("EdDSA", KeyAlg::EdDSA), ("ES256", KeyAlg::ES256)] {
        let sk = SigningKeys::generate(alg, now).unwrap();
        let token = sk.mint(&claims());
        let v = Verifier::Keys(sk.key_set());
        g.bench_function(name, |b| {
            b.iter(|| {
                v.verify_device(black_box(&token), now, ["fight-night"])
                    .unwrap()
            })
        });
        if alg == KeyAlg::EdDSA {
            let key = TicketKey::new(&[9u8; 32]);
            let ticket = AdmitCache::new(0)
                .with_tickets(key.clone())
                .verify_device(&v, &token, None, now, ["fight-night"])
                .unwrap()
                .expect("a ticket")
                .value;
            // No cache entries: only the ticket can spare the signature check.
            let mut c = AdmitCache::new(0).with_tickets(key);
            g.bench_function("EdDSA with ticket", |b| {
                b.iter(|| {
                    c.verify_device(&v, black_box(&token), Some(&ticket), now, ["fight-night"])
                        .unwrap()
                })
            });
            assert_eq!(c.tickets_refused, 0, "every ticket admitted");
        }
    }
    g.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
