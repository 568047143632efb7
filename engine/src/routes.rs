//! The `--remote-model` routing table shared by pgml.embed's `Router` and pgml.transform's
//! `Generator`: exact model names and patterns ending in `*` (`meta-llama/*`, or `*` for every
//! model). One matching rule for both: an exact name beats a pattern, a longer pattern beats a
//! shorter one, and `*` matches what nothing else does. Knows nothing about HTTP.

use std::collections::HashMap;

/// Model names (or patterns) to backends of type `T`.
pub(crate) struct RouteTable<T> {
    exact: HashMap<String, T>,
    /// (prefix before the `*`, the pattern as written, backend), longest prefix first.
    patterns: Vec<(String, String, T)>,
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        RouteTable {
            exact: HashMap::new(),
            patterns: Vec::new(),
        }
    }
}

/// Why a route name cannot be used: empty, or a `*` anywhere but at the end.
pub(crate) fn check_route_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("model name is empty".into());
    }
    match name.find('*') {
        Some(at) if at + 1 != name.len() => Err(format!(
            "\"{name}\": a pattern has one `*`, at the end (`org/*`, or `*` for every model)"
        )),
        _ => Ok(()),
    }
}

impl<T> RouteTable<T> {
    /// Adds a route; the error says why (a malformed pattern, or the name routed twice).
    pub fn insert(&mut self, name: &str, backend: T) -> Result<(), String> {
        check_route_name(name)?;
        let taken = match name.strip_suffix('*') {
            Some(prefix) => {
                if self.patterns.iter().any(|(_, p, _)| p == name) {
                    true
                } else {
                    self.patterns
                        .push((prefix.to_string(), name.to_string(), backend));
                    // Stable: among equal lengths the first given stays first (there is at
                    // most one per prefix anyway, duplicates being refused).
                    self.patterns
                        .sort_by_key(|(prefix, _, _)| std::cmp::Reverse(prefix.len()));
                    false
                }
            }
            None => self.exact.insert(name.to_string(), backend).is_some(),
        };
        if taken {
            return Err(format!("model \"{name}\" is routed twice"));
        }
        Ok(())
    }

    /// The route serving `model` and the name or pattern that matched it.
    pub fn lookup(&self, model: &str) -> Option<(&str, &T)> {
        if let Some((name, backend)) = self.exact.get_key_value(model) {
            return Some((name.as_str(), backend));
        }
        self.patterns
            .iter()
            .find(|(prefix, _, _)| model.starts_with(prefix.as_str()))
            .map(|(_, pattern, backend)| (pattern.as_str(), backend))
    }

    /// The route for a call that names no model: the `*` pattern, else the only exact route
    /// when there is exactly one and no pattern (the operator's default model), with the name
    /// to send (None for `*`: the server's own default).
    pub fn default_route(&self) -> Option<(Option<&str>, &T)> {
        if let Some((_, _, backend)) = self.patterns.iter().find(|(p, _, _)| p.is_empty()) {
            return Some((None, backend));
        }
        if self.patterns.is_empty() && self.exact.len() == 1 {
            return self
                .exact
                .iter()
                .next()
                .map(|(name, backend)| (Some(name.as_str()), backend));
        }
        None
    }

    /// Every exact name and pattern, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .exact
            .keys()
            .cloned()
            .chain(self.patterns.iter().map(|(_, p, _)| p.clone()))
            .collect();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(names: &[&str]) -> RouteTable<String> {
        let mut t = RouteTable::default();
        for name in names {
            t.insert(name, format!("url-of-{name}")).unwrap();
        }
        t
    }

    #[test]
    fn exact_beats_longer_pattern_beats_shorter_beats_star() {
        let t = table(&["*", "meta-llama/*", "meta-llama/Llama-3*", "meta-llama/x"]);
        let hit = |m: &str| t.lookup(m).map(|(name, _)| name.to_string());
        assert_eq!(hit("meta-llama/x").as_deref(), Some("meta-llama/x"));
        assert_eq!(
            hit("meta-llama/Llama-3.1-8B").as_deref(),
            Some("meta-llama/Llama-3*")
        );
        assert_eq!(hit("meta-llama/Llama-2").as_deref(), Some("meta-llama/*"));
        assert_eq!(hit("mistralai/Mistral-7B").as_deref(), Some("*"));
        assert_eq!(hit("meta-llama/x").as_deref(), Some("meta-llama/x"));
    }

    #[test]
    fn insertion_order_does_not_change_the_winner() {
        let t = table(&["meta-llama/Llama-3*", "*", "meta-llama/*"]);
        assert_eq!(
            t.lookup("meta-llama/Llama-3.1").map(|(n, _)| n),
            Some("meta-llama/Llama-3*")
        );
        let t = table(&["a/*"]);
        assert!(t.lookup("b/c").is_none());
        assert!(t.lookup("a/").is_some());
    }

    #[test]
    fn stars_only_at_the_end_and_no_name_twice() {
        let mut t: RouteTable<u8> = RouteTable::default();
        assert!(t.insert("a*b", 1).unwrap_err().contains("at the end"));
        assert!(t.insert("**", 1).is_err());
        assert!(t.insert("", 1).is_err());
        t.insert("m", 1).unwrap();
        assert!(t.insert("m", 2).unwrap_err().contains("twice"));
        t.insert("org/*", 1).unwrap();
        assert!(t.insert("org/*", 2).unwrap_err().contains("twice"));
    }

    #[test]
    fn default_route_is_star_or_the_only_exact_one() {
        assert_eq!(
            table(&["m", "*"])
                .default_route()
                .map(|(n, b)| (n, b.clone())),
            Some((None, "url-of-*".to_string()))
        );
        let one = table(&["m"]);
        assert_eq!(one.default_route().map(|(n, _)| n), Some(Some("m")));
        assert!(table(&["m", "n"]).default_route().is_none());
        assert!(table(&["org/*"]).default_route().is_none());
    }
}
