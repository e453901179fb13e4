//! A YAML document as a tree of nodes that each remember where they were written, so that
//! validation can point at the exact line and column of the value to fix.
//!
//! Built from saphyr-parser's event stream rather than a serde deserializer: serde stops at the
//! first error and loses positions, while the model's users need every mistake, each with its
//! position. Only what an architecture file needs is supported: one document of mappings,
//! sequences and scalars. Aliases are refused (they would only hide structure, and resolving
//! them invites exponential expansion); anchors and tags are ignored.

use saphyr_parser::{Event, Parser, ScalarStyle};

/// Nesting deeper than any valid file needs. Bounding it keeps the recursive walks (and the
/// recursive `Drop` of the tree) from exhausting the stack on hostile input.
const MAX_DEPTH: usize = 16;

/// A 1-based line and column (in characters), as editors count them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, column: 1 };

    fn from_marker(m: &saphyr_parser::Marker) -> Pos {
        // saphyr counts lines from 1 and columns from 0.
        Pos {
            line: m.line().max(1),
            column: m.col().saturating_add(1),
        }
    }
}

#[derive(Debug)]
pub enum Value {
    /// `plain` is false for quoted and block scalars: only a plain `~`, `null` or empty value
    /// is YAML's null, and only a plain scalar can be a number.
    Scalar {
        text: String,
        plain: bool,
    },
    Sequence(Vec<Node>),
    /// Entries in the order written; duplicate keys are kept so the validator can report them.
    Mapping(Vec<(Node, Node)>),
}

#[derive(Debug)]
pub struct Node {
    pub value: Value,
    pub pos: Pos,
}

impl Node {
    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, plain: true } if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// What the node is, for "expected X, found Y" messages.
    pub fn kind(&self) -> &'static str {
        match &self.value {
            _ if self.is_null() => "nothing",
            Value::Scalar { .. } => "a single value",
            Value::Sequence(_) => "a list",
            Value::Mapping(_) => "a mapping",
        }
    }
}

/// Why the text is not a YAML document this module can load.
#[derive(Debug, PartialEq, Eq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Parses `text` into its single document; `Ok(None)` for a file with no document at all.
pub fn parse(text: &str) -> Result<Option<Node>, SyntaxError> {
    let mut builder = Builder::default();
    let mut documents = 0usize;
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| SyntaxError {
            pos: clamp_to_text(text, Pos::from_marker(e.marker())),
            message: syntax_message(text, e.marker(), e.info()),
        })?;
        let pos = Pos::from_marker(&span.start);
        match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(SyntaxError {
                        pos,
                        message: "a second YAML document (after \"---\"); an architecture file \
                                  holds exactly one document: remove it or move it to its own file"
                            .into(),
                    });
                }
            }
            Event::Alias(_) => {
                return Err(SyntaxError {
                    pos,
                    message: "YAML aliases (*name) are not supported; write the value out, and \
                              quote values that start with \"*\", e.g. \"*\" or \"*.example.com\""
                        .into(),
                });
            }
            Event::Scalar(text, style, _, _) => builder.add(Node {
                value: Value::Scalar {
                    text: text.into_owned(),
                    plain: style == ScalarStyle::Plain,
                },
                pos,
            })?,
            Event::SequenceStart(..) => builder.open(Open::Sequence(Vec::new()), pos)?,
            Event::MappingStart(..) => builder.open(Open::Mapping(Vec::new(), None), pos)?,
            Event::SequenceEnd | Event::MappingEnd => builder.close()?,
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
    }
    Ok(builder.root)
}

/// The lines of `text` as YAML (and editors) count them: `\r\n`, `\n` and a lone `\r` each end one.
pub fn lines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(['\n', '\r']) {
        lines.push(&rest[..i]);
        let skip = if rest[i..].starts_with("\r\n") { 2 } else { 1 };
        rest = &rest[i + skip..];
    }
    lines.push(rest);
    lines
}

/// saphyr places errors at the end of input one line past the last; point at the end of the
/// last line instead, where an editor can go.
fn clamp_to_text(text: &str, pos: Pos) -> Pos {
    let lines = lines(text);
    match lines.last() {
        Some(last) if pos.line > lines.len() => Pos {
            line: lines.len(),
            column: last.chars().count() + 1,
        },
        _ => pos,
    }
}

/// saphyr's message, plus the likely cause when the error sits on an unquoted `*`: the format
/// uses `*` for "any component" and `*.domain` for wildcard hosts, and YAML reads both as aliases.
fn syntax_message(text: &str, at: &saphyr_parser::Marker, info: &str) -> String {
    let all = lines(text);
    let line = at.line().checked_sub(1).and_then(|l| all.get(l).copied());
    let starts_with_star = line
        .and_then(|l| l.chars().nth(at.col()))
        .is_some_and(|c| c == '*')
        || line.is_some_and(|l| {
            l.chars()
                .skip(at.col())
                .find(|c| !c.is_whitespace())
                .is_some_and(|c| c == '*')
        });
    if starts_with_star {
        format!(
            "YAML syntax error: {info}; a value starting with \"*\" must be quoted, e.g. \"*\" or \"*.example.com\""
        )
    } else {
        format!(
            "YAML syntax error: {info}; check the indentation and that each \"key: value\" has a space after the colon"
        )
    }
}

