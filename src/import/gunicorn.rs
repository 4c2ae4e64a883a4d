//! gunicorn command lines, as supervisord programs run them: what stackinit takes over (the bound
//! socket, the worker count) and what stays with gunicorn. gunicorn takes pre-bound sockets from
//! LISTEN_FDS and then ignores its own `bind`, so `--bind` becomes `listen` and each worker becomes a
//! replica with its own socket.
#![forbid(unsafe_code)]

use std::path::Path;

use crate::config::values::ListenAddr;

/// What a gunicorn command line says, and the command stackinit runs instead.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Gunicorn {
    /// The command without `--bind` and `--daemon`, with `--workers 1` in place of `--workers N`.
    pub argv: Vec<String>,
    /// `--bind` values, in order.
    pub binds: Vec<String>,
    pub workers: Option<u32>,
    /// `--graceful-timeout`, seconds (gunicorn's default is 30).
    pub graceful_timeout: u64,
    /// `--timeout`, seconds: how long a worker may be silent, booting included.
    pub timeout: Option<u64>,
    /// The sync worker with one thread serves one request at a time (`max_in_flight = 1`); gthread
    /// serves `threads`; the async classes have no fixed limit (None).
    pub in_flight: Option<u32>,
    /// `-c FILE`: it may set bind and workers too, which the import cannot see.
    pub config_file: Option<String>,
    pub daemon: bool,
}

/// gunicorn's `--graceful-timeout` default, in seconds.
pub const DEFAULT_GRACEFUL_TIMEOUT: u64 = 30;

/// Whether `argv` runs gunicorn: `gunicorn ...`, `/venv/bin/gunicorn ...`, `python3 -m gunicorn ...`.
pub fn is_gunicorn(argv: &[String]) -> bool {
    let base = |s: &String| {
        Path::new(s)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    match argv {
        [first, ..] if matches!(base(first).as_str(), "gunicorn" | "gunicorn3") => true,
        [first, m, module, ..] => {
            base(first).starts_with("python") && m == "-m" && module == "gunicorn"
        }
        _ => false,
    }
}

/// An option's value: `--name VALUE`, `--name=VALUE`, `-x VALUE` or `-xVALUE`. Returns the value and
/// how many arguments it used.
fn option_value<'a>(
    args: &'a [String],
    long: &str,
    short: Option<&str>,
) -> Option<(&'a str, usize)> {
    let first = args.first()?;
    if first == long || Some(first.as_str()) == short {
        return args.get(1).map(|v| (v.as_str(), 2));
    }
    if let Some(v) = first.strip_prefix(long).and_then(|r| r.strip_prefix('=')) {
        return Some((v, 1));
    }
    let short = short?;
    let v = first
        .strip_prefix(short)
        .filter(|v| !v.is_empty() && !first.starts_with("--"))?;
    Some((v, 1))
}

fn number<T: std::str::FromStr>(value: &str, what: &str) -> Result<T, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("gunicorn {what} {value:?} is not a number"))
}

/// Read a gunicorn command line. Unknown options pass through untouched.
pub fn parse(argv: &[String]) -> Result<Gunicorn, String> {
    let mut g = Gunicorn {
        graceful_timeout: DEFAULT_GRACEFUL_TIMEOUT,
        ..Gunicorn::default()
    };
    let (mut class, mut threads) = ("sync".to_string(), 1u32);
    let mut i = 0;
    while i < argv.len() {
        let rest = &argv[i..];
        if let Some((v, used)) = option_value(rest, "--bind", Some("-b")) {
            g.binds.push(v.to_string());
            i += used;
        } else if let Some((v, used)) = option_value(rest, "--workers", Some("-w")) {
            g.workers = Some(number(v, "--workers")?);
            g.argv.extend(["--workers".to_string(), "1".to_string()]);
            i += used;
        } else if rest[0] == "--daemon" || rest[0] == "-D" {
            g.daemon = true;
            i += 1;
        } else {
            let used = read_kept(rest, &mut g, &mut class, &mut threads)?;
            g.argv.extend(rest[..used].iter().cloned());
            i += used;
        }
    }
    g.in_flight = match class.as_str() {
        "sync" if threads <= 1 => Some(1),
        "sync" | "gthread" => Some(threads.max(1)),
        _ => None,
    };
    Ok(g)
}

/// Options that stay in the command but matter to the conversion; returns how many arguments they use.
fn read_kept(
    rest: &[String],
    g: &mut Gunicorn,
    class: &mut String,
    threads: &mut u32,
) -> Result<usize, String> {
    if let Some((v, used)) = option_value(rest, "--graceful-timeout", None) {
        g.graceful_timeout = number(v, "--graceful-timeout")?;
        return Ok(used);
    }
    if let Some((v, used)) = option_value(rest, "--timeout", Some("-t")) {
        g.timeout = Some(number(v, "--timeout")?);
        return Ok(used);
    }
    if let Some((v, used)) = option_value(rest, "--worker-class", Some("-k")) {
        *class = v.rsplit('.').next().unwrap_or(v).to_lowercase();
        if *class == "syncworker" {
            *class = "sync".into();
        } else if *class == "threadworker" {
            *class = "gthread".into();
        }
        return Ok(used);
    }
    if let Some((v, used)) = option_value(rest, "--threads", None) {
        *threads = number(v, "--threads")?;
        return Ok(used);
    }
    if let Some((v, used)) = option_value(rest, "--config", Some("-c")) {
        g.config_file = Some(v.to_string());
        return Ok(used);
    }
    Ok(1)
}

