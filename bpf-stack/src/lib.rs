//! The stack a BPF object's programs need, measured as the kernel's verifier measures it, and
//! checked against a budget.
//!
//! The verifier refuses a program when the frames of any chain of BPF-to-BPF calls add up to
//! more than 512 bytes. Kernels from 6.13 may give a tracing program a private stack instead,
//! which lifts that limit, but nothing guarantees one and older kernels never do; a program
//! that fits only on a private stack loads on the developer's machine and nowhere else. An
//! object file carries no stack-size section, so this crate measures what the verifier
//! measures:
//! - each function's frame: the deepest byte below the frame pointer (r10) that its code
//!   touches or points at ([`insn::scan`]);
//! - rounded up as the verifier rounds each frame of a chain: to 32 bytes, and at least 32
//!   (what kernels before 6.8 and every kernel without a JIT do; later ones round to 16);
//! - summed along every call chain from each program's entry.
//!
//! [`Object::parse`] reads an ELF object; [`Object::chains`] gives each program's deepest
//! chain; [`check`] holds them to a budget.

use std::{collections::BTreeMap, fmt};

use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget, SymbolKind};

pub mod insn;

use insn::{INSN_SIZE, Insn, scan};

/// The verifier's limit on a call chain's combined stack (`MAX_BPF_STACK`).
pub const VERIFIER_LIMIT: u32 = 512;

/// How the verifier rounds each frame of a chain before adding them up.
pub const FRAME_GRANULARITY: u32 = 32;

/// A frame as it counts in a chain: rounded up to [`FRAME_GRANULARITY`], at least one unit.
pub fn rounded(depth: u32) -> u32 {
    depth.max(1).div_ceil(FRAME_GRANULARITY) * FRAME_GRANULARITY
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not a BPF ELF object: {0}")]
    Elf(#[from] object::Error),
    #[error("{function}: a call at instruction {slot} of section {section} targets no function")]
    DanglingCall {
        function: String,
        section: String,
        slot: usize,
    },
    #[error("{0}: recursion (the verifier refuses it): {1}")]
    Recursion(String, String),
}

/// One function of the object: a program's entry or a subprogram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    pub name: String,
    pub section: String,
    /// A program's entry (a global function in a section of its own), as opposed to a
    /// subprogram in `.text`.
    pub entry: bool,
    /// The deepest byte below the frame pointer its code uses: the verifier's "stack depth".
    pub depth: u32,
    /// Indices into [`Object::functions`] of the functions it calls.
    pub calls: Vec<usize>,
}

/// A program's deepest call chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub program: String,
    /// Each function of the chain from the entry, with its frame as the verifier counts it.
    pub frames: Vec<(String, u32)>,
}

impl Chain {
    pub fn total(&self) -> u32 {
        self.frames.iter().map(|(_, f)| f).sum()
    }
}

