//! The embedded durable cue log: the origin's default store.
//!
//! The origin answers `201` to a publish only once the cue is in this log and the log has been
//! flushed to stable storage. The log keeps what the origin must never forget across a restart:
//! the newest cue of every event ([`CueLog::latest`]). It is not a history: compaction throws away
//! every cue that is not the newest of its event, so it cannot replay old cues to anyone.
//!
//! It does not assign seqs or timestamps (the publish path does, and passes finished cues in), it
//! reads no clock and no RNG (beyond std's `HashMap` seed, which changes no outcome), and it does
//! no I/O except on its own directory. It is synchronous: the caller runs it where blocking on
//! `fdatasync` is acceptable.
//!
//! # On-disk layout
//!
//! One directory (`--data-dir`) holds:
//!
//! ```text
//! cues.log        the log, append-only between compactions
//! cues.log.tmp    exists only while a compaction (or the very first creation) is being
//!                 written; a leftover one is removed on open
//! ```
//!
//! `cues.log` is an 8-byte header followed by records back to back up to the end of the file:
//!
//! ```text
//! offset  size  field
//! 0       8     magic "CUELOG1\n" (43 55 45 4C 4F 47 31 0A)
//! 8       ...   records
//! ```
//!
//! Each record:
//!
//! ```text
//! offset  size  field
//! 0       4     L = payload length, u32 little-endian, 1..=MAX_RECORD_LEN (182)
//! 4       4     CRC-32C (Castagnoli) of the L payload bytes, u32 little-endian
//! 8       L     payload: a `cue_common::cue::Record`: one cue in its binary form (version
//!               byte first, big-endian integers inside); or tag 0xF1, a class byte (0
//!               critical, 2 background) and the cue: a cue whose publish gave its event
//!               that priority class; or a retirement (tag 0xF0, the event, its newest seq
//!               and the time): the event's cues up to that seq are gone; compaction drops
//!               both
//! ```
//!
//! There is no other framing: no batch markers, no footer, no index. Within one event, seqs
//! increase from record to record; records of different events interleave freely. An event's
//! class is its newest cue's. A build from before classes (tag 0xF1) reads a classed record as
//! corrupt and skips it, saying so: downgrading the origin past classes is not supported while
//! the log holds one (publish the event once as normal first, or start from an empty log).
//!
//! # Durability
//!
//! [`CueLog::append`] writes a whole batch with one positioned write at the end of the file, then
//! `fdatasync`s once (group commit), and only then changes [`CueLog::latest`]. If anything fails it
//! truncates the file back to where the batch started, so a batch that was refused leaves nothing
//! behind; if even that fails the log is poisoned until a restart (whose recovery cleans up).
//! The file is only ever replaced whole, by writing `cues.log.tmp`, fsyncing it, renaming it over
//! `cues.log` and fsyncing the directory, so `cues.log` always starts with a complete header.
//!
//! With [`LogOptions::sync`] off (benchmarks only) no `fsync`/`fdatasync` happens on the append
//! and compaction paths: a process crash loses nothing, a kernel crash or power cut can.
//!
//! # Recovery
//!
//! [`CueLog::open`] reads every record from the start. An invalid record (a short header, `L` =
//! 0 or above `MAX_RECORD_LEN`, a short payload, a CRC mismatch, or a payload that decodes as
//! neither a cue nor a retirement) followed by valid records is a corrupt region: the scan
//! resynchronises at the next offset where a whole record with a good CRC and a decodable payload
//! starts, reports the region in [`Recovery::skipped`] (its records are lost; every record after
//! it is kept), and `open` rewrites the file without it (a compaction). Invalid bytes with no
//! valid record after them are a torn tail, cut off with `ftruncate` + `fsync` and reported in
//! [`Recovery::torn_bytes`], never served. A file whose
//! header is not the magic (including an empty or shorter file) is refused with
//! [`LogError::BadMagic`] and left untouched, and so is the rest of the directory. The directory
//! is locked (`flock`) while a `CueLog` is open, so two processes never share one log.
//!
//! # Compaction
//!
//! When an append leaves the file above [`LogOptions::max_bytes`], the log is rewritten to hold
//! exactly the newest cue of every event (sorted by event name). A compaction costs one write of
//! the live set, O(events). If the live set alone is above `max_bytes / 2` a warning is logged, and
//! the next compaction waits until the file has doubled from its compacted size, so a log with too
//! many events for its limit compacts every so often rather than on every append.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use cue_common::cue::{Cue, EventName, Priority, Record, MAX_RECORD_LEN};

/// Name of the log file inside the data directory.
pub const LOG_FILE_NAME: &str = "cues.log";
/// Name of the file a compaction writes before renaming it over [`LOG_FILE_NAME`].
pub const TMP_FILE_NAME: &str = "cues.log.tmp";
/// The 8-byte file header.
pub const MAGIC: [u8; 8] = *b"CUELOG1\n";
/// Bytes in front of each record's payload: length and CRC-32C, both u32 little-endian.
pub const RECORD_HEADER_LEN: usize = 8;
/// Default [`LogOptions::max_bytes`]: 64 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;

/// How the log behaves. `Default` is what production wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOptions {
    /// File size above which an append triggers a compaction. Default 64 MiB
    /// ([`DEFAULT_MAX_BYTES`]).
    /// Larger means rarer compactions but a longer open, which reads the whole file; each
    /// compaction rewrites the newest cue of every event (about 40-160 bytes per event).
    pub max_bytes: u64,
    /// `fdatasync` every batch (and `fsync` compactions) before reporting success. Default `true`.
    /// `false` only for benchmarks: acknowledged cues survive a process crash but not a kernel
    /// crash or power loss.
    pub sync: bool,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_BYTES,
            sync: true,
        }
    }
}

/// What [`CueLog::open`] found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Valid records read from the file (before any compaction done by `open`).
    pub records: u64,
    /// Bytes of torn tail that were cut off the end of the file: an interrupted or corrupt write.
    pub torn_bytes: u64,
    /// `Some(len)` when the recovered file was above `max_bytes` (for example after lowering it)
    /// or held corrupt regions, and `open` compacted it; `len` is the size before compaction.
    pub compacted_from: Option<u64>,
    /// Corrupt regions skipped between valid records, `[start, end)` byte offsets: the records
    /// in them are lost (each is logged with its range); every record after them was kept.
    pub skipped: Vec<(u64, u64)>,
}

