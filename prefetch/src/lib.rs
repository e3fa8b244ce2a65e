//! `cue-prefetch`: the prefetch service (stage maps, jittered TTLs, prefetch schedule, priority
//! shedding).
//!
//! **Not built yet.** This crate is an empty placeholder so the workspace has the product's
//! layout; its own issue fills it. It has no binary and pretends to do nothing.