/// A `--bind` value as a stackinit listen address, with a note when the meaning shifts. Relative unix
/// paths are taken from `directory` (where supervisord starts the program). `Err` says why not.
pub fn listen_of(bind: &str, directory: Option<&str>) -> Result<(String, Option<String>), String> {
    if let Some(path) = bind
        .strip_prefix("unix://")
        .or_else(|| bind.strip_prefix("unix:"))
    {
        let absolute = if path.starts_with('/') {
            path.to_string()
        } else {
            let base = directory.unwrap_or("/");
            format!("{}/{path}", base.trim_end_matches('/'))
        };
        let text = format!("unix:{absolute}");
        ListenAddr::parse(&text)?;
        return Ok((text, None));
    }
    if bind.starts_with("fd://") {
        return Err("an inherited fd: stackinit binds the socket itself".into());
    }
    let netloc = bind.strip_prefix("tcp://").unwrap_or(bind);
    let (host, port) = split_host_port(netloc)?;
    let (ip, note) = match host.to_lowercase().as_str() {
        "" | "0.0.0.0" | "*" => ("0.0.0.0".to_string(), None),
        "localhost" => (
            "127.0.0.1".to_string(),
            Some(format!(
                "{bind}: localhost is 127.0.0.1 here (stackinit binds addresses, not names)"
            )),
        ),
        other => (other.to_string(), None),
    };
    let text = if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    };
    ListenAddr::parse(&text).map_err(|_| {
        format!(
            "{bind:?} is not an IP address and port (stackinit binds addresses, not host names)"
        )
    })?;
    Ok((text, note))
}

/// gunicorn's own reading: `[v6]:port`, `host:port`, `host` (port 8000), `:port`.
fn split_host_port(netloc: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = netloc.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{netloc:?}: unclosed '['"))?;
        (host, after.strip_prefix(':').unwrap_or("8000"))
    } else {
        match netloc.split_once(':') {
            Some((host, port)) => (host, port),
            None => (netloc, "8000"),
        }
    };
    let port = port
        .parse()
        .map_err(|_| format!("{port:?} is not a valid port number"))?;
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn recognises_gunicorn_however_it_is_started() {
        assert!(is_gunicorn(&argv("/usr/local/bin/gunicorn app:wsgi")));
        assert!(is_gunicorn(&argv("gunicorn3 app:wsgi")));
        assert!(is_gunicorn(&argv(
            "/venv/bin/python3.11 -m gunicorn app:wsgi"
        )));
        assert!(!is_gunicorn(&argv("/usr/bin/uwsgi --http :8000")));
        assert!(!is_gunicorn(&argv("python3 manage.py runserver")));
    }

    #[test]
    fn takes_over_bind_workers_and_daemon() {
        let g = parse(&argv(
            "gunicorn --workers 3 --bind unix:/srv/app.sock -D --graceful-timeout=20 -t 60 proj.wsgi:application",
        ))
        .unwrap();
        assert_eq!(g.binds, vec!["unix:/srv/app.sock"]);
        assert_eq!(g.workers, Some(3));
        assert!(g.daemon);
        assert_eq!(g.graceful_timeout, 20);
        assert_eq!(g.timeout, Some(60));
        assert_eq!(g.in_flight, Some(1));
        assert_eq!(
            g.argv,
            argv("gunicorn --workers 1 --graceful-timeout=20 -t 60 proj.wsgi:application")
        );
        let g = parse(&argv(
            "gunicorn -w4 -b127.0.0.1:8000 -b [::1]:8000 -k gevent app",
        ))
        .unwrap();
        assert_eq!(g.workers, Some(4));
        assert_eq!(g.binds, vec!["127.0.0.1:8000", "[::1]:8000"]);
        assert_eq!(g.in_flight, None);
        let g = parse(&argv("gunicorn --threads 8 -c conf.py app")).unwrap();
        assert_eq!(g.in_flight, Some(8));
        assert_eq!(g.config_file.as_deref(), Some("conf.py"));
        assert!(parse(&argv("gunicorn --workers many app")).is_err());
    }

    #[test]
    fn bind_addresses_become_listen_addresses() {
        let l = |b: &str, dir: Option<&str>| listen_of(b, dir).map(|(l, _)| l);
        assert_eq!(l("unix:/run/app.sock", None).unwrap(), "unix:/run/app.sock");
        assert_eq!(
            l("unix:app.sock", Some("/srv/app/")).unwrap(),
            "unix:/srv/app/app.sock"
        );
        assert_eq!(l("127.0.0.1:8000", None).unwrap(), "127.0.0.1:8000");
        assert_eq!(l("0.0.0.0", None).unwrap(), "0.0.0.0:8000");
        assert_eq!(l(":9000", None).unwrap(), "0.0.0.0:9000");
        assert_eq!(l("[::1]:8001", None).unwrap(), "[::1]:8001");
        assert_eq!(l("tcp://10.0.0.1:80", None).unwrap(), "10.0.0.1:80");
        assert!(listen_of("localhost:8000", None).unwrap().1.is_some());
        assert!(l("app.internal:8000", None).is_err());
        assert!(l("fd://3", None).is_err());
        assert!(l("127.0.0.1:http", None).is_err());
    }
}
