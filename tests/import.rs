//! `stackinit import` and `stackinit diff`, black box: the real binary on real files.
//!
//! - a table of supervisord and nginx snippets in the shapes public deployments use, each with the TOML
//!   lines it must produce or the "not converted" line (FILE:LINE: what: why) it must report;
//! - the INI dialect and `environment=` pairs against supervisord's own Python parser;
//! - the seed's supervisor program and nginx site (tests/fixtures/import/seed) imported into a stack
//!   that serves the sample Django app end to end;
//! - an imported nginx site against nginx itself: the same server and location for every Host and path;
//! - `diff` and `reload --dry-run` against a running stack, for each kind of change.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::e2e::{self, timed_get, FakeImds};
use support::nginx::{outcome, request_for, start_nginx};
use support::proxy::{Echo, ProxyProcess};
use support::{free_port, repo, temp_dir, wait_until, Stack, BIN};

/// One run of `stackinit import ... --out DIR/out.toml`.
struct Run {
    ok: bool,
    toml: String,
    stderr: String,
}

impl Run {
    /// The "not converted:" lines.
    fn skipped(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter_map(|l| l.strip_prefix("not converted: "))
            .collect()
    }
}

fn import(dir: &Path, args: &[String]) -> Run {
    let out = dir.join("out.toml");
    let _ = std::fs::remove_file(&out);
    let output = Command::new(BIN)
        .arg("import")
        .args(args)
        .arg("--out")
        .arg(&out)
        .current_dir(dir)
        .output()
        .expect("run stackinit import");
    Run {
        ok: output.status.success(),
        toml: std::fs::read_to_string(&out).unwrap_or_default(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// What a snippet must give.
enum Want {
    /// A line of the TOML starts with this (after indentation).
    Line(&'static str),
    /// No line of the TOML starts with this.
    NoLine(&'static str),
    /// A "not converted" line contains this (FILE:LINE is written `:LINE:`).
    Skip(&'static str),
    /// Nothing was left out.
    NoSkips,
    /// The TOML contains this text (a comment).
    Text(&'static str),
    /// The import fails, and its error contains this.
    Fails(&'static str),
}

/// A snippet: files written to a temp dir (`{dir}` in them is that dir), and the import's arguments.
struct Case {
    name: &'static str,
    files: &'static [(&'static str, &'static str)],
    args: &'static [&'static str],
    want: &'static [Want],
}

use Want::*;

const SUP: &[&str] = &["--supervisor", "s.conf"];
const NGX: &[&str] = &["--nginx", "site"];

const SUPERVISORD_CASES: &[Case] = &[
        Case {
            name: "numprocs with a process_name pattern",
            files: &[("s.conf", "[program:worker]\ncommand=/usr/bin/python3 -m celery worker\nprocess_name=%(program_name)s_%(process_num)02d\nnumprocs=4\n")],
            args: SUP,
            want: &[Line("replicas = 4"), Skip(":3: process_name: stackinit names replicas itself: worker_00, worker_01 ... are worker@0, worker@1")],
        },
        Case {
            name: "numprocs of gunicorn on consecutive ports",
            files: &[("s.conf", "[program:web]\ncommand=/srv/venv/bin/gunicorn --bind 127.0.0.1:80%(process_num)02d app:wsgi\nprocess_name=web-%(process_num)s\nnumprocs=3\n")],
            args: SUP,
            want: &[Line("replicas = 3"), Line("listen = \"127.0.0.1:8000\""), Line("command = [\"/srv/venv/bin/gunicorn\", \"app:wsgi\"]"), Line("max_in_flight = 1")],
        },
        Case {
            name: "[include] globs, sorted, hidden files left alone",
            files: &[
                ("s.conf", "[supervisord]\nnodaemon=true\n\n[include]\nfiles = conf.d/*.conf\n"),
                ("conf.d/b.conf", "[program:b]\ncommand=/bin/b\n"),
                ("conf.d/a.conf", "[program:a]\ncommand=/bin/a\n"),
                ("conf.d/.c.conf", "[program:c]\ncommand=/bin/c\n"),
            ],
            args: SUP,
            want: &[Line("[service.a]"), Line("[service.b]"), NoLine("[service.c]"), Skip(":2: nodaemon: not needed")],
        },
        Case {
            name: "a group, and %(group_name)s",
            files: &[("s.conf", "[group:site]\nprograms=web,worker\npriority=10\n\n[program:web]\ncommand=/bin/web --name %(group_name)s\n\n[program:worker]\ncommand=/bin/worker\n")],
            args: SUP,
            want: &[Line("command = [\"/bin/web\", \"--name\", \"site\"]"), Skip(":1: [group:site]: stackinit has no groups: web, worker are separate services")],
        },
        Case {
            name: "environment with quoted values, commas and an empty one",
            files: &[("s.conf", "[program:app]\ncommand=/bin/app\nenvironment=DJANGO_SETTINGS_MODULE=\"mysite.settings\",PATH=\"/srv/venv/bin:/usr/bin\",GREETING='hello, world',EMPTY=\"\"\n")],
            args: SUP,
            want: &[Line("environment = { DJANGO_SETTINGS_MODULE = \"mysite.settings\", EMPTY = \"\", GREETING = \"hello, world\", PATH = \"/srv/venv/bin:/usr/bin\" }"), NoSkips],
        },
        Case {
            name: "environment supervisord itself refuses",
            files: &[("s.conf", "[program:app]\ncommand=/bin/app\nenvironment=SECRET=abc$def\n")],
            args: SUP,
            want: &[Fails("s.conf:3: environment: unexpected end of key/value pairs")],
        },
        Case {
            name: "multi-line environment with [supervisord] environment and %(ENV_X)s",
            files: &[("s.conf", "[supervisord]\nenvironment=BASE=\"/srv\"\n\n[program:app]\ncommand=%(ENV_BASE)s/bin/app\nenvironment=\n    LANG=\"C.UTF-8\",\n    APP_HOME=\"%(ENV_BASE)s/app\"\n")],
            args: SUP,
            want: &[Line("command = [\"/srv/bin/app\"]"), Line("environment = { APP_HOME = \"/srv/app\", BASE = \"/srv\", LANG = \"C.UTF-8\" }"), Text("with [supervisord] environment")],
        },
        Case {
            name: "autorestart=unexpected with exitcodes",
            files: &[("s.conf", "[program:job]\ncommand=/bin/job\nautorestart=unexpected\nexitcodes=0,2\n")],
            args: SUP,
            want: &[Line("restart = \"on-failure\""), Line("success_exit_codes = [0, 2]")],
        },
        Case {
            name: "no autorestart means supervisord's default, unexpected",
            files: &[("s.conf", "[program:job]\ncommand=/bin/job\n")],
            args: SUP,
            want: &[Line("restart = \"on-failure\""), Text("supervisord's default, autorestart=unexpected")],
        },
        Case {
            name: "autorestart=false, startsecs, startretries",
            files: &[("s.conf", "[program:once]\ncommand=/bin/once\nautorestart=false\nstartsecs=0\nstartretries=5\n")],
            args: SUP,
            want: &[Line("restart = \"never\""), Line("start_secs = \"0s\""), Line("start_limit = 6")],
        },
        Case {
            name: "autorestart with a value supervisord refuses",
            files: &[("s.conf", "[program:x]\ncommand=/bin/x\nautorestart=sometimes\n")],
            args: SUP,
            want: &[Fails("s.conf:3: invalid autorestart value \"sometimes\"")],
        },
        Case {
            name: "stopsignal, stopwaitsecs, stopasgroup",
            files: &[("s.conf", "[program:w]\ncommand=/bin/w\nstopsignal=QUIT\nstopwaitsecs=60\nstopasgroup=true\nkillasgroup=true\n")],
            args: SUP,
            want: &[Line("stop_signal = \"QUIT\""), Line("stop_grace = \"60s\""), Skip(":5: stopasgroup: stackinit sends the stop signal to the main process only")],
        },
        Case {
            name: "gunicorn's graceful timeout outlasts stopwaitsecs",
            files: &[("s.conf", "[program:web]\ncommand=gunicorn --graceful-timeout 20 --bind 127.0.0.1:9000 app:wsgi\nstopwaitsecs=5\n")],
            args: SUP,
            want: &[Line("stop_grace = \"30s\""), Line("listen = \"127.0.0.1:9000\""), Text("stopwaitsecs=5 killed it mid-drain")],
        },
        Case {
            name: "gunicorn --timeout longer than stackinit waits by default",
            files: &[("s.conf", "[program:reports]\ncommand=gunicorn --timeout 120 --bind 127.0.0.1:9000 app:wsgi\n")],
            args: SUP,
            want: &[Line("ready_timeout = \"120s\""), Line("command = [\"gunicorn\", \"--timeout\", \"120\", \"app:wsgi\"]"), Text("the proxy answers 504 after its upstream_timeout")],
        },
        Case {
            name: "gunicorn --workers and --daemon",
            files: &[("s.conf", "[program:web]\ncommand=gunicorn -w 4 -D -b unix:/run/web.sock proj.wsgi\n")],
            args: SUP,
            want: &[Line("replicas = 4"), Line("command = [\"gunicorn\", \"--workers\", \"1\", \"proj.wsgi\"]"), Line("listen = \"unix:/run/web.sock\""), Text("--daemon removed"), Text("to keep gunicorn's own pool instead")],
        },
        Case {
            name: "gunicorn bound to a host name keeps binding itself",
            files: &[("s.conf", "[program:web]\ncommand=gunicorn --workers 2 --bind app.internal:8000 proj.wsgi\n")],
            args: SUP,
            want: &[NoLine("listen ="), NoLine("replicas ="), Line("command = [\"gunicorn\", \"--workers\", \"2\", \"--bind\", \"app.internal:8000\", \"proj.wsgi\"]"), Skip(":2: --bind app.internal:8000: \"app.internal:8000\" is not an IP address")],
        },
        Case {
            name: "priority becomes start order",
            files: &[("s.conf", "[program:redis]\ncommand=/bin/redis\npriority=1\n\n[program:web]\ncommand=/bin/web\npriority=10\n\n[program:cron]\ncommand=/bin/cron\n")],
            args: SUP,
            want: &[Line("after = [\"redis\"]"), Line("after = [\"web\"]"), Text("priority 10 starts after priority 1")],
        },
        Case {
            name: "log files, rotation, redirect_stderr",
            files: &[("s.conf", "[program:app]\ncommand=/bin/app\nstdout_logfile=/var/log/app.log\nstdout_logfile_maxbytes=10MB\nstdout_logfile_backups=3\nredirect_stderr=true\n")],
            args: SUP,
            want: &[Line("stdout = \"/var/log/app.log\""), Line("stderr = \"/var/log/app.log\""), Line("log_max_bytes = \"10MB\""), Line("log_backups = 3"), NoSkips],
        },
        Case {
            name: "%(here)s and %(program_name)s",
            files: &[("s.conf", "[program:api]\ncommand=%(here)s/bin/%(program_name)s --port 8000\ndirectory=%(here)s\n")],
            args: SUP,
            want: &[Line("command = [\"{dir}/bin/api\", \"--port\", \"8000\"]"), Line("directory = \"{dir}\"")],
        },
        Case {
            name: "a log file per process",
            files: &[("s.conf", "[program:q]\ncommand=/bin/q\nnumprocs=2\nprocess_name=q%(process_num)d\nstdout_logfile=/var/log/q-%(process_num)d.log\n")],
            args: SUP,
            want: &[NoLine("stdout ="), Line("replicas = 2"), Skip(":5: stdout_logfile: a file per process")],
        },
        Case {
            name: "NONE log file and maxbytes=0",
            files: &[("s.conf", "[program:quiet]\ncommand=/bin/quiet\nstdout_logfile=NONE\nstderr_logfile_maxbytes=0\n")],
            args: SUP,
            want: &[NoLine("stdout ="), NoLine("log_max_bytes"), Skip(":3: stdout_logfile: stackinit keeps every log"), Skip(":4: logfile_maxbytes=0: stackinit always rotates")],
        },
        Case {
            name: "[inet_http_server] with a password",
            files: &[("s.conf", "[inet_http_server]\nport=*:9001\nusername=admin\npassword=s3cret\n")],
            args: SUP,
            want: &[Line("[init]"), Line("dashboard = \"0.0.0.0:9001\""), Line("dashboard_user = \"admin\""), Line("dashboard_password = \"s3cret\""), Text("# copied in the clear")],
        },
        Case {
            name: "[inet_http_server] with a {SHA} password",
            files: &[("s.conf", "[inet_http_server]\nport=9001\nusername=admin\npassword={SHA}82ab876d1387bfafe46cc1c8a2ef074eae50cb1d\n")],
            args: SUP,
            want: &[Line("dashboard = \"127.0.0.1:9001\""), NoLine("dashboard_password"), Skip(":2: port: bound to 127.0.0.1:9001: the password is a {SHA} hash"), Skip(":4: password: the dashboard needs both")],
        },
        Case {
            name: "[unix_http_server] chown and chmod",
            files: &[("s.conf", "[unix_http_server]\nfile=/var/run/supervisor.sock\nchmod=0770\nchown=root:adm\n")],
            args: SUP,
            want: &[Line("control_group = \"adm\""), NoLine("control_socket"), Skip(":2: file: stackinit's control socket stays"), Skip(":3: chmod: the control socket is always 0660")],
        },
        Case {
            name: "an event listener",
            files: &[("s.conf", "[eventlistener:memmon]\ncommand=memmon -a 200MB\nevents=TICK_60\n")],
            args: SUP,
            want: &[Skip(":1: [eventlistener:memmon]: stackinit has no event listeners")],
        },
        Case {
            name: "a program without a command",
            files: &[("s.conf", "[program:x]\ndirectory=/srv\n")],
            args: SUP,
            want: &[Fails("s.conf:1: [program:x] does not specify a command")],
        },
        Case {
            name: "a line that is not key = value",
            files: &[("s.conf", "[program:x]\ncommand=/bin/x\nautostart true\n")],
            args: SUP,
            want: &[Fails("s.conf:3: \"autostart true\" is not `key = value`")],
        },
        Case {
            name: "a user this machine does not have",
            files: &[("s.conf", "[program:x]\ncommand=/bin/x\nuser=no-such-user-here\n")],
            args: SUP,
            want: &[Fails("does not pass `stackinit check`")],
        },
];

const NGINX_CASES: &[Case] = &[
        Case {
            name: "server names: exact, wildcards, regex, .domain",
            files: &[("site", "server {\n  listen 127.0.0.1:8080;\n  server_name example.org *.example.org www.example.* ~^api\\d+\\.example\\.net$ .dot.example;\n  return 404;\n}\n")],
            args: NGX,
            want: &[Line("server_name = [\"example.org\", \"*.example.org\", \"www.example.*\", '~^api\\d+\\.example\\.net$', \".dot.example\"]"), Line("return = 404"), Line("listen = [\"127.0.0.1:8080\"]")],
        },
        Case {
            name: "an upstream block on a unix socket",
            files: &[("site", "upstream app_server {\n  server unix:/run/gunicorn.sock fail_timeout=0;\n  keepalive 32;\n}\nserver {\n  listen 127.0.0.1:8080;\n  location / {\n    proxy_set_header Host $http_host;\n    proxy_pass http://app_server;\n  }\n}\n")],
            args: NGX,
            want: &[Line("upstream = \"unix:/run/gunicorn.sock\""), NoSkips],
        },
        Case {
            name: "an upstream that balances over outside servers",
            files: &[("site", "upstream backends {\n  server 10.0.0.1:8000 weight=2;\n  server 10.0.0.2:8000;\n}\nserver {\n  listen 127.0.0.1:8080;\n  location / { include proxy_params; proxy_pass http://backends; }\n}\n")],
            args: NGX,
            want: &[Skip(":7: proxy_pass http://backends: upstream backends balances over 10.0.0.1:8000, 10.0.0.2:8000"), Skip(":2: server 10.0.0.1:8000 weight=2: stackinit sends each request"), NoLine("[[proxy.server.location]]")],
        },
        Case {
            name: "an upstream of a program's processes becomes the service",
            files: &[
                ("s.conf", "[program:web]\ncommand=gunicorn --bind 127.0.0.1:800%(process_num)d app:wsgi\nprocess_name=web%(process_num)d\nnumprocs=2\n"),
                ("site", "upstream web { server 127.0.0.1:8000; server 127.0.0.1:8001; }\nserver {\n  listen 127.0.0.1:8080;\n  location / { include proxy_params; proxy_pass http://web; }\n}\n"),
            ],
            args: &["--supervisor", "s.conf", "--nginx", "site"],
            want: &[Line("upstream = \"web\""), Line("replicas = 2"), Line("listen = \"127.0.0.1:8000\"")],
        },
        Case {
            name: "a gunicorn socket in a home directory moves where the proxy can reach it",
            files: &[
                ("s.conf", "[program:web]\ncommand=gunicorn --bind unix:/home/ubuntu/app/app.sock app:wsgi\n"),
                ("site", "server {\n  listen 127.0.0.1:8080;\n  location / { include proxy_params; proxy_pass http://unix:/home/ubuntu/app/app.sock; }\n}\n"),
            ],
            args: &["--supervisor", "s.conf", "--nginx", "site"],
            want: &[Line("listen = \"unix:/run/stackinit/web.sock\""), Line("upstream = \"web\""), Text("was unix:/home/ubuntu/app/app.sock: the proxy's user cannot reach a socket in a home directory")],
        },
        Case {
            name: "regex and named locations",
            files: &[("site", "server {\n  listen 127.0.0.1:8080;\n  location / { return 200; }\n  location ~ \\.php$ { return 403; }\n  location @fallback { return 502; }\n}\n")],
            args: NGX,
            want: &[Skip(":4: location ~ \\.php$: regular-expression locations are not supported"), Skip(":5: location @fallback: named locations")],
        },
        Case {
            name: "exact and ^~ locations",
            files: &[("site", "server {\n  listen 127.0.0.1:8080;\n  location = /healthcheck { return 204; }\n  location ^~ /static/ { alias /srv/static/; }\n}\n")],
            args: NGX,
            want: &[Line("path = \"/healthcheck\""), Line("exact = true"), Line("return = 204"), Line("alias = \"/srv/static/\""), NoSkips],
        },
        Case {
            name: "root and index inherited from the server",
            files: &[("site", "server {\n  listen 127.0.0.1:8080;\n  root /var/www/html;\n  index index.html index.htm;\n  location /docs/ {\n    try_files $uri $uri/ =404;\n  }\n}\n")],
            args: NGX,
            want: &[Line("path = \"/docs/\""), Line("root = \"/var/www/html\""), Line("index = [\"index.html\", \"index.htm\"]"), Line("path = \"/\""), NoSkips],
        },
        Case {
            name: "a redirect with nginx variables",
            files: &[("site", "server {\n  listen 127.0.0.1:8080;\n  server_name example.org;\n  return 301 https://$host$request_uri;\n}\n")],
            args: NGX,
            want: &[Skip(":4: return 301 https://$host$request_uri: the URL has nginx variables"), NoLine("return =")],
        },
        Case {
            name: "a fixed redirect",
            files: &[("site", "server {\n  listen 127.0.0.1:8080;\n  server_name old.example.org;\n  location / { return 301 https://example.org/; }\n}\n")],
            args: NGX,
            want: &[Line("return = 301"), Line("redirect = \"https://example.org/\""), NoSkips],
        },
        Case {
            name: "body size and timeouts: per server, and per location",
            files: &[("site", "server {\n  listen 127.0.0.1:8080;\n  client_max_body_size 20m;\n  proxy_read_timeout 300;\n  proxy_connect_timeout 10s;\n  location /upload/ {\n    client_max_body_size 100m;\n    include proxy_params;\n    proxy_pass http://127.0.0.1:9000;\n  }\n}\n")],
            args: NGX,
            want: &[Line("client_max_body_size = \"20MB\""), Line("upstream_timeout = \"300s\""), Line("connect_timeout = \"10s\""), Line("upstream = \"127.0.0.1:9000\""), Skip(":7: client_max_body_size 100m: set in a location")],
        },
        Case {
            name: "TLS",
            files: &[("site", "server {\n  listen 127.0.0.1:8443 ssl http2;\n  server_name example.org;\n  ssl_certificate /etc/ssl/example.pem;\n  ssl_certificate_key /etc/ssl/example.key;\n  ssl_protocols TLSv1.2 TLSv1.3;\n  location / { return 204; }\n}\n")],
            args: NGX,
            want: &[Line("[proxy.tls]"), Line("listen = [\"127.0.0.1:8443\"]"), Line("cert = \"/etc/ssl/example.pem\""), Line("key = \"/etc/ssl/example.key\""), Skip(":6: ssl_protocols TLSv1.2 TLSv1.3: stackinit uses rustls's defaults")],
        },
        Case {
            name: "Debian's current proxy_params sends Host $host",
            files: &[
                ("nginx/proxy_params", "proxy_set_header Host $host;\nproxy_set_header X-Real-IP $remote_addr;\nproxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\nproxy_set_header X-Forwarded-Proto $scheme;\n"),
                ("nginx/sites-enabled/app", "server {\n  listen 127.0.0.1:8080;\n  location / {\n    include proxy_params;\n    proxy_pass http://unix:/run/app.sock;\n  }\n}\n"),
            ],
            args: &["--nginx", "nginx/sites-enabled/app"],
            want: &[Skip("proxy_params:1: proxy_set_header host $host: stackinit forwards Host as the client sent it"), Line("upstream = \"unix:/run/app.sock\"")],
        },
        Case {
            name: "proxy_pass with no proxy_set_header",
            files: &[("site", "server {\n  listen 127.0.0.1:8080;\n  location / {\n    proxy_pass http://127.0.0.1:8000;\n  }\n}\n")],
            args: NGX,
            want: &[Skip(":4: proxy_pass without proxy_set_header: nginx sent Host: <the upstream's address>")],
        },
        Case {
            name: "set_real_ip_from behind a load balancer",
            files: &[("site", "server {\n  listen 127.0.0.1:8080;\n  set_real_ip_from 10.0.0.0/8;\n  real_ip_header X-Forwarded-For;\n  location / { return 204; }\n}\n")],
            args: NGX,
            want: &[Skip(":3: set_real_ip_from 10.0.0.0/8: stackinit takes the client address from the connection"), Skip(":4: real_ip_header X-Forwarded-For:")],
        },
        Case {
            name: "proxy_pass that rewrites the path",
            files: &[("site", "server {\n  listen 127.0.0.1:8080;\n  location /api/ {\n    include proxy_params;\n    proxy_pass http://127.0.0.1:8000/;\n  }\n}\n")],
            args: NGX,
            want: &[Skip(":5: proxy_pass http://127.0.0.1:8000/: the URI \"/\" replaces the location's \"/api/\""), NoLine("upstream =")],
        },
        Case {
            name: "default_server on two ports",
            files: &[("site", "server {\n  listen 127.0.0.1:8080 default_server;\n  return 404;\n}\nserver {\n  listen 127.0.0.1:8081 default_server;\n  server_name b.example;\n  return 410;\n}\n")],
            args: NGX,
            want: &[Line("default = true"), Skip(":6: default_server: stackinit has one default server"), Skip(":5: server listening on 127.0.0.1:8081 only: stackinit serves every server on every listen address")],
        },
        Case {
            name: "a syntax error nginx refuses",
            files: &[("site", "server {\n  listen 127.0.0.1:8080;\n  location / { return 204; \n}\n")],
            args: NGX,
            want: &[Fails("unexpected end of file")],
        },
];

/// The first line of `toml` that starts (after indentation) with `prefix`.
fn has_line(toml: &str, prefix: &str) -> bool {
    toml.lines().any(|l| l.trim_start().starts_with(prefix))
}

/// The TOML with wrapped comments joined back into one line each (`#   ` continues a comment).
fn unwrapped(toml: &str) -> String {
    let mut out = String::new();
    for line in toml.lines() {
        match line.trim_start().strip_prefix("#   ") {
            Some(rest) if out.ends_with('\n') => {
                out.pop();
                out.push(' ');
                out.push_str(rest);
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// What is wrong with a case's run, if anything.
fn check_case(case: &Case) -> Vec<String> {
    let dir = temp_dir("stackinit-import");
    let root = dir.path().canonicalize().expect("temp dir");
    let fill = |text: &str| text.replace("{dir}", &root.display().to_string());
    for (name, text) in case.files {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, fill(text)).expect("write snippet");
    }
    let args: Vec<String> = case.args.iter().map(|a| a.to_string()).collect();
    let run = import(&root, &args);
    let mut problems = Vec::new();
    let fails = case.want.iter().any(|w| matches!(w, Fails(_)));
    if run.ok == fails {
        problems.push(format!("exit status: ok = {}", run.ok));
    }
    for want in case.want {
        let missing = match want {
            Line(l) => !has_line(&run.toml, &fill(l)),
            NoLine(l) => has_line(&run.toml, &fill(l)),
            Skip(s) => !run.skipped().iter().any(|line| line.contains(&fill(s))),
            NoSkips => !run.skipped().is_empty(),
            Text(t) => !unwrapped(&run.toml).contains(&fill(t)),
            Fails(m) => !run.stderr.contains(&fill(m)),
        };
        if missing {
            let what = match want {
                Line(l) => format!("line {l:?}"),
                NoLine(l) => format!("no line {l:?}"),
                Skip(s) => format!("not converted {s:?}"),
                NoSkips => "nothing left out".into(),
                Text(t) => format!("text {t:?}"),
                Fails(m) => format!("error {m:?}"),
            };
            problems.push(format!("expected {what}"));
        }
    }
    if run.ok {
        // The written file passes `stackinit check` on its own, as the import promises.
        let check = Command::new(BIN)
            .args(["check", "--config"])
            .arg(root.join("out.toml"))
            .output()
            .expect("run check");
        if !check.status.success() {
            problems.push(format!(
                "check failed: {}",
                String::from_utf8_lossy(&check.stderr)
            ));
        }
    }
    if problems.is_empty() {
        return problems;
    }
    vec![format!(
        "{}:\n  {}\n--- toml:\n{}\n--- stderr:\n{}",
        case.name,
        problems.join("\n  "),
        run.toml,
        run.stderr
    )]
}

#[test]
fn snippets_convert_as_expected() {
    let cases: Vec<&Case> = SUPERVISORD_CASES.iter().chain(NGINX_CASES).collect();
    assert!(cases.len() >= 25, "only {} cases", cases.len());
    assert!(cases.iter().all(|c| !c.want.is_empty()));
    let failures: Vec<String> = cases.iter().flat_map(|c| check_case(c)).collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

/// supervisord's own reading of a program's `command` and `environment` (its config parser, its
/// expansions, `shlex.split` and `dict_of_key_value_pairs`), from the Debian package's Python modules.
const SUPERVISORD_READS: &str = r#"
import json, os, shlex, sys
from supervisor.options import UnhosedConfigParser, expand
from supervisor.datatypes import dict_of_key_value_pairs
out = []
for path in json.load(sys.stdin):
    try:
        parser = UnhosedConfigParser()
        parser.read(path)
        names = {"program_name": "p", "group_name": "p", "process_num": 0, "numprocs": 1,
                 "here": os.path.dirname(path), "host_node_name": "h"}
        env = parser.saneget("program:p", "environment", "", do_expand=False)
        env = dict_of_key_value_pairs(expand(env, names, "environment"))
        command = shlex.split(parser.saneget("program:p", "command", expansions=names))
        out.append({"command": command, "environment": env})
    except Exception as e:
        out.append({"error": str(e)})
print(json.dumps(out))
"#;

/// Where the Debian package puts supervisord's Python modules.
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

fn supervisord_reading(paths: &[PathBuf]) -> Vec<serde_json::Value> {
    use std::io::Write;
    let mut child = Command::new(SYSTEM_PYTHON)
        .args(["-c", SUPERVISORD_READS])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run /usr/bin/python3 (apt-get install supervisor python3)");
    let list: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(serde_json::to_string(&list).expect("json").as_bytes())
        .expect("write paths");
    let output = child.wait_with_output().expect("python output");
    assert!(
        output.status.success(),
        "supervisord's parser could not be run (apt-get install supervisor): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("python prints JSON")
}

/// Our reading of the same file, in the same shape: the imported `command` and `environment`.
fn our_reading(dir: &Path, conf: &Path) -> serde_json::Value {
    let run = import(
        dir,
        &["--supervisor".to_string(), conf.display().to_string()],
    );
    if !run.ok {
        return serde_json::json!({ "error": run.stderr });
    }
    let table: toml::Table = toml::from_str(&run.toml).expect("the output is TOML");
    let service = &table["service"]["p"];
    let env = service
        .get("environment")
        .cloned()
        .unwrap_or(toml::Value::Table(Default::default()));
    serde_json::json!({
        "command": serde_json::to_value(&service["command"]).expect("json"),
        "environment": serde_json::to_value(&env).expect("json"),
    })
}

/// Commands in the shapes programs use: quotes, escapes, comments, expansions, continuation lines.
const COMMANDS: &[&str] = &[
    "/bin/app --name \"a b\" 'c d'",
    "/bin/sh -c \"echo hi; exec app\"",
    "/bin/app --flag ; a comment",
    "/bin/app --x=%(program_name)s#not-a-comment",
    "/bin/app 50%%",
    "/bin/app a\\ b \"a\\\"b\" 'x\\y'",
    "/bin/app \"x\\$y\" \"back\\\\slash\"",
    "bash -c 'echo $HOME'",
    "/bin/app \"unclosed",
    "/bin/app\n    --continued yes\n\n    --after-blank",
];

/// `environment=` values, the ones supervisord refuses included.
const ENVIRONMENTS: &[&str] = &[
    "A=\"1\",B=\"2\"",
    "A=1,B=2",
    "A=\"a b\",B='c,d'",
    "A=\"x\" ; a comment",
    "A=\"x;y\"",
    "A=x;y",
    "A=\"%(program_name)s-%(process_num)02d\"",
    "A=\"100%%\"",
    "PATH=\"/usr/local/bin:/usr/bin\",HOME=\"/home/x\"",
    "\n    A=\"1\",\n    B=\"2\"",
    "A=x # trailing",
    "A='it''s'",
    "A=\"a\\\"b\"",
    "A = \"spaced\" , B = 'also'",
    "A=1,,B=2",
    "A=",
    "A=\"é ü\"",
    "A=/a/b:c(1)+d-e.f",
    "A=x y",
    "A=\"unclosed",
];

/// Each text as `DIR/caseN/s.conf`.
fn write_each(root: &Path, texts: &[String]) -> Vec<PathBuf> {
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let sub = root.join(format!("case{i}"));
            std::fs::create_dir_all(&sub).expect("mkdir");
            let path = sub.join("s.conf");
            std::fs::write(&path, text).expect("write");
            path
        })
        .collect()
}

#[test]
fn ini_commands_and_environment_read_as_supervisord_reads_them() {
    let dir = temp_dir("stackinit-dialect");
    let root = dir.path().canonicalize().expect("dir");
    let files: Vec<String> = COMMANDS
        .iter()
        .map(|command| format!("[program:p]\ncommand={command}\n"))
        .chain(
            ENVIRONMENTS
                .iter()
                .map(|env| format!("[program:p]\ncommand=/bin/p\nenvironment={env}\n")),
        )
        .collect();
    let paths = write_each(&root, &files);
    let theirs = supervisord_reading(&paths);
    let mut differences = Vec::new();
    let mut agreed_errors = 0;
    for ((path, text), want) in paths.iter().zip(&files).zip(&theirs) {
        let got = our_reading(path.parent().expect("dir"), path);
        let same = match (want.get("error"), got.get("error")) {
            (Some(_), Some(_)) => {
                agreed_errors += 1;
                true
            }
            (None, None) => *want == got,
            _ => false,
        };
        if !same {
            differences.push(format!(
                "{text:?}\n  supervisord: {want}\n  stackinit:   {got}"
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "{} differences:\n{}",
        differences.len(),
        differences.join("\n")
    );
    // Both sides refuse some inputs, and accept most: the corpus exercises both.
    assert!(
        (3..files.len() / 2).contains(&agreed_errors),
        "{agreed_errors} errors"
    );
}

/// A site in the shapes public deployments use: exact, wildcard and regex names, a default server,
/// prefix, `=` and `^~` locations, an upstream block, static files and returns. `@ECHO_x@` are echo
/// upstreams (each answers with its own id), `@PORT@` the listen port, `@WWW@` a static directory.
const DIFF_SITE: &str = r#"
upstream api_pool {
    server 127.0.0.1:@ECHO_api@;
    keepalive 16;
}

server {
    listen 127.0.0.1:@PORT@ default_server;
    server_name example.org www.example.org;

    location / {
        include proxy_params;
        proxy_pass http://127.0.0.1:@ECHO_site@;
    }
    location = / {
        include proxy_params;
        proxy_pass http://127.0.0.1:@ECHO_home@;
    }
    location /api/ {
        include proxy_params;
        proxy_pass http://api_pool;
    }
    location = /api/health {
        return 204;
    }
    location ^~ /static/ {
        alias @WWW@/;
    }
    location /static/private/ {
        return 403;
    }
}

server {
    listen 127.0.0.1:@PORT@;
    server_name *.example.net example.net;
    location / {
        include proxy_params;
        proxy_pass http://127.0.0.1:@ECHO_net@;
    }
    location /admin {
        return 404;
    }
}

server {
    listen 127.0.0.1:@PORT@;
    server_name ~^api\d+\.example\.com$ www.example.*;
    root @WWW@;
    location /app/ {
        include proxy_params;
        proxy_pass http://127.0.0.1:@ECHO_regex@;
    }
}
"#;

/// The site with its placeholders filled in.
fn diff_site(port: u16, echoes: &[(&str, Echo)], www: &Path) -> String {
    let mut site = DIFF_SITE
        .replace("@PORT@", &port.to_string())
        .replace("@WWW@", &www.display().to_string());
    for (name, echo) in echoes {
        site = site.replace(&format!("@ECHO_{name}@"), &echo.addr.port().to_string());
    }
    site
}

/// Debian's proxy_params as nginx's differential tests use it (the headers stackinit sends).
const PROXY_PARAMS: &str = "proxy_set_header Host $http_host;\nproxy_set_header X-Real-IP $remote_addr;\n\
proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\nproxy_set_header X-Forwarded-Proto $scheme;\n";

const SITE_HOSTS: &[&str] = &[
    "example.org",
    "www.example.org",
    "EXAMPLE.ORG:80",
    "example.org.",
    "a.example.net",
    "b.a.example.net",
    "example.net",
    "api12.example.com",
    "api.example.com",
    "www.example.co.uk",
    "www.example.org.uk",
    "unknown.invalid",
    "127.0.0.1",
    "",
];

const SITE_PATHS: &[&str] = &[
    "/",
    "/x",
    "/index.html",
    "/api",
    "/api/",
    "/api/v1/users?q=1",
    "/api/health",
    "/api/health/",
    "/api/healthz",
    "/static/",
    "/static/css/a.css",
    "/static/private/key",
    "/static/private",
    "/staticx",
    "/admin",
    "/admin/x",
    "/administrator",
    "/app/",
    "/app/page",
    "/apps",
    "/css/a.css",
    "/API/",
    "/api//v1",
    "/a/../api/v1",
    "/%61pi/v1",
    "/static/../api/v1",
];

/// nginx running the site as written, and the stackinit proxy running what `import` made of it.
struct SitePair {
    _echoes: Vec<(&'static str, Echo)>,
    _nginx: support::Guarded,
    _proxy: ProxyProcess,
    nginx: SocketAddr,
    stackinit: SocketAddr,
}

impl SitePair {
    fn start(root: &Path) -> SitePair {
        let www = root.join("www");
        std::fs::create_dir_all(www.join("css")).expect("www");
        std::fs::write(www.join("index.html"), "static index\n").expect("index");
        std::fs::write(www.join("css/a.css"), "body { color: red }\n").expect("css");
        let echoes: Vec<(&str, Echo)> = ["api", "site", "home", "net", "regex"]
            .into_iter()
            .map(|name| (name, Echo::start(name)))
            .collect();
        let (nginx_port, proxy_port) = (free_port(), free_port());
        let sites = root.join("nginx/sites-enabled");
        std::fs::create_dir_all(&sites).expect("sites dir");
        std::fs::write(root.join("nginx/proxy_params"), PROXY_PARAMS).expect("proxy_params");
        std::fs::write(sites.join("site"), diff_site(proxy_port, &echoes, &www)).expect("site");
        let run = import(
            root,
            &["--nginx".into(), sites.join("site").display().to_string()],
        );
        assert!(run.ok, "import failed: {}", run.stderr);
        assert_eq!(
            run.skipped(),
            Vec::<&str>::new(),
            "everything in this site converts"
        );
        let nginx_dir = root.join("nginx-run");
        std::fs::create_dir_all(&nginx_dir).expect("nginx dir");
        let nginx_site = diff_site(nginx_port, &echoes, &www).replace(
            "include proxy_params;",
            &format!("include {}/nginx/proxy_params;", root.display()),
        );
        let nginx: SocketAddr = format!("127.0.0.1:{nginx_port}").parse().expect("addr");
        let nginx_process = start_nginx(&nginx_dir, &nginx_site, nginx);
        let proxy_dir = root.join("proxy-run");
        std::fs::create_dir_all(&proxy_dir).expect("proxy dir");
        let stackinit: SocketAddr = format!("127.0.0.1:{proxy_port}").parse().expect("addr");
        let config = format!(
            "[init]\nlogs_dir = \"{}\"\n{}",
            proxy_dir.display(),
            run.toml
        );
        let proxy = ProxyProcess::start(&proxy_dir, &config, stackinit);
        SitePair {
            _echoes: echoes,
            _nginx: nginx_process,
            _proxy: proxy,
            nginx,
            stackinit,
        }
    }
}

#[test]
fn an_imported_site_routes_like_nginx() {
    let dir = e2e::shared_dir();
    let pair = SitePair::start(dir.path());
    let mut differences = Vec::new();
    let mut outcomes = std::collections::BTreeSet::new();
    for host in SITE_HOSTS {
        let host_header = (!host.is_empty()).then(|| host.as_bytes().to_vec());
        for path in SITE_PATHS {
            let raw = request_for(&host_header, path, "1.1");
            let (want, got) = (outcome(pair.nginx, &raw), outcome(pair.stackinit, &raw));
            if want != got {
                differences.push(format!(
                    "Host {host:?} {path}: nginx {want}, stackinit {got}"
                ));
            }
            outcomes.insert(want);
        }
    }
    // Every upstream, the static files, each return and the slash redirect were reached, or the
    // corpus proves little.
    for expected in [
        "200 api",
        "200 site",
        "200 home",
        "200 net",
        "200 regex",
        "204",
        "301",
        "403",
        "404",
        "200 \"body { color: red }\\n\"",
        "200 \"static index\\n\"",
    ] {
        assert!(
            outcomes.contains(expected),
            "nothing reached {expected}: {outcomes:?}"
        );
    }
    assert!(
        differences.is_empty(),
        "{} differences:\n{}",
        differences.len(),
        differences.join("\n")
    );
}

/// The seed's fixture with the paths this test runs from.
fn seed_file(name: &str, fill: &[(&str, String)]) -> String {
    let path = repo().join("tests/fixtures/import/seed").join(name);
    let mut text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for (key, value) in fill {
        text = text.replace(key, value);
    }
    text
}

/// The seed's two files where the seed keeps them (under `root`), imported.
fn import_seed(root: &Path, port: u16) -> Run {
    let fill = [
        ("@APP@", e2e::app_dir().display().to_string()),
        ("@VENV@", e2e::venv().display().to_string()),
        ("@SHARED@", root.display().to_string()),
        ("@PORT@", port.to_string()),
    ];
    let conf_d = root.join("etc/supervisor/conf.d");
    let sites = root.join("etc/nginx/sites-enabled");
    for dir in [&conf_d, &sites, &root.join("logs")] {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    std::fs::write(conf_d.join("django.conf"), seed_file("django.conf", &fill)).expect("program");
    std::fs::write(sites.join("django.conf"), seed_file("django.nginx", &fill)).expect("site");
    let args = [
        "--supervisor".to_string(),
        conf_d.join("django.conf").display().to_string(),
        "--nginx".to_string(),
        sites.join("django.conf").display().to_string(),
    ];
    import(root, &args)
}

/// What the app needs from its environment: a database and a static root in `root`.
fn seed_env(root: &Path) -> Vec<(&'static str, String)> {
    vec![
        (
            "STACKINIT_DB_PATH",
            root.join("db.sqlite3").display().to_string(),
        ),
        (
            "STACKINIT_STATIC_ROOT",
            root.join("static").display().to_string(),
        ),
        ("PYTHONDONTWRITEBYTECODE", "1".to_string()),
    ]
}

/// The seed's operator ran migrate by hand before starting supervisord; so does this test.
fn migrate(env: &[(&str, String)]) {
    let migrate = Command::new(e2e::venv().join("bin/python"))
        .args(["manage.py", "migrate", "--noinput"])
        .current_dir(e2e::app_dir())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("run migrate");
    assert!(
        migrate.status.success(),
        "migrate: {}",
        String::from_utf8_lossy(&migrate.stderr)
    );
}

#[test]
fn the_seeds_files_import_into_a_stack_that_serves_the_app() {
    let shared = e2e::shared_dir();
    let root = shared.path();
    let port = free_port();
    let run = import_seed(root, port);
    assert!(run.ok, "import failed: {}", run.stderr);
    // The only thing left out: the proxy_params file, which is not on this test's path.
    let skipped = run.skipped();
    assert_eq!(skipped.len(), 1, "{skipped:#?}");
    assert!(
        skipped[0].contains("django.conf:7: include:") && skipped[0].contains("assumed Debian's"),
        "{skipped:#?}"
    );
    let venv = e2e::venv();
    for line in [
        "[service.gunicorn]".to_string(),
        "replicas = 3".to_string(),
        format!("listen = \"unix:{}/app.sock\"", root.display()),
        format!(
            "command = [\"{}/bin/gunicorn\", \"--workers\", \"1\", \"mysite.wsgi:application\"]",
            venv.display()
        ),
        "restart = \"always\"".to_string(),
        "stop_grace = \"40s\"".to_string(),
        "upstream = \"gunicorn\"".to_string(),
        "server_name = [\"*.compute.amazonaws.com\"]".to_string(),
    ] {
        assert!(
            has_line(&run.toml, &line),
            "no line {line:?} in:\n{}",
            run.toml
        );
    }
    let env = seed_env(root);
    migrate(&env);
    // The instance's names come from (a fake) IMDS; the seed's one server answers them all.
    let imds = FakeImds::start(&[
        ("instance-id", "i-0123456789abcdef0"),
        ("local-ipv4", "10.0.0.5"),
        ("local-hostname", "ip-10-0-0-5.ec2.internal"),
        ("public-ipv4", "3.4.5.6"),
        ("public-hostname", "ec2-3-4-5-6.compute-1.amazonaws.com"),
    ]);
    let imds_section = format!(
        "\n[init.imds]\nenabled = true\nendpoint = \"http://127.0.0.1:{}\"\ntimeout = \"2s\"\n",
        imds.port
    );
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let stack = Stack::start_with_env(&format!("{}{imds_section}", run.toml), &env);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let healthy = wait_until(Duration::from_secs(180), || {
        timed_get(addr, "10.0.0.5", "/healthz").is_ok_and(|r| r.status == 200)
    });
    assert!(
        healthy,
        "never healthy: {}\n{}",
        stack.status(),
        stack.stderr()
    );
    for host in [
        "ec2-3-4-5-6.compute-1.amazonaws.com",
        "ip-10-0-0-5.ec2.internal",
        "3.4.5.6",
    ] {
        let reply = timed_get(addr, host, "/").expect("GET /");
        assert_eq!(reply.status, 200, "Host {host}: {}", reply.text());
        assert!(
            reply.text().contains("Hello from Django"),
            "Host {host}: {}",
            reply.text()
        );
    }
    for replica in ["gunicorn@0", "gunicorn@1", "gunicorn@2"] {
        assert_eq!(
            stack.unit(replica)["ready"],
            true,
            "{}",
            stack.unit(replica)
        );
    }
    // The seed's log files, as its program names them.
    let err_log = root.join("logs/gunicorn.err.log");
    let written = wait_until(Duration::from_secs(10), || {
        std::fs::metadata(&err_log).is_ok_and(|m| m.len() > 0)
    });
    assert!(written, "nothing in {}", err_log.display());
}

/// A stack with one service for each kind of change a reload can make.
const RUNNING: &str = r#"
[service.keep]
command = ["sleep", "1000"]
[service.single]
command = ["sleep", "1001"]
[service.gone]
command = ["sleep", "1002"]
[service.off]
command = ["sleep", "1003"]
[service.down]
command = ["sleep", "1004"]
[service.web]
command = ["stackinit", "demo-worker"]
replicas = 2
listen = "127.0.0.1:0"
start_secs = "200ms"
[proxy]
listen = ["127.0.0.1:@PORT@"]
[[proxy.server]]
server_name = ["a.example"]
[[proxy.server.location]]
path = "/"
upstream = "web"
"#;

/// `RUNNING` changed in every way: a command (restart), replicas (rolling restart, and a start), a
/// service removed while running (stop) and one removed while stopped (remove), one no longer
/// autostarted (stop), one added (start), and the proxy's server names (reconfigure, no restart).
fn changed(config: &str) -> String {
    config
        .replace("[\"sleep\", \"1001\"]", "[\"sleep\", \"2001\"]")
        .replace("replicas = 2", "replicas = 3")
        .replace("[service.gone]\ncommand = [\"sleep\", \"1002\"]\n", "")
        .replace(
            "[service.down]\ncommand = [\"sleep\", \"1004\"]\n",
            "[service.new]\ncommand = [\"sleep\", \"1005\"]\n",
        )
        .replace(
            "[\"sleep\", \"1003\"]\n",
            "[\"sleep\", \"1003\"]\nautostart = false\n",
        )
        .replace(
            "server_name = [\"a.example\"]",
            "server_name = [\"a.example\", \"b.example\"]",
        )
}

fn diff_json(stack: &Stack, args: &[&str]) -> serde_json::Value {
    let out = stack.cli(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?} is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Each service's action, and the units whose action differs from their service's.
fn actions(plan: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for s in plan["services"].as_array().expect("services") {
        out.push(format!(
            "{} {} {}",
            s["name"].as_str().unwrap_or("?"),
            s["config"].as_str().unwrap_or("?"),
            s["action"].as_str().unwrap_or("?")
        ));
        for u in s["units"]
            .as_array()
            .expect("units")
            .iter()
            .filter(|u| u["action"] != s["action"])
        {
            out.push(format!(
                "  {} {}",
                u["name"].as_str().unwrap_or("?"),
                u["action"].as_str().unwrap_or("?")
            ));
        }
    }
    out.push(format!(
        "proxy {}",
        plan["proxy"]["action"].as_str().unwrap_or("?")
    ));
    out
}

/// The pids of the units that run before the reload.
type Pids = Vec<(String, Option<i32>)>;

/// `RUNNING` started, every unit up but `down`, which is stopped by hand.
fn start_running() -> (Stack, u16, Pids) {
    let port = free_port();
    let stack = Stack::start(&RUNNING.replace("@PORT@", &port.to_string()));
    for unit in ["keep", "single", "gone", "off", "down", "web@0", "web@1"] {
        stack.wait_state(unit, "running", Duration::from_secs(20));
    }
    assert!(stack.cli(&["stop", "down"]).status.success());
    stack.wait_state("down", "stopped", Duration::from_secs(20));
    let pids = ["keep", "single", "gone", "off", "web@0", "web@1", "proxy"]
        .iter()
        .map(|u| (u.to_string(), stack.pid_of(u)))
        .collect();
    (stack, port, pids)
}

/// The plan for `changed(RUNNING)`, as JSON and as a table, and that asking changed nothing.
fn check_the_plan(stack: &Stack, pids: &Pids) {
    let plan = diff_json(stack, &["diff", "--json"]);
    assert_eq!(
        actions(&plan),
        [
            "down removed remove",
            "gone removed stop",
            "keep unchanged unchanged",
            "new added start",
            "off changed stop",
            "single changed restart",
            "web changed rolling-restart",
            "  web@2 start",
            "proxy reconfigure",
        ]
    );
    let services = plan["services"].as_array().expect("services");
    let web = services.iter().find(|s| s["name"] == "web").expect("web");
    assert_eq!(web["keys"], serde_json::json!(["replicas"]));
    let names = serde_json::json!(["server a.example: server_name -> a.example b.example"]);
    assert_eq!(plan["proxy"]["changes"], names);
    let dry_run = diff_json(stack, &["reload", "--dry-run", "--json"]);
    assert_eq!(dry_run, plan, "reload --dry-run is the same plan");
    let table = String::from_utf8_lossy(&stack.cli(&["diff"]).stdout).into_owned();
    assert!(
        table.contains("rolling restart  changed (replicas); web@2 start"),
        "{table}"
    );
    for (unit, pid) in pids {
        assert_eq!(stack.pid_of(unit), *pid, "{unit} changed without a reload");
    }
    let status = stack.status();
    let units = status["services"].as_array().expect("services");
    assert!(units.iter().all(|s| s["name"] != "new"), "{status}");
}

/// `diff --config FILE`: only the file's text goes to the supervisor; errors name the file.
fn check_other_files(stack: &Stack, running: &str, port: u16) {
    let other = stack.path("other.toml");
    let moved = running.replace(
        &format!("127.0.0.1:{port}"),
        &format!("127.0.0.1:{}", free_port()),
    );
    std::fs::write(&other, moved).expect("other");
    let plan = diff_json(
        stack,
        &["diff", "--json", "--config", other.to_str().expect("path")],
    );
    // A new listen address needs a new proxy process.
    assert_eq!(
        actions(&plan).last().map(String::as_str),
        Some("proxy restart")
    );
    let bad = stack.path("bad.toml");
    std::fs::write(&bad, "[service.x]\ncommand = 5\n").expect("bad");
    let out = stack.cli(&["diff", "--config", bad.to_str().expect("path")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("bad.toml:2:11: service.x.command"),
        "{stderr}"
    );
}

/// The reload does what the plan said.
fn check_the_reload(stack: &Stack, pids: &Pids) {
    assert!(
        stack.cli(&["reload"]).status.success(),
        "{}",
        stack.stderr()
    );
    for unit in ["new", "web@2", "web@0", "web@1"] {
        stack.wait_state(unit, "running", Duration::from_secs(30));
    }
    stack.wait_state("off", "stopped", Duration::from_secs(20));
    let before = |u: &str| pids.iter().find(|(n, _)| n == u).and_then(|(_, p)| *p);
    let changed = |u: &str| stack.pid_of(u).is_some_and(|p| Some(p) != before(u));
    assert_eq!(stack.pid_of("keep"), before("keep"), "keep was kept");
    assert_eq!(
        stack.pid_of("proxy"),
        before("proxy"),
        "the proxy was reconfigured, not restarted"
    );
    assert!(
        wait_until(Duration::from_secs(20), || changed("single")),
        "single was not restarted"
    );
    let rolled = wait_until(Duration::from_secs(30), || {
        changed("web@0") && changed("web@1")
    });
    assert!(rolled, "web was not rolled: {}", stack.status());
    let gone = wait_until(Duration::from_secs(20), || {
        let status = stack.status();
        let units = status["services"].as_array().cloned().unwrap_or_default();
        units
            .iter()
            .all(|s| s["name"] != "gone" && s["name"] != "down")
    });
    assert!(gone, "gone and down are still there: {}", stack.status());
}

#[test]
fn diff_says_what_a_reload_would_do_without_doing_it() {
    let (stack, port, pids) = start_running();
    let running = std::fs::read_to_string(&stack.config).expect("config");
    let unchanged = actions(&diff_json(&stack, &["diff", "--json"]));
    assert!(
        unchanged.iter().all(|a| a.ends_with("unchanged")),
        "{unchanged:?}"
    );
    std::fs::write(&stack.config, changed(&running)).expect("write the new config");
    check_the_plan(&stack, &pids);
    check_other_files(&stack, &running, port);
    check_the_reload(&stack, &pids);
}
