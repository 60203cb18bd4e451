//! The per-request cost of slotd's own hot-path code on a built table, with 1, 10 and
//! 1,000 apps: host lookup (with and without upper case and a port), slot selection,
//! instance selection, upstream header preparation (forwarding headers and the slot's
//! sticky and settings headers) and the per-request metric updates.
//!
//! Run with `cargo bench --bench routing`.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use http::HeaderValue;
use pingora::http::RequestHeader;
use slotd::metrics::Metrics;
use slotd::proxy::prepare_upstream_request;
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
[app.settings_headers]
API_URL = "X-Api-Url"
FEATURE = "X-Feature"
[app.slot.headers]
X-Slot = "production"
[app.slot.settings]
API_URL = "http://api.internal"
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
                    black_box(t.slot(r).pick(&[]))
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("mixed_case_with_port", apps),
            &mixed,
            |b, host| {
                b.iter(|| {
                    let r = t.route(black_box(host.as_bytes())).expect("routes");
                    match t.slot(r).pick(&[]) {
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

    // What a request costs past routing, on the 1,000-app table.
    let t = table(1000);
    let r = t.route(b"app500.example.com").expect("routes");
    let slot = t.slot(r);
    let mut group = c.benchmark_group("per_request");
    group.bench_function("slot_selection", |b| {
        b.iter(|| black_box(t.slot(black_box(r))))
    });
    group.bench_function("instance_selection", |b| {
        b.iter(|| black_box(slot.pick(black_box(&[]))))
    });
    let host = HeaderValue::from_static("app500.example.com");
    let client = Some(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)));
    let mut template = RequestHeader::build("GET", b"/cart?item=42", None).expect("request");
    template
        .insert_header("Host", "app500.example.com")
        .unwrap();
    template.insert_header("User-Agent", "bench/1.0").unwrap();
    template.insert_header("Accept", "*/*").unwrap();
    template
        .insert_header("X-Feature", "from-the-client")
        .unwrap();
    group.bench_function("header_preparation", |b| {
        b.iter_batched_ref(
            || template.clone(),
            |req| prepare_upstream_request(req, Some(&host), client, Some(slot)).expect("ok"),
            criterion::BatchSize::SmallInput,
        )
    });
    let head = b"GET /cart?item=42 HTTP/1.1\r\nHost: app500.example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) bench/1.0\r\nAccept: text/html,application/xhtml+xml\r\nAccept-Language: en-GB,en;q=0.9\r\nCookie: session=0123456789abcdef0123456789abcdef\r\nContent-Length: 0\r\n\r\n";
    let limits = slotd::config::ClientLimits::default();
    group.bench_function("request_screening", |b| {
        b.iter(|| black_box(slotd::screen::screen_head(black_box(head), &limits)))
    });
    group.bench_function("metrics_update", |b| {
        b.iter(|| {
            slot.metrics.active.inc();
            slot.metrics
                .observe(black_box(200), Duration::from_micros(150), 0, 512);
            slot.metrics.active.dec();
        })
    });
    group.finish();
}

criterion_group!(benches, routing);
criterion_main!(benches);
