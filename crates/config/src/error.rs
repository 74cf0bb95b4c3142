//! Configuration errors that point at the offending text.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a configuration file: where it is, what is wrong, how to fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// 1-based line of the offending text.
    pub line: usize,
    /// 1-based column (in characters) of the offending text.
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// What to change.
    pub fix: String,
}

/// Finds the line and column of byte offsets in one text, in logarithmic
/// time after one pass over it (so that reporting many errors in a large
/// file stays linear).
pub(crate) struct Locator<'t> {
    text: &'t str,
    line_starts: Vec<usize>,
}

impl<'t> Locator<'t> {
    /// Indexes the lines of `text`.
    pub(crate) fn new(text: &'t str) -> Locator<'t> {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Locator { text, line_starts }
    }

    /// The 1-based line and column (in characters) of byte offset `at`.
    pub(crate) fn locate(&self, at: usize) -> (usize, usize) {
        let mut at = at.min(self.text.len());
        while !self.text.is_char_boundary(at) {
            at -= 1;
        }
        let line = self.line_starts.partition_point(|&start| start <= at);
        let start = self.line_starts[line - 1];
        (line, self.text[start..at].chars().count() + 1)
    }

    /// An error at byte offset `at` of the text in `file`.
    pub(crate) fn error(
        &self,
        file: &Path,
        at: usize,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = self.locate(at);
        ConfigError { file: file.to_owned(), line, column, message: message.into(), fix: fix.into() }
    }
}

impl ConfigError {
    /// An error located at byte offset `at` of `text`.
    pub fn at(file: &Path, text: &str, at: usize, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Locator::new(text).error(file, at, message, fix)
    }

    /// An error about the file as a whole (reported at line 1, column 1).
    pub fn whole_file(file: &Path, message: impl Into<String>, fix: impl Into<String>) -> Self {
        ConfigError { file: file.to_owned(), line: 1, column: 1, message: message.into(), fix: fix.into() }
    }
}

/// The candidate closest to `word` if it is close enough to be a likely
/// misspelling (edit distance at most a third of the word, at least 1).
pub(crate) fn did_you_mean<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance, counting a swap of neighbours as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    if a.len().abs_diff(b.len()) > 3 || a.len() > 64 || b.len() > 64 {
        return usize::MAX;
    }
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = (a[i - 1] != b[j - 1]) as usize;
            d[i][j] = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: error: {}\n  fix: {}", self.file.display(), self.line, self.column, self.message, self.fix)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_columns() {
        let l = Locator::new("ab\ncdé\n\nx");
        assert_eq!(l.locate(0), (1, 1));
        assert_eq!(l.locate(2), (1, 3));
        assert_eq!(l.locate(3), (2, 1));
        assert_eq!(l.locate(7), (2, 4), "after a two-byte character");
        assert_eq!(l.locate(8), (3, 1));
        assert_eq!(l.locate(9), (4, 1));
        assert_eq!(l.locate(99), (4, 2));
    }

    #[test]
    fn misspellings() {
        assert_eq!(did_you_mean("compartmnet", ["compartment", "harden"]), Some("compartment"));
        assert_eq!(did_you_mean("mechansim", ["name", "mechanism", "sharing"]), Some("mechanism"));
        assert_eq!(did_you_mean("mkp", ["fcall", "mpk", "proc", "kvm"]), Some("mpk"));
        assert_eq!(did_you_mean("colour", ["compartment", "harden"]), None);
    }
}
