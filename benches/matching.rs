//! Micro-benchmarks of the proxy's per-request routing: server_name and location selection.

use criterion::{black_box, criterion_group, criterion_main, Criterion};

use stackinit::proxy::location::Locations;
use stackinit::proxy::server_name::{normalize_host, ServerNames};

fn server_names() -> ServerNames {
    let servers: Vec<Vec<String>> = vec![
        vec!["example.org".into(), "www.example.org".into()],
        vec!["*.example.org".into()],
        vec!["www.example.*".into()],
        vec![r"~^api\d+\.".into()],
        vec![
            "*.compute.amazonaws.com".into(),
            "*.compute-1.amazonaws.com".into(),
            "*.compute.internal".into(),
            "*.ec2.internal".into(),
        ],
    ];
    ServerNames::new(&servers, 4).expect("valid names")
}

fn bench_server_names(c: &mut Criterion) {
    let names = server_names();
    let mut group = c.benchmark_group("server_name");
    for (label, host) in [
        ("exact", "www.example.org"),
        (
            "ec2_public",
            "ec2-54-12-200-1.us-west-2.compute.amazonaws.com:80",
        ),
        ("ec2_private", "ip-10-0-0-5.ec2.internal"),
        ("trailing", "www.example.co.uk"),
        ("regex", "api12.service"),
        ("default_ip", "10.0.0.5"),
    ] {
        group.bench_function(label, |b| {
            b.iter(|| {
                let host = normalize_host(black_box(host.as_bytes())).ok();
                names.select(host.as_deref())
            })
        });
    }
    group.finish();
}

fn bench_locations(c: &mut Criterion) {
    let paths = [
        "/",
        "/static/",
        "/static/img/",
        "/api/",
        "/api/v2/",
        "/media/",
        "/healthcheck",
        "/admin/",
    ];
    let locations = Locations::new(
        paths
            .iter()
            .map(|p| (*p, false))
            .chain([("/favicon.ico", true)]),
    );
    let mut group = c.benchmark_group("location");
    for (label, path) in [
        ("root", "/index"),
        ("deep", "/static/img/logo.png"),
        ("exact", "/favicon.ico"),
    ] {
        group.bench_function(label, |b| b.iter(|| locations.select(black_box(path))));
    }
    group.finish();
}

criterion_group!(benches, bench_server_names, bench_locations);
criterion_main!(benches);
