//! A small Postgres lexer that yields token kinds and byte ranges, skipping whitespace and comments.
//! It only needs to be exact about where tokens start and end (strings, dollar quotes, quoted
//! identifiers, nested comments); it never interprets SQL beyond that.

use std::ops::Range;

use crate::limits::MAX_TOKENS;

/// What a token is; enough for statement splitting and `pgml.embed` call recognition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Unquoted identifier or keyword.
    Ident,
    /// `"quoted identifier"` (also `U&"..."`).
    QuotedIdent,
    /// A string constant of any flavour; see [`StrFlavour`].
    Str(StrFlavour),
    /// Numeric constant.
    Number,
    /// `$n` positional parameter.
    Param,
    /// Operator run such as `||`, `=>`, `<=>`, `:=`.
    Op,
    /// `::`
    Cast,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Semicolon,
    Dot,
    /// Anything else (a lone `:` and so on).
    Other,
}

/// How a string constant is quoted, which decides how its body decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StrFlavour {
    /// `'...'` (backslashes literal when standard_conforming_strings is on).
    Standard,
    /// `E'...'` with backslash escapes.
    Escape,
    /// `$tag$...$tag$`.
    Dollar,
    /// `U&'...'`, `B'...'`, `X'...'`, `N'...'`: not decoded by the rewriter.
    Other,
}

/// One token: its kind and byte range in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Token {
    pub kind: Kind,
    pub span: Range<usize>,
}

/// Tokens of a text, plus whether something (string, comment, quote) ran to the end unterminated.
#[derive(Debug, Default)]
pub(crate) struct Lexed {
    pub tokens: Vec<Token>,
    pub unterminated: bool,
    /// The text has more than [`MAX_TOKENS`] tokens; `tokens` holds the first of them only.
    pub truncated: bool,
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_ident_cont(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit() || b == b'$'
}

fn is_op_char(b: u8) -> bool {
    b"+-*/<>=~!@#%^&|`?:".contains(&b)
}

/// Tokenizes `sql`. `standard_strings` mirrors the session's standard_conforming_strings.
pub(crate) fn lex(sql: &str, standard_strings: bool) -> Lexed {
    let b = sql.as_bytes();
    let mut out = Lexed::default();
    let mut i = 0;
    while i < b.len() {
        if out.tokens.len() == MAX_TOKENS {
            out.truncated = true;
            break;
        }
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if c == b'/' && b.get(i + 1) == Some(&b'*') {
            match skip_block_comment(b, i) {
                Some(end) => i = end,
                None => {
                    out.unterminated = true;
                    i = b.len();
                }
            }
            continue;
        }
        let kind = match c {
            b'\'' => {
                let (end, ok) = scan_quoted(b, i, b'\'', !standard_strings);
                i = end;
                out.unterminated |= !ok;
                Kind::Str(StrFlavour::Standard)
            }
            b'"' => {
                let (end, ok) = scan_quoted(b, i, b'"', false);
                i = end;
                out.unterminated |= !ok;
                Kind::QuotedIdent
            }
            b'$' => {
                if let Some(end) = scan_param(b, i) {
                    i = end;
                    Kind::Param
                } else if let Some(tag_end) = dollar_tag(b, i) {
                    let tag = &b[i..tag_end];
                    match find(b, tag_end, tag) {
                        Some(close) => i = close + tag.len(),
                        None => {
                            out.unterminated = true;
                            i = b.len();
                        }
                    }
                    Kind::Str(StrFlavour::Dollar)
                } else {
                    i += 1;
                    Kind::Other
                }
            }
            b'0'..=b'9' => {
                i = scan_number(b, i);
                Kind::Number
            }
            b'.' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                i = scan_number(b, i);
                Kind::Number
            }
            b'(' => {
                i += 1;
                Kind::LParen
            }
            b')' => {
                i += 1;
                Kind::RParen
            }
            b'[' => {
                i += 1;
                Kind::LBracket
            }
            b']' => {
                i += 1;
                Kind::RBracket
            }
            b',' => {
                i += 1;
                Kind::Comma
            }
            b';' => {
                i += 1;
                Kind::Semicolon
            }
            b'.' => {
                i += 1;
                Kind::Dot
            }
            b':' if b.get(i + 1) == Some(&b':') => {
                i += 2;
                Kind::Cast
            }
            _ if is_ident_start(c) => {
                let (end, kind, ok) = scan_word(b, i, standard_strings);
                i = end;
                out.unterminated |= !ok;
                kind
            }
            _ if is_op_char(c) => {
                i += 1;
                while i < b.len()
                    && is_op_char(b[i])
                    && !(b[i] == b'-' && b.get(i + 1) == Some(&b'-'))
                    && !(b[i] == b'/' && b.get(i + 1) == Some(&b'*'))
                    && !(b[i] == b':' && b.get(i + 1) == Some(&b':'))
                {
                    i += 1;
                }
                Kind::Op
            }
            _ => {
                i += utf8_len(c);
                Kind::Other
            }
        };
        let end = i.min(b.len());
        out.tokens.push(Token {
            kind,
            span: start..end,
        });
        i = end;
    }
    out
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

/// Returns the index just past a (nested) block comment starting at `i`, or None if unterminated.
fn skip_block_comment(b: &[u8], mut i: usize) -> Option<usize> {
    let mut depth = 0usize;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            depth += 1;
            i += 2;
        } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return Some(i);
            }
        } else {
            i += 1;
        }
    }
    None
}

