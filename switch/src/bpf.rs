//! A classic BPF interpreter: runs the programs libpcap compiles from
//! tcpdump's filter language (`pcap_compile`), over a frame in memory.
//!
//! The daemon compiles a capture filter with libpcap and hands the
//! instructions here, so that the workers evaluate it without FFI, lock or
//! allocation, and the program can be shared between threads.
//!
//! Contract: [`Program::new`] refuses a program that could run off its end
//! (a jump or fall-through past the last instruction, an unknown opcode, a
//! scratch-memory index out of range); after that, [`Program::matches`]
//! never panics, whatever the bytes: a load outside the frame or a division
//! by zero rejects the frame, as in the kernel. Jumps only go forward, so a
//! run takes at most one step per instruction.

/// One instruction, as `struct bpf_insn`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

/// A validated program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    insns: Box<[Insn]>,
}

/// Why a program was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BpfError {
    /// The program is empty or longer than 4096 instructions (BPF_MAXINSNS).
    #[error("BPF program of {0} instructions (1..4096)")]
    Length(usize),
    /// An opcode this interpreter does not know.
    #[error("BPF instruction {pc}: unknown opcode {code:#06x}")]
    Opcode { pc: usize, code: u16 },
    /// A jump (or falling through) past the end of the program.
    #[error("BPF instruction {pc}: jumps past the end of the program")]
    Jump { pc: usize },
    /// A scratch memory index >= 16.
    #[error("BPF instruction {pc}: scratch memory index {k} out of range")]
    Memory { pc: usize, k: u32 },
    /// A line of `code jt jf k` that does not parse.
    #[error("BPF instruction {0:?} does not parse")]
    Parse(String),
}

const LD: u16 = 0x00;
const LDX: u16 = 0x01;
const ST: u16 = 0x02;
const STX: u16 = 0x03;
const ALU: u16 = 0x04;
const JMP: u16 = 0x05;
const RET: u16 = 0x06;
const MISC: u16 = 0x07;

const W: u16 = 0x00;
const H: u16 = 0x08;
const B: u16 = 0x10;

const IMM: u16 = 0x00;
const ABS: u16 = 0x20;
const IND: u16 = 0x40;
const MEM: u16 = 0x60;
const LEN: u16 = 0x80;
const MSH: u16 = 0xa0;

const SRC_X: u16 = 0x08;
const MEMWORDS: u32 = 16;

impl Insn {
    /// Parses libpcap's `code jt jf k` (the `pcap` crate's display of
    /// an instruction).
    pub fn parse(s: &str) -> Result<Insn, BpfError> {
        let bad = || BpfError::Parse(s.to_string());
        let mut w = s.split_ascii_whitespace();
        let mut next = || w.next().ok_or_else(bad);
        let code = next()?.parse().map_err(|_| bad())?;
        let jt = next()?.parse().map_err(|_| bad())?;
        let jf = next()?.parse().map_err(|_| bad())?;
        let k = next()?.parse().map_err(|_| bad())?;
        Ok(Insn { code, jt, jf, k })
    }
}

