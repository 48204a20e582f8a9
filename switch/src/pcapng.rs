//! pcapng (draft-ietf-opsawg-pcapng): a writer into any [`std::io::Write`]
//! and a reader over bytes, enough for captures and `tapnet replay`.
//!
//! Writer: one Section Header Block (little endian, `shb_userappl`
//! "tapnet"), one Interface Description Block per interface (link type
//! Ethernet, `if_name`, `if_tsresol` = 9: nanoseconds, snaplen 0 = no
//! limit) and Enhanced Packet Blocks with optional `opt_comment`s. The
//! output is byte-for-byte deterministic.
//!
//! Reader: Section Header, Interface Description, Enhanced Packet and
//! Simple Packet Blocks, either byte order, several sections (interface
//! indices restart with each section); every other block type is skipped.
//! Timestamps honour `if_tsresol` (default microseconds) and `if_tsoffset`.
//!
//! Contract: the reader never panics on untrusted bytes; truncated or
//! inconsistent input gives a [`PcapngError`] naming the offset of the
//! block at fault. Packets read before the fault stay valid.
//!
//! # Virtio-net metadata in comments
//!
//! A frame's [`VnetHdr`] (TSO/GSO super-frames, checksum offload) has no
//! pcapng field, so tapnet carries it in an `opt_comment` of the frame's
//! EPB, written only when the header is not the default ("no offload"):
//!
//! ```text
//! vnet_hdr flags=1 gso_type=1 hdr_len=66 gso_size=1448 csum_start=34 csum_offset=16
//! ```
//!
//! The comment starts with the word `vnet_hdr`, then `key=value` pairs
//! separated by spaces, in decimal (`0x` hex is also read): `flags`,
//! `gso_type`, `hdr_len`, `gso_size`, `csum_start`, `csum_offset` (always
//! written) and `num_buffers` (written only when non-zero). A missing key
//! reads as 0; an unknown or repeated key, a bad number or a second
//! `vnet_hdr` comment on one packet is a [`VnetCommentError`]. Other
//! comments are left alone. See [`vnet_comment`] and [`vnet_from_comments`].

use crate::wire::VnetHdr;
use std::io::{self, Write};

/// `LINKTYPE_ETHERNET`.
pub const LINKTYPE_ETHERNET: u16 = 1;

const BT_SHB: u32 = 0x0A0D_0D0A;
const BT_IDB: u32 = 1;
const BT_SPB: u32 = 3;
const BT_EPB: u32 = 6;
const BT_ISB: u32 = 5;
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;

const OPT_ENDOFOPT: u16 = 0;
const OPT_COMMENT: u16 = 1;
const OPT_SHB_USERAPPL: u16 = 4;
const OPT_IF_NAME: u16 = 2;
const OPT_IF_TSRESOL: u16 = 9;
const OPT_IF_TSOFFSET: u16 = 14;
const OPT_IF_DESCRIPTION: u16 = 3;
const OPT_EPB_FLAGS: u16 = 2;
const OPT_ISB_IFDROP: u16 = 5;

/// `epb_flags` direction bits: the frame was received on the interface
/// (for a switch port: sent by the container into the switch).
pub const EPB_INBOUND: u32 = 1;
/// `epb_flags` direction bits: the frame was sent on the interface (by
/// the switch towards the container).
pub const EPB_OUTBOUND: u32 = 2;

/// Block header and trailer: type, total length, ..., total length.
const BLOCK_OVERHEAD: usize = 12;

fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

// ---------------------------------------------------------------- writer

/// Writes a pcapng stream: see the module documentation.
pub struct Writer<W: Write> {
    out: W,
    interfaces: u32,
    buf: Vec<u8>,
}

impl<W: Write> Writer<W> {
    /// Starts a section (writes the Section Header Block).
    pub fn new(out: W) -> io::Result<Self> {
        let mut w = Writer {
            out,
            interfaces: 0,
            buf: Vec::with_capacity(256),
        };
        w.begin(BT_SHB);
        w.put_u32(BYTE_ORDER_MAGIC);
        w.put_u16(1); // major
        w.put_u16(0); // minor
        w.buf.extend_from_slice(&(-1i64).to_le_bytes()); // section length: unknown
        w.put_option(OPT_SHB_USERAPPL, b"tapnet")?;
        w.end_options();
        w.finish()?;
        Ok(w)
    }

    /// Adds an Ethernet interface named `name`; returns its index.
    pub fn add_interface(&mut self, name: &str) -> io::Result<u32> {
        self.add_interface_described(name, "", 0)
    }

    /// Adds an Ethernet interface with an `if_description` and a snap
    /// length (0: no limit); returns its index.
    pub fn add_interface_described(
        &mut self,
        name: &str,
        description: &str,
        snap_len: u32,
    ) -> io::Result<u32> {
        self.begin(BT_IDB);
        self.put_u16(LINKTYPE_ETHERNET);
        self.put_u16(0);
        self.put_u32(snap_len);
        self.put_option(OPT_IF_NAME, name.as_bytes())?;
        if !description.is_empty() {
            self.put_option(OPT_IF_DESCRIPTION, description.as_bytes())?;
        }
        self.put_option(OPT_IF_TSRESOL, &[9])?;
        self.end_options();
        self.finish()?;
        self.interfaces += 1;
        Ok(self.interfaces - 1)
    }

