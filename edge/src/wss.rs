//! TLS for WebSocket devices (`wss://`), below the core: the shard keeps a rustls
//! `UnbufferedServerConnection` per TLS socket, indexed by fd, decrypts what it reads before the core sees
//! it and encrypts what the core sends. The core's conflation rules hold unchanged: a send to a
//! socket whose previous ciphertext is not all out yet answers "would block", so the device is
//! marked blocked and later given the newest cue instead of a backlog inside rustls.
//!
//! A TLS session costs memory per device (measured in docs/edge.md); plain `ws` devices pay
//! nothing for this module but one bounds-checked lookup per send.

use std::os::fd::RawFd;
use std::sync::Arc;

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};

use crate::core::Sent;

struct Session {
    tls: UnbufferedServerConnection,
    /// Received bytes of a TLS record not complete yet (empty, unallocated, almost always).
    partial: Vec<u8>,
    /// Ciphertext the socket did not take yet (empty, unallocated, unless the socket is full).
    out: Vec<u8>,
    /// The core asked to hear when the socket is writable.
    core_wants: bool,
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
///
/// rustls' unbuffered API: the session holds no buffers of its own. Received bytes are
/// processed in the shard's scratch buffer; only the tail of a record cut by the socket is kept
/// per session (`partial`), and only ciphertext the socket refused (`out`). rustls' buffered
/// `ServerConnection` kept a 4 KiB receive buffer per device for as long as it was connected.
pub struct TlsSessions {
    config: Arc<rustls::ServerConfig>,
    by_fd: Vec<Option<Box<Session>>>,
    /// Incoming bytes being processed (shared by the shard's sessions).
    scratch_in: Vec<u8>,
    /// Outgoing ciphertext being built (shared by the shard's sessions).
    scratch_out: Vec<u8>,
}

impl std::fmt::Debug for TlsSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSessions")
            .field("slots", &self.by_fd.len())
            .finish()
    }
}

/// Largest incoming TLS record tail kept per session: a record is at most 16 KiB of payload
/// plus overhead; more than that waiting is not TLS.
const MAX_PARTIAL: usize = 18 * 1024;

