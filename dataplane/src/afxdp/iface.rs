//! Interface lookups in the calling thread's network namespace: index and MTU.
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::error::AfXdpError;

/// `struct ifreq` as SIOCGIFMTU reads it: the name, then the MTU in the union.
#[repr(C)]
struct IfreqMtu {
    name: [libc::c_char; libc::IFNAMSIZ],
    mtu: libc::c_int,
    _pad: [u8; 20],
}

fn c_name(ifname: &str) -> Result<CString, AfXdpError> {
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ {
        return Err(AfXdpError::Config(format!(
            "interface name {ifname:?} must be 1 to {} bytes",
            libc::IFNAMSIZ - 1
        )));
    }
    CString::new(ifname)
        .map_err(|_| AfXdpError::Config(format!("interface name {ifname:?} contains a NUL byte")))
}

/// Index of interface `ifname` (`if_nametoindex`).
pub fn if_index(ifname: &str) -> Result<u32, AfXdpError> {
    let name = c_name(ifname)?;
    // SAFETY: `name` is a valid NUL-terminated string alive for the call.
    let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if idx == 0 {
        Err(AfXdpError::NoSuchInterface(ifname.to_owned()))
    } else {
        Ok(idx)
    }
}

/// MTU of interface `ifname` (`ioctl(SIOCGIFMTU)`).
pub fn interface_mtu(ifname: &str) -> Result<u32, AfXdpError> {
    let name = c_name(ifname)?;
    let mut req = IfreqMtu {
        name: [0; libc::IFNAMSIZ],
        mtu: 0,
        _pad: [0; 20],
    };
    for (dst, src) in req.name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain socket(2); checked and wrapped below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(AfXdpError::last("socket(AF_INET) for SIOCGIFMTU"));
    }
    // SAFETY: fresh descriptor owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: `req` is a writable ifreq-sized struct; SIOCGIFMTU writes only the MTU field.
    let r = unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCGIFMTU,
            &mut req as *mut IfreqMtu,
        )
    };
    if r < 0 {
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        return Err(if errno == libc::ENODEV {
            AfXdpError::NoSuchInterface(ifname.to_owned())
        } else {
            AfXdpError::from_errno("ioctl(SIOCGIFMTU)", errno)
        });
    }
    Ok(req.mtu as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn afxdp_iface_lookups_find_loopback_and_refuse_unknown_names() {
        assert_eq!(if_index("lo").unwrap(), 1);
        assert_eq!(interface_mtu("lo").unwrap(), 65536);
        assert!(matches!(
            if_index("bw-no-such-if"),
            Err(AfXdpError::NoSuchInterface(_))
        ));
        assert!(matches!(
            interface_mtu("bw-no-such-if"),
            Err(AfXdpError::NoSuchInterface(_))
        ));
        assert!(if_index("a-name-far-too-long-for-linux").is_err());
    }
}
