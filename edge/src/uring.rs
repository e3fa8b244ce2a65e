//! Batched fanout sends on an io_uring the shard owns (`send_path = "uring"`).
//!
//! A fanout slice hands its devices over as one batch ([`crate::core::Io::send_cue_batch`]):
//! one send submission queue entry per device, all submitted by one `io_uring_enter`, their
//! completions reaped before the call returns. So the shard pays one system call per batch
//! (up to the ring's size, by default `fanout_slice` = 1024 devices) instead of one per device.
//!
//! - **Registered files.** Every plain WebSocket socket is registered in the ring's sparse file
//!   table when accepted (slot = its fd number, so no table of its own is needed) and taken out
//!   before it is closed; a send to it names the slot, which spares the kernel the fd lookup
//!   and the file's reference count per send. A socket the table cannot take (its fd beyond the
//!   table) is sent to by its fd.
//! - **Registered buffer.** The ring registers one small staging buffer; each batch copies the
//!   cue's WebSocket frames there, and the sends point into it with `IORING_RECVSEND_FIXED_BUF`,
//!   so the kernel does not map the user pages of the frame per send. Whether the kernel takes
//!   a registered buffer on a plain (not zero-copy) send is probed when the ring is made; if it
//!   does not, the sends point at the cue's own frames.
//! - **No waiting.** Each send carries `MSG_DONTWAIT`, so the kernel completes it inline during
//!   the submit: a full socket buffer comes back as `EAGAIN` instead of a poll armed in the
//!   kernel. The results are exactly what `send()` would have said, and the core handles short
//!   writes and `EAGAIN` on its per-device output path (the rest kept, the socket watched for
//!   writability), as before.
//! - Should a send not complete within [`REAP_DEADLINE`] all that are in flight are cancelled
//!   and waited for (their buffers stay valid throughout), and those devices are dropped.
//!
//! glommio has rings of its own, but it drives them for its futures: a send there is one
//! future per operation on one of its socket types. The shard's device sockets are raw fds in
//! its own epoll set precisely so that an idle device costs no future and no task, and a
//! fanout wants one submit for a thousand sends, so the shard keeps a ring of its own.

use std::os::fd::RawFd;
use std::time::Duration;

use io_uring::{opcode, types, IoUring};

use crate::core::Sent;

/// The longest a batch waits for its completions before it cancels what is left.
pub const REAP_DEADLINE: Duration = Duration::from_secs(1);

/// `IORING_RECVSEND_FIXED_BUF`: the send's buffer lies in the registered buffer `buf_index`.
const RECVSEND_FIXED_BUF: u16 = 1 << 2;

/// Bytes of the registered staging buffer (cue frames are at most a few hundred bytes).
const STAGING: usize = 4096;

/// Largest fixed-file table (the kernel's own bound is 2^20 and the process's fd limit).
const MAX_FILES: u32 = 1 << 20;

/// What the ring could set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// Sockets are registered in a fixed-file table.
    pub fixed_files: bool,
    /// Plain sends take the registered staging buffer.
    pub fixed_buffer: bool,
    /// The ring was made single-issuer with deferred task work.
    pub defer_taskrun: bool,
}

/// One shard's send ring.
pub struct UringSender {
    ring: IoUring,
    /// Registered fds (index: fd number = slot).
    registered: Vec<bool>,
    /// The registered buffer (index 0); boxed so it never moves while registered.
    staging: Box<[u8]>,
    features: Features,
    /// Sends queued in this batch and not yet reaped.
    in_flight: usize,
    /// Where each frame of the current batch lies: (source pointer, staged pointer), at most
    /// a few (one per encoding).
    staged: Vec<(*const u8, *const u8)>,
    staged_len: usize,
    /// Submits and sends since the last [`UringSender::take_counts`].
    submits: u64,
    sends: u64,
}

impl std::fmt::Debug for UringSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringSender")
            .field("features", &self.features)
            .finish()
    }
}

