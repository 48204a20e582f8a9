//! The README's demonstration (`scripts/demo.sh`) as a test, run as an
//! unprivileged user (see `rootless_support`): as root, the user
//! `tapnettest` inside a network namespace this test makes, so the demo's
//! daemon has no route anywhere; else the current user.

mod rootless_support;

#[test]
fn demo_runs_rootless() {
    let run = rootless_support::run_as_user("demo", "scripts/demo.sh");
    let text = &run.text;
    assert!(
        run.status.success(),
        "demo failed ({}):\n{text}",
        run.status
    );
    assert!(
        text.contains("hello from the web container"),
        "the client did not get the page:\n{text}"
    );
    assert!(text.contains("3 received"), "ping failed:\n{text}");
    assert!(
        text.contains(&format!("demo: OK (as {})", run.user)),
        "{text}"
    );
}
