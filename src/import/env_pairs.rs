//! supervisord's `environment=KEY="val",KEY2="val2"`, parsed as supervisord parses it
//! (`datatypes.dict_of_key_value_pairs`): Python's shlex in non-POSIX mode with `/.+-():` added to the
//! word characters, then tokens taken four at a time as `KEY`, `=`, `VALUE`, separator, with quotes
//! stripped from the value's ends. Its quirks are kept on purpose, since they are what the program
//! really got: an unquoted value stops at the first character that is not a word character
//! (`A=x$y` fails, `A=x y` loses `y`), and `#` starts a comment outside quotes.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_/.+-():".contains(c)
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// Python's `list(shlex.shlex(text))` with the extra word characters.
fn tokens(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    // Whitespace and comments between tokens are skipped.
    while let Some(c) = chars.next() {
        if is_space(c) {
            continue;
        }
        if c == '#' {
            chars.by_ref().find(|&c| c == '\n');
            continue;
        }
        let mut token = String::from(c);
        if c == '"' || c == '\'' {
            loop {
                let next = chars.next().ok_or("no closing quotation")?;
                token.push(next);
                if next == c {
                    break;
                }
            }
        } else if is_word(c) {
            while let Some(&next) = chars.peek() {
                if next == '#' {
                    // Non-POSIX shlex drops the rest of the line and goes on with the same word.
                    chars.by_ref().find(|&c| c == '\n');
                } else if is_word(next) || next == '"' || next == '\'' {
                    token.push(next);
                    chars.next();
                } else {
                    break;
                }
            }
        }
        out.push(token);
    }
    Ok(out)
}

/// The variables, or supervisord's reason to refuse the value.
pub fn parse(text: &str) -> Result<BTreeMap<String, String>, String> {
    let tokens = tokens(text)?;
    let mut vars = BTreeMap::new();
    let mut i = 0;
    while i < tokens.len() {
        match tokens.get(i..i + 3) {
            Some([key, eq, value]) if eq == "=" => {
                vars.insert(key.clone(), value.trim_matches(['\'', '"']).to_string());
            }
            _ => {
                return Err(format!(
                    "unexpected end of key/value pairs in {text:?} (write KEY=\"value\",KEY2=\"value2\")"
                ))
            }
        }
        i += 4;
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(text: &str) -> Vec<(String, String)> {
        parse(text).expect("parses").into_iter().collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn quoted_and_plain_values() {
        assert_eq!(
            env("A=\"1,2\",B='x y',C=/usr/bin:/bin,D=a.b-c+d"),
            pairs(&[
                ("A", "1,2"),
                ("B", "x y"),
                ("C", "/usr/bin:/bin"),
                ("D", "a.b-c+d")
            ])
        );
        assert_eq!(env(""), pairs(&[]));
        assert_eq!(env("A=\"\""), pairs(&[("A", "")]));
        assert_eq!(
            env("\n  A=\"1\",\n  B=\"2\""),
            pairs(&[("A", "1"), ("B", "2")])
        );
    }

    #[test]
    fn supervisords_quirks_are_kept() {
        // The separator is never checked, and an unquoted value ends at a non-word character.
        assert_eq!(env("A=1;B=2"), pairs(&[("A", "1"), ("B", "2")]));
        assert!(parse("A=x y,B=2").is_err());
        assert_eq!(env("A=\"x\"y"), pairs(&[("A", "x")]));
        assert!(parse("A=x$y").is_err());
        assert!(parse("A=\"open").is_err());
        assert!(parse("A").is_err());
        assert_eq!(env("A=1 # comment\n,B=2"), pairs(&[("A", "1"), ("B", "2")]));
    }
}
