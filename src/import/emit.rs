//! The imported config as a commented TOML document. Converters fill tables of entries; each entry
//! keeps the input line it came from and the notes a reader needs, which become comments. Values are
//! rendered by the `toml` crate, so quoting and escaping are TOML's own.
#![forbid(unsafe_code)]

use std::fmt::Write;

use toml::Value;

use super::report::{Origin, Skipped};

/// One `key = value`, with where it came from and what to know about it.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub key: String,
    pub value: Value,
    pub from: Option<Origin>,
    pub notes: Vec<String>,
}

/// A `[table]` or `[[array.of.tables]]` with its entries in order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Table {
    /// Dotted path, e.g. `service.app` or `proxy.server.location`; the parts are quoted as needed.
    pub path: Vec<String>,
    pub array: bool,
    pub notes: Vec<String>,
    pub from: Option<Origin>,
    pub entries: Vec<Entry>,
}

impl Table {
    pub fn new(path: &[&str], array: bool) -> Table {
        Table {
            path: path.iter().map(|p| p.to_string()).collect(),
            array,
            ..Table::default()
        }
    }

    /// Set `key` (replacing an earlier value, where it stood) and return it for notes.
    pub fn set(&mut self, key: &str, value: impl Into<Value>, from: Option<&Origin>) -> &mut Entry {
        let entry = Entry {
            key: key.to_string(),
            value: value.into(),
            from: from.cloned(),
            notes: Vec::new(),
        };
        let index = match self.entries.iter().position(|e| e.key == key) {
            Some(i) => {
                let notes = std::mem::take(&mut self.entries[i].notes);
                self.entries[i] = Entry { notes, ..entry };
                i
            }
            None => {
                self.entries.push(entry);
                self.entries.len() - 1
            }
        };
        &mut self.entries[index]
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.iter().find(|e| e.key == key).map(|e| &e.value)
    }
}

impl Entry {
    pub fn note(&mut self, text: impl Into<String>) -> &mut Entry {
        self.notes.push(text.into());
        self
    }
}

/// The whole output: where it came from, what was left out, and the tables.
#[derive(Debug, Default)]
pub struct Document {
    pub sources: Vec<String>,
    pub skipped: Vec<Skipped>,
    pub tables: Vec<Table>,
}

/// Width at which notes are wrapped into several comment lines.
const NOTE_WIDTH: usize = 100;

pub fn render(doc: &Document) -> String {
    let mut out = String::new();
    out.push_str("# stackinit.toml written by `stackinit import` from:\n");
    for source in &doc.sources {
        let _ = writeln!(out, "#   {source}");
    }
    out.push_str(
        "# Each key says which input line it came from. Review it, then `stackinit check --config FILE`.\n",
    );
    if doc.skipped.is_empty() {
        out.push_str("#\n# Everything in the input was converted.\n");
    } else {
        let _ = writeln!(
            out,
            "#\n# Not converted ({}): FILE:LINE: what: why",
            doc.skipped.len()
        );
        for skipped in &doc.skipped {
            comment(&mut out, "", &skipped.to_string());
        }
    }
    for table in &doc.tables {
        out.push('\n');
        render_table(&mut out, table);
    }
    out
}

fn render_table(out: &mut String, table: &Table) {
    let indent = if table.path.len() > 2 { "  " } else { "" };
    for note in &table.notes {
        comment(out, indent, note);
    }
    let path: Vec<String> = table.path.iter().map(|p| key(p)).collect();
    let (open, close) = if table.array {
        ("[[", "]]")
    } else {
        ("[", "]")
    };
    let _ = write!(out, "{indent}{open}{}{close}", path.join("."));
    match &table.from {
        Some(from) => {
            let _ = writeln!(out, "  # {from}");
        }
        None => out.push('\n'),
    }
    for entry in &table.entries {
        for note in &entry.notes {
            comment(out, indent, note);
        }
        let _ = write!(
            out,
            "{indent}{} = {}",
            key(&entry.key),
            inline(&entry.value)
        );
        match &entry.from {
            Some(from) => {
                let _ = writeln!(out, "  # {from}");
            }
            None => out.push('\n'),
        }
    }
}

/// `# text`, wrapped at word boundaries; control characters from the input become spaces.
fn comment(out: &mut String, indent: &str, text: &str) {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut line = String::new();
    for word in clean.split(' ').filter(|w| !w.is_empty()) {
        if !line.is_empty() && line.len() + 1 + word.len() > NOTE_WIDTH {
            let _ = writeln!(out, "{indent}# {line}");
            line = format!("  {word}");
            continue;
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    let _ = writeln!(out, "{indent}# {line}");
}

/// A bare key where TOML allows one, else a quoted one.
pub fn key(text: &str) -> String {
    let bare = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        text.to_string()
    } else {
        inline(&Value::String(text.to_string()))
    }
}

/// A value on one line: strings quoted and escaped by toml, arrays and inline tables spaced.
pub fn inline(value: &Value) -> String {
    match value {
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(inline).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Table(table) => {
            if table.is_empty() {
                return "{}".into();
            }
            let items: Vec<String> = table
                .iter()
                .map(|(k, v)| format!("{} = {}", key(k), inline(v)))
                .collect();
            format!("{{ {} }}", items.join(", "))
        }
        other => other.to_string(),
    }
}

/// A list of strings as a TOML array.
pub fn strings<S: AsRef<str>>(items: &[S]) -> Value {
    Value::Array(
        items
            .iter()
            .map(|s| Value::String(s.as_ref().to_string()))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::rc::Rc;

    #[test]
    fn renders_tables_with_origins_notes_and_escaped_values() {
        let file: Rc<Path> = Rc::from(Path::new("/etc/x.conf"));
        let at = Origin::new(&file, 3);
        let mut table = Table::new(&["service", "web.v2"], false);
        table
            .set("command", strings(&["a \"b\"", "c\\d"]), Some(&at))
            .note("why it is so");
        let mut env = toml::map::Map::new();
        env.insert("A B".into(), Value::String("1".into()));
        table.set("environment", Value::Table(env), None);
        let doc = Document {
            sources: vec!["/etc/x.conf".into()],
            skipped: Vec::new(),
            tables: vec![table],
        };
        let text = render(&doc);
        assert!(text.contains("[service.\"web.v2\"]\n"), "{text}");
        assert!(
            text.contains("# why it is so\ncommand = ['a \"b\"', 'c\\d']  # /etc/x.conf:3\n"),
            "{text}"
        );
        assert!(
            text.contains("environment = { \"A B\" = \"1\" }\n"),
            "{text}"
        );
        let parsed: toml::Table = toml::from_str(&text).expect("valid TOML");
        assert_eq!(
            parsed["service"]["web.v2"]["command"][0].as_str(),
            Some("a \"b\"")
        );
    }

    #[test]
    fn long_notes_wrap_and_control_characters_go() {
        let mut out = String::new();
        comment(&mut out, "", &format!("{} tail\nnext", "word ".repeat(30)));
        assert!(out.lines().count() >= 2, "{out}");
        assert!(out.lines().all(|l| l.starts_with('#')), "{out}");
    }
}
