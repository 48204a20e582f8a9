//! The command-line interface (see DESIGN.md's contract).

use std::process::ExitCode;

pub fn main() -> ExitCode {
    // Hidden re-exec entry points of the sandbox machinery come first: they
    // must not go through clap or start any thread.
    match std::env::args().nth(1).as_deref() {
        Some("__sandbox-init") => return crate::sandbox::init_main(),
        Some("__netns-helper") => return crate::sandbox::netns_helper_main(),
        _ => {}
    }
    eprintln!("tapnet: not implemented yet");
    ExitCode::from(2)
}
