//! Steering QUIC datagrams to the socket that owns their connection, across processes.
//!
//! Every shard of every `cue-edge` on a host binds the same QUIC port with `SO_REUSEPORT`; the
//! kernel picks a socket by hashing the 4-tuple. A device whose address changes (NAT rebinding,
//! migration) gets a new hash, and, when the group membership changes (an edge process restarts),
//! so do existing flows. Between shards of one process the channel mesh forwards such a
//! datagram; across processes nothing could. This module closes that gap in the kernel:
//!
//! * one `BPF_MAP_TYPE_REUSEPORT_SOCKARRAY` per port, shared by every process on it (found by
//!   its name, `cue_quic_<port>`, created by the first), holds each shard's socket at a *slot*
//!   (0..[`SLOTS`]) the shard claims atomically (`BPF_NOEXIST`); the kernel frees the slot when
//!   the socket closes;
//! * the shard's connection IDs carry its slot (byte 2, [`super::cid`]);
//! * a small `SK_REUSEPORT` program, attached to the port's reuseport group, reads the slot
//!   from a datagram's destination connection ID (short header, or a Handshake packet with an
//!   8-byte DCID) and selects that socket. Initial and 0-RTT packets (which carry the device's
//!   own random ID), IDs that are not ours and free slots fall back to the kernel's hash (any
//!   shard can take a new connection, and a device's Initials keep its 4-tuple's socket).
//!
//! The program is 30 instructions, written here as bytecode: no compiler, no object file, no
//! libbpf. It needs root, or `CAP_BPF` + `CAP_NET_ADMIN` + `CAP_SYS_ADMIN` (the last to find the
//! map another process made); without them the edge logs why and runs as before (mesh
//! forwarding within the process only). Never half on: a process that could create a map but
//! not open the shared one would hand out slots other processes also use.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Slots per port: sockets (shards of all processes) that can be steered to. Slot byte
/// `0xFF` in a connection ID means "not steered".
pub const SLOTS: u32 = 255;

/// Offset of the slot byte in the edge's connection IDs.
pub const SLOT_BYTE: usize = 2;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_MAP_GET_NEXT_ID: libc::c_long = 12;
const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const MAP_TYPE_REUSEPORT_SOCKARRAY: u32 = 20;
const PROG_TYPE_SK_REUSEPORT: u32 = 21;
const BPF_NOEXIST: u64 = 1;
const SO_ATTACH_REUSEPORT_EBPF: libc::c_int = 52;

/// `union bpf_attr` is 128+ bytes in every kernel that has these commands; zero-padded.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Self([0; 128])
    }
    fn u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn bytes(&mut self, off: usize, b: &[u8]) -> &mut Self {
        self.0[off..off + b.len()].copy_from_slice(b);
        self
    }
    fn read_u32(&self, off: usize) -> u32 {
        u32::from_ne_bytes(self.0[off..off + 4].try_into().expect("4 bytes"))
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: attr is a valid, zero-padded bpf_attr of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            std::mem::size_of::<Attr>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn fd_from(r: libc::c_long) -> OwnedFd {
    // SAFETY: the bpf() call returned a new file descriptor we own.
    unsafe { OwnedFd::from_raw_fd(r as RawFd) }
}

/// One eBPF instruction: opcode, dst/src registers, offset, immediate.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    let mut b = [0u8; 8];
    b[0] = code;
    b[1] = (src << 4) | (dst & 0x0f);
    b[2..4].copy_from_slice(&off.to_le_bytes());
    b[4..8].copy_from_slice(&imm.to_le_bytes());
    u64::from_le_bytes(b)
}

// Opcodes (linux/bpf_common.h, linux/bpf.h).
const MOV64_IMM: u8 = 0xb7;
const MOV64_REG: u8 = 0xbf;
const ADD64_IMM: u8 = 0x07;
const AND64_IMM: u8 = 0x57;
const LDX_B: u8 = 0x71;
const STX_W: u8 = 0x63;
const JEQ_IMM: u8 = 0x15;
const JNE_IMM: u8 = 0x55;
const JA: u8 = 0x05;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
const LD_IMM64: u8 = 0x18;
const PSEUDO_MAP_FD: u8 = 1;
const HELPER_SKB_LOAD_BYTES: i32 = 26;
const HELPER_SK_SELECT_REUSEPORT: i32 = 82;