impl fmt::Display for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} bytes (", self.program, self.total())?;
        for (i, (name, frame)) in self.frames.iter().enumerate() {
            if i > 0 {
                f.write_str(" -> ")?;
            }
            write!(f, "{name} {frame}")?;
        }
        f.write_str(")")
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Object {
    pub functions: Vec<Function>,
}

impl Object {
    /// Reads the functions of an ELF object, their frames and their calls (within a section
    /// by relative offset; across sections through the section's relocations).
    pub fn parse(elf: &[u8]) -> Result<Object, Error> {
        let file = object::File::parse(elf)?;
        // (section index, first slot) -> function index
        let mut starts: BTreeMap<(usize, usize), usize> = BTreeMap::new();
        let mut code: Vec<(usize, usize, usize)> = Vec::new(); // section, first slot, slots
        let mut functions = Vec::new();
        for sym in file.symbols() {
            let Some(section) = sym.section_index() else {
                continue;
            };
            if sym.kind() != SymbolKind::Text || sym.size() == 0 {
                continue;
            }
            let sec = file.section_by_index(section)?;
            let name = sym.name()?.to_owned();
            let section_name = sec.name()?.to_owned();
            let first = (sym.address() - sec.address()) as usize / INSN_SIZE;
            let slots = sym.size() as usize / INSN_SIZE;
            starts.insert((section.0, first), functions.len());
            code.push((section.0, first, slots));
            functions.push(Function {
                entry: sym.is_global() && section_name != ".text",
                name: demangle(&name),
                section: section_name,
                depth: 0,
                calls: Vec::new(),
            });
        }
        for (index, &(section, first, slots)) in code.iter().enumerate() {
            let sec = file.section_by_index(object::SectionIndex(section))?;
            let data = sec.data()?;
            let bytes = data
                .get(first * INSN_SIZE..(first + slots) * INSN_SIZE)
                .unwrap_or_default();
            let found = scan(bytes, first);
            // slot -> target symbol's (section, first slot), for calls relocated across sections
            let mut relocated: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
            for (at, reloc) in sec.relocations() {
                if let RelocationTarget::Symbol(s) = reloc.target() {
                    let sym = file.symbol_by_index(s)?;
                    if let Some(target_section) = sym.section_index() {
                        let t = file.section_by_index(target_section)?;
                        let slot = (sym.address() - t.address()) as usize / INSN_SIZE;
                        relocated.insert(at as usize / INSN_SIZE, (target_section.0, slot));
                    }
                }
            }
            let mut calls = Vec::new();
            for (slot, i) in &found.references {
                let target = call_target(*slot, i, section, relocated.get(slot).copied());
                match target.and_then(|t| starts.get(&t)) {
                    Some(&callee) => calls.push(callee),
                    None => {
                        return Err(Error::DanglingCall {
                            function: functions[index].name.clone(),
                            section: functions[index].section.clone(),
                            slot: *slot,
                        });
                    }
                }
            }
            calls.sort_unstable();
            calls.dedup();
            functions[index].depth = found.depth;
            functions[index].calls = calls;
        }
        Ok(Object { functions })
    }

    /// The deepest call chain of each program entry, entries in the object's order.
    pub fn chains(&self) -> Result<Vec<Chain>, Error> {
        let mut out = Vec::new();
        for (i, f) in self.functions.iter().enumerate().filter(|(_, f)| f.entry) {
            let mut path = Vec::new();
            let frames = self.deepest(i, &mut path)?;
            out.push(Chain {
                program: f.name.clone(),
                frames: frames
                    .into_iter()
                    .map(|j| {
                        let g = &self.functions[j];
                        (g.name.clone(), rounded(g.depth))
                    })
                    .collect(),
            });
        }
        Ok(out)
    }

    /// Indices of the functions that program `entry` reaches through calls, itself excluded, in
    /// the order first reached.
    pub fn reachable(&self, entry: &str) -> Vec<usize> {
        let Some(start) = self
            .functions
            .iter()
            .position(|f| f.entry && f.name == entry)
        else {
            return Vec::new();
        };
        let mut reached = vec![start];
        let mut next = 0;
        while next < reached.len() {
            for &callee in &self.functions[reached[next]].calls {
                if !reached.contains(&callee) {
                    reached.push(callee);
                }
            }
            next += 1;
        }
        reached.remove(0);
        reached
    }

    /// The functions of the deepest chain from `at`, `at` first.
    fn deepest(&self, at: usize, path: &mut Vec<usize>) -> Result<Vec<usize>, Error> {
        if path.contains(&at) {
            let names: Vec<&str> = path
                .iter()
                .chain([&at])
                .map(|&i| self.functions[i].name.as_str())
                .collect();
            return Err(Error::Recursion(
                self.functions[path[0]].name.clone(),
                names.join(" -> "),
            ));
        }
        path.push(at);
        let mut best: Vec<usize> = Vec::new();
        let mut best_total = 0;
        for &callee in &self.functions[at].calls {
            let chain = self.deepest(callee, path)?;
            let total: u32 = chain
                .iter()
                .map(|&j| rounded(self.functions[j].depth))
                .sum();
            if total > best_total {
                best_total = total;
                best = chain;
            }
        }
        path.pop();
        let mut chain = vec![at];
        chain.extend(best);
        Ok(chain)
    }
}

/// The (section, first slot) a subprogram reference at `slot` of `section` targets: through
/// its relocation's symbol when it has one (`imm` is then relative to that symbol, as libbpf
/// reads it), else relative to the instruction itself.
fn call_target(
    slot: usize,
    i: &Insn,
    section: usize,
    relocated: Option<(usize, usize)>,
) -> Option<(usize, usize)> {
    let (section, base) = relocated.unwrap_or((section, slot));
    let target = base as i64 + i64::from(i.imm) + 1;
    usize::try_from(target).ok().map(|t| (section, t))
}

/// A Rust v0 or legacy symbol's path without its hashes (`observer_ebpf::program::count`),
/// so that a message names the function as its source does.
fn demangle(name: &str) -> String {
    let Some(rest) = name.strip_prefix("_RN") else {
        return name.to_owned();
    };
    // v0 paths: a sequence of <length><identifier> (crate roots carry a `Cs<hash>_` first);
    // good enough for messages: keep the identifiers, drop the disambiguators.
    let mut parts = Vec::new();
    let b = rest.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            let n: usize = rest[start..i].parse().unwrap_or(0);
            if i < b.len() && b[i] == b'_' {
                i += 1;
            }
            if let Some(id) = rest.get(i..i + n).filter(|id| !id.is_empty()) {
                parts.push(id);
            }
            i += n;
        } else if b[i] == b's' {
            // a disambiguator `s<base-62>_`
            while i < b.len() && b[i] != b'_' {
                i += 1;
            }
            i += 1;
        } else {
            i += 1;
        }
    }
    if parts.is_empty() {
        name.to_owned()
    } else {
        parts.join("::")
    }
}

