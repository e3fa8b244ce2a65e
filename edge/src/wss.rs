//! TLS for WebSocket devices (`wss://`), below the core: the shard keeps a rustls
//! `ServerConnection` per TLS socket, indexed by fd, decrypts what it reads before the core sees
//! it and encrypts what the core sends. The core's conflation rules hold unchanged: a send to a
//! socket whose previous ciphertext is not all out yet answers "would block", so the device is
//! marked blocked and later given the newest cue instead of a backlog inside rustls.
//!
//! A TLS session costs memory per device (measured in docs/edge.md); plain `ws` devices pay
//! nothing for this module but one bounds-checked lookup per send.

use std::io::{Read, Write};
use std::os::fd::RawFd;
use std::sync::Arc;

use crate::core::Sent;

/// Writes to a non-blocking socket.
struct FdWriter(RawFd);

impl Write for FdWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        loop {
            // SAFETY: `buf` is valid for `buf.len()` bytes; the fd is the caller's socket.
            let n = unsafe {
                libc::send(
                    self.0,
                    buf.as_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Session {
    tls: rustls::ServerConnection,
    /// The core asked to hear when the socket is writable.
    core_wants: bool,
    /// Ciphertext is waiting for the socket.
    pending: bool,
}

/// What reading a TLS socket's bytes gave.
#[derive(Debug, PartialEq, Eq)]
pub enum TlsRead {
    /// Fine; any plaintext was appended to the output.
    Ok,
    /// The device sent close_notify.
    Eof,
    /// A TLS error (an alert was sent if possible); close the connection.
    Failed,
}

/// The TLS sessions of one shard's `wss` sockets.
pub struct TlsSessions {
    config: Arc<rustls::ServerConfig>,
    by_fd: Vec<Option<Box<Session>>>,
}

impl std::fmt::Debug for TlsSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSessions")
            .field("slots", &self.by_fd.len())
            .finish()
    }
}

impl TlsSessions {
    /// Sessions using `config`.
    pub fn new(config: Arc<rustls::ServerConfig>) -> Self {
        Self {
            config,
            by_fd: Vec::new(),
        }
    }

    fn get(&mut self, fd: RawFd) -> Option<&mut Session> {
        self.by_fd.get_mut(fd as usize)?.as_deref_mut()
    }

    /// True when `fd` is a TLS socket.
    pub fn is_tls(&self, fd: RawFd) -> bool {
        self.by_fd.get(fd as usize).is_some_and(Option::is_some)
    }

    /// A new TLS socket.
    pub fn add(&mut self, fd: RawFd) -> Result<(), rustls::Error> {
        let mut tls = rustls::ServerConnection::new(self.config.clone())?;
        // Unsent plaintext is bounded by the core (a frame and control replies); this bounds
        // what rustls itself may hold.
        tls.set_buffer_limit(Some(64 * 1024));
        let i = fd as usize;
        if self.by_fd.len() <= i {
            self.by_fd.resize_with(i + 1, || None);
        }
        self.by_fd[i] = Some(Box::new(Session {
            tls,
            core_wants: false,
            pending: false,
        }));
        Ok(())
    }

    /// Forgets `fd` (after sending close_notify, best effort).
    pub fn remove(&mut self, fd: RawFd) {
        if let Some(s) = self.get(fd) {
            s.tls.send_close_notify();
            let _ = s.tls.write_tls(&mut FdWriter(fd));
        }
        if let Some(slot) = self.by_fd.get_mut(fd as usize) {
            *slot = None;
        }
    }

    /// Feeds bytes read from `fd` to its session; plaintext is appended to `plain`.
    pub fn read(&mut self, fd: RawFd, mut bytes: &[u8], plain: &mut Vec<u8>) -> TlsRead {
        let Some(s) = self.get(fd) else {
            return TlsRead::Failed;
        };
        while !bytes.is_empty() {
            if s.tls.read_tls(&mut bytes).is_err() {
                return TlsRead::Failed;
            }
            if s.tls.process_new_packets().is_err() {
                // Send the alert rustls queued, then give up on the connection.
                let _ = s.tls.write_tls(&mut FdWriter(fd));
                return TlsRead::Failed;
            }
            let mut buf = [0u8; 4096];
            loop {
                match s.tls.reader().read(&mut buf) {
                    Ok(0) => return TlsRead::Eof,
                    Ok(n) => plain.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => return TlsRead::Failed,
                }
            }
        }
        // Handshake replies (or nothing).
        match self.flush(fd) {
            Some(false) | None => TlsRead::Ok,
            Some(true) => TlsRead::Ok,
        }
    }

    /// Writes pending ciphertext; `Some(true)` when all is out, `Some(false)` when some waits
    /// for writability, `None` when the socket failed.
    pub fn flush(&mut self, fd: RawFd) -> Option<bool> {
        let s = self.get(fd)?;
        while s.tls.wants_write() {
            match s.tls.write_tls(&mut FdWriter(fd)) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => return None,
            }
        }
        s.pending = s.tls.wants_write();
        Some(!s.pending)
    }

    /// The core's send on a TLS socket: refused while earlier ciphertext waits (so the core
    /// conflates), else encrypted and written; what the socket does not take waits in rustls
    /// (a whole record) and the socket is watched for writability.
    pub fn send(&mut self, fd: RawFd, bytes: &[u8]) -> Sent {
        let Some(s) = self.get(fd) else {
            return Sent::Closed;
        };
        if s.pending {
            return Sent::WouldBlock;
        }
        let n = match s.tls.writer().write(bytes) {
            Ok(n) => n,
            Err(_) => return Sent::Closed,
        };
        match self.flush(fd) {
            None => Sent::Closed,
            Some(_) if n == 0 => Sent::WouldBlock,
            Some(_) => Sent::Took(n),
        }
    }

    /// Records the core's wish for writability; returns whether the socket should be watched
    /// for it (the core's wish or ciphertext waiting).
    pub fn want_write(&mut self, fd: RawFd, want: bool) -> bool {
        match self.get(fd) {
            Some(s) => {
                s.core_wants = want;
                want || s.pending
            }
            None => want,
        }
    }

    /// Whether the socket should be watched for writability.
    pub fn wants_writable(&mut self, fd: RawFd) -> bool {
        self.get(fd).is_some_and(|s| s.core_wants || s.pending)
    }

    /// Whether the core asked for writability on `fd`.
    pub fn core_wants(&mut self, fd: RawFd) -> bool {
        self.get(fd).is_some_and(|s| s.core_wants)
    }
}