impl Program {
    /// Validates `insns` (see the module documentation).
    pub fn new(insns: Vec<Insn>) -> Result<Program, BpfError> {
        let n = insns.len();
        if n == 0 || n > 4096 {
            return Err(BpfError::Length(n));
        }
        for (pc, i) in insns.iter().enumerate() {
            let opcode = || BpfError::Opcode { pc, code: i.code };
            let fits = |off: u64| pc as u64 + 1 + off < n as u64;
            match i.code & 0x07 {
                LD | LDX => {
                    let mode = i.code & 0xe0;
                    let size = i.code & 0x18;
                    let ok = match (i.code & 0x07, mode) {
                        (LD, ABS | IND) => matches!(size, W | H | B),
                        (LD, IMM | LEN) | (LDX, IMM | LEN) => size == W,
                        (_, MEM) => size == W,
                        (LDX, MSH) => size == B,
                        _ => false,
                    };
                    if !ok {
                        return Err(opcode());
                    }
                    if mode == MEM && i.k >= MEMWORDS {
                        return Err(BpfError::Memory { pc, k: i.k });
                    }
                    if !fits(0) {
                        return Err(BpfError::Jump { pc });
                    }
                }
                ST | STX => {
                    if i.k >= MEMWORDS {
                        return Err(BpfError::Memory { pc, k: i.k });
                    }
                    if !fits(0) {
                        return Err(BpfError::Jump { pc });
                    }
                }
                ALU => {
                    if i.code & 0xf0 > 0xa0 {
                        return Err(opcode());
                    }
                    if !fits(0) {
                        return Err(BpfError::Jump { pc });
                    }
                }
                JMP => match i.code & 0xf0 {
                    0x00 => {
                        if !fits(u64::from(i.k)) {
                            return Err(BpfError::Jump { pc });
                        }
                    }
                    0x10..=0x40 => {
                        if !fits(u64::from(i.jt)) || !fits(u64::from(i.jf)) {
                            return Err(BpfError::Jump { pc });
                        }
                    }
                    _ => return Err(opcode()),
                },
                RET => {
                    if i.code & 0x18 == 0x18 {
                        return Err(opcode());
                    }
                }
                _ => {
                    // MISC: TAX (0x00) and TXA (0x80).
                    if !matches!(i.code & 0xf8, 0x00 | 0x80) {
                        return Err(opcode());
                    }
                    if !fits(0) {
                        return Err(BpfError::Jump { pc });
                    }
                }
            }
        }
        Ok(Program {
            insns: insns.into_boxed_slice(),
        })
    }

