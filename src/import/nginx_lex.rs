//! nginx's configuration syntax, tokenized as nginx does it (`ngx_conf_read_token` in
//! src/core/ngx_conf_file.c) and assembled into a tree of directives, with `include` files read in
//! place. No crate on crates.io reads it the way nginx does and keeps lines while accepting every
//! directive, so this is a small hand-written tokenizer, tested below and, through the import tests,
//! against nginx itself.
//!
//! The rules: words are separated by whitespace, `;` ends a directive, `{` opens a block and `}` closes
//! it (`{` right after `$` is part of a `${var}`); `"..."` and `'...'` quote, and a quoted word must be
//! followed by whitespace, `;` or `{`; `\"`, `\'`, `\\` lose their backslash, `\t`, `\r`, `\n` are
//! control characters, any other backslash stays; `#` starts a comment only at the start of a word.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::report::{read_input, ImportError, Origin, MAX_FILES};

/// One directive: `name args...;` or `name args... { block }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Directive {
    pub name: String,
    pub args: Vec<String>,
    pub at: Origin,
    pub block: Option<Vec<Directive>>,
}

/// How deep blocks may nest (nginx's own configs are four or five deep).
const MAX_DEPTH: usize = 32;

#[derive(Debug, PartialEq, Eq)]
enum Token {
    Word(String),
    Semicolon,
    Open,
    Close,
}

type Chars<'t> = std::iter::Peekable<std::str::Chars<'t>>;

/// The tokens of `text`, each with its line.
fn tokenize(text: &str, file: &Rc<Path>) -> Result<Vec<(Token, usize)>, ImportError> {
    let mut out = Vec::new();
    let mut line = 1;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' => line += 1,
            ' ' | '\t' | '\r' => {}
            ';' => out.push((Token::Semicolon, line)),
            '{' => out.push((Token::Open, line)),
            '}' => out.push((Token::Close, line)),
            '#' => {
                chars.by_ref().find(|&c| c == '\n');
                line += 1;
            }
            '"' | '\'' => {
                let start = line;
                let raw = quoted(&mut chars, c, &mut line)
                    .map_err(|m| ImportError::at(&Origin::new(file, line), m))?;
                out.push((Token::Word(unescape(&raw)), start));
            }
            first => out.push((Token::Word(unescape(&word(&mut chars, first))), line)),
        }
    }
    Ok(out)
}

/// The inside of a string quoted with `quote` (its opening quote read), counting the lines it spans.
/// It must be followed by whitespace, `;`, `{` or `)`.
fn quoted(chars: &mut Chars, quote: char, line: &mut usize) -> Result<String, String> {
    let mut raw = String::new();
    loop {
        match chars.next() {
            None => return Err("unexpected end of file in a quoted string".into()),
            Some('\\') => {
                raw.push('\\');
                if let Some(next) = chars.next() {
                    *line += usize::from(next == '\n');
                    raw.push(next);
                }
            }
            Some(q) if q == quote => break,
            Some(other) => {
                *line += usize::from(other == '\n');
                raw.push(other);
            }
        }
    }
    match chars.peek() {
        Some(&next) if !matches!(next, ' ' | '\t' | '\r' | '\n' | ';' | '{' | ')') => {
            Err(format!("unexpected \"{next}\" after a quoted string"))
        }
        _ => Ok(raw),
    }
}

/// An unquoted word from its first character to whitespace, `;` or `{` (but `${` stays in it, and a
/// backslash protects the next character).
fn word(chars: &mut Chars, first: char) -> String {
    let mut raw = String::from(first);
    let mut variable = first == '$';
    let mut escaped = first == '\\';
    while let Some(&next) = chars.peek() {
        if escaped {
            escaped = false;
        } else if next == '{' && variable {
            // `${name}`: part of the word.
        } else if matches!(next, ' ' | '\t' | '\r' | '\n' | ';' | '{') {
            break;
        } else {
            escaped = next == '\\';
        }
        variable = next == '$';
        raw.push(next);
        chars.next();
    }
    raw
}

/// nginx's copy of a word: `\"`, `\'`, `\\` lose the backslash; `\t`, `\r`, `\n` become controls.
fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.peek() {
                Some(&q @ ('"' | '\'' | '\\')) => {
                    out.push(q);
                    chars.next();
                    continue;
                }
                Some(&e @ ('t' | 'r' | 'n')) => {
                    out.push(match e {
                        't' => '\t',
                        'r' => '\r',
                        _ => '\n',
                    });
                    chars.next();
                    continue;
                }
                _ => {}
            }
        }
        out.push(c);
    }
    out
}

