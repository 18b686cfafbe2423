//! A minimal reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`): just enough to find
//! the byte offset of a struct member, so probes never hard-code kernel struct layouts.
//! Format: Documentation/bpf/btf.rst.

use std::{collections::HashMap, path::Path};

use thiserror::Error;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, Error)]
pub enum BtfError {
    #[error("cannot read BTF from {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("struct {0} not found in kernel BTF")]
    NoStruct(String),
    #[error("member {member} not found in struct {strukt} in kernel BTF")]
    NoMember { strukt: String, member: String },
    #[error("member {0} is a bitfield; nodepulse reads whole bytes only")]
    Bitfield(String),
}

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
pub(crate) const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// What a member or a tracepoint argument is, as far as a probe needs to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TypeDesc {
    /// An integer or enum of this many bytes.
    Int(u32),
    /// A pointer to the struct or union of this name ("" for anything else).
    Pointer(String),
    /// An embedded struct or union: name and size in bytes.
    Composite(String, u32),
    Other,
}

#[derive(Clone, Debug)]
struct Member {
    name: u32,
    type_id: u32,
    bit_offset: u32,
    bitfield: bool,
}

#[derive(Clone, Debug)]
struct Type {
    name: u32,
    kind: u32,
    /// Referenced type for modifiers and typedefs.
    type_id: u32,
    /// Members, enumerators or parameters.
    vlen: u32,
    members: Vec<Member>,
}

/// The parsed type table, with composite types indexed by name.
pub struct Btf {
    strings: Vec<u8>,
    types: Vec<Type>, // index = type id - 1
    structs: HashMap<String, u32>,
    /// Enumerator name → value, over all enums (names are unique in C).
    enumerators: HashMap<String, i64>,
}

/// The type and string sections of a BTF blob.
pub(crate) struct Sections<'a> {
    pub types: &'a [u8],
    pub strings: &'a [u8],
}

pub(crate) fn sections(data: &[u8]) -> Result<Sections<'_>, BtfError> {
    if data.len() < 24 || data[0..2] != [0x9f, 0xeb] {
        return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
    }
    let hdr_len = u32_at(data, 4)? as usize;
    let type_off = hdr_len + u32_at(data, 8)? as usize;
    let type_len = u32_at(data, 12)? as usize;
    let str_off = hdr_len + u32_at(data, 16)? as usize;
    let str_len = u32_at(data, 20)? as usize;
    Ok(Sections {
        types: data
            .get(type_off..type_off + type_len)
            .ok_or(BtfError::Malformed("type section out of bounds"))?,
        strings: data
            .get(str_off..str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?,
    })
}

