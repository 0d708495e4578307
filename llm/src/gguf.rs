//! GGUF files (version 2 and 3): a header, typed metadata, tensor descriptions and the
//! aligned tensor data. Every length, count and offset is checked against the file before it
//! is used, so a malformed file is an error, never a panic or a huge allocation.

use std::collections::BTreeMap;

/// The file's magic number, `GGUF` in little-endian byte order.
const MAGIC: u32 = 0x4655_4747;
/// Data alignment when the metadata does not say (`general.alignment`).
const DEFAULT_ALIGNMENT: u64 = 32;
/// The most dimensions a tensor may have.
const MAX_DIMS: u32 = 4;

/// Why a GGUF file could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum GgufError {
    /// Not a GGUF file, or a version this reader does not know.
    #[error("not a GGUF file of version 2 or 3: {0}")]
    NotGguf(String),
    /// The file ends before what its header promises.
    #[error("the file is truncated: {0}")]
    Truncated(String),
    /// A field holds a value that cannot be.
    #[error("malformed GGUF: {0}")]
    Malformed(String),
    /// A tensor's element type is one this engine does not run.
    #[error("tensor {name:?} has element type {kind}, which this engine does not support")]
    UnsupportedType {
        /// The tensor.
        name: String,
        /// Its ggml type number.
        kind: u32,
    },
    /// A metadata key the model needs is absent or of another type.
    #[error("metadata {key:?}: {problem}")]
    Metadata {
        /// The key.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The model has no tensor of this name.
    #[error("no tensor {0:?}")]
    NoTensor(String),
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `uint8`.
    U8(u8),
    /// `int8`.
    I8(i8),
    /// `uint16`.
    U16(u16),
    /// `int16`.
    I16(i16),
    /// `uint32`.
    U32(u32),
    /// `int32`.
    I32(i32),
    /// `uint64`.
    U64(u64),
    /// `int64`.
    I64(i64),
    /// `float32`.
    F32(f32),
    /// `float64`.
    F64(f64),
    /// `bool`.
    Bool(bool),
    /// A UTF-8 string (invalid sequences replaced).
    String(String),
    /// An array of values of one type.
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer, when it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, when it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// The element types this engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    /// 32-bit floats.
    F32,
    /// 16-bit floats.
    F16,
    /// Blocks of 32 four-bit weights with a scale and a minimum (20 bytes).
    Q4_1,
    /// Blocks of 32 eight-bit weights with a scale (34 bytes).
    Q8_0,
}

impl GgmlType {
    fn from_id(id: u32) -> Option<GgmlType> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            _ => return None,
        })
    }

    /// Elements per block.
    pub fn block_elements(self) -> u64 {
        match self {
            GgmlType::F32 | GgmlType::F16 => 1,
            GgmlType::Q4_1 | GgmlType::Q8_0 => 32,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> u64 {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 => 2,
            GgmlType::Q4_1 => 20,
            GgmlType::Q8_0 => 34,
        }
    }
}

/// Where a tensor lies, and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Dimensions, innermost first (`dims[0]` is the length of a row).
    pub dims: Vec<u64>,
    /// Element type.
    pub kind: GgmlType,
    /// Byte range in the file.
    pub range: std::ops::Range<usize>,
}

impl TensorInfo {
    /// Elements in all.
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A GGUF file read into memory: its metadata and tensors.
pub struct Gguf {
    bytes: Vec<u8>,
    /// Metadata, by key.
    pub metadata: BTreeMap<String, Value>,
    /// Tensors, by name.
    pub tensors: BTreeMap<String, TensorInfo>,
}

impl std::fmt::Debug for Gguf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf")
            .field("bytes", &self.bytes.len())
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], GgufError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| GgufError::Truncated(format!("{what} at byte {}", self.at)))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u8(&mut self, what: &str) -> Result<u8, GgufError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, GgufError> {
        Ok(u16::from_le_bytes(
            self.take(2, what)?.try_into().expect("2"),
        ))
    }
    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4"),
        ))
    }
    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8"),
        ))
    }

    /// A count that must fit in what is left of the file at `min_bytes` per item.
    fn count(&mut self, min_bytes: usize, what: &str) -> Result<usize, GgufError> {
        let n = self.u64(what)?;
        let left = (self.bytes.len() - self.at) as u64;
        if n.saturating_mul(min_bytes.max(1) as u64) > left {
            return Err(GgufError::Truncated(format!(
                "{what}: {n} items cannot fit in the {left} bytes left"
            )));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let n = self.count(1, what)?;
        Ok(String::from_utf8_lossy(self.take(n, what)?).into_owned())
    }

    fn value(&mut self, kind: u32, what: &str, depth: u8) -> Result<Value, GgufError> {
        Ok(match kind {
            0 => Value::U8(self.u8(what)?),
            1 => Value::I8(self.u8(what)? as i8),
            2 => Value::U16(self.u16(what)?),
            3 => Value::I16(self.u16(what)? as i16),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(self.u32(what)? as i32),
            6 => Value::F32(f32::from_bits(self.u32(what)?)),
            7 => match self.u8(what)? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(GgufError::Malformed(format!("{what}: bool {b}"))),
            },
            8 => Value::String(self.string(what)?),
            9 => {
                if depth > 0 {
                    return Err(GgufError::Malformed(format!("{what}: nested arrays")));
                }
                let item = self.u32(what)?;
                let n = self.count(1, what)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(item, what, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(self.u64(what)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(what)?)),
            k => return Err(GgufError::Malformed(format!("{what}: value type {k}"))),
        })
    }
}