/// The steering program for `map_fd`, for connection IDs of `cid_len` bytes.
///
/// ```text
///  r6 = ctx
///  load 9 bytes after the 8-byte UDP header to fp-16 (too short: pass)
///  b0 = fp[-16]
///  if b0 & 0x80 == 0: slot = fp[-16 + 1 + SLOT_BYTE]          (short header)
///  else: if b0 & 0x30 != 0x20: pass                (Initial, 0-RTT: the device's own ID)
///        if fp[-16 + 5] != cid_len: pass
///        slot = fp[-16 + 6 + SLOT_BYTE]                         (Handshake)
///  if slot == 0xff: pass
///  key = slot; sk_select_reuseport(ctx, map, &key, 0)           (no socket: hash)
///  pass: return SK_PASS
/// ```
fn program(map_fd: RawFd, cid_len: u8) -> Vec<u64> {
    let short_at = -16 + 1 + SLOT_BYTE as i16;
    let long_at = -16 + 6 + SLOT_BYTE as i16;
    let mut p = vec![
        insn(MOV64_REG, 6, 1, 0, 0),                     // 0: r6 = ctx
        insn(MOV64_REG, 1, 6, 0, 0),                     // 1: r1 = ctx
        insn(MOV64_IMM, 2, 0, 0, 8),                     // 2: r2 = offset (after the UDP header)
        insn(MOV64_REG, 3, 10, 0, 0),                    // 3: r3 = fp
        insn(ADD64_IMM, 3, 0, 0, -16),                   // 4: r3 = fp - 16
        insn(MOV64_IMM, 4, 0, 0, 9),                     // 5: r4 = 9 bytes
        insn(CALL, 0, 0, 0, HELPER_SKB_LOAD_BYTES),      // 6
        insn(JNE_IMM, 0, 0, 0, 0),                       // 7: if r0 != 0 goto pass (patched)
        insn(LDX_B, 2, 10, -16, 0),                      // 8: r2 = first byte
        insn(MOV64_REG, 3, 2, 0, 0),                     // 9
        insn(AND64_IMM, 3, 0, 0, 0x80),                  // 10
        insn(JNE_IMM, 3, 0, 2, 0),                       // 11: long header -> 14
        insn(LDX_B, 2, 10, short_at, 0),                 // 12: r2 = slot (short header)
        insn(JA, 0, 0, 5, 0),                            // 13: goto select (19)
        insn(AND64_IMM, 2, 0, 0, 0x30),                  // 14: packet type bits
        insn(JNE_IMM, 2, 0, 0, 0x20),                    // 15: not Handshake -> pass (patched)
        insn(LDX_B, 3, 10, -16 + 5, 0),                  // 16: r3 = DCID length
        insn(JNE_IMM, 3, 0, 0, cid_len as i32),          // 17: not ours -> pass (patched)
        insn(LDX_B, 2, 10, long_at, 0),                  // 18: r2 = slot (long header)
        insn(JEQ_IMM, 2, 0, 0, 0xff),                    // 19: select: unsteered -> pass (patched)
        insn(STX_W, 10, 2, -4, 0),                       // 20: key = slot
        insn(MOV64_REG, 1, 6, 0, 0),                     // 21: r1 = ctx
        insn(LD_IMM64, 2, PSEUDO_MAP_FD, 0, map_fd),     // 22: r2 = map
        0,                                               // 23: (second half of the 64-bit load)
        insn(MOV64_REG, 3, 10, 0, 0),                    // 24
        insn(ADD64_IMM, 3, 0, 0, -4),                    // 25: r3 = &key
        insn(MOV64_IMM, 4, 0, 0, 0),                     // 26: flags
        insn(CALL, 0, 0, 0, HELPER_SK_SELECT_REUSEPORT), // 27
        insn(MOV64_IMM, 0, 0, 0, 1),                     // 28: pass: r0 = SK_PASS
        insn(EXIT, 0, 0, 0, 0),                          // 29
    ];
    const PASS: i16 = 28;
    for at in [7usize, 15, 17, 19] {
        let off = PASS - at as i16 - 1;
        let mut b = p[at].to_le_bytes();
        b[2..4].copy_from_slice(&off.to_le_bytes());
        p[at] = u64::from_le_bytes(b);
    }
    p
}

/// The port's shared socket map and this process's copy of the steering program.
#[derive(Debug)]
pub struct Steering {
    map: OwnedFd,
    prog: OwnedFd,
}

/// Why steering is off.
#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    /// A bpf() call failed (commonly EPERM: no CAP_BPF).
    #[error("{what}: {err}")]
    Bpf {
        /// The step that failed.
        what: &'static str,
        /// The error.
        err: io::Error,
    },
    /// Every slot of the port is taken.
    #[error("all {SLOTS} steering slots of the port are taken")]
    Full,
}

