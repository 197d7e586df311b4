//! Ethernet MAC addresses as the user writes them (`02:00:00:00:00:01`).
//!
//! The guest reads its NIC's address from the device's config space once,
//! when its driver probes; husk picks a random locally administered unicast
//! address when nobody names one, and a template keeps the address its
//! guest knows (see `device`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct MacAddr(pub [u8; 6]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacError {
    #[error("{0:?} is not a MAC address: expected six hex bytes such as 02:00:00:00:00:01")]
    Syntax(String),
    #[error("{0} is a multicast address; a NIC needs a unicast one (even first byte)")]
    Multicast(MacAddr),
}

impl MacAddr {
    /// A random unicast address with the locally administered bit set.
    pub fn random_local() -> Self {
        let mut b = [0u8; 6];
        // SAFETY: getrandom writes at most `b.len()` bytes into `b`.
        let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
        if n != b.len() as isize {
            tracing::warn!(
                "getrandom failed; the MAC address comes from a pseudo-random generator"
            );
            b.copy_from_slice(&vmm_sys_util::rand::rand_bytes(6));
        }
        b[0] = (b[0] & !0x01) | 0x02;
        Self(b)
    }

    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = MacError;

    fn from_str(s: &str) -> Result<Self, MacError> {
        let syntax = || MacError::Syntax(s.into());
        let mut b = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut b {
            let part = parts.next().ok_or_else(syntax)?;
            if part.len() != 2 {
                return Err(syntax());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| syntax())?;
        }
        if parts.next().is_some() {
            return Err(syntax());
        }
        let mac = Self(b);
        if mac.is_multicast() {
            return Err(MacError::Multicast(mac));
        }
        Ok(mac)
    }
}

impl From<MacAddr> for String {
    fn from(m: MacAddr) -> String {
        m.to_string()
    }
}

impl TryFrom<String> for MacAddr {
    type Error = MacError;

    fn try_from(s: String) -> Result<Self, MacError> {
        s.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prints_and_refuses() {
        let m: MacAddr = "02:aB:00:10:ff:01".parse().unwrap();
        assert_eq!(m.0, [0x02, 0xab, 0x00, 0x10, 0xff, 0x01]);
        assert_eq!(m.to_string(), "02:ab:00:10:ff:01");
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "2:00:00:00:00:00",
            "zz:00:00:00:00:00",
        ] {
            assert!(
                matches!(bad.parse::<MacAddr>(), Err(MacError::Syntax(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            "01:00:5e:00:00:01".parse::<MacAddr>(),
            Err(MacError::Multicast(_))
        ));
    }

    #[test]
    fn random_addresses_are_local_unicast_and_differ() {
        let (a, b) = (MacAddr::random_local(), MacAddr::random_local());
        assert_eq!(a.0[0] & 0x03, 0x02);
        assert_ne!(a, b);
    }
}
