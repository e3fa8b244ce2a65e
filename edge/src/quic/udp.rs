//! The shard's UDP socket: `SO_REUSEPORT` (every shard and process binds the same address; the
//! kernel spreads flows by 4-tuple), batched receive (`recvmmsg`, with UDP GRO when the kernel
//! offers it: one receive may carry several datagrams of one flow) and batched send
//! (`sendmmsg` across connections, with `UDP_SEGMENT` (GSO) when one transmit carries several
//! datagrams of one connection). Linux only, like the rest of the edge.
//!
//! ECN and `IP_PKTINFO` are not used: the socket is bound to one address, so replies leave from
//! it, and congestion control runs on loss alone.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;

/// Datagrams per `recvmmsg` call.
pub const RX_BATCH: usize = 32;
/// Receive buffer per message: room for a GRO train of datagrams.
const RX_BUF: usize = 64 * 1024;
/// Messages per `sendmmsg` call.
pub const TX_BATCH: usize = 64;
/// Most datagrams one GSO send carries.
pub const MAX_GSO_SEGMENTS: usize = 10;

/// A bound, non-blocking UDP socket.
#[derive(Debug)]
pub struct UdpSocket {
    fd: OwnedFd,
    /// The bound address.
    pub local: SocketAddr,
    /// UDP GSO is available.
    pub gso: bool,
    /// UDP GRO is on.
    pub gro: bool,
}

fn setsockopt_int(fd: RawFd, level: libc::c_int, opt: libc::c_int, v: libc::c_int) -> bool {
    // SAFETY: the option value points at a live c_int on this stack frame and the length
    // passed is its size; the kernel only reads it during the call.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

impl UdpSocket {
    /// Binds `addr` with `SO_REUSEPORT`, asks for `buffer` bytes of send and receive buffer
    /// (forcing past `net.core.[rw]mem_max` when privileged), and turns GRO on if it can.
    pub fn bind(addr: SocketAddr, buffer: usize) -> std::io::Result<Self> {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(
            Domain::for_address(addr),
            Type::DGRAM.nonblocking().cloexec(),
            None,
        )?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        let fd = s.as_raw_fd();
        let b = buffer.min(i32::MAX as usize) as libc::c_int;
        if !setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, b) {
            let _ = s.set_recv_buffer_size(buffer);
        }
        if !setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, b) {
            let _ = s.set_send_buffer_size(buffer);
        }
        s.bind(&addr.into())?;
        let local = s
            .local_addr()?
            .as_socket()
            .ok_or_else(|| std::io::Error::other("UDP socket has no inet address"))?;
        let gro = setsockopt_int(fd, SOL_UDP, UDP_GRO, 1);
        let gso = {
            let mut v: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: `v` and `len` are live locals; `len` holds `v`'s size, so the kernel
            // writes at most that many bytes.
            unsafe {
                libc::getsockopt(
                    fd,
                    SOL_UDP,
                    UDP_SEGMENT,
                    (&mut v as *mut libc::c_int).cast(),
                    &mut len,
                ) == 0
            }
        };
        // SAFETY: `into_raw_fd` gave up socket2's ownership of this open fd: it is ours alone.
        let fd = unsafe { OwnedFd::from_raw_fd(s.into_raw_fd()) };
        Ok(Self {
            fd,
            local,
            gso,
            gro,
        })
    }

    /// The socket fd (for epoll).
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A received datagram (one GRO segment), borrowed from the [`RxBatch`].
#[derive(Debug)]
pub struct Datagram<'a> {
    /// Sender.
    pub from: SocketAddr,
    /// Payload.
    pub data: &'a [u8],
}

/// Buffers for one `recvmmsg` call.
pub struct RxBatch {
    bufs: Box<[u8]>,
    names: Box<[libc::sockaddr_storage]>,
    ctrl: Box<[[u64; 8]]>,
    lens: [usize; RX_BATCH],
    segs: [usize; RX_BATCH],
    n: usize,
}

impl std::fmt::Debug for RxBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RxBatch").field("n", &self.n).finish()
    }
}

impl Default for RxBatch {
    fn default() -> Self {
        Self {
            bufs: vec![0u8; RX_BATCH * RX_BUF].into_boxed_slice(),
            // SAFETY: sockaddr_storage is plain old data: all zeroes is a valid value.
            names: vec![unsafe { std::mem::zeroed::<libc::sockaddr_storage>() }; RX_BATCH]
                .into_boxed_slice(),
            ctrl: vec![[0u64; 8]; RX_BATCH].into_boxed_slice(),
            lens: [0; RX_BATCH],
            segs: [0; RX_BATCH],
            n: 0,
        }
    }
}

