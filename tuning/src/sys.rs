//! Every system call this crate makes, each in a small wrapper whose safety argument is local.
//! Nothing here decides anything: callers turn the answers into `Reading`s and checks.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

fn last_error() -> io::Error {
    io::Error::last_os_error()
}

/// `struct io_uring_params` is 120 bytes (linux/io_uring.h): the kernel reads the flags and
/// requires the reserved words to be zero, and writes back the ring offsets. An all-zero
/// buffer of the right size and alignment is a valid request for a default ring.
#[repr(C, align(8))]
struct IoUringParams([u32; 30]);

/// `struct io_uring_probe` header (16 bytes) followed by `struct io_uring_probe_op` entries
/// (8 bytes each: op, resv, flags (u16), resv2 (u32)).
const PROBE_HEADER: usize = 16;
const PROBE_OP: usize = 8;
const PROBE_OPS: usize = 256;
const IORING_REGISTER_PROBE: libc::c_uint = 8;
const IO_URING_OP_SUPPORTED: u16 = 1;

/// Creates a 4-entry io_uring and asks it which operations the kernel supports.
/// `Err`: `io_uring_setup` refused (the errno tells why). `Ok(None)`: the ring works but the
/// kernel predates `IORING_REGISTER_PROBE` (5.6). `Ok(Some(ops))`: the supported opcodes.
pub(crate) fn io_uring_supported_ops() -> io::Result<Option<Vec<u8>>> {
    let mut params = IoUringParams([0; 30]);
    // SAFETY: io_uring_setup(entries, params) reads and writes exactly
    // sizeof(struct io_uring_params) = 120 bytes at `params`, which we own for the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_io_uring_setup,
            4 as libc::c_uint,
            &mut params as *mut IoUringParams,
        )
    };
    if fd < 0 {
        return Err(last_error());
    }
    // SAFETY: the syscall returned a new file descriptor that nothing else owns.
    let ring = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
    let mut probe = vec![0u8; PROBE_HEADER + PROBE_OPS * PROBE_OP];
    // SAFETY: IORING_REGISTER_PROBE writes at most nr_args (256) op entries after the header,
    // and `probe` is zeroed (the kernel requires it) and sized for exactly that.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            std::os::fd::AsRawFd::as_raw_fd(&ring),
            IORING_REGISTER_PROBE,
            probe.as_mut_ptr(),
            PROBE_OPS as libc::c_uint,
        )
    };
    drop(ring);
    if rc < 0 {
        return Ok(None);
    }
    let ops_len = usize::from(probe[1]).min(PROBE_OPS);
    let supported = (0..ops_len)
        .filter_map(|i| {
            let entry = &probe[PROBE_HEADER + i * PROBE_OP..PROBE_HEADER + (i + 1) * PROBE_OP];
            let flags = u16::from_ne_bytes([entry[2], entry[3]]);
            (flags & IO_URING_OP_SUPPORTED != 0).then_some(entry[0])
        })
        .collect();
    Ok(Some(supported))
}

const SOL_UDP: libc::c_int = 17;
/// `UDP_SEGMENT` (GSO, Linux 4.18) and `UDP_GRO` (Linux 5.0) from linux/udp.h.
pub(crate) const UDP_SEGMENT: libc::c_int = 103;
pub(crate) const UDP_GRO: libc::c_int = 104;

/// Whether the kernel accepts a UDP socket option: `Ok(false)` on `ENOPROTOOPT`.
pub(crate) fn udp_option_supported(option: libc::c_int, value: libc::c_int) -> io::Result<bool> {
    // SAFETY: plain socket(2) call with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(last_error());
    }
    // SAFETY: socket(2) returned a new descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `value` is a live c_int and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            SOL_UDP,
            option,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let err = last_error();
    if err.raw_os_error() == Some(libc::ENOPROTOOPT) {
        Ok(false)
    } else {
        Err(err)
    }
}