    /// Writes one packet (an EPB) captured on `interface`: `data` is the
    /// captured part of a frame of `original_len` bytes; `flags` is
    /// written as `epb_flags` when non-zero (see [`EPB_INBOUND`]).
    pub fn write_captured(
        &mut self,
        interface: u32,
        timestamp_ns: u64,
        data: &[u8],
        original_len: u32,
        flags: u32,
        comments: &[&str],
    ) -> io::Result<()> {
        if interface >= self.interfaces {
            return Err(invalid(format!("no interface {interface}")));
        }
        let len = u32::try_from(data.len())
            .ok()
            .filter(|&l| l <= u32::MAX - 64)
            .ok_or_else(|| invalid(format!("packet of {} bytes", data.len())))?;
        self.begin(BT_EPB);
        self.put_u32(interface);
        self.put_u32((timestamp_ns >> 32) as u32);
        self.put_u32(timestamp_ns as u32);
        self.put_u32(len);
        self.put_u32(original_len.max(len));
        self.put_padded(data);
        for c in comments {
            self.put_option(OPT_COMMENT, c.as_bytes())?;
        }
        if flags != 0 {
            self.put_option(OPT_EPB_FLAGS, &flags.to_le_bytes())?;
        }
        if !comments.is_empty() || flags != 0 {
            self.end_options();
        }
        self.finish()
    }

    /// Writes an Interface Statistics Block for `interface` with
    /// `isb_ifdrop`: frames the capture lost (never the network).
    pub fn write_statistics(
        &mut self,
        interface: u32,
        timestamp_ns: u64,
        if_drop: u64,
    ) -> io::Result<()> {
        if interface >= self.interfaces {
            return Err(invalid(format!("no interface {interface}")));
        }
        self.begin(BT_ISB);
        self.put_u32(interface);
        self.put_u32((timestamp_ns >> 32) as u32);
        self.put_u32(timestamp_ns as u32);
        self.put_option(OPT_ISB_IFDROP, &if_drop.to_le_bytes())?;
        self.end_options();
        self.finish()
    }

    /// The underlying writer (e.g. to take the bytes written so far out
    /// of a `Vec`).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    /// Number of interfaces added so far.
    pub fn interfaces(&self) -> u32 {
        self.interfaces
    }

    /// Writes one packet (an EPB) seen on `interface` at `timestamp_ns`.
    pub fn write_packet(
        &mut self,
        interface: u32,
        timestamp_ns: u64,
        data: &[u8],
        comments: &[&str],
    ) -> io::Result<()> {
        // Whole (original length = captured length), no flags.
        self.write_captured(interface, timestamp_ns, data, 0, 0, comments)
    }

