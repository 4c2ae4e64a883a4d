//! supervisord's INI dialect, read the way supervisord reads it: Python's `RawConfigParser` with
//! `inline_comment_prefixes = (';', '#')` and `strict = False` (supervisor/options.py,
//! `UnhosedConfigParser`). Unlike the INI crates on crates.io, it keeps the line of every key (the
//! import names FILE:LINE for what it cannot convert) and follows Python's rules exactly:
//!
//! * a line whose first non-blank character is `;` or `#` is a comment; elsewhere `;` and `#` start a
//!   comment only after whitespace (`command=x;y` keeps `;y`, `command=x ;y` does not);
//! * `key = value` or `key: value`, split at the first `=` or `:`; keys are lowercased, values trimmed;
//! * a line indented deeper than its key's line continues the value (joined with newlines), and blank
//!   lines inside such a value are kept;
//! * a section or key that appears twice is merged, the later value winning (not strict);
//! * `[DEFAULT]` keys are seen by every section.
#![forbid(unsafe_code)]

/// One `key = value`, with the line it starts on (1-based).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    pub line: usize,
}

/// One `[section]` of one file, its keys merged as configparser merges them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    pub line: usize,
    pub entries: Vec<Entry>,
}

impl Section {
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.key == key)
    }

    /// Set `entry`, replacing an earlier value of the same key (where it stood).
    pub fn merge(&mut self, entry: Entry) {
        match self.entries.iter_mut().find(|e| e.key == entry.key) {
            Some(old) => *old = entry,
            None => self.entries.push(entry),
        }
    }
}

/// A line supervisord itself would refuse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: usize,
    pub message: String,
}

/// The key whose value a continuation line would extend: its index and its line's indentation.
struct Open {
    index: usize,
    indent: usize,
}

/// Every section of `text`, in order of first appearance, `[DEFAULT]` included under that name.
pub fn parse(text: &str) -> Result<Vec<Section>, SyntaxError> {
    let mut sections: Vec<Section> = Vec::new();
    let mut current: Option<usize> = None;
    let mut open: Option<Open> = None;
    // Continuation lines collected per key: (section, entry) -> lines.
    let mut pieces: Vec<(usize, usize, Vec<String>)> = Vec::new();
    for (number, raw) in text.lines().enumerate() {
        let number = number + 1;
        let (value, had_comment) = strip_comment(raw);
        if value.is_empty() {
            // A blank line inside a multi-line value stays part of it; a comment line does not.
            if let (false, Some(o), Some(s)) = (had_comment, &open, current) {
                push_piece(&mut pieces, s, o.index, String::new());
            }
            continue;
        }
        let indent = raw.len() - raw.trim_start().len();
        if let (Some(o), Some(s)) = (&open, current) {
            if indent > o.indent {
                push_piece(&mut pieces, s, o.index, value.to_string());
                continue;
            }
        }
        if let Some(name) = section_header(value) {
            current = Some(open_section(&mut sections, name, number));
            open = None;
            continue;
        }
        let Some(s) = current else {
            return Err(SyntaxError {
                line: number,
                message: format!("{value:?} is outside any [section] (the file must start with a section header)"),
            });
        };
        let (key, val) = split_option(value).ok_or_else(|| SyntaxError {
            line: number,
            message: format!("{value:?} is not `key = value`"),
        })?;
        let section = &mut sections[s];
        section.merge(Entry {
            key,
            value: val,
            line: number,
        });
        let index = section
            .entries
            .iter()
            .position(|e| e.line == number)
            .unwrap_or(0);
        pieces.retain(|(ps, pe, _)| !(*ps == s && *pe == index));
        open = Some(Open { index, indent });
    }
    join_pieces(&mut sections, pieces);
    Ok(sections)
}

fn push_piece(pieces: &mut Vec<(usize, usize, Vec<String>)>, s: usize, e: usize, line: String) {
    match pieces.iter_mut().find(|(ps, pe, _)| *ps == s && *pe == e) {
        Some((_, _, lines)) => lines.push(line),
        None => pieces.push((s, e, vec![line])),
    }
}

/// Continuation lines are joined to their key's first line with newlines; trailing blank ones dropped.
fn join_pieces(sections: &mut [Section], pieces: Vec<(usize, usize, Vec<String>)>) {
    for (s, e, lines) in pieces {
        if let Some(entry) = sections.get_mut(s).and_then(|sec| sec.entries.get_mut(e)) {
            for line in lines {
                entry.value.push('\n');
                entry.value.push_str(&line);
            }
            let trimmed = entry.value.trim_end().len();
            entry.value.truncate(trimmed);
        }
    }
}