fn step<T>(what: &'static str, r: io::Result<T>) -> Result<T, SteerError> {
    r.map_err(|err| SteerError::Bpf { what, err })
}

impl Steering {
    /// The steering map for QUIC `port` (found, or created by the first process on the host)
    /// and the program over it, for connection IDs of `cid_len` bytes.
    pub fn open(port: u16, cid_len: u8) -> Result<Self, SteerError> {
        let name = format!("cue_quic_{port}");
        // Find-or-create under a host-wide lock (one file for every port: it is held for a few
        // system calls at start), so two edges starting together share one map.
        let lock_path = std::env::temp_dir().join("cue-edge-quic-steer.lock");
        // flock works on a read-only descriptor too, so a file another user created will do.
        let lock = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o666)
                .open(&lock_path)
                .or_else(|_| File::open(&lock_path))
        };
        let lock = step("lock file", lock)?;
        // SAFETY: flock on a file we hold open; released when `lock` is dropped.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(SteerError::Bpf {
                what: "flock",
                err: io::Error::last_os_error(),
            });
        }
        let map = match find_map(&name)? {
            Some(m) => m,
            None => create_map(&name)?,
        };
        let insns = program(map.as_raw_fd(), cid_len);
        let license = b"Dual MIT/Apache-2.0\0";
        let mut log = vec![0u8; 4096];
        let mut a = Attr::new();
        a.u32(0, PROG_TYPE_SK_REUSEPORT)
            .u32(4, insns.len() as u32)
            .u64(8, insns.as_ptr() as u64)
            .u64(16, license.as_ptr() as u64)
            .u32(24, 1) // log_level
            .u32(28, log.len() as u32)
            .u64(32, log.as_mut_ptr() as u64)
            .bytes(48, b"cue_quic_steer");
        let prog = match bpf(BPF_PROG_LOAD, &mut a) {
            Ok(fd) => fd_from(fd),
            Err(err) => {
                let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                let verifier = String::from_utf8_lossy(&log[..end]).trim().to_string();
                tracing::debug!(%verifier, "steering program refused");
                return Err(SteerError::Bpf {
                    what: "loading the steering program",
                    err,
                });
            }
        };
        drop(lock);
        Ok(Self { map, prog })
    }

    /// Puts socket `sock` (bound, `SO_REUSEPORT`) at the lowest free slot and attaches the
    /// program to its reuseport group; returns the slot. The kernel frees the slot when the
    /// socket closes.
    pub fn join(&self, sock: RawFd) -> Result<u8, SteerError> {
        let mut slot = None;
        for s in 0..SLOTS {
            let key = s;
            let value = sock as u64;
            let mut a = Attr::new();
            a.u32(0, self.map.as_raw_fd() as u32)
                .u64(8, &key as *const u32 as u64)
                .u64(16, &value as *const u64 as u64)
                .u64(24, BPF_NOEXIST);
            match bpf(BPF_MAP_UPDATE_ELEM, &mut a) {
                Ok(_) => {
                    slot = Some(s as u8);
                    break;
                }
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
                Err(err) => {
                    return Err(SteerError::Bpf {
                        what: "adding the socket to the steering map",
                        err,
                    })
                }
            }
        }
        let slot = slot.ok_or(SteerError::Full)?;
        let prog = self.prog.as_raw_fd();
        // SAFETY: setsockopt with a pointer to an int of the size given.
        let r = unsafe {
            libc::setsockopt(
                sock,
                libc::SOL_SOCKET,
                SO_ATTACH_REUSEPORT_EBPF,
                (&prog as *const RawFd).cast(),
                std::mem::size_of::<RawFd>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(SteerError::Bpf {
                what: "attaching the steering program",
                err: io::Error::last_os_error(),
            });
        }
        Ok(slot)
    }
}

fn create_map(name: &str) -> Result<OwnedFd, SteerError> {
    let mut a = Attr::new();
    a.u32(0, MAP_TYPE_REUSEPORT_SOCKARRAY)
        .u32(4, 4) // key: u32 slot
        .u32(8, 8) // value: u64 socket fd (a cookie when read back)
        .u32(12, SLOTS)
        .bytes(28, &name_bytes(name));
    step("creating the steering map", bpf(BPF_MAP_CREATE, &mut a)).map(fd_from)
}

fn name_bytes(name: &str) -> [u8; 16] {
    let mut b = [0u8; 16];
    let n = name.len().min(15);
    b[..n].copy_from_slice(&name.as_bytes()[..n]);
    b
}

