//! The committed `pcap-fixtures/` are exactly what
//! `switch/examples/gen_fixtures.rs` generates: a changed rule or builder
//! that is not regenerated (or a hand-edited fixture) fails here.

#[allow(dead_code)]
#[path = "../examples/gen_fixtures.rs"]
mod gen;

use std::path::Path;

#[test]
fn committed_fixtures_match_the_generator() {
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pcap-fixtures");
    let fresh = std::env::temp_dir().join(format!("tapnet-fixtures-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&fresh);
    let cases = gen::cases();
    for case in &cases {
        case.write(&fresh).expect("generate fixture");
    }
    let mut stale = vec![];
    for case in &cases {
        for file in ["topology.toml", "in.pcapng", "expected.pcapng", "README"] {
            let a = std::fs::read(fresh.join(case.dir).join(file)).unwrap();
            let b = std::fs::read(committed.join(case.dir).join(file)).unwrap_or_default();
            if a != b {
                stale.push(format!("{}/{file}", case.dir));
            }
        }
    }
    let mut dirs: Vec<String> = std::fs::read_dir(&committed)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut want: Vec<String> = cases.iter().map(|c| c.dir.to_string()).collect();
    want.sort();
    let _ = std::fs::remove_dir_all(&fresh);
    assert_eq!(
        dirs, want,
        "pcap-fixtures/ holds directories the generator does not make"
    );
    assert!(
        stale.is_empty(),
        "stale fixtures (regenerate: cargo run -p tapnet-switch --example gen_fixtures -- pcap-fixtures): {stale:?}"
    );
}
