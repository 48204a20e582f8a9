//! IPsec ESP (RFC 4303) in transport mode with AES-GCM-128 (RFC 4106):
//! the framing and the security associations, sans-IO.
//!
//! ```text
//! | SPI (4) | Sequence (4) | IV (8) | payload | pad (0-3) | pad len | next header | ICV (16) |
//!                                  '-------------- encrypted ---------------------'
//! ```
//! Key material is 20 bytes: a 16-byte AES key and a 4-byte salt; the
//! nonce is salt ‖ IV, the additional data SPI ‖ sequence (32-bit
//! sequence numbers, no ESN), the ICV 16 bytes. This is what the Linux
//! kernel's `rfc4106(gcm(aes))` ESP SA with a 128-bit ICV puts on the wire.
//! The IV is the 64-bit sequence number: unique per key, as RFC 4106
//! requires. Padding is the minimum that aligns the trailer to 4 bytes,
//! filled 1, 2, 3 (RFC 4303 2.4).
//!
//! Contract:
//! - [`Sa::open`] never panics on untrusted bytes; it refuses a replayed
//!   or too old sequence number *before* decrypting, and records a
//!   sequence number only after the ICV verified.
//! - The receive side of an SA (its anti-replay window, [`REPLAY_WINDOW`]
//!   packets) is used by one thread at a time: tapnet reads every tunnel
//!   socket from one worker. The send side is shared: the sequence number
//!   is an atomic counter; an SA that used up 2^32 - 1 numbers refuses to
//!   send ([`EspError::SeqExhausted`]): rotate the keys before.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce, Tag};
use core::sync::atomic::{AtomicU64, Ordering};

/// SPI and sequence number.
pub const HEADER_LEN: usize = 8;
/// The explicit IV.
pub const IV_LEN: usize = 8;
/// Bytes in front of the payload: header and IV.
pub const HEAD_LEN: usize = HEADER_LEN + IV_LEN;
/// The integrity check value (GCM tag).
pub const ICV_LEN: usize = 16;
/// Most bytes after the payload: padding, pad length, next header, ICV.
pub const MAX_TAIL_LEN: usize = 3 + 2 + ICV_LEN;
/// Key material: 16-byte AES-128 key and 4-byte salt.
pub const KEY_LEN: usize = 20;
/// IP protocol number of ESP.
pub const IP_PROTOCOL: u8 = 50;
/// Packets of the anti-replay window.
pub const REPLAY_WINDOW: u32 = 64;

/// Why a packet could not be sealed or opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EspError {
    /// Shorter than header, IV, trailer and ICV; or no room to seal.
    Truncated,
    /// The ICV did not verify (wrong key, corrupted or forged packet).
    AuthFailed,
    /// The sequence number was seen already or is left of the window.
    Replay,
    /// The SA has sent 2^32 - 1 packets.
    SeqExhausted,
    /// The decrypted trailer is inconsistent (pad length too long).
    BadTrailer,
}