/// The live socket map called `name`, if a process on this host made one.
fn find_map(name: &str) -> Result<Option<OwnedFd>, SteerError> {
    let want = name_bytes(name);
    let mut id = 0u32;
    loop {
        let mut a = Attr::new();
        a.u32(0, id);
        match bpf(BPF_MAP_GET_NEXT_ID, &mut a) {
            Ok(_) => id = a.read_u32(4),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(err) => {
                return Err(SteerError::Bpf {
                    what: "listing maps",
                    err,
                })
            }
        }
        let mut a = Attr::new();
        a.u32(0, id);
        let fd = match bpf(BPF_MAP_GET_FD_BY_ID, &mut a) {
            Ok(fd) => fd_from(fd),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue, // gone meanwhile
            // Not allowed to open other processes' maps: steering with a map of our own would
            // hand out slots other processes also use, and misroute their devices. Off.
            Err(err) => {
                return Err(SteerError::Bpf {
                    what: "opening a map by id",
                    err,
                })
            }
        };
        let mut info = [0u8; 88];
        let mut a = Attr::new();
        a.u32(0, fd.as_raw_fd() as u32)
            .u32(4, info.len() as u32)
            .u64(8, info.as_mut_ptr() as u64);
        if bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a).is_err() {
            continue;
        }
        let ty = u32::from_ne_bytes(info[0..4].try_into().expect("4 bytes"));
        let max = u32::from_ne_bytes(info[16..20].try_into().expect("4 bytes"));
        if ty == MAP_TYPE_REUSEPORT_SOCKARRAY && max == SLOTS && info[24..40] == want {
            return Ok(Some(fd));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{SocketAddr, UdpSocket};
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    use super::*;
    use crate::quic::cid::CID_LEN;

    fn reuseport_pair() -> (UdpSocket, UdpSocket, SocketAddr) {
        let bind = |addr: SocketAddr| {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
            s.set_reuse_port(true).unwrap();
            s.bind(&addr.into()).unwrap();
            let s: UdpSocket = s.into();
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            s
        };
        let a = bind("127.0.0.1:0".parse().unwrap());
        let addr = a.local_addr().unwrap();
        let b = bind(addr);
        (a, b, addr)
    }

    fn drain(s: &UdpSocket) -> usize {
        let mut buf = [0u8; 64];
        let mut n = 0;
        while s.recv(&mut buf).is_ok() {
            n += 1;
        }
        n
    }

    fn short_packet(slot: u8) -> Vec<u8> {
        let mut p = vec![0x40, 0, 0];
        p.push(slot);
        p.extend_from_slice(&[7; 30]);
        p
    }

    fn long_packet(ty: u8, slot: u8) -> Vec<u8> {
        let mut p = vec![0xC0 | (ty << 4), 0, 0, 0, 1, CID_LEN as u8, 0, 0, slot];
        p.extend_from_slice(&[7; 30]);
        p
    }

    /// The steering program on `port`; without root the test fails (`None` only when root is
    /// knowingly skipped: `cue_testkit::require`).
    fn open_as_root(port: u16) -> Option<Steering> {
        match Steering::open(port, CID_LEN as u8) {
            Ok(s) => Some(s),
            Err(e) => {
                assert!(!cue_testkit::is_root(), "steering as root: {e}");
                cue_testkit::require("root", false, &format!("steering: {e}"));
                None
            }
        }
    }

    /// Datagrams from 64 source ports, which the kernel's hash spreads over both sockets, all
    /// land on the socket their connection ID names; Initial packets and unsteered IDs still
    /// spread.
    #[test]
    fn datagrams_go_to_the_socket_their_connection_id_names() {
        let (a, b, addr) = reuseport_pair();
        let Some(steer) = open_as_root(addr.port()) else {
            return;
        };
        let sa = steer.join(a.as_raw_fd()).unwrap();
        let sb = steer.join(b.as_raw_fd()).unwrap();
        assert_ne!(sa, sb);
        // A second process on the port finds the same map (here: a second open).
        let again = Steering::open(addr.port(), CID_LEN as u8).unwrap();
        let c = {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
            s.set_reuse_port(true).unwrap();
            s.bind(&addr.into()).unwrap();
            UdpSocket::from(s)
        };
        let sc = again.join(c.as_raw_fd()).unwrap();
        assert!(sc != sa && sc != sb, "slots are shared across openers");
        drop(c); // frees its slot; the group is back to a and b

        let senders: Vec<UdpSocket> = (0..64)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let send_all = |p: &[u8]| {
            for s in &senders {
                s.send_to(p, addr).unwrap();
            }
        };
        for (slot, name) in [(sa, "a"), (sb, "b")] {
            send_all(&short_packet(slot));
            send_all(&long_packet(2, slot)); // Handshake
            let (na, nb) = (drain(&a), drain(&b));
            let want = if name == "a" { (128, 0) } else { (0, 128) };
            assert_eq!(
                (na, nb),
                want,
                "short+handshake packets for slot {slot} ({name})"
            );
        }
        // Initial and 0-RTT packets, the unsteered slot and free slots: the kernel's hash,
        // which spreads 64 source ports over both sockets.
        for p in [
            long_packet(0, sa),
            long_packet(1, sa),
            short_packet(0xff),
            short_packet(200),
        ] {
            send_all(&p);
            let (na, nb) = (drain(&a), drain(&b));
            assert_eq!(na + nb, 64);
            assert!(na > 0 && nb > 0, "hashed, not steered: {na}/{nb}");
        }
        // Too short to carry an ID: hashed too, and nothing breaks.
        send_all(&[0x40, 1]);
        assert_eq!(drain(&a) + drain(&b), 64);
    }

    /// What the program computes, in Rust: the slot a datagram's payload names, if any.
    fn model(d: &[u8]) -> Option<u8> {
        if d.len() < 9 {
            return None; // the program loads 9 bytes or passes
        }
        let slot = if d[0] & 0x80 == 0 {
            d[1 + SLOT_BYTE]
        } else if d[0] & 0x30 == 0x20 && d[5] as usize == CID_LEN {
            d[6 + SLOT_BYTE]
        } else {
            return None;
        };
        (slot != 0xff).then_some(slot)
    }

    /// 2,000 random datagrams (biased towards our shapes): every one the model says names a
    /// live slot lands on that socket; the program and the model agree.
    #[test]
    fn the_program_agrees_with_its_model_on_random_datagrams() {
        use rand::{Rng, SeedableRng};
        let (a, b, addr) = reuseport_pair();
        let Some(steer) = open_as_root(addr.port()) else {
            return;
        };
        let sa = steer.join(a.as_raw_fd()).unwrap();
        let sb = steer.join(b.as_raw_fd()).unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        // Loopback delivers within the send; a short wait covers a busy machine.
        let arrived = || {
            for _ in 0..100 {
                let (na, nb) = (drain(&a), drain(&b));
                if na + nb > 0 {
                    return (na, nb);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            (0, 0)
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut steered = 0;
        for i in 0..2000 {
            let len = rng.gen_range(0..40);
            let mut d: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            if len > 9 && rng.gen_bool(0.7) {
                // Our shapes: short header, or a long header with an 8-byte DCID.
                if rng.gen_bool(0.5) {
                    d[0] &= 0x7f;
                } else {
                    d[0] |= 0x80;
                    d[5] = if rng.gen_bool(0.8) {
                        CID_LEN as u8
                    } else {
                        rng.gen()
                    };
                }
                let at = if d[0] & 0x80 == 0 { 1 } else { 6 } + SLOT_BYTE;
                d[at] = [sa, sb, 0xff, rng.gen()][rng.gen_range(0..4)];
            }
            sender.send_to(&d, addr).unwrap();
            let (na, nb) = arrived();
            assert_eq!(na + nb, 1, "datagram {i} arrived once");
            match model(&d) {
                Some(s) if s == sa => {
                    assert_eq!(na, 1, "datagram {i} {d:02x?} names a");
                    steered += 1;
                }
                Some(s) if s == sb => {
                    assert_eq!(nb, 1, "datagram {i} {d:02x?} names b");
                    steered += 1;
                }
                _ => {} // hashed: one sender, so always the same socket; either is right
            }
        }
        assert!(steered > 200, "the shapes were exercised: {steered}");
    }

    #[test]
    fn program_jumps_land_on_the_pass_instruction() {
        let p = program(3, 8);
        assert_eq!(p.len(), 30);
        for at in [7usize, 15, 17, 19] {
            let off = i16::from_le_bytes(p[at].to_le_bytes()[2..4].try_into().unwrap());
            assert_eq!(at as i16 + 1 + off, 28, "jump at {at}");
        }
        // The long-header branch and the select target.
        let off11 = i16::from_le_bytes(p[11].to_le_bytes()[2..4].try_into().unwrap());
        assert_eq!(11 + 1 + off11, 14);
        let off13 = i16::from_le_bytes(p[13].to_le_bytes()[2..4].try_into().unwrap());
        assert_eq!(13 + 1 + off13, 19);
    }
}