/// Directives from tokens, blocks nested.
fn assemble(
    tokens: &mut std::iter::Peekable<std::vec::IntoIter<(Token, usize)>>,
    file: &Rc<Path>,
    depth: usize,
) -> Result<Vec<Directive>, ImportError> {
    let mut list = Vec::new();
    let mut words: Vec<(String, usize)> = Vec::new();
    let at = |line| Origin::new(file, line);
    loop {
        let Some((token, line)) = tokens.next() else {
            if let Some((name, line)) = words.first() {
                return Err(ImportError::at(
                    &at(*line),
                    format!("unexpected end of file after {name:?}, expecting \";\" or \"}}\""),
                ));
            }
            if depth > 0 {
                return Err(ImportError::at(
                    &at(0),
                    "unexpected end of file, expecting \"}\"",
                ));
            }
            return Ok(list);
        };
        match token {
            Token::Word(w) => words.push((w, line)),
            Token::Close if words.is_empty() && depth > 0 => return Ok(list),
            Token::Close => return Err(ImportError::at(&at(line), "unexpected \"}\"")),
            Token::Semicolon | Token::Open if words.is_empty() => {
                return Err(ImportError::at(
                    &at(line),
                    "unexpected \";\" or \"{\" with no directive before it",
                ))
            }
            Token::Semicolon | Token::Open => {
                let block = if token == Token::Open {
                    if depth + 1 > MAX_DEPTH {
                        return Err(ImportError::at(
                            &at(line),
                            format!("blocks nest deeper than {MAX_DEPTH}"),
                        ));
                    }
                    Some(assemble(tokens, file, depth + 1)?)
                } else {
                    None
                };
                let mut words = std::mem::take(&mut words).into_iter();
                let (name, first_line) = words.next().unwrap_or_default();
                list.push(Directive {
                    name,
                    args: words.map(|(w, _)| w).collect(),
                    at: at(first_line),
                    block,
                });
            }
        }
    }
}

/// Debian's /etc/nginx/proxy_params (before its 2025 security update), used when the file cannot be found.
pub const DEBIAN_PROXY_PARAMS: &str = "proxy_set_header Host $http_host;\nproxy_set_header X-Real-IP $remote_addr;\n\
proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\nproxy_set_header X-Forwarded-Proto $scheme;\n";

/// Reads files and follows includes, bounded in count.
pub struct Reader {
    /// nginx's configuration prefix, where relative include paths start (`/etc/nginx`).
    pub prefix: PathBuf,
    /// The files read, each once.
    pub files: Vec<PathBuf>,
    /// Includes that matched no file, with where they were asked for.
    pub missing: Vec<(Origin, String)>,
    /// The files being read, outermost first: an include of one of them is a loop.
    open: Vec<PathBuf>,
    /// Reads so far: one file (proxy_params) may be included by every location, but not without end.
    reads: usize,
}

/// Most file reads one import makes, includes of the same file counted each time.
const MAX_READS: usize = 4096;

impl Reader {
    /// The prefix for a site file: `/etc/nginx` for `/etc/nginx/sites-enabled/x`, else the file's dir.
    pub fn for_file(path: &Path) -> Reader {
        let dir = path.parent().unwrap_or(Path::new("."));
        let in_subdir = dir.file_name().is_some_and(|n| {
            ["sites-enabled", "sites-available", "conf.d", "snippets"]
                .contains(&&*n.to_string_lossy())
        });
        let prefix = match (in_subdir, dir.parent()) {
            (true, Some(parent)) => parent.to_path_buf(),
            _ => dir.to_path_buf(),
        };
        Reader {
            prefix,
            files: Vec::new(),
            missing: Vec::new(),
            open: Vec::new(),
            reads: 0,
        }
    }

    /// The directives of `path`, with includes read in place.
    pub fn read(&mut self, path: &Path) -> Result<Vec<Directive>, ImportError> {
        let canonical = path
            .canonicalize()
            .map_err(|e| ImportError::file(path, e))?;
        if self.open.contains(&canonical) {
            return Err(ImportError::file(
                path,
                "is included by itself (an include loop)",
            ));
        }
        self.reads += 1;
        if !self.files.contains(&canonical) {
            self.files.push(canonical.clone());
        }
        if self.reads > MAX_READS || self.files.len() > MAX_FILES {
            return Err(ImportError::file(
                path,
                format!("more than {MAX_FILES} files or {MAX_READS} includes: is an include pattern too wide?"),
            ));
        }
        let text = read_input(path)?;
        let file: Rc<Path> = Rc::from(canonical.as_path());
        self.open.push(canonical);
        let tree = self.parse_text(&text, &file);
        self.open.pop();
        tree
    }

    fn parse_text(&mut self, text: &str, file: &Rc<Path>) -> Result<Vec<Directive>, ImportError> {
        let tokens = tokenize(text, file)?;
        let tree = assemble(&mut tokens.into_iter().peekable(), file, 0)?;
        self.expand_includes(tree)
    }

    fn expand_includes(&mut self, list: Vec<Directive>) -> Result<Vec<Directive>, ImportError> {
        let mut out = Vec::new();
        for mut d in list {
            if d.name == "include" && d.block.is_none() {
                let [pattern] = d.args.as_slice() else {
                    return Err(ImportError::at(&d.at, "include takes one file or pattern"));
                };
                out.extend(self.include(pattern, &d.at)?);
                continue;
            }
            if let Some(block) = d.block.take() {
                d.block = Some(self.expand_includes(block)?);
            }
            out.push(d);
        }
        Ok(out)
    }

