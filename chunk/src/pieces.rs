//! Separators and the pieces they cut a text into (LangChain's `_split_text_with_regex`),
//! handed on one at a time rather than collected: the pieces of a text can be one per code
//! point, and a list of them took many times the text. Merging pieces into chunks is `merge`'s.

use std::borrow::Cow;

use fancy_regex::Regex;

use crate::kwargs::{type_error, Keep};
use crate::output::Halt;
use crate::{pyre, ChunkError};

/// One separator: its text as given and, with `is_separator_regex`, its compiled pattern
/// (or why it does not compile, raised only when LangChain would first use it).
pub(crate) struct Sep {
    pub(crate) raw: String,
    regex: Option<Result<Regex, ChunkError>>,
}

impl Sep {
    pub(crate) fn new(raw: String, is_regex: bool, text_len: usize) -> Sep {
        let regex = (is_regex && !raw.is_empty()).then(|| pyre::compile(&raw, text_len));
        Sep { raw, regex }
    }

    /// `re.search(pattern, text)`.
    pub(crate) fn found_in(&self, text: &str) -> Result<bool, ChunkError> {
        match &self.regex {
            None => Ok(text.contains(self.raw.as_str())),
            Some(Ok(re)) => re
                .is_match(text)
                .map_err(|err| pyre::runtime_error(&self.raw, &err)),
            Some(Err(err)) => Err(err.clone()),
        }
    }
}

/// The errors LangChain raises while it splits `text` by `sep` (an invalid regex; pairing a
/// separator's groups with the text: a group that did not match, or one item too few), found
/// before any piece is handed on, as Python builds the whole list before using it.
pub(crate) fn check(text: &str, sep: &Sep, keep: Keep) -> Result<(), ChunkError> {
    let re = match &sep.regex {
        None => return Ok(()),
        Some(Err(err)) => return Err(err.clone()),
        Some(Ok(re)) => re,
    };
    // Without groups of its own a pattern's items pair up (text, match) with nothing missing;
    // only patterns with groups need this pass over the text.
    if keep == Keep::No || re.captures_len() < 2 {
        return Ok(());
    }
    let mut pairs = Pairs::new(keep);
    let mut valid = |joined: Result<Joined<'_>, ChunkError>| joined.map(|_| ());
    pyre::split_each(re, text, true, |item| pairs.feed(item, &mut valid))?;
    pairs.finish(&mut valid)
}

/// `_split_text_with_regex(text, sep, keep)`: hands each non-empty piece to `each`, in order.
/// Run [`check`] first: its errors are Python's, and come before any piece.
pub(crate) fn for_each<'t>(
    text: &'t str,
    sep: &Sep,
    keep: Keep,
    mut each: impl FnMut(Cow<'t, str>) -> Result<(), Halt>,
) -> Result<(), Halt> {
    let mut piece = |p: Cow<'t, str>| if p.is_empty() { Ok(()) } else { each(p) };
    if sep.raw.is_empty() {
        // list(text): one piece per code point.
        for (i, c) in text.char_indices() {
            piece(Cow::Borrowed(&text[i..i + c.len_utf8()]))?;
        }
        return Ok(());
    }
    match &sep.regex {
        Some(Err(err)) => Err(err.clone().into()),
        Some(Ok(re)) => {
            let mut pairs = Pairs::new(keep);
            let mut joined = |joined: Result<Joined<'t>, ChunkError>| piece(joined?.text());
            pyre::split_each(re, text, keep != Keep::No, |item| {
                pairs.feed(item, &mut joined)
            })?;
            pairs.finish(&mut joined)
        }
        None => {
            // A literal separator's pieces are slices of the text: a kept separator and the
            // text beside it are adjacent, so no piece is copied.
            let mut last = 0;
            for (at, m) in text.match_indices(sep.raw.as_str()) {
                let (end, next) = match keep {
                    Keep::No => (at, at + m.len()),
                    Keep::Start => (at, at),
                    Keep::End => (at + m.len(), at + m.len()),
                };
                piece(Cow::Borrowed(&text[last..end]))?;
                last = next;
            }
            piece(Cow::Borrowed(&text[last..]))
        }
    }
}