    /// Writes a frame with its virtio-net metadata: a `vnet_hdr` comment
    /// is added when `meta` is not the default.
    pub fn write_frame(
        &mut self,
        interface: u32,
        timestamp_ns: u64,
        meta: &VnetHdr,
        frame: &[u8],
    ) -> io::Result<()> {
        match vnet_comment(meta) {
            Some(c) => self.write_packet(interface, timestamp_ns, frame, &[&c]),
            None => self.write_packet(interface, timestamp_ns, frame, &[]),
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Flushes and returns the underlying writer.
    pub fn into_inner(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }

    fn begin(&mut self, block_type: u32) {
        self.buf.clear();
        self.put_u32(block_type);
        self.put_u32(0); // total length, fixed in finish()
    }

    fn put_u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    fn put_u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    fn put_padded(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
        self.buf.resize(pad4(self.buf.len()), 0);
    }

    fn put_option(&mut self, code: u16, value: &[u8]) -> io::Result<()> {
        let len = u16::try_from(value.len())
            .map_err(|_| invalid(format!("option of {} bytes", value.len())))?;
        self.put_u16(code);
        self.put_u16(len);
        self.put_padded(value);
        Ok(())
    }

    fn end_options(&mut self) {
        self.put_u16(OPT_ENDOFOPT);
        self.put_u16(0);
    }

    fn finish(&mut self) -> io::Result<()> {
        let total = self.buf.len() + 4;
        let total = u32::try_from(total).map_err(|_| invalid("block too large".into()))?;
        self.buf[4..8].copy_from_slice(&total.to_le_bytes());
        self.put_u32(total);
        self.out.write_all(&self.buf)
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

// ---------------------------------------------------------------- reader

/// Why a pcapng stream could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PcapngError {
    /// The stream does not start with a Section Header Block.
    #[error("not a pcapng file (no section header block at the start)")]
    NotPcapng,
    /// A block is cut short by the end of the input.
    #[error("truncated block at offset {offset}")]
    Truncated { offset: usize },
    /// A section header's byte-order magic is neither 1A2B3C4D nor its swap.
    #[error("bad byte-order magic in section header at offset {offset}")]
    BadByteOrderMagic { offset: usize },
    /// A section header of a major version other than 1.
    #[error("unsupported pcapng version {major}.{minor} at offset {offset}")]
    UnsupportedVersion {
        offset: usize,
        major: u16,
        minor: u16,
    },
    /// A block's total length is below 12, not a multiple of 4, or too
    /// short for the block's fixed fields.
    #[error("bad block length {len} at offset {offset}")]
    BadBlockLength { offset: usize, len: u32 },
    /// The trailing copy of a block's length differs from the leading one.
    #[error("block length trailer mismatch at offset {offset}")]
    LengthMismatch { offset: usize },
    /// An option runs past the end of its block.
    #[error("bad option in block at offset {offset}")]
    BadOption { offset: usize },
    /// A packet names an interface not described in its section.
    #[error("packet at offset {offset} names undescribed interface {interface}")]
    UnknownInterface { offset: usize, interface: u32 },
    /// An EPB's captured length exceeds its block.
    #[error("packet at offset {offset}: captured length {len} exceeds its block")]
    BadCapturedLength { offset: usize, len: u32 },
    /// An `if_tsresol` that is not one byte, or beyond what can be
    /// represented.
    #[error("bad if_tsresol in interface block at offset {offset}")]
    BadTsresol { offset: usize },
    /// A timestamp that does not fit 64-bit nanoseconds since the epoch.
    #[error("timestamp out of range in packet at offset {offset}")]
    TimestampOverflow { offset: usize },
}

/// An Interface Description Block, as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub link_type: u16,
    pub snap_len: u32,
    /// `if_name`, if present (invalid UTF-8 replaced).
    pub name: Option<String>,
    /// Raw `if_tsresol` (6 = microseconds when absent).
    pub tsresol: u8,
    /// `if_tsoffset` in seconds (0 when absent).
    pub tsoffset: i64,
}

/// A packet (EPB or SPB), as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Interface index within its section.
    pub interface: u32,
    /// That interface's `if_name`, if it has one.
    pub interface_name: Option<String>,
    /// Nanoseconds since the epoch (0 for a Simple Packet Block, which has
    /// no timestamp).
    pub timestamp_ns: u64,
    /// Length of the packet on the wire (may exceed `data.len()`).
    pub original_len: u32,
    pub data: Vec<u8>,
    /// `opt_comment`s (invalid UTF-8 replaced).
    pub comments: Vec<String>,
    /// `epb_flags` (0 when absent): the direction is its low two bits
    /// ([`EPB_INBOUND`], [`EPB_OUTBOUND`]).
    pub flags: u32,
}

impl Packet {
    /// The virtio-net metadata carried in the comments (default if none).
    pub fn vnet_hdr(&self) -> Result<VnetHdr, VnetCommentError> {
        vnet_from_comments(self.comments.iter().map(String::as_str))
    }
}

/// Everything in a pcapng stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capture {
    /// Interfaces of every section, in file order.
    pub interfaces: Vec<Interface>,
    pub packets: Vec<Packet>,
}

/// Reads a whole pcapng stream.
pub fn read(bytes: &[u8]) -> Result<Capture, PcapngError> {
    let mut r = Reader::new(bytes);
    let mut cap = Capture::default();
    while let Some(p) = r.next_packet()? {
        cap.packets.push(p);
    }
    cap.interfaces = r.all_interfaces;
    Ok(cap)
}

#[derive(Clone, Copy)]
enum Order {
    Little,
    Big,
}

impl Order {
    fn u16(self, b: &[u8]) -> u16 {
        let a = [b[0], b[1]];
        match self {
            Order::Little => u16::from_le_bytes(a),
            Order::Big => u16::from_be_bytes(a),
        }
    }
    fn u32(self, b: &[u8]) -> u32 {
        let a = [b[0], b[1], b[2], b[3]];
        match self {
            Order::Little => u32::from_le_bytes(a),
            Order::Big => u32::from_be_bytes(a),
        }
    }
    fn i64(self, b: &[u8]) -> i64 {
        let mut a = [0; 8];
        a.copy_from_slice(&b[..8]);
        match self {
            Order::Little => i64::from_le_bytes(a),
            Order::Big => i64::from_be_bytes(a),
        }
    }
}

