//! Diagnostics for inventory validation: located problems with a one-line
//! fix, "did you mean" suggestions, and the name/address syntax checks.

use std::collections::BTreeSet;
use std::path::Path;

use super::yaml::Loc;

/// One validation problem: where, what, and how to fix it.
#[derive(Debug, Clone)]
struct Problem {
    loc: Loc,
    message: String,
    fix: String,
}

/// Collects every problem found while validating one inventory file.
#[derive(Debug, Default)]
pub(crate) struct Diag {
    problems: Vec<Problem>,
}

impl Diag {
    /// Records a problem; `fix` is a full sentence telling the user what to do.
    pub fn push(&mut self, loc: Loc, message: impl Into<String>, fix: impl Into<String>) {
        self.problems.push(Problem {
            loc,
            message: message.into(),
            fix: fix.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }

    /// Problems recorded so far (to tell whether a section added any).
    pub fn len(&self) -> usize {
        self.problems.len()
    }

    /// Renders the problems as `path:line:col: message. Fix: fix`, ordered by
    /// position in the file, without exact duplicates.
    pub fn into_lines(mut self, path: &Path) -> Vec<String> {
        self.problems.sort_by_key(|p| p.loc);
        let mut seen = BTreeSet::new();
        self.problems
            .into_iter()
            .map(|p| {
                format!(
                    "{}:{}:{}: {}. Fix: {}",
                    path.display(),
                    p.loc.line,
                    p.loc.col,
                    p.message,
                    p.fix
                )
            })
            .filter(|line| seen.insert(line.clone()))
            .collect()
    }
}

/// Fix text for an unknown key: the closest allowed key if there is one.
pub(crate) fn unknown_key_fix(key: &str, allowed: &[&str]) -> String {
    did_you_mean(key, allowed.iter().copied()).unwrap_or_else(|| {
        format!(
            "remove \"{}\" or rename it to one of the allowed keys.",
            shown(key)
        )
    })
}

/// Longest word the "did you mean" search compares: edit distance costs
/// length × length, and no plausible typo of a key or name is longer.
const SUGGEST_MAX_CHARS: usize = 64;

/// Text quoted in a message, cut to [`SUGGEST_MAX_CHARS`] characters (a
/// runaway key in a big file would otherwise fill the screen).
pub(crate) fn shown(text: &str) -> String {
    match text.char_indices().nth(SUGGEST_MAX_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// `did you mean "<closest>"?` when a candidate is a plausible typo of `word`.
pub(crate) fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    closest(word, candidates).map(|best| format!("did you mean \"{best}\"?"))
}

/// The candidate closest to `word` by edit distance (case-insensitive), if it
/// is close enough to be a plausible typo.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    if word.chars().count() > SUGGEST_MAX_CHARS {
        return None;
    }
    let word_lower = word.to_lowercase();
    let word_len = word_lower.chars().count();
    let mut best: Option<(usize, &str)> = None;
    for cand in candidates {
        if cand.chars().count() > SUGGEST_MAX_CHARS {
            continue;
        }
        let cand_lower = cand.to_lowercase();
        let cand_len = cand_lower.chars().count();
        let limit = (cand.chars().count() / 3).clamp(1, 3);
        // Lengths further apart than the limit cannot be within it.
        if cand_len.abs_diff(word_len) > limit {
            continue;
        }
        let d = edit_distance(&word_lower, &cand_lower);
        let better = match best {
            Some((bd, _)) => d < bd,
            None => true,
        };
        if d <= limit && better {
            best = Some((d, cand));
        }
    }
    best.map(|(_, c)| c)
}

/// Optimal-string-alignment distance: insertions, deletions, substitutions and
/// transpositions of neighbours each cost one ("prot" is one step from "port").
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    d[0] = (0..=b.len()).collect();
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

/// A single DNS label usable as an OS hostname: letters, digits and '-',
/// 1 to 63 characters, not starting or ending with '-'.
pub(crate) fn is_hostname(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// A fully or partially qualified DNS name (one trailing dot allowed). The
/// last label may not be all digits, so a mistyped IPv4 address such as
/// `10.0.0.300` is not mistaken for a name.
pub(crate) fn is_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    let labels: Vec<&str> = name.split('.').collect();
    labels.iter().all(|l| is_hostname(l))
        && !labels
            .last()
            .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
}

/// A valid hostname derived from an invalid one, to suggest as a rename.
pub(crate) fn hostname_suggestion(name: &str) -> Option<String> {
    let mapped: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let trimmed: String = mapped.trim_matches('-').chars().take(63).collect();
    let trimmed = trimmed.trim_end_matches('-').to_owned();
    is_hostname(&trimmed).then_some(trimmed)
}
