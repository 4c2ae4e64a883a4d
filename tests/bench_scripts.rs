//! The benchmark scripts' own logic, run with bash: a benchmark that measures the wrong thing, or
//! nothing, must fail here rather than print a table.

mod support;

use std::process::Command;

use support::repo;

/// Source benches/app/common.sh (with a `die` that reports) and run `script` after it.
fn with_common(script: &str) -> String {
    let common = repo().join("benches/app/common.sh");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "die() {{ echo \"die: $*\"; exit 1; }}; source '{}'; {script}",
            common.display()
        ))
        .output()
        .expect("bash");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_app_bench_selects_every_asked_stack_beside_the_seed() {
    const ALL: &str = "seed-nice si-shared si-gunicorn si-lean si-forked";
    for (asked, want) in [
        ("", "seed seed-nice si-shared si-gunicorn si-lean si-forked"),
        ("si-gunicorn si-forked", "seed si-gunicorn si-forked"),
        ("seed si-lean", "seed si-lean"),
    ] {
        let script = format!(
            r#"SELECTED=$(select_stacks "{ALL}" "{asked}"); echo "$SELECTED"; for k in seed {ALL}; do wanted "$k" && echo "+$k"; done; true"#
        );
        let out = with_common(&script);
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some(want), "asked {asked:?}");
        let wanted: Vec<&str> = lines.map(|l| l.trim_start_matches('+')).collect();
        assert_eq!(wanted.join(" "), want, "wanted() for {asked:?}");
    }
}

/// Run benches/app/latency.py with `args`; its stdout.
fn latency_py(args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(repo().join("benches/app/latency.py"))
        .args(args)
        .output()
        .expect("python3");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn the_app_bench_reports_each_requests_own_latency_without_synthetic_samples() {
    // 999 requests of 2 ms and one of 150 ms: one real stall is one sample (wrk's correction made ~75 of it,
    // and a p99 near 50 ms). The p99 stays 2 ms, the p99.9 and the maximum show the stall.
    let dir = tempfile::tempdir().unwrap();
    let probe = dir.path().join("probe");
    let mut lines: String = (0..999)
        .map(|i| format!("{} 2000 200\n", 1_000_000 + i))
        .collect();
    lines.push_str("2000000 150000 200\n");
    std::fs::write(&probe, lines).unwrap();
    assert_eq!(
        latency_py(&["probe", probe.to_str().unwrap()]),
        "1000 2.00 2.00 2.00 150.00"
    );
    // The access log cross-check reads the probe's lines only, after the given line, with the largest upstream
    // and queue times among them.
    let log = dir.path().join("access.log");
    let line = |ua: &str, times: &str| {
        format!("127.0.0.1 - - [06/Dec/2026:15:29:01 +0000] \"GET / HTTP/1.1\" 200 143 \"-\" \"{ua}\" {times}\n")
    };
    std::fs::write(
        &log,
        [
            line("probe", "0.900 0.900 0.000"),
            line("probe", "0.004 0.003 0.001"),
            line("-", "0.500 0.010 0.490"),
            line("probe", "0.120 0.002 0.118"),
        ]
        .concat(),
    )
    .unwrap();
    assert_eq!(
        latency_py(&["log", log.to_str().unwrap(), "1"]),
        "2 4.00 120.00 120.00 120.00 3 118"
    );
}

#[test]
fn the_app_bench_summary_gives_ratios_to_the_stack_asked_for() {
    // The priority bench compares the proxy's autogroup at -5 with 0 (its baseline), not with a seed stack.
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results");
    std::fs::write(
        &results,
        "1 nice-5 100 0.1 1.0 2.0 4.0\n1 nice0 100 0.1 4.0 8.0 9.0\n\
         2 nice-5 100 0.1 3.0 2.0 4.0\n2 nice0 100 0.1 6.0 8.0 9.0\n",
    )
    .unwrap();
    let summary = latency_py(&["summary", results.to_str().unwrap(), "nice0"]);
    assert!(
        summary.lines().next().unwrap().contains("p99/nice0"),
        "{summary}"
    );
    let ratios = summary.lines().find(|l| l.starts_with("nice-5")).unwrap();
    // Per round: 1.0 / 4.0 and 3.0 / 6.0.
    assert!(ratios.ends_with("0.38 (0.25–0.50)"), "{ratios}");
}

#[test]
fn the_app_bench_tells_the_end_of_a_round_from_the_rest() {
    // Requests every 100 ms over 10 s; a 30 ms one at 5 s and a 170 ms one 0.2 s before the end (when wrk
    // stops): the end's maximum is reported apart from the steady state's.
    let dir = tempfile::tempdir().unwrap();
    let probe = dir.path().join("probe");
    let lines: String = (0..100u64)
        .map(|i| {
            let us = match i {
                50 => 30_000,
                97 => 170_000,
                _ => 1_000,
            };
            format!("{} {us} 200\n", 1_000_000_000_000 + i * 100_000_000)
        })
        .collect();
    std::fs::write(&probe, lines).unwrap();
    assert_eq!(
        latency_py(&["ends", probe.to_str().unwrap()]),
        "30.00 170.00"
    );
}
