//! Just enough of a BTF reader to find struct member offsets in the running kernel.
//!
//! The kernel program reads `struct sock` and `struct net` fields from a raw tracepoint, which
//! gives it a bare pointer, so the offsets must come from the running kernel's type information
//! (`/sys/kernel/btf/vmlinux`, the format of `include/uapi/linux/btf.h`) at load time.

use std::collections::HashMap;

/// Why an offset could not be found; the message names the type and member.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("BTF is malformed: {0}")]
    Malformed(&'static str),
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF: struct {strukt} has no member {member}")]
    NoMember { strukt: String, member: String },
    #[error("kernel BTF: {0} is a bitfield or not byte-aligned, which this agent cannot read")]
    NotByteAligned(String),
}

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_FUNC: u32 = 12;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

struct Member {
    name: u32,
    type_id: u32,
    /// Bit offset from the start of the enclosing type.
    bit_offset: u32,
    bitfield: bool,
}

struct Type {
    name: u32,
    kind: u32,
    /// The referenced type for modifiers and typedefs.
    type_id: u32,
    members: Vec<Member>,
}

/// Parsed BTF: the types with their names resolved lazily from the string section.
pub struct Btf {
    types: Vec<Type>, // index 0 is `void`
    strings: Vec<u8>,
    structs_by_name: HashMap<String, u32>,
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, BtfError> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or(BtfError::Malformed("truncated"))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, BtfError> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    /// Parses little-endian BTF (every architecture the agent is built for).
    pub fn parse(data: &[u8]) -> Result<Btf, BtfError> {
        if u16_at(data, 0)? != MAGIC {
            return Err(BtfError::Malformed("bad magic (big-endian or not BTF)"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let section = |off: usize, len: usize| {
            let start = hdr_len
                .checked_add(off)
                .ok_or(BtfError::Malformed("offset overflow"))?;
            let end = start
                .checked_add(len)
                .ok_or(BtfError::Malformed("offset overflow"))?;
            data.get(start..end)
                .ok_or(BtfError::Malformed("section out of bounds"))
        };
        let type_data = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?.to_vec();

        let mut types = vec![Type {
            name: 0,
            kind: 0,
            type_id: 0,
            members: Vec::new(),
        }];
        let mut at = 0;
        while at < type_data.len() {
            let name = u32_at(type_data, at)?;
            let info = u32_at(type_data, at + 4)?;
            let size_or_type = u32_at(type_data, at + 8)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            let extra = match kind {
                1 | 14 | 17 => 4, // INT, VAR, DECL_TAG
                3 => 12,          // ARRAY
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = at + i * 12;
                        let offset = u32_at(type_data, m + 8)?;
                        let (bit_offset, bitfield) = if kind_flag {
                            (offset & 0xff_ffff, offset >> 24 != 0)
                        } else {
                            (offset, false)
                        };
                        members.push(Member {
                            name: u32_at(type_data, m)?,
                            type_id: u32_at(type_data, m + 4)?,
                            bit_offset,
                            bitfield,
                        });
                    }
                    vlen * 12
                }
                6 | 13 => vlen * 8,        // ENUM, FUNC_PROTO
                15 | 19 => vlen * 12,      // DATASEC, ENUM64
                2 | 7..=12 | 16 | 18 => 0, // PTR, FWD, TYPEDEF, modifiers, FUNC, FLOAT, TYPE_TAG
                _ => return Err(BtfError::Malformed("unknown type kind")),
            };
            at += extra;
            types.push(Type {
                name,
                kind,
                type_id: size_or_type,
                members,
            });
        }
        if at != type_data.len() {
            return Err(BtfError::Malformed("type section ends inside a type"));
        }
        let mut btf = Btf {
            types,
            strings,
            structs_by_name: HashMap::new(),
        };
        for (id, t) in btf.types.iter().enumerate() {
            // The first complete definition wins (forward declarations have no members).
            if t.kind == KIND_STRUCT && !t.members.is_empty() {
                let name = btf.name(t.name).to_owned();
                btf.structs_by_name.entry(name).or_insert(id as u32);
            }
        }
        Ok(btf)
    }

    /// The type id of `struct name`, for kernel interfaces that take one (`bpf_rdonly_cast`).
    pub fn struct_id(&self, name: &str) -> Option<u32> {
        self.structs_by_name.get(name).copied()
    }

    /// Whether the kernel has the raw tracepoint `name`: each one is described in BTF by a
    /// `btf_trace_<name>` typedef, which is how the agent detects it without tracefs.
    pub fn has_raw_tracepoint(&self, name: &str) -> bool {
        let wanted = format!("btf_trace_{name}");
        self.types
            .iter()
            .any(|t| t.kind == KIND_TYPEDEF && self.name(t.name) == wanted)
    }

    /// The type id of the kernel function `name` (a kfunc is called by this id).
    pub fn func_id(&self, name: &str) -> Option<u32> {
        self.types
            .iter()
            .position(|t| t.kind == KIND_FUNC && self.name(t.name) == name)
            .map(|id| id as u32)
    }

    fn name(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.type_id;
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// Finds `name` among `t`'s members, looking inside anonymous structs and unions, and
    /// returns its bit offset from the start of `t` and its type.
    fn member(&self, t: &Type, name: &str) -> Option<(u32, u32, bool)> {
        for m in &t.members {
            if m.name == 0 {
                if let Some(inner) = self.resolve(m.type_id)
                    && matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                    && let Some((off, ty, bf)) = self.member(inner, name)
                {
                    return Some((m.bit_offset + off, ty, bf));
                }
            } else if self.name(m.name) == name {
                return Some((m.bit_offset, m.type_id, m.bitfield));
            }
        }
        None
    }

    /// Byte offset of `path` (member names, each inside the previous one's type) in `struct strukt`.
    pub fn offset_of(&self, strukt: &str, path: &[&str]) -> Result<u32, BtfError> {
        let id = *self
            .structs_by_name
            .get(strukt)
            .ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        let mut current = &self.types[id as usize];
        let mut current_name = strukt.to_owned();
        let mut bits = 0u32;
        for (i, member) in path.iter().enumerate() {
            let (off, ty, bitfield) =
                self.member(current, member)
                    .ok_or_else(|| BtfError::NoMember {
                        strukt: current_name.clone(),
                        member: (*member).to_owned(),
                    })?;
            let full = format!("{strukt}.{}", path[..=i].join("."));
            if bitfield || off % 8 != 0 {
                return Err(BtfError::NotByteAligned(full));
            }
            bits += off;
            if i + 1 < path.len() {
                current = self
                    .resolve(ty)
                    .filter(|t| matches!(t.kind, KIND_STRUCT | KIND_UNION))
                    .ok_or(BtfError::NoMember {
                        strukt: full.clone(),
                        member: path[i + 1].to_owned(),
                    })?;
                current_name = full;
            }
        }
        Ok(bits / 8)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a tiny BTF blob: `struct inner { int a; int b; }` and
    /// `struct outer { char pad[8]; union { struct inner in; long x; }; int tail:4; }`.
    pub(crate) fn sample() -> Vec<u8> {
        let strings = b"\0int\0inner\0a\0b\0outer\0in\0x\0tail\0pad\0char\0long\0".to_vec();
        let s = |name: &str| {
            let needle = format!("\0{name}\0");
            (strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap()
                + 1) as u32
        };
        let mut t = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                t.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int
        push(&[s("int"), 1 << 24, 4, 32]);
        // 2: struct inner { a @0, b @32 }
        push(&[
            s("inner"),
            (KIND_STRUCT << 24) | 2,
            8,
            s("a"),
            1,
            0,
            s("b"),
            1,
            32,
        ]);
        // 3: char, 4: char[8]
        push(&[s("char"), 1 << 24, 1, 8]);
        push(&[0, 3 << 24, 0, 3, 1, 8]);
        // 5: long
        push(&[s("long"), 1 << 24, 8, 64]);
        // 6: anonymous union { inner in @0; long x @0 }
        push(&[0, (KIND_UNION << 24) | 2, 8, s("in"), 2, 0, s("x"), 5, 0]);
        // 7: typedef inner_t = inner (exercise resolve)
        push(&[s("inner"), KIND_TYPEDEF << 24, 2]);
        // 8: struct outer (kind_flag: bitfield encoding) { pad @0, <anon union> @64, tail:4 @128 }
        push(&[
            s("outer"),
            (1 << 31) | (KIND_STRUCT << 24) | 3,
            20,
            s("pad"),
            4,
            0,
            0,
            6,
            64,
            s("tail"),
            1,
            (4 << 24) | 128,
        ]);
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.extend_from_slice(&[1, 0]);
        for w in [
            24u32,
            0,
            t.len() as u32,
            t.len() as u32,
            strings.len() as u32,
        ] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        b.extend_from_slice(&t);
        b.extend_from_slice(&strings);
        b
    }

    #[test]
    fn finds_members_through_anonymous_unions_and_nested_structs() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.offset_of("inner", &["b"]), Ok(4));
        assert_eq!(btf.offset_of("outer", &["x"]), Ok(8));
        assert_eq!(btf.offset_of("outer", &["in", "b"]), Ok(12));
    }

    #[test]
    fn finds_type_ids() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.struct_id("inner"), Some(2));
        assert_eq!(btf.struct_id("outer"), Some(8));
        assert_eq!(btf.struct_id("nope"), None);
        assert_eq!(btf.func_id("inner"), None);
    }

    #[test]
    fn names_what_is_missing() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(
            btf.offset_of("sock", &["x"]),
            Err(BtfError::NoStruct("sock".into()))
        );
        assert_eq!(
            btf.offset_of("outer", &["in", "c"])
                .unwrap_err()
                .to_string(),
            "kernel BTF: struct outer.in has no member c"
        );
        assert_eq!(
            btf.offset_of("outer", &["tail"]),
            Err(BtfError::NotByteAligned("outer.tail".into()))
        );
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert!(Btf::parse(&[]).is_err());
        assert!(Btf::parse(b"not btf at all, not at all").is_err());
        let mut truncated = sample();
        truncated.truncate(truncated.len() - 60);
        assert!(Btf::parse(&truncated).is_err());
        for cut in 0..sample().len() {
            let _ = Btf::parse(&sample()[..cut]);
        }
    }

    #[test]
    fn reads_the_running_kernels_sock_layout() {
        // /sys/kernel/btf/vmlinux is world-readable; every kernel this agent supports has it.
        let data = std::fs::read("/sys/kernel/btf/vmlinux")
            .expect("kernel BTF at /sys/kernel/btf/vmlinux");
        let btf = Btf::parse(&data).unwrap();
        let offsets = super::super::loader::sock_offsets(&btf).unwrap();
        // skc_family sits right after the address/hash/port unions on every 64-bit kernel.
        assert_eq!(offsets.skc_family, 16);
        assert_eq!(offsets.skc_daddr, 0);
        assert_eq!(offsets.skc_rcv_saddr, 4);
        assert_eq!(offsets.skc_dport, 12);
        assert_eq!(offsets.skc_num, 14);
        // Linux 6.18 has the kfunc that lets the program read the socket with plain loads.
        assert!(btf.func_id("bpf_rdonly_cast").is_some());
        assert_eq!(Some(offsets.sock_btf_id), btf.struct_id("sock"));
    }
}
