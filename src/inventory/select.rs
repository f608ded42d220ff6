//! Host selection with shell-style globs (`--limit`).
//!
//! A glob selects the hosts whose name matches it, plus every host of each
//! group whose name matches it. Supported syntax: `*` (any run of
//! characters), `?` (exactly one), `[abc]`, `[a-z]` and `[!x]` (or `[^x]`)
//! classes; everything else matches itself and the whole name must match.

use super::diag::did_you_mean;
use super::{Host, Inventory, InventoryError};

impl Inventory {
    /// Hosts matching any of the globs by host name or by one of its group
    /// names, in inventory order; empty `limits` selects all hosts. A glob that
    /// selects nothing is an error ([`InventoryError::NoMatch`]).
    pub fn select(&self, limits: &[String]) -> Result<Vec<&Host>, InventoryError> {
        if limits.is_empty() {
            return Ok(self.hosts.iter().collect());
        }
        let mut chosen = vec![false; self.hosts.len()];
        for pattern in limits {
            let mut any = false;
            for (i, host) in self.hosts.iter().enumerate() {
                if glob_match(pattern, &host.name)
                    || host.groups.iter().any(|g| glob_match(pattern, g))
                {
                    chosen[i] = true;
                    any = true;
                }
            }
            if !any {
                return Err(InventoryError::NoMatch {
                    pattern: pattern.clone(),
                    names: self.selectable_names(),
                });
            }
        }
        Ok(self
            .hosts
            .iter()
            .zip(chosen)
            .filter_map(|(h, c)| c.then_some(h))
            .collect())
    }

    /// Host names, then group names not already listed.
    fn selectable_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.hosts.iter().map(|h| h.name.clone()).collect();
        for g in &self.groups {
            if !names.contains(&g.name) {
                names.push(g.name.clone());
            }
        }
        names
    }
}

/// Message of [`InventoryError::NoMatch`].
pub(crate) fn no_match_message(pattern: &str, names: &[String]) -> String {
    let fix = did_you_mean(pattern, names.iter().map(String::as_str))
        .unwrap_or_else(|| "use a host or group name, or a glob such as \"web-*\".".to_owned());
    format!(
        "--limit \"{pattern}\" matches no host or group (known: {}). Fix: {fix}",
        names.join(", ")
    )
}

/// Whether `name` matches the shell-style glob `pattern` as a whole.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    // Where to resume after the last `*`: (pattern index after it, name index).
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == '*' {
            pi += 1;
            star = Some((pi, ni));
            continue;
        }
        if pi < p.len() {
            if let Some(next) = match_one(&p, pi, n[ni]) {
                pi = next;
                ni += 1;
                continue;
            }
        }
        // Mismatch: let the last `*` swallow one more character, if any.
        match star {
            Some((sp, sn)) => {
                pi = sp;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// If the non-`*` pattern element at `pi` matches `c`, the index after it.
fn match_one(p: &[char], pi: usize, c: char) -> Option<usize> {
    match p[pi] {
        '?' => Some(pi + 1),
        '[' => match class(p, pi, c) {
            Some((true, next)) => Some(next),
            Some((false, _)) => None,
            // An unclosed `[` is an ordinary character.
            None => (c == '[').then_some(pi + 1),
        },
        literal => (literal == c).then_some(pi + 1),
    }
}

/// Matches `c` against the class starting at `p[start] == '['`. Returns
/// whether it matched and the index after the closing `]`, or `None` when the
/// class is not closed. A `]` right after `[` or `[!` is a literal.
fn class(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some('!' | '^'));
    if negate {
        i += 1;
    }
    let first = i;
    let mut matched = false;
    loop {
        let ch = *p.get(i)?;
        if ch == ']' && i > first {
            return Some((matched != negate, i + 1));
        }
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|&e| e != ']') {
            if (ch..=p[i + 2]).contains(&c) {
                matched = true;
            }
            i += 3;
        } else {
            if ch == c {
                matched = true;
            }
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn literals_and_wildcards() {
        assert!(glob_match("web-1", "web-1"));
        assert!(!glob_match("web-1", "web-10"));
        assert!(!glob_match("web", "web-1"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("*", ""));
        assert!(glob_match("web-*", "web-1"));
        assert!(glob_match("web-*", "web-"));
        assert!(!glob_match("web-*", "db-1"));
        assert!(glob_match("*-1", "edge-1"));
        assert!(glob_match("*e*-*", "edge-1"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(glob_match("web-?", "web-2"));
        assert!(!glob_match("web-?", "web-22"));
        assert!(glob_match("??", "ab"));
        assert!(!glob_match("?", ""));
    }

    #[test]
    fn classes() {
        assert!(glob_match("web-[12]", "web-1"));
        assert!(!glob_match("web-[12]", "web-3"));
        assert!(glob_match("web-[0-9]", "web-7"));
        assert!(!glob_match("web-[0-9]", "web-a"));
        assert!(glob_match("web-[!1]", "web-2"));
        assert!(!glob_match("web-[!1]", "web-1"));
        assert!(glob_match("web-[^1]", "web-2"));
        assert!(glob_match("[a-cx]*", "x-ray"));
        assert!(glob_match("[]]", "]"));
        assert!(glob_match("[a-]", "-"));
        assert!(glob_match("web-[", "web-["));
        assert!(!glob_match("web-[", "web-1"));
        assert!(glob_match("*-[0-9][0-9]", "web-42"));
    }
}
