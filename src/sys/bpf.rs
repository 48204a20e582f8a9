//! A TAP's queue steering program (`TUNSETSTEERINGEBPF`): which queue, so
//! which worker, reads each frame a container sends.
//!
//! Without one, tun picks the queue a flow's replies were last written on
//! (its flow table), else one by the flow's hash. The program here picks
//! by the CPU the frame is sent on instead: the queue of the worker pinned
//! to that CPU, so the worker is woken where the sender runs, not across
//! CPUs, except for frames to one MAC address (the network's gateway),
//! which go to one queue (the NAT's worker) from any CPU
//! ([`SteeringProgram::by_cpu`]).
//!
//! The program is a few eBPF instructions assembled here (no compiler, no
//! object file): a socket filter (`BPF_PROG_TYPE_SOCKET_FILTER`) whose
//! return value tun takes modulo the number of queues. Loading one needs
//! `CAP_BPF` (or `CAP_SYS_ADMIN`) in the host's user namespace unless
//! `kernel.unprivileged_bpf_disabled` is 0: a rootless daemon cannot.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Insn {
    code: u8,
    /// `dst_reg` in the low nibble, `src_reg` in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

// Opcodes used (linux/bpf.h, linux/bpf_common.h).
/// `BPF_ALU64 | BPF_MOV | BPF_K`: dst = imm.
const MOV64_IMM: u8 = 0x07 | 0xb0;
/// `BPF_ALU64 | BPF_MOV | BPF_X`: dst = src.
const MOV64_REG: u8 = 0x07 | 0xb0 | 0x08;
/// `BPF_LD | BPF_ABS | BPF_W`: r0 = the frame's big-endian u32 at imm.
const LD_ABS_W: u8 = 0x20;
/// `BPF_LD | BPF_ABS | BPF_H`: r0 = the frame's big-endian u16 at imm.
const LD_ABS_H: u8 = 0x28;
/// `BPF_JMP32 | BPF_JNE | BPF_K`: if (u32)dst != imm, pc += off.
const JNE32_IMM: u8 = 0x06 | 0x50;
/// `BPF_JMP | BPF_CALL`: r0 = helper imm (r1-r5 clobbered).
const CALL: u8 = 0x05 | 0x80;
/// `BPF_JMP | BPF_JNE | BPF_K`: if dst != imm, pc += off.
const JNE_IMM: u8 = 0x05 | 0x50;
/// `BPF_JMP | BPF_JA`: pc += off.
const JA: u8 = 0x05;
/// `BPF_JMP | BPF_EXIT`: return r0.
const EXIT: u8 = 0x05 | 0x90;
/// `BPF_FUNC_get_smp_processor_id`.
const HELPER_CPU: i32 = 8;
/// `BPF_PROG_LOAD`.
const PROG_LOAD: libc::c_long = 5;
/// `BPF_PROG_TYPE_SOCKET_FILTER`.
const SOCKET_FILTER: u32 = 1;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

/// The instructions of a steering program, before loading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SteeringProgram {
    insns: Vec<Insn>,
}

impl SteeringProgram {
    /// Queue `i` for frames sent on `cpus[i]` (the CPU worker `i` is
    /// pinned to; the first match wins); on any other CPU, the CPU's number
    /// (tun takes it modulo the queues). With `to_mac`, frames whose
    /// destination is that MAC address go to that queue whatever the CPU
    /// (a network's gateway, whose frames one worker's NAT reads).
    pub fn by_cpu(cpus: &[usize], to_mac: Option<([u8; 6], u32)>) -> SteeringProgram {
        let mut p = Vec::new();
        if let Some((mac, queue)) = to_mac {
            let hi = u32::from_be_bytes([mac[0], mac[1], mac[2], mac[3]]);
            let lo = u16::from_be_bytes([mac[4], mac[5]]);
            p.extend([
                // LD_ABS reads the frame through r6 (the skb); a frame too
                // short for it ends the program (queue 0).
                insn(MOV64_REG, 6, 1, 0, 0),
                insn(LD_ABS_W, 0, 0, 0, 0),
                insn(JNE32_IMM, 0, 0, 4, hi as i32),
                insn(LD_ABS_H, 0, 0, 0, 4),
                insn(JNE32_IMM, 0, 0, 2, i32::from(lo)),
                insn(MOV64_IMM, 0, 0, 0, queue as i32),
                insn(EXIT, 0, 0, 0, 0),
            ]);
        }
        p.push(insn(CALL, 0, 0, 0, HELPER_CPU));
        let n = cpus.len();
        for (i, &cpu) in cpus.iter().enumerate() {
            // if r0 != cpu: the next test; else r0 = i and return.
            p.push(insn(JNE_IMM, 0, 0, 2, cpu as i32));
            p.push(insn(MOV64_IMM, 0, 0, 0, i as i32));
            p.push(insn(JA, 0, 0, ((n - i - 1) * 3) as i16, 0));
        }
        p.push(insn(EXIT, 0, 0, 0, 0));
        SteeringProgram { insns: p }
    }