/// A program whose deepest chain is over the budget.
#[derive(Debug, PartialEq, Eq)]
pub struct OverBudget {
    pub budget: u32,
    pub chains: Vec<Chain>,
}

impl fmt::Display for OverBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the kernel program's stack is over its budget of {} bytes per call chain (the verifier allows {}, and only a private stack, which most kernels never give, more):",
            self.budget, VERIFIER_LIMIT
        )?;
        for c in &self.chains {
            write!(f, " {c};")?;
        }
        f.write_str(
            " move large values to per-CPU scratch maps or keep a function out of line on purpose",
        )
    }
}

impl std::error::Error for OverBudget {}

/// Every chain over `budget`, worst first.
pub fn check(chains: &[Chain], budget: u32) -> Result<(), OverBudget> {
    let mut over: Vec<Chain> = chains
        .iter()
        .filter(|c| c.total() > budget)
        .cloned()
        .collect();
    if over.is_empty() {
        return Ok(());
    }
    over.sort_by_key(|c| std::cmp::Reverse(c.total()));
    Err(OverBudget {
        budget,
        chains: over,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn function(name: &str, entry: bool, depth: u32, calls: &[usize]) -> Function {
        Function {
            name: name.into(),
            section: if entry { name.into() } else { ".text".into() },
            entry,
            depth,
            calls: calls.to_vec(),
        }
    }

    #[test]
    fn frames_round_as_the_verifier_rounds_them() {
        assert_eq!(rounded(0), 32);
        assert_eq!(rounded(8), 32);
        assert_eq!(rounded(32), 32);
        assert_eq!(rounded(312), 320);
        assert_eq!(rounded(344), 352);
    }

    /// The chain that main's program had: 312 + 344 (+0 +24), 672 combined, which the verifier
    /// refused on every kernel without a private stack.
    fn mains_old_program() -> Object {
        Object {
            functions: vec![
                function("inet_sock_set_state", true, 312, &[1, 2]),
                function("on_connect_end", false, 344, &[2, 3]),
                function("memset", false, 0, &[]),
                function("count_loss", false, 24, &[]),
                function("dns_responses", true, 100, &[2]),
            ],
        }
    }

    #[test]
    fn the_deepest_chain_sums_the_rounded_frames() {
        let chains = mains_old_program().chains().unwrap();
        assert_eq!(chains.len(), 2);
        assert_eq!(
            chains[0].frames,
            vec![
                ("inet_sock_set_state".to_string(), 320),
                ("on_connect_end".to_string(), 352),
                ("memset".to_string(), 32),
            ]
        );
        assert_eq!(chains[0].total(), 704);
        assert_eq!(chains[1].total(), 128 + 32);
    }

    #[test]
    fn a_chain_over_the_budget_fails_the_check_naming_it_and_its_frames() {
        let chains = mains_old_program().chains().unwrap();
        let err = check(&chains, 384).unwrap_err();
        assert_eq!(err.chains.len(), 1);
        let msg = err.to_string();
        assert!(
            msg.contains("inet_sock_set_state: 704 bytes (inet_sock_set_state 320 -> on_connect_end 352 -> memset 32)"),
            "{msg}"
        );
        assert!(msg.contains("budget of 384 bytes"), "{msg}");
        // the DNS program's chain fits, and passes on its own
        assert_eq!(check(&chains[1..], 384), Ok(()));
        // exactly at the budget passes; a byte over fails
        assert_eq!(check(&chains[1..], 160), Ok(()));
        assert!(check(&chains[1..], 159).is_err());
    }

    #[test]
    fn reachable_lists_every_function_a_program_calls_once() {
        let o = mains_old_program();
        assert_eq!(o.reachable("inet_sock_set_state"), vec![1, 2, 3]);
        assert_eq!(o.reachable("dns_responses"), vec![2]);
        assert_eq!(o.reachable("no_such_program"), Vec::<usize>::new());
    }

    #[test]
    fn recursion_is_named() {
        let o = Object {
            functions: vec![function("p", true, 8, &[1]), function("f", false, 8, &[1])],
        };
        let err = o.chains().unwrap_err().to_string();
        assert!(err.contains("p -> f -> f"), "{err}");
    }

    #[test]
    fn demangles_v0_paths_for_messages() {
        assert_eq!(
            demangle("_RNvNtCseU1RjNPde5P_13observer_ebpf7program14on_connect_end"),
            "observer_ebpf::program::on_connect_end"
        );
        assert_eq!(demangle("memset"), "memset");
    }
}
