//! Every container command, rootless: `tests/rootless_cli.sh` runs as an
//! ordinary user (see `rootless_support`: `tapnettest` inside a network
//! namespace this test creates when run as root, else the current user).

mod rootless_support;

#[test]
fn every_container_command_works_rootless() {
    let run = rootless_support::run_as_user("cli", "tests/rootless_cli.sh");
    assert!(
        run.status.success() && run.text.contains("ROOTLESS OK"),
        "rootless script: {}\n{}\n--- trace\n{}\n--- daemon log\n{}",
        run.status,
        run.text,
        std::fs::read_to_string(run.work.join("trace")).unwrap_or_default(),
        std::fs::read_to_string(run.work.join("daemon.log")).unwrap_or_default()
    );
}
