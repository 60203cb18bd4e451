//! Config errors: every one names the file, the line, the key path, the reason and,
//! where there is an obvious fix, what to change. They are collected, never thrown one
//! at a time, so `slotd check` shows everything wrong with a file in one run.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line; 0 when the problem is not tied to a line (e.g. unreadable file).
    pub line: usize,
    /// Where in the document: `app[shop].slot[staging].instances[0]`.
    pub key: String,
    pub reason: String,
    pub hint: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.reason)?;
        if let Some(hint) = &self.hint {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

/// All problems found in one config file, in line order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// A single error not tied to a line, such as a file that cannot be read.
    pub fn whole_file(file: &Path, reason: impl Into<String>) -> Self {
        ConfigErrors(vec![ConfigError {
            file: file.to_path_buf(),
            line: 0,
            key: String::new(),
            reason: reason.into(),
            hint: None,
        }])
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Turns byte offsets into 1-based line numbers.
pub(crate) struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    pub(crate) fn new(src: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(src.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }

    pub(crate) fn line_of(&self, offset: usize) -> usize {
        match self.starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_numbers_are_one_based() {
        let idx = LineIndex::new("a\nbb\n\nc");
        assert_eq!(idx.line_of(0), 1);
        assert_eq!(idx.line_of(1), 1);
        assert_eq!(idx.line_of(2), 2);
        assert_eq!(idx.line_of(5), 3);
        assert_eq!(idx.line_of(6), 4);
    }

    #[test]
    fn display_names_file_line_key_reason_and_hint() {
        let e = ConfigError {
            file: PathBuf::from("conf/slotd.toml"),
            line: 7,
            key: "proxy.threads".into(),
            reason: "must be at least 1".into(),
            hint: Some("remove it to use one thread per core".into()),
        };
        assert_eq!(
            e.to_string(),
            "conf/slotd.toml:7: proxy.threads: must be at least 1 (remove it to use one thread per core)"
        );
    }
}
