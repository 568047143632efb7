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
    /// `U&'...'`, `B'...'`, `X'...'`, or continued across a newline: not decoded by the rewriter.
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
    let standard_rules = if standard_strings {
        Quoting::STANDARD
    } else {
        Quoting::ESCAPE
    };
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
            i = line_comment_end(b, i);
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
                let (end, kind, ok) = scan_string(b, i, StrFlavour::Standard, standard_rules);
                i = end;
                out.unterminated |= !ok;
                kind
            }
            b'"' => {
                let (end, ok) = scan_quoted(b, i, b'"', Quoting::IDENT);
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
                let (end, kind, ok) = scan_word(b, i);
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

/// Byte ranges of the tokens the rewriter's lexer finds in `sql` (whitespace and comments
/// skipped; the first [`MAX_TOKENS`] only), and whether the text ends inside a string, quoted
/// identifier or comment. It exists for differential tests against Postgres' own scanner;
/// `standard_conforming_strings` is the session's setting.
pub fn token_spans(sql: &str, standard_conforming_strings: bool) -> (Vec<Range<usize>>, bool) {
    let lexed = lex(sql, standard_conforming_strings);
    let spans = lexed.tokens.into_iter().map(|t| t.span).collect();
    (spans, lexed.unterminated)
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

/// Which quote sequences do not end a quoted run.
#[derive(Debug, Clone, Copy)]
struct Quoting {
    /// A doubled quote stands for one quote (scan.l `{xqdouble}`, `{xddouble}`).
    doubled: bool,
    /// A backslash escapes the next byte (`<xe>` in scan.l).
    backslash: bool,
}

impl Quoting {
    const STANDARD: Quoting = Quoting {
        doubled: true,
        backslash: false,
    };
    const ESCAPE: Quoting = Quoting {
        doubled: true,
        backslash: true,
    };
    /// `B'...'` and `X'...'`: scan.l's `xbinside`/`xhinside` are `[^']*` and `{xqdouble}` does
    /// not apply to them, so `B'1''0'` is `B'1'` followed by `'0'`.
    const BITS: Quoting = Quoting {
        doubled: false,
        backslash: false,
    };
    const IDENT: Quoting = Quoting::STANDARD;
}

/// Returns the index of the newline (`\n` or `\r`, as scan.l's `newline`) ending the `--`
/// comment at `i`, or the end of the input.
fn line_comment_end(b: &[u8], i: usize) -> usize {
    b[i..]
        .iter()
        .position(|&c| c == b'\n' || c == b'\r')
        .map_or(b.len(), |p| i + p)
}

/// Scans a quoted run opening at `i` under `rules`.
fn scan_quoted(b: &[u8], i: usize, quote: u8, rules: Quoting) -> (usize, bool) {
    let mut j = i + 1;
    while j < b.len() {
        if rules.backslash && b[j] == b'\\' {
            j += 2;
            continue;
        }
        if b[j] == quote {
            if rules.doubled && b.get(j + 1) == Some(&quote) {
                j += 2;
                continue;
            }
            return (j + 1, true);
        }
        j += 1;
    }
    (b.len(), false)
}

/// Scans a string constant whose quote opens at `i`, with its continuations: Postgres joins
/// `'a'`, whitespace holding a newline, and `'b'` into one constant (scan.l `{quotecontinue}`)
/// and scans the continuation under the first part's rules. A continued constant is
/// `StrFlavour::Other`, which the rewriter leaves for Postgres to decode.
fn scan_string(b: &[u8], i: usize, flavour: StrFlavour, rules: Quoting) -> (usize, Kind, bool) {
    let mut open = i;
    let mut flavour = flavour;
    loop {
        let (end, ok) = scan_quoted(b, open, b'\'', rules);
        match continuation(b, end) {
            Some(next) => {
                open = next;
                flavour = StrFlavour::Other;
            }
            None => return (end, Kind::Str(flavour), ok),
        }
    }
}

/// If whitespace and `--` comments holding at least one newline, then a quote, follow `i`,
/// returns the index of that quote (scan.l's `{whitespace_with_newline}{quote}`; a `/* */`
/// comment breaks it).
fn continuation(b: &[u8], mut i: usize) -> Option<usize> {
    let mut newline = false;
    loop {
        match *b.get(i)? {
            b'\n' | b'\r' => {
                newline = true;
                i += 1;
            }
            b' ' | b'\t' | b'\x0c' => i += 1,
            b'-' if b.get(i + 1) == Some(&b'-') => i = line_comment_end(b, i),
            b'\'' if newline => return Some(i),
            _ => return None,
        }
    }
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

/// Scans an identifier, or a prefixed string (`E'..'`, `U&'..'`, `B'..'`, `X'..'`). `N'..'` is
/// two tokens, as in scan.l's `{xnstart}`: the `N` (a `national character` type name, whose
/// value loses trailing spaces as text) and a plain string.
fn scan_word(b: &[u8], i: usize) -> (usize, Kind, bool) {
    let c = b[i].to_ascii_lowercase();
    let next = b.get(i + 1).copied();
    if next == Some(b'\'') {
        let flavour = match c {
            b'e' => Some((StrFlavour::Escape, Quoting::ESCAPE)),
            b'b' | b'x' => Some((StrFlavour::Other, Quoting::BITS)),
            _ => None,
        };
        if let Some((flavour, rules)) = flavour {
            return scan_string(b, i + 1, flavour, rules);
        }
    }
    if c == b'u' && next == Some(b'&') {
        match b.get(i + 2) {
            // `<xus>` scans like a standard string; UESCAPE is a separate token for the parser.
            Some(b'\'') => return scan_string(b, i + 2, StrFlavour::Other, Quoting::STANDARD),
            Some(b'"') => {
                let (end, ok) = scan_quoted(b, i + 2, b'"', Quoting::IDENT);
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

    #[test]
    fn carriage_return_ends_a_line_comment() {
        // scan.l: `comment ("--"{non_newline}*)` with `newline [\n\r]`.
        assert_eq!(
            kinds("select 1 --x\r, 2"),
            vec![
                (Kind::Ident, "select"),
                (Kind::Number, "1"),
                (Kind::Comma, ","),
                (Kind::Number, "2")
            ]
        );
    }

    #[test]
    fn doubled_quote_ends_bit_and_hex_strings() {
        // scan.l: `xbinside [^']*`, and `{xqdouble}` applies in <xq,xe,xus> only, so
        // Postgres reads `B'1''0'` as `B'1'` then `'0'` (a syntax error).
        for prefix in ["B", "x"] {
            let sql = format!("select {prefix}'1''0'");
            assert_eq!(
                kinds(&sql)[1..],
                [
                    (Kind::Str(StrFlavour::Other), &sql[7..11]),
                    (Kind::Str(StrFlavour::Standard), "'0'")
                ]
            );
        }
    }

    #[test]
    fn national_string_is_a_type_name_and_a_string() {
        assert_eq!(
            kinds("select N'a  '")[1..],
            [
                (Kind::Ident, "N"),
                (Kind::Str(StrFlavour::Standard), "'a  '")
            ]
        );
    }

    #[test]
    fn strings_continue_across_whitespace_with_a_newline() {
        // scan.l {quotecontinue}: the continuation is scanned in the state of the first part,
        // so the backslash escapes of `E'...'` still apply after the newline.
        let sql = "select E'a' -- c\n\r 'b\\';x'; select 2";
        let toks = kinds(sql);
        assert_eq!(toks[1], (Kind::Str(StrFlavour::Other), &sql[7..26]));
        assert_eq!(toks[2], (Kind::Semicolon, ";"));
        assert_eq!(
            kinds("select B'1'\n'0''1'")[1..],
            [
                (Kind::Str(StrFlavour::Other), "B'1'\n'0'"),
                (Kind::Str(StrFlavour::Standard), "'1'")
            ]
        );
        // Without a newline, or across a block comment, the strings stay apart.
        assert_eq!(kinds("select 'a' 'b'").len(), 3);
        assert_eq!(kinds("select 'a'\n/* c */'b'").len(), 3);
        assert!(!lex("select 'a'\n -- c", true).unterminated);
    }
}
