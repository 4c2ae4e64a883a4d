//! Reading a supervisord configuration as supervisord reads it: the files given, each one's
//! `[include] files =` globs (relative to that file, sorted, hidden files not matched), sections merged
//! across files with the later value winning, and `[DEFAULT]` seen by every section. Every value keeps
//! the file and line it came from, for `%(here)s` and for the report.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::expand::{self, Val};
use super::ini;
use super::report::{read_input, ImportError, Origin, MAX_FILES};

/// One value with where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value {
    pub text: String,
    pub at: Origin,
}

/// A section merged over every file that defines it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    pub at: Origin,
    pub keys: BTreeMap<String, Value>,
}

impl Section {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.keys.get(key)
    }
}

/// Everything read: the sections in order of first appearance, and the files that were read.
#[derive(Debug, Default)]
pub struct Loaded {
    pub sections: Vec<Section>,
    pub files: Vec<PathBuf>,
}

#[cfg(test)]
impl Loaded {
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }
}

/// Read `paths` and what they include. The same file given twice (or included and given) is read once.
pub fn load(paths: &[PathBuf]) -> Result<Loaded, ImportError> {
    let mut loaded = Loaded::default();
    for path in paths {
        read_file(path, &mut loaded, true)?;
    }
    let defaults = loaded
        .sections
        .iter()
        .position(|s| s.name == "DEFAULT")
        .map(|i| loaded.sections.remove(i));
    if let Some(defaults) = defaults {
        for section in &mut loaded.sections {
            for (key, value) in &defaults.keys {
                section
                    .keys
                    .entry(key.clone())
                    .or_insert_with(|| value.clone());
            }
        }
    }
    Ok(loaded)
}

fn read_file(path: &Path, loaded: &mut Loaded, follow_includes: bool) -> Result<(), ImportError> {
    let canonical = path
        .canonicalize()
        .map_err(|e| ImportError::file(path, e))?;
    if loaded.files.contains(&canonical) {
        return Ok(());
    }
    if loaded.files.len() >= MAX_FILES {
        return Err(ImportError::file(
            path,
            format!("more than {MAX_FILES} files to read: is an include pattern too wide?"),
        ));
    }
    loaded.files.push(canonical.clone());
    let text = read_input(path)?;
    let file: Rc<Path> = Rc::from(canonical.as_path());
    let sections =
        ini::parse(&text).map_err(|e| ImportError::at(&Origin::new(&file, e.line), e.message))?;
    let includes = sections.iter().find(|s| s.name == "include").cloned();
    for section in sections {
        merge(loaded, &file, section);
    }
    // supervisord follows the [include] of the main file only; an included file's [include] is inert.
    if let (true, Some(include)) = (follow_includes, includes) {
        for included in include_files(&file, &include)? {
            read_file(&included, loaded, false)?;
        }
    }
    Ok(())
}

fn merge(loaded: &mut Loaded, file: &Rc<Path>, section: ini::Section) {
    let index = match loaded.sections.iter().position(|s| s.name == section.name) {
        Some(i) => i,
        None => {
            loaded.sections.push(Section {
                name: section.name.clone(),
                at: Origin::new(file, section.line),
                keys: BTreeMap::new(),
            });
            loaded.sections.len() - 1
        }
    };
    for entry in section.entries {
        loaded.sections[index].keys.insert(
            entry.key,
            Value {
                text: entry.value,
                at: Origin::new(file, entry.line),
            },
        );
    }
}

/// The files an `[include] files = ...` names: each pattern relative to the including file's
/// directory, matches sorted, as Python's glob (a leading dot must be matched literally).
fn include_files(file: &Rc<Path>, include: &ini::Section) -> Result<Vec<PathBuf>, ImportError> {
    let Some(files) = include.get("files") else {
        let at = Origin::new(file, include.line);
        return Err(ImportError::at(&at, "[include] has no files = ... setting"));
    };
    let at = Origin::new(file, files.line);
    let here = at.dir();
    let patterns = expand::expand(&files.value, &|name| common_expansion(name, &here))
        .map_err(|e| ImportError::at(&at, format!("files: {e}")))?;
    let options = glob::MatchOptions {
        require_literal_leading_dot: true,
        ..glob::MatchOptions::new()
    };
    let mut out = Vec::new();
    for pattern in patterns.split_whitespace() {
        let full = here.join(pattern);
        let full = full.to_string_lossy();
        let paths = glob::glob_with(&full, options)
            .map_err(|e| ImportError::at(&at, format!("files: bad pattern {pattern:?}: {e}")))?;
        let mut matched: Vec<PathBuf> = paths
            .filter_map(Result::ok)
            .filter(|p| p.is_file())
            .collect();
        matched.sort();
        out.extend(matched);
        if out.len() > MAX_FILES {
            return Err(ImportError::at(
                &at,
                format!("files: matches more than {MAX_FILES} files"),
            ));
        }
    }
    Ok(out)
}