/// Writes `buf` to the non-blocking socket; `Ok(n)` with `n < buf.len()` when it is full.
fn write_some(fd: RawFd, buf: &[u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &buf[done..];
        // SAFETY: `rest` is valid for `rest.len()` bytes; the fd is the caller's socket.
        let n = unsafe {
            libc::send(
                fd,
                rest.as_ptr().cast(),
                rest.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n > 0 {
            done += n as usize;
            continue;
        }
        if n == 0 {
            break;
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::Interrupted => {}
            std::io::ErrorKind::WouldBlock => break,
            _ => return Err(e),
        }
    }
    Ok(done)
}

impl Session {
    /// Writes the ciphertext waiting in `out`; true when all of it is out (and `out` freed).
    fn write_out(&mut self, fd: RawFd) -> std::io::Result<bool> {
        let n = write_some(fd, &self.out)?;
        self.out.drain(..n);
        if self.out.is_empty() {
            self.out = Vec::new();
            return Ok(true);
        }
        Ok(false)
    }
}

impl TlsSessions {
    /// Sessions using `config`.
    pub fn new(config: Arc<rustls::ServerConfig>) -> Self {
        Self {
            config,
            by_fd: Vec::new(),
            scratch_in: Vec::new(),
            scratch_out: Vec::new(),
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
        let tls = UnbufferedServerConnection::new(self.config.clone())?;
        let i = fd as usize;
        if self.by_fd.len() <= i {
            self.by_fd.resize_with(i + 1, || None);
        }
        self.by_fd[i] = Some(Box::new(Session {
            tls,
            partial: Vec::new(),
            out: Vec::new(),
            core_wants: false,
        }));
        Ok(())
    }

    /// Forgets `fd` (after sending close_notify, best effort).
    pub fn remove(&mut self, fd: RawFd) {
        let Some(slot) = self.by_fd.get_mut(fd as usize) else {
            return;
        };
        let Some(mut s) = slot.take() else { return };
        if !s.out.is_empty() {
            return; // the socket is full; close_notify would not get through either
        }
        let UnbufferedStatus { state, .. } = s.tls.process_tls_records(&mut []);
        if let Ok(ConnectionState::WriteTraffic(mut w)) = state {
            let out = &mut self.scratch_out;
            out.clear();
            out.resize(64, 0);
            if let Ok(n) = w.queue_close_notify(out) {
                let _ = write_some(fd, &out[..n]);
            }
        }
    }

    /// Feeds bytes read from `fd` to its session; plaintext is appended to `plain`.
    pub fn read(&mut self, fd: RawFd, bytes: &[u8], plain: &mut Vec<u8>) -> TlsRead {
        let Self {
            by_fd,
            scratch_in,
            scratch_out,
            ..
        } = self;
        let Some(s) = by_fd.get_mut(fd as usize).and_then(|s| s.as_deref_mut()) else {
            return TlsRead::Failed;
        };
        // The bytes to process: a kept record tail plus the new bytes, in the scratch buffer.
        scratch_in.clear();
        scratch_in.extend_from_slice(&s.partial);
        scratch_in.extend_from_slice(bytes);
        s.partial = Vec::new();
        let mut at = 0;
        let result = loop {
            let UnbufferedStatus { discard, state } =
                s.tls.process_tls_records(&mut scratch_in[at..]);
            let step = match state {
                Err(_) => {
                    // Send the alert rustls queued, if any, then give up on the connection.
                    send_alert(s, fd, scratch_out);
                    break TlsRead::Failed;
                }
                Ok(ConnectionState::ReadTraffic(mut r)) => {
                    while let Some(rec) = r.next_record() {
                        match rec {
                            Ok(rec) => plain.extend_from_slice(rec.payload),
                            Err(_) => break,
                        }
                    }
                    None
                }
                Ok(ConnectionState::ReadEarlyData(mut r)) => {
                    // 0-RTT is off (no tickets): nothing to read; drain to move on.
                    while let Some(Ok(_)) = r.next_record() {}
                    None
                }
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    if encode(&mut e, &mut s.out).is_err() {
                        Some(TlsRead::Failed)
                    } else {
                        None
                    }
                }
                Ok(ConnectionState::TransmitTlsData(t)) => {
                    // The handshake's records go out now; what the socket refuses waits in
                    // `out` and is sent on writability.
                    t.done();
                    match s.write_out(fd) {
                        Ok(_) => None,
                        Err(_) => Some(TlsRead::Failed),
                    }
                }
                Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => Some(TlsRead::Eof),
                // Need more bytes (handshake), or idle with the handshake done.
                Ok(ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_)) => {
                    Some(TlsRead::Ok)
                }
                Ok(_) => Some(TlsRead::Failed),
            };
            at += discard;
            if let Some(r) = step {
                break r;
            }
        };
        if result == TlsRead::Ok && at < scratch_in.len() {
            if scratch_in.len() - at > MAX_PARTIAL {
                return TlsRead::Failed;
            }
            s.partial = scratch_in[at..].to_vec();
        }
        result
    }

    /// Writes pending ciphertext; `Some(true)` when all is out, `Some(false)` when some waits
    /// for writability, `None` when the socket failed.
    pub fn flush(&mut self, fd: RawFd) -> Option<bool> {
        self.get(fd)?.write_out(fd).ok()
    }

    /// The core's send on a TLS socket: refused while earlier ciphertext waits (so the core
    /// conflates), else encrypted and written; what the socket does not take waits in `out`
    /// (whole records are already encrypted) and the socket is watched for writability.
    pub fn send(&mut self, fd: RawFd, bytes: &[u8]) -> Sent {
        let Self {
            by_fd, scratch_out, ..
        } = self;
        let Some(s) = by_fd.get_mut(fd as usize).and_then(|s| s.as_deref_mut()) else {
            return Sent::Closed;
        };
        if !s.out.is_empty() {
            return Sent::WouldBlock;
        }
        // Records rustls wants sent first (a key update it started, or answers one the device
        // asked for) go out ahead of the data, in the same write.
        scratch_out.clear();
        let mut sealed = None;
        for _ in 0..8 {
            let UnbufferedStatus { state, .. } = s.tls.process_tls_records(&mut []);
            match state {
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    if encode(&mut e, scratch_out).is_err() {
                        return Sent::Closed;
                    }
                }
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                Ok(ConnectionState::WriteTraffic(mut w)) => {
                    sealed = seal(&mut w, bytes, scratch_out);
                    break;
                }
                // Handshake not over (the core sends only after the upgrade it read), or closed.
                _ => return Sent::Closed,
            }
        }
        let Some(n) = sealed else {
            return Sent::Closed;
        };
        match write_some(fd, &scratch_out[..n]) {
            Ok(done) => {
                if done < n {
                    s.out = scratch_out[done..n].to_vec();
                }
                Sent::Took(bytes.len())
            }
            Err(_) => Sent::Closed,
        }
    }

    /// Records the core's wish for writability; returns whether the socket should be watched
    /// for it (the core's wish or ciphertext waiting).
    pub fn want_write(&mut self, fd: RawFd, want: bool) -> bool {
        match self.get(fd) {
            Some(s) => {
                s.core_wants = want;
                want || !s.out.is_empty()
            }
            None => want,
        }
    }

    /// Whether the socket should be watched for writability.
    pub fn wants_writable(&mut self, fd: RawFd) -> bool {
        self.get(fd)
            .is_some_and(|s| s.core_wants || !s.out.is_empty())
    }

    /// Whether the core asked for writability on `fd`.
    pub fn core_wants(&mut self, fd: RawFd) -> bool {
        self.get(fd).is_some_and(|s| s.core_wants)
    }
}

