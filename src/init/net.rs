//! The only network setup init does: bring up `lo` (everything else is a supervised DHCP service), and set
//! the hostname.
#![allow(unsafe_code)] // audited: see the SAFETY comments

use std::os::fd::AsRawFd;

use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

nix::ioctl_read_bad!(get_interface_flags, libc::SIOCGIFFLAGS, libc::ifreq);
nix::ioctl_write_ptr_bad!(set_interface_flags, libc::SIOCSIFFLAGS, libc::ifreq);

/// Whether `lo` was already up or we brought it up.
#[derive(Debug, PartialEq, Eq)]
pub enum LoopbackState {
    AlreadyUp,
    BroughtUp,
}

/// Set IFF_UP on `lo`; the kernel then assigns 127.0.0.1/8 and ::1 itself.
pub fn bring_up_loopback() -> Result<LoopbackState, nix::Error> {
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: `ifreq` is a plain C struct (a name and a union of integers, sockaddrs and a pointer); all-zero
    // bytes are a valid value for every field.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the NUL-terminated name and writes `ifru_flags` of the request we own,
    // which lives across the call.
    unsafe { get_interface_flags(sock.as_raw_fd(), &mut request) }?;
    // SAFETY: SIOCGIFFLAGS succeeded, so the kernel filled `ifru_flags`, the union member we read.
    let flags = unsafe { request.ifr_ifru.ifru_flags };
    let up = libc::IFF_UP as libc::c_short;
    if flags & up != 0 {
        return Ok(LoopbackState::AlreadyUp);
    }
    request.ifr_ifru.ifru_flags = flags | up;
    // SAFETY: SIOCSIFFLAGS only reads the name and `ifru_flags` of the request, valid for the call.
    unsafe { set_interface_flags(sock.as_raw_fd(), &request) }?;
    Ok(LoopbackState::BroughtUp)
}

/// Check a hostname before handing it to the kernel: 1..=64 bytes of letters, digits, `-` and `.`.
pub fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['-', '.'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_checked() {
        assert!(valid_hostname("web-1.example.internal"));
        assert!(valid_hostname("ip-10-0-0-1"));
        for bad in ["", "-x", ".x", "has space", "nul\0", "ü", &"a".repeat(65)] {
            assert!(!valid_hostname(bad), "{bad:?}");
        }
    }
}
