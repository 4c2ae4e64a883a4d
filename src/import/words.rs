//! A supervisord `command=` split into argv as supervisord splits it: Python's `shlex.split` (POSIX
//! mode, no comments). The `shlex` crate follows sh instead, which differs where it matters here: in
//! double quotes Python keeps the backslash of `\$` (the program gets `\$`), sh drops it.
#![forbid(unsafe_code)]

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// Where the splitter is: between words, in a word, in quotes, or after a backslash.
#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Between,
    Word,
    Quoted(char),
    /// After `\`; the state to return to.
    Escaped(Option<char>),
}

/// The words of `text`, or why Python would refuse it.
pub fn split(text: &str) -> Result<Vec<String>, &'static str> {
    let mut words = Vec::new();
    let mut word = String::new();
    // A quoted empty string ("") is a word too.
    let mut quoted = false;
    let mut state = State::Between;
    for c in text.chars() {
        state = match state {
            State::Between | State::Word => match c {
                c if is_space(c) => {
                    if state == State::Word || quoted {
                        words.push(std::mem::take(&mut word));
                        quoted = false;
                    }
                    State::Between
                }
                '\\' => State::Escaped(None),
                '"' | '\'' => State::Quoted(c),
                c => {
                    word.push(c);
                    State::Word
                }
            },
            State::Quoted(q) => {
                quoted = true;
                match c {
                    c if c == q => State::Word,
                    '\\' if q == '"' => State::Escaped(Some(q)),
                    c => {
                        word.push(c);
                        State::Quoted(q)
                    }
                }
            }
            State::Escaped(within) => {
                // In double quotes only `\"` and `\\` are escapes; any other backslash stays.
                if within.is_some_and(|q| c != q && c != '\\') {
                    word.push('\\');
                }
                word.push(c);
                within.map_or(State::Word, State::Quoted)
            }
        };
    }
    match state {
        State::Quoted(_) => Err("no closing quotation"),
        State::Escaped(_) => Err("no escaped character"),
        State::Word => {
            words.push(word);
            Ok(words)
        }
        State::Between => {
            if quoted {
                words.push(word);
            }
            Ok(words)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        split(text).expect("splits")
    }

    #[test]
    fn pythons_posix_rules() {
        assert_eq!(
            words("/bin/app --name \"a b\" 'c d'"),
            ["/bin/app", "--name", "a b", "c d"]
        );
        assert_eq!(words("a\\ b \"a\\\"b\" 'x\\y'"), ["a b", "a\"b", "x\\y"]);
        assert_eq!(
            words("\"x\\$y\" \"back\\\\slash\""),
            ["x\\$y", "back\\slash"]
        );
        assert_eq!(words("a\"b c\"d ''"), ["ab cd", ""]);
        assert_eq!(words("  spaced\n\tout  "), ["spaced", "out"]);
        assert!(words("").is_empty());
        assert!(split("\"open").is_err());
        assert!(split("trailing\\").is_err());
    }
}
