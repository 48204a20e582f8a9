//! Ethernet II frames (no FCS).

use super::WireError;
use core::fmt;

mod field {
    use core::ops::Range;
    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
    pub const PAYLOAD: usize = 14;
}

/// Length of the Ethernet header.
pub const HEADER_LEN: usize = field::PAYLOAD;

/// A MAC address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EthernetAddress(pub [u8; 6]);

impl EthernetAddress {
    pub const BROADCAST: EthernetAddress = EthernetAddress([0xff; 6]);

    /// Multicast (group) bit set; includes broadcast.
    #[inline]
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }
    #[inline]
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }
    #[inline]
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }
    /// The 48 bits as an integer (for hashing and table keys).
    #[inline]
    pub fn to_u64(self) -> u64 {
        let b = self.0;
        u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
    }
    #[inline]
    pub fn from_u64(v: u64) -> Self {
        let b = v.to_be_bytes();
        EthernetAddress([b[2], b[3], b[4], b[5], b[6], b[7]])
    }
    /// Reads a MAC from a 6-byte slice (panics if shorter: callers pass
    /// checked views).
    #[inline]
    pub fn from_bytes(b: &[u8]) -> Self {
        let mut a = [0; 6];
        a.copy_from_slice(&b[..6]);
        EthernetAddress(a)
    }
}

impl fmt::Display for EthernetAddress {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for EthernetAddress {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl core::str::FromStr for EthernetAddress {
    type Err = WireError;
    /// Parses `aa:bb:cc:dd:ee:ff` (also with `-`).
    fn from_str(s: &str) -> Result<Self, WireError> {
        let mut out = [0u8; 6];
        let mut n = 0;
        for part in s.split([':', '-']) {
            if n == 6 || part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(WireError::Malformed);
            }
            out[n] = u8::from_str_radix(part, 16).map_err(|_| WireError::Malformed)?;
            n += 1;
        }
        if n != 6 {
            return Err(WireError::Malformed);
        }
        Ok(EthernetAddress(out))
    }
}

/// EtherType, with unknown values kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EtherType {
    Ipv4,
    Arp,
    Ipv6,
    /// 802.1Q, 802.1ad and the old QinQ 0x9100: tagged frames.
    Vlan,
    Unknown(u16),
}

impl From<u16> for EtherType {
    #[inline]
    fn from(v: u16) -> Self {
        match v {
            0x0800 => EtherType::Ipv4,
            0x0806 => EtherType::Arp,
            0x86dd => EtherType::Ipv6,
            0x8100 | 0x88a8 | 0x9100 => EtherType::Vlan,
            v => EtherType::Unknown(v),
        }
    }
}

impl From<EtherType> for u16 {
    fn from(v: EtherType) -> u16 {
        match v {
            EtherType::Ipv4 => 0x0800,
            EtherType::Arp => 0x0806,
            EtherType::Ipv6 => 0x86dd,
            EtherType::Vlan => 0x8100,
            EtherType::Unknown(v) => v,
        }
    }
}

/// A view of an Ethernet II frame.
#[derive(Debug, Clone)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    pub fn new_unchecked(buffer: T) -> Self {
        EthernetFrame { buffer }
    }
    /// Checks that the header fits.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(EthernetFrame { buffer })
    }
    pub fn into_inner(self) -> T {
        self.buffer
    }
    pub fn dst_addr(&self) -> EthernetAddress {
        EthernetAddress::from_bytes(&self.buffer.as_ref()[field::DST])
    }
    pub fn src_addr(&self) -> EthernetAddress {
        EthernetAddress::from_bytes(&self.buffer.as_ref()[field::SRC])
    }
    pub fn ethertype(&self) -> EtherType {
        let b = &self.buffer.as_ref()[field::ETHERTYPE];
        EtherType::from(u16::from_be_bytes([b[0], b[1]]))
    }
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    pub fn set_dst_addr(&mut self, a: EthernetAddress) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&a.0)
    }
    pub fn set_src_addr(&mut self, a: EthernetAddress) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&a.0)
    }
    pub fn set_ethertype(&mut self, t: EtherType) {
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&u16::from(t).to_be_bytes())
    }
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: [u8; 18] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x08, 0x06, 1, 2,
        3, 4,
    ];

    #[test]
    fn parse() {
        let f = EthernetFrame::new_checked(&FRAME[..]).unwrap();
        assert!(f.dst_addr().is_broadcast());
        assert_eq!(f.src_addr().to_string(), "02:00:00:00:00:0a");
        assert_eq!(f.ethertype(), EtherType::Arp);
        assert_eq!(f.payload(), &[1, 2, 3, 4]);
    }

    #[test]
    fn truncated() {
        assert_eq!(
            EthernetFrame::new_checked(&FRAME[..13]).unwrap_err(),
            WireError::Truncated
        );
    }

    #[test]
    fn unknown_ethertype_roundtrips() {
        assert_eq!(u16::from(EtherType::from(0x88cc)), 0x88cc);
        assert_eq!(EtherType::from(0x88a8), EtherType::Vlan);
    }

    #[test]
    fn mac_parse_and_u64() {
        let m: EthernetAddress = "02:42:0a:01:00:01".parse().unwrap();
        assert_eq!(EthernetAddress::from_u64(m.to_u64()), m);
        assert!("02:42:0a:01:00".parse::<EthernetAddress>().is_err());
        assert!("02:42:0a:01:00:01:02".parse::<EthernetAddress>().is_err());
        assert!("zz:42:0a:01:00:01".parse::<EthernetAddress>().is_err());
        assert!("02:00:00:00:00:+a".parse::<EthernetAddress>().is_err());
    }
}