/// A piece made of `re.split` items: one, or two that Python adds (`a + b`).
enum Joined<'t> {
    One(&'t str),
    Two(&'t str, &'t str),
}

impl<'t> Joined<'t> {
    fn text(self) -> Cow<'t, str> {
        match self {
            Joined::One(p) => Cow::Borrowed(p),
            Joined::Two(a, b) => Cow::Owned(format!("{a}{b}")),
        }
    }
}

/// LangChain's pairing of `re.split` items into pieces, one item at a time: with the
/// separator kept at the start, `[s0, s1 + s2, s3 + s4, ...]` (an even count is an
/// `IndexError`); at the end, `[s0 + s1, s2 + s3, ..., last]` (an even count repeats the last
/// item twice); else the items themselves. A group that did not match (`None`) is left out
/// where it stands alone, and is a `TypeError` in a sum.
struct Pairs<'t> {
    keep: Keep,
    /// Items seen so far.
    seen: usize,
    /// An item waiting for its partner.
    held: Option<Option<&'t str>>,
    /// The last item, for `Keep::End`'s tail.
    last: Option<&'t str>,
}

impl<'t> Pairs<'t> {
    fn new(keep: Keep) -> Self {
        Pairs {
            keep,
            seen: 0,
            held: None,
            last: None,
        }
    }

    /// One more item; a piece (or the error pairing makes) goes to `each` once complete.
    fn feed<E>(
        &mut self,
        item: Option<&'t str>,
        each: &mut impl FnMut(Result<Joined<'t>, ChunkError>) -> Result<(), E>,
    ) -> Result<(), E> {
        let first = self.seen == 0;
        self.seen += 1;
        self.last = item;
        match self.keep {
            Keep::No => item.map_or(Ok(()), |p| each(Ok(Joined::One(p)))),
            Keep::Start if first => item.map_or(Ok(()), |p| each(Ok(Joined::One(p)))),
            // Items 1, 3, 5... wait for the next one (Start); 0, 2, 4... (End).
            Keep::Start | Keep::End => match self.held.take() {
                None => {
                    self.held = Some(item);
                    Ok(())
                }
                Some(a) => each(pair(a, item)),
            },
        }
    }

    /// The end of the items: what is left over.
    fn finish<E>(
        &mut self,
        each: &mut impl FnMut(Result<Joined<'t>, ChunkError>) -> Result<(), E>,
    ) -> Result<(), E> {
        match (self.keep, self.held.take()) {
            (Keep::No, _) | (Keep::Start, None) => Ok(()),
            (Keep::Start, Some(_)) => each(Err(ChunkError::BadKwarg {
                python: "IndexError",
                message: "list index out of range".to_owned(),
            })),
            (Keep::End, Some(odd_one)) => odd_one.map_or(Ok(()), |p| each(Ok(Joined::One(p)))),
            // `splits += _splits[-1:]`, then `splits + [_splits[-1]]`.
            (Keep::End, None) => match self.last {
                Some(p) if self.seen > 0 => {
                    each(Ok(Joined::One(p)))?;
                    each(Ok(Joined::One(p)))
                }
                _ => Ok(()),
            },
        }
    }
}

/// Python's `a + b` on two `re.split` items (a group that did not match is `None`).
fn pair<'t>(a: Option<&'t str>, b: Option<&'t str>) -> Result<Joined<'t>, ChunkError> {
    match (a, b) {
        (Some(a), Some(b)) => Ok(Joined::Two(a, b)),
        (None, _) => Err(type_error(
            "unsupported operand type(s) for +: 'NoneType' and 'str'".to_owned(),
        )),
        (Some(_), None) => Err(type_error(
            "can only concatenate str (not \"NoneType\") to str".to_owned(),
        )),
    }
}
