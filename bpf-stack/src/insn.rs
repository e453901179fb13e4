//! What one function's instructions say about its stack and its calls, read as the verifier
//! reads them: every access through the frame pointer (r10), directly or through a register
//! that holds r10 plus a constant.

/// One BPF instruction is 8 bytes; `lddw` (a 64-bit immediate) takes two.
pub const INSN_SIZE: usize = 8;

const CLASS_LDX: u8 = 0x01;
const CLASS_ST: u8 = 0x02;
const CLASS_STX: u8 = 0x03;
const CLASS_ALU: u8 = 0x04;
const CLASS_JMP: u8 = 0x05;
const CLASS_ALU64: u8 = 0x07;
/// `lddw dst, imm64`: class LD, mode IMM, size DW.
const OP_LDDW: u8 = 0x18;
/// `call imm` (BPF_JMP | BPF_CALL).
const OP_CALL: u8 = 0x85;
/// `dst = src` (BPF_ALU64 | BPF_MOV | BPF_X).
const OP_MOV64_REG: u8 = 0xbf;
/// `dst += imm`, `dst -= imm` (BPF_ALU64 | BPF_ADD/BPF_SUB | BPF_K).
const OP_ADD64_IMM: u8 = 0x07;
const OP_SUB64_IMM: u8 = 0x17;
/// `src_reg` of a call to another function of the program (a BPF-to-BPF call).
pub const PSEUDO_CALL: u8 = 1;
/// `src_reg` of an `lddw` that loads a function's address (a callback, e.g. for `bpf_loop`).
pub const PSEUDO_FUNC: u8 = 4;
const FRAME_POINTER: u8 = 10;
/// The verifier's unit of stack: a function using one byte of a slot has used the slot.
const SLOT_SIZE: u32 = 8;

/// A decoded instruction: the fields the measure needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub op: u8,
    pub dst: u8,
    pub src: u8,
    pub off: i16,
    pub imm: i32,
}

impl Insn {
    pub fn decode(bytes: &[u8; INSN_SIZE]) -> Insn {
        Insn {
            op: bytes[0],
            dst: bytes[1] & 0x0f,
            src: bytes[1] >> 4,
            off: i16::from_le_bytes([bytes[2], bytes[3]]),
            imm: i32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        }
    }

    /// `call` of another function of the program, or `lddw` of a callback's address: both
    /// make the target a subprogram whose frame stacks on this one.
    pub fn is_subprogram_reference(&self) -> bool {
        (self.op == OP_CALL && self.src == PSEUDO_CALL)
            || (self.op == OP_LDDW && self.src == PSEUDO_FUNC)
    }

    fn class(&self) -> u8 {
        self.op & 0x07
    }
}

/// What [`scan`] found in one function's code.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// The deepest byte below the frame pointer that the code touches or points at: the
    /// verifier's "stack depth" of the function.
    pub depth: u32,
    /// Slots (instruction indices within the function's section) of the instructions that
    /// reference another function, with the instruction.
    pub references: Vec<(usize, Insn)>,
}

/// Scans a function's code, `code` starting at slot `first` of its section.
///
/// Registers that hold the frame pointer plus a constant are followed in program order,
/// forgetting a register on any other write to it and r0-r5 at every call. Program order
/// rather than control flow: the compiler forms such pointers right before their use
/// (`r1 = r10; r1 += -16`), and where a jump could bring another value the measure can only
/// err towards deeper, never shallower, because every constant it sees is counted.
pub fn scan(code: &[u8], first: usize) -> Scan {
    let mut out = Scan::default();
    // frame-pointer offset held in r0..r9, if any
    let mut held: [Option<i64>; 10] = [None; 10];
    let mut deepest: i64 = 0;
    let mut slot = 0;
    let words = code.len() / INSN_SIZE;
    while slot < words {
        let bytes: &[u8; INSN_SIZE] = code[slot * INSN_SIZE..(slot + 1) * INSN_SIZE]
            .try_into()
            .expect("an 8-byte chunk");
        let i = Insn::decode(bytes);
        let base = |reg: u8, held: &[Option<i64>; 10]| -> Option<i64> {
            if reg == FRAME_POINTER {
                Some(0)
            } else {
                held.get(usize::from(reg)).copied().flatten()
            }
        };
        if i.is_subprogram_reference() {
            out.references.push((first + slot, i));
        }
        match i.class() {
            CLASS_LDX => {
                if let Some(b) = base(i.src, &held) {
                    deepest = deepest.min(b + i64::from(i.off));
                }
                forget(&mut held, i.dst);
            }
            CLASS_ST | CLASS_STX => {
                if let Some(b) = base(i.dst, &held) {
                    deepest = deepest.min(b + i64::from(i.off));
                }
                // Atomic fetch operations write their source register (or r0).
                if i.class() == CLASS_STX && i.op & 0xe0 == 0xc0 {
                    forget(&mut held, i.src);
                    forget(&mut held, 0);
                }
            }
            CLASS_ALU64 if i.op == OP_MOV64_REG && i.off == 0 => {
                let b = base(i.src, &held);
                set(&mut held, i.dst, b);
            }
            CLASS_ALU64 if i.op == OP_ADD64_IMM || i.op == OP_SUB64_IMM => {
                let delta = if i.op == OP_ADD64_IMM {
                    i64::from(i.imm)
                } else {
                    -i64::from(i.imm)
                };
                let b = base(i.dst, &held).map(|b| b + delta);
                if let Some(b) = b {
                    deepest = deepest.min(b);
                }
                set(&mut held, i.dst, b);
            }
            CLASS_ALU | CLASS_ALU64 => forget(&mut held, i.dst),
            CLASS_JMP if i.op == OP_CALL => {
                for r in 0..=5 {
                    forget(&mut held, r);
                }
            }
            _ if i.op == OP_LDDW => {
                forget(&mut held, i.dst);
                slot += 1; // the immediate's second half
            }
            _ => {}
        }
        slot += 1;
    }
    // The verifier tracks the stack in 8-byte slots.
    out.depth = u32::try_from(-deepest)
        .unwrap_or(u32::MAX)
        .next_multiple_of(SLOT_SIZE);
    out
}