/// Why the log refused an operation. Every failure is the origin's own (its disk, its state, or
/// its publish path), never a device's. See [`LogError::retryable`].
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A system call on the log's files failed. `op` says what was being done, `path` to which
    /// file or directory. On an append the file is back to its length before the batch. Retrying
    /// helps only for transient kinds (interrupted, would block, out of space or quota).
    #[error("cue log: cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. `"fdatasync"`.
        op: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file exists but does not start with [`MAGIC`]: not a cue log, or a newer format. The
    /// log refuses to start and leaves the file untouched. Retrying does not help; an operator
    /// must move the file or point `--data-dir` elsewhere.
    #[error("cue log: {} is not a cue log (bad magic); refusing to touch it", path.display())]
    BadMagic {
        /// The offending file.
        path: PathBuf,
    },
    /// A cue's seq is not above the seq the log already holds for its event (or an earlier cue of
    /// the same batch). Nothing of the batch was written. A bug or race in the caller's seq
    /// assignment: retrying the same cue does not help.
    #[error("cue log: seq {seq} for event {event} is not above its current seq {current}")]
    SeqNotIncreasing {
        /// The event of the refused cue.
        event: EventName,
        /// The refused cue's seq.
        seq: u64,
        /// The seq it had to exceed.
        current: u64,
    },
    /// An earlier failure could not be cleaned up (a batch could not be truncated away, or a
    /// compaction's rename could not be made durable), so the file may not match what the log
    /// holds in memory. Every append fails until a restart, whose recovery repairs the file.
    /// Retrying does not help.
    #[error("cue log: poisoned by an earlier I/O failure; restart the origin to recover")]
    Poisoned,
}

impl LogError {
    /// True when the same call may succeed if tried again later, with no change on the caller's
    /// side (a publisher may then be told `503` with `Retry-After`).
    pub fn retryable(&self) -> bool {
        match self {
            LogError::Io { source, .. } => {
                matches!(
                    source.kind(),
                    io::ErrorKind::Interrupted
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                ) || matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
            }
            LogError::BadMagic { .. } | LogError::SeqNotIncreasing { .. } | LogError::Poisoned => {
                false
            }
        }
    }
}

/// The durable cue log of one data directory. See the module docs for its file format.
pub struct CueLog {
    dir: PathBuf,
    path: PathBuf,
    /// The open directory: holds the `flock` and is what directory fsyncs go through.
    dir_file: File,
    file: File,
    opts: LogOptions,
    /// Bytes in `cues.log`, header included: where the next batch goes.
    len: u64,
    latest: HashMap<EventName, Cue>,
    /// Class of the events in `latest` whose newest cue is not normal.
    classes: HashMap<EventName, Priority>,
    /// Events whose last record at open was a retirement.
    retired_at_open: Vec<EventName>,
    compactions: u64,
    /// Size of the file right after the last compaction (0 before any).
    compacted_len: u64,
    poisoned: bool,
    /// Reused encoding buffer for batches.
    buf: Vec<u8>,
}

impl fmt::Debug for CueLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CueLog")
            .field("path", &self.path)
            .field("len", &self.len)
            .field("events", &self.latest.len())
            .field("compactions", &self.compactions)
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

