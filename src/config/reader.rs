//! A span-aware reader over a parsed TOML document.
//!
//! serde stops at the first error it meets; slotd reports every problem in a file
//! together, each with its line. So the file is parsed into toml's spanned tree
//! (`DeTable`) and read here key by key: every accessor records which keys it has
//! seen, type errors are recorded instead of returned, and `finish` reports the keys
//! nobody asked for as unknown.

use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::error::{ConfigError, LineIndex};
use std::path::PathBuf;

/// Collects errors for one document.
pub(crate) struct Doc {
    pub(crate) file: PathBuf,
    lines: LineIndex,
    pub(crate) errors: Vec<ConfigError>,
}

impl Doc {
    pub(crate) fn new(file: PathBuf, src: &str) -> Self {
        Doc {
            file,
            lines: LineIndex::new(src),
            errors: Vec::new(),
        }
    }

    /// Records an error at `span`.
    pub(crate) fn error(
        &mut self,
        span: &Range<usize>,
        key: &str,
        reason: impl Into<String>,
        hint: Option<String>,
    ) {
        self.errors.push(ConfigError {
            file: self.file.clone(),
            line: self.lines.line_of(span.start),
            key: key.to_string(),
            reason: reason.into(),
            hint,
        });
    }

    pub(crate) fn line_of(&self, offset: usize) -> usize {
        self.lines.line_of(offset)
    }
}

/// A value with the place it came from, for checks that run after reading.
#[derive(Debug, Clone)]
pub(crate) struct At<T> {
    pub(crate) value: T,
    pub(crate) span: Range<usize>,
    pub(crate) key: String,
}

/// One TOML table being read.
pub(crate) struct Table<'a, 'i> {
    table: &'a DeTable<'i>,
    pub(crate) span: Range<usize>,
    pub(crate) path: String,
    seen: Vec<&'static str>,
}

fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

fn int_of(v: &DeValue<'_>) -> Option<i128> {
    match v {
        DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix()).ok(),
        _ => None,
    }
}

impl<'a, 'i> Table<'a, 'i> {
    pub(crate) fn root(table: &'a Spanned<DeTable<'i>>) -> Self {
        Table {
            table: table.get_ref(),
            span: table.span(),
            path: String::new(),
            seen: Vec::new(),
        }
    }

