//! The token view the planner and the call classifier share: the input text, its tokens, the
//! client's declared parameter types, and small token-level questions (words, matching parens).

use std::ops::Range;

use crate::lexer::{Kind, Token};

/// Context the classifier needs: the input text, its tokens and the client's parameter types.
pub(crate) struct Source<'a> {
    pub sql: &'a str,
    pub tokens: &'a [Token],
    pub param_types: &'a [u32],
    pub standard_strings: bool,
}

impl Source<'_> {
    pub fn text(&self, i: usize) -> &str {
        &self.sql[self.tokens[i].span.clone()]
    }

    pub fn is_word(&self, i: usize, word: &str) -> bool {
        self.tokens
            .get(i)
            .is_some_and(|t| t.kind == Kind::Ident && self.text(i).eq_ignore_ascii_case(word))
    }

    /// Index of the `)` matching the `(` or `[` at `open`, if any.
    pub fn matching(&self, open: usize) -> Option<usize> {
        let mut depth = 0usize;
        for (i, t) in self.tokens.iter().enumerate().skip(open) {
            match t.kind {
                Kind::LParen | Kind::LBracket => depth += 1,
                Kind::RParen | Kind::RBracket => {
                    depth = depth.checked_sub(1)?;
                    if depth == 0 {
                        return Some(i);
                    }
                }
                _ => {}
            }
        }
        None
    }

    pub fn is_name(&self, i: usize, name: &str) -> bool {
        match self.tokens.get(i).map(|t| t.kind) {
            Some(Kind::Ident) => self.text(i).eq_ignore_ascii_case(name),
            Some(Kind::QuotedIdent) => {
                let t = self.text(i);
                t.len() == name.len() + 2 && &t[1..t.len() - 1] == name
            }
            _ => false,
        }
    }

    /// True when a `pgml.embed(` call starts at token `i`.
    pub fn call_starts_at(&self, i: usize) -> bool {
        self.is_name(i, "pgml")
            && self.tokens.get(i + 1).is_some_and(|t| t.kind == Kind::Dot)
            && self.is_name(i + 2, "embed")
            && self
                .tokens
                .get(i + 3)
                .is_some_and(|t| t.kind == Kind::LParen)
            && !(i > 0 && self.tokens[i - 1].kind == Kind::Dot)
    }

    pub fn span_of(&self, r: &Range<usize>) -> Range<usize> {
        self.tokens[r.start].span.start..self.tokens[r.end - 1].span.end
    }

    /// The client-declared type of the `$n` parameter at token `i` (None when unspecified).
    pub fn param_oid(&self, i: usize) -> Option<u32> {
        let n = self.param_number(i)?;
        self.param_types.get(n - 1).copied().filter(|&o| o != 0)
    }

    pub fn param_number(&self, i: usize) -> Option<usize> {
        self.text(i)[1..].parse::<usize>().ok().filter(|&n| n > 0)
    }
}