impl CueLog {
    /// Opens (creating if missing) the log in `dir`, recovers it and rebuilds [`CueLog::latest`].
    ///
    /// Creates `dir` and `cues.log` if they do not exist, fsyncing the directory that gained an
    /// entry. Refuses a `cues.log` with a bad header ([`LogError::BadMagic`]) without changing
    /// anything. Cuts off a torn tail, removes a leftover `cues.log.tmp`, and compacts if the
    /// recovered file is above `max_bytes`. Fails with an `Io` error of kind `WouldBlock` if
    /// another `CueLog` (in any process) holds `dir`.
    pub fn open(dir: &Path, opts: LogOptions) -> Result<(CueLog, Recovery), LogError> {
        create_dir(dir)?;
        let dir_file = File::open(dir).map_err(io_err("open directory", dir))?;
        lock_exclusive(&dir_file).map_err(io_err("lock (another process has it open)", dir))?;
        let path = dir.join(LOG_FILE_NAME);
        let tmp = dir.join(TMP_FILE_NAME);

        let existing = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => Some(file),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err("open", &path)(e)),
        };
        // The header is checked before anything in the directory is changed: a directory that
        // holds some other program's `cues.log` is left exactly as it was.
        let scan = match &existing {
            Some(file) => Some(scan(file, &path)?),
            None => None,
        };
        match fs::remove_file(&tmp) {
            Ok(()) => sync_dir(&dir_file, dir)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove leftover", &tmp)(e)),
        }

        let mut recovery = Recovery::default();
        let (file, len, latest, classes, retired_at_open) = match (existing, scan) {
            (Some(file), Some(scan)) => {
                recovery.records = scan.records;
                recovery.torn_bytes = scan.file_len - scan.valid_len;
                for &(from, to) in &scan.skipped {
                    tracing::error!(
                        path = %path.display(), from, to, bytes = to - from,
                        "cue log: corrupt region skipped; the records in it are lost, every record after it is kept"
                    );
                }
                recovery.skipped = scan.skipped.clone();
                if recovery.torn_bytes > 0 {
                    file.set_len(scan.valid_len)
                        .map_err(io_err("truncate torn tail of", &path))?;
                    file.sync_all().map_err(io_err("fsync", &path))?;
                }
                let retired = scan.retired.into_iter().collect();
                (file, scan.valid_len, scan.latest, scan.classes, retired)
            }
            _ => {
                // Created through the temp file so that `cues.log` never exists without its
                // header: a crash here leaves either no log or a complete empty one.
                let (file, len) = write_tmp(&tmp, &[], true)?;
                install_tmp(&tmp, &path)?;
                sync_dir(&dir_file, dir)?;
                (file, len, HashMap::new(), HashMap::new(), Vec::new())
            }
        };

        let mut log = CueLog {
            dir: dir.to_owned(),
            path,
            dir_file,
            file,
            opts,
            len,
            latest,
            classes,
            retired_at_open,
            compactions: 0,
            compacted_len: 0,
            poisoned: false,
            buf: Vec::new(),
        };
        // Above the limit, or holding corrupt bytes: rewrite it to the live set.
        if log.len > log.opts.max_bytes || !recovery.skipped.is_empty() {
            let before = log.len;
            match log.compact() {
                Ok(()) => recovery.compacted_from = Some(before),
                Err(e) if log.poisoned => return Err(e),
                // The uncompacted file is still a valid log; the next append tries again.
                Err(e) => tracing::warn!(error = %e, "cue log: compaction at open failed"),
            }
        }
        Ok((log, recovery))
    }

    /// The newest cue (highest seq) of every event in the log.
    pub fn latest(&self) -> &HashMap<EventName, Cue> {
        &self.latest
    }

    /// The class of `event`: its newest cue's (normal for an event without a cue).
    pub fn class(&self, event: &EventName) -> Priority {
        self.classes.get(event).copied().unwrap_or_default()
    }

    /// Every event whose class is not normal, with its class.
    pub fn classes(&self) -> &HashMap<EventName, Priority> {
        &self.classes
    }

    /// The events whose last record, when the log was opened, was a retirement (retired and not
    /// published since; a compaction had not dropped the record yet).
    pub fn retired_at_open(&self) -> &[EventName] {
        &self.retired_at_open
    }

    /// Makes a batch durable: one write of all its records, one `fdatasync` (when
    /// [`LogOptions::sync`]), then [`CueLog::latest`] is updated. Returns only once the batch is
    /// durable; an empty batch is a no-op.
    ///
    /// Every cue's seq must be above its event's current seq, including earlier cues of the same
    /// batch; this is checked for the whole batch before anything is written
    /// ([`LogError::SeqNotIncreasing`]). On an I/O error the file is truncated back to its length
    /// before the batch, so none of the batch can be served later; if that truncation fails too,
    /// [`LogError::Poisoned`] is returned now and on every later append.
    ///
    /// May compact afterwards (see the module docs). A failed compaction does not fail the append:
    /// the batch is durable either way; it is logged and retried on the next append.
    ///
    /// Every cue is of the normal class; [`CueLog::append_classed`] gives each its own.
    pub fn append(&mut self, cues: &[Cue]) -> Result<(), LogError> {
        self.append_classed(cues, |_| Priority::Normal)
    }

    /// [`CueLog::append`], each cue with the class `class_of(i)` gives the `i`-th: the class
    /// its publish gave its event, kept with the cue (and at compaction) so that the event's
    /// class outlives a restart.
    pub fn append_classed(
        &mut self,
        cues: &[Cue],
        class_of: impl Fn(usize) -> Priority,
    ) -> Result<(), LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned);
        }
        self.check_seqs(cues)?;
        if cues.is_empty() {
            return Ok(());
        }
        self.buf.clear();
        for (i, cue) in cues.iter().enumerate() {
            encode_record(cue, class_of(i), &mut self.buf);
        }
        let start = self.len;
        if let Err(e) = self.write_batch(start) {
            return Err(self.roll_back(start, e));
        }
        self.len = start + self.buf.len() as u64;
        for (i, cue) in cues.iter().enumerate() {
            match self.latest.get_mut(cue.event()) {
                Some(slot) => *slot = cue.clone(),
                None => {
                    self.latest.insert(cue.event().clone(), cue.clone());
                }
            }
            set_class(&mut self.classes, cue.event(), class_of(i));
        }
        if self.len > self.compact_at() {
            if let Err(e) = self.compact() {
                if self.poisoned {
                    tracing::error!(error = %e, "cue log: compaction poisoned the log; restart");
                } else {
                    tracing::warn!(error = %e, "cue log: compaction failed; will retry");
                }
            }
        }
        Ok(())
    }

    /// Retires `event`: a retirement record (its newest seq, and `ts`) is made durable as an
    /// append is, then the event leaves [`CueLog::latest`]; the next compaction drops its cue
    /// and the record. Returns the newest seq it had, or `None` (nothing written) when it has
    /// no cue.
    pub fn retire(&mut self, event: &EventName, ts: u64) -> Result<Option<u64>, LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned);
        }
        let Some(seq) = self.latest.get(event).map(Cue::seq) else {
            return Ok(None);
        };
        self.buf.clear();
        encode_any(
            &Record::Retired {
                event: event.clone(),
                seq,
                ts,
            },
            &mut self.buf,
        );
        let start = self.len;
        if let Err(e) = self.write_batch(start) {
            return Err(self.roll_back(start, e));
        }
        self.len = start + self.buf.len() as u64;
        self.latest.remove(event);
        self.classes.remove(event);
        Ok(Some(seq))
    }

    /// Bytes in `cues.log`, header included.
    pub fn len_bytes(&self) -> u64 {
        self.len
    }

    /// Compactions done since open (including one done by `open` itself).
    pub fn compactions(&self) -> u64 {
        self.compactions
    }

    /// Number of events with a cue in the log.
    pub fn events(&self) -> usize {
        self.latest.len()
    }

    /// True once the log refuses appends until a restart (for health checks).
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Path of `cues.log`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check_seqs(&self, cues: &[Cue]) -> Result<(), LogError> {
        // Seqs of earlier cues of this batch, which later ones must exceed too.
        let mut pending: BTreeMap<&EventName, u64> = BTreeMap::new();
        for cue in cues {
            let current = pending
                .get(cue.event())
                .copied()
                .or_else(|| self.latest.get(cue.event()).map(Cue::seq));
            if let Some(current) = current {
                if cue.seq() <= current {
                    return Err(LogError::SeqNotIncreasing {
                        event: cue.event().clone(),
                        seq: cue.seq(),
                        current,
                    });
                }
            }
            pending.insert(cue.event(), cue.seq());
        }
        Ok(())
    }

    fn write_batch(&self, at: u64) -> Result<(), LogError> {
        self.file
            .write_all_at(&self.buf, at)
            .map_err(io_err("write", &self.path))?;
        if self.opts.sync {
            self.file
                .sync_data()
                .map_err(io_err("fdatasync", &self.path))?;
        }
        Ok(())
    }

    /// Cuts a failed batch off the file and returns the error to report.
    fn roll_back(&mut self, len: u64, cause: LogError) -> LogError {
        let res = self.file.set_len(len).and_then(|()| {
            if self.opts.sync {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        match res {
            Ok(()) => cause,
            Err(e) => {
                // Part of the batch may still be in the file. Recovery at the next open keeps
                // whatever records of it are whole, which is safe (each cue is complete and its seq
                // is fresh) but was never acknowledged, and this process can no longer tell where
                // its file ends: stop appending.
                self.poisoned = true;
                tracing::error!(
                    error = %cause, truncate_error = %e, path = %self.path.display(),
                    "cue log: could not remove a failed batch; log poisoned, restart the origin"
                );
                LogError::Poisoned
            }
        }
    }

    /// File size above which the next append compacts.
    fn compact_at(&self) -> u64 {
        self.opts
            .max_bytes
            .max(self.compacted_len.saturating_mul(2))
    }

    /// Rewrites the file to hold exactly the newest cue of every event.
    fn compact(&mut self) -> Result<(), LogError> {
        let tmp = self.dir.join(TMP_FILE_NAME);
        let mut cues: Vec<(&Cue, Priority)> = self
            .latest
            .values()
            .map(|c| (c, self.class(c.event())))
            .collect();
        cues.sort_unstable_by(|a, b| a.0.event().cmp(b.0.event()));
        let before = self.len;
        let (file, len) = write_tmp(&tmp, &cues, self.opts.sync)?;
        install_tmp(&tmp, &self.path)?;
        // From here `cues.log` names the new file. Until the directory is synced a crash may bring
        // back the old one, which is as valid, but appends made to the new file after that would
        // be lost: so a failed directory sync poisons the log.
        self.file = file;
        self.len = len;
        self.compacted_len = len;
        self.compactions += 1;
        if self.opts.sync {
            if let Err(e) = sync_dir(&self.dir_file, &self.dir) {
                self.poisoned = true;
                return Err(e);
            }
        }
        if len > self.opts.max_bytes / 2 {
            tracing::warn!(
                path = %self.path.display(), bytes = len, max_bytes = self.opts.max_bytes,
                events = self.latest.len(),
                "cue log: compacted log still above max_bytes/2 (too many events); raise max_bytes"
            );
        } else {
            tracing::debug!(
                from = before,
                to = len,
                events = self.latest.len(),
                "cue log compacted"
            );
        }
        Ok(())
    }
}

/// Keeps `event`'s class in `classes` (which holds only the classes other than normal).
fn set_class(classes: &mut HashMap<EventName, Priority>, event: &EventName, class: Priority) {
    if class == Priority::Normal {
        classes.remove(event);
    } else if let Some(slot) = classes.get_mut(event) {
        *slot = class;
    } else {
        classes.insert(event.clone(), class);
    }
}

/// Appends one record (header and payload) for `cue` of `class` to `out`.
fn encode_record(cue: &Cue, class: Priority, out: &mut Vec<u8>) {
    encode_any(&Record::Cue(cue.clone(), class), out)
}

/// Appends one record (header and payload) for `rec` (a cue or a retirement) to `out`.
fn encode_any(rec: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; RECORD_HEADER_LEN]);
    rec.write_binary(out);
    let payload = &out[start + RECORD_HEADER_LEN..];
    debug_assert!(payload.len() <= MAX_RECORD_LEN);
    let len = payload.len() as u32;
    let crc = crc32c::crc32c(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// What a read of the whole file found.
struct Scan {
    latest: HashMap<EventName, Cue>,
    classes: HashMap<EventName, Priority>,
    /// Events whose last record is a retirement.
    retired: std::collections::HashSet<EventName>,
    records: u64,
    /// Bytes up to the end of the last valid record (header included).
    valid_len: u64,
    file_len: u64,
    /// Corrupt regions between valid records, `[start, end)` byte offsets.
    skipped: Vec<(u64, u64)>,
}

/// The record at `at` in `bytes` and its size, if a whole valid one starts there.
fn record_at(bytes: &[u8], at: usize) -> Option<(Record, usize)> {
    let header = bytes.get(at..at + RECORD_HEADER_LEN)?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    if len == 0 || len > MAX_RECORD_LEN {
        return None;
    }
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    let payload = bytes.get(at + RECORD_HEADER_LEN..at + RECORD_HEADER_LEN + len)?;
    if crc32c::crc32c(payload) != crc {
        return None;
    }
    Some((Record::from_binary(payload).ok()?, RECORD_HEADER_LEN + len))
}

/// Reads the header and every valid record. An invalid record followed by valid ones is a
/// corrupt region: skipped (resynchronising at the next offset where a whole record with a
/// good CRC and a decodable payload starts) and reported, so one bad record never hides the
/// acknowledged cues after it. Invalid bytes with no valid record after them are a torn tail
/// (`valid_len` ends before them). Changes nothing.
fn scan(file: &File, path: &Path) -> Result<Scan, LogError> {
    let file_len = file.metadata().map_err(io_err("stat", path))?.len();
    let mut bytes = Vec::with_capacity(file_len as usize);
    BufReader::with_capacity(64 << 10, file)
        .read_to_end(&mut bytes)
        .map_err(io_err("read", path))?;
    if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
        return Err(LogError::BadMagic {
            path: path.to_owned(),
        });
    }
    let mut out = Scan {
        latest: HashMap::new(),
        classes: HashMap::new(),
        retired: Default::default(),
        records: 0,
        valid_len: MAGIC.len() as u64,
        file_len: bytes.len() as u64,
        skipped: Vec::new(),
    };
    let mut at = MAGIC.len();
    while at < bytes.len() {
        let (rec, n) = match record_at(&bytes, at) {
            Some(r) => r,
            None => match (at + 1..bytes.len()).find(|&q| record_at(&bytes, q).is_some()) {
                Some(q) => {
                    out.skipped.push((at as u64, q as u64));
                    at = q;
                    continue;
                }
                None => break,
            },
        };
        at += n;
        out.records += 1;
        out.valid_len = at as u64;
        match rec {
            Record::Retired { event, seq, .. } => {
                // The event's cues up to `seq` are gone; a later cue (higher seq) starts it anew.
                if out.latest.get(&event).is_some_and(|c| c.seq() <= seq) {
                    out.latest.remove(&event);
                    out.classes.remove(&event);
                }
                out.retired.insert(event);
            }
            Record::Cue(cue, class) => {
                out.retired.remove(cue.event());
                // Seqs only grow within an event, so this keeps the last record; the check
                // keeps the highest seq even if a file were somehow out of order.
                match out.latest.get_mut(cue.event()) {
                    Some(slot) if slot.seq() >= cue.seq() => continue,
                    Some(slot) => *slot = cue.clone(),
                    None => {
                        out.latest.insert(cue.event().clone(), cue.clone());
                    }
                }
                set_class(&mut out.classes, cue.event(), class);
            }
        }
    }
    Ok(out)
}

/// Writes a complete log holding `cues` to `tmp` (replacing any old one) and syncs it when
/// `sync`. Returns the open file and its length. Removes `tmp` on failure.
fn write_tmp(tmp: &Path, cues: &[(&Cue, Priority)], sync: bool) -> Result<(File, u64), LogError> {
    let mut buf = Vec::with_capacity(
        MAGIC.len()
            + cues
                .iter()
                .map(|(c, _)| RECORD_HEADER_LEN + 2 + c.binary_len())
                .sum::<usize>(),
    );
    buf.extend_from_slice(&MAGIC);
    for (cue, class) in cues {
        encode_record(cue, *class, &mut buf);
    }
    match create_and_write(tmp, &buf, sync) {
        Ok(file) => Ok((file, buf.len() as u64)),
        Err(e) => {
            let _ = fs::remove_file(tmp);
            Err(e)
        }
    }
}

fn create_and_write(tmp: &Path, bytes: &[u8], sync: bool) -> Result<File, LogError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)
        .map_err(io_err("create", tmp))?;
    file.write_all_at(bytes, 0).map_err(io_err("write", tmp))?;
    if sync {
        file.sync_all().map_err(io_err("fsync", tmp))?;
    }
    Ok(file)
}