/// Encrypts `bytes` as application data appended to `out`; the new length of `out`.
fn seal(
    w: &mut rustls::unbuffered::WriteTraffic<'_, rustls::server::ServerConnectionData>,
    bytes: &[u8],
    out: &mut Vec<u8>,
) -> Option<usize> {
    // A record per 16 KiB of plaintext, each with at most 22 bytes of header, content type
    // and tag.
    let start = out.len();
    out.resize(start + bytes.len() + 64 * (bytes.len() / 16384 + 1), 0);
    let n = match w.encrypt(bytes, &mut out[start..]) {
        Ok(n) => n,
        Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
            out.resize(start + required_size, 0);
            w.encrypt(bytes, &mut out[start..]).ok()?
        }
        Err(_) => return None,
    };
    out.truncate(start + n);
    Some(start + n)
}

/// Appends the record rustls wants sent to `out`.
fn encode(
    e: &mut rustls::unbuffered::EncodeTlsData<'_, rustls::server::ServerConnectionData>,
    out: &mut Vec<u8>,
) -> Result<(), ()> {
    let start = out.len();
    let need = match e.encode(&mut []) {
        Ok(_) => return Ok(()),
        Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
            required_size
        }
        Err(EncodeError::AlreadyEncoded) => return Err(()),
    };
    out.resize(start + need, 0);
    match e.encode(&mut out[start..]) {
        Ok(n) => {
            out.truncate(start + n);
            Ok(())
        }
        Err(_) => {
            out.truncate(start);
            Err(())
        }
    }
}

