//! `tapnet network ...`.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::{key_value, print_json, print_table};
use crate::client::{enc, Client};
use crate::daemon::types::*;

#[derive(Subcommand, Debug)]
pub enum NetworkCmd {
    /// List networks.
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Create a network.
    Create(CreateArgs),
    /// Show networks' details (JSON array).
    Inspect {
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove networks.
    #[command(visible_alias = "remove")]
    Rm {
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Connect a container to a network.
    Connect(ConnectArgs),
    /// Disconnect a container from a network.
    Disconnect {
        /// Force the container to disconnect.
        #[arg(short = 'f', long = "force")]
        force: bool,
        network: String,
        container: String,
    },
    /// Remove all unused networks.
    Prune {
        /// Do not prompt for confirmation.
        #[arg(short = 'f', long = "force")]
        force: bool,
        /// Only networks matching: until=DURATION|TIME, label=KEY[=VALUE],
        /// label!=KEY[=VALUE].
        #[arg(long = "filter")]
        filter: Vec<String>,
    },
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Only display network IDs.
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
    /// `json` (one object per line) or `table`.
    #[arg(long)]
    format: Option<String>,
    /// Filter (name=, driver=, id=, label=, type=, scope=, dangling=).
    #[arg(short = 'f', long = "filter")]
    filter: Vec<String>,
    /// Do not truncate the IDs.
    #[arg(long = "no-trunc")]
    no_trunc: bool,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Driver (only `bridge` today).
    #[arg(short = 'd', long = "driver", default_value = "bridge")]
    driver: String,
    #[arg(long)]
    subnet: Vec<String>,
    #[arg(long)]
    gateway: Vec<String>,
    #[arg(long = "ip-range")]
    ip_range: Vec<String>,
    /// Reserved address NAME=IP.
    #[arg(long = "aux-address")]
    aux_address: Vec<String>,
    #[arg(long)]
    internal: bool,
    /// Tapnet containers may join it (`--attachable=false` refuses them on
    /// an overlay, where it is the default).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    attachable: Option<bool>,
    #[arg(long)]
    ipv6: bool,
    /// Driver option KEY=VALUE.
    #[arg(short = 'o', long = "opt")]
    opt: Vec<String>,
    #[arg(long)]
    label: Vec<String>,
    /// IPAM driver.
    #[arg(long = "ipam-driver")]
    ipam_driver: Option<String>,
    /// IPAM option KEY=VALUE.
    #[arg(long = "ipam-opt")]
    ipam_opt: Vec<String>,
    name: String,
}

#[derive(Args, Debug)]
pub struct ConnectArgs {
    #[arg(long)]
    alias: Vec<String>,
    #[arg(long)]
    ip: Option<String>,
    #[arg(long)]
    ip6: Option<String>,
    #[arg(long)]
    link: Vec<String>,
    #[arg(long = "mac-address")]
    mac_address: Option<String>,
    network: String,
    container: String,
}

pub fn run(c: &Client, cmd: NetworkCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        NetworkCmd::Ls(a) => ls(c, a),
        NetworkCmd::Create(a) => create(c, a),
        NetworkCmd::Inspect { networks } => {
            let mut out = vec![];
            let mut failed = None;
            for n in &networks {
                match c.get::<serde_json::Value>(&format!("/networks/{}", enc(n))) {
                    Ok(v) => out.push(v),
                    Err(e) => failed = Some(e),
                }
            }
            if !out.is_empty() || failed.is_none() {
                print_json(&out)?;
            }
            match failed {
                Some(e) => Err(e.into()),
                None => Ok(ExitCode::SUCCESS),
            }
        }
        NetworkCmd::Rm { networks } => Ok(super::for_each_key(&networks, |n| {
            c.delete(&format!("/networks/{}", enc(n)))
        })),
        NetworkCmd::Connect(a) => {
            let mut links = vec![];
            for l in &a.link {
                links.push(l.clone());
            }
            let body = NetworkConnect {
                container: a.container.clone(),
                endpoint_config: Some(EndpointConfigReq {
                    ipam_config: (a.ip.is_some() || a.ip6.is_some()).then(|| IpamAddrReq {
                        ipv4_address: a.ip.clone(),
                        ipv6_address: a.ip6.clone(),
                    }),
                    aliases: Some(a.alias.clone()),
                    links: Some(links),
                    mac_address: a.mac_address.clone(),
                }),
            };
            c.post_ok(
                &format!("/networks/{}/connect", enc(&a.network)),
                Some(&body),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        NetworkCmd::Disconnect {
            force,
            network,
            container,
        } => {
            let body = NetworkDisconnect { container, force };
            c.post_ok(
                &format!("/networks/{}/disconnect", enc(&network)),
                Some(&body),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        NetworkCmd::Prune { force, filter } => {
            let path = format!("/networks/prune{}", filters_query(&filter)?);
            if !force {
                eprint!("WARNING! This will remove all custom networks not used by at least one container.\nAre you sure you want to continue? [y/N] ");
                let mut line = String::new();
                std::io::stdin().lock().read_line(&mut line)?;
                if !matches!(line.trim(), "y" | "Y" | "yes" | "Yes") {
                    return Ok(ExitCode::SUCCESS);
                }
            }
            let r: PruneResponse = c.post(&path, &serde_json::json!({}))?;
            if !r.networks_deleted.is_empty() {
                println!("Deleted Networks:");
                for n in r.networks_deleted {
                    println!("{n}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `--filter KEY=VALUE`... as Docker's `?filters={"KEY":["VALUE"]}`
/// (empty when there are none). `label!=x` is the key `label!`.
fn filters_query(filter: &[String]) -> anyhow::Result<String> {
    let mut filters: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in filter {
        let (k, v) = key_value(f, "filter")?;
        filters.entry(k).or_default().push(v);
    }
    if filters.is_empty() {
        return Ok(String::new());
    }
    Ok(format!(
        "?filters={}",
        enc(&serde_json::to_string(&filters)?)
    ))
}

fn ls(c: &Client, a: LsArgs) -> anyhow::Result<ExitCode> {
    let path = format!("/networks{}", filters_query(&a.filter)?);
    let nets: Vec<NetworkView> = c.get(&path)?;
    let id = |n: &NetworkView| {
        if a.no_trunc {
            n.id.clone()
        } else {
            n.id[..12.min(n.id.len())].to_string()
        }
    };
    if a.quiet {
        for n in &nets {
            println!("{}", id(n));
        }
        return Ok(ExitCode::SUCCESS);
    }
    match a.format.as_deref() {
        None | Some("table") => {
            let rows: Vec<Vec<String>> = nets
                .iter()
                .map(|n| vec![id(n), n.name.clone(), n.driver.clone(), n.scope.clone()])
                .collect();
            print_table(&["NETWORK ID", "NAME", "DRIVER", "SCOPE"], &rows);
        }
        Some("json") => {
            for n in &nets {
                let labels: Vec<String> =
                    n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let v = serde_json::json!({
                    "CreatedAt": n.created,
                    "Driver": n.driver,
                    "ID": id(n),
                    "IPv6": n.enable_ipv6.to_string(),
                    "Internal": n.internal.to_string(),
                    "Labels": labels.join(","),
                    "Name": n.name,
                    "Scope": n.scope,
                });
                println!("{v}");
            }
        }
        Some(f) => anyhow::bail!("unsupported --format {f:?} (json or table)"),
    }
    Ok(ExitCode::SUCCESS)
}

fn create(c: &Client, a: CreateArgs) -> anyhow::Result<ExitCode> {
    if a.subnet.is_empty()
        && !(a.gateway.is_empty() && a.ip_range.is_empty() && a.aux_address.is_empty())
    {
        anyhow::bail!("--gateway, --ip-range and --aux-address need --subnet");
    }
    let mut aux = BTreeMap::new();
    for x in &a.aux_address {
        let (k, v) = key_value(x, "--aux-address")?;
        aux.insert(k, v);
    }
    let mut options = BTreeMap::new();
    for o in &a.opt {
        // `-o encrypted` alone, as Docker's overlay takes it; every other
        // option is KEY=VALUE.
        let (k, v) = match o.as_str() {
            "encrypted" => (o.clone(), String::new()),
            _ => key_value(o, "option")?,
        };
        options.insert(k, v);
    }
    let mut labels = BTreeMap::new();
    for l in &a.label {
        match l.split_once('=') {
            Some((k, v)) => labels.insert(k.to_string(), v.to_string()),
            None => labels.insert(l.clone(), String::new()),
        };
    }
    let mut ipam_opts = BTreeMap::new();
    for o in &a.ipam_opt {
        let (k, v) = key_value(o, "--ipam-opt")?;
        ipam_opts.insert(k, v);
    }
    let config = ipam_configs(&a.subnet, &a.gateway, &a.ip_range, aux)?;
    let body = NetworkCreate {
        name: a.name.clone(),
        check_duplicate: Some(true),
        driver: Some(a.driver.clone()),
        scope: None,
        internal: a.internal,
        attachable: a.attachable,
        ingress: false,
        enable_ipv6: Some(a.ipv6),
        ipam: Some(IpamReq {
            driver: Some(a.ipam_driver.clone().unwrap_or_else(|| "default".into())),
            config: Some(config),
            options: Some(ipam_opts),
        }),
        options: Some(options),
        labels: Some(labels),
    };
    let r: NetworkCreateResponse = c.post("/networks/create", &body)?;
    if !r.warning.is_empty() {
        eprintln!("WARNING: {}", r.warning);
    }
    println!("{}", r.id);
    Ok(ExitCode::SUCCESS)
}

/// Docker's CLI rule for `--subnet`, `--gateway`, `--ip-range` and
/// `--aux-address` given several times (dual-stack): each of the others
/// belongs to the subnet that contains it; two subnets may not overlap
/// and a subnet has at most one gateway and one range.
fn ipam_configs(
    subnets: &[String],
    gateways: &[String],
    ranges: &[String],
    aux: BTreeMap<String, String>,
) -> anyhow::Result<Vec<IpamConfigReq>> {
    use anyhow::bail;
    if subnets.is_empty() {
        if !gateways.is_empty() || !ranges.is_empty() || !aux.is_empty() {
            bail!("--gateway, --ip-range and --aux-address need --subnet");
        }
        return Ok(vec![]);
    }
    let parsed: Vec<Option<ipnet::IpNet>> = subnets.iter().map(|s| s.parse().ok()).collect();
    // With one subnet, a malformed value goes with it (the daemon then
    // says why).
    let single = subnets.len() == 1;
    let owner = |value: &str, what: &str| -> anyhow::Result<usize> {
        let ip: Option<std::net::IpAddr> =
            value.split_once('/').map_or(value, |(a, _)| a).parse().ok();
        match ip {
            Some(ip) => {
                if let Some(i) = parsed
                    .iter()
                    .position(|n| n.is_some_and(|n| n.contains(&ip)))
                {
                    return Ok(i);
                }
            }
            None if single => return Ok(0),
            None => {}
        }
        bail!("no matching subnet for {what} {value}")
    };
    for (i, a) in parsed.iter().enumerate() {
        for b in parsed.iter().skip(i + 1) {
            if let (Some(a), Some(b)) = (a, b) {
                if a.contains(&b.network()) || b.contains(&a.network()) {
                    bail!("multiple overlapping subnet configuration is not supported");
                }
            }
        }
    }
    let mut out: Vec<IpamConfigReq> = subnets
        .iter()
        .map(|s| IpamConfigReq {
            subnet: Some(s.clone()),
            ..Default::default()
        })
        .collect();
    for g in gateways {
        let c = &mut out[owner(g, "gateway")?];
        if c.gateway.is_some() {
            bail!("cannot configure multiple gateways for the same subnet");
        }
        c.gateway = Some(g.clone());
    }
    for r in ranges {
        let c = &mut out[owner(r, "ip-range")?];
        if c.ip_range.is_some() {
            bail!("cannot configure multiple ranges on the same subnet");
        }
        c.ip_range = Some(r.clone());
    }
    for (name, value) in aux {
        let c = &mut out[owner(&value, "auxiliary address")?];
        c.auxiliary_addresses
            .get_or_insert_with(BTreeMap::new)
            .insert(name, value);
    }
    Ok(out)
}
