//! File descriptors over the agent's socket as `SCM_RIGHTS` ancillary
//! data: which message carries one is part of the protocol
//! ([`super::protocol::Request`]). One descriptor per message at most; any
//! further one a peer sends is closed on receipt.

use std::{
    io,
    os::fd::{FromRawFd as _, OwnedFd, RawFd},
};

/// Sends `data` with `fd` on its first byte; returns the bytes sent (the
/// rest, if any, goes as ordinary data).
pub fn send_with_fd(sock: RawFd, data: &[u8], fd: RawFd) -> io::Result<usize> {
    let four = u32::try_from(size_of::<i32>()).expect("4");
    let mut iov = libc::iovec { iov_base: data.as_ptr().cast_mut().cast(), iov_len: data.len() };
    let mut control = [0u64; 4];
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is a pure size computation.
    msg.msg_controllen = crate::sys::control_len(unsafe { libc::CMSG_SPACE(four) } as usize);
    // SAFETY: `control` (32 bytes) has room for one cmsghdr with an int
    // (CMSG_SPACE(4) is 24 on 64-bit); header and data are written in place.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&raw const msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = crate::sys::control_len(libc::CMSG_LEN(four) as usize);
        libc::CMSG_DATA(c).cast::<[u8; 4]>().write_unaligned(fd.to_ne_bytes());
    }
    // SAFETY: `msg` points at live buffers of the sizes it states.
    let n = unsafe { libc::sendmsg(sock, &raw const msg, libc::MSG_NOSIGNAL) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Reads into `buf` (at least one byte unless at end of stream) and takes
/// the first descriptor that came with those bytes, if any (close-on-exec;
/// any other is closed). More descriptors than the control buffer holds
/// (`MSG_CTRUNC`: the kernel dropped some) is an error.
pub fn recv_with_fd(sock: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // Room for a few ints in control messages, aligned as cmsghdr wants.
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = crate::sys::control_len(size_of_val(&control));
    // SAFETY: `msg` points at live buffers of the sizes it states.
    let n = unsafe { libc::recvmsg(sock, &raw mut msg, libc::MSG_CMSG_CLOEXEC) };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    let mut fd = None;
    // SAFETY: walking the control messages recvmsg filled in, with the
    // kernel's own macros; each SCM_RIGHTS payload holds whole ints.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&raw const msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c);
                let count = crate::sys::cmsg_payload(c) / size_of::<i32>();
                for i in 0..count {
                    let raw = data.add(i * size_of::<i32>()).cast::<[u8; 4]>().read_unaligned();
                    let owned = OwnedFd::from_raw_fd(i32::from_ne_bytes(raw));
                    // Only the first is kept; any other is closed here.
                    if fd.is_none() {
                        fd = Some(owned);
                    }
                }
            }
            c = libc::CMSG_NXTHDR(&raw const msg, c);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other("the peer sent more file descriptors than one message may carry"));
    }
    Ok((n, fd))
}