pub(crate) fn u32_at(data: &[u8], off: usize) -> Result<u32, BtfError> {
    data.get(off..off + 4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
        .ok_or(BtfError::Malformed("truncated"))
}

/// Bytes of kind-specific data after a type's 12-byte common header.
pub(crate) fn kind_data_len(kind: u32, vlen: usize) -> usize {
    match kind {
        1 | 14 | 17 => 4,                      // INT, VAR, DECL_TAG
        3 => 12,                               // ARRAY
        KIND_STRUCT | KIND_UNION => vlen * 12, // members
        KIND_FUNC_PROTO | 6 => vlen * 8,       // parameters, ENUM
        15 | 19 => vlen * 12,                  // DATASEC, ENUM64
        _ => 0, // PTR, FWD, TYPEDEF, modifiers, FUNC, FLOAT, TYPE_TAG
    }
}

/// The records of a type section, and every enumerator as (name offset, value).
type ParsedTypes = (Vec<Type>, Vec<(u32, i64)>);

fn parse_types(types_data: &[u8]) -> Result<ParsedTypes, BtfError> {
    let mut types = Vec::new();
    let mut enum_values = Vec::new();
    let mut pos = 0;
    while pos < types_data.len() {
        let name = u32_at(types_data, pos)?;
        let info = u32_at(types_data, pos + 4)?;
        let size_or_type = u32_at(types_data, pos + 8)?;
        pos += 12;
        let vlen = (info & 0xffff) as usize;
        let kind = (info >> 24) & 0x1f;
        let kind_flag = info >> 31 == 1;
        let mut members = Vec::new();
        if kind == 6 || kind == 19 {
            // ENUM: {name, i32 value}; ENUM64: {name, lo32, hi32}.
            let width = if kind == 6 { 8 } else { 12 };
            for m in 0..vlen {
                let at = pos + m * width;
                let lo = u32_at(types_data, at + 4)?;
                let value = if kind == 6 {
                    i64::from(lo as i32)
                } else {
                    (i64::from(u32_at(types_data, at + 8)?) << 32) | i64::from(lo)
                };
                enum_values.push((u32_at(types_data, at)?, value));
            }
        }
        match kind {
            KIND_STRUCT | KIND_UNION => {
                for m in 0..vlen {
                    let at = pos + m * 12;
                    let offset = u32_at(types_data, at + 8)?;
                    members.push(Member {
                        name: u32_at(types_data, at)?,
                        type_id: u32_at(types_data, at + 4)?,
                        bit_offset: if kind_flag {
                            offset & 0xff_ffff
                        } else {
                            offset
                        },
                        bitfield: kind_flag && offset >> 24 != 0,
                    });
                }
            }
            KIND_FUNC_PROTO => {
                // Parameters: {name, type}; kept as members at offset 0.
                for m in 0..vlen {
                    let at = pos + m * 8;
                    members.push(Member {
                        name: u32_at(types_data, at)?,
                        type_id: u32_at(types_data, at + 4)?,
                        bit_offset: 0,
                        bitfield: false,
                    });
                }
            }
            _ => {}
        }
        pos += kind_data_len(kind, vlen);
        types.push(Type {
            name,
            kind,
            type_id: size_or_type,
            vlen: vlen as u32,
            members,
        });
    }
    Ok((types, enum_values))
}

impl Btf {
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let Sections { types, strings } = sections(data)?;
        let (types, enum_values) = parse_types(types)?;
        Ok(Self::index(strings.to_vec(), types, enum_values))
    }

    /// Split BTF (a module's, `/sys/kernel/btf/<module>`) over its base (vmlinux's,
    /// parsed): one type table in which the module's ids continue after the base's and
    /// its string offsets after the base's strings, as the kernel numbers them. Names
    /// the base already indexes keep the base's type.
    pub fn parse_split(base: &Btf, split: &[u8]) -> Result<Self, BtfError> {
        let own = sections(split)?;
        let (own_types, own_enums) = parse_types(own.types)?;
        let first = base.types.len();
        let mut strings = base.strings.clone();
        strings.extend_from_slice(own.strings);
        let mut types = base.types.clone();
        types.extend(own_types);
        let mut btf = Self {
            strings,
            types,
            structs: base.structs.clone(),
            enumerators: base.enumerators.clone(),
        };
        btf.index_from(first, own_enums);
        Ok(btf)
    }

    fn index(strings: Vec<u8>, types: Vec<Type>, enum_values: Vec<(u32, i64)>) -> Self {
        let mut btf = Self {
            strings,
            types,
            structs: HashMap::new(),
            enumerators: HashMap::new(),
        };
        btf.index_from(0, enum_values);
        btf
    }

    /// Indexes the composite types from record `first` on, and `enum_values`.
    fn index_from(&mut self, first: usize, enum_values: Vec<(u32, i64)>) {
        for (name, value) in enum_values {
            let name = self.string(name).to_owned();
            self.enumerators.entry(name).or_insert(value);
        }
        for i in first..self.types.len() {
            let t = &self.types[i];
            if matches!(t.kind, KIND_STRUCT | KIND_UNION) && t.name != 0 && !t.members.is_empty() {
                let name = self.string(t.name).to_owned();
                self.structs.entry(name).or_insert(i as u32 + 1);
            }
        }
    }

    fn string(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    fn ty(&self, id: u32) -> Option<&Type> {
        id.checked_sub(1).and_then(|i| self.types.get(i as usize))
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.ty(id) {
                Some(t)
                    if matches!(
                        t.kind,
                        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
                    ) =>
                {
                    id = t.type_id
                }
                _ => break,
            }
        }
        id
    }

    /// Finds `name` among the members of composite type `id`, descending into anonymous
    /// structs and unions. Returns (bit offset, member type id, is bitfield).
    fn find_member(&self, id: u32, name: &str) -> Option<(u32, u32, bool)> {
        let t = self.ty(self.resolve(id))?;
        for m in &t.members {
            if m.name != 0 && self.string(m.name) == name {
                return Some((m.bit_offset, m.type_id, m.bitfield));
            }
        }
        for m in t.members.iter().filter(|m| m.name == 0) {
            if let Some((off, ty, bf)) = self.find_member(m.type_id, name) {
                return Some((m.bit_offset + off, ty, bf));
            }
        }
        None
    }

    /// Byte offset of a member path inside a struct, e.g.
    /// `member_offset("task_struct", "sched_info.last_queued")`. Nested names are
    /// followed through embedded structs (not through pointers).
    pub fn member_offset(&self, strukt: &str, path: &str) -> Result<u32, BtfError> {
        self.member_at(strukt, path).map(|(off, _)| off)
    }

    /// A member path's byte offset (as [`Self::member_offset`]) and what its type is.
    pub fn member(&self, strukt: &str, path: &str) -> Result<(u32, TypeDesc), BtfError> {
        let (off, ty) = self.member_at(strukt, path)?;
        Ok((off, self.describe(ty)))
    }

    fn member_at(&self, strukt: &str, path: &str) -> Result<(u32, u32), BtfError> {
        let mut id = *self
            .structs
            .get(strukt)
            .ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        let mut bits = 0;
        for part in path.split('.') {
            let (off, ty, bitfield) =
                self.find_member(id, part)
                    .ok_or_else(|| BtfError::NoMember {
                        strukt: strukt.to_owned(),
                        member: path.to_owned(),
                    })?;
            if bitfield || off % 8 != 0 {
                return Err(BtfError::Bitfield(format!("{strukt}.{path}")));
            }
            bits += off;
            id = ty;
        }
        Ok((bits / 8, id))
    }

    /// What type `id` is, typedefs and qualifiers followed.
    fn describe(&self, id: u32) -> TypeDesc {
        let Some(t) = self.ty(self.resolve(id)) else {
            return TypeDesc::Other; // void
        };
        match t.kind {
            KIND_INT | KIND_ENUM | KIND_ENUM64 => TypeDesc::Int(t.type_id),
            KIND_PTR => match self.ty(self.resolve(t.type_id)) {
                Some(to) if matches!(to.kind, KIND_STRUCT | KIND_UNION | KIND_FWD) => {
                    TypeDesc::Pointer(self.string(to.name).to_owned())
                }
                _ => TypeDesc::Pointer(String::new()),
            },
            KIND_STRUCT | KIND_UNION => {
                TypeDesc::Composite(self.string(t.name).to_owned(), t.type_id)
            }
            _ => TypeDesc::Other,
        }
    }

    /// What each argument of a tracepoint is, after the context (as
    /// [`Self::tracepoint_args`] counts them); `None` without such a tracepoint.
    pub fn tracepoint_arg_types(&self, tracepoint: &str) -> Option<Vec<TypeDesc>> {
        let proto = self.tracepoint_proto(tracepoint)?;
        Some(
            proto
                .members
                .iter()
                .skip(1)
                .map(|p| self.describe(p.type_id))
                .collect(),
        )
    }

    /// How many arguments a tracepoint passes to BTF-enabled programs, from its
    /// `btf_trace_<name>` typedef (a pointer to a function whose first parameter is the
    /// tracepoint's own context); `None` when the kernel has no such tracepoint.
    pub fn tracepoint_args(&self, tracepoint: &str) -> Option<u32> {
        Some(self.tracepoint_proto(tracepoint)?.vlen.saturating_sub(1))
    }

    /// The function prototype behind a tracepoint's `btf_trace_<name>` typedef.
    fn tracepoint_proto(&self, tracepoint: &str) -> Option<&Type> {
        let want = format!("btf_trace_{tracepoint}");
        let typedef = self
            .types
            .iter()
            .position(|t| t.kind == KIND_TYPEDEF && self.string(t.name) == want)?;
        let ptr = self.ty(self.resolve(typedef as u32 + 1))?;
        let proto = self.ty(ptr.type_id).filter(|_| ptr.kind == KIND_PTR)?;
        (proto.kind == KIND_FUNC_PROTO).then_some(proto)
    }

    /// Name of the declared type of argument `index` (0-based, after the context) that a
    /// tracepoint passes to BTF-enabled programs, e.g. `"blk_status_t"` or `"int"`;
    /// typedefs are not followed, since the typedef is what tells the two apart.
    pub fn tracepoint_arg_type(&self, tracepoint: &str, index: usize) -> Option<&str> {
        let param = self.tracepoint_proto(tracepoint)?.members.get(index + 1)?;
        let ty = self.ty(param.type_id)?;
        Some(self.string(ty.name)).filter(|n| !n.is_empty())
    }

    /// Value of a C enumerator, e.g. `enum_value("QUEUE_FLAG_STATS")`.
    pub fn enum_value(&self, name: &str) -> Option<i64> {
        self.enumerators.get(name).copied()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a tiny BTF blob: `struct inner { int a; int b; }` and
    /// `struct outer { long x; union { int u; struct inner in; }; }`.
    pub(crate) fn sample() -> Vec<u8> {
        let strings =
            b"\0int\0a\0b\0inner\0outer\0x\0u\0in\0long\0flags\0FLAG_A\0FLAG_B\0".to_vec();
        let s = |name: &str| {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .map(|p| p as u32 + 1)
                .unwrap()
        };
        let mut t = Vec::new();
        let mut push = |words: &[u32]| words.iter().for_each(|w| t.extend(w.to_le_bytes()));
        push(&[s("int"), 1 << 24, 4, 32]); // 1: int
        push(&[s("long"), 1 << 24, 8, 64]); // 2: long
        push(&[s("inner"), (KIND_STRUCT << 24) | 2, 8]); // 3: struct inner
        push(&[s("a"), 1, 0, s("b"), 1, 32]);
        push(&[0, (KIND_UNION << 24) | 2, 8]); // 4: anonymous union
        push(&[s("u"), 1, 0, s("in"), 3, 0]);
        push(&[s("outer"), (KIND_STRUCT << 24) | 2, 16]); // 5: struct outer
        push(&[s("x"), 2, 0, 0, 4, 64]);
        push(&[s("flags"), (6 << 24) | 2, 4]); // 6: enum flags
        push(&[s("FLAG_A"), 3, s("FLAG_B"), (-1i32) as u32]);
        let mut data = vec![0x9f, 0xeb, 1, 0];
        data.extend(24u32.to_le_bytes());
        data.extend(0u32.to_le_bytes());
        data.extend((t.len() as u32).to_le_bytes());
        data.extend((t.len() as u32).to_le_bytes());
        data.extend((strings.len() as u32).to_le_bytes());
        data.extend(&t);
        data.extend(&strings);
        data
    }

    /// Writes BTF by hand for tests: a base, or a split over a base (ids and string
    /// offsets then continue after the base's, as the kernel numbers module BTF).
    pub(crate) struct Builder {
        strings: Vec<u8>,
        types: Vec<u8>,
        /// The id of the next type, and the string offset of `strings[0]`.
        next_id: u32,
        string_base: u32,
    }

    impl Builder {
        pub(crate) fn base() -> Self {
            Self {
                strings: vec![0],
                types: Vec::new(),
                next_id: 1,
                string_base: 0,
            }
        }

        pub(crate) fn split(base: &[u8]) -> Self {
            let b = Btf::parse(base).unwrap();
            Self {
                strings: vec![0],
                types: Vec::new(),
                next_id: b.types.len() as u32 + 1,
                string_base: b.strings.len() as u32,
            }
        }

        fn name(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let off = self.string_base + self.strings.len() as u32;
            self.strings.extend(name.as_bytes());
            self.strings.push(0);
            off
        }

        fn push(&mut self, words: &[u32]) -> u32 {
            words
                .iter()
                .for_each(|w| self.types.extend(w.to_le_bytes()));
            self.next_id += 1;
            self.next_id - 1
        }

        pub(crate) fn int(&mut self, name: &str, size: u32) -> u32 {
            let n = self.name(name);
            self.push(&[n, KIND_INT << 24, size, size * 8])
        }

        pub(crate) fn ptr(&mut self, to: u32) -> u32 {
            self.push(&[0, KIND_PTR << 24, to])
        }

        pub(crate) fn typedef(&mut self, name: &str, to: u32) -> u32 {
            let n = self.name(name);
            self.push(&[n, KIND_TYPEDEF << 24, to])
        }

        /// Members as (name, type, byte offset).
        pub(crate) fn strukt(
            &mut self,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let n = self.name(name);
            let mut words = vec![n, (KIND_STRUCT << 24) | members.len() as u32, size];
            for (m, ty, off) in members {
                words.extend([self.name(m), *ty, off * 8]);
            }
            self.push(&words)
        }

        /// `btf_trace_<tracepoint>`: a pointer to `void (void *, params...)`.
        pub(crate) fn tracepoint(&mut self, tracepoint: &str, params: &[u32]) -> u32 {
            let void_ptr = self.ptr(0);
            let mut words = vec![0, (KIND_FUNC_PROTO << 24) | (params.len() as u32 + 1), 0];
            words.extend([0, void_ptr]);
            for p in params {
                words.extend([0, *p]);
            }
            let proto = self.push(&words);
            let ptr = self.ptr(proto);
            self.typedef(&format!("btf_trace_{tracepoint}"), ptr)
        }

        pub(crate) fn build(&self) -> Vec<u8> {
            let mut data = vec![0x9f, 0xeb, 1, 0];
            let t = self.types.len() as u32;
            for w in [24, 0, t, t, self.strings.len() as u32] {
                data.extend(w.to_le_bytes());
            }
            data.extend(&self.types);
            data.extend(&self.strings);
            data
        }
    }

    #[test]
    fn reads_split_btf_over_its_base() {
        let mut b = Builder::base();
        let int = b.int("unsigned int", 4);
        let base_struct = b.strukt("base_thing", 8, &[("a", int, 0), ("b", int, 4)]);
        let base = b.build();
        let mut m = Builder::split(&base);
        let thing_ptr = m.ptr(base_struct);
        let own = m.strukt(
            "own_thing",
            24,
            &[
                ("embedded", base_struct, 0),
                ("p", thing_ptr, 8),
                ("n", int, 16),
            ],
        );
        assert_eq!(own, 4); // base: int, base_thing; split: ptr, own_thing
        let u32_t = m.typedef("u32", int);
        m.tracepoint("own_tp", &[thing_ptr, u32_t]);
        let split = m.build();
        let btf = Btf::parse_split(&Btf::parse(&base).unwrap(), &split).unwrap();
        assert_eq!(
            btf.member("own_thing", "embedded.b").unwrap(),
            (4, TypeDesc::Int(4))
        );
        assert_eq!(
            btf.member("own_thing", "embedded").unwrap(),
            (0, TypeDesc::Composite("base_thing".into(), 8))
        );
        assert_eq!(
            btf.member("own_thing", "p").unwrap(),
            (8, TypeDesc::Pointer("base_thing".into()))
        );
        assert_eq!(
            btf.tracepoint_arg_types("own_tp").unwrap(),
            [TypeDesc::Pointer("base_thing".into()), TypeDesc::Int(4)]
        );
        // The base alone knows none of the module's types.
        assert!(Btf::parse(&base).unwrap().member("own_thing", "n").is_err());
        assert!(Btf::parse_split(&Btf::parse(&base).unwrap(), b"not btf, no").is_err());
    }

    #[test]
    fn finds_members_through_anonymous_unions_and_nested_structs() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.member_offset("outer", "x").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "u").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "in.b").unwrap(), 12);
        assert_eq!(btf.member_offset("inner", "b").unwrap(), 4);
    }

    #[test]
    fn reads_enumerators() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.enum_value("FLAG_A"), Some(3));
        assert_eq!(btf.enum_value("FLAG_B"), Some(-1));
        assert_eq!(btf.enum_value("FLAG_C"), None);
        // Parsing continued past the enum: members after it are still found.
        assert_eq!(btf.member_offset("outer", "in.b").unwrap(), 12);
    }

    #[test]
    fn missing_names_are_reported() {
        let btf = Btf::parse(&sample()).unwrap();
        assert!(matches!(
            btf.member_offset("nope", "x"),
            Err(BtfError::NoStruct(_))
        ));
        let err = btf.member_offset("outer", "in.zz").unwrap_err();
        assert_eq!(
            err.to_string(),
            "member in.zz not found in struct outer in kernel BTF"
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"not btf at all, clearly").is_err());
    }

    #[test]
    fn reads_the_running_kernels_request_layout() {
        if !Path::new(VMLINUX_BTF).exists() {
            eprintln!("SKIPPED: {VMLINUX_BTF} absent on this machine");
            return;
        }
        let btf = Btf::from_sys_fs().unwrap();
        // `q` is near the start of struct request on every kernel since blk-mq.
        assert!(btf.member_offset("request", "q").unwrap() < 64);
        assert!(btf.member_offset("gendisk", "first_minor").unwrap() > 0);
        assert!(btf.enum_value("QUEUE_FLAG_STATS").is_some());
    }

    #[test]
    fn counts_the_running_kernels_tracepoint_arguments() {
        if !Path::new(VMLINUX_BTF).exists() {
            eprintln!("SKIPPED: {VMLINUX_BTF} absent on this machine");
            return;
        }
        let btf = Btf::from_sys_fs().unwrap();
        // sched_switch(preempt, prev, next, prev_state) since 5.18; (sk, skb) for ever.
        assert_eq!(btf.tracepoint_args("sched_switch"), Some(4));
        assert_eq!(btf.tracepoint_args("tcp_probe"), Some(2));
        assert_eq!(btf.tracepoint_args("no_such_tracepoint"), None);
    }

    #[test]
    fn names_the_running_kernels_tracepoint_argument_types() {
        if !Path::new(VMLINUX_BTF).exists() {
            eprintln!("SKIPPED: {VMLINUX_BTF} absent on this machine");
            return;
        }
        let btf = Btf::from_sys_fs().unwrap();
        // block_rq_complete(rq, error, nr_bytes): a blk_status_t since 5.11 (this host
        // runs a newer kernel); 5.10 is checked in the guest by `cargo xtask vmtest`.
        assert_eq!(
            btf.tracepoint_arg_type("block_rq_complete", 1),
            Some("blk_status_t")
        );
        assert_eq!(
            btf.tracepoint_arg_type("block_rq_complete", 2),
            Some("unsigned int")
        );
        assert_eq!(btf.tracepoint_arg_type("block_rq_complete", 3), None);
        assert_eq!(btf.tracepoint_arg_type("no_such_tracepoint", 0), None);
    }
}
