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