/// Reads packets one by one from bytes. After an error, yields nothing.
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    order: Option<Order>,
    interfaces: Vec<Interface>,
    all_interfaces: Vec<Interface>,
    failed: bool,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader {
            bytes,
            pos: 0,
            order: None,
            interfaces: Vec::new(),
            all_interfaces: Vec::new(),
            failed: false,
        }
    }

    /// Interfaces of the current section.
    pub fn interfaces(&self) -> &[Interface] {
        &self.interfaces
    }

    /// The next packet, `Ok(None)` at the end of the input.
    pub fn next_packet(&mut self) -> Result<Option<Packet>, PcapngError> {
        if self.failed {
            return Ok(None);
        }
        let r = self.next_inner();
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    fn next_inner(&mut self) -> Result<Option<Packet>, PcapngError> {
        loop {
            let offset = self.pos;
            let rest = &self.bytes[offset..];
            if rest.is_empty() {
                if self.order.is_none() {
                    return Err(PcapngError::NotPcapng);
                }
                return Ok(None);
            }
            if rest.len() < 8 {
                return Err(self.truncated_or_not_pcapng(offset));
            }
            let raw_type = [rest[0], rest[1], rest[2], rest[3]];
            if u32::from_le_bytes(raw_type) == BT_SHB {
                if rest.len() < 12 {
                    return Err(PcapngError::Truncated { offset });
                }
                self.order = Some(
                    match u32::from_le_bytes([rest[8], rest[9], rest[10], rest[11]]) {
                        BYTE_ORDER_MAGIC => Order::Little,
                        m if m.swap_bytes() == BYTE_ORDER_MAGIC => Order::Big,
                        _ => return Err(PcapngError::BadByteOrderMagic { offset }),
                    },
                );
                self.interfaces.clear();
            }
            let Some(order) = self.order else {
                return Err(PcapngError::NotPcapng);
            };
            let block_type = order.u32(&raw_type);
            let len = order.u32(&rest[4..8]);
            let ulen = len as usize;
            if ulen < BLOCK_OVERHEAD || ulen & 3 != 0 {
                return Err(PcapngError::BadBlockLength { offset, len });
            }
            if rest.len() < ulen {
                return Err(PcapngError::Truncated { offset });
            }
            if order.u32(&rest[ulen - 4..ulen]) != len {
                return Err(PcapngError::LengthMismatch { offset });
            }
            let body = &rest[8..ulen - 4];
            self.pos += ulen;
            match block_type {
                BT_SHB => self.section(order, offset, len, body)?,
                BT_IDB => self.interface(order, offset, len, body)?,
                BT_EPB => return self.enhanced(order, offset, len, body).map(Some),
                BT_SPB => return self.simple(order, offset, len, body).map(Some),
                _ => {}
            }
        }
    }

    fn truncated_or_not_pcapng(&self, offset: usize) -> PcapngError {
        if self.order.is_none() {
            PcapngError::NotPcapng
        } else {
            PcapngError::Truncated { offset }
        }
    }

    fn section(
        &mut self,
        order: Order,
        offset: usize,
        len: u32,
        body: &[u8],
    ) -> Result<(), PcapngError> {
        if body.len() < 16 {
            return Err(PcapngError::BadBlockLength { offset, len });
        }
        let (major, minor) = (order.u16(&body[4..6]), order.u16(&body[6..8]));
        if major != 1 {
            return Err(PcapngError::UnsupportedVersion {
                offset,
                major,
                minor,
            });
        }
        options(order, offset, &body[16..])?;
        Ok(())
    }

    fn interface(
        &mut self,
        order: Order,
        offset: usize,
        len: u32,
        body: &[u8],
    ) -> Result<(), PcapngError> {
        if body.len() < 8 {
            return Err(PcapngError::BadBlockLength { offset, len });
        }
        let mut i = Interface {
            link_type: order.u16(&body[0..2]),
            snap_len: order.u32(&body[4..8]),
            name: None,
            tsresol: 6,
            tsoffset: 0,
        };
        for (code, v) in options(order, offset, &body[8..])? {
            match code {
                OPT_IF_NAME => i.name = Some(String::from_utf8_lossy(v).into_owned()),
                OPT_IF_TSRESOL => {
                    let [r] = v else {
                        return Err(PcapngError::BadTsresol { offset });
                    };
                    // 10^-38 is the finest decimal resolution we convert.
                    if r & 0x80 == 0 && *r > 38 {
                        return Err(PcapngError::BadTsresol { offset });
                    }
                    i.tsresol = *r;
                }
                OPT_IF_TSOFFSET if v.len() == 8 => i.tsoffset = order.i64(v),
                _ => {}
            }
        }
        self.interfaces.push(i.clone());
        self.all_interfaces.push(i);
        Ok(())
    }

    fn enhanced(
        &mut self,
        order: Order,
        offset: usize,
        len: u32,
        body: &[u8],
    ) -> Result<Packet, PcapngError> {
        if body.len() < 20 {
            return Err(PcapngError::BadBlockLength { offset, len });
        }
        let interface = order.u32(&body[0..4]);
        let ts = u64::from(order.u32(&body[4..8])) << 32 | u64::from(order.u32(&body[8..12]));
        let cap_len = order.u32(&body[12..16]);
        let original_len = order.u32(&body[16..20]);
        let rest = &body[20..];
        let data_end = pad4(cap_len as usize);
        if cap_len as usize > rest.len() || data_end > rest.len() {
            return Err(PcapngError::BadCapturedLength {
                offset,
                len: cap_len,
            });
        }
        let iface = self
            .interfaces
            .get(interface as usize)
            .ok_or(PcapngError::UnknownInterface { offset, interface })?;
        let timestamp_ns = to_ns(ts, iface.tsresol, iface.tsoffset)
            .ok_or(PcapngError::TimestampOverflow { offset })?;
        let opts = options(order, offset, &rest[data_end..])?;
        let flags = opts
            .iter()
            .find(|&&(code, v)| code == OPT_EPB_FLAGS && v.len() == 4)
            .map_or(0, |&(_, v)| order.u32(v));
        let comments = opts
            .into_iter()
            .filter(|&(code, _)| code == OPT_COMMENT)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect();
        Ok(Packet {
            interface,
            interface_name: iface.name.clone(),
            timestamp_ns,
            original_len,
            data: rest[..cap_len as usize].to_vec(),
            comments,
            flags,
        })
    }

    fn simple(
        &mut self,
        order: Order,
        offset: usize,
        len: u32,
        body: &[u8],
    ) -> Result<Packet, PcapngError> {
        if body.len() < 4 {
            return Err(PcapngError::BadBlockLength { offset, len });
        }
        let iface = self
            .interfaces
            .first()
            .ok_or(PcapngError::UnknownInterface {
                offset,
                interface: 0,
            })?;
        let original_len = order.u32(&body[0..4]);
        let mut n = (original_len as usize).min(body.len() - 4);
        if iface.snap_len != 0 {
            n = n.min(iface.snap_len as usize);
        }
        Ok(Packet {
            interface: 0,
            interface_name: iface.name.clone(),
            timestamp_ns: 0,
            original_len,
            data: body[4..4 + n].to_vec(),
            comments: Vec::new(),
            flags: 0,
        })
    }
}