    /// The key path of `key` inside this table.
    pub(crate) fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn raw(&mut self, key: &'static str) -> Option<&'a Spanned<DeValue<'i>>> {
        self.seen.push(key);
        self.table
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == key)
            .map(|(_, v)| v)
    }

    /// Whether `key` is present and holds an integer.
    pub(crate) fn is_integer(&self, key: &str) -> bool {
        self.table
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == key)
            .is_some_and(|(_, v)| int_of(v.get_ref()).is_some())
    }

    fn wrong_type(&self, doc: &mut Doc, key: &str, v: &Spanned<DeValue<'_>>, want: &str) {
        doc.error(
            &v.span(),
            &self.key_path(key),
            format!("expected {want}, found {}", type_name(v.get_ref())),
            None,
        );
    }

    /// Where the value of `key` is written, if it is present.
    pub(crate) fn value_span(&self, key: &str) -> Option<Range<usize>> {
        self.table
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == key)
            .map(|(_, v)| v.span())
    }

    /// Where the name of `key` is written, if it is present.
    pub(crate) fn key_span(&self, key: &str) -> Option<Range<usize>> {
        self.table
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == key)
            .map(|(k, _)| k.span())
    }

    /// Whether `key` is present (and marks it as known).
    pub(crate) fn has(&mut self, key: &'static str) -> bool {
        self.raw(key).is_some()
    }

    pub(crate) fn string(&mut self, doc: &mut Doc, key: &'static str) -> Option<At<String>> {
        self.string_hinted(doc, key, None)
    }

    /// Like [`Self::string`], with a hint for a value of the wrong type.
    pub(crate) fn string_hinted(
        &mut self,
        doc: &mut Doc,
        key: &'static str,
        hint: Option<&str>,
    ) -> Option<At<String>> {
        let v = self.raw(key)?;
        match v.get_ref() {
            DeValue::String(s) => Some(At {
                value: s.to_string(),
                span: v.span(),
                key: self.key_path(key),
            }),
            other => {
                doc.error(
                    &v.span(),
                    &self.key_path(key),
                    format!("expected a string, found {}", type_name(other)),
                    hint.map(str::to_string),
                );
                None
            }
        }
    }

    pub(crate) fn boolean(&mut self, doc: &mut Doc, key: &'static str) -> Option<At<bool>> {
        let v = self.raw(key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(At {
                value: *b,
                span: v.span(),
                key: self.key_path(key),
            }),
            _ => {
                self.wrong_type(doc, key, v, "true or false");
                None
            }
        }
    }

    /// An integer within `min..=max`.
    pub(crate) fn integer(
        &mut self,
        doc: &mut Doc,
        key: &'static str,
        min: i64,
        max: i64,
    ) -> Option<At<i64>> {
        let v = self.raw(key)?;
        let path = self.key_path(key);
        match int_of(v.get_ref()) {
            Some(n) if n >= min as i128 && n <= max as i128 => Some(At {
                value: n as i64,
                span: v.span(),
                key: path,
            }),
            Some(n) => {
                doc.error(
                    &v.span(),
                    &path,
                    format!("{n} is out of range: must be between {min} and {max}"),
                    None,
                );
                None
            }
            None => {
                self.wrong_type(doc, key, v, "an integer");
                None
            }
        }
    }

    /// An array of strings; a wrong element is reported and skipped.
    pub(crate) fn strings(&mut self, doc: &mut Doc, key: &'static str) -> Option<Vec<At<String>>> {
        let v = self.raw(key)?;
        let path = self.key_path(key);
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong_type(doc, key, v, "an array of strings");
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match item.get_ref() {
                DeValue::String(s) => out.push(At {
                    value: s.to_string(),
                    span: item.span(),
                    key: format!("{path}[{i}]"),
                }),
                other => doc.error(
                    &item.span(),
                    &format!("{path}[{i}]"),
                    format!("expected a string, found {}", type_name(other)),
                    None,
                ),
            }
        }
        Some(out)
    }

    /// An array of integers within `min..=max`.
    pub(crate) fn integers(
        &mut self,
        doc: &mut Doc,
        key: &'static str,
        min: i64,
        max: i64,
    ) -> Option<Vec<At<i64>>> {
        let v = self.raw(key)?;
        let path = self.key_path(key);
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong_type(doc, key, v, "an array of integers");
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            match int_of(item.get_ref()) {
                Some(n) if n >= min as i128 && n <= max as i128 => out.push(At {
                    value: n as i64,
                    span: item.span(),
                    key: item_path,
                }),
                Some(n) => doc.error(
                    &item.span(),
                    &item_path,
                    format!("{n} is out of range: must be between {min} and {max}"),
                    None,
                ),
                None => doc.error(
                    &item.span(),
                    &item_path,
                    format!("expected an integer, found {}", type_name(item.get_ref())),
                    None,
                ),
            }
        }
        Some(out)
    }

    /// A sub-table (`[proxy]`, `[app.warmup]`).
    pub(crate) fn table(&mut self, doc: &mut Doc, key: &'static str) -> Option<Table<'a, 'i>> {
        let v = self.raw(key)?;
        match v.get_ref() {
            DeValue::Table(t) => Some(Table {
                table: t,
                span: v.span(),
                path: self.key_path(key),
                seen: Vec::new(),
            }),
            _ => {
                self.wrong_type(doc, key, v, "a table");
                None
            }
        }
    }

    /// An array of tables (`[[app]]`). Each element's path is `key[i]` until the caller
    /// renames it (e.g. to `app[shop]` once the name is known).
    pub(crate) fn tables(&mut self, doc: &mut Doc, key: &'static str) -> Vec<Table<'a, 'i>> {
        let Some(v) = self.raw(key) else {
            return Vec::new();
        };
        let path = self.key_path(key);
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong_type(
                doc,
                key,
                v,
                &format!("an array of tables (write [[{path}]])"),
            );
            return Vec::new();
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match item.get_ref() {
                DeValue::Table(t) => out.push(Table {
                    table: t,
                    span: item.span(),
                    path: format!("{path}[{i}]"),
                    seen: Vec::new(),
                }),
                other => doc.error(
                    &item.span(),
                    &format!("{path}[{i}]"),
                    format!("expected a table, found {}", type_name(other)),
                    None,
                ),
            }
        }
        out
    }

    /// A table of string values (`[app.slot.headers]`), in file order.
    pub(crate) fn string_map(
        &mut self,
        doc: &mut Doc,
        key: &'static str,
    ) -> Option<Vec<(At<String>, At<String>)>> {
        let v = self.raw(key)?;
        let path = self.key_path(key);
        let DeValue::Table(t) = v.get_ref() else {
            self.wrong_type(doc, key, v, "a table of strings");
            return None;
        };
        let mut out = Vec::with_capacity(t.len());
        for (k, val) in t.iter() {
            let name = k.get_ref().to_string();
            let item_path = format!("{path}.{name}");
            match val.get_ref() {
                DeValue::String(s) => out.push((
                    At {
                        value: name,
                        span: k.span(),
                        key: item_path.clone(),
                    },
                    At {
                        value: s.to_string(),
                        span: val.span(),
                        key: item_path,
                    },
                )),
                other => doc.error(
                    &val.span(),
                    &item_path,
                    format!("expected a string, found {}", type_name(other)),
                    Some("quote the value".into()),
                ),
            }
        }
        out.sort_by_key(|(k, _)| k.span.start);
        Some(out)
    }

    /// Reports every key of this table that no accessor asked for.
    pub(crate) fn finish(self, doc: &mut Doc) {
        for (k, _) in self.table.iter() {
            let name = k.get_ref().as_ref();
            if self.seen.contains(&name) {
                continue;
            }
            let hint = match closest(name, &self.seen) {
                Some(best) => format!("did you mean `{best}`?"),
                None => format!("known keys here: {}", self.seen.join(", ")),
            };
            doc.error(
                &k.span(),
                &self.key_path(name),
                format!("unknown key `{name}`"),
                Some(hint),
            );
        }
    }
}

/// The known key closest to a misspelt one, if it is close enough to be a typo.
fn closest<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (edit_distance(name, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_finds_typos_only() {
        let known = ["listen", "threads"];
        assert_eq!(closest("listn", &known), Some("listen"));
        assert_eq!(closest("thread", &known), Some("threads"));
        assert_eq!(closest("banana", &known), None);
    }
}
