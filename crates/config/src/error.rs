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

impl ConfigError {
    /// An error located at byte offset `at` of `text`.
    pub fn at(file: &Path, text: &str, at: usize, message: impl Into<String>, fix: impl Into<String>) -> Self {
        let mut at = at.min(text.len());
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        let before = &text[..at];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        ConfigError { file: file.to_owned(), line, column, message: message.into(), fix: fix.into() }
    }

    /// An error about the file as a whole (reported at line 1, column 1).
    pub fn whole_file(file: &Path, message: impl Into<String>, fix: impl Into<String>) -> Self {
        ConfigError { file: file.to_owned(), line: 1, column: 1, message: message.into(), fix: fix.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: error: {}\n  fix: {}", self.file.display(), self.line, self.column, self.message, self.fix)
    }
}

impl std::error::Error for ConfigError {}
