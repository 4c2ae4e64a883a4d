//! The parsed document with spans: key paths, lookups by path, and "which key is at this byte offset".
#![forbid(unsafe_code)]

use std::fmt;
use std::ops::Range;

use toml::de::DeValue;
use toml::Spanned;

/// One step of a key path: a table key or an array index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// A path from the document root, shown as `service.app.after` or `proxy.server[0].location[1].path`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn root() -> KeyPath {
        KeyPath(Vec::new())
    }
    pub fn key(&self, key: &str) -> KeyPath {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.to_string()));
        KeyPath(segs)
    }
    pub fn index(&self, index: usize) -> KeyPath {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(index));
        KeyPath(segs)
    }
    pub fn starts_with(&self, prefix: &KeyPath) -> bool {
        self.0.starts_with(&prefix.0)
    }
    /// The path up to and including its last table key (drops trailing array indexes).
    pub fn up_to_last_key(&self) -> KeyPath {
        let end = self
            .0
            .iter()
            .rposition(|s| matches!(s, Seg::Key(_)))
            .map_or(0, |i| i + 1);
        KeyPath(self.0[..end].to_vec())
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(key) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    let bare = !key.is_empty()
                        && key
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                    if bare {
                        f.write_str(key)?;
                    } else {
                        write!(f, "{key:?}")?;
                    }
                }
                Seg::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// Where a key and its value are in the text. Tables from `[headers]` span their header line only.
#[derive(Clone, Debug)]
pub(crate) struct Located<'a, 'i> {
    pub key_span: Option<Range<usize>>,
    pub value: &'a Spanned<DeValue<'i>>,
}

/// The value at `path`, with its key's span when it is a table entry.
pub(crate) fn lookup<'a, 'i>(
    root: &'a Spanned<DeValue<'i>>,
    path: &KeyPath,
) -> Option<Located<'a, 'i>> {
    let mut here = Located {
        key_span: None,
        value: root,
    };
    for seg in &path.0 {
        here = match (seg, here.value.get_ref()) {
            (Seg::Key(key), DeValue::Table(table)) => {
                let (k, v) = table.get_key_value(key.as_str())?;
                Located {
                    key_span: Some(k.span()),
                    value: v,
                }
            }
            (Seg::Index(index), DeValue::Array(array)) => Located {
                key_span: None,
                value: array.get(*index)?,
            },
            _ => return None,
        };
    }
    Some(here)
}

/// The innermost key path whose key or value span contains `offset`.
pub(crate) fn path_at(root: &Spanned<DeValue<'_>>, offset: usize) -> KeyPath {
    let mut best: Option<(usize, KeyPath)> = None;
    visit(root, &KeyPath::root(), &mut |path, key_span, value_span| {
        for span in [key_span, Some(value_span)].into_iter().flatten() {
            let contains = span.start <= offset
                && (offset < span.end || (span.is_empty() && offset == span.start));
            let better = best.as_ref().is_none_or(|(len, _)| span.len() <= *len);
            if contains && better {
                best = Some((span.len(), path.clone()));
            }
        }
    });
    best.map(|(_, path)| path).unwrap_or_default()
}

/// Called with (path, key span, value span) for each entry.
type Visitor<'f> = dyn FnMut(&KeyPath, Option<Range<usize>>, Range<usize>) + 'f;

/// Call `f(path, key_span, value_span)` for every value below `value`, depth first.
fn visit(value: &Spanned<DeValue<'_>>, path: &KeyPath, f: &mut Visitor<'_>) {
    match value.get_ref() {
        DeValue::Table(table) => {
            for (k, v) in table.iter() {
                let child = path.key(k.get_ref());
                f(&child, Some(k.span()), v.span());
                visit(v, &child, f);
            }
        }
        DeValue::Array(array) => {
            for (i, v) in array.iter().enumerate() {
                let child = path.index(i);
                f(&child, None, v.span());
                visit(v, &child, f);
            }
        }
        _ => {}
    }
}

/// Remove the entry at `path` (which must end in a key). Returns whether something was removed.
pub(crate) fn remove(root: &mut Spanned<DeValue<'_>>, path: &KeyPath) -> bool {
    let Some((Seg::Key(last), parent)) = path.0.split_last() else {
        return false;
    };
    let mut here = root;
    for seg in parent {
        here = match (seg, here.get_mut()) {
            (Seg::Key(key), DeValue::Table(table)) => match table.get_mut(key.as_str()) {
                Some(v) => v,
                None => return false,
            },
            (Seg::Index(index), DeValue::Array(array)) => match array.get_mut(*index) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match here.get_mut() {
        DeValue::Table(table) => table.remove(last.as_str()).is_some(),
        _ => false,
    }
}

/// Byte offset -> 1-based (line, column), columns counted in characters.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;
    use toml::de::DeTable;

    fn parse(text: &str) -> Spanned<DeValue<'_>> {
        let table = DeTable::parse(text).unwrap();
        Spanned::new(table.span(), DeValue::Table(table.into_inner()))
    }

    #[test]
    fn line_and_column() {
        let text = "a = 1\nbé = \"x\"\n\nc = 3";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 4), (1, 5));
        assert_eq!(line_col(text, 6), (2, 1));
        // Columns count characters, not bytes: the value after "bé = " starts at column 6.
        assert_eq!(line_col(text, text.find('"').unwrap()), (2, 6));
        assert_eq!(line_col(text, text.len()), (4, 6));
        assert_eq!(line_col(text, text.len() + 10), (4, 6));
        // An offset inside a multibyte character is moved back to its start.
        assert_eq!(line_col(text, 8), (2, 2));
    }

    #[test]
    fn paths_display_and_lookup() {
        let text = "[service.\"a.b\"]\nafter = [\"x\", \"y\"]\n[[proxy.server]]\n[[proxy.server.location]]\npath = \"/\"\n";
        let root = parse(text);
        let after = KeyPath::root().key("service").key("a.b").key("after");
        assert_eq!(after.to_string(), "service.\"a.b\".after");
        let y = lookup(&root, &after.index(1)).unwrap();
        assert_eq!(&text[y.value.span()], "\"y\"");
        assert_eq!(path_at(&root, y.value.span().start), after.index(1));
        let loc_path = KeyPath::root()
            .key("proxy")
            .key("server")
            .index(0)
            .key("location")
            .index(0)
            .key("path");
        assert_eq!(loc_path.to_string(), "proxy.server[0].location[0].path");
        let path = lookup(&root, &loc_path).unwrap();
        assert_eq!(path_at(&root, path.key_span.unwrap().start), loc_path);
    }

    #[test]
    fn remove_entries() {
        let mut root = parse("[service.app]\ncommand = [\"x\"]\nbogus = 1\n");
        let bogus = KeyPath::root().key("service").key("app").key("bogus");
        assert!(remove(&mut root, &bogus));
        assert!(lookup(&root, &bogus).is_none());
        assert!(!remove(&mut root, &bogus));
    }
}
