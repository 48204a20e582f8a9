//! `tapnet version` and `tapnet completion`.
//!
//! `version` follows `docker version`: the client part is always printed
//! (it needs no daemon), then the server part from the daemon's
//! `GET /version`. When no daemon answers, the client part is still
//! printed and the command then fails like docker's: the error on one line
//! on stderr and exit 1 (so `tapnet version` doubles as "is the daemon
//! up?"). `--format json` prints one line `{"Client":{...},"Server":{...}}`,
//! with `"Server":null` when no daemon answers.

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, CommandFactory};
use serde_json::{json, Value};

use crate::client::Client;
use crate::daemon::api::{API_VERSION, MIN_API_VERSION};

#[derive(Args, Debug)]
pub struct VersionArgs {
    /// `json`: one JSON object (`Client`, `Server`) on one line.
    #[arg(long)]
    format: Option<String>,
}

/// The client part: this binary's version and the Docker Engine API
/// versions its daemon serves.
fn client_part() -> Value {
    json!({
        "Version": env!("CARGO_PKG_VERSION"),
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "Os": std::env::consts::OS,
        "Arch": std::env::consts::ARCH,
    })
}

/// Prints one `docker version`-style section.
fn print_part(title: &str, v: &Value) {
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    let api = match v["MinAPIVersion"].as_str() {
        Some(min) => format!("{} (minimum version {min})", s("ApiVersion")),
        None => s("ApiVersion"),
    };
    let os = match v["Arch"].as_str() {
        Some(arch) => format!("{}/{arch}", s("Os")),
        None => s("Os"),
    };
    println!("{title}:");
    println!(" Version:      {}", s("Version"));
    println!(" API version:  {api}");
    println!(" OS/Arch:      {os}");
}

pub fn version(c: &Client, a: VersionArgs) -> anyhow::Result<ExitCode> {
    let json = match a.format.as_deref() {
        None => false,
        Some("json") => true,
        Some(f) => anyhow::bail!("unsupported --format {f:?}: only json"),
    };
    let client = client_part();
    let server = c.get::<Value>("/version");
    if json {
        let server = server.as_ref().map_or(Value::Null, Value::clone);
        println!("{}", json!({ "Client": client, "Server": server }));
    } else {
        print_part("Client", &client);
        if let Ok(s) = &server {
            println!();
            print_part("Server", s);
        }
    }
    // The client part is out before the error line.
    let _ = std::io::stdout().flush();
    server?;
    Ok(ExitCode::SUCCESS)
}

/// `tapnet completion SHELL`: the completion script, generated from the
/// CLI's definition. The hidden re-exec entry points (`__sandbox-init`,
/// `__netns-helper`) are not clap subcommands, so they never appear.
pub fn completion(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    let mut cmd = super::Cli::command();
    clap_complete::generate(shell, &mut cmd, "tapnet", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}