/// Renames `tmp` over `path`. On failure `path` is unchanged and `tmp` is removed.
fn install_tmp(tmp: &Path, path: &Path) -> Result<(), LogError> {
    fs::rename(tmp, path).map_err(|e| {
        let _ = fs::remove_file(tmp);
        io_err("rename over it", path)(e)
    })
}

/// Creates `dir` (and its parents) if missing, and makes the new entry durable.
fn create_dir(dir: &Path) -> Result<(), LogError> {
    if dir.try_exists().map_err(io_err("stat", dir))? {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let parent_file = File::open(parent).map_err(io_err("open directory", parent))?;
    sync_dir(&parent_file, parent)
}

fn sync_dir(dir_file: &File, dir: &Path) -> Result<(), LogError> {
    dir_file.sync_all().map_err(io_err("fsync directory", dir))
}

/// Takes an exclusive, non-blocking `flock` on an open directory; released when it is closed.
fn lock_exclusive(dir_file: &File) -> io::Result<()> {
    // SAFETY: `flock` reads no memory of ours; it takes a descriptor, which stays open for the
    // whole call because `dir_file` is borrowed, and constant flags.
    let rc = unsafe { libc::flock(dir_file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl Fn(io::Error) -> LogError + 'a {
    move |source| LogError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Fast options for tests that are not about fsync: no compaction, no syncs.
    fn no_sync() -> LogOptions {
        LogOptions {
            max_bytes: u64::MAX,
            sync: false,
        }
    }

    fn cue(event: &str, key: &str, seq: u64) -> Cue {
        Cue::new(event, key, seq, 1_764_460_800_000 + seq).unwrap()
    }

    fn open(dir: &Path, opts: LogOptions) -> (CueLog, Recovery) {
        CueLog::open(dir, opts).unwrap()
    }

    fn log_path(dir: &Path) -> PathBuf {
        dir.join(LOG_FILE_NAME)
    }

    fn record_len(c: &Cue) -> u64 {
        (RECORD_HEADER_LEN + c.binary_len()) as u64
    }

    fn model_latest<'a>(cues: impl IntoIterator<Item = &'a Cue>) -> HashMap<EventName, Cue> {
        let mut m = HashMap::new();
        for c in cues {
            m.insert(c.event().clone(), c.clone());
        }
        m
    }

    /// An independent reader of the documented layout: every record, failing on anything odd.
    fn parse_file(bytes: &[u8]) -> Vec<Cue> {
        assert_eq!(&bytes[..8], b"CUELOG1\n");
        let mut rest = &bytes[8..];
        let mut out = Vec::new();
        while !rest.is_empty() {
            let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
            let crc = u32::from_le_bytes(rest[4..8].try_into().unwrap());
            let payload = &rest[8..8 + len];
            assert_eq!(crc32c::crc32c(payload), crc);
            out.push(Cue::from_binary(payload).unwrap());
            rest = &rest[8 + len..];
        }
        out
    }

    /// Three records (a#1, b#1, a#2); returns the file bytes and the offset of the last record.
    fn three_records(dir: &Path) -> (Vec<u8>, u64, Vec<Cue>) {
        let cues = vec![cue("a", "k1", 1), cue("b", "k1", 1), cue("a", "k2", 2)];
        let (mut log, _) = open(dir, no_sync());
        log.append(&cues[..2]).unwrap();
        let last_start = log.len_bytes();
        log.append(&cues[2..]).unwrap();
        drop(log);
        (fs::read(log_path(dir)).unwrap(), last_start, cues)
    }

    #[test]
    fn creates_dir_and_file_with_header_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("nested/data");
        let (log, rec) = open(&dir, LogOptions::default());
        assert_eq!(rec, Recovery::default());
        assert_eq!(log.len_bytes(), 8);
        assert_eq!(log.events(), 0);
        assert_eq!(fs::read(log_path(&dir)).unwrap(), b"CUELOG1\n");
        assert!(!dir.join(TMP_FILE_NAME).exists());
    }

    #[test]
    fn layout_is_exact() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cue("ev", "k:1", 7);
        let (mut log, _) = open(tmp.path(), no_sync());
        log.append(std::slice::from_ref(&c)).unwrap();
        let bytes = fs::read(log_path(tmp.path())).unwrap();
        let payload = c.to_binary();
        assert_eq!(bytes.len(), 8 + 8 + payload.len());
        assert_eq!(&bytes[8..12], &(payload.len() as u32).to_le_bytes());
        assert_eq!(&bytes[12..16], &crc32c::crc32c(&payload).to_le_bytes());
        assert_eq!(&bytes[16..], &payload[..]);
        assert_eq!(log.len_bytes(), bytes.len() as u64);
    }

    #[test]
    fn append_then_reopen_gives_same_latest() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut log, _) = open(tmp.path(), LogOptions::default());
        log.append(&[cue("a", "k1", 1), cue("b", "k1", 5)]).unwrap();
        log.append(&[cue("a", "k2", 2)]).unwrap();
        log.append(&[cue("a", "k3", 10), cue("c", "x", 1), cue("b", "k2", 6)])
            .unwrap();
        log.append(&[]).unwrap();
        let latest = log.latest().clone();
        assert_eq!(latest.len(), 3);
        assert_eq!(latest[&EventName::new("a").unwrap()], cue("a", "k3", 10));
        assert_eq!(latest[&EventName::new("b").unwrap()], cue("b", "k2", 6));
        let len = log.len_bytes();
        drop(log);
        let (log, rec) = open(tmp.path(), LogOptions::default());
        assert_eq!(log.latest(), &latest);
        assert_eq!(
            rec,
            Recovery {
                records: 6,
                torn_bytes: 0,
                compacted_from: None,
                skipped: vec![]
            }
        );
        assert_eq!(log.len_bytes(), len);
    }

    #[test]
    fn seq_not_increasing_is_refused_with_nothing_written() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut log, _) = open(tmp.path(), no_sync());
        log.append(&[cue("a", "k", 5), cue("b", "k", 1)]).unwrap();
        let len = log.len_bytes();
        let latest = log.latest().clone();
        let refused: [&[Cue]; 4] = [
            &[cue("a", "k", 5)],
            &[cue("b", "k", 2), cue("a", "k", 4)],
            &[cue("c", "k", 3), cue("c", "k", 3)],
            &[cue("c", "k", 3), cue("a", "k", 6), cue("c", "k", 2)],
        ];
        for batch in refused {
            let err = log.append(batch).unwrap_err();
            assert!(matches!(err, LogError::SeqNotIncreasing { .. }), "{err}");
            assert!(!err.retryable());
            assert_eq!(log.len_bytes(), len);
            assert_eq!(log.latest(), &latest);
        }
        match log.append(&[cue("a", "k", 4)]).unwrap_err() {
            LogError::SeqNotIncreasing {
                event,
                seq,
                current,
            } => {
                assert_eq!((event.as_str(), seq, current), ("a", 4, 5));
            }
            e => panic!("{e}"),
        }
        assert_eq!(fs::metadata(log_path(tmp.path())).unwrap().len(), len);
        // Still usable afterwards.
        log.append(&[cue("a", "k", 6)]).unwrap();
    }

    #[test]
    fn torn_tail_at_every_offset_of_last_record() {
        let tmp = tempfile::tempdir().unwrap();
        let (full, last_start, cues) = three_records(tmp.path());
        let without_last = model_latest(&cues[..2]);
        for cut in last_start..full.len() as u64 {
            fs::write(log_path(tmp.path()), &full).unwrap();
            File::options()
                .write(true)
                .open(log_path(tmp.path()))
                .unwrap()
                .set_len(cut)
                .unwrap();
            let (mut log, rec) = open(tmp.path(), no_sync());
            assert_eq!(log.latest(), &without_last, "cut at {cut}");
            assert_eq!(rec.records, 2);
            assert_eq!(rec.torn_bytes, cut - last_start);
            assert_eq!(log.len_bytes(), last_start);
            assert_eq!(
                fs::metadata(log_path(tmp.path())).unwrap().len(),
                last_start
            );
            let next = cue("a", "k9", 3);
            log.append(std::slice::from_ref(&next)).unwrap();
            drop(log);
            let (log, rec) = open(tmp.path(), no_sync());
            assert_eq!(
                rec,
                Recovery {
                    records: 3,
                    torn_bytes: 0,
                    compacted_from: None,
                    skipped: vec![]
                }
            );
            assert_eq!(log.latest(), &model_latest([&cues[0], &cues[1], &next]));
        }
    }

    #[test]
    fn corrupt_byte_in_last_record_drops_it() {
        let tmp = tempfile::tempdir().unwrap();
        let (full, last_start, cues) = three_records(tmp.path());
        let without_last = model_latest(&cues[..2]);
        let last_len = full.len() as u64 - last_start;
        // Every byte of the last record: length, crc and payload, with a few flip patterns.
        for i in last_start as usize..full.len() {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut bad = full.clone();
                bad[i] ^= mask;
                fs::write(log_path(tmp.path()), &bad).unwrap();
                let (log, rec) = open(tmp.path(), no_sync());
                assert_eq!(log.latest(), &without_last, "byte {i} ^ {mask:#x}");
                assert_eq!(rec.records, 2);
                assert_eq!(rec.torn_bytes, last_len);
            }
        }
    }

    #[test]
    fn a_bad_record_in_the_middle_is_skipped_and_every_later_one_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = no_sync();
        let cues: Vec<Cue> = (1..=40u64)
            .map(|i| cue(&format!("e{}", i % 7), &format!("k{i}"), i))
            .collect();
        let (mut log, _) = open(tmp.path(), opts);
        for c in &cues {
            log.append(std::slice::from_ref(c)).unwrap();
        }
        drop(log);
        let clean = fs::read(log_path(tmp.path())).unwrap();
        let rec_len = |i: usize| record_len(&cues[i]) as usize;
        // Offsets of record 20 and 21 (0-based).
        let start20 = MAGIC.len() + (0..20).map(rec_len).sum::<usize>();
        let start21 = start20 + rec_len(20);
        // Flip bytes in several places of record 20: its length, its CRC, its payload; and a
        // zero-filled record (a hole, as a lost write leaves).
        for (what, at) in [
            ("length", start20),
            ("crc", start20 + 5),
            ("payload", start20 + 12),
        ] {
            let mut bytes = clean.clone();
            bytes[at] ^= 0x5a;
            fs::write(log_path(tmp.path()), &bytes).unwrap();
            let (log, rec) = open(tmp.path(), opts);
            assert_eq!(
                rec.skipped,
                vec![(start20 as u64, start21 as u64)],
                "{what}"
            );
            assert_eq!(rec.torn_bytes, 0, "{what}");
            let mut want = model_latest(cues.iter().take(20).chain(cues.iter().skip(21)));
            // Record 20's event keeps its newest from before or after it.
            want.retain(|_, c| c.seq() != 21);
            assert_eq!(
                log.latest(),
                &want,
                "{what}: every record after the bad one is kept"
            );
            assert!(
                rec.compacted_from.is_some(),
                "{what}: rewritten without the bad bytes"
            );
            drop(log);
            let (_, again) = open(tmp.path(), opts);
            assert!(again.skipped.is_empty(), "{what}: the rewrite is clean");
            fs::write(log_path(tmp.path()), &clean).unwrap();
        }
        let mut bytes = clean.clone();
        bytes[start20..start21].fill(0);
        fs::write(log_path(tmp.path()), &bytes).unwrap();
        let (log, rec) = open(tmp.path(), opts);
        assert_eq!(rec.skipped, vec![(start20 as u64, start21 as u64)]);
        assert_eq!(log.latest()[&EventName::new("e5").unwrap()].seq(), 40);
    }

    #[test]
    fn garbage_after_valid_records_is_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let (full, _, cues) = three_records(tmp.path());
        let all = model_latest(&cues);
        // A well-formed record whose payload is not a cue.
        let mut undecodable = Vec::new();
        let junk = [9u8; 30];
        undecodable.extend_from_slice(&30u32.to_le_bytes());
        undecodable.extend_from_slice(&crc32c::crc32c(&junk).to_le_bytes());
        undecodable.extend_from_slice(&junk);
        let mut too_long = (MAX_RECORD_LEN as u32 + 1).to_le_bytes().to_vec();
        too_long.extend_from_slice(&[0u8; 200]);
        let tails: [Vec<u8>; 5] = [
            b"hello, garbage".to_vec(),
            vec![0u8; 4096],
            vec![0xffu8; 3],
            undecodable,
            too_long,
        ];
        for tail in tails {
            let mut bytes = full.clone();
            bytes.extend_from_slice(&tail);
            fs::write(log_path(tmp.path()), &bytes).unwrap();
            let (log, rec) = open(tmp.path(), no_sync());
            assert_eq!(log.latest(), &all);
            assert_eq!(rec.records, 3);
            assert_eq!(rec.torn_bytes, tail.len() as u64);
            drop(log);
            assert_eq!(fs::read(log_path(tmp.path())).unwrap(), full);
        }
    }

    #[test]
    fn bad_magic_is_refused_and_untouched() {
        let tmp = tempfile::tempdir().unwrap();
        let stray_tmp = tmp.path().join(TMP_FILE_NAME);
        for content in [
            &b"CUELOG2\nabcdefgh"[..],
            b"",
            b"CUE",
            b"not a cue log at all",
        ] {
            fs::write(log_path(tmp.path()), content).unwrap();
            fs::write(&stray_tmp, b"someone else's").unwrap();
            let err = CueLog::open(tmp.path(), LogOptions::default()).unwrap_err();
            assert!(matches!(err, LogError::BadMagic { .. }), "{err}");
            assert!(!err.retryable());
            assert_eq!(fs::read(log_path(tmp.path())).unwrap(), content);
            assert_eq!(fs::read(&stray_tmp).unwrap(), b"someone else's");
        }
    }

    #[test]
    fn leftover_tmp_is_removed_on_open() {
        let tmp = tempfile::tempdir().unwrap();
        let (full, _, cues) = three_records(tmp.path());
        fs::write(
            tmp.path().join(TMP_FILE_NAME),
            b"CUELOG1\nhalf a compaction",
        )
        .unwrap();
        let (log, rec) = open(tmp.path(), no_sync());
        assert!(!tmp.path().join(TMP_FILE_NAME).exists());
        assert_eq!(log.latest(), &model_latest(&cues));
        assert_eq!(rec.torn_bytes, 0);
        assert_eq!(fs::read(log_path(tmp.path())).unwrap(), full);
        drop(log);
        // Also when the log itself was never created.
        let fresh = tempfile::tempdir().unwrap();
        fs::write(fresh.path().join(TMP_FILE_NAME), b"junk").unwrap();
        let (log, _) = open(fresh.path(), no_sync());
        assert_eq!(log.events(), 0);
        assert_eq!(fs::read(log_path(fresh.path())).unwrap(), b"CUELOG1\n");
    }

    #[test]
    fn second_open_of_same_dir_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (_log, _) = open(tmp.path(), no_sync());
        let err = CueLog::open(tmp.path(), no_sync()).unwrap_err();
        match &err {
            LogError::Io { source, .. } => assert_eq!(source.kind(), io::ErrorKind::WouldBlock),
            e => panic!("{e}"),
        }
        assert!(err.retryable());
    }

    #[test]
    fn retirement_is_durable_dropped_at_compaction_and_a_later_cue_starts_anew() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = no_sync();
        let (mut log, _) = open(tmp.path(), opts);
        let fight = EventName::new("fight").unwrap();
        log.append(&[cue("fight", "r1", 5), cue("keep", "k", 1)])
            .unwrap();
        assert_eq!(log.retire(&fight, 99).unwrap(), Some(5));
        assert_eq!(
            log.retire(&fight, 99).unwrap(),
            None,
            "nothing left to retire"
        );
        assert!(!log.latest().contains_key(&fight));
        drop(log);
        let (mut log, rec) = open(tmp.path(), opts);
        assert_eq!(rec.torn_bytes, 0, "a retirement record is a valid record");
        assert!(
            !log.latest().contains_key(&fight),
            "retired across a restart"
        );
        assert_eq!(log.latest().len(), 1);
        // A later cue starts it anew, and survives a restart after the retirement record.
        log.append(&[cue("fight", "again", 7)]).unwrap();
        drop(log);
        let (mut log, _) = open(tmp.path(), opts);
        assert_eq!(log.latest()[&fight].key(), "again");
        assert!(log.retired_at_open().is_empty(), "published since");
        // Compaction keeps the live set only: no retirement record, no retired cue.
        log.retire(&fight, 100).unwrap();
        log.compact().unwrap();
        let bytes = fs::read(log_path(tmp.path())).unwrap();
        assert_eq!(parse_file(&bytes), vec![cue("keep", "k", 1)]);
    }

    #[test]
    fn an_events_class_is_its_newest_cues_and_survives_restart_and_compaction() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = no_sync();
        let (mut log, _) = open(tmp.path(), opts);
        let ev = |s: &str| EventName::new(s).unwrap();
        let classes = [Priority::Critical, Priority::Background, Priority::Normal];
        let batch = [
            cue("fight", "r1", 5),
            cue("bg", "k", 1),
            cue("plain", "k", 1),
        ];
        log.append_classed(&batch, |i| classes[i]).unwrap();
        let want = |log: &CueLog, fight: Priority| {
            assert_eq!(log.class(&ev("fight")), fight);
            assert_eq!(log.class(&ev("bg")), Priority::Background);
            assert_eq!(log.class(&ev("plain")), Priority::Normal);
            assert_eq!(log.class(&ev("never")), Priority::Normal);
            assert_eq!(
                log.classes().len(),
                1 + usize::from(fight != Priority::Normal)
            );
        };
        want(&log, Priority::Critical);
        // A classed record is 2 bytes longer; a normal one is written as before classes.
        assert_eq!(
            log.len_bytes(),
            8 + batch.iter().map(record_len).sum::<u64>() + 4
        );
        drop(log);
        let (mut log, rec) = open(tmp.path(), opts);
        assert_eq!((rec.records, rec.torn_bytes), (3, 0));
        want(&log, Priority::Critical);
        // The newest cue sets the class: published again as normal, it is normal.
        log.append(&[cue("fight", "r2", 6)]).unwrap();
        want(&log, Priority::Normal);
        log.append_classed(&[cue("fight", "r3", 7)], |_| Priority::Critical)
            .unwrap();
        log.compact().unwrap();
        drop(log);
        let (mut log, _) = open(tmp.path(), opts);
        want(&log, Priority::Critical);
        assert_eq!(log.latest()[&ev("fight")].key(), "r3");
        // A retirement forgets the class; a later normal cue starts the event normal.
        log.retire(&ev("fight"), 99).unwrap();
        assert_eq!(log.class(&ev("fight")), Priority::Normal);
        drop(log);
        let (log, _) = open(tmp.path(), opts);
        assert_eq!(log.class(&ev("fight")), Priority::Normal);
        assert_eq!(log.classes().len(), 1);
    }

    #[test]
    fn compaction_keeps_exactly_newest_per_event() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = LogOptions {
            max_bytes: 1024,
            sync: true,
        };
        let (mut log, _) = open(tmp.path(), opts);
        let events = ["alpha", "beta", "gamma"];
        let mut seen_compaction = false;
        let mut max_len = 0;
        for seq in 1..=60u64 {
            let c = cue(events[seq as usize % 3], &format!("stage-{seq}"), seq);
            let before = log.compactions();
            log.append(&[c]).unwrap();
            max_len = max_len.max(log.len_bytes());
            assert!(log.len_bytes() <= opts.max_bytes);
            let bytes = fs::read(log_path(tmp.path())).unwrap();
            assert_eq!(bytes.len() as u64, log.len_bytes());
            if log.compactions() > before {
                seen_compaction = true;
                let mut want: Vec<Cue> = log.latest().values().cloned().collect();
                want.sort_by(|a, b| a.event().cmp(b.event()));
                assert_eq!(parse_file(&bytes), want);
                assert_eq!(
                    log.len_bytes(),
                    8 + want.iter().map(record_len).sum::<u64>()
                );
            }
        }
        assert!(seen_compaction);
        assert!(log.compactions() >= 2, "{}", log.compactions());
        assert!(!tmp.path().join(TMP_FILE_NAME).exists());
        let latest = log.latest().clone();
        assert_eq!(latest.len(), 3);
        assert_eq!(latest[&EventName::new("alpha").unwrap()].seq(), 60);
        drop(log);
        let (log, rec) = open(tmp.path(), opts);
        assert_eq!(log.latest(), &latest);
        assert_eq!(rec.torn_bytes, 0);
        assert_eq!(rec.compacted_from, None);
    }

    #[test]
    fn open_compacts_a_log_above_max_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut log, _) = open(tmp.path(), no_sync());
        for seq in 1..=100 {
            log.append(&[cue("a", "k", seq), cue("b", "k", seq)])
                .unwrap();
        }
        let (len, latest) = (log.len_bytes(), log.latest().clone());
        drop(log);
        let (log, rec) = open(
            tmp.path(),
            LogOptions {
                max_bytes: 4096,
                sync: true,
            },
        );
        assert_eq!(
            rec,
            Recovery {
                records: 200,
                torn_bytes: 0,
                compacted_from: Some(len),
                skipped: vec![]
            }
        );
        assert_eq!(log.compactions(), 1);
        assert_eq!(log.latest(), &latest);
        assert_eq!(
            parse_file(&fs::read(log_path(tmp.path())).unwrap()).len(),
            2
        );
        assert!(log.len_bytes() < len);
    }

    #[test]
    fn too_many_events_for_max_bytes_compacts_amortized() {
        let tmp = tempfile::tempdir().unwrap();
        // 20 events of ~29-byte records: the live set alone is above max_bytes.
        let opts = LogOptions {
            max_bytes: 256,
            sync: false,
        };
        let (mut log, _) = open(tmp.path(), opts);
        let mut all = Vec::new();
        for round in 1..=20u64 {
            for e in 0..20 {
                let c = cue(&format!("e{e:02}"), "k", round);
                log.append(std::slice::from_ref(&c)).unwrap();
                all.push(c);
            }
        }
        assert_eq!(log.events(), 20);
        // One compaction per doubling of the file, not one per append.
        assert!(
            log.compactions() >= 2 && log.compactions() <= 40,
            "{}",
            log.compactions()
        );
        let latest = log.latest().clone();
        assert_eq!(latest, model_latest(&all));
        drop(log);
        let (log, _) = open(tmp.path(), opts);
        assert_eq!(log.latest(), &latest);
    }

    #[test]
    fn failed_batch_that_cannot_be_removed_poisons_the_log() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut log, _) = open(tmp.path(), no_sync());
        log.append(&[cue("a", "k", 1)]).unwrap();
        let (len, latest) = (log.len_bytes(), log.latest().clone());
        // A read-only handle: the batch write fails, and so does truncating it away.
        log.file = File::open(log_path(tmp.path())).unwrap();
        let err = log.append(&[cue("a", "k", 2)]).unwrap_err();
        assert!(matches!(err, LogError::Poisoned), "{err}");
        assert!(log.is_poisoned());
        assert!(matches!(
            log.append(&[cue("b", "k", 1)]),
            Err(LogError::Poisoned)
        ));
        assert_eq!(log.latest(), &latest);
        assert_eq!(log.len_bytes(), len);
        drop(log);
        let (log, rec) = open(tmp.path(), no_sync());
        assert_eq!(log.latest(), &latest);
        assert_eq!(rec.torn_bytes, 0);
    }

    #[test]
    fn errors_say_what_and_where() {
        let e = LogError::Io {
            op: "fdatasync",
            path: PathBuf::from("/data/cues.log"),
            source: io::Error::from_raw_os_error(libc::ENOSPC),
        };
        assert!(e.to_string().contains("fdatasync /data/cues.log"), "{e}");
        assert!(e.retryable());
        let e = LogError::Io {
            op: "write",
            path: PathBuf::from("/data/cues.log"),
            source: io::Error::from_raw_os_error(libc::EIO),
        };
        assert!(!e.retryable());
        assert!(!LogError::Poisoned.retryable());
    }

    /// Batches over three events: (event index, seq increment, key index) per cue.
    fn arb_batches() -> impl Strategy<Value = Vec<Vec<(usize, u64, usize)>>> {
        prop::collection::vec(
            prop::collection::vec((0..3usize, 1..4u64, 0..3usize), 1..5),
            1..12,
        )
    }

    fn build(batches: &[Vec<(usize, u64, usize)>]) -> Vec<Vec<Cue>> {
        let events = ["a", "bb", "ccc"];
        let keys = ["pre", "round-1", "x:y.z"];
        let mut seqs = [0u64; 3];
        batches
            .iter()
            .map(|b| {
                b.iter()
                    .map(|&(e, inc, k)| {
                        seqs[e] += inc;
                        cue(events[e], keys[k], seqs[e])
                    })
                    .collect()
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn reopen_after_any_cut_keeps_exactly_the_whole_records(
            batches in arb_batches(),
            cut in any::<prop::sample::Index>(),
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let batches = build(&batches);
            let (mut log, _) = open(tmp.path(), no_sync());
            // (end offset, cue) of every record, in file order.
            let mut ends = Vec::new();
            let mut end = 8u64;
            for b in &batches {
                log.append(b).unwrap();
                for c in b {
                    end += record_len(c);
                    ends.push((end, c.clone()));
                }
                prop_assert_eq!(log.len_bytes(), end);
            }
            drop(log);
            let cut = 8 + cut.index((end - 8 + 1) as usize) as u64;
            File::options().write(true).open(log_path(tmp.path())).unwrap().set_len(cut).unwrap();

            let (mut log, rec) = open(tmp.path(), no_sync());
            let kept: Vec<&(u64, Cue)> = ends.iter().filter(|(e, _)| *e <= cut).collect();
            let want = model_latest(kept.iter().map(|(_, c)| c));
            prop_assert_eq!(log.latest(), &want);
            let appended: Vec<&Cue> = ends.iter().map(|(_, c)| c).collect();
            for c in log.latest().values() {
                prop_assert!(appended.contains(&c), "never appended: {:?}", c);
            }
            prop_assert_eq!(rec.records, kept.len() as u64);
            let valid = kept.last().map_or(8, |(e, _)| *e);
            prop_assert_eq!(rec.torn_bytes, cut - valid);
            prop_assert_eq!(log.len_bytes(), valid);

            let next = cue("a", "after", 1_000);
            log.append(std::slice::from_ref(&next)).unwrap();
            drop(log);
            let (log, rec) = open(tmp.path(), no_sync());
            prop_assert_eq!(rec.torn_bytes, 0);
            prop_assert_eq!(log.latest().get(next.event()), Some(&next));
        }

        #[test]
        fn compaction_never_loses_the_newest(batches in arb_batches(), max_bytes in 8u64..400) {
            let tmp = tempfile::tempdir().unwrap();
            let batches = build(&batches);
            let opts = LogOptions { max_bytes, sync: false };
            let (mut log, _) = open(tmp.path(), opts);
            for b in &batches {
                log.append(b).unwrap();
            }
            let want = model_latest(batches.iter().flatten());
            prop_assert_eq!(log.latest(), &want);
            drop(log);
            let (log, rec) = open(tmp.path(), opts);
            prop_assert_eq!(log.latest(), &want);
            prop_assert_eq!(rec.torn_bytes, 0);
        }
    }
}
