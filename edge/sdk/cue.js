// Cue device SDK for browsers: one dependency-free ES module.
//
// A page subscribes to its events at a cue-edge over WebSocket and prefetches its stage maps
// from cue-prefetch ahead of time; at the moment of a cue it looks the cue's key up in the map it
// holds, so the cue itself costs no request. The policies are the protocol's (docs/protocol.md,
// docs/prefetch.md, docs/sdk.md): `since` per event on every reconnect, duplicates dropped by
// seq, jittered exponential backoff, the drain hint `retry-after=S` of a 1001 close honoured,
// the prefetch schedule kept, maps revalidated with If-None-Match when max-age runs out, and a
// 503's Retry-After waited out.
//
// The decisions are plain functions (exported for tests and for devices that bring their own
// I/O); `CueClient` wires them to WebSocket, fetch and timers.

/** Largest delay a browser timer takes (2^31 - 1 ms); longer waits are chained. */
const MAX_TIMER_MS = 2147483647;
/** A connection open this long counts as healthy: the next failure starts backoff anew. */
export const HEALTHY_AFTER_MS = 10000;
/** Event names: 1-64 of [a-z0-9._-] (an edge refuses others with 400). */
const EVENT_RE = /^[a-z0-9._-]{1,64}$/;
/** Most events one device follows (the edge's default max_events_per_device). */
export const MAX_EVENTS = 16;

/**
 * Backoff delay before reconnect attempt `attempt` (0 for the first retry), ms: uniform in
 * [ceiling / 2, ceiling] where ceiling = min(maxMs, baseMs * 2^attempt). Half the range is
 * random, so a fleet cut off together comes back spread out, never sooner than half the step.
 */
export function backoffDelay(attempt, baseMs, maxMs, random) {
  const ceiling = Math.min(maxMs, baseMs * Math.pow(2, Math.min(attempt, 30)));
  return Math.round(ceiling / 2 + random() * (ceiling / 2));
}

/**
 * The seconds of a drain hint: a close reason `retry-after=S` (S a whole number of seconds,
 * at most a day), else null.
 */
export function retryAfterHint(reason) {
  const m = /^retry-after=(\d{1,5})$/.exec(reason || "");
  if (!m) return null;
  const s = Number(m[1]);
  return s <= 86400 ? s : null;
}

/**
 * Seconds of a `Retry-After` header (delta-seconds or an HTTP date), at least 1, at most a
 * day; null when absent or unreadable.
 */
export function retryAfterHeader(value, nowMs) {
  if (value == null || value === "") return null;
  let s;
  if (/^\d+$/.test(value.trim())) {
    s = Number(value.trim());
  } else {
    const t = Date.parse(value);
    if (Number.isNaN(t)) return null;
    s = Math.ceil((t - nowMs) / 1000);
  }
  return Math.min(86400, Math.max(1, s));
}

/** `max-age` of a Cache-Control header, seconds; null when absent. */
export function maxAge(cacheControl) {
  const m = /(?:^|,)\s*max-age=(\d+)/i.exec(cacheControl || "");
  return m ? Number(m[1]) : null;
}

/**
 * The subscribe URL: `BASE/v1/subscribe?events=E1,E2&since=E1:SEQ&token=JWT` (the token in the
 * query: a browser's WebSocket cannot send an Authorization header).
 */
export function subscribeUrl(edge, events, since, token) {
  const base = edge.replace(/\/+$/, "");
  const parts = ["events=" + events.map(encodeURIComponent).join(",")];
  const pairs = events
    .filter((e) => since[e] !== undefined)
    .map((e) => encodeURIComponent(e) + ":" + since[e]);
  if (pairs.length) parts.push("since=" + pairs.join(","));
  if (token) parts.push("token=" + encodeURIComponent(token));
  return base + "/v1/subscribe?" + parts.join("&");
}

/**
 * A cue frame, checked: `{event, key, seq, ts}` with the contract's types, else null. A device
 * never trusts a frame it cannot read.
 */
