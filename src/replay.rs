//! `tapnet replay --topology FILE.toml IN.pcapng -w OUT.pcapng`: runs
//! recorded frames through an in-memory switch, deterministically.
//!
//! The topology file:
//!
//! ```toml
//! [switch]              # optional
//! aging_secs = 300
//! max_macs_per_port = 64
//!
//! [[network]]
//! name = "front"
//! subnet = "10.1.0.0/24"
//! gateway = "10.1.0.1"
//! icc = true            # optional, default true
//! mtu = 1500            # optional, default 1500
//! subnet6 = "2001:db8:1::/64"  # optional: a dual-stack network
//! gateway6 = "2001:db8:1::1"   # optional, default the subnet's ::1
//!
//! [[port]]
//! name = "a"            # the pcapng interface name
//! network = "front"
//! mac = "02:00:00:00:00:0a"
//! ip = "10.1.0.10"      # leave out mac and ip for an unchecked port
//! ip6 = "2001:db8:1::10" # optional, only with mac and ip, inside subnet6
//! max_macs = 4          # optional
//! ```
//!
//! A port with `ip6` may send IPv6 from it and from its MAC's EUI-64
//! link-local address; a checked port without `ip6` only from the
//! link-local one. The gateway's IPv6 addresses are `gateway6` and the
//! link-local of the gateway MAC ([`tapnet_switch::link_local_of`]).
//!
//! Semantics:
//! - Each input packet enters the switch on the port named like its pcapng
//!   interface, with the virtio-net metadata of its `vnet_hdr` comment (see
//!   [`tapnet_switch::pcapng`]). Packets whose `epb_flags` say outbound
//!   (what the port transmitted, as `tapnet capture` records them) did not
//!   enter the switch there and are skipped: a live capture replays as it
//!   stands, and its outbound frames are what the replay should produce.
//! - The switch clock is the packet's timestamp (so aging replays); should
//!   timestamps go backwards, the clock stays where it was. Housekeeping
//!   ([`tapnet_switch::Switch::age`]) runs whenever the clock enters a new
//!   second, as the daemon's periodic pass would.
//! - The output has one Ethernet interface per port, named after the port,
//!   in topology order (silent ports too), holding what that port
//!   transmitted, stamped with the timestamp of the input frame that caused
//!   it, in order.
//!
//! Errors are one line with their context (file, network or port, packet
//! number).

use anyhow::{anyhow, bail, Context};
use ipnet::{Ipv4Net, Ipv6Net};
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use tapnet_switch::mem::MemSwitch;
use tapnet_switch::pcapng::{self, LINKTYPE_ETHERNET};
use tapnet_switch::wire::EthernetAddress;
use tapnet_switch::{Ipv6Config, NetworkConfig, PortConfig, PortId, SwitchConfig};

/// Runs the replay. One clear error (with context) on bad input.
pub fn run(topology: &Path, input: &Path, output: &Path) -> anyhow::Result<()> {
    let topo_text = std::fs::read_to_string(topology)
        .with_context(|| format!("cannot read topology {}", topology.display()))?;
    let topo =
        parse_topology(&topo_text).with_context(|| format!("topology {}", topology.display()))?;
    let in_bytes =
        std::fs::read(input).with_context(|| format!("cannot read {}", input.display()))?;
    let out = replay(&topo, &in_bytes).with_context(|| format!("{}", input.display()))?;
    std::fs::write(output, out).with_context(|| format!("cannot write {}", output.display()))
}

/// Parses and replays in memory: topology TOML and input pcapng in, output
/// pcapng out.
pub fn replay_bytes(topology_toml: &str, input: &[u8]) -> anyhow::Result<Vec<u8>> {
    let topo = parse_topology(topology_toml).context("topology")?;
    replay(&topo, input)
}