impl Iterator for Reader<'_> {
    type Item = Result<Packet, PcapngError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_packet().transpose()
    }
}

/// Options of a block: `(code, value)` up to `opt_endofopt` or the end.
fn options(order: Order, offset: usize, mut b: &[u8]) -> Result<Vec<(u16, &[u8])>, PcapngError> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let code = order.u16(&b[0..2]);
        let len = usize::from(order.u16(&b[2..4]));
        if code == OPT_ENDOFOPT {
            break;
        }
        b = &b[4..];
        if len > b.len() {
            return Err(PcapngError::BadOption { offset });
        }
        out.push((code, &b[..len]));
        b = &b[pad4(len).min(b.len())..];
    }
    Ok(out)
}

/// Converts a timestamp in units of `tsresol` (+ `tsoffset` seconds) to
/// nanoseconds; `None` if out of `u64` range or `tsresol` is unusable.
fn to_ns(ts: u64, tsresol: u8, tsoffset: i64) -> Option<u64> {
    let ts = u128::from(ts);
    let ns: u128 = if tsresol & 0x80 == 0 {
        let e = u32::from(tsresol);
        if e <= 9 {
            ts * 10u128.pow(9 - e)
        } else {
            ts / 10u128.checked_pow(e - 9)?
        }
    } else {
        let e = u32::from(tsresol & 0x7f);
        (ts * 1_000_000_000).checked_shr(e).unwrap_or(0)
    };
    let ns = i128::try_from(ns).ok()? + i128::from(tsoffset) * 1_000_000_000;
    u64::try_from(ns).ok()
}

// ------------------------------------------------------- vnet comments

/// Why a `vnet_hdr` comment could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VnetCommentError {
    /// A word that is not `key=value`, or a key that is not a field.
    #[error("vnet_hdr comment: unknown field {0:?}")]
    UnknownField(String),
    /// A key given twice.
    #[error("vnet_hdr comment: field {0:?} given twice")]
    DuplicateField(String),
    /// A value that is not a number or does not fit its field.
    #[error("vnet_hdr comment: bad value for {0:?}")]
    BadValue(String),
    /// Two `vnet_hdr` comments on one packet.
    #[error("more than one vnet_hdr comment on a packet")]
    Duplicate,
}

/// The word a virtio-net metadata comment starts with.
pub const VNET_COMMENT_TAG: &str = "vnet_hdr";

/// The comment that carries `h`, or `None` for the default header.
pub fn vnet_comment(h: &VnetHdr) -> Option<String> {
    if h.is_plain() {
        return None;
    }
    let mut s = format!(
        "{VNET_COMMENT_TAG} flags={} gso_type={} hdr_len={} gso_size={} csum_start={} csum_offset={}",
        h.flags, h.gso_type, h.hdr_len, h.gso_size, h.csum_start, h.csum_offset
    );
    if h.num_buffers != 0 {
        s += &format!(" num_buffers={}", h.num_buffers);
    }
    Some(s)
}

/// Parses a comment: `None` if it is not a `vnet_hdr` comment.
pub fn parse_vnet_comment(comment: &str) -> Option<Result<VnetHdr, VnetCommentError>> {
    let mut words = comment.split_ascii_whitespace();
    if words.next() != Some(VNET_COMMENT_TAG) {
        return None;
    }
    Some(parse_vnet_fields(words))
}