    /// Parses one instruction per item (`code jt jf k`).
    pub fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> Result<Program, BpfError> {
        let insns = lines
            .into_iter()
            .map(Insn::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Program::new(insns)
    }

    /// A program that accepts every frame.
    pub fn accept_all() -> Program {
        Program {
            insns: vec![Insn {
                code: RET,
                jt: 0,
                jf: 0,
                k: u32::MAX,
            }]
            .into_boxed_slice(),
        }
    }

    /// The program's verdict for `frame` (its whole length is the wire
    /// length): the snap length it returns, 0 to reject.
    pub fn run(&self, frame: &[u8]) -> u32 {
        let mut a: u32 = 0;
        let mut x: u32 = 0;
        let mut m = [0u32; MEMWORDS as usize];
        let mut pc = 0usize;
        let load = |off: u32, size: u16| -> Option<u32> {
            let off = off as usize;
            match size {
                W => frame
                    .get(off..off.checked_add(4)?)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
                H => frame
                    .get(off..off.checked_add(2)?)
                    .map(|b| u32::from(u16::from_be_bytes([b[0], b[1]]))),
                _ => frame.get(off).map(|&b| u32::from(b)),
            }
        };
        // Validation guarantees that pc stays in range; `get` keeps a
        // bug from panicking anyway.
        while let Some(&i) = self.insns.get(pc) {
            pc += 1;
            match i.code & 0x07 {
                LD => {
                    a = match i.code & 0xe0 {
                        IMM => i.k,
                        ABS => match load(i.k, i.code & 0x18) {
                            Some(v) => v,
                            None => return 0,
                        },
                        IND => match load(x.wrapping_add(i.k), i.code & 0x18) {
                            Some(v) => v,
                            None => return 0,
                        },
                        MEM => m[(i.k % MEMWORDS) as usize],
                        _ => frame.len() as u32,
                    }
                }
                LDX => {
                    x = match i.code & 0xe0 {
                        IMM => i.k,
                        MEM => m[(i.k % MEMWORDS) as usize],
                        LEN => frame.len() as u32,
                        _ => match frame.get(i.k as usize) {
                            Some(&b) => u32::from(b & 0x0f) << 2,
                            None => return 0,
                        },
                    }
                }
                ST => m[(i.k % MEMWORDS) as usize] = a,
                STX => m[(i.k % MEMWORDS) as usize] = x,
                ALU => {
                    let v = if i.code & SRC_X != 0 { x } else { i.k };
                    a = match i.code & 0xf0 {
                        0x00 => a.wrapping_add(v),
                        0x10 => a.wrapping_sub(v),
                        0x20 => a.wrapping_mul(v),
                        0x30 => match a.checked_div(v) {
                            Some(q) => q,
                            None => return 0,
                        },
                        0x40 => a | v,
                        0x50 => a & v,
                        0x60 => a.checked_shl(v).unwrap_or(0),
                        0x70 => a.checked_shr(v).unwrap_or(0),
                        0x80 => a.wrapping_neg(),
                        0x90 => match a.checked_rem(v) {
                            Some(r) => r,
                            None => return 0,
                        },
                        _ => a ^ v,
                    }
                }
                JMP => {
                    let v = if i.code & SRC_X != 0 { x } else { i.k };
                    let taken = match i.code & 0xf0 {
                        0x00 => {
                            pc += i.k as usize;
                            continue;
                        }
                        0x10 => a == v,
                        0x20 => a > v,
                        0x30 => a >= v,
                        _ => a & v != 0,
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
                RET => {
                    return match i.code & 0x18 {
                        0x00 => i.k,
                        0x08 => x,
                        _ => a,
                    }
                }
                MISC => {
                    if i.code & 0xf8 == 0 {
                        x = a;
                    } else {
                        a = x;
                    }
                }
                _ => return 0,
            }
        }
        0
    }

    /// Whether the program accepts `frame`.
    #[inline]
    pub fn matches(&self, frame: &[u8]) -> bool {
        self.run(frame) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tcpdump -dd icmp` on Ethernet (libpcap 1.10), as `code jt jf k`.
    const ICMP: &[&str] = &[
        "40 0 0 12",
        "21 0 3 2048",
        "48 0 0 23",
        "21 0 1 1",
        "6 0 0 262144",
        "6 0 0 0",
    ];

    fn frame(ethertype: u16, proto: u8) -> Vec<u8> {
        let mut f = vec![0u8; 60];
        f[12..14].copy_from_slice(&ethertype.to_be_bytes());
        f[14] = 0x45;
        f[23] = proto;
        f
    }

    #[test]
    fn icmp_filter() {
        let p = Program::parse(ICMP.iter().copied()).unwrap();
        assert!(p.matches(&frame(0x0800, 1)));
        assert!(!p.matches(&frame(0x0800, 6)));
        assert!(!p.matches(&frame(0x0806, 1)));
        assert!(!p.matches(&[0; 13]), "short: the load fails");
        assert!(!p.matches(&frame(0x0800, 1)[..20]));
        assert!(Program::accept_all().matches(&[]));
    }

    #[test]
    fn refuses_bad_programs() {
        assert_eq!(Program::new(vec![]), Err(BpfError::Length(0)));
        // Jumps past the end.
        assert!(matches!(
            Program::parse(["21 5 0 1", "6 0 0 1"]),
            Err(BpfError::Jump { pc: 0 })
        ));
        // Falls off the end.
        assert!(matches!(
            Program::parse(["40 0 0 12"]),
            Err(BpfError::Jump { pc: 0 })
        ));
        assert!(matches!(
            Program::parse(["2 0 0 16", "6 0 0 1"]),
            Err(BpfError::Memory { .. })
        ));
        assert!(matches!(
            Program::parse(["255 0 0 0", "6 0 0 1"]),
            Err(BpfError::Opcode { .. })
        ));
        assert!(matches!(Program::parse(["x"]), Err(BpfError::Parse(_))));
    }

    #[test]
    fn division_by_zero_rejects() {
        // A = 1; A /= X (0); ret #1
        let p = Program::parse(["0 0 0 1", "60 0 0 0", "6 0 0 1"]).unwrap();
        assert_eq!(p.run(&[]), 0);
    }

    #[test]
    fn arbitrary_programs_never_panic() {
        let mut seed = 0x9e37_79b9_u32;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for _ in 0..20_000 {
            let n = 1 + rnd() as usize % 8;
            let insns: Vec<Insn> = (0..n)
                .map(|_| Insn {
                    code: (rnd() & 0xff) as u16,
                    jt: (rnd() % 4) as u8,
                    jf: (rnd() % 4) as u8,
                    k: rnd() % 80,
                })
                .collect();
            if let Ok(p) = Program::new(insns) {
                let f: Vec<u8> = (0..rnd() % 70).map(|_| rnd() as u8).collect();
                let _ = p.run(&f);
            }
        }
    }
}