impl UringSender {
    /// A ring of `entries` submission slots (sends per submit) with a fixed-file table for fds
    /// below `files` (capped at the process's fd limit). Must be called on the thread that will
    /// use it (the ring is single-issuer where the kernel allows).
    pub fn new(entries: u32, files: u32) -> std::io::Result<Self> {
        let entries = entries.clamp(8, 4096).next_power_of_two();
        let (ring, defer_taskrun) = match IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_submit_all()
            .setup_cqsize(entries * 2)
            .build(entries)
        {
            Ok(r) => (r, true),
            // Older kernels: a plain ring does the same work.
            Err(_) => (
                IoUring::builder()
                    .setup_cqsize(entries * 2)
                    .build(entries)?,
                false,
            ),
        };
        let files = files.min(fd_limit()).min(MAX_FILES);
        let fixed_files = files > 0 && ring.submitter().register_files_sparse(files).is_ok();
        let staging = vec![0u8; STAGING].into_boxed_slice();
        let iov = libc::iovec {
            iov_base: staging.as_ptr() as *mut libc::c_void,
            iov_len: staging.len(),
        };
        // SAFETY: the staging buffer is heap memory the sender owns, boxed and never
        // reallocated, for as long as the ring lives: `ring` is the struct's first field, so it
        // is dropped (closed, its registrations gone) before `staging` is freed.
        let registered_buf = unsafe { ring.submitter().register_buffers(&[iov]) }.is_ok();
        let mut s = Self {
            ring,
            registered: if fixed_files {
                vec![false; files as usize]
            } else {
                Vec::new()
            },
            staging,
            features: Features {
                fixed_files,
                fixed_buffer: false,
                defer_taskrun,
            },
            in_flight: 0,
            staged: Vec::with_capacity(4),
            staged_len: 0,
            submits: 0,
            sends: 0,
        };
        s.features.fixed_buffer = registered_buf && s.probe_fixed_buffer();
        Ok(s)
    }

    /// What the ring could set up.
    pub fn features(&self) -> Features {
        self.features
    }