    fn include(&mut self, pattern: &str, at: &Origin) -> Result<Vec<Directive>, ImportError> {
        let full = self.prefix.join(pattern);
        let options = glob::MatchOptions {
            require_literal_leading_dot: true,
            ..glob::MatchOptions::new()
        };
        let mut matched: Vec<PathBuf> = glob::glob_with(&full.to_string_lossy(), options)
            .map_err(|e| ImportError::at(at, format!("include {pattern}: {e}")))?
            .filter_map(Result::ok)
            .filter(|p| p.is_file())
            .collect();
        matched.sort();
        if matched.is_empty() {
            if pattern == "proxy_params" {
                let name: Rc<Path> =
                    Rc::from(Path::new("proxy_params (not found; Debian's assumed)"));
                self.missing.push((
                    at.clone(),
                    format!("{} not found: assumed Debian's", full.display()),
                ));
                return self.parse_text(DEBIAN_PROXY_PARAMS, &name);
            }
            // nginx accepts a pattern that matches nothing; a missing file is an error to it.
            if !pattern.contains(['*', '?', '[']) {
                self.missing.push((
                    at.clone(),
                    format!("include {pattern}: no file {} here", full.display()),
                ));
            }
        }
        let mut out = Vec::new();
        for path in matched {
            out.extend(self.read(&path)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Directive>, ImportError> {
        let file: Rc<Path> = Rc::from(Path::new("t.conf"));
        let mut reader = Reader::for_file(Path::new("/nonexistent/t.conf"));
        reader.parse_text(text, &file)
    }

    fn words(d: &Directive) -> Vec<&str> {
        std::iter::once(d.name.as_str())
            .chain(d.args.iter().map(String::as_str))
            .collect()
    }

    #[test]
    fn blocks_args_and_lines() {
        let tree = parse("server{\n  listen 80 default_server;\n  location /{proxy_pass http://unix:/a.sock;}\n}\n").unwrap();
        assert_eq!(tree.len(), 1);
        let server = tree[0].block.as_ref().unwrap();
        assert_eq!(words(&server[0]), ["listen", "80", "default_server"]);
        assert_eq!(server[0].at.line, 2);
        assert_eq!(words(&server[1]), ["location", "/"]);
        let location = server[1].block.as_ref().unwrap();
        assert_eq!(words(&location[0]), ["proxy_pass", "http://unix:/a.sock"]);
        assert_eq!(location[0].at.line, 3);
    }

    #[test]
    fn quotes_escapes_comments_and_variables() {
        let tree = parse("a \"x y\" 'q\\'s' b\\\"c # note\n d#e ${host}x \"t\\tu\";").unwrap();
        assert_eq!(
            words(&tree[0]),
            ["a", "x y", "q's", "b\"c", "d#e", "${host}x", "t\tu"]
        );
        let tree = parse("server_name ~^(www\\.)?(?<d>.+)$;").unwrap();
        assert_eq!(tree[0].args, ["~^(www\\.)?(?<d>.+)$"]);
        // A `}` inside a word is part of it, as in nginx.
        assert!(parse("location / { return 200 ok}\n").is_err());
    }

    #[test]
    fn what_nginx_refuses() {
        for bad in [
            "server {",
            "}",
            "listen 80",
            "a \"x\"y;",
            ";",
            "a \"open;",
            "{ }",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
        let deep = format!("{}{}", "a {".repeat(40), "}".repeat(40));
        assert!(parse(&deep).unwrap_err().message.contains("nest deeper"));
    }

    #[test]
    fn includes_are_read_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let sites = dir.path().join("sites-enabled");
        std::fs::create_dir(&sites).unwrap();
        std::fs::write(dir.path().join("params"), "proxy_set_header A b;\n").unwrap();
        std::fs::write(
            sites.join("x"),
            "server { location / { include params; include proxy_params; include nope; } }\n",
        )
        .unwrap();
        let mut reader = Reader::for_file(&sites.join("x"));
        let tree = reader.read(&sites.join("x")).unwrap();
        let location = &tree[0].block.as_ref().unwrap()[0];
        let names: Vec<String> = location
            .block
            .as_ref()
            .unwrap()
            .iter()
            .map(|d| d.args.join(" "))
            .collect();
        assert_eq!(names[0], "A b");
        assert_eq!(names[1], "Host $http_host");
        assert_eq!(names.len(), 5);
        assert_eq!(reader.missing.len(), 2);
    }

    #[test]
    fn an_include_loop_is_refused_and_repeats_are_read_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), "include b;\n").unwrap();
        std::fs::write(dir.path().join("b"), "include a;\n").unwrap();
        let e = Reader::for_file(&dir.path().join("a"))
            .read(&dir.path().join("a"))
            .unwrap_err();
        assert!(e.message.contains("include loop"), "{e}");
        std::fs::write(dir.path().join("p"), "x 1;\n").unwrap();
        std::fs::write(dir.path().join("s"), "include p; include p; include p;\n").unwrap();
        let mut reader = Reader::for_file(&dir.path().join("s"));
        assert_eq!(reader.read(&dir.path().join("s")).unwrap().len(), 3);
        assert_eq!(reader.files.len(), 2);
    }
}