/// After an error: sends the alert rustls queued, best effort (a few steps, no waiting).
fn send_alert(s: &mut Session, fd: RawFd, scratch: &mut Vec<u8>) {
    scratch.clear();
    for _ in 0..4 {
        let UnbufferedStatus { state, .. } = s.tls.process_tls_records(&mut []);
        match state {
            Ok(ConnectionState::EncodeTlsData(mut e)) => {
                if encode(&mut e, scratch).is_err() {
                    break;
                }
            }
            Ok(ConnectionState::TransmitTlsData(t)) => {
                t.done();
                break;
            }
            _ => break,
        }
    }
    let _ = write_some(fd, scratch);
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    use super::*;

    fn configs(tls12: bool) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let der = cert.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let versions: &[&rustls::SupportedProtocolVersion] = if tls12 {
            &[&rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13]
        };
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// What the device's socket has for the server, read in one go (non-blocking).
    fn take(sock: &UnixStream) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            let n = unsafe {
                libc::recv(
                    sock.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n as usize]);
        }
    }

    struct Pair {
        tls: TlsSessions,
        server: UnixStream,
        device: UnixStream,
        client: rustls::ClientConnection,
    }

    impl Pair {
        fn new() -> Self {
            Self::with(false)
        }
        fn with(tls12: bool) -> Self {
            let (sc, cc) = configs(tls12);
            let (server, device) = UnixStream::pair().unwrap();
            server.set_nonblocking(true).unwrap();
            device.set_nonblocking(true).unwrap();
            let mut tls = TlsSessions::new(sc);
            tls.add(server.as_raw_fd()).unwrap();
            let client =
                rustls::ClientConnection::new(cc, "localhost".try_into().unwrap()).unwrap();
            Self {
                tls,
                server,
                device,
                client,
            }
        }
        fn fd(&self) -> RawFd {
            self.server.as_raw_fd()
        }
        /// Device -> edge: what the client has to send, fed `chunk` bytes at a time.
        fn up(&mut self, chunk: usize) -> (TlsRead, Vec<u8>) {
            self.up_cut(&[chunk])
        }
        /// Device -> edge, in reads of the sizes in `cuts` (cycled).
        fn up_cut(&mut self, cuts: &[usize]) -> (TlsRead, Vec<u8>) {
            let mut wire = Vec::new();
            while self.client.wants_write() {
                self.client.write_tls(&mut wire).unwrap();
            }
            let mut plain = Vec::new();
            let (mut at, mut i) = (0, 0);
            while at < wire.len() {
                let n = cuts[i % cuts.len()].max(1).min(wire.len() - at);
                i += 1;
                match self.tls.read(self.fd(), &wire[at..at + n], &mut plain) {
                    TlsRead::Ok => {}
                    other => return (other, plain),
                }
                at += n;
            }
            (TlsRead::Ok, plain)
        }
        /// Edge -> device: what the socket holds, into the client; its plaintext.
        fn down(&mut self) -> Vec<u8> {
            let wire = take(&self.device);
            let mut r = &wire[..];
            let mut plain = Vec::new();
            while !r.is_empty() {
                self.client.read_tls(&mut r).unwrap();
                self.client.process_new_packets().unwrap();
                let _ = self.client.reader().read_to_end(&mut plain);
            }
            plain
        }
        fn handshake(&mut self, chunk: usize) {
            for _ in 0..10 {
                if !self.client.is_handshaking() {
                    break;
                }
                assert_eq!(self.up(chunk).0, TlsRead::Ok);
                self.down();
            }
            assert!(!self.client.is_handshaking(), "handshake done");
            // The client's Finished.
            assert_eq!(self.up(chunk).0, TlsRead::Ok);
        }
        fn idle_buffers(&self) -> (usize, usize) {
            let s = self.tls.by_fd[self.fd() as usize].as_ref().unwrap();
            (s.partial.capacity(), s.out.capacity())
        }
    }

    #[test]
    fn handshake_and_traffic_with_records_cut_anywhere() {
        for (chunk, tls12) in [
            (1, false),
            (7, false),
            (100, false),
            (65536, false),
            (1, true),
            (65536, true),
        ] {
            let mut p = Pair::with(tls12);
            p.handshake(chunk);
            assert_eq!(p.idle_buffers(), (0, 0), "an idle session holds no buffers");
            // Device -> edge, records cut into `chunk`-byte reads.
            p.client
                .writer()
                .write_all(b"GET /v1/subscribe HTTP/1.1\r\n\r\n")
                .unwrap();
            let (r, plain) = p.up(chunk);
            assert_eq!(r, TlsRead::Ok);
            assert_eq!(
                plain, b"GET /v1/subscribe HTTP/1.1\r\n\r\n",
                "chunk {chunk}, tls12 {tls12}"
            );
            assert_eq!(p.idle_buffers(), (0, 0));
            // Edge -> device.
            assert_eq!(p.tls.send(p.fd(), b"cue frame"), Sent::Took(9));
            assert_eq!(p.down(), b"cue frame");
            // Device closes: close_notify is end of stream.
            p.client.send_close_notify();
            assert_eq!(p.up(chunk).0, TlsRead::Eof);
        }
    }

    /// The device asks for a key update (TLS 1.3): the edge answers with its own in the same
    /// turn, and traffic goes on both ways under the new keys.
    #[test]
    fn key_updates_asked_by_the_device_are_answered() {
        let mut p = Pair::new();
        p.handshake(65536);
        for round in 0..3u8 {
            p.client.refresh_traffic_keys().unwrap();
            p.client.writer().write_all(&[b'a' + round]).unwrap();
            let (r, plain) = p.up(65536);
            assert_eq!((r, plain), (TlsRead::Ok, vec![b'a' + round]));
            assert_eq!(p.tls.send(p.fd(), &[b'0' + round]), Sent::Took(1));
            assert_eq!(p.down(), vec![b'0' + round], "round {round}");
        }
        assert_eq!(p.idle_buffers(), (0, 0));
    }

    #[test]
    fn a_full_socket_keeps_whole_records_and_refuses_more_until_flushed() {
        let mut p = Pair::new();
        p.handshake(65536);
        let frame = vec![b'x'; 4000];
        let mut took = 0usize;
        let mut blocked = false;
        for _ in 0..10_000 {
            match p.tls.send(p.fd(), &frame) {
                Sent::Took(n) => took += n,
                Sent::WouldBlock => {
                    blocked = true;
                    break;
                }
                Sent::Closed => panic!("closed"),
            }
        }
        assert!(blocked, "the socket filled up");
        assert!(p.tls.wants_writable(p.fd()));
        assert_eq!(p.tls.send(p.fd(), b"more"), Sent::WouldBlock);
        // The device reads; the edge flushes on writability; everything taken arrives, whole.
        let mut got = 0;
        for _ in 0..1000 {
            got += p.down().len();
            if p.tls.flush(p.fd()) == Some(true) {
                break;
            }
        }
        got += p.down().len();
        assert_eq!(got, took, "every byte the edge took arrived");
        assert_eq!(
            p.idle_buffers().1,
            0,
            "the pending ciphertext is freed once out"
        );
        assert_eq!(p.tls.send(p.fd(), b"after"), Sent::Took(5));
        assert_eq!(p.down(), b"after");
    }

    #[test]
    fn garbage_fails_and_a_removed_session_sends_close_notify() {
        let mut p = Pair::new();
        let mut plain = Vec::new();
        let r = p
            .tls
            .read(p.fd(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &mut plain);
        assert_eq!(r, TlsRead::Failed);

        let mut p = Pair::new();
        p.handshake(65536);
        p.tls.remove(p.fd());
        assert!(!p.tls.is_tls(p.fd()));
        let wire = take(&p.device);
        let mut r = &wire[..];
        p.client.read_tls(&mut r).unwrap();
        let state = p.client.process_new_packets().unwrap();
        assert!(state.peer_has_closed(), "close_notify received");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// Whatever sizes the socket hands the bytes over in, the handshake completes and the
        /// device's bytes come out whole and in order.
        #[test]
        fn any_read_sizes(
            cuts in proptest::collection::vec(1usize..400, 1..8),
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000),
            tls12 in proptest::prelude::any::<bool>(),
        ) {
            let mut p = Pair::with(tls12);
            for _ in 0..10 {
                if !p.client.is_handshaking() {
                    break;
                }
                proptest::prop_assert_eq!(p.up_cut(&cuts).0, TlsRead::Ok);
                p.down();
            }
            proptest::prop_assert!(!p.client.is_handshaking());
            p.client.writer().write_all(&payload).unwrap();
            let (r, plain) = p.up_cut(&cuts);
            proptest::prop_assert_eq!(r, TlsRead::Ok);
            proptest::prop_assert_eq!(plain, payload);
            proptest::prop_assert_eq!(p.idle_buffers(), (0, 0));
        }
    }
}