fn forget(held: &mut [Option<i64>; 10], reg: u8) {
    set(held, reg, None);
}

fn set(held: &mut [Option<i64>; 10], reg: u8, value: Option<i64>) {
    if let Some(r) = held.get_mut(usize::from(reg)) {
        *r = value;
    }
}

/// Instruction encoders for tests.
#[cfg(test)]
pub mod asm {
    use super::*;

    pub fn insn(op: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; INSN_SIZE] {
        let mut b = [0u8; INSN_SIZE];
        b[0] = op;
        b[1] = dst | (src << 4);
        b[2..4].copy_from_slice(&off.to_le_bytes());
        b[4..].copy_from_slice(&imm.to_le_bytes());
        b
    }
    /// `*(u64 *)(dst + off) = src`
    pub fn stx64(dst: u8, off: i16, src: u8) -> [u8; INSN_SIZE] {
        insn(0x7b, dst, src, off, 0)
    }
    /// `dst = *(u64 *)(src + off)`
    pub fn ldx64(dst: u8, src: u8, off: i16) -> [u8; INSN_SIZE] {
        insn(0x79, dst, src, off, 0)
    }
    pub fn mov64(dst: u8, src: u8) -> [u8; INSN_SIZE] {
        insn(OP_MOV64_REG, dst, src, 0, 0)
    }
    pub fn add64(dst: u8, imm: i32) -> [u8; INSN_SIZE] {
        insn(OP_ADD64_IMM, dst, 0, 0, imm)
    }
    pub fn mov64_imm(dst: u8, imm: i32) -> [u8; INSN_SIZE] {
        insn(0xb7, dst, 0, 0, imm)
    }
    /// A helper call (`call imm`).
    pub fn call_helper(id: i32) -> [u8; INSN_SIZE] {
        insn(OP_CALL, 0, 0, 0, id)
    }
    /// A call of the function `imm + 1` slots after this one.
    pub fn call_local(imm: i32) -> [u8; INSN_SIZE] {
        insn(OP_CALL, 0, PSEUDO_CALL, 0, imm)
    }
    pub fn exit() -> [u8; INSN_SIZE] {
        insn(0x95, 0, 0, 0, 0)
    }
    pub fn code(insns: &[[u8; INSN_SIZE]]) -> Vec<u8> {
        insns.concat()
    }
}

#[cfg(test)]
mod tests {
    use super::{asm::*, *};

    #[test]
    fn a_direct_store_below_the_frame_pointer_is_the_depth() {
        let s = scan(
            &code(&[
                stx64(10, -8, 1),
                stx64(10, -40, 1),
                ldx64(2, 10, -24),
                exit(),
            ]),
            0,
        );
        assert_eq!(s.depth, 40);
        // a 2-byte store at r10 - 18 uses the slot down to 24, as the verifier counts it
        assert_eq!(
            scan(&code(&[insn(0x6b, 10, 1, -18, 0), exit()]), 0).depth,
            24
        );
        assert!(s.references.is_empty());
    }

    #[test]
    fn a_pointer_into_the_frame_counts_where_it_points() {
        // r1 = r10; r1 += -128; a helper fills [r10-128, r10-112)
        let s = scan(
            &code(&[mov64(1, 10), add64(1, -128), call_helper(113), exit()]),
            0,
        );
        assert_eq!(s.depth, 128);
        // ... and an access through a copied, moved pointer goes deeper still
        let s = scan(
            &code(&[
                mov64(6, 10),
                add64(6, -64),
                mov64(7, 6),
                stx64(7, -16, 1),
                exit(),
            ]),
            0,
        );
        assert_eq!(s.depth, 80);
    }

    #[test]
    fn a_register_overwritten_or_clobbered_by_a_call_is_no_longer_a_frame_pointer() {
        let s = scan(
            &code(&[
                mov64(1, 10),
                add64(1, -16),
                call_helper(1), // r1 is clobbered
                stx64(1, -200, 2),
                mov64(6, 10),
                mov64_imm(6, 0), // overwritten
                stx64(6, -300, 2),
                exit(),
            ]),
            0,
        );
        assert_eq!(s.depth, 16);
    }

    #[test]
    fn subprogram_calls_are_found_with_their_slot() {
        let s = scan(&code(&[call_helper(5), call_local(3), exit()]), 10);
        assert_eq!(s.references.len(), 1);
        assert_eq!(s.references[0].0, 11);
        assert_eq!(s.references[0].1.imm, 3);
    }

    #[test]
    fn a_wide_immediate_is_skipped_whole() {
        // lddw r1, imm64 whose second half looks like a deep store
        let mut wide = insn(OP_LDDW, 1, 0, 0, 0).to_vec();
        wide.extend_from_slice(&stx64(10, -500, 1));
        wide.extend_from_slice(&exit());
        assert_eq!(scan(&wide, 0).depth, 0);
    }
}
