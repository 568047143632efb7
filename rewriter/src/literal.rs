//! Decodes the value of a string constant token (standard, escape and dollar-quoted strings)
//! the way Postgres' scanner does. It does not decide where tokens end: that is the lexer's job.

use crate::lexer::{Kind, StrFlavour, Token};

/// Decodes a string token's value, or None when the rewriter does not decode that flavour
/// (or the result is not valid text for Postgres: NUL, invalid UTF-8).
pub(crate) fn string_value(sql: &str, tok: &Token, standard_strings: bool) -> Option<String> {
    let text = &sql[tok.span.clone()];
    let value = match tok.kind {
        Kind::Str(StrFlavour::Dollar) => {
            let tag_len = text[1..].find('$')? + 2;
            text.get(tag_len..text.len().checked_sub(tag_len)?)?
                .to_owned()
        }
        Kind::Str(StrFlavour::Standard) => {
            let body = text.strip_prefix(['n', 'N']).unwrap_or(text);
            let body = body.get(1..body.len().checked_sub(1)?)?;
            if standard_strings {
                body.replace("''", "'")
            } else {
                decode_escapes(body)?
            }
        }
        Kind::Str(StrFlavour::Escape) => decode_escapes(text.get(2..text.len().checked_sub(1)?)?)?,
        _ => return None,
    };
    (!value.contains('\0')).then_some(value)
}

/// Decodes an `E'...'` body: backslash escapes as Postgres' scanner defines them.
fn decode_escapes(body: &str) -> Option<String> {
    let b = body.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\'' => {
                out.push(b'\'');
                i += 2;
            }
            b'\\' => {
                let c = *b.get(i + 1)?;
                i += 2;
                match c {
                    b'b' => out.push(8),
                    b'f' => out.push(12),
                    b'n' => out.push(b'\n'),
                    b'r' => out.push(b'\r'),
                    b't' => out.push(b'\t'),
                    b'0'..=b'7' => {
                        let mut v = u32::from(c - b'0');
                        let mut n = 1;
                        while n < 3 && i < b.len() && (b'0'..=b'7').contains(&b[i]) {
                            v = v * 8 + u32::from(b[i] - b'0');
                            i += 1;
                            n += 1;
                        }
                        out.push(u8::try_from(v & 0xFF).ok()?);
                    }
                    b'x' => {
                        let mut v = 0u32;
                        let mut n = 0;
                        while n < 2 && i < b.len() && b[i].is_ascii_hexdigit() {
                            v = v * 16 + char::from(b[i]).to_digit(16)?;
                            i += 1;
                            n += 1;
                        }
                        if n == 0 {
                            out.push(b'x');
                        } else {
                            out.push(u8::try_from(v).ok()?);
                        }
                    }
                    b'u' | b'U' => {
                        let len = if c == b'u' { 4 } else { 8 };
                        let hex = body.get(i..i + len)?;
                        let cp = u32::from_str_radix(hex, 16).ok()?;
                        let ch = char::from_u32(cp)?;
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        i += len;
                    }
                    other => out.push(other),
                }
            }
            other => {
                out.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lexer::lex;

    #[test]
    fn escape_strings_decode() {
        let sql = r"E'a\n\x41\101\u00e9\'q'''";
        let l = lex(sql, true);
        assert_eq!(l.tokens.len(), 1);
        assert_eq!(
            string_value(sql, &l.tokens[0], true).as_deref(),
            Some("a\nAAé'q'")
        );
    }
}
