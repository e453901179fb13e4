//! Property tests: the parser and validator never panic, and every rejection points inside the
//! file. Bounded so that they run in seconds with plain `cargo test`.

use proptest::prelude::*;

use super::{super::Architecture, TRACKUNIT, VALID};

/// Every error has a position inside the text (or none, for whole-file problems) and reads
/// `file:line:col: message`.
fn check(text: &str) {
    match Architecture::from_yaml(text, "p.yaml") {
        Ok(m) => {
            assert!(m.hash().starts_with("sha256:"));
            // A model that validated is internally consistent: every rule end is declared.
            for r in m.rules() {
                for end in [&r.from, &r.to] {
                    if let super::RuleEnd::Component(n) | super::RuleEnd::External(n) = end {
                        let declared = m.components().iter().any(|c| &c.name == n)
                            || m.externals().iter().any(|e| &e.name == n);
                        assert!(declared, "rule {} names undeclared {n}", r.id);
                    }
                }
                assert!(!r.ports.is_empty() && !r.ports.contains(&0));
            }
        }
        Err(errors) => {
            assert!(!errors.is_empty());
            let lines = super::super::yaml::lines(text).len();
            for e in errors.errors() {
                if let Some(line) = e.line {
                    assert!(line >= 1 && line <= lines, "line {line} of {lines}: {e}");
                    assert!(e.column.is_some_and(|c| c >= 1), "{e}");
                }
                assert!(e.to_string().starts_with("p.yaml:"), "{e}");
                assert!(!e.message.is_empty());
            }
            assert_eq!(errors.to_string().lines().count(), errors.len());
        }
    }
}

/// Edits that people (and bad merges) make to a valid file.
#[derive(Debug, Clone)]
enum Mutation {
    Delete { at: usize, len: usize },
    Insert { at: usize, text: String },
    Replace { at: usize, ch: char },
    DuplicateLine { line: usize },
    SwapLines { a: usize, b: usize },
    Reindent { line: usize, by: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let snippet = prop_oneof![
        Just(": ".to_owned()),
        Just("- ".to_owned()),
        Just("\n".to_owned()),
        Just("  ".to_owned()),
        Just("\"".to_owned()),
        Just("*".to_owned()),
        Just("&a ".to_owned()),
        Just("[".to_owned()),
        Just("{".to_owned()),
        Just("0".to_owned()),
        Just("65536".to_owned()),
        Just("---\n".to_owned()),
        Just("::/".to_owned()),
        "[ -~]{0,8}",
        any::<String>().prop_map(|s| s.chars().take(4).collect()),
    ];
    prop_oneof![
        (any::<usize>(), 1usize..20).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (any::<usize>(), snippet).prop_map(|(at, text)| Mutation::Insert { at, text }),
        (any::<usize>(), any::<char>()).prop_map(|(at, ch)| Mutation::Replace { at, ch }),
        any::<usize>().prop_map(|line| Mutation::DuplicateLine { line }),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines { a, b }),
        (any::<usize>(), 1usize..4).prop_map(|(line, by)| Mutation::Reindent { line, by }),
    ]
}

/// Applies `m` on character boundaries, so the result is still a `str`.
fn apply(text: &str, m: &Mutation) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut lines: Vec<&str> = text.split('\n').collect();
    let n = chars.len().max(1);
    match m {
        Mutation::Delete { at, len } => {
            let at = at % n;
            let end = (at + len).min(chars.len());
            chars[..at].iter().chain(&chars[end..]).collect()
        }
        Mutation::Insert { at, text: t } => {
            let at = at % (chars.len() + 1);
            chars[..at].iter().collect::<String>() + t + &chars[at..].iter().collect::<String>()
        }
        Mutation::Replace { at, ch } => {
            let mut c = chars.clone();
            if !c.is_empty() {
                c[at % n] = *ch;
            }
            c.into_iter().collect()
        }
        Mutation::DuplicateLine { line } => {
            let l = line % lines.len();
            lines.insert(l, lines[l]);
            lines.join("\n")
        }
        Mutation::SwapLines { a, b } => {
            let len = lines.len();
            lines.swap(a % len, b % len);
            lines.join("\n")
        }
        Mutation::Reindent { line, by } => {
            let l = line % lines.len();
            let indented = format!("{}{}", " ".repeat(*by), lines[l]);
            lines[l] = &indented;
            lines.join("\n")
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        check(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn yaml_like_text_never_panics(text in "([a-z:\\-\\[\\]{},*&!|>'\" \n#0-9.]){0,300}") {
        check(&text);
    }

    #[test]
    fn mutated_valid_documents_never_panic(
        base in prop_oneof![Just(VALID), Just(TRACKUNIT)],
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        let mut text = base.to_owned();
        for m in &mutations {
            text = apply(&text, m);
        }
        check(&text);
    }
}