fn parse_vnet_fields<'a>(
    words: impl Iterator<Item = &'a str>,
) -> Result<VnetHdr, VnetCommentError> {
    const KEYS: [&str; 7] = [
        "flags",
        "gso_type",
        "hdr_len",
        "gso_size",
        "csum_start",
        "csum_offset",
        "num_buffers",
    ];
    let mut vals: [Option<u16>; 7] = [None; 7];
    for w in words {
        let (k, v) = w
            .split_once('=')
            .ok_or_else(|| VnetCommentError::UnknownField(w.into()))?;
        let i = KEYS
            .iter()
            .position(|&key| key == k)
            .ok_or_else(|| VnetCommentError::UnknownField(k.into()))?;
        if vals[i].is_some() {
            return Err(VnetCommentError::DuplicateField(k.into()));
        }
        let n = match v.strip_prefix("0x") {
            Some(hex) => u16::from_str_radix(hex, 16),
            None => v.parse::<u16>(),
        }
        .map_err(|_| VnetCommentError::BadValue(k.into()))?;
        if i < 2 && n > 0xff {
            return Err(VnetCommentError::BadValue(k.into()));
        }
        vals[i] = Some(n);
    }
    let g = |i: usize| vals[i].unwrap_or(0);
    Ok(VnetHdr {
        flags: g(0) as u8,
        gso_type: g(1) as u8,
        hdr_len: g(2),
        gso_size: g(3),
        csum_start: g(4),
        csum_offset: g(5),
        num_buffers: g(6),
    })
}