impl RxBatch {
    /// One `recvmmsg`: returns how many messages arrived (0 when none are waiting).
    pub fn recv(&mut self, sock: &UdpSocket) -> std::io::Result<usize> {
        // SAFETY: iovec and mmsghdr are plain old data (null pointers, zero lengths): all
        // zeroes is a valid value, and every entry is filled in below before the call.
        let mut iov: [libc::iovec; RX_BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut hdrs: [libc::mmsghdr; RX_BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..RX_BATCH {
            iov[i] = libc::iovec {
                iov_base: self.bufs[i * RX_BUF..].as_mut_ptr().cast(),
                iov_len: RX_BUF,
            };
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut iov[i];
            h.msg_iovlen = 1;
            h.msg_control = self.ctrl[i].as_mut_ptr().cast();
            h.msg_controllen = std::mem::size_of::<[u64; 8]>() as _;
        }
        // SAFETY: every header points into buffers owned by `self` (or the local iovecs), all
        // alive and correctly sized for the duration of the call.
        let n = unsafe {
            libc::recvmmsg(
                sock.raw_fd(),
                hdrs.as_mut_ptr(),
                RX_BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(0),
                _ => Err(e),
            };
        }
        self.n = n as usize;
        for (i, h) in hdrs.iter().take(self.n).enumerate() {
            self.lens[i] = h.msg_len as usize;
            self.segs[i] = gro_segment(&h.msg_hdr).unwrap_or(self.lens[i]).max(1);
        }
        Ok(self.n)
    }

    /// Calls `f` for every datagram of the last receive (GRO trains split into datagrams).
    pub fn for_each(&self, mut f: impl FnMut(Datagram<'_>)) {
        for i in 0..self.n {
            let Some(from) = sockaddr_to(&self.names[i]) else {
                continue;
            };
            let msg = &self.bufs[i * RX_BUF..i * RX_BUF + self.lens[i]];
            for data in msg.chunks(self.segs[i]) {
                f(Datagram { from, data });
            }
        }
    }
}

fn gro_segment(h: &libc::msghdr) -> Option<usize> {
    // SAFETY: the kernel filled `msg_control` with `msg_controllen` bytes of cmsgs; the CMSG
    // macros walk exactly that range.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == SOL_UDP && (*c).cmsg_type == UDP_GRO {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::c_int);
                return Some(v as usize);
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

fn sockaddr_to(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a = unsafe { &*(s as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a = unsafe { &*(s as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn to_sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data: all zeroes is a valid value.
    let mut s: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in.
            let p = unsafe { &mut *(&mut s as *mut _ as *mut libc::sockaddr_in) };
            p.sin_family = libc::AF_INET as libc::sa_family_t;
            p.sin_port = v4.port().to_be();
            p.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            // SAFETY: as above, for sockaddr_in6.
            let p = unsafe { &mut *(&mut s as *mut _ as *mut libc::sockaddr_in6) };
            p.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            p.sin6_port = v6.port().to_be();
            p.sin6_addr.s6_addr = v6.ip().octets();
            p.sin6_flowinfo = v6.flowinfo();
            p.sin6_scope_id = v6.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (s, len as libc::socklen_t)
}

/// Transmits waiting for one `sendmmsg` (bytes in one arena, so queuing allocates nothing once
/// warm).
#[derive(Debug, Default)]
pub struct TxBatch {
    arena: Vec<u8>,
    items: Vec<(SocketAddr, usize, usize, Option<u16>)>,
}

/// What a flush did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Flushed {
    /// Datagrams sent (GSO segments counted one by one).
    pub datagrams: u64,
    /// `sendmmsg` calls.
    pub calls: u64,
    /// Datagrams dropped (socket buffer full or an error): QUIC's loss recovery resends.
    pub dropped: u64,
}

impl TxBatch {
    /// Queues `bytes` for `to`, as datagrams of `segment` bytes when given (GSO).
    pub fn push(&mut self, to: SocketAddr, bytes: &[u8], segment: Option<usize>) {
        let start = self.arena.len();
        self.arena.extend_from_slice(bytes);
        let seg = segment.filter(|&s| s < bytes.len()).map(|s| s as u16);
        self.items.push((to, start, bytes.len(), seg));
    }

    /// Transmits queued.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Nothing queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Sends everything queued, `TX_BATCH` messages per `sendmmsg`.
    pub fn flush(&mut self, sock: &UdpSocket) -> Flushed {
        let mut out = Flushed::default();
        let mut i = 0;
        while i < self.items.len() {
            let n = (self.items.len() - i).min(TX_BATCH);
            // SAFETY: sockaddr_storage, socklen_t, iovec and mmsghdr are plain old data: all
            // zeroes is a valid value, and the first `n` entries are filled in below before
            // the call, which reads no more than `n`.
            let mut names: [(libc::sockaddr_storage, libc::socklen_t); TX_BATCH] =
                unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            let mut iov: [libc::iovec; TX_BATCH] = unsafe { std::mem::zeroed() };
            let mut ctrl = [[0u64; 4]; TX_BATCH];
            // SAFETY: as above.
            let mut hdrs: [libc::mmsghdr; TX_BATCH] = unsafe { std::mem::zeroed() };
            for j in 0..n {
                let (to, start, size, seg) = self.items[i + j];
                names[j] = to_sockaddr(to);
                iov[j] = libc::iovec {
                    iov_base: self.arena[start..].as_mut_ptr().cast(),
                    iov_len: size,
                };
                let h = &mut hdrs[j].msg_hdr;
                h.msg_name = (&mut names[j].0 as *mut libc::sockaddr_storage).cast();
                h.msg_namelen = names[j].1;
                h.msg_iov = &mut iov[j];
                h.msg_iovlen = 1;
                if let Some(s) = seg {
                    h.msg_control = ctrl[j].as_mut_ptr().cast();
                    // SAFETY: `ctrl[j]` has room for one cmsg holding a u16 (CMSG_SPACE(2) =
                    // 24 bytes <= 32), and the macros stay within `msg_controllen`.
                    unsafe {
                        h.msg_controllen = libc::CMSG_SPACE(2) as _;
                        let c = libc::CMSG_FIRSTHDR(h);
                        (*c).cmsg_level = SOL_UDP;
                        (*c).cmsg_type = UDP_SEGMENT;
                        (*c).cmsg_len = libc::CMSG_LEN(2) as _;
                        std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, s);
                    }
                }
            }
            // SAFETY: every header points at buffers alive for the call (the arena and the
            // local arrays above).
            let sent =
                unsafe { libc::sendmmsg(sock.raw_fd(), hdrs.as_mut_ptr(), n as libc::c_uint, 0) };
            out.calls += 1;
            let took = if sent < 0 {
                match std::io::Error::last_os_error().raw_os_error() {
                    Some(libc::EINTR) => continue,
                    // Buffer full or the first message failed (e.g. unreachable): drop it and
                    // go on; QUIC recovers lost datagrams.
                    _ => {
                        out.dropped += segments(&self.items[i]);
                        1
                    }
                }
            } else {
                sent as usize
            };
            for item in &self.items[i..i + took.min(n)] {
                if sent >= 0 {
                    out.datagrams += segments(item);
                }
            }
            i += took.max(1);
        }
        self.items.clear();
        self.arena.clear();
        out
    }
}

fn segments(item: &(SocketAddr, usize, usize, Option<u16>)) -> u64 {
    match item.3 {
        Some(s) => item.2.div_ceil(s as usize) as u64,
        None => 1,
    }
}

/// The IP the socket is bound to, if not the wildcard (quinn-proto wants it per datagram).
pub fn local_ip(sock: &UdpSocket) -> Option<IpAddr> {
    let ip = sock.local.ip();
    (!ip.is_unspecified()).then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip_over_loopback() {
        let a = UdpSocket::bind("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
        let b = UdpSocket::bind("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
        let mut tx = TxBatch::default();
        for i in 0..100u8 {
            tx.push(b.local, &[i; 50], None);
        }
        // One GSO transmit of three 100-byte datagrams, when the kernel has GSO.
        let gso = a.gso;
        if gso {
            tx.push(b.local, &[200; 300], Some(100));
        }
        let f = tx.flush(&a);
        assert_eq!(f.datagrams, 100 + if gso { 3 } else { 0 });
        assert_eq!(f.calls, 2);
        let mut rx = RxBatch::default();
        let mut got = Vec::new();
        for _ in 0..100 {
            if rx.recv(&b).unwrap() == 0 {
                if got.len() >= 100 + if gso { 3 } else { 0 } {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
                continue;
            }
            rx.for_each(|d| {
                assert_eq!(d.from, a.local);
                got.push((d.data[0], d.data.len()));
            });
        }
        assert_eq!(got.len(), 100 + if gso { 3 } else { 0 });
        assert!(got[..100]
            .iter()
            .enumerate()
            .all(|(i, g)| *g == (i as u8, 50)));
        if gso {
            assert!(got[100..].iter().all(|g| *g == (200, 100)));
        }
    }
}
