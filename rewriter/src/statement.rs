//! Splits a simple-query string into statements at top-level semicolons, using the lexer so
//! that semicolons in strings, dollar quotes, identifiers and comments never split, and
//! keeping `CREATE FUNCTION ... BEGIN ATOMIC ... END` bodies whole.

use std::ops::Range;

use crate::lexer::{Kind, Token};
use crate::limits::MAX_STATEMENTS;

/// Token ranges of each non-empty statement in `tokens`; stops after `MAX_STATEMENTS + 1`.
pub(crate) fn split(sql: &str, tokens: &[Token]) -> Vec<Range<usize>> {
    let word = |i: usize, w: &str| {
        tokens[i].kind == Kind::Ident && sql[tokens[i].span.clone()].eq_ignore_ascii_case(w)
    };
    let mut out = Vec::new();
    let mut start = 0;
    let mut atomic_depth = 0usize;
    for (i, tok) in tokens.iter().enumerate() {
        if tok.kind == Kind::Ident {
            let opens_atomic = i > 0 && word(i, "atomic") && word(i - 1, "begin");
            let nested = atomic_depth > 0 && (word(i, "case") || word(i, "begin"));
            if opens_atomic || nested {
                atomic_depth += 1;
            } else if atomic_depth > 0 && word(i, "end") {
                atomic_depth -= 1;
            }
        }
        if tok.kind == Kind::Semicolon && atomic_depth == 0 {
            if i > start {
                out.push(start..i);
                // The planner gives up beyond MAX_STATEMENTS; one more tells it so.
                if out.len() > MAX_STATEMENTS {
                    return out;
                }
            }
            start = i + 1;
        }
    }
    if tokens.len() > start {
        out.push(start..tokens.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lexer::lex;

    fn texts(sql: &str) -> Vec<String> {
        let toks = lex(sql, true).tokens;
        split(sql, &toks)
            .into_iter()
            .map(|r| sql[toks[r.start].span.start..toks[r.end - 1].span.end].to_owned())
            .collect()
    }

    #[test]
    fn splits_only_at_top_level_semicolons() {
        assert_eq!(
            texts("select ';'; ;select $$;$$ /* ; */ ; select \";\"  -- ;\n"),
            vec!["select ';'", "select $$;$$", "select \";\""]
        );
    }

    #[test]
    fn begin_atomic_bodies_stay_whole() {
        let sql = "create function f() returns int begin atomic select 1; select case when true then 2 end; end; select 3";
        assert_eq!(
            texts(sql),
            vec![
                "create function f() returns int begin atomic select 1; select case when true then 2 end; end",
                "select 3"
            ]
        );
    }
}