/// The expansions every value has: `%(here)s`, `%(host_node_name)s`, `%(ENV_X)s`.
pub fn common_expansion(name: &str, here: &Path) -> Option<Val> {
    match name {
        "here" => Some(Val::Str(here.display().to_string())),
        "host_node_name" => nix::unistd::gethostname()
            .ok()
            .map(|h| Val::Str(h.to_string_lossy().into_owned())),
        _ => name
            .strip_prefix("ENV_")
            .and_then(|var| std::env::var(var).ok())
            .map(Val::Str),
    }
}

/// supervisord's booleans.
pub fn boolean(value: &Value) -> Result<bool, ImportError> {
    match value.text.trim().to_lowercase().as_str() {
        "yes" | "true" | "on" | "1" => Ok(true),
        "no" | "false" | "off" | "0" => Ok(false),
        other => Err(ImportError::at(
            &value.at,
            format!("{other:?} is not a boolean (true/false)"),
        )),
    }
}

/// supervisord's integers (Python's `int()`).
pub fn integer(value: &Value) -> Result<i64, ImportError> {
    value
        .text
        .trim()
        .replace('_', "")
        .parse()
        .map_err(|_| ImportError::at(&value.at, format!("{:?} is not an integer", value.text)))
}

/// supervisord's sizes: `50MB`, `1KB`, `1GB` (1024-based) or bytes.
pub fn byte_size(value: &Value) -> Result<u64, ImportError> {
    let text = value.text.trim().to_lowercase();
    let (number, scale) = match text.len().checked_sub(2).map(|i| text.split_at(i)) {
        Some((n, "kb")) => (n, 1u64 << 10),
        Some((n, "mb")) => (n, 1 << 20),
        Some((n, "gb")) => (n, 1 << 30),
        _ => (text.as_str(), 1),
    };
    number
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| {
            ImportError::at(
                &value.at,
                format!("{:?} is not a size like 50MB", value.text),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn includes_merge_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let conf_d = dir.path().join("conf.d");
        std::fs::create_dir(&conf_d).unwrap();
        let main = dir.path().join("supervisord.conf");
        std::fs::write(
            &main,
            "[DEFAULT]\nstartsecs=5\n[supervisord]\nlogfile=/x\n[include]\nfiles = conf.d/*.conf other.ini\n",
        )
        .unwrap();
        std::fs::write(
            conf_d.join("b.conf"),
            "[program:b]\ncommand=/bin/b\n[include]\nfiles=/nope/*\n",
        )
        .unwrap();
        std::fs::write(conf_d.join("a.conf"), "[program:a]\ncommand=/bin/a\n").unwrap();
        std::fs::write(conf_d.join(".hidden.conf"), "[program:h]\ncommand=/bin/h\n").unwrap();
        std::fs::write(
            dir.path().join("other.ini"),
            "[program:a]\ncommand=/bin/a2\n",
        )
        .unwrap();
        let loaded = load(&[main.clone(), conf_d.join("a.conf")]).unwrap();
        let names: Vec<&str> = loaded.sections.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["supervisord", "include", "program:a", "program:b"]);
        let a = loaded.section("program:a").unwrap();
        assert_eq!(a.get("command").unwrap().text, "/bin/a2");
        assert!(a.get("command").unwrap().at.file.ends_with("other.ini"));
        assert_eq!(a.get("startsecs").unwrap().text, "5");
        assert_eq!(loaded.files.len(), 4);
    }

    #[test]
    fn errors_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("s.conf");
        std::fs::write(&main, "[program:x]\ncommand=/bin/x\nbroken line\n").unwrap();
        let e = load(&[main]).unwrap_err().to_string();
        assert!(
            e.ends_with("s.conf:3: \"broken line\" is not `key = value`"),
            "{e}"
        );
        let e = load(&[dir.path().join("missing.conf")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.conf"), "{e}");
    }

    #[test]
    fn values() {
        let file: Rc<Path> = Rc::from(Path::new("/f"));
        let v = |t: &str| Value {
            text: t.into(),
            at: Origin::new(&file, 1),
        };
        assert_eq!(byte_size(&v("50MB")).unwrap(), 50 << 20);
        assert_eq!(byte_size(&v("1024")).unwrap(), 1024);
        assert!(byte_size(&v("lots")).is_err());
        assert!(boolean(&v("TRUE")).unwrap());
        assert!(!boolean(&v("off")).unwrap());
        assert!(boolean(&v("maybe")).is_err());
        assert_eq!(integer(&v(" 1_000 ")).unwrap(), 1000);
    }
}
