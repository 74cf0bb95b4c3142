//! The shape of a configuration file: which tables and keys exist, and what
//! type each value has. Checked over the whole file before anything is
//! interpreted, so that every syntax error, unknown key and value of the
//! wrong type is reported at once, with a suggestion for a misspelled key.

use crate::error::{ConfigError, Locator, did_you_mean};
use std::path::Path;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// What a key's value must be.
#[derive(Clone, Copy)]
enum Kind {
    /// A string.
    Str,
    /// `true` or `false`.
    Bool,
    /// An array of strings.
    StrArray,
    /// An array of tables, each of this shape (`[[compartment]]`).
    Tables(&'static Shape),
    /// A table of tables, each of this shape (`[component.NAME]`).
    Named(&'static Shape),
}

/// The keys of one table: name, kind, whether it is required, an example for fixes.
struct Shape {
    /// How the table is written, for messages.
    name: &'static str,
    keys: &'static [(&'static str, Kind, bool, &'static str)],
}

const COMPARTMENT: Shape = Shape {
    name: "[[compartment]]",
    keys: &[
        ("name", Kind::Str, true, "name = \"fs\""),
        ("mechanism", Kind::Str, true, "mechanism = \"fcall\""),
        ("sharing", Kind::Str, false, "sharing = \"heap\""),
        ("default", Kind::Bool, false, "default = true"),
    ],
};

const COMPONENT: Shape = Shape {
    name: "[component.NAME]",
    keys: &[
        ("compartment", Kind::Str, false, "compartment = \"main\""),
        ("harden", Kind::StrArray, false, "harden = [\"overflow-checks\"]"),
    ],
};

const TOP: Shape = Shape {
    name: "the top level",
    keys: &[
        ("app", Kind::Str, true, "app = \"sqlite\""),
        ("files", Kind::Str, false, "files = \"../apps/sqlite/files\""),
        ("compartment", Kind::Tables(&COMPARTMENT), false, "[[compartment]]"),
        ("component", Kind::Named(&COMPONENT), false, "[component.vfs]"),
    ],
};

/// Every problem with the file's syntax and shape, in the order found.
pub(crate) fn check(path: &Path, text: &str, at: &Locator<'_>) -> Vec<ConfigError> {
    let (doc, syntax) = DeTable::parse_recoverable(text);
    let mut errors: Vec<ConfigError> = syntax.iter().map(|e| syntax_error(path, text, at, e)).collect();
    if errors.is_empty() {
        table(path, at, &TOP, doc.get_ref(), doc.span().start, &mut errors);
    }
    errors
}

/// A TOML syntax error, with a clearer message for a table or key given twice.
fn syntax_error(path: &Path, text: &str, at: &Locator<'_>, e: &toml::de::Error) -> ConfigError {
    let span = e.span().unwrap_or(0..0);
    let message = e.message().trim();
    if message.contains("duplicate key") {
        let shown = text.get(span.clone()).unwrap_or("").trim();
        let line = text[..span.start.min(text.len())].rfind('\n').map_or(0, |i| i + 1);
        let header = text[line..].lines().next().unwrap_or("").trim();
        let (what, fix) = if header.starts_with('[') && !header.starts_with("[[") {
            (format!("table {header} is defined twice"), format!("merge the two {header} tables into one"))
        } else {
            (format!("key `{shown}` is given twice in one table"), format!("keep one `{shown} = ...`"))
        };
        return at.error(path, span.start, what, fix);
    }
    at.error(
        path,
        span.start,
        message.to_string(),
        "write the file in the format of docs/configuration.md (keys: app, files, [[compartment]] name/mechanism/sharing/default, [component.NAME] compartment/harden)",
    )
}

fn kind_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "a number",
        DeValue::Float(_) => "a number",
        DeValue::Boolean(_) => "true or false",
        DeValue::Datetime(_) => "a date",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// Checks the keys of `t` (which starts at `start`) against `shape`.
fn table(path: &Path, at: &Locator<'_>, shape: &Shape, t: &DeTable<'_>, start: usize, errors: &mut Vec<ConfigError>) {
    for (key, value) in t.iter() {
        let name = key.get_ref().as_ref();
        match shape.keys.iter().find(|(k, ..)| *k == name) {
            Some(&(k, kind, _, example)) => check_value(path, at, k, kind, example, value, errors),
            None => {
                let valid: Vec<&str> = shape.keys.iter().map(|(k, ..)| *k).collect();
                let fix = match did_you_mean(name, valid.iter().copied()) {
                    Some(m) => format!("did you mean `{m}`?"),
                    None => format!("remove it; keys of {} are: {}", shape.name, valid.join(", ")),
                };
                errors.push(at.error(path, key.span().start, format!("unknown key `{name}` in {}", shape.name), fix));
            }
        }
    }
    for &(k, _, required, example) in shape.keys {
        if required && !t.iter().any(|(key, _)| key.get_ref() == k) {
            errors.push(at.error(path, start, format!("{} has no `{k}`", shape.name), format!("add {example}")));
        }
    }
}

fn check_value(
    path: &Path,
    at: &Locator<'_>,
    key: &str,
    kind: Kind,
    example: &str,
    value: &Spanned<DeValue<'_>>,
    errors: &mut Vec<ConfigError>,
) {
    let v = value.get_ref();
    let wrong = |errors: &mut Vec<ConfigError>, want: &str| {
        errors.push(at.error(
            path,
            value.span().start,
            format!("`{key}` must be {want}, not {}", kind_name(v)),
            format!("write {example}"),
        ));
    };
    match (kind, v) {
        (Kind::Str, DeValue::String(_)) | (Kind::Bool, DeValue::Boolean(_)) => {}
        (Kind::Str, _) => wrong(errors, "a string"),
        (Kind::Bool, _) => wrong(errors, "true or false"),
        (Kind::StrArray, DeValue::Array(items)) => {
            for item in items.iter() {
                if !matches!(item.get_ref(), DeValue::String(_)) {
                    errors.push(at.error(
                        path,
                        item.span().start,
                        format!("`{key}` must hold strings, not {}", kind_name(item.get_ref())),
                        format!("write {example}"),
                    ));
                }
            }
        }
        (Kind::StrArray, _) => wrong(errors, "an array of strings"),
        (Kind::Tables(shape), DeValue::Array(items)) => {
            for item in items.iter() {
                match item.get_ref() {
                    DeValue::Table(t) => table(path, at, shape, t, item.span().start, errors),
                    other => errors.push(at.error(
                        path,
                        item.span().start,
                        format!("each `{key}` must be a table, not {}", kind_name(other)),
                        format!("write {example}"),
                    )),
                }
            }
        }
        (Kind::Tables(_), _) => wrong(errors, "a list of tables ([[compartment]] sections)"),
        (Kind::Named(shape), DeValue::Table(t)) => {
            for (name, entry) in t.iter() {
                match entry.get_ref() {
                    DeValue::Table(inner) => table(path, at, shape, inner, entry.span().start, errors),
                    other => errors.push(at.error(
                        path,
                        name.span().start,
                        format!("`{key}.{}` must be a table, not {}", name.get_ref(), kind_name(other)),
                        format!("write [{key}.{}] on a line of its own, then its keys", name.get_ref()),
                    )),
                }
            }
        }
        (Kind::Named(_), _) => wrong(errors, "a table of [component.NAME] sections"),
    }
}
