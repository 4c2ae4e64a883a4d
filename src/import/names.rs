//! The names a supervisord program's values expand (`%(program_name)s`, `%(process_num)d`,
//! `%(ENV_X)s`, and the common ones), shared by the converters of programs, their logs and web apps.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::Path;

use super::expand::{self, Val};
use super::report::ImportError;
use super::supervisord::{self, Value};

/// What a program's values may expand to besides the common names.
pub struct Names<'a> {
    pub program: &'a str,
    pub group: &'a str,
    pub numprocs: i64,
    /// `[supervisord] environment` merged with the program's own, for `%(ENV_X)s`.
    pub env: BTreeMap<String, String>,
}

impl Names<'_> {
    /// A value as supervisord sees it in process `num`.
    pub fn expand(&self, value: &Value, num: i64) -> Result<String, ImportError> {
        let here = value.at.dir();
        expand::expand(&value.text, &|name| self.lookup(name, num, &here))
            .map_err(|e| ImportError::at(&value.at, e))
    }

    fn lookup(&self, name: &str, num: i64, here: &Path) -> Option<Val> {
        match name {
            "program_name" => Some(Val::Str(self.program.to_string())),
            "group_name" => Some(Val::Str(self.group.to_string())),
            "process_num" => Some(Val::Int(num)),
            "numprocs" => Some(Val::Int(self.numprocs)),
            _ => match name.strip_prefix("ENV_").and_then(|v| self.env.get(v)) {
                Some(v) => Some(Val::Str(v.clone())),
                None => supervisord::common_expansion(name, here),
            },
        }
    }

    /// `%(ENV_X)s` names a value takes from the importing shell rather than from the config.
    pub fn shell_names(&self, value: &Value) -> Vec<String> {
        value
            .text
            .split("%(ENV_")
            .skip(1)
            .filter_map(|rest| rest.split_once(')').map(|(name, _)| name.to_string()))
            .filter(|name| !self.env.contains_key(name))
            .collect()
    }
}