/// The topology file, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopologyFile {
    #[serde(default)]
    switch: SwitchSection,
    #[serde(default)]
    network: Vec<NetworkSection>,
    #[serde(default)]
    port: Vec<PortSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SwitchSection {
    #[serde(default = "default_aging")]
    aging_secs: u32,
    #[serde(default = "default_max_macs")]
    max_macs_per_port: u32,
}

fn default_aging() -> u32 {
    SwitchConfig::default().aging_secs
}

fn default_max_macs() -> u32 {
    SwitchConfig::default().max_macs_per_port
}

impl Default for SwitchSection {
    fn default() -> Self {
        SwitchSection {
            aging_secs: default_aging(),
            max_macs_per_port: default_max_macs(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkSection {
    name: String,
    subnet: String,
    gateway: String,
    #[serde(default = "yes")]
    icc: bool,
    #[serde(default = "default_mtu")]
    mtu: u32,
    subnet6: Option<String>,
    gateway6: Option<String>,
}

fn yes() -> bool {
    true
}

fn default_mtu() -> u32 {
    1500
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PortSection {
    name: String,
    network: String,
    mac: Option<String>,
    ip: Option<String>,
    ip6: Option<String>,
    max_macs: Option<u32>,
}

/// A validated topology: everything the switch needs, in file order.
#[derive(Debug)]
pub struct Topology {
    pub switch: SwitchConfig,
    pub networks: Vec<NetworkConfig>,
    /// Ports, each with the index of its network in `networks`.
    pub ports: Vec<(PortConfig, usize)>,
}

/// Parses and validates a topology file.
pub fn parse_topology(text: &str) -> anyhow::Result<Topology> {
    // toml's messages span several lines (a source excerpt): keep one.
    let file: TopologyFile = toml::from_str(text).map_err(|e| {
        let span = e
            .span()
            .map(|s| {
                let line = text.get(..s.start).unwrap_or(text).lines().count().max(1);
                format!("line {line}: ")
            })
            .unwrap_or_default();
        anyhow!("{span}{}", e.message())
    })?;
    let switch = SwitchConfig {
        aging_secs: file.switch.aging_secs,
        max_macs_per_port: file.switch.max_macs_per_port,
        ..SwitchConfig::default()
    };
    if switch.aging_secs == 0 {
        bail!("[switch] aging_secs must be at least 1");
    }
    let mut networks = Vec::new();
    let mut net_index = HashMap::new();
    for n in &file.network {
        let cx = || format!("network {:?}", n.name);
        if n.name.is_empty() {
            bail!("a network has an empty name");
        }
        if net_index.insert(n.name.as_str(), networks.len()).is_some() {
            bail!("{}: duplicate network name", cx());
        }
        let subnet: Ipv4Net = n.subnet.parse().map_err(|_| {
            anyhow!(
                "{}: bad subnet {:?} (want a CIDR like 10.1.0.0/24)",
                cx(),
                n.subnet
            )
        })?;
        if subnet.trunc() != subnet {
            bail!(
                "{}: subnet {} has host bits set (did you mean {}?)",
                cx(),
                subnet,
                subnet.trunc()
            );
        }
        let gateway: Ipv4Addr = n
            .gateway
            .parse()
            .map_err(|_| anyhow!("{}: bad gateway address {:?}", cx(), n.gateway))?;
        if !subnet.contains(&gateway) {
            bail!("{}: gateway {gateway} is outside subnet {subnet}", cx());
        }
        if !(68..=65535).contains(&n.mtu) {
            bail!("{}: MTU {} outside 68..65535", cx(), n.mtu);
        }
        let v6 = parse_v6(n).with_context(cx)?;
        networks.push(NetworkConfig {
            icc: n.icc,
            mtu: n.mtu,
            v6,
            ..NetworkConfig::new(&n.name, subnet.network(), subnet.prefix_len(), gateway)
        });
    }
    let mut ports = Vec::new();
    let mut port_names = HashSet::new();
    for p in &file.port {
        let cx = || format!("port {:?}", p.name);
        if p.name.is_empty() {
            bail!("a port has an empty name");
        }
        if !port_names.insert(p.name.as_str()) {
            bail!("{}: duplicate port name", cx());
        }
        let &net = net_index
            .get(p.network.as_str())
            .ok_or_else(|| anyhow!("{}: unknown network {:?}", cx(), p.network))?;
        let mac = match &p.mac {
            None => None,
            Some(s) => {
                let m: EthernetAddress = s
                    .parse()
                    .map_err(|_| anyhow!("{}: bad MAC address {s:?}", cx()))?;
                if m.is_multicast() || m.is_zero() {
                    bail!("{}: MAC address {m} is not a unicast address", cx());
                }
                Some(m)
            }
        };
        let ip = match &p.ip {
            None => None,
            Some(s) => {
                let ip: Ipv4Addr = s
                    .parse()
                    .map_err(|_| anyhow!("{}: bad IPv4 address {s:?}", cx()))?;
                let n = &networks[net];
                let subnet = Ipv4Net::new(n.subnet, n.prefix_len)?;
                if !subnet.contains(&ip) {
                    bail!(
                        "{}: address {ip} is outside subnet {subnet} of network {:?}",
                        cx(),
                        p.network
                    );
                }
                Some(ip)
            }
        };
        if mac.is_some() != ip.is_some() {
            bail!(
                "{}: give both mac and ip (a spoof-checked endpoint) or neither (an unchecked port)",
                cx()
            );
        }
        let ip6 = match &p.ip6 {
            None => None,
            Some(s) => {
                if ip.is_none() {
                    bail!(
                        "{}: ip6 needs mac and ip (only a spoof-checked endpoint has one)",
                        cx()
                    );
                }
                let a: Ipv6Addr = s
                    .parse()
                    .map_err(|_| anyhow!("{}: bad IPv6 address {s:?}", cx()))?;
                let Some(v6) = networks[net].v6 else {
                    bail!(
                        "{}: ip6 {a} given but network {:?} has no subnet6",
                        cx(),
                        p.network
                    );
                };
                if !v6.contains(a) {
                    bail!(
                        "{}: address {a} is outside subnet6 {}/{} of network {:?}",
                        cx(),
                        v6.subnet,
                        v6.prefix_len,
                        p.network
                    );
                }
                Some(a)
            }
        };
        ports.push((
            PortConfig {
                name: p.name.clone(),
                network: tapnet_switch::NetworkId(0), // set when added
                mac,
                ip,
                ip6,
                link_local6: None,
                max_macs: p.max_macs,
                tunnel: None,
            },
            net,
        ));
    }
    Ok(Topology {
        switch,
        networks,
        ports,
    })
}

/// The IPv6 side of a network section: `subnet6` and `gateway6`, checked
/// like the IPv4 ones. Errors name the field; the caller adds the network.
fn parse_v6(n: &NetworkSection) -> anyhow::Result<Option<Ipv6Config>> {
    let Some(text) = &n.subnet6 else {
        if n.gateway6.is_some() {
            bail!("gateway6 given without subnet6");
        }
        return Ok(None);
    };
    let subnet: Ipv6Net = text
        .parse()
        .map_err(|_| anyhow!("bad subnet6 {text:?} (want a CIDR like 2001:db8:1::/64)"))?;
    if subnet.trunc() != subnet {
        bail!(
            "subnet6 {subnet} has host bits set (did you mean {}?)",
            subnet.trunc()
        );
    }
    if subnet.prefix_len() > 127 {
        bail!("subnet6 {subnet} has no room for a gateway (want a prefix of /127 or shorter)");
    }
    let gateway = match &n.gateway6 {
        // The subnet's ::1, as Docker picks.
        None => Ipv6Addr::from(u128::from(subnet.network()) + 1),
        Some(g) => {
            let g: Ipv6Addr = g
                .parse()
                .map_err(|_| anyhow!("bad gateway6 address {g:?}"))?;
            if !subnet.contains(&g) {
                bail!("gateway6 {g} is outside subnet6 {subnet}");
            }
            g
        }
    };
    Ok(Some(Ipv6Config {
        subnet: subnet.network(),
        prefix_len: subnet.prefix_len(),
        gateway,
    }))
}

/// Replays `input` (pcapng) through a switch built from `topo`.
pub fn replay(topo: &Topology, input: &[u8]) -> anyhow::Result<Vec<u8>> {
    Ok(replay_in(topo, input)?.0)
}

/// [`replay`], also handing back the switch (for its counters) and the
/// port ids by name.
fn replay_in(
    topo: &Topology,
    input: &[u8],
) -> anyhow::Result<(Vec<u8>, MemSwitch, HashMap<String, PortId>)> {
    let mut sw = MemSwitch::new(topo.switch.clone());
    let mut net_ids = Vec::new();
    for n in &topo.networks {
        net_ids.push(
            sw.switch
                .add_network(n.clone())
                .with_context(|| format!("network {:?}", n.name))?,
        );
    }
    let mut writer = pcapng::Writer::new(Vec::new())?;
    // Port id -> output interface index; name -> port id.
    let mut out_iface: HashMap<PortId, u32> = HashMap::new();
    let mut by_name: HashMap<&str, PortId> = HashMap::new();
    for (p, net) in &topo.ports {
        let config = PortConfig {
            network: net_ids[*net],
            ..p.clone()
        };
        let id = sw
            .switch
            .add_port(config)
            .with_context(|| format!("port {:?}", p.name))?;
        out_iface.insert(id, writer.add_interface(&p.name)?);
        by_name.insert(&p.name, id);
    }

    let mut reader = pcapng::Reader::new(input);
    let mut clock: u64 = 0;
    let mut aged_at: Option<u64> = None;
    let mut n = 0usize;
    while let Some(pkt) = reader
        .next_packet()
        .with_context(|| format!("bad pcapng after {n} packets"))?
    {
        n += 1;
        if pkt.flags & 3 == pcapng::EPB_OUTBOUND {
            continue;
        }
        let cx = || format!("packet {n}");
        let name = pkt
            .interface_name
            .as_deref()
            .ok_or_else(|| anyhow!("{}: interface {} has no name", cx(), pkt.interface))?;
        let port = *by_name
            .get(name)
            .ok_or_else(|| anyhow!("{}: interface {name:?} is not a port of the topology", cx()))?;
        let link = reader
            .interfaces()
            .get(pkt.interface as usize)
            .map_or(LINKTYPE_ETHERNET, |i| i.link_type);
        if link != LINKTYPE_ETHERNET {
            bail!(
                "{}: interface {name:?} has link type {link}, not Ethernet (1)",
                cx()
            );
        }
        let meta = pkt.vnet_hdr().with_context(cx)?;
        clock = clock.max(pkt.timestamp_ns);
        let secs = clock / 1_000_000_000;
        if aged_at != Some(secs) {
            sw.switch.age(secs as u32);
            aged_at = Some(secs);
        }
        for sent in sw.inject(clock, port, meta, &pkt.data) {
            let iface = out_iface[&sent.port];
            writer.write_frame(iface, pkt.timestamp_ns, &sent.meta, &sent.frame)?;
        }
    }
    let ids = by_name
        .into_iter()
        .map(|(n, id)| (n.to_string(), id))
        .collect();
    Ok((writer.into_inner()?, sw, ids))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPO: &str = r#"
[switch]
aging_secs = 10
[[network]]
name = "front"
subnet = "10.1.0.0/24"
gateway = "10.1.0.1"
[[port]]
name = "a"
network = "front"
mac = "02:00:00:00:00:0a"
ip = "10.1.0.10"
[[port]]
name = "up"
network = "front"
max_macs = 4
"#;

    fn err(topo: &str) -> String {
        format!("{:#}", parse_topology(topo).unwrap_err())
    }

    #[test]
    fn parses() {
        let t = parse_topology(TOPO).unwrap();
        assert_eq!(t.switch.aging_secs, 10);
        assert_eq!(t.switch.max_macs_per_port, 64);
        assert_eq!(t.networks[0].prefix_len, 24);
        assert!(t.networks[0].icc);
        assert_eq!(t.networks[0].mtu, 1500);
        assert_eq!(t.ports.len(), 2);
        assert_eq!(t.ports[1].0.max_macs, Some(4));
        assert_eq!(t.ports[1].0.mac, None);
    }

    #[test]
    fn parses_dual_stack() {
        let t = parse_topology(
            r#"
[[network]]
name = "n"
subnet = "10.0.0.0/24"
gateway = "10.0.0.1"
subnet6 = "2001:db8:1::/64"
[[network]]
name = "m"
subnet = "10.9.0.0/24"
gateway = "10.9.0.1"
subnet6 = "fd00::/48"
gateway6 = "fd00::fe"
[[port]]
name = "a"
network = "n"
mac = "02:00:00:00:00:01"
ip = "10.0.0.2"
ip6 = "2001:db8:1::2"
[[port]]
name = "b"
network = "n"
mac = "02:00:00:00:00:02"
ip = "10.0.0.3"
"#,
        )
        .unwrap();
        let v6 = t.networks[0].v6.unwrap();
        assert_eq!(v6.subnet, "2001:db8:1::".parse::<Ipv6Addr>().unwrap());
        assert_eq!(v6.prefix_len, 64);
        assert_eq!(v6.gateway, "2001:db8:1::1".parse::<Ipv6Addr>().unwrap());
        let v6 = t.networks[1].v6.unwrap();
        assert_eq!(v6.prefix_len, 48);
        assert_eq!(v6.gateway, "fd00::fe".parse::<Ipv6Addr>().unwrap());
        assert_eq!(t.ports[0].0.ip6, "2001:db8:1::2".parse().ok());
        assert_eq!(t.ports[1].0.ip6, None);
        assert_eq!(parse_topology(TOPO).unwrap().networks[0].v6, None);
    }

    #[test]
    fn topology_errors_are_one_clear_line() {
        let net = "[[network]]\nname = \"n\"\nsubnet = \"10.0.0.0/24\"\ngateway = \"10.0.0.1\"\n";
        let cases = [
            (
                "[[port]]\nname = \"a\"\nnetwork = \"x\"\n".to_string(),
                "port \"a\": unknown network \"x\"",
            ),
            (
                format!("{net}[[port]]\nname = \"a\"\nnetwork = \"n\"\nmac = \"02:00\"\nip = \"10.0.0.2\"\n"),
                "port \"a\": bad MAC address \"02:00\"",
            ),
            (
                format!("{net}[[port]]\nname = \"a\"\nnetwork = \"n\"\nmac = \"02:00:00:00:00:01\"\nip = \"10.0.0.300\"\n"),
                "port \"a\": bad IPv4 address \"10.0.0.300\"",
            ),
            (
                format!("{net}[[port]]\nname = \"a\"\nnetwork = \"n\"\nmac = \"02:00:00:00:00:01\"\nip = \"10.9.0.2\"\n"),
                "port \"a\": address 10.9.0.2 is outside subnet 10.0.0.0/24",
            ),
            (
                format!("{net}[[port]]\nname = \"a\"\nnetwork = \"n\"\nmac = \"02:00:00:00:00:01\"\n"),
                "port \"a\": give both mac and ip",
            ),
            (
                format!("{net}[[port]]\nname = \"a\"\nnetwork = \"n\"\n[[port]]\nname = \"a\"\nnetwork = \"n\"\n"),
                "port \"a\": duplicate port name",
            ),
            (format!("{net}{net}"), "network \"n\": duplicate network name"),
            (
                "[[network]]\nname = \"n\"\nsubnet = \"10.0.0/24\"\ngateway = \"10.0.0.1\"\n".into(),
                "network \"n\": bad subnet \"10.0.0/24\"",
            ),
            (
                "[[network]]\nname = \"n\"\nsubnet = \"10.0.0.1/24\"\ngateway = \"10.0.0.1\"\n".into(),
                "network \"n\": subnet 10.0.0.1/24 has host bits set",
            ),
            (
                "[[network]]\nname = \"n\"\nsubnet = \"10.0.0.0/24\"\ngateway = \"10.0.1.1\"\n".into(),
                "network \"n\": gateway 10.0.1.1 is outside subnet 10.0.0.0/24",
            ),
            (
                "[[network]]\nname = \"n\"\nsubnet = \"10.0.0.0/24\"\ngateway = \"10.0.0.1\"\nmtu = 10\n".into(),
                "network \"n\": MTU 10 outside",
            ),
            (
                format!("{net}subnet6 = \"2001:db8::/64x\"\n"),
                "network \"n\": bad subnet6 \"2001:db8::/64x\"",
            ),
            (
                format!("{net}subnet6 = \"2001:db8::1/64\"\n"),
                "network \"n\": subnet6 2001:db8::1/64 has host bits set (did you mean 2001:db8::/64?)",
            ),
            (
                format!("{net}subnet6 = \"2001:db8::1/128\"\n"),
                "network \"n\": subnet6 2001:db8::1/128 has no room for a gateway",
            ),
            (
                format!("{net}subnet6 = \"2001:db8::/64\"\ngateway6 = \"10.0.0.1\"\n"),
                "network \"n\": bad gateway6 address \"10.0.0.1\"",
            ),
            (
                format!("{net}subnet6 = \"2001:db8::/64\"\ngateway6 = \"2001:db9::1\"\n"),
                "network \"n\": gateway6 2001:db9::1 is outside subnet6 2001:db8::/64",
            ),
            (
                format!("{net}gateway6 = \"2001:db8::1\"\n"),
                "network \"n\": gateway6 given without subnet6",
            ),
            (
                format!("{net}[[port]]\nname = \"a\"\nnetwork = \"n\"\nmac = \"02:00:00:00:00:01\"\nip = \"10.0.0.2\"\nip6 = \"2001:db8::2\"\n"),
                "port \"a\": ip6 2001:db8::2 given but network \"n\" has no subnet6",
            ),
            (
                format!("{net}subnet6 = \"2001:db8::/64\"\n[[port]]\nname = \"a\"\nnetwork = \"n\"\nip6 = \"2001:db8::2\"\n"),
                "port \"a\": ip6 needs mac and ip",
            ),
            (
                format!("{net}subnet6 = \"2001:db8::/64\"\n[[port]]\nname = \"a\"\nnetwork = \"n\"\nmac = \"02:00:00:00:00:01\"\nip = \"10.0.0.2\"\nip6 = \"2001:db8::g\"\n"),
                "port \"a\": bad IPv6 address \"2001:db8::g\"",
            ),
            (
                format!("{net}subnet6 = \"2001:db8::/64\"\n[[port]]\nname = \"a\"\nnetwork = \"n\"\nmac = \"02:00:00:00:00:01\"\nip = \"10.0.0.2\"\nip6 = \"2001:db9::2\"\n"),
                "port \"a\": address 2001:db9::2 is outside subnet6 2001:db8::/64 of network \"n\"",
            ),
            ("[[network]]\nname = \"n\"\n".into(), "line 1: missing field `subnet`"),
            ("[swich]\n".into(), "line 1: unknown field `swich`"),
        ];
        for (topo, want) in cases {
            let got = err(&topo);
            assert!(got.contains(want), "{topo}\nwant {want:?}\ngot  {got:?}");
            assert!(!got.contains('\n'), "{got:?}");
        }
    }

    #[test]
    fn unknown_interface_is_an_error() {
        let mut w = pcapng::Writer::new(Vec::new()).unwrap();
        w.add_interface("zz").unwrap();
        w.write_packet(0, 5, &[0; 60], &[]).unwrap();
        let input = w.into_inner().unwrap();
        let e = format!("{:#}", replay_bytes(TOPO, &input).unwrap_err());
        assert_eq!(
            e,
            "packet 1: interface \"zz\" is not a port of the topology"
        );
        let e = format!("{:#}", replay_bytes(TOPO, b"garbage!").unwrap_err());
        assert!(e.contains("not a pcapng file"), "{e}");
    }

    #[test]
    fn outbound_frames_of_a_live_capture_are_skipped() {
        // An ARP request from "a": entering, it floods to "up"; recorded
        // as outbound on "a" (what "a" was sent), it is not input.
        let mac = [2, 0, 0, 0, 0, 0x0a];
        let mut frame = vec![0xff; 6];
        frame.extend(mac);
        frame.extend([0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        frame.extend(mac);
        frame.extend([10, 1, 0, 10, 0, 0, 0, 0, 0, 0, 10, 1, 0, 99]);
        frame.resize(60, 0);
        let input = |flags: u32| {
            let mut w = pcapng::Writer::new(Vec::new()).unwrap();
            w.add_interface("a").unwrap();
            w.write_captured(0, 5, &frame, 60, flags, &[]).unwrap();
            w.into_inner().unwrap()
        };
        let sent = |flags| pcapng::read(&replay_bytes(TOPO, &input(flags)).unwrap()).unwrap();
        assert_eq!(sent(pcapng::EPB_INBOUND).packets.len(), 1);
        assert_eq!(sent(0).packets.len(), 1);
        assert_eq!(sent(pcapng::EPB_OUTBOUND).packets.len(), 0);
    }

    #[test]
    fn silent_ports_still_have_interfaces() {
        let input = {
            let mut w = pcapng::Writer::new(Vec::new()).unwrap();
            w.add_interface("a").unwrap();
            w.into_inner().unwrap()
        };
        let out = pcapng::read(&replay_bytes(TOPO, &input).unwrap()).unwrap();
        let names: Vec<_> = out
            .interfaces
            .iter()
            .map(|i| i.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["a", "up"]);
        assert!(out.packets.is_empty());
    }

    /// The pcapng fixtures cannot record why a frame was dropped: the
    /// IPv6 ones are checked here for their drop reasons.
    #[test]
    fn ipv6_fixtures_drop_for_the_stated_reasons() {
        use tapnet_switch::DropReason::{IccDisabled, SpoofedIp, SpoofedNd};
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("pcap-fixtures");
        let cases = [
            ("ipv6-spoofing", "a", vec![(SpoofedIp, 4), (SpoofedNd, 4)]),
            ("ipv6-icc-off", "a", vec![(IccDisabled, 2)]),
            ("ipv6-icc-off", "b", vec![(IccDisabled, 2)]),
        ];
        for (dir, port, want) in cases {
            let topo = std::fs::read_to_string(root.join(dir).join("topology.toml")).unwrap();
            let input = std::fs::read(root.join(dir).join("in.pcapng")).unwrap();
            let (_, sw, ids) = replay_in(&parse_topology(&topo).unwrap(), &input).unwrap();
            let stats = sw.switch.port_stats(ids[port]).unwrap();
            for (reason, n) in want {
                assert_eq!(
                    stats.drop_count(reason),
                    n,
                    "{dir}, port {port}: {reason:?}"
                );
            }
        }
    }

    #[test]
    fn run_reports_unreadable_files() {
        let e = run(
            Path::new("/nonexistent/t.toml"),
            Path::new("in"),
            Path::new("out"),
        )
        .unwrap_err();
        assert!(format!("{e:#}").starts_with("cannot read topology /nonexistent/t.toml: "));
    }
}
