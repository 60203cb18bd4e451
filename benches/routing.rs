//! The per-request routing cost on a built table: host lookup (with and without
//! upper case and a port) and instance selection, with 1, 10 and 1,000 apps.
//!
//! Run with `cargo bench --bench routing`.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use slotd::metrics::Metrics;
use slotd::routing::{Pick, RoutingTable, SharedCounters};

fn config_with_apps(n: usize) -> String {
    let mut s = String::from("[admin]\ninsecure_no_auth = true\n");
    for i in 0..n {
        s.push_str(&format!(
            r#"
[[app]]
name = "app{i}"
[[app.slot]]
name = "production"
hosts = ["app{i}.example.com"]
instances = ["127.0.0.1:{p1}", "127.0.0.1:{p2}"]
version = "v1"
[app.slot.headers]
X-Slot = "production"
[[app.slot]]
name = "staging"
hosts = ["staging.app{i}.example.com"]
"#,
            p1 = 10000 + (i % 50000),
            p2 = 10001 + (i % 50000),
        ));
    }
    s
}

fn table(n: usize) -> RoutingTable {
    let config = slotd::config::parse(Path::new("bench.toml"), &config_with_apps(n))
        .expect("valid bench config");
    let (state, _) = slotd::state::reconcile(&config, None).expect("seeds");
    RoutingTable::build(
        &config,
        &state,
        &SharedCounters::default(),
        &Metrics::new(),
        1,
    )
}

fn routing(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_and_pick");
    for apps in [1usize, 10, 1000] {
        let t = table(apps);
        let host = format!("app{}.example.com", apps / 2);
        let mixed = format!("App{}.Example.com:8080", apps / 2);
        group.bench_with_input(
            BenchmarkId::new("lowercase_host", apps),
            &host,
            |b, host| {
                b.iter(|| {
                    let r = t.route(black_box(host.as_bytes())).expect("routes");
                    black_box(t.slot(r).pick(None))
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("mixed_case_with_port", apps),
            &mixed,
            |b, host| {
                b.iter(|| {
                    let r = t.route(black_box(host.as_bytes())).expect("routes");
                    match t.slot(r).pick(None) {
                        Pick::Instance(i) => black_box(i),
                        other => panic!("{other:?}"),
                    }
                })
            },
        );
        group.bench_function(BenchmarkId::new("unknown_host", apps), |b| {
            b.iter(|| black_box(t.route(black_box(b"nobody.example.org"))))
        });
    }
    group.finish();
}

criterion_group!(benches, routing);
criterion_main!(benches);
