//! One egress stage: frames made off the fast path (the NAT's, the DNS
//! forwarder's) leave through the same counters and capture hook as
//! switched frames; a hook that claims a frame gets its buffer without a
//! copy.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use tapnet_switch::build::{self, mac};
use tapnet_switch::mem::MemTx;
use tapnet_switch::wire::VnetHdr;
use tapnet_switch::*;

fn ip(d: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 1, 0, d)
}

#[derive(Default)]
struct Seen {
    egress: Mutex<Vec<(PortId, Vec<u8>)>>,
}

impl CaptureHook for Seen {
    fn on_egress(&self, port: &Port, _: &VnetHdr, frame: &[u8]) {
        self.egress.lock().unwrap().push((port.id, frame.to_vec()));
    }
}

fn switch() -> (Arc<Switch>, PortId, PortId) {
    let sw = Switch::new(SwitchConfig::default());
    let net = sw
        .add_network(NetworkConfig::new("n", ip(0), 24, ip(1)))
        .unwrap();
    let a = sw
        .add_port(PortConfig::endpoint("a", net, mac(10), ip(10)))
        .unwrap();
    let b = sw
        .add_port(PortConfig::endpoint("b", net, mac(11), ip(11)))
        .unwrap();
    (sw, a, b)
}

#[test]
fn injected_frames_are_counted_and_captured_like_switched_ones() {
    let (sw, a, _) = switch();
    let seen = Arc::new(Seen::default());
    sw.set_capture(Some(seen.clone()));
    let w = Worker::new(sw.clone(), 0);
    let cx = w.begin(0);
    let mut tx = MemTx::default();
    let frame = build::udp(
        mac(10),
        gateway_mac(ip(1)),
        (ip(9), 53),
        (ip(10), 5000),
        b"x",
    );
    w.transmit_injected(&cx, a, &VnetHdr::default(), &frame, &mut tx);
    assert_eq!(tx.sent.len(), 1);
    assert_eq!(tx.sent[0].port, a);
    let st = sw.port_stats(a).unwrap();
    assert_eq!((st.tx_packets, st.tx_bytes), (1, frame.len() as u64));
    assert_eq!(
        seen.egress.lock().unwrap().as_slice(),
        &[(a, frame.clone())]
    );
    // A port gone from the snapshot: counted on the worker.
    w.transmit_injected(&cx, PortId(99), &VnetHdr::default(), &frame, &mut tx);
    assert_eq!(tx.sent.len(), 1);
    assert_eq!(sw.switch_drops()[DropReason::UnknownPort as usize], 1);
}

/// Claims every frame for the outside; keeps the buffers it is handed.
#[derive(Default)]
struct Claimer {
    kept: Vec<(Box<[u8]>, usize)>,
}

impl GatewayHook for Claimer {
    fn handle(&mut self, _: &HookCx<'_>, _: &VnetHdr, _: &[u8], _: &mut [u8]) -> HookVerdict {
        HookVerdict::Claimed
    }
    fn claim_buffer(&mut self, buf: Box<[u8]>, offset: usize) -> Box<[u8]> {
        self.kept.push((buf, offset));
        vec![0xee; 64].into_boxed_slice()
    }
}

#[test]
fn a_claimed_frame_changes_hands_without_a_copy() {
    let (sw, a, _) = switch();
    let mut w = Worker::with_hook(sw.clone(), 0, Claimer::default());
    let frame = build::udp(
        gateway_mac(ip(1)),
        mac(10),
        (ip(10), 5000),
        (Ipv4Addr::new(192, 0, 2, 1), 53),
        b"q",
    );
    let mut buf = vec![0u8; 64].into_boxed_slice();
    buf[4..4 + frame.len()].copy_from_slice(&frame);
    let cx = w.begin(0);
    let mut tx = MemTx::default();
    let p = w.process(
        &cx,
        a,
        &VnetHdr::default(),
        &buf[4..4 + frame.len()],
        &mut tx,
    );
    assert_eq!(p, Processed::Claimed);
    let addr = buf.as_ptr();
    w.hand_over(&mut buf, 4);
    assert_eq!(buf[0], 0xee, "the hook's empty buffer came back");
    let (kept, offset) = &w.hook_mut().kept[0];
    assert_eq!(kept.as_ptr(), addr, "the same buffer, not a copy");
    assert_eq!(&kept[*offset..*offset + frame.len()], &frame[..]);
    assert!(tx.sent.is_empty());
    assert_eq!(sw.port_stats(a).unwrap().total_drops(), 0);
    // Switched frames are Done.
    let to_b = build::udp(mac(11), mac(10), (ip(10), 1), (ip(11), 2), b"x");
    let p = w.process(&cx, a, &VnetHdr::default(), &to_b, &mut tx);
    assert_eq!(p, Processed::Done);
}