    /// Loads the program into the kernel; the fd keeps it alive (a TAP it
    /// is set on keeps its own reference).
    pub fn load(&self) -> io::Result<OwnedFd> {
        let license = c"Apache-2.0";
        // `union bpf_attr` as BPF_PROG_LOAD reads it, up to `prog_flags`;
        // the kernel zero-fills what a shorter attribute leaves out.
        #[repr(C)]
        struct ProgLoad {
            prog_type: u32,
            insn_cnt: u32,
            insns: u64,
            license: u64,
            log_level: u32,
            log_size: u32,
            log_buf: u64,
            kern_version: u32,
            prog_flags: u32,
        }
        let attr = ProgLoad {
            prog_type: SOCKET_FILTER,
            insn_cnt: self.insns.len() as u32,
            insns: self.insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 0,
            log_size: 0,
            log_buf: 0,
            kern_version: 0,
            prog_flags: 0,
        };
        // SAFETY: bpf(BPF_PROG_LOAD) reads `attr` (its size is passed) and,
        // through it, `insn_cnt` instructions and a NUL-terminated license,
        // all of which live until the call returns; no log buffer is given,
        // so the kernel writes no memory of ours.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                PROG_LOAD,
                &attr as *const ProgLoad,
                std::mem::size_of::<ProgLoad>() as libc::c_uint,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: BPF_PROG_LOAD returned a fresh fd that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(ret as libc::c_int) })
    }
}

/// Sets `prog` as the steering program of the TAP that `queue` is a queue
/// of (`TUNSETSTEERINGEBPF`, Linux 4.16), replacing any before it; `None`
/// removes it (tun's own flow steering again).
pub fn set_steering(queue: &impl AsFd, prog: Option<&impl AsFd>) -> io::Result<()> {
    let fd: libc::c_int = prog.map_or(-1, |p| p.as_fd().as_raw_fd());
    // SAFETY: TUNSETSTEERINGEBPF reads one int (a program's fd, or -1)
    // through the pointer, which points to `fd` for the duration of the
    // call; `queue` is a valid fd borrowed for the call.
    let ret = unsafe {
        libc::ioctl(
            queue.as_fd().as_raw_fd(),
            libc::TUNSETSTEERINGEBPF,
            &fd as *const libc::c_int,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::tap::{open_queues, OpenMode, VNET_HDR_LEN};

    /// The datagrams to UDP port `port` waiting on each of `queues`.
    fn datagrams_by_queue(queues: &[OwnedFd], port: u16) -> Vec<usize> {
        queues
            .iter()
            .map(|q| {
                let mut buf = [0u8; 2048];
                let mut n = 0;
                // The queues are non-blocking: read until EAGAIN.
                while let Ok(len) = nix::unistd::read(q, &mut buf) {
                    let f = &buf[VNET_HDR_LEN..len];
                    // Ethernet, IPv4 without options, UDP: the destination
                    // port at 14 + 20 + 2.
                    if f.len() >= 38 && f[12..14] == [8, 0] && f[23] == 17 {
                        n += usize::from(u16::from_be_bytes([f[36], f[37]]) == port);
                    }
                }
                n
            })
            .collect()
    }

    /// Pins the calling thread to `cpu`.
    fn pin(cpu: usize) {
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu).expect("CPU number");
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).expect("pin");
    }

    /// A two-queue TAP with `by_cpu` set: what a thread sends on each of
    /// two CPUs lands on the queue the program names for that CPU, in
    /// either order, unless it is for the MAC address the program sends
    /// elsewhere; removing the program is accepted.
    #[test]
    fn frames_land_on_the_queue_of_their_cpu() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root (CAP_NET_ADMIN for a namespace, CAP_BPF for the program)"
        );
        let cpus = crate::dataplane::allowed_cpus().expect("affinity");
        assert!(cpus.len() >= 2, "this test needs two CPUs, has {cpus:?}");
        let (a, b) = (cpus[0], cpus[1]);
        std::thread::spawn(move || {
            crate::sys::ns::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1")
                .expect("disable IPv6");
            let tap = open_queues("tap%d", 2, OpenMode::Create, false).expect("open");
            let mut nl = crate::sys::netlink::Netlink::open().expect("netlink");
            let i = nl.index(&tap.name).expect("index");
            nl.add_addr_v4(i, std::net::Ipv4Addr::new(10, 9, 0, 2), 24)
                .expect("address");
            nl.set_link(i, None, None, Some(true)).expect("up");
            let o = std::process::Command::new("ip")
                .args(["neigh", "add", "10.9.0.3", "lladdr", "02:00:00:00:00:03"])
                .args(["dev", &tap.name, "nud", "permanent"])
                .output()
                .expect("ip neigh");
            assert!(o.status.success(), "{o:?}");
            let udp = std::net::UdpSocket::bind("10.9.0.2:0").expect("bind");
            let send_from = |cpu: usize| {
                pin(cpu);
                for _ in 0..20 {
                    udp.send_to(&[0; 18], "10.9.0.3:9").expect("send");
                }
                datagrams_by_queue(&tap.queues, 9)
            };
            // The neighbour's MAC, and another.
            let (theirs, other) = ([2, 0, 0, 0, 0, 3], [2, 0, 0, 0, 0, 4]);
            for (order, to_mac, want_a, want_b) in [
                ([a, b], None, [20, 0], [0, 20]),
                ([b, a], None, [0, 20], [20, 0]),
                ([a, b], Some((theirs, 1)), [0, 20], [0, 20]),
                ([b, a], Some((theirs, 0)), [20, 0], [20, 0]),
                ([a, b], Some((other, 0)), [20, 0], [0, 20]),
            ] {
                let prog = SteeringProgram::by_cpu(&order, to_mac)
                    .load()
                    .expect("load");
                set_steering(&tap.queues[0], Some(&prog)).expect("TUNSETSTEERINGEBPF");
                let what = format!("program {order:?} {to_mac:?}");
                assert_eq!(send_from(a), want_a, "sent on CPU {a}, {what}");
                assert_eq!(send_from(b), want_b, "sent on CPU {b}, {what}");
            }
            set_steering(&tap.queues[1], None::<&OwnedFd>).expect("remove");
        })
        .join()
        .expect("test thread panicked");
    }
}
