//! Guards on the hot path that a machine can check: `src/proxy.rs` reads the routing
//! table exactly once per request and takes no locks.

#[test]
fn the_proxy_loads_one_snapshot_per_request_and_never_locks() {
    let src = include_str!("../src/proxy.rs");
    let code: String = src
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(
        code.matches("load_full()").count(),
        1,
        "exactly one routing snapshot per request"
    );
    assert!(
        !code.contains(".load()"),
        "use the one load_full() in new_ctx"
    );
    for forbidden in [
        ".lock()", ".read()", ".write()", "Mutex", "RwLock", "block_on",
    ] {
        assert!(
            !code.contains(forbidden),
            "src/proxy.rs must not use {forbidden}"
        );
    }
}