/// The header carried by a packet's comments: the default if none is a
/// `vnet_hdr` comment.
pub fn vnet_from_comments<'a>(
    comments: impl IntoIterator<Item = &'a str>,
) -> Result<VnetHdr, VnetCommentError> {
    let mut found = None;
    for c in comments {
        if let Some(h) = parse_vnet_comment(c) {
            if found.is_some() {
                return Err(VnetCommentError::Duplicate);
            }
            found = Some(h?);
        }
    }
    Ok(found.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::vnet::{F_NEEDS_CSUM, GSO_TCPV4};

    fn gso() -> VnetHdr {
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 0,
        }
    }

    /// What `Writer` produces for one interface "a" and one 5-byte packet
    /// at 1 s + 2 ns with the comment "hi", spelled out block by block.
    const CAPTURED: &[u8] = &[
        // SHB, 44 bytes
        0x0a, 0x0d, 0x0d, 0x0a, 44, 0, 0, 0, //
        0x4d, 0x3c, 0x2b, 0x1a, 1, 0, 0, 0, // magic, 1.0
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // section length -1
        4, 0, 6, 0, b't', b'a', b'p', b'n', b'e', b't', 0, 0, // shb_userappl
        0, 0, 0, 0, 44, 0, 0, 0, // endofopt, trailer
        // IDB, 40 bytes
        1, 0, 0, 0, 40, 0, 0, 0, //
        1, 0, 0, 0, 0, 0, 0, 0, // Ethernet, snaplen 0
        2, 0, 1, 0, b'a', 0, 0, 0, // if_name "a"
        9, 0, 1, 0, 9, 0, 0, 0, // if_tsresol 9
        0, 0, 0, 0, 40, 0, 0, 0, // endofopt, trailer
        // EPB, 52 bytes
        6, 0, 0, 0, 52, 0, 0, 0, //
        0, 0, 0, 0, // interface 0
        0, 0, 0, 0, 0x02, 0xca, 0x9a, 0x3b, // ts 1_000_000_002
        5, 0, 0, 0, 5, 0, 0, 0, // lengths
        1, 2, 3, 4, 5, 0, 0, 0, // data, padded
        1, 0, 2, 0, b'h', b'i', 0, 0, // opt_comment "hi"
        0, 0, 0, 0, 52, 0, 0, 0, // endofopt, trailer
    ];

    fn write_sample() -> Vec<u8> {
        let mut w = Writer::new(Vec::new()).unwrap();
        assert_eq!(w.add_interface("a").unwrap(), 0);
        w.write_packet(0, 1_000_000_002, &[1, 2, 3, 4, 5], &["hi"])
            .unwrap();
        w.into_inner().unwrap()
    }

    #[test]
    fn writer_matches_captured_bytes() {
        assert_eq!(write_sample(), CAPTURED);
    }

    #[test]
    fn epb_flags_are_read_back() {
        let mut w = Writer::new(Vec::new()).unwrap();
        w.add_interface("a").unwrap();
        w.write_captured(0, 7, &[1, 2, 3], 3, EPB_OUTBOUND, &["x"])
            .unwrap();
        w.write_captured(0, 8, &[4, 5], 2, EPB_INBOUND, &[])
            .unwrap();
        w.write_captured(0, 9, &[6], 1, 0, &[]).unwrap();
        let cap = read(&w.into_inner().unwrap()).unwrap();
        let flags: Vec<u32> = cap.packets.iter().map(|p| p.flags).collect();
        assert_eq!(flags, [EPB_OUTBOUND, EPB_INBOUND, 0]);
        assert_eq!(cap.packets[0].comments, ["x"]);
    }

    #[test]
    fn reads_captured_bytes() {
        let cap = read(CAPTURED).unwrap();
        assert_eq!(cap.interfaces.len(), 1);
        assert_eq!(cap.interfaces[0].link_type, LINKTYPE_ETHERNET);
        assert_eq!(
            cap.packets,
            vec![Packet {
                interface: 0,
                interface_name: Some("a".into()),
                timestamp_ns: 1_000_000_002,
                original_len: 5,
                data: vec![1, 2, 3, 4, 5],
                comments: vec!["hi".into()],
                flags: 0,
            }]
        );
    }

    /// A big-endian file as another tool would write it: default
    /// resolution (microseconds), an unknown block, an SPB, an IDB without
    /// options.
    #[test]
    fn reads_big_endian_microseconds_and_skips_unknown() {
        let mut b = vec![];
        let be32 = |b: &mut Vec<u8>, v: u32| b.extend_from_slice(&v.to_be_bytes());
        // SHB without options.
        be32(&mut b, BT_SHB);
        be32(&mut b, 28);
        be32(&mut b, BYTE_ORDER_MAGIC);
        b.extend_from_slice(&[0, 1, 0, 0]);
        b.extend_from_slice(&[0xff; 8]);
        be32(&mut b, 28);
        // IDB "eth0", no tsresol.
        be32(&mut b, BT_IDB);
        be32(&mut b, 28);
        b.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        b.extend_from_slice(&[0, 2, 0, 4, b'e', b't', b'h', b'0']);
        be32(&mut b, 28);
        // An unknown block (custom, 0x00000BAD) of 16 bytes.
        be32(&mut b, 0x0bad);
        be32(&mut b, 16);
        be32(&mut b, 0xdead_beef);
        be32(&mut b, 16);
        // EPB: ts = 3 s + 7 us, 3 bytes, no options.
        be32(&mut b, BT_EPB);
        be32(&mut b, 36);
        be32(&mut b, 0);
        let ts: u64 = 3_000_007;
        be32(&mut b, (ts >> 32) as u32);
        be32(&mut b, ts as u32);
        be32(&mut b, 3);
        be32(&mut b, 60);
        b.extend_from_slice(&[9, 8, 7, 0]);
        be32(&mut b, 36);
        // SPB of 2 bytes.
        be32(&mut b, BT_SPB);
        be32(&mut b, 20);
        be32(&mut b, 2);
        b.extend_from_slice(&[0xaa, 0xbb, 0, 0]);
        be32(&mut b, 20);

        let cap = read(&b).unwrap();
        assert_eq!(cap.packets.len(), 2);
        let p = &cap.packets[0];
        assert_eq!(p.interface_name.as_deref(), Some("eth0"));
        assert_eq!(p.timestamp_ns, 3_000_007_000);
        assert_eq!(p.data, [9, 8, 7]);
        assert_eq!(p.original_len, 60);
        assert!(p.comments.is_empty());
        let s = &cap.packets[1];
        assert_eq!((s.interface, s.timestamp_ns), (0, 0));
        assert_eq!(s.data, [0xaa, 0xbb]);
    }

    /// Written by Wireshark's editcap 4.0.17 (from a libpcap file):
    /// `shb_userappl` only, an IDB without options (microseconds), one
    /// 60-byte broadcast ARP frame at 1620.753172 s.
    #[test]
    fn reads_editcap_output() {
        let cap = read(include_bytes!("testdata/editcap-4.0.17-usec.pcapng")).unwrap();
        assert_eq!(cap.interfaces.len(), 1);
        assert_eq!(cap.interfaces[0].snap_len, 0x40000);
        assert_eq!(cap.interfaces[0].tsresol, 6);
        let [p] = &cap.packets[..] else {
            panic!("{:?}", cap.packets)
        };
        assert_eq!(p.interface_name, None);
        assert_eq!(p.timestamp_ns, 1_620_753_172_000);
        assert_eq!(p.data.len(), 60);
        assert_eq!(
            p.data[..14],
            [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 0x0a, 8, 6]
        );
    }

    #[test]
    fn tsresol_and_tsoffset() {
        assert_eq!(to_ns(5, 6, 0), Some(5_000));
        assert_eq!(to_ns(5, 9, 0), Some(5));
        assert_eq!(to_ns(5_000, 12, 0), Some(5));
        assert_eq!(to_ns(1 << 20, 0x80 | 20, 0), Some(1_000_000_000));
        assert_eq!(to_ns(1, 0, 2), Some(3_000_000_000));
        assert_eq!(to_ns(u64::MAX, 0, 0), None);
        assert_eq!(to_ns(0, 0, -1), None);
        assert_eq!(to_ns(1, 38, 0), Some(0));
        assert_eq!(to_ns(1, 0xff, 0), Some(0));
    }

    #[test]
    fn roundtrip_many_interfaces_and_vnet() {
        let mut w = Writer::new(Vec::new()).unwrap();
        for n in ["a", "b", "c"] {
            w.add_interface(n).unwrap();
        }
        let big = vec![0x5a; 20_001];
        w.write_frame(2, u64::MAX, &gso(), &big).unwrap();
        w.write_frame(1, 0, &VnetHdr::default(), &[]).unwrap();
        w.write_packet(0, 7, &[1], &["x", "vnet_hdr gso_type=4", "y"])
            .unwrap();
        assert!(w.write_packet(3, 0, &[], &[]).is_err());
        let cap = read(&w.into_inner().unwrap()).unwrap();
        let names: Vec<_> = cap.interfaces.iter().map(|i| i.name.clone()).collect();
        assert_eq!(
            names,
            [Some("a".into()), Some("b".into()), Some("c".into())]
        );
        let p = &cap.packets;
        assert_eq!(p.len(), 3);
        assert_eq!((p[0].interface, p[0].timestamp_ns), (2, u64::MAX));
        assert_eq!(p[0].data, big);
        assert_eq!(p[0].vnet_hdr().unwrap(), gso());
        assert!(p[1].data.is_empty() && p[1].comments.is_empty());
        assert_eq!(p[1].vnet_hdr().unwrap(), VnetHdr::default());
        assert_eq!(p[2].comments, ["x", "vnet_hdr gso_type=4", "y"]);
        assert_eq!(p[2].vnet_hdr().unwrap().gso_type, 4);
    }

    #[test]
    fn vnet_comment_format() {
        assert_eq!(
            vnet_comment(&gso()).unwrap(),
            "vnet_hdr flags=1 gso_type=1 hdr_len=66 gso_size=1448 csum_start=34 csum_offset=16"
        );
        assert_eq!(vnet_comment(&VnetHdr::default()), None);
        let h = VnetHdr {
            num_buffers: 2,
            ..gso()
        };
        let c = vnet_comment(&h).unwrap();
        assert!(c.ends_with(" num_buffers=2"));
        assert_eq!(parse_vnet_comment(&c), Some(Ok(h)));
        assert_eq!(parse_vnet_comment("a comment"), None);
        assert_eq!(parse_vnet_comment("vnet_hdrx"), None);
        assert_eq!(
            parse_vnet_comment("vnet_hdr gso_size=0x5a8"),
            Some(Ok(VnetHdr {
                gso_size: 1448,
                ..VnetHdr::default()
            }))
        );
        use VnetCommentError::*;
        let e = |c: &str| parse_vnet_comment(c).unwrap().unwrap_err();
        assert_eq!(e("vnet_hdr foo=1"), UnknownField("foo".into()));
        assert_eq!(e("vnet_hdr flags"), UnknownField("flags".into()));
        assert_eq!(
            e("vnet_hdr flags=1 flags=1"),
            DuplicateField("flags".into())
        );
        assert_eq!(e("vnet_hdr flags=256"), BadValue("flags".into()));
        assert_eq!(e("vnet_hdr hdr_len=-1"), BadValue("hdr_len".into()));
        assert_eq!(vnet_from_comments(["vnet_hdr", "vnet_hdr"]), Err(Duplicate));
    }

    #[test]
    fn errors_are_typed() {
        use PcapngError::*;
        assert_eq!(read(&[]), Err(NotPcapng));
        assert_eq!(read(b"GIF89a..."), Err(NotPcapng));
        assert_eq!(read(&[0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0]), Err(NotPcapng));
        let good = write_sample();
        // Cut anywhere inside a block: truncated (or a complete prefix).
        for cut in 1..good.len() {
            match read(&good[..cut]) {
                Ok(c) => assert!(cut == 44 || cut == 84, "cut {cut}: {c:?}"),
                Err(Truncated { .. }) | Err(NotPcapng) => {}
                Err(e) => panic!("cut {cut}: {e}"),
            }
        }
        let mut b = good.clone();
        b[8] ^= 0xff;
        assert_eq!(read(&b), Err(BadByteOrderMagic { offset: 0 }));
        let mut b = good.clone();
        b[12] = 2;
        assert!(matches!(read(&b), Err(UnsupportedVersion { major: 2, .. })));
        let mut b = good.clone();
        b[44 + 4] = 37;
        assert_eq!(
            read(&b),
            Err(BadBlockLength {
                offset: 44,
                len: 37
            })
        );
        let mut b = good.clone();
        b[83] = 1;
        assert_eq!(read(&b), Err(LengthMismatch { offset: 44 }));
        let mut b = good.clone();
        b[84 + 8] = 1; // interface 1
        assert_eq!(
            read(&b),
            Err(UnknownInterface {
                offset: 84,
                interface: 1
            })
        );
        let mut b = good.clone();
        b[84 + 20] = 200; // captured length
        assert!(matches!(
            read(&b),
            Err(BadCapturedLength { offset: 84, .. })
        ));
        let mut b = good.clone();
        b[84 + 38] = 44; // comment length
        assert_eq!(read(&b), Err(BadOption { offset: 84 }));
        let mut b = good.clone();
        b[44 + 26] = 2; // if_tsresol of 2 bytes
        assert!(read(&b).is_err());
        let mut b = good.clone();
        b[44 + 28] = 39; // 10^-39
        assert_eq!(read(&b), Err(BadTsresol { offset: 44 }));
    }

    #[test]
    fn garbage_never_panics() {
        let good = write_sample();
        let mut seed = 0x1234_5678_u32;
        for _ in 0..20_000 {
            let mut b = good.clone();
            for _ in 0..4 {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                let i = (seed >> 8) as usize % b.len();
                b[i] = (seed >> 16) as u8;
            }
            let _ = read(&b);
        }
    }
}