    /// Sends the kernel one byte from the registered buffer over a socket pair: true if a plain
    /// send takes `IORING_RECVSEND_FIXED_BUF` here.
    fn probe_fixed_buffer(&mut self) -> bool {
        let mut fds = [0; 2];
        // SAFETY: `fds` is a live array of two ints the call fills.
        if unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        } < 0
        {
            return false;
        }
        let entry = opcode::Send::new(types::Fd(fds[0]), self.staging.as_ptr(), 1)
            .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
            .ioprio(RECVSEND_FIXED_BUF)
            .buf_group(0)
            .build()
            .user_data(u64::MAX);
        // SAFETY: the entry points into the registered staging buffer, which outlives the
        // request: the completion is reaped below before anything else happens.
        let pushed = unsafe { self.ring.submission().push(&entry) }.is_ok();
        let ok = pushed
            && self.ring.submit_and_wait(1).is_ok()
            && self
                .ring
                .completion()
                .next()
                .is_some_and(|c| c.result() == 1);
        // SAFETY: both fds are ours (from socketpair) and used nowhere else.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        ok
    }

    /// Registers a newly accepted socket (slot = fd). Returns whether it was registered.
    pub fn register(&mut self, fd: RawFd) -> bool {
        let Some(slot) = usize::try_from(fd)
            .ok()
            .filter(|&i| i < self.registered.len())
        else {
            return false;
        };
        let ok = self
            .ring
            .submitter()
            .register_files_update(slot as u32, &[fd])
            .is_ok();
        self.registered[slot] = ok;
        ok
    }

    /// Takes a socket out of the table; call before closing it (a registered file holds the
    /// socket open).
    pub fn unregister(&mut self, fd: RawFd) {
        let Some(slot) = self.registered_slot(fd) else {
            return;
        };
        self.registered[slot] = false;
        if let Err(e) = self
            .ring
            .submitter()
            .register_files_update(slot as u32, &[-1])
        {
            // The slot keeps the socket open until the ring closes: say so.
            tracing::warn!(fd, error = %e, "io_uring: could not unregister a closed socket");
        }
    }

    /// The table slot of `fd` if it is registered.
    fn registered_slot(&self, fd: RawFd) -> Option<usize> {
        usize::try_from(fd)
            .ok()
            .filter(|&i| self.registered.get(i).copied().unwrap_or(false))
    }

    /// Starts a batch. Frames handed to [`UringSender::push`] before [`UringSender::finish`]
    /// must stay valid until it returns.
    pub fn begin(&mut self) {
        debug_assert_eq!(self.in_flight, 0);
        self.staged.clear();
        self.staged_len = 0;
    }

    /// Queues one send of `frame` to `fd`, answered into `results[pos]` by
    /// [`UringSender::finish`] (or here, when the ring is full and its batch is reaped first).
    pub fn push(&mut self, pos: usize, fd: RawFd, frame: &[u8], results: &mut [Sent]) {
        if self.ring.submission().is_full() {
            self.reap(results);
        }
        let buf = self.stage(frame);
        let len = frame.len() as u32;
        let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
        let fixed = self.registered_slot(fd).is_some();
        let op = if fixed {
            opcode::Send::new(types::Fixed(fd as u32), buf.unwrap_or(frame.as_ptr()), len)
        } else {
            opcode::Send::new(types::Fd(fd), buf.unwrap_or(frame.as_ptr()), len)
        };
        let op = op.flags(flags);
        let op = if buf.is_some() {
            op.ioprio(RECVSEND_FIXED_BUF).buf_group(0)
        } else {
            op
        };
        let entry = op.build().user_data(pos as u64);
        // SAFETY: the buffer is the caller's frame (valid until `finish` returns, per `begin`)
        // or the registered staging buffer (valid while the ring lives, and not written again
        // until every send of this batch is reaped); the queue has room (reaped above if full).
        let pushed = unsafe { self.ring.submission().push(&entry) };
        debug_assert!(pushed.is_ok(), "the queue was reaped when full");
        if pushed.is_ok() {
            self.in_flight += 1;
            self.sends += 1;
        } else {
            results[pos] = Sent::Closed;
        }
    }

    /// Submits what is queued and reaps every completion into `results`.
    pub fn finish(&mut self, results: &mut [Sent]) {
        if self.in_flight > 0 {
            self.reap(results);
        }
    }

    /// Submits and takes `(submits, sends)` since the last call, for the shard's counters.
    pub fn take_counts(&mut self) -> (u64, u64) {
        (
            std::mem::take(&mut self.submits),
            std::mem::take(&mut self.sends),
        )
    }

    /// Where a frame's sends point: into the staging buffer (copied there once per batch) when
    /// plain sends take the registered buffer and it fits, else `None` (the frame itself).
    fn stage(&mut self, frame: &[u8]) -> Option<*const u8> {
        if !self.features.fixed_buffer {
            return None;
        }
        if let Some(&(_, at)) = self.staged.iter().find(|(src, _)| *src == frame.as_ptr()) {
            return Some(at);
        }
        // Appended only: what sends in flight point at is never written again in this batch.
        if self.staged_len + frame.len() > self.staging.len() {
            return None;
        }
        let at = self.staged_len;
        self.staging[at..at + frame.len()].copy_from_slice(frame);
        self.staged_len += frame.len();
        let ptr = self.staging[at..].as_ptr();
        self.staged.push((frame.as_ptr(), ptr));
        Some(ptr)
    }

    /// Submits the queue and waits for every send in flight, filling in `results`.
    fn reap(&mut self, results: &mut [Sent]) {
        let ts = types::Timespec::new()
            .sec(REAP_DEADLINE.as_secs())
            .nsec(REAP_DEADLINE.subsec_nanos());
        let args = types::SubmitArgs::new().timespec(&ts);
        let mut cancelled = false;
        while self.in_flight > 0 {
            self.submits += 1;
            let r = if cancelled {
                self.ring.submit_and_wait(self.in_flight)
            } else {
                self.ring
                    .submitter()
                    .submit_with_args(self.in_flight, &args)
            };
            self.drain_completions(results);
            match r {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if e.raw_os_error() == Some(libc::ETIME) => {
                    if self.in_flight > 0 && !cancelled {
                        tracing::error!(
                            in_flight = self.in_flight,
                            "io_uring: sends not complete after {REAP_DEADLINE:?}; cancelling them"
                        );
                        let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::any())
                            .build()
                            .user_data(u64::MAX);
                        // SAFETY: a cancel request carries no buffer.
                        if unsafe { self.ring.submission().push(&cancel) }.is_ok() {
                            cancelled = true;
                        }
                    }
                }
                Err(e) => {
                    // The ring itself failed: nothing more will complete. Every send not yet
                    // answered is reported as failed (those devices are dropped); their
                    // buffers stay valid until the ring is dropped with the sender.
                    tracing::error!(error = %e, "io_uring_enter failed; dropping the batch");
                    self.in_flight = 0;
                }
            }
        }
        self.drain_completions(results);
    }

    fn drain_completions(&mut self, results: &mut [Sent]) {
        for c in self.ring.completion() {
            let pos = c.user_data();
            if pos == u64::MAX {
                continue; // the cancel request's own completion
            }
            self.in_flight = self.in_flight.saturating_sub(1);
            let res = c.result();
            let sent = if res >= 0 {
                Sent::Took(res as usize)
            } else if res == -libc::EAGAIN {
                Sent::WouldBlock
            } else {
                Sent::Closed
            };
            if let Some(slot) = results.get_mut(pos as usize) {
                *slot = sent;
            }
        }
    }
}

