//! The token view the planner and the call classifier share: the input text, its tokens, the
//! client's declared parameter types, and small token-level questions (words, matching parens).

use std::ops::Range;

use crate::lexer::{Kind, Token};
use crate::limits::MAX_PARAMS;

/// Context the classifier needs: the input text, its tokens and the client's parameter types.
pub(crate) struct Source<'a> {
    pub sql: &'a str,
    pub tokens: &'a [Token],
    pub param_types: &'a [u32],
    pub standard_strings: bool,
    /// Per token: the index of its matching closer (openers only), `NO_MATCH` otherwise.
    /// Built once so that `matching` is O(1): deep nesting must not make planning quadratic.
    partner: Vec<u32>,
}

const NO_MATCH: u32 = u32::MAX;

impl<'a> Source<'a> {
    pub fn new(
        sql: &'a str,
        tokens: &'a [Token],
        param_types: &'a [u32],
        standard_strings: bool,
    ) -> Self {
        let mut partner = vec![NO_MATCH; tokens.len()];
        let mut open = Vec::new();
        for (i, t) in tokens.iter().enumerate() {
            match t.kind {
                Kind::LParen | Kind::LBracket => open.push(i),
                Kind::RParen | Kind::RBracket => {
                    if let Some(o) = open.pop() {
                        // The lexer stops at MAX_TOKENS, far below u32::MAX.
                        partner[o] = u32::try_from(i).unwrap_or(NO_MATCH);
                    }
                }
                _ => {}
            }
        }
        Source {
            sql,
            tokens,
            param_types,
            standard_strings,
            partner,
        }
    }
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
        match self.partner.get(open) {
            Some(&p) if p != NO_MATCH => usize::try_from(p).ok(),
            _ => None,
        }
    }

    pub fn is_name(&self, i: usize, name: &str) -> bool {
        match self.tokens.get(i).map(|t| t.kind) {
            Some(Kind::Ident) => self.text(i).eq_ignore_ascii_case(name),
            Some(Kind::QuotedIdent) => {
                let t = self.text(i);
                t.strip_prefix('"').and_then(|t| t.strip_suffix('"')) == Some(name)
            }
            _ => false,
        }
    }

    /// True when a `pgml.embed(`, `pgml.chunk(` or `pgml.transform(` call starts at token `i`.
    pub fn call_starts_at(&self, i: usize) -> bool {
        self.is_name(i, "pgml")
            && self.tokens.get(i + 1).is_some_and(|t| t.kind == Kind::Dot)
            && ["embed", "chunk", "transform"]
                .iter()
                .any(|name| self.is_name(i + 2, name))
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

    /// The number of the `$n` at token `i`, when it is one a Bind could supply (1..=65535).
    pub fn param_number(&self, i: usize) -> Option<usize> {
        let digits = self.text(i).get(1..)?;
        // More than five digits (leading zeros aside) is out of range: never parse further.
        let digits = digits.trim_start_matches('0');
        if digits.len() > 5 {
            return None;
        }
        digits
            .parse::<usize>()
            .ok()
            .filter(|&n| (1..=MAX_PARAMS).contains(&n))
    }
}
