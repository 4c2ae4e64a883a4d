//! nginx `location` selection: an exact (`=`) match first, else the longest matching prefix.
#![forbid(unsafe_code)]

use std::collections::HashMap;

/// Compiled locations of one server, each mapped to its index in the server's location list.
#[derive(Debug, Default)]
pub struct Locations {
    exact: HashMap<String, usize>,
    /// (prefix, index), longest first; equal prefixes keep declaration order.
    prefixes: Vec<(String, usize)>,
}

impl Locations {
    /// `locations` are (path, exact) pairs in declaration order.
    pub fn new<'a>(locations: impl IntoIterator<Item = (&'a str, bool)>) -> Locations {
        let mut compiled = Locations::default();
        for (index, (path, exact)) in locations.into_iter().enumerate() {
            if exact {
                compiled.exact.entry(path.to_string()).or_insert(index);
            } else {
                compiled.prefixes.push((path.to_string(), index));
            }
        }
        compiled
            .prefixes
            .sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        compiled
    }

    /// The location for a (decoded, normalized) request path.
    pub fn select(&self, path: &str) -> Option<usize> {
        if let Some(&index) = self.exact.get(path) {
            return Some(index);
        }
        self.prefixes
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map(|&(_, index)| index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_then_longest_prefix() {
        let l = Locations::new([
            ("/", false),
            ("/static/", false),
            ("/static/img/", false),
            ("/api", true),
        ]);
        assert_eq!(l.select("/"), Some(0));
        assert_eq!(l.select("/x"), Some(0));
        assert_eq!(l.select("/static/a.css"), Some(1));
        assert_eq!(l.select("/static/img/a.png"), Some(2));
        assert_eq!(l.select("/api"), Some(3));
        assert_eq!(l.select("/api/x"), Some(0));
        let none = Locations::new([("/only/", false)]);
        assert_eq!(none.select("/other"), None);
    }
}
