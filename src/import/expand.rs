//! supervisord's `%(name)s` expansions: Python's `text % mapping`, for the conversions configs use
//! (`s`, `d`, `i`, `u` with flags, width and precision) and `%%`. Anything else is refused, as
//! supervisord refuses it ("badly formatted"), rather than guessed.
#![forbid(unsafe_code)]

/// A value an expansion may name: a string (`here`, `program_name`, `ENV_X`) or a number
/// (`process_num`, `numprocs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Val {
    Str(String),
    Int(i64),
}

/// The conversion spec after `%(name)`: flags, width, precision and the type letter.
struct Spec {
    left: bool,
    zero: bool,
    sign: Option<char>,
    width: usize,
    precision: Option<usize>,
    kind: char,
}

/// Longest output of one expansion: a width of a million would be a typo, not a config.
const MAX_WIDTH: usize = 4096;

/// Expand `%(name)X` in `text`; `lookup` gives the value of a name, or None if it cannot be expanded.
pub fn expand(text: &str, lookup: &dyn Fn(&str) -> Option<Val>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        if let Some(after) = rest.strip_prefix('%') {
            out.push('%');
            rest = after;
            continue;
        }
        let Some(inner) = rest.strip_prefix('(') else {
            return Err(format!(
                "{text:?} has a '%' that is neither \"%%\" nor \"%(name)s\""
            ));
        };
        let close = inner
            .find(')')
            .ok_or_else(|| format!("{text:?} has an unclosed \"%(\""))?;
        let name = &inner[..close];
        let (spec, after) = parse_spec(&inner[close + 1..])
            .ok_or_else(|| format!("{text:?}: incomplete or unsupported format after %({name})"))?;
        let value = lookup(name).ok_or_else(|| format!("%({name}) cannot be expanded"))?;
        out.push_str(&format_value(&spec, &value, name)?);
        rest = after;
    }
    out.push_str(rest);
    Ok(out)
}

fn parse_spec(text: &str) -> Option<(Spec, &str)> {
    let mut spec = Spec {
        left: false,
        zero: false,
        sign: None,
        width: 0,
        precision: None,
        kind: 's',
    };
    let mut chars = text.char_indices().peekable();
    while let Some(&(_, c)) = chars.peek() {
        match c {
            '-' => spec.left = true,
            '0' => spec.zero = true,
            '+' => spec.sign = Some('+'),
            ' ' if spec.sign.is_none() => spec.sign = Some(' '),
            ' ' | '#' => {}
            _ => break,
        }
        chars.next();
    }
    spec.width = digits(&mut chars)?;
    if chars.peek().is_some_and(|&(_, c)| c == '.') {
        chars.next();
        spec.precision = Some(digits(&mut chars)?);
    }
    while chars
        .peek()
        .is_some_and(|&(_, c)| matches!(c, 'h' | 'l' | 'L'))
    {
        chars.next();
    }
    let (at, kind) = chars.next()?;
    if !matches!(kind, 's' | 'd' | 'i' | 'u') || spec.width > MAX_WIDTH {
        return None;
    }
    spec.kind = kind;
    Some((spec, &text[at + kind.len_utf8()..]))
}

fn digits(chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>) -> Option<usize> {
    let mut n: usize = 0;
    while let Some(&(_, c)) = chars.peek() {
        let Some(d) = c.to_digit(10) else { break };
        n = n.checked_mul(10)?.checked_add(d as usize)?;
        chars.next();
    }
    Some(n)
}

fn format_value(spec: &Spec, value: &Val, name: &str) -> Result<String, String> {
    let body = match (spec.kind, value) {
        ('s', Val::Str(s)) => match spec.precision {
            Some(p) => s.chars().take(p).collect(),
            None => s.clone(),
        },
        ('s', Val::Int(n)) => n.to_string(),
        (_, Val::Int(n)) => {
            let mut digits = n.unsigned_abs().to_string();
            if let Some(p) = spec.precision {
                digits = format!("{digits:0>p$}");
            }
            let sign = if *n < 0 {
                "-".to_string()
            } else {
                spec.sign.map(String::from).unwrap_or_default()
            };
            if spec.zero && !spec.left && spec.width > sign.len() + digits.len() {
                let fill = spec.width - sign.len();
                return Ok(format!("{sign}{digits:0>fill$}"));
            }
            format!("{sign}{digits}")
        }
        (kind, Val::Str(_)) => {
            return Err(format!(
                "%({name}){kind} needs a number, but {name} is a string"
            ))
        }
    };
    let width = spec.width;
    Ok(if spec.left {
        format!("{body:<width$}")
    } else {
        format!("{body:>width$}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<Val> {
        match name {
            "program_name" => Some(Val::Str("web".into())),
            "here" => Some(Val::Str("/etc/supervisor".into())),
            "process_num" => Some(Val::Int(7)),
            _ => None,
        }
    }

    fn ex(text: &str) -> Result<String, String> {
        expand(text, &lookup)
    }

    #[test]
    fn names_and_python_number_formats() {
        assert_eq!(ex("%(program_name)s_%(process_num)02d").unwrap(), "web_07");
        assert_eq!(ex("%(here)s/../app").unwrap(), "/etc/supervisor/../app");
        assert_eq!(ex("port=80%(process_num)02d").unwrap(), "port=8007");
        assert_eq!(
            ex("[%(process_num)3d][%(process_num)-3d]").unwrap(),
            "[  7][7  ]"
        );
        assert_eq!(ex("%(process_num)s %(program_name).2s").unwrap(), "7 we");
        assert_eq!(ex("date +%%s").unwrap(), "date +%s");
        assert_eq!(ex("no expansions").unwrap(), "no expansions");
    }

    #[test]
    fn what_supervisord_refuses_is_refused() {
        assert!(ex("%(nope)s")
            .unwrap_err()
            .contains("%(nope) cannot be expanded"));
        assert!(ex("50%").is_err());
        assert!(ex("%s").is_err());
        assert!(ex("%(here)d").unwrap_err().contains("needs a number"));
        assert!(ex("%(here").is_err());
        assert!(ex("%(here)q").is_err());
        assert!(ex("%(here)99999999999999999999s").is_err());
    }
}