enum Open {
    Sequence(Vec<Node>),
    /// Entries so far, and a key waiting for its value.
    Mapping(Vec<(Node, Node)>, Option<Node>),
}

#[derive(Default)]
struct Builder {
    stack: Vec<(Open, Pos)>,
    root: Option<Node>,
}

impl Builder {
    fn open(&mut self, open: Open, pos: Pos) -> Result<(), SyntaxError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(SyntaxError {
                pos,
                message: format!(
                    "nesting deeper than {MAX_DEPTH} levels; an architecture file never needs that"
                ),
            });
        }
        self.stack.push((open, pos));
        Ok(())
    }

    fn close(&mut self) -> Result<(), SyntaxError> {
        let Some((open, pos)) = self.stack.pop() else {
            // The parser balances starts and ends; an unbalanced end is ignored rather than trusted.
            return Ok(());
        };
        let value = match open {
            Open::Sequence(items) => Value::Sequence(items),
            Open::Mapping(entries, _) => Value::Mapping(entries),
        };
        self.add(Node { value, pos })
    }

    fn add(&mut self, node: Node) -> Result<(), SyntaxError> {
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some((Open::Sequence(items), _)) => items.push(node),
            Some((Open::Mapping(entries, pending), _)) => match pending.take() {
                None => {
                    if !matches!(node.value, Value::Scalar { .. }) {
                        return Err(SyntaxError {
                            pos: node.pos,
                            message: format!(
                                "a mapping key must be a single value, found {}",
                                node.kind()
                            ),
                        });
                    }
                    *pending = Some(node);
                }
                Some(key) => entries.push((key, node)),
            },
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        let e = parse(text).expect_err("should fail");
        format!("{}:{}: {}", e.pos.line, e.pos.column, e.message)
    }

    #[test]
    fn nodes_carry_their_positions() {
        let root = parse("a:\n  - x\n  - {b: 1}\n").unwrap().unwrap();
        let Value::Mapping(entries) = &root.value else {
            panic!("{root:?}")
        };
        assert_eq!(entries[0].0.pos, Pos { line: 1, column: 1 });
        let Value::Sequence(items) = &entries[0].1.value else {
            panic!()
        };
        assert_eq!(items[0].pos, Pos { line: 2, column: 5 });
        assert_eq!(items[1].pos, Pos { line: 3, column: 5 });
    }

    #[test]
    fn errors_at_the_end_point_at_the_last_line() {
        assert_eq!(
            err("&0["),
            "1:4: YAML syntax error: while parsing a node, did not find expected node content; check the indentation and that each \"key: value\" has a space after the colon"
        );
        assert_eq!(lines("a\r\nb\rc\n"), ["a", "b", "c", ""]);
    }

    #[test]
    fn empty_text_has_no_document() {
        assert!(parse("").unwrap().is_none());
        assert!(parse("# only a comment\n").unwrap().is_none());
    }

    #[test]
    fn an_unquoted_star_gets_a_hint() {
        assert_eq!(
            err("from: *\n"),
            "1:7: YAML syntax error: while scanning an anchor or alias, did not find expected alphabetic or numeric character; a value starting with \"*\" must be quoted, e.g. \"*\" or \"*.example.com\""
        );
        assert_eq!(
            err("hosts: [*.ts.net]\n"),
            "1:9: YAML syntax error: while parsing node, found unknown anchor; a value starting with \"*\" must be quoted, e.g. \"*\" or \"*.example.com\""
        );
    }

    #[test]
    fn aliases_second_documents_and_deep_nesting_are_refused() {
        assert_eq!(
            err("a: &x 1\nb: *x\n"),
            "2:4: YAML aliases (*name) are not supported; write the value out, and quote values that start with \"*\", e.g. \"*\" or \"*.example.com\""
        );
        assert_eq!(
            err("a: 1\n---\nb: 2\n"),
            "2:1: a second YAML document (after \"---\"); an architecture file holds exactly one document: remove it or move it to its own file"
        );
        let deep = format!("{}{}", "[".repeat(20), "]".repeat(20));
        assert_eq!(
            err(&deep),
            "1:17: nesting deeper than 16 levels; an architecture file never needs that"
        );
        // Far deeper nesting stops in the parser itself, still without exhausting the stack.
        assert_eq!(
            err(&"[".repeat(100_000)),
            "1:256: YAML syntax error: recursion limit exceeded; check the indentation and that each \"key: value\" has a space after the colon"
        );
    }

    #[test]
    fn complex_keys_are_refused() {
        assert_eq!(
            err("? [a]\n: b\n"),
            "1:3: a mapping key must be a single value, found a list"
        );
    }
}
