//! Parsing with source spans, and the semantic checks serde cannot express.
#![forbid(unsafe_code)]

use std::path::Path;

use super::{Config, ConfigError};

/// Byte offset -> 1-based (line, column), columns counted in characters.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

pub(crate) fn parse_and_validate(path: &Path, text: &str) -> Result<Config, Vec<ConfigError>> {
    match toml::from_str::<Config>(text) {
        Ok(config) => Ok(config),
        Err(e) => {
            let (line, col) = e.span().map_or((1, 1), |s| line_col(text, s.start));
            Err(vec![ConfigError {
                file: path.to_path_buf(),
                line,
                col,
                key: String::new(),
                message: e.message().trim().to_string(),
            }])
        }
    }
}
