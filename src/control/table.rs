//! How the CLI shows status and reload answers to people.
#![forbid(unsafe_code)]

use crate::api::{DiffAction, DiffReply, ReloadReply, ServiceStatus, State};

/// `status` as a table: NAME STATE READY PID UPTIME RESTARTS LAST-EXIT, plus REASON when any
/// service has one. Columns are padded to their widest cell; lines carry no trailing blanks.
pub fn format_table(services: &[ServiceStatus]) -> String {
    let with_reason = services.iter().any(|service| service.reason.is_some());
    let mut header = vec![
        "NAME",
        "STATE",
        "READY",
        "PID",
        "UPTIME",
        "RESTARTS",
        "LAST-EXIT",
    ];
    if with_reason {
        header.push("REASON");
    }
    let mut rows: Vec<Vec<String>> = vec![header.into_iter().map(String::from).collect()];
    for service in services {
        let mut row = vec![
            one_line(&service.name),
            service.state.as_str().to_owned(),
            if service.ready { "yes" } else { "no" }.to_owned(),
            service
                .pid
                .map_or_else(|| "-".to_owned(), |pid| pid.to_string()),
            service
                .uptime_secs
                .map_or_else(|| "-".to_owned(), humanize_duration),
            service.restarts.to_string(),
            service
                .last_exit
                .as_deref()
                .map_or_else(|| "-".to_owned(), one_line),
        ];
        if with_reason {
            row.push(
                service
                    .reason
                    .as_deref()
                    .map_or_else(|| "-".to_owned(), one_line),
            );
        }
        rows.push(row);
    }
    let columns = rows[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|column| {
            rows.iter()
                .map(|row| row[column].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (column, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if column + 1 < columns {
                line.extend(std::iter::repeat_n(
                    ' ',
                    widths[column] - cell.chars().count() + 2,
                ));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Uptime the way people read it: `45s`, `12m3s`, `3h12m`, `2d5h`.
pub fn humanize_duration(secs: f64) -> String {
    let total = if secs.is_finite() && secs > 0.0 {
        secs as u64
    } else {
        0
    };
    let (days, hours, minutes, seconds) = (
        total / 86_400,
        total % 86_400 / 3_600,
        total % 3_600 / 60,
        total % 60,
    );
    if days > 0 {
        format!("{days}d{hours}h")
    } else if hours > 0 {
        format!("{hours}h{minutes}m")
    } else if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}

/// Whether `status NAME` counts this process as fine: running, or a oneshot that finished with exit 0.
pub fn is_fine(service: &ServiceStatus) -> bool {
    match service.state {
        State::Running => true,
        State::Exited => service.oneshot && service.last_exit.as_deref() == Some("exit 0"),
        _ => false,
    }
}

/// The answer to `reload`, one line per kind of change.
pub fn format_reload(reply: &ReloadReply) -> String {
    let list = |names: &[String]| {
        if names.is_empty() {
            "-".to_owned()
        } else {
            names.join(", ")
        }
    };
    format!(
        "added: {}\nremoved: {}\nchanged: {}\nunchanged: {}\n",
        list(&reply.added),
        list(&reply.removed),
        list(&reply.changed),
        list(&reply.unchanged)
    )
}

/// The answer to `diff`: a line per service (its action, and what changed), then the proxy's changes.
pub fn format_diff(reply: &DiffReply) -> String {
    let mut out = String::new();
    let width = reply
        .services
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(0)
        .max(7);
    for s in &reply.services {
        let mut line = format!(
            "{:<width$}  {:<15}  {}",
            s.name,
            s.action.as_str(),
            s.config
        );
        if !s.keys.is_empty() {
            line.push_str(&format!(" ({})", s.keys.join(", ")));
        }
        let mixed: Vec<String> = s
            .units
            .iter()
            .filter(|u| u.action != s.action)
            .map(|u| format!("{} {}", u.name, u.action.as_str()))
            .collect();
        if !mixed.is_empty() {
            line.push_str(&format!("; {}", mixed.join(", ")));
        }
        out.push_str(&one_line(&line));
        out.push('\n');
    }
    if reply.proxy.action != DiffAction::Unchanged || !reply.proxy.changes.is_empty() {
        out.push_str(&format!(
            "{:<width$}  {}\n",
            "proxy",
            reply.proxy.action.as_str()
        ));
        for change in &reply.proxy.changes {
            out.push_str(&format!("  {}\n", one_line(change)));
        }
    }
    if reply.init_changed {
        out.push_str("[init] changed: that takes effect at the next boot\n");
    }
    if out.is_empty() {
        out.push_str("no services\n");
    }
    out
}

/// Control characters would break the table's rows; show them as spaces.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, state: State) -> ServiceStatus {
        let running = state == State::Running;
        // From JSON, so fields added later with serde defaults need no change here.
        serde_json::from_value(serde_json::json!({
            "name": name,
            "service": name.split('@').next().unwrap_or(name),
            "replica": null,
            "state": state,
            "ready": running,
            "pid": running.then_some(4242),
            "restarts": 0,
            "uptime_secs": running.then_some(11_532.4),
            "last_exit": null,
            "reason": null,
            "oneshot": false,
            "stdout": "/logs/x.out.log",
            "stderr": "/logs/x.err.log",
        }))
        .unwrap()
    }

    #[test]
    fn humanized_uptimes() {
        assert_eq!(humanize_duration(0.4), "0s");
        assert_eq!(humanize_duration(45.9), "45s");
        assert_eq!(humanize_duration(723.0), "12m3s");
        assert_eq!(humanize_duration(11_532.0), "3h12m");
        assert_eq!(humanize_duration(190_800.0), "2d5h");
        assert_eq!(humanize_duration(-3.0), "0s");
        assert_eq!(humanize_duration(f64::NAN), "0s");
    }

    #[test]
    fn table_without_reasons() {
        let mut stopped = service("worker", State::Stopped);
        stopped.last_exit = Some("signal KILL".into());
        stopped.restarts = 12;
        let table = format_table(&[service("app@0", State::Running), stopped]);
        let expected = "\
NAME    STATE    READY  PID   UPTIME  RESTARTS  LAST-EXIT
app@0   running  yes    4242  3h12m   0         -
worker  stopped  no     -     -       12        signal KILL
";
        assert_eq!(table, expected);
    }

    #[test]
    fn reason_column_only_when_needed() {
        let mut fatal = service("app@1", State::Fatal);
        fatal.reason = Some("start limit reached:\n5 failed starts".into());
        let table = format_table(&[service("app@0", State::Running), fatal]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].ends_with("LAST-EXIT  REASON"), "{table}");
        assert!(lines[1].ends_with("  -"), "{table}");
        assert!(
            lines[2].ends_with("start limit reached: 5 failed starts"),
            "{table}"
        );
    }

    #[test]
    fn fine_means_running_or_a_finished_job() {
        assert!(is_fine(&service("app", State::Running)));
        assert!(!is_fine(&service("app", State::Starting)));
        assert!(!is_fine(&service("app", State::Backoff)));
        let mut job = service("migrate", State::Exited);
        job.oneshot = true;
        job.last_exit = Some("exit 0".into());
        assert!(is_fine(&job));
        job.last_exit = Some("exit 1".into());
        assert!(!is_fine(&job));
        let mut daemon = service("app", State::Exited);
        daemon.last_exit = Some("exit 0".into());
        assert!(!is_fine(&daemon));
    }

    #[test]
    fn reload_summary() {
        let reply = ReloadReply {
            added: vec!["web".into()],
            removed: vec![],
            changed: vec!["app".into(), "proxy".into()],
            unchanged: vec!["migrate".into()],
        };
        assert_eq!(
            format_reload(&reply),
            "added: web\nremoved: -\nchanged: app, proxy\nunchanged: migrate\n"
        );
    }
}
