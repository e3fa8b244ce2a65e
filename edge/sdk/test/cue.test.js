// The SDK's decisions, run by Node's own test runner (`node --test edge/sdk/test/`, called by
// edge/tests/browser.rs). The browser run of the whole client is edge/tests/browser.rs.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  backoffDelay,
  isNew,
  maxAge,
  nextFetch,
  parseCue,
  retryAfterHeader,
  retryAfterHint,
  subscribeUrl,
  CueClient,
} from "../cue.js";

/** A seeded generator (xorshift32), so a failure names the seed that shows it. */
function rng(seed) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 4294967296;
  };
}

test("backoff stays in [ceiling/2, ceiling] and the ceiling doubles up to the cap", () => {
  const r = rng(7);
  for (let attempt = 0; attempt < 40; attempt++) {
    const ceiling = Math.min(30000, 500 * 2 ** attempt);
    for (let i = 0; i < 200; i++) {
      const d = backoffDelay(attempt, 500, 30000, r);
      assert.ok(d >= ceiling / 2 && d <= ceiling, `attempt ${attempt}: ${d} outside [${ceiling / 2}, ${ceiling}]`);
    }
  }
  assert.equal(backoffDelay(0, 500, 30000, () => 0), 250);
  assert.equal(backoffDelay(0, 500, 30000, () => 0.999999), 500);
  assert.equal(backoffDelay(1000, 500, 30000, () => 0.5), 22500);
});

test("backoff spreads a fleet: 10,000 devices over the upper half of the step", () => {
  const r = rng(11);
  const buckets = new Array(10).fill(0);
  for (let i = 0; i < 10000; i++) {
    const d = backoffDelay(3, 500, 30000, r); // ceiling 4000: [2000, 4000]
    buckets[Math.min(9, Math.floor((d - 2000) / 200))]++;
  }
  for (const b of buckets) assert.ok(b > 800 && b < 1200, `bucket ${b} of 10,000 is not near 1,000`);
});

test("the drain hint is retry-after=SECONDS and nothing else", () => {
  assert.equal(retryAfterHint("retry-after=17"), 17);
  assert.equal(retryAfterHint("retry-after=0"), 0);
  for (const bad of ["", null, undefined, "retry-after=", "retry-after=-1", "retry-after=1.5", "retry-after=99999", "Retry-After=5", "retry-after=5 ", "shutdown"]) {
    assert.equal(retryAfterHint(bad), null, String(bad));
  }
});

test("Retry-After reads seconds or a date, clamped to [1 s, 1 day]", () => {
  assert.equal(retryAfterHeader("7", 0), 7);
  assert.equal(retryAfterHeader(" 0 ", 0), 1);
  assert.equal(retryAfterHeader("999999", 0), 86400);
  const now = Date.parse("Thu, 03 Dec 2026 10:00:00 GMT");
  assert.equal(retryAfterHeader("Thu, 03 Dec 2026 10:00:30 GMT", now), 30);
  assert.equal(retryAfterHeader(null, now), null);
  assert.equal(retryAfterHeader("soon", now), null);
});

test("max-age is read from Cache-Control", () => {
  assert.equal(maxAge("max-age=540"), 540);
  assert.equal(maxAge("public, max-age=60"), 60);
  assert.equal(maxAge("no-store"), null);
  assert.equal(maxAge(null), null);
});

test("the subscribe URL carries events, since for the events held, and the token", () => {
  assert.equal(
    subscribeUrl("ws://127.0.0.1:8080/", ["fight", "news"], { fight: 42 }, "a.b.c"),
    "ws://127.0.0.1:8080/v1/subscribe?events=fight,news&since=fight:42&token=a.b.c",
  );
  assert.equal(subscribeUrl("wss://e.example", ["fight"], {}, null), "wss://e.example/v1/subscribe?events=fight");
});

test("a cue frame is read only when every field is what the contract says", () => {
  assert.deepEqual(parseCue('{"event":"fight","key":"round-3","seq":42,"ts":1764460800123}'), {
    event: "fight",
    key: "round-3",
    seq: 42,
    ts: 1764460800123,
  });
  for (const bad of [
    "",
    "null",
    "[]",
    '{"event":"Fight","key":"k","seq":1,"ts":1}',
    '{"event":"fight","key":"k k","seq":1,"ts":1}',
    '{"event":"fight","key":"k","seq":-1,"ts":1}',
    '{"event":"fight","key":"k","seq":1.5,"ts":1}',
    '{"event":"fight","key":"k","seq":9007199254740993,"ts":1}',
    '{"event":"fight","key":"k","seq":"1","ts":1}',
    '{"event":"fight","key":"k","seq":1}',
    `{"event":"${"e".repeat(65)}","key":"k","seq":1,"ts":1}`,
  ]) {
    assert.equal(parseCue(bad), null, bad);
  }
});

test("parseCue never throws on arbitrary input", () => {
  const r = rng(3);
  const alphabet = '{}[]":,0123456789-.eventkyqsaznul \\\u00e9\ud83d';
  for (let i = 0; i < 20000; i++) {
    let s = "";
    const n = Math.floor(r() * 80);
    for (let j = 0; j < n; j++) s += alphabet[Math.floor(r() * alphabet.length)];
    const c = parseCue(s);
    assert.ok(c === null || typeof c.seq === "number");
  }
});

test("duplicates are dropped by seq per event", () => {
  const since = { fight: 10 };
  assert.equal(isNew(since, { event: "fight", seq: 10 }), false);
  assert.equal(isNew(since, { event: "fight", seq: 9 }), false);
  assert.equal(isNew(since, { event: "fight", seq: 11 }), true);
  assert.equal(isNew(since, { event: "news", seq: 1 }), true);
});

test("maps: normal at the scheduled time, background at expiry, critical only when live and missing", () => {
  assert.deepEqual(nextFetch(null, 5000, false, 1000), { at: 5000, priority: "normal" });
  assert.deepEqual(nextFetch(null, 500, false, 1000), { at: 1000, priority: "normal" });
  assert.deepEqual(nextFetch(null, undefined, false, 1000), { at: 1000, priority: "normal" });
  assert.deepEqual(nextFetch(null, 5000, true, 1000), { at: 1000, priority: "critical" });
  assert.deepEqual(nextFetch({ etag: '"x"', expiresAt: 9000 }, 5000, true, 1000), { at: 9000, priority: "background" });
});

test("the client refuses options that no edge would take", () => {
  assert.throws(() => new CueClient({ edge: "http://x", events: ["fight"] }), /edge/);
  assert.throws(() => new CueClient({ edge: "ws://x", events: [] }), /events/);
  assert.throws(() => new CueClient({ edge: "ws://x", events: ["Fight"] }), /event name/);
  const many = Array.from({ length: 17 }, (_, i) => `e${i}`);
  assert.throws(() => new CueClient({ edge: "ws://x", events: many }), /events/);
  assert.doesNotThrow(() => new CueClient({ edge: "ws://x", events: ["fight", "fight"] }));
});

test("a stored since keeps only subscribed events and seqs an edge takes", () => {
  const c = new CueClient({
    edge: "ws://x",
    events: ["fight", "news", "gala"],
    since: { fight: 42, other: 7, news: -1, gala: 1.5, x: "9" },
  });
  assert.deepEqual(c.since(), { fight: 42 });
});