/// Scans a quoted run opening at `i` (doubled quote escapes it; optionally backslash escapes).
fn scan_quoted(b: &[u8], i: usize, quote: u8, backslash: bool) -> (usize, bool) {
    let mut j = i + 1;
    while j < b.len() {
        if backslash && b[j] == b'\\' {
            j += 2;
            continue;
        }
        if b[j] == quote {
            if b.get(j + 1) == Some(&quote) {
                j += 2;
                continue;
            }
            return (j + 1, true);
        }
        j += 1;
    }
    (b.len(), false)
}

fn scan_param(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while j < b.len() && b[j].is_ascii_digit() {
        j += 1;
    }
    (j > i + 1).then_some(j)
}

/// If a dollar-quote tag (`$$` or `$tag$`) opens at `i`, returns the index just past it.
fn dollar_tag(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    if b.get(j) == Some(&b'$') {
        return Some(j + 1);
    }
    if !b.get(j).copied().is_some_and(is_ident_start) {
        return None;
    }
    while j < b.len() && (is_ident_start(b[j]) || b[j].is_ascii_digit()) {
        j += 1;
    }
    (b.get(j) == Some(&b'$')).then_some(j + 1)
}

fn find(hay: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

fn scan_number(b: &[u8], mut i: usize) -> usize {
    while i < b.len() {
        let c = b[i];
        let exponent_sign =
            (c == b'+' || c == b'-') && matches!(b[i - 1], b'e' | b'E') && !is_hex(b, i);
        let decimal_point = c == b'.' && b.get(i + 1) != Some(&b'.');
        if c.is_ascii_alphanumeric() || c == b'_' || decimal_point || exponent_sign {
            i += 1;
        } else {
            break;
        }
    }
    i
}

fn is_hex(b: &[u8], end: usize) -> bool {
    let mut j = end;
    while j > 0 && b[j - 1].is_ascii_alphanumeric() {
        j -= 1;
    }
    b[j..end].len() > 1 && b[j] == b'0' && matches!(b[j + 1], b'x' | b'X')
}

/// Scans an identifier, or a prefixed string (`E'..'`, `U&'..'`, `B'..'`, `X'..'`, `N'..'`).
fn scan_word(b: &[u8], i: usize, standard_strings: bool) -> (usize, Kind, bool) {
    let c = b[i].to_ascii_lowercase();
    let next = b.get(i + 1).copied();
    if next == Some(b'\'') {
        let flavour = match c {
            b'e' => Some((StrFlavour::Escape, true)),
            b'n' => Some((StrFlavour::Standard, !standard_strings)),
            b'b' | b'x' => Some((StrFlavour::Other, false)),
            _ => None,
        };
        if let Some((flavour, backslash)) = flavour {
            let (end, ok) = scan_quoted(b, i + 1, b'\'', backslash);
            return (end, Kind::Str(flavour), ok);
        }
    }
    if c == b'u' && next == Some(b'&') {
        match b.get(i + 2) {
            Some(b'\'') => {
                let (end, ok) = scan_quoted(b, i + 2, b'\'', false);
                return (end, Kind::Str(StrFlavour::Other), ok);
            }
            Some(b'"') => {
                let (end, ok) = scan_quoted(b, i + 2, b'"', false);
                return (end, Kind::QuotedIdent, ok);
            }
            _ => {}
        }
    }
    let mut j = i + 1;
    while j < b.len() && is_ident_cont(b[j]) {
        j += 1;
    }
    (j, Kind::Ident, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(sql: &str) -> Vec<(Kind, &str)> {
        lex(sql, true)
            .tokens
            .into_iter()
            .map(|t| (t.kind, &sql[t.span]))
            .collect()
    }

    #[test]
    fn strings_comments_and_dollar_quotes_are_single_tokens() {
        let sql =
            "select 'a;''b', E'x\\';y', $f$ ; $$ $f$, /* a /* nested */ ; */ \"q;\"\"\" -- c;\n$1";
        let toks = kinds(sql);
        assert_eq!(
            toks,
            vec![
                (Kind::Ident, "select"),
                (Kind::Str(StrFlavour::Standard), "'a;''b'"),
                (Kind::Comma, ","),
                (Kind::Str(StrFlavour::Escape), "E'x\\';y'"),
                (Kind::Comma, ","),
                (Kind::Str(StrFlavour::Dollar), "$f$ ; $$ $f$"),
                (Kind::Comma, ","),
                (Kind::QuotedIdent, "\"q;\"\"\""),
                (Kind::Param, "$1"),
            ]
        );
    }

    #[test]
    fn backslash_quote_depends_on_standard_conforming_strings() {
        let sql = r"'a\';c'";
        assert_eq!(lex(sql, true).tokens.len(), 4);
        assert_eq!(lex(sql, false).tokens.len(), 1);
    }

    #[test]
    fn unterminated_input_is_flagged() {
        assert!(lex("select 'abc", true).unterminated);
        assert!(lex("select /* abc", true).unterminated);
        assert!(lex("select $x$ abc", true).unterminated);
        assert!(!lex("select $x abc", true).unterminated);
    }

    #[test]
    fn operators_stop_before_comments_and_casts() {
        assert_eq!(
            kinds("a=>--x\n1 x::text"),
            vec![
                (Kind::Ident, "a"),
                (Kind::Op, "=>"),
                (Kind::Number, "1"),
                (Kind::Ident, "x"),
                (Kind::Cast, "::"),
                (Kind::Ident, "text")
            ]
        );
    }
}