/// The SPI of an ESP packet, if it has a header.
pub fn spi_of(pkt: &[u8]) -> Option<u32> {
    let b = pkt.get(..4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// One security association (one direction's key, both sides' state):
/// the sender's sequence counter and the receiver's anti-replay window.
pub struct Sa {
    spi: u32,
    cipher: Aes128Gcm,
    salt: [u8; 4],
    /// Last sequence number sent.
    tx_seq: AtomicU64,
    /// Highest sequence number accepted.
    rx_top: AtomicU64,
    /// Bit i: `rx_top - i` was accepted.
    rx_bits: AtomicU64,
}

impl core::fmt::Debug for Sa {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        f.debug_struct("Sa").field("spi", &self.spi).finish()
    }
}

impl Sa {
    pub fn new(spi: u32, key: &[u8; KEY_LEN]) -> Sa {
        let cipher = Aes128Gcm::new_from_slice(&key[..16]).expect("16-byte key");
        let mut salt = [0; 4];
        salt.copy_from_slice(&key[16..]);
        Sa {
            spi,
            cipher,
            salt,
            tx_seq: AtomicU64::new(0),
            rx_top: AtomicU64::new(0),
            rx_bits: AtomicU64::new(0),
        }
    }

    pub fn spi(&self) -> u32 {
        self.spi
    }

    fn nonce(&self, iv: &[u8]) -> [u8; 12] {
        let mut n = [0u8; 12];
        n[..4].copy_from_slice(&self.salt);
        n[4..].copy_from_slice(&iv[..IV_LEN]);
        n
    }

    /// Seals `buf[HEAD_LEN..HEAD_LEN + payload_len]` in place with the
    /// next sequence number: writes the header and IV in front, the
    /// trailer and ICV after; returns the ESP packet's length. `buf` needs
    /// room for [`MAX_TAIL_LEN`] bytes after the payload.
    pub fn seal(
        &self,
        buf: &mut [u8],
        payload_len: usize,
        next_header: u8,
    ) -> Result<usize, EspError> {
        let seq = self.tx_seq.fetch_add(1, Ordering::Relaxed) + 1;
        if seq > u64::from(u32::MAX) {
            self.tx_seq.store(u64::from(u32::MAX), Ordering::Relaxed);
            return Err(EspError::SeqExhausted);
        }
        self.seal_with(seq as u32, seq.to_be_bytes(), buf, payload_len, next_header)
    }

    /// [`Sa::seal`] with a given sequence number and IV (test vectors).
    pub fn seal_with(
        &self,
        seq: u32,
        iv: [u8; IV_LEN],
        buf: &mut [u8],
        payload_len: usize,
        next_header: u8,
    ) -> Result<usize, EspError> {
        let pad = (4 - (payload_len + 2) % 4) % 4;
        let enc_len = payload_len + pad + 2;
        let total = HEAD_LEN + enc_len + ICV_LEN;
        if buf.len() < total {
            return Err(EspError::Truncated);
        }
        buf[..4].copy_from_slice(&self.spi.to_be_bytes());
        buf[4..8].copy_from_slice(&seq.to_be_bytes());
        buf[8..16].copy_from_slice(&iv);
        let t = HEAD_LEN + payload_len;
        for i in 0..pad {
            buf[t + i] = (i + 1) as u8;
        }
        buf[t + pad] = pad as u8;
        buf[t + pad + 1] = next_header;
        let nonce = self.nonce(&iv);
        let (head, rest) = buf.split_at_mut(HEAD_LEN);
        let (body, icv) = rest.split_at_mut(enc_len);
        let tag = self
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), &head[..HEADER_LEN], body)
            .map_err(|_| EspError::Truncated)?;
        icv[..ICV_LEN].copy_from_slice(&tag);
        Ok(total)
    }

    /// Opens an ESP packet (from its SPI to its ICV) in place: checks the
    /// anti-replay window, verifies and decrypts, records the sequence
    /// number. Returns the next header and the payload's range in `pkt`.
    pub fn open(&self, pkt: &mut [u8]) -> Result<(u8, core::ops::Range<usize>), EspError> {
        if pkt.len() < HEAD_LEN + 2 + ICV_LEN {
            return Err(EspError::Truncated);
        }
        let seq = u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]);
        if !self.replay_ok(seq) {
            return Err(EspError::Replay);
        }
        let n = pkt.len();
        let nonce = self.nonce(&pkt[HEADER_LEN..HEAD_LEN]);
        let mut tag = [0u8; ICV_LEN];
        tag.copy_from_slice(&pkt[n - ICV_LEN..]);
        let (head, rest) = pkt.split_at_mut(HEAD_LEN);
        let body = &mut rest[..n - HEAD_LEN - ICV_LEN];
        self.cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(&nonce),
                &head[..HEADER_LEN],
                body,
                Tag::from_slice(&tag),
            )
            .map_err(|_| EspError::AuthFailed)?;
        let next_header = body[body.len() - 1];
        let pad = usize::from(body[body.len() - 2]);
        if pad + 2 > body.len() {
            return Err(EspError::BadTrailer);
        }
        self.replay_record(seq);
        Ok((next_header, HEAD_LEN..HEAD_LEN + body.len() - pad - 2))
    }

    /// Whether `seq` is new and inside the window (RFC 4303 3.4.3).
    fn replay_ok(&self, seq: u32) -> bool {
        let seq = u64::from(seq);
        if seq == 0 {
            return false;
        }
        let top = self.rx_top.load(Ordering::Relaxed);
        if seq > top {
            return true;
        }
        let off = top - seq;
        off < u64::from(REPLAY_WINDOW) && self.rx_bits.load(Ordering::Relaxed) & (1 << off) == 0
    }

    fn replay_record(&self, seq: u32) {
        let seq = u64::from(seq);
        let top = self.rx_top.load(Ordering::Relaxed);
        let bits = self.rx_bits.load(Ordering::Relaxed);
        if seq > top {
            let shift = seq - top;
            let bits = if shift >= 64 { 0 } else { bits << shift };
            self.rx_bits.store(bits | 1, Ordering::Relaxed);
            self.rx_top.store(seq, Ordering::Relaxed);
        } else {
            self.rx_bits
                .store(bits | 1 << (top - seq), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn key(k: &str, salt: &str) -> [u8; KEY_LEN] {
        let mut out = [0u8; KEY_LEN];
        out[..16].copy_from_slice(&unhex(k));
        out[16..].copy_from_slice(&unhex(salt));
        out
    }

    /// ESP packets of draft-mcgrew-gcm-test-01 (the RFC 4106 test vectors)
    /// with a 128-bit key and 32-bit sequence numbers: (key, salt, SPI,
    /// seq, IV, plaintext with trailer, ciphertext, ICV).
    const VECTORS: [[&str; 8]; 2] = [
        [
            "feffe9928665731c6d6a8f9467308308",
            "cafebabe",
            "0000a5f8",
            "0000000a",
            "facedbaddecaf888",
            "4500003e698f000080114dccc0a80102c0a801010a980035002a2343b2d001000001000000000000037369700963796265726369747902646b00000100010001",
            "deb22cd9b07c72c16e3a65beeb8df304a5a5897d33ae530f1ba76d5d114d2a5c3de81827c10e9a4f51330d0eec416642cfbb85a5b47e48a4ec3b9ba95d918bd1",
            "83b70d3aa8bc6ee4c309e9d85a41ad4a",
        ],
        [
            "00000000000000000000000000000000",
            "00000000",
            "00000000",
            "00000001",
            "0000000000000000",
            "4500003c99c500008001cb7a40679318010101010800075c020044006162636465666768696a6b6c6d6e6f707172737475767761626364656667686901020201",
            "4688daf2f973a392732909c331d56d60f694abaa414b5e7ff5fdcdfff5e9a284456476492719ffb64de7d9dca1e1d894bc3bd57873ed4d181d19d4d5c8c18af3",
            "f821d496eeb096e98ad2b69e4799c71d",
        ],
    ];

    #[test]
    fn rfc4106_vectors_open_and_seal() {
        for v in VECTORS {
            let sa = Sa::new(u32::from_str_radix(v[2], 16).unwrap(), &key(v[0], v[1]));
            let mut pkt = unhex(v[2]);
            pkt.extend(unhex(v[3]));
            pkt.extend(unhex(v[4]));
            pkt.extend(unhex(v[6]));
            pkt.extend(unhex(v[7]));
            let wire = pkt.clone();
            let plain = unhex(v[5]);
            let (nh, r) = sa.open(&mut pkt).expect("vector opens");
            let pad = usize::from(plain[plain.len() - 2]);
            assert_eq!(nh, plain[plain.len() - 1]);
            assert_eq!(&pkt[r.clone()], &plain[..plain.len() - pad - 2]);
            // Sealing the payload again gives the vector's bytes (its
            // padding is the minimal one).
            let mut buf = vec![0u8; wire.len() + 8];
            buf[HEAD_LEN..HEAD_LEN + r.len()].copy_from_slice(&pkt[r.clone()]);
            let mut iv = [0u8; 8];
            iv.copy_from_slice(&unhex(v[4]));
            let seq = u32::from_str_radix(v[3], 16).unwrap();
            let n = sa.seal_with(seq, iv, &mut buf, r.len(), nh).unwrap();
            assert_eq!(&buf[..n], &wire[..]);
        }
    }

    #[test]
    fn round_trip_wrong_key_and_tamper() {
        let k = [7u8; KEY_LEN];
        let tx = Sa::new(0x1234, &k);
        let rx = Sa::new(0x1234, &k);
        let mut buf = [0u8; 128];
        buf[HEAD_LEN..HEAD_LEN + 5].copy_from_slice(b"hello");
        let n = tx.seal(&mut buf, 5, 17).unwrap();
        assert_eq!(n, HEAD_LEN + 5 + 3 + ICV_LEN); // 5 + 1 pad + 2
        assert_eq!(spi_of(&buf), Some(0x1234));
        let wire = buf;
        let mut p = wire;
        let (nh, r) = rx.open(&mut p[..n]).unwrap();
        assert_eq!((nh, &p[r]), (17, &b"hello"[..]));
        let wrong = Sa::new(0x1234, &[8u8; KEY_LEN]);
        let mut p = wire;
        assert_eq!(wrong.open(&mut p[..n]), Err(EspError::AuthFailed));
        let mut p = wire;
        p[20] ^= 1;
        assert_eq!(Sa::new(1, &k).open(&mut p[..n]), Err(EspError::AuthFailed));
        let mut p = wire;
        assert_eq!(rx.open(&mut p[..5]), Err(EspError::Truncated));
    }

    #[test]
    fn anti_replay_window() {
        let k = [1u8; KEY_LEN];
        let tx = Sa::new(9, &k);
        let rx = Sa::new(9, &k);
        let mut pkts = Vec::new();
        for _ in 0..100 {
            let mut b = vec![0u8; 64];
            let n = tx.seal(&mut b, 4, 17).unwrap();
            b.truncate(n);
            pkts.push(b);
        }
        let open = |i: usize| rx.open(&mut pkts[i].clone()).map(|_| ());
        assert_eq!(open(0), Ok(())); // seq 1
        assert_eq!(open(0), Err(EspError::Replay));
        assert_eq!(open(79), Ok(())); // seq 80
        assert_eq!(open(20), Ok(())); // seq 21: inside the window, new
        assert_eq!(open(20), Err(EspError::Replay));
        assert_eq!(open(10), Err(EspError::Replay)); // seq 11: left of it
        assert_eq!(open(99), Ok(()));
        // A forged packet does not move the window.
        let mut f = pkts[98].clone();
        f[30] ^= 0xff;
        assert_eq!(rx.open(&mut f), Err(EspError::AuthFailed));
        assert_eq!(open(98), Ok(()));
    }

    #[test]
    fn sequence_exhaustion() {
        let sa = Sa::new(1, &[0; KEY_LEN]);
        sa.tx_seq.store(u64::from(u32::MAX) - 1, Ordering::Relaxed);
        let mut b = [0u8; 64];
        assert!(sa.seal(&mut b, 4, 17).is_ok());
        assert_eq!(sa.seal(&mut b, 4, 17), Err(EspError::SeqExhausted));
        assert_eq!(sa.seal(&mut b, 4, 17), Err(EspError::SeqExhausted));
    }
}