fn open_section(sections: &mut Vec<Section>, name: String, line: usize) -> usize {
    if let Some(i) = sections.iter().position(|s| s.name == name) {
        return i;
    }
    sections.push(Section {
        name,
        line,
        entries: Vec::new(),
    });
    sections.len() - 1
}

/// The line without its comment, trimmed; and whether there was a comment.
fn strip_comment(raw: &str) -> (&str, bool) {
    let trimmed = raw.trim();
    if trimmed.starts_with(['#', ';']) {
        return ("", true);
    }
    let bytes = raw.as_bytes();
    let start = raw.char_indices().find_map(|(i, c)| {
        let after_space = i == 0 || bytes[i - 1].is_ascii_whitespace();
        (matches!(c, '#' | ';') && after_space).then_some(i)
    });
    match start {
        Some(i) => (raw[..i].trim(), true),
        None => (trimmed, false),
    }
}

/// `[name]`: Python's `\[(?P<header>.+)\]` matched at the start, so the name runs to the last `]`.
fn section_header(value: &str) -> Option<String> {
    let rest = value.strip_prefix('[')?;
    let end = rest.rfind(']')?;
    (end > 0).then(|| rest[..end].to_string())
}

/// `key = value` / `key: value`: Python's `(?P<option>.*?)\s*(?P<vi>=|:)\s*(?P<value>.*)$`.
fn split_option(value: &str) -> Option<(String, String)> {
    let at = value.find(['=', ':'])?;
    let key = value[..at].trim_end();
    if key.is_empty() {
        return None;
    }
    Some((key.to_lowercase(), value[at + 1..].trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Section {
        let mut sections = parse(text).expect("parses");
        assert_eq!(sections.len(), 1, "{sections:?}");
        sections.remove(0)
    }

    fn value(section: &Section, key: &str) -> String {
        section.get(key).expect("key").value.clone()
    }

    #[test]
    fn keys_values_and_lines() {
        let s = one("; top comment\n[program:app]\ncommand = /bin/app --x\nDirectory: /srv\n");
        assert_eq!(s.name, "program:app");
        assert_eq!(s.line, 2);
        assert_eq!(value(&s, "command"), "/bin/app --x");
        assert_eq!(value(&s, "directory"), "/srv");
        assert_eq!(s.get("directory").unwrap().line, 4);
    }

    #[test]
    fn inline_comments_need_whitespace_before_them() {
        let s = one("[p]\na = x;y\nb = x ;y\nc = x#y\nd = x\t# note\ne=\"a ; b\"\n");
        assert_eq!(value(&s, "a"), "x;y");
        assert_eq!(value(&s, "b"), "x");
        assert_eq!(value(&s, "c"), "x#y");
        assert_eq!(value(&s, "d"), "x");
        // Quotes mean nothing to configparser.
        assert_eq!(value(&s, "e"), "\"a");
    }

    #[test]
    fn the_first_equals_or_colon_splits() {
        let s = one("[p]\nenvironment=A=\"1\",B=\"x:y\"\nurl: http://x:1\n");
        assert_eq!(value(&s, "environment"), "A=\"1\",B=\"x:y\"");
        assert_eq!(value(&s, "url"), "http://x:1");
    }

    #[test]
    fn indented_lines_continue_a_value() {
        let s = one("[p]\nenvironment=\n    A=\"1\",\n\n    B=\"2\"\n  ; a comment\nnext=1\n");
        assert_eq!(value(&s, "environment"), "\nA=\"1\",\n\nB=\"2\"");
        assert_eq!(value(&s, "next"), "1");
    }

    #[test]
    fn later_values_and_sections_merge() {
        let sections = parse("[a]\nx=1\ny=2\n[b]\nz=3\n[a]\nx=9\n").unwrap();
        assert_eq!(sections.len(), 2);
        assert_eq!(value(&sections[0], "x"), "9");
        assert_eq!(sections[0].get("x").unwrap().line, 7);
        assert_eq!(value(&sections[0], "y"), "2");
    }

    #[test]
    fn header_runs_to_the_last_bracket() {
        assert_eq!(one("[program:x] ; c\n").name, "program:x");
        assert_eq!(one("[a]b]\n").name, "a]b");
    }

    #[test]
    fn refused_lines_name_their_line() {
        assert_eq!(parse("x=1\n").unwrap_err().line, 1);
        assert_eq!(parse("[p]\nok=1\njust words\n").unwrap_err().line, 3);
        assert_eq!(parse("[p]\n=1\n").unwrap_err().line, 2);
    }
}
