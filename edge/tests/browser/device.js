// The test device: the SDK as a page uses it, with every callback reported to the page's own
// server (serve.py) so the Rust test can follow it. Settings come from the page's query.
import { CueClient } from "/sdk/cue.js";

const q = new URLSearchParams(location.search);
const prefetch = q.get("prefetch");
let seq = 0;
let prefetchRequests = 0;

// Counts the page's requests to cue-prefetch: a cue must be shown with none.
const realFetch = window.fetch.bind(window);
window.fetch = (url, init) => {
  if (String(url).startsWith(prefetch)) prefetchRequests += 1;
  return realFetch(url, init);
};

function report(kind, body) {
  const line = { n: ++seq, t: Date.now(), kind, prefetchRequests, ...body };
  document.getElementById("log").textContent += JSON.stringify(line) + "\n";
  realFetch("/report", { method: "POST", body: JSON.stringify(line), keepalive: true });
}

const client = new CueClient({
  edge: q.get("edge"),
  prefetch,
  events: q.get("events").split(","),
  token: q.get("token"),
  backoff: { baseMs: Number(q.get("base_ms") || 500), maxMs: 4000 },
  onCue(c) {
    document.getElementById("stage").textContent = `${c.event}: ${c.key}`;
    report("cue", c);
  },
  onMap(m) {
    report("map", m);
  },
  onStatus(s) {
    report(s.state, s);
  },
});
client.start();
report("started", {});
