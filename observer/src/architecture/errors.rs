//! Why an architecture file was rejected: every problem found, each with its position.

use std::fmt;

use super::yaml::Pos;

/// One problem in an architecture file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelError {
    /// The file name as given to the loader, used as the start of the message.
    pub source: String,
    /// Where the problem is; `None` when it concerns the whole file (it cannot be read).
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// What is wrong and what to change.
    pub message: String,
}

/// On one line: a message that quotes a value of the file can hold a line break (a `\n` in a
/// double-quoted YAML string), which is shown escaped so that each error stays one line.
impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let message = self.message.replace('\r', "\\r").replace('\n', "\\n");
        match (self.line, self.column) {
            (Some(line), Some(column)) => {
                write!(f, "{}:{line}:{column}: {message}", self.source)
            }
            _ => write!(f, "{}: {message}", self.source),
        }
    }
}

/// Every problem found in one architecture file, in file order; never empty.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ModelErrors(Vec<ModelError>);

impl ModelErrors {
    /// Sorts by position so that messages read top to bottom like the file (the validator finds
    /// some problems, such as unknown parties, only after reading everything).
    pub(crate) fn new(mut errors: Vec<ModelError>) -> ModelErrors {
        errors.sort_by_key(|e| (e.line, e.column));
        ModelErrors(errors)
    }

    pub(crate) fn whole_file(source: &str, message: String) -> ModelErrors {
        ModelErrors(vec![ModelError {
            source: source.to_owned(),
            line: None,
            column: None,
            message,
        }])
    }

    pub fn errors(&self) -> &[ModelError] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One line per error: `file:line:col: message`.
impl fmt::Display for ModelErrors {
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

/// Collects problems while the validator walks a file.
pub(crate) struct Collector<'a> {
    source: &'a str,
    errors: Vec<ModelError>,
}

impl<'a> Collector<'a> {
    pub fn new(source: &'a str) -> Self {
        Collector {
            source,
            errors: Vec::new(),
        }
    }

    pub fn at(&mut self, pos: Pos, message: impl Into<String>) {
        self.errors.push(ModelError {
            source: self.source.to_owned(),
            line: Some(pos.line),
            column: Some(pos.column),
            message: message.into(),
        });
    }

    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }

    pub fn into_errors(self) -> ModelErrors {
        ModelErrors::new(self.errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_whose_message_has_line_breaks_is_still_one_line() {
        let e = ModelError {
            source: "p.yaml".into(),
            line: Some(3),
            column: Some(7),
            message: "found character that cannot start any token\nwhile scanning".into(),
        };
        assert_eq!(
            e.to_string(),
            "p.yaml:3:7: found character that cannot start any token\\nwhile scanning"
        );
        let all = ModelErrors::new(vec![e.clone(), e]);
        assert_eq!(all.to_string().lines().count(), 2);
    }
}