/// The process's soft fd limit (a fixed-file table larger than it is refused).
fn fd_limit() -> u32 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `rl` is a live rlimit the call writes into.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return 0;
    }
    rl.rlim_cur.min(u64::from(u32::MAX)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    /// A connected loopback pair: (our side, the device's side).
    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        s.set_nonblocking(true).unwrap();
        (s, c)
    }

    fn sender(entries: u32) -> UringSender {
        // No silent pass where io_uring is off: the edge's default path needs it.
        UringSender::new(entries, 4096).expect("io_uring must be available to run these tests")
    }

    fn batch(u: &mut UringSender, sends: &[(RawFd, &[u8])]) -> Vec<Sent> {
        let mut results = vec![Sent::Closed; sends.len()];
        u.begin();
        for (i, (fd, frame)) in sends.iter().enumerate() {
            u.push(i, *fd, frame, &mut results);
        }
        u.finish(&mut results);
        results
    }

    fn read_exact(c: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut got = vec![0u8; n];
        c.read_exact(&mut got).unwrap();
        got
    }

    #[test]
    fn a_batch_reaches_every_socket_registered_or_not_with_its_own_frame() {
        let mut u = sender(64);
        let f = u.features();
        assert!(
            f.fixed_files,
            "a sparse file table is available on this kernel"
        );
        let pairs: Vec<_> = (0..10).map(|_| pair()).collect();
        // Even sockets registered, odd ones sent to by fd.
        for (i, (s, _)) in pairs.iter().enumerate() {
            if i % 2 == 0 {
                assert!(u.register(s.as_raw_fd()));
            }
        }
        let (a, b) = (b"frame-a".to_vec(), b"the other frame".to_vec());
        let sends: Vec<(RawFd, &[u8])> = pairs
            .iter()
            .enumerate()
            .map(|(i, (s, _))| (s.as_raw_fd(), if i % 3 == 0 { &a[..] } else { &b[..] }))
            .collect();
        let results = batch(&mut u, &sends);
        for (i, ((_, mut c), r)) in pairs.into_iter().zip(&results).enumerate() {
            let want = if i % 3 == 0 { &a } else { &b };
            assert_eq!(*r, Sent::Took(want.len()), "socket {i}");
            assert_eq!(&read_exact(&mut c, want.len()), want, "socket {i}");
        }
        assert_eq!(u.take_counts(), (1, 10), "one submit for the batch");
    }

    #[test]
    fn more_sends_than_the_ring_holds_are_reaped_on_the_way() {
        let mut u = sender(8);
        let pairs: Vec<_> = (0..50).map(|_| pair()).collect();
        let frame = b"cue".to_vec();
        let sends: Vec<(RawFd, &[u8])> = pairs
            .iter()
            .map(|(s, _)| (s.as_raw_fd(), &frame[..]))
            .collect();
        let results = batch(&mut u, &sends);
        assert!(results.iter().all(|r| *r == Sent::Took(3)), "{results:?}");
        for (_, mut c) in pairs {
            assert_eq!(read_exact(&mut c, 3), b"cue");
        }
        let (submits, sends) = u.take_counts();
        assert_eq!(sends, 50);
        assert!(
            submits >= 50 / 8,
            "the ring of 8 was submitted when full ({submits})"
        );
    }

    #[test]
    fn a_full_socket_says_would_block_and_a_big_frame_is_taken_in_part() {
        let mut u = sender(16);
        let (s, mut c) = pair();
        let fd = s.as_raw_fd();
        u.register(fd);
        // A frame far larger than the socket takes: part of it goes (from the frame's own
        // memory: it does not fit the staging buffer).
        let big = vec![7u8; 8 << 20];
        let r = batch(&mut u, &[(fd, &big)]);
        let Sent::Took(n) = r[0] else { panic!("{r:?}") };
        assert!(n > 0 && n < big.len(), "took {n}");
        // Now full: nothing more.
        let r = batch(&mut u, &[(fd, b"more")]);
        assert_eq!(r[0], Sent::WouldBlock);
        // The device reads what was taken, byte for byte.
        let got = read_exact(&mut c, n);
        assert!(got.iter().all(|&b| b == 7));
    }

    #[test]
    fn a_reset_peer_is_closed_and_an_unregistered_socket_really_closes() {
        let mut u = sender(16);
        let (s, c) = pair();
        let fd = s.as_raw_fd();
        u.register(fd);
        // The device resets the connection (linger 0).
        socket2::SockRef::from(&c)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(c);
        std::thread::sleep(Duration::from_millis(50));
        let r = batch(&mut u, &[(fd, b"cue")]);
        assert_eq!(r[0], Sent::Closed, "a reset socket is gone");

        // Taken out of the table and closed, a socket sends its FIN: the ring does not keep
        // it open.
        let (s2, mut c2) = pair();
        u.register(s2.as_raw_fd());
        assert_eq!(batch(&mut u, &[(s2.as_raw_fd(), b"x")])[0], Sent::Took(1));
        u.unregister(s2.as_raw_fd());
        drop(s2);
        c2.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(c2.read(&mut buf).unwrap(), 1);
        assert_eq!(
            c2.read(&mut buf).unwrap(),
            0,
            "EOF: the socket was closed for real"
        );
    }

    #[test]
    fn an_fd_beyond_the_table_is_sent_to_by_its_number() {
        let (s, mut c) = pair();
        // A table of the slots below this fd: it cannot take it.
        let mut u = UringSender::new(16, s.as_raw_fd() as u32).expect("io_uring");
        assert!(!u.register(s.as_raw_fd()));
        assert_eq!(batch(&mut u, &[(s.as_raw_fd(), b"hi")])[0], Sent::Took(2));
        assert_eq!(read_exact(&mut c, 2), b"hi");
    }
}