export function parseCue(text) {
  let c;
  try {
    c = JSON.parse(text);
  } catch {
    return null;
  }
  if (c === null || typeof c !== "object") return null;
  const ok =
    typeof c.event === "string" &&
    EVENT_RE.test(c.event) &&
    typeof c.key === "string" &&
    /^[A-Za-z0-9._:-]{1,64}$/.test(c.key) &&
    Number.isSafeInteger(c.seq) &&
    c.seq >= 0 &&
    Number.isSafeInteger(c.ts) &&
    c.ts >= 0;
  return ok ? { event: c.event, key: c.key, seq: c.seq, ts: c.ts } : null;
}

/**
 * Whether a cue is new to a device that holds `since` (event -> newest seq): seqs only grow
 * per event, so one at or below what it holds is a duplicate (a catch-up after a reconnect, a
 * second edge) and is dropped.
 */
export function isNew(since, cue) {
  const held = since[cue.event];
  return held === undefined || cue.seq > held;
}

/**
 * When to ask for a map next, and how: the plan for one event's map from what the device holds.
 * `map` is {etag, expiresAt} or null; `prefetchAt` from the schedule (ms) or null; `live` says a
 * cue of the event came with no map. Returns {at, priority}: `critical` only when a cue is
 * already here and no map is (the server grants it only to tokens that carry the claim),
 * `normal` for the first fetch at the scheduled time, `background` for a revalidation.
 */
export function nextFetch(map, prefetchAt, live, nowMs) {
  if (!map) {
    if (live) return { at: nowMs, priority: "critical" };
    return { at: Math.max(nowMs, prefetchAt ?? nowMs), priority: "normal" };
  }
  return { at: Math.max(nowMs, map.expiresAt), priority: "background" };
}

/**
 * A device's client: WebSocket to an edge, stage maps from cue-prefetch.
 *
 * Options:
 * - `edge`: base URL of the edge, `ws://HOST:PORT` or `wss://HOST:PORT`.
 * - `prefetch`: base URL of cue-prefetch (`https://HOST:PORT`), or null for cues only.
 * - `events`: the events to follow (1-16 names).
 * - `token`: the device token, or a function returning it (or a promise of it); called before
 *   every connection and map request, so it may refresh an expiring token.
 * - `device`: the device id for prefetch (default: the server takes the token's `sub`).
 * - `onCue({event, key, seq, ts, stage})`: a new cue; `stage` is the prefetched payload of its
 *   key, or undefined when the map is missing or has no such key.
 * - `onMap({event, status})`: a map arrived (200) or was confirmed (304).
 * - `onStatus({state, ...})`: `connecting` (url without the token, since, attempt), `open`,
 *   `closed` (code, reason, waitMs), `map-error` (event, status, waitMs), `duplicate`
 *   (event, seq).
 * - `backoff`: {baseMs: 500, maxMs: 30000}.
 * - `since`: initial event -> seq (e.g. restored from storage).
 * - `random`, `now`: for tests (default Math.random, Date.now).
 */
export class CueClient {
  constructor(opts) {
    if (!opts || typeof opts.edge !== "string" || !/^wss?:\/\//.test(opts.edge)) {
      throw new TypeError("edge: a ws:// or wss:// URL");
    }
    const events = [...new Set(opts.events || [])];
    if (events.length < 1 || events.length > MAX_EVENTS) {
      throw new TypeError(`events: 1 to ${MAX_EVENTS} names`);
    }
    for (const e of events) {
      if (!EVENT_RE.test(e)) throw new TypeError(`events: ${JSON.stringify(e)} is not an event name`);
    }
    this.edge = opts.edge;
    this.prefetchBase = opts.prefetch ? opts.prefetch.replace(/\/+$/, "") : null;
    this.events = events;
    this.tokenSource = opts.token;
    this.device = opts.device || null;
    this.onCue = opts.onCue || (() => {});
    this.onMap = opts.onMap || (() => {});
    this.onStatus = opts.onStatus || (() => {});
    this.baseMs = opts.backoff?.baseMs ?? 500;
    this.maxMs = opts.backoff?.maxMs ?? 30000;
    this.random = opts.random || Math.random;
    this.now = opts.now || Date.now;
    // Only what an edge takes: a subscribed event and a seq (an unsigned safe integer); a
    // stored value that is neither would make every reconnect a 400.
    this._since = {};
    for (const [e, s] of Object.entries(opts.since || {})) {
      if (events.includes(e) && Number.isSafeInteger(s) && s >= 0) this._since[e] = s;
    }
    this.maps = new Map(); // event -> {stages, etag, expiresAt}
    this.schedules = new Map(); // event -> prefetchAt ms
    this.mapTimers = new Map();
    this.mapFailures = new Map();
    this.fetching = new Set(); // events with a map request in flight
    this.notBefore = new Map(); // event -> ms: a 503's Retry-After or a backoff not yet over
    this.ws = null;
    this.attempt = 0;
    this.timer = null;
    this.stopped = true;
  }

