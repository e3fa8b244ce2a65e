//! `cue-tune`: host checks and tuning. Being built (issue 5).
