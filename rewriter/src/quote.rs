//! The only functions that turn values into SQL text: string quoting and real[] literals.
//! Everything the rewriter splices is produced here from numbers or quoted here.

use std::fmt::Write;

use crate::RewriteError;

/// Quotes `s` as a SQL string constant that reads back identically whatever the session's
/// standard_conforming_strings is: plain `'...'` when `s` has no backslash, else `E'...'` with
/// backslashes doubled. NUL is rejected, as Postgres text cannot hold it.
pub fn quote_literal(s: &str) -> Result<String, RewriteError> {
    if s.contains('\0') {
        return Err(RewriteError::NulInLiteral);
    }
    let backslash = s.contains('\\');
    let mut out = String::with_capacity(s.len() + 3);
    if backslash {
        out.push('E');
    }
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    Ok(out)
}

/// Formats a vector as a Postgres array literal body `{0.1,-2.5e-7,...}` using the shortest
/// decimal text that reads back to the same `f32` (so the spliced value is bit-exact).
pub fn format_real_array(v: &[f32]) -> String {
    let mut out = String::with_capacity(v.len() * 12 + 2);
    out.push('{');
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_real(&mut out, *x);
    }
    out.push('}');
    out
}

/// Appends the array literal as a typed SQL constant: `'{...}'::real[]`.
pub(crate) fn push_real_array_literal(out: &mut String, v: &[f32]) {
    out.push('\'');
    out.push_str(&format_real_array(v));
    out.push_str("'::real[]");
}

fn push_real(out: &mut String, x: f32) {
    // Rust's float formatting is shortest-round-trip in both notations; pick the shorter
    // notation for tiny and huge magnitudes. Writing to a String cannot fail.
    let _ = if x.is_nan() {
        out.write_str("NaN")
    } else if x.is_infinite() {
        out.write_str(if x > 0.0 { "Infinity" } else { "-Infinity" })
    } else if x != 0.0 && !(1e-4..1e16).contains(&x.abs()) {
        write!(out, "{x:e}")
    } else {
        write!(out, "{x}")
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_literal_doubles_quotes_and_escapes_backslashes() {
        assert_eq!(quote_literal("it's").as_deref(), Ok("'it''s'"));
        assert_eq!(quote_literal(r"a\'b").as_deref(), Ok(r"E'a\\''b'"));
        assert_eq!(quote_literal("").as_deref(), Ok("''"));
        assert_eq!(quote_literal("a\0b"), Err(RewriteError::NulInLiteral));
    }

    #[test]
    fn real_arrays_round_trip_bit_exact() {
        let v = [
            0.1f32,
            -2.5e-7,
            1.0,
            -0.0,
            f32::MAX,
            f32::MIN_POSITIVE,
            1e-45,
            123456.79,
        ];
        let text = format_real_array(&v);
        assert!(text.starts_with("{0.1,-2.5e-7,1,-0,"), "{text}");
        let back: Vec<f32> = text[1..text.len() - 1]
            .split(',')
            .map(|s| s.parse().unwrap())
            .collect();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back), bits(&v));
    }

    #[test]
    fn non_finite_values_use_postgres_spellings() {
        assert_eq!(
            format_real_array(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY]),
            "{NaN,Infinity,-Infinity}"
        );
        assert_eq!(format_real_array(&[]), "{}");
    }
}
