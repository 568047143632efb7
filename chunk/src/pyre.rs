//! Python `re` behaviour on top of the `regex` crate: the pattern syntax differences that
//! LangChain's separators run into, and `re.split`'s output layout and empty-match rules.

use regex::Regex;

use crate::ChunkError;

/// Compiles a Python `re` pattern. Look-around and backreferences (which `regex` lacks) are
/// [`ChunkError::UnsupportedRegex`]; any other rejection is [`ChunkError::InvalidRegex`].
pub(crate) fn compile(pattern: &str) -> Result<Regex, ChunkError> {
    let translated = translate(pattern);
    match Regex::new(&translated) {
        Ok(re) => Ok(re),
        Err(err) => {
            use regex_syntax::ast::ErrorKind;
            let unsupported = matches!(
                regex_syntax::ast::parse::Parser::new().parse(&translated),
                Err(ref e) if matches!(
                    e.kind(),
                    ErrorKind::UnsupportedLookAround | ErrorKind::UnsupportedBackreference
                )
            );
            if unsupported {
                Err(ChunkError::UnsupportedRegex(pattern.to_owned()))
            } else {
                Err(ChunkError::InvalidRegex {
                    pattern: pattern.to_owned(),
                    reason: err.to_string(),
                })
            }
        }
    }
}

/// Rewrites the Python-only spellings into `regex` syntax: a `{` that does not start a
/// repetition (and a lone `}`) is a literal, `{,n}` means `{0,n}`, `\Z` is `\z`, `\0oo` is
/// octal, `\b` in a class is backspace, and `[`, `&`, `~` inside a class are literals (they
/// are nesting and set operators in `regex`).
fn translate(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut in_class = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' => {
                let Some(&n) = chars.get(i + 1) else {
                    out.push('\\'); // dangling escape: invalid in both dialects
                    break;
                };
                i += 2;
                if n == '0' {
                    let mut value = 0u32;
                    let mut digits = 0;
                    while digits < 2 {
                        match chars.get(i).and_then(|d| d.to_digit(8)) {
                            Some(d) => {
                                value = value * 8 + d;
                                i += 1;
                                digits += 1;
                            }
                            None => break,
                        }
                    }
                    out.push_str(&format!("\\x{{{value:X}}}"));
                } else if n == 'Z' && !in_class {
                    out.push_str("\\z");
                } else if n == 'b' && in_class {
                    out.push_str("\\x08");
                } else if n.is_ascii_alphanumeric() {
                    out.push('\\');
                    out.push(n);
                } else {
                    push_literal(&mut out, n);
                }
                continue;
            }
            '[' if !in_class => {
                in_class = true;
                out.push('[');
                i += 1;
                if chars.get(i) == Some(&'^') {
                    out.push('^');
                    i += 1;
                }
                if chars.get(i) == Some(&']') {
                    out.push_str("\\]");
                    i += 1;
                }
                continue;
            }
            ']' if in_class => {
                in_class = false;
                out.push(']');
            }
            '[' | '&' | '~' if in_class => {
                out.push('\\');
                out.push(c);
            }
            '{' if !in_class => {
                if let Some((quantifier, next)) = repetition(&chars, i) {
                    out.push_str(&quantifier);
                    i = next;
                    continue;
                }
                out.push_str("\\{");
            }
            '}' if !in_class => out.push_str("\\}"),
            _ => out.push(c),
        }
        i += 1;
    }
    out
}

/// Python's `{m}`, `{m,}`, `{,n}`, `{m,n}`, `{,}` at `chars[at]` (a `{`), in `regex` syntax,
/// with the index after the closing brace; `None` where Python reads a literal `{`.
fn repetition(chars: &[char], at: usize) -> Option<(String, usize)> {
    let mut i = at + 1;
    if chars.get(i) == Some(&'}') {
        return None;
    }
    let digits = |i: &mut usize| {
        let start = *i;
        while chars.get(*i).is_some_and(char::is_ascii_digit) {
            *i += 1;
        }
        chars[start..*i].iter().collect::<String>()
    };
    let lo = digits(&mut i);
    let comma = chars.get(i) == Some(&',');
    let hi = if comma {
        i += 1;
        digits(&mut i)
    } else {
        String::new()
    };
    if chars.get(i) != Some(&'}') {
        return None;
    }
    let lo = if lo.is_empty() { "0".to_owned() } else { lo };
    let quantifier = if comma {
        format!("{{{lo},{hi}}}")
    } else {
        format!("{{{lo}}}")
    };
    Some((quantifier, i + 1))
}

fn push_literal(out: &mut String, c: char) {
    let mut buf = [0u8; 4];
    out.push_str(&regex::escape(c.encode_utf8(&mut buf)));
}

/// `re.split(pattern, text)` (`with_match` false) or `re.split(f"({pattern})", text)`
/// (`with_match` true): the texts between matches, each match preceded (when `with_match`) by
/// the whole match and then by the pattern's own groups (`None` for a group that did not
/// take part). Matches are found as Python 3.7+ does: an empty match is allowed right after
/// a non-empty one, but not at the position where the previous empty match was.
pub(crate) fn split<'t>(re: &Regex, text: &'t str, with_match: bool) -> Vec<Option<&'t str>> {
    let mut out = Vec::new();
    let groups = re.captures_len();
    let first_group = if with_match { 0 } else { 1 };
    let mut pos = 0;
    let mut last = 0;
    let mut must_advance = false;
    while pos <= text.len() {
        let mut start = pos;
        let caps = loop {
            let Some(caps) = re.captures_at(text, start) else {
                break None;
            };
            let Some(m) = caps.get(0) else { break None };
            if must_advance && m.start() == pos && m.end() == pos {
                // An empty match where the previous empty one was: look from the next char.
                match text[pos..].chars().next() {
                    Some(c) if start == pos => {
                        start = pos + c.len_utf8();
                        continue;
                    }
                    _ => break None,
                }
            }
            break Some(caps);
        };
        let Some(caps) = caps else { break };
        let Some(m) = caps.get(0) else { break };
        out.push(Some(&text[last..m.start()]));
        for g in first_group..groups {
            out.push(caps.get(g).map(|g| g.as_str()));
        }
        must_advance = m.start() == m.end();
        last = m.end();
        pos = m.end();
    }
    out.push(Some(&text[last..]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translates_python_only_syntax() {
        assert_eq!(translate("\\n\\\\chapter{"), "\\n\\\\chapter\\{");
        assert_eq!(translate("\\n#{1,6} "), "\\n#{1,6} ");
        assert_eq!(translate("a{,3}b{}c{2,}"), "a{0,3}b\\{\\}c{2,}");
        assert_eq!(translate("[[&]\\Z"), "[\\[\\&]\\z");
        assert_eq!(translate("\\ \\-"), " \\-");
    }

    #[test]
    fn split_like_python() {
        let re = compile("a*").unwrap();
        // re.split('a*', 'baac') == ['', 'b', '', 'c', '']
        let got: Vec<_> = split(&re, "baac", false).into_iter().flatten().collect();
        assert_eq!(got, ["", "b", "", "c", ""]);
        let re = compile("(x)(y)?").unwrap();
        assert_eq!(
            split(&re, "axb", false),
            [Some("a"), Some("x"), None, Some("b")]
        );
    }
}
