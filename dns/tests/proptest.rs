//! Untrusted bytes never panic the responder, and whatever it answers is
//! a well-formed response to the query that was asked.

use proptest::prelude::*;
use std::net::Ipv4Addr;
use tapnet_dns::wire::Query;
use tapnet_dns::{EndpointSpec, FastRng, NetworkSpec, Outcome, Registry, Responder, Transport};
use tapnet_switch::NetworkId;

const NET: NetworkId = NetworkId(0);

fn registry() -> &'static Registry {
    static R: std::sync::OnceLock<std::sync::Arc<Registry>> = std::sync::OnceLock::new();
    R.get_or_init(build)
}

fn build() -> std::sync::Arc<Registry> {
    let r = Registry::new();
    r.set_network(NetworkSpec::new(NET, "net")).unwrap();
    for i in 0..30u8 {
        let mut e = EndpointSpec::new(
            NET,
            &format!("{i:064x}"),
            &format!("c{i}"),
            Ipv4Addr::new(10, 0, 0, 10 + i),
        );
        e.aliases.push("all".into());
        r.add_endpoint(e).unwrap();
    }
    r
}

fn check(r: &Registry, q: &[u8], seed: u64, room: usize) {
    let mut out = vec![0u8; room];
    let o = Responder::default().respond(
        &r.load(),
        NET,
        Ipv4Addr::new(10, 0, 0, 10),
        q,
        Transport::Udp,
        &mut FastRng::new(seed),
        &mut out,
    );
    if let Outcome::Answer { len, .. } = o {
        assert!(len <= room && len >= 12);
        assert!(len <= 4096);
        assert_eq!(&out[..2], &q[..2], "same id");
        assert!(out[2] & 0x80 != 0, "QR");
        if Query::parse(q).is_ok() {
            let m = hickory_proto::op::Message::from_vec(&out[..len]).expect("decodes");
            assert_eq!(m.queries.len(), 1);
        }
    }
    if Query::parse(q).is_err() {
        assert!(!matches!(o, Outcome::Forward));
    }
}

/// A query with an arbitrary name, type and EDNS.
fn query() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u16>(),
        prop::collection::vec(
            prop::sample::select(vec![
                "c1", "all", "net", "C2", "x", "in-addr", "arpa", "10", "0",
            ]),
            0..5,
        ),
        prop::sample::select(vec![1u16, 12, 28, 15, 255]),
        prop::option::of(any::<u16>()),
    )
        .prop_map(|(id, labels, qtype, edns)| {
            let mut q = id.to_be_bytes().to_vec();
            q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, u8::from(edns.is_some())]);
            for l in labels {
                q.push(l.len() as u8);
                q.extend_from_slice(l.as_bytes());
            }
            q.push(0);
            q.extend_from_slice(&qtype.to_be_bytes());
            q.extend_from_slice(&[0, 1]);
            if let Some(s) = edns {
                q.extend_from_slice(&[0, 0, 41]);
                q.extend_from_slice(&s.to_be_bytes());
                q.extend_from_slice(&[0; 6]);
            }
            q
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(q in prop::collection::vec(any::<u8>(), 0..600), seed in any::<u64>(), room in 0usize..5000) {
        let r = registry();
        check(r, &q, seed, room);
    }

    #[test]
    fn mutated_queries_never_panic(q in query(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4), seed in any::<u64>()) {
        let r = registry();
        check(r, &q, seed, 4096);
        let mut m = q.clone();
        for (i, b) in flips {
            let at = i.index(m.len());
            m[at] = b;
        }
        check(r, &m, seed, 4096);
    }
}