  /** Starts following the events and prefetching their maps. */
  start() {
    if (!this.stopped) return;
    this.stopped = false;
    this.connect();
    if (this.prefetchBase) for (const e of this.events) this.planMap(e, false);
  }

  /** Stops: closes the connection and cancels every timer. */
  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    for (const t of this.mapTimers.values()) clearTimeout(t);
    this.mapTimers.clear();
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.close(1000);
    }
  }

  /** The newest seq held per event (a copy; store it to resume after a page reload). */
  since() {
    return { ...this._since };
  }

  /** The prefetched payload of `key` in `event`'s map, or undefined. */
  stage(event, key) {
    const m = this.maps.get(event);
    return m && Object.prototype.hasOwnProperty.call(m.stages, key) ? m.stages[key] : undefined;
  }

  async token() {
    const t = this.tokenSource;
    return typeof t === "function" ? await t() : t;
  }

  async connect() {
    if (this.stopped) return;
    let token;
    try {
      token = await this.token();
    } catch (e) {
      this.retry(1006, "token: " + e, null);
      return;
    }
    if (this.stopped) return;
    const url = subscribeUrl(this.edge, this.events, this._since, token);
    // The URL as reported leaves the token out: pages log their status.
    const shown = url.replace(/([?&]token=)[^&]*/, "$1(token)");
    this.onStatus({ state: "connecting", url: shown, since: this.since(), attempt: this.attempt });
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (e) {
      this.retry(1006, String(e), null);
      return;
    }
    this.ws = ws;
    let openedAt = null;
    ws.onopen = () => {
      openedAt = this.now();
      this.onStatus({ state: "open" });
    };
    ws.onmessage = (m) => {
      if (typeof m.data === "string") this.take(m.data);
    };
    ws.onclose = (c) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (openedAt !== null && this.now() - openedAt >= HEALTHY_AFTER_MS) this.attempt = 0;
      this.retry(c.code, c.reason, retryAfterHint(c.reason));
    };
  }

  /**
   * Schedules the next connection. A drain hint is waited out as given, plus up to one second
   * so devices told the same whole second do not come back in the same millisecond; any
   * other close backs off. A browser never sees why a WebSocket upgrade was refused (a 503's
   * Retry-After, a 401), so refusals back off too, and the token is asked again each time.
   */
  retry(code, reason, hintS) {
    if (this.stopped) return;
    let waitMs;
    if (hintS !== null) {
      this.attempt = 0;
      waitMs = hintS * 1000 + Math.floor(this.random() * 1000);
    } else {
      waitMs = backoffDelay(this.attempt, this.baseMs, this.maxMs, this.random);
      this.attempt += 1;
    }
    this.onStatus({ state: "closed", code, reason, waitMs });
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), waitMs);
  }

  take(text) {
    const cue = parseCue(text);
    if (!cue || !this.events.includes(cue.event)) return;
    if (!isNew(this._since, cue)) {
      this.onStatus({ state: "duplicate", event: cue.event, seq: cue.seq });
      return;
    }
    this._since[cue.event] = cue.seq;
    const stage = this.stage(cue.event, cue.key);
    if (this.prefetchBase && !this.maps.has(cue.event) && !this.fetching.has(cue.event)) {
      this.planMap(cue.event, true);
    }
    this.onCue({ ...cue, stage });
  }

  /** Sets the timer of an event's next map request (see `nextFetch`). */
  async planMap(event, live) {
    if (this.stopped) return;
    if (!this.maps.has(event) && !this.schedules.has(event) && !live) {
      await this.fetchSchedule(event);
      if (this.stopped) return;
    }
    const plan = nextFetch(this.maps.get(event) || null, this.schedules.get(event), live, this.now());
    // Not even a cue lifts a server's Retry-After: the map request waits it out.
    const at = Math.max(plan.at, this.notBefore.get(event) || 0);
    this.after(event, at - this.now(), () => this.fetchMap(event, plan.priority));
  }

  /** Waits `ms` before the next map request of `event`, and lets no plan go sooner. */
  holdOff(event, ms, f) {
    this.notBefore.set(event, this.now() + ms);
    this.after(event, ms, f);
  }

  after(event, ms, f) {
    clearTimeout(this.mapTimers.get(event));
    const wait = Math.max(0, ms);
    const step = Math.min(wait, MAX_TIMER_MS);
    this.mapTimers.set(
      event,
      setTimeout(() => (step < wait ? this.after(event, wait - step, f) : f()), step),
    );
  }

  async request(path, headers) {
    const token = await this.token();
    const h = { ...headers };
    if (token) h.Authorization = "Bearer " + token;
    const q = this.device ? "?device=" + encodeURIComponent(this.device) : "";
    return fetch(this.prefetchBase + path + q, { headers: h, cache: "no-store" });
  }

  async fetchSchedule(event) {
    try {
      const r = await this.request(`/v1/events/${encodeURIComponent(event)}/schedule`, {});
      if (r.ok) {
        const s = await r.json();
        if (Number.isSafeInteger(s.prefetch_at)) this.schedules.set(event, s.prefetch_at);
      }
    } catch {
      // No schedule: the map is fetched now, which is what a device with no schedule does.
    }
  }

  /** One map request; the answer decides the next (docs/prefetch.md, "What a device should do"). */
  async fetchMap(event, priority) {
    if (this.stopped || this.fetching.has(event)) return;
    this.fetching.add(event);
    try {
      await this.fetchMapOnce(event, priority);
    } finally {
      this.fetching.delete(event);
    }
  }

  async fetchMapOnce(event, priority) {
    const held = this.maps.get(event);
    const headers = { "X-Cue-Priority": priority };
    if (held) headers["If-None-Match"] = held.etag;
    let r;
    try {
      r = await this.request(`/v1/events/${encodeURIComponent(event)}/prefetch`, headers);
    } catch {
      this.mapRetry(event, 0, priority === "critical");
      return;
    }
    if (this.stopped) return;
    const ttlMs = (maxAge(r.headers.get("Cache-Control")) ?? 60) * 1000;
    if (r.status === 200) {
      let body;
      try {
        body = await r.json();
      } catch {
        this.mapRetry(event, r.status, priority === "critical");
        return;
      }
      this.maps.set(event, {
        stages: body.stages || {},
        etag: r.headers.get("ETag"),
        expiresAt: this.now() + ttlMs,
      });
      this.mapFailures.delete(event);
      this.onMap({ event, status: 200 });
    } else if (r.status === 304 && held) {
      held.expiresAt = this.now() + ttlMs;
      this.mapFailures.delete(event);
      this.onMap({ event, status: 304 });
    } else if (r.status === 404) {
      this.onStatus({ state: "map-error", event, status: 404, waitMs: null });
      return; // the event is not (or no longer) offered: stop asking
    } else if (r.status === 503) {
      const s = retryAfterHeader(r.headers.get("Retry-After"), this.now());
      const waitMs = s !== null ? s * 1000 : this.mapBackoff(event);
      this.onStatus({ state: "map-error", event, status: 503, waitMs });
      this.holdOff(event, waitMs, () => this.fetchMap(event, priority));
      return;
    } else {
      this.mapRetry(event, r.status, priority === "critical");
      return;
    }
    this.planMap(event, false);
  }

  mapBackoff(event) {
    const n = this.mapFailures.get(event) || 0;
    this.mapFailures.set(event, n + 1);
    return backoffDelay(n, Math.max(this.baseMs, 1000), Math.max(this.maxMs, 60000), this.random);
  }

  mapRetry(event, status, critical) {
    const waitMs = this.mapBackoff(event);
    this.onStatus({ state: "map-error", event, status, waitMs });
    this.holdOff(event, waitMs, () =>
      this.fetchMap(event, this.maps.has(event) ? "background" : critical ? "critical" : "normal"),
    );
  }
}