impl Gguf {
    /// Read a GGUF file from its bytes.
    pub fn read(bytes: Vec<u8>) -> Result<Gguf, GgufError> {
        let mut r = Reader {
            bytes: &bytes,
            at: 0,
        };
        if r.u32("magic").ok() != Some(MAGIC) {
            return Err(GgufError::NotGguf("bad magic".into()));
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::NotGguf(format!("version {version}")));
        }
        // A tensor description takes at least 8 + 4 + 8 + 4 + 8 bytes, a metadata entry 8 + 4.
        let tensor_count = r.count(32, "tensor count")?;
        let kv_count = r.count(12, "metadata count")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = r.string("metadata key")?;
            let kind = r.u32("metadata type")?;
            let value = r.value(kind, &key, 0)?;
            metadata.insert(key, value);
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => v
                .as_u64()
                .filter(|a| a.is_power_of_two())
                .ok_or_else(|| GgufError::Malformed(format!("general.alignment {v:?}")))?,
        };
        let mut described = Vec::with_capacity(tensor_count);
        for _ in 0..tensor_count {
            let name = r.string("tensor name")?;
            let n_dims = r.u32(&name)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(GgufError::Malformed(format!(
                    "tensor {name:?} has {n_dims} dimensions"
                )));
            }
            let dims = (0..n_dims)
                .map(|_| r.u64(&name))
                .collect::<Result<Vec<_>, _>>()?;
            let kind_id = r.u32(&name)?;
            let offset = r.u64(&name)?;
            let kind = GgmlType::from_id(kind_id).ok_or(GgufError::UnsupportedType {
                name: name.clone(),
                kind: kind_id,
            })?;
            described.push((name, dims, kind, offset));
        }
        let data_start = (r.at as u64).next_multiple_of(alignment);
        let mut tensors = BTreeMap::new();
        for (name, dims, kind, offset) in described {
            let elements = dims
                .iter()
                .try_fold(1u64, |n, &d| n.checked_mul(d))
                .ok_or_else(|| GgufError::Malformed(format!("tensor {name:?} is too large")))?;
            if dims[0] % kind.block_elements() != 0 {
                return Err(GgufError::Malformed(format!(
                    "tensor {name:?}: rows of {} elements are not whole blocks",
                    dims[0]
                )));
            }
            let size = elements / kind.block_elements() * kind.block_bytes();
            let start = data_start.checked_add(offset);
            let end = start.and_then(|s| s.checked_add(size));
            let (Some(start), Some(end)) = (start, end) else {
                return Err(GgufError::Malformed(format!("tensor {name:?} offset")));
            };
            if end > bytes.len() as u64 || offset % alignment != 0 {
                return Err(GgufError::Truncated(format!(
                    "tensor {name:?} ({size} bytes at {start}) lies outside the {} bytes of the file",
                    bytes.len()
                )));
            }
            tensors.insert(
                name,
                TensorInfo {
                    dims,
                    kind,
                    range: start as usize..end as usize,
                },
            );
        }
        Ok(Gguf {
            bytes,
            metadata,
            tensors,
        })
    }

    /// A tensor's description and bytes.
    pub fn tensor(&self, name: &str) -> Result<(&TensorInfo, &[u8]), GgufError> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| GgufError::NoTensor(name.to_string()))?;
        Ok((info, &self.bytes[info.range.clone()]))
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// A metadata value that must be there.
    pub fn get(&self, key: &str) -> Result<&Value, GgufError> {
        self.metadata.get(key).ok_or_else(|| GgufError::Metadata {
            key: key.into(),
            problem: "missing".into(),
        })
    }

    /// A metadata value that must be a non-negative integer.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.get(key)?.as_u64().ok_or_else(|| GgufError::Metadata {
            key: key.into(),
            problem: "not an unsigned integer".into(),
        })
    }

    /// A metadata value that must be a number.
    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        self.get(key)?.as_f64().ok_or_else(|| GgufError::Metadata {
            key: key.into(),
            problem: "not a number".into(),
        })
    }

    /// A metadata value that must be an array of strings.
    pub fn get_strings(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        self.get(key)?
            .as_array()
            .and_then(|a| a.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
            .ok_or_else(|| GgufError::Metadata {
                key: key.into(),
                problem: "not an array of strings".into(),
            })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A GGUF file, built by hand: metadata and F32 tensors.
    pub(crate) fn build(
        metadata: &[(&str, Value)],
        tensors: &[(&str, Vec<u64>, Vec<f32>)],
    ) -> Vec<u8> {
        fn string(out: &mut Vec<u8>, s: &str) {
            out.extend((s.len() as u64).to_le_bytes());
            out.extend(s.as_bytes());
        }
        fn value(out: &mut Vec<u8>, v: &Value) {
            match v {
                Value::U32(x) => out.extend(x.to_le_bytes()),
                Value::F32(x) => out.extend(x.to_le_bytes()),
                Value::String(s) => string(out, s),
                Value::Array(items) => {
                    out.extend(kind(&items[0]).to_le_bytes());
                    out.extend((items.len() as u64).to_le_bytes());
                    for item in items {
                        value(out, item);
                    }
                }
                other => unimplemented!("{other:?}"),
            }
        }
        fn kind(v: &Value) -> u32 {
            match v {
                Value::U32(_) => 4,
                Value::F32(_) => 6,
                Value::String(_) => 8,
                Value::Array(_) => 9,
                _ => unimplemented!(),
            }
        }
        let mut out = Vec::new();
        out.extend(MAGIC.to_le_bytes());
        out.extend(3u32.to_le_bytes());
        out.extend((tensors.len() as u64).to_le_bytes());
        out.extend((metadata.len() as u64).to_le_bytes());
        for (k, v) in metadata {
            string(&mut out, k);
            out.extend(kind(v).to_le_bytes());
            value(&mut out, v);
        }
        let mut offset = 0u64;
        for (name, dims, data) in tensors {
            string(&mut out, name);
            out.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(0u32.to_le_bytes());
            out.extend(offset.to_le_bytes());
            offset = (offset + 4 * data.len() as u64).next_multiple_of(DEFAULT_ALIGNMENT);
        }
        out.resize(out.len().next_multiple_of(DEFAULT_ALIGNMENT as usize), 0);
        for (_, _, data) in tensors {
            for x in data {
                out.extend(x.to_le_bytes());
            }
            out.resize(out.len().next_multiple_of(DEFAULT_ALIGNMENT as usize), 0);
        }
        out
    }

    #[test]
    fn reads_what_it_is_given_and_refuses_what_is_broken() {
        let file = build(
            &[
                ("general.architecture", Value::String("llama".into())),
                ("llama.block_count", Value::U32(2)),
                (
                    "tokenizer.ggml.tokens",
                    Value::Array(vec![Value::String("a".into()), Value::String("b".into())]),
                ),
            ],
            &[("w", vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0])],
        );
        let gguf = Gguf::read(file.clone()).unwrap();
        assert_eq!(gguf.get_u64("llama.block_count").unwrap(), 2);
        assert_eq!(
            gguf.get_strings("tokenizer.ggml.tokens").unwrap(),
            ["a", "b"]
        );
        let (info, bytes) = gguf.tensor("w").unwrap();
        assert_eq!(
            (info.dims.clone(), info.kind, bytes.len()),
            (vec![2, 3], GgmlType::F32, 24)
        );
        assert_eq!(f32::from_le_bytes(bytes[20..24].try_into().unwrap()), 6.0);
        assert!(matches!(
            gguf.get_u64("general.architecture"),
            Err(GgufError::Metadata { .. })
        ));
        assert!(matches!(gguf.tensor("nope"), Err(GgufError::NoTensor(_))));

        // Every truncation is an error, never a panic.
        for cut in (0..info.range.end).step_by(7) {
            assert!(Gguf::read(file[..cut].to_vec()).is_err(), "cut at {cut}");
        }
        let mut magic = file.clone();
        magic[0] = b'X';
        assert!(matches!(Gguf::read(magic), Err(GgufError::NotGguf(_))));
        // A count that promises more than the file holds is refused before allocating.
        let mut huge = file.clone();
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(Gguf::read(huge), Err(GgufError::Truncated(_))));
    }
}
