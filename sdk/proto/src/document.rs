//! Structured job documents: workload inputs and outputs are JSON or CBOR. CBOR is what
//! workloads emit when they produce many numbers (formatting floats as text is slow and large);
//! JSON is what people and the REST edge read. This module reads either into a
//! `serde_json::Value`, and renders CBOR as compact JSON with `f32` values printed in their
//! shortest form.

use serde_json::Value;
use std::fmt::Write;

/// Deepest nesting accepted; deeper documents are refused rather than recursed into.
const MAX_DEPTH: usize = 64;

/// Why bytes are not a structured document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DocumentError {
    /// Neither valid JSON nor valid CBOR.
    #[error("not a JSON or CBOR document: {0}")]
    Malformed(String),
    /// CBOR that has no JSON equivalent (non-string map keys, undefined, tags...).
    #[error("CBOR value without a JSON equivalent: {0}")]
    NotJsonCompatible(String),
}

/// Whether the bytes look like JSON (first non-space byte opens an object or array).
pub fn is_json(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{' || *b == b'[')
}

/// Read a JSON or CBOR document.
pub fn parse(bytes: &[u8]) -> Result<Value, DocumentError> {
    if is_json(bytes) {
        return serde_json::from_slice(bytes).map_err(|e| DocumentError::Malformed(e.to_string()));
    }
    let value: ciborium::Value =
        crate::cbor::from_slice(bytes).map_err(|e| DocumentError::Malformed(e.to_string()))?;
    to_value(&value, 0)
}

fn to_value(value: &ciborium::Value, depth: usize) -> Result<Value, DocumentError> {
    use ciborium::Value as C;
    if depth > MAX_DEPTH {
        return Err(DocumentError::Malformed("nested too deeply".into()));
    }
    Ok(match value {
        C::Null => Value::Null,
        C::Bool(b) => Value::Bool(*b),
        C::Integer(i) => {
            let i = i128::from(*i);
            match (i64::try_from(i), u64::try_from(i)) {
                (Ok(i), _) => Value::from(i),
                (_, Ok(u)) => Value::from(u),
                _ => return Err(DocumentError::NotJsonCompatible(format!("integer {i}"))),
            }
        }
        C::Float(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .ok_or_else(|| DocumentError::NotJsonCompatible(format!("float {f}")))?,
        C::Text(t) => Value::String(t.clone()),
        C::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| to_value(v, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        C::Map(entries) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| match k {
                    C::Text(k) => Ok((k.clone(), to_value(v, depth + 1)?)),
                    other => Err(DocumentError::NotJsonCompatible(format!(
                        "map key {other:?}"
                    ))),
                })
                .collect::<Result<_, _>>()?,
        ),
        other => return Err(DocumentError::NotJsonCompatible(format!("{other:?}"))),
    })
}

/// Render a JSON or CBOR document as compact JSON text. Floats that are exactly `f32` values
/// print in `f32`'s shortest form (`0.1`, not `0.10000000149011612`).
pub fn to_json_string(bytes: &[u8]) -> Result<String, DocumentError> {
    if is_json(bytes) {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| DocumentError::Malformed(e.to_string()))?;
        return Ok(value.to_string());
    }
    let value: ciborium::Value =
        crate::cbor::from_slice(bytes).map_err(|e| DocumentError::Malformed(e.to_string()))?;
    let mut out = String::with_capacity(bytes.len() * 2);
    write_json(&value, &mut out, 0)?;
    Ok(out)
}

fn write_json(
    value: &ciborium::Value,
    out: &mut String,
    depth: usize,
) -> Result<(), DocumentError> {
    use ciborium::Value as C;
    if depth > MAX_DEPTH {
        return Err(DocumentError::Malformed("nested too deeply".into()));
    }
    match value {
        C::Float(f) if !f.is_finite() => {
            return Err(DocumentError::NotJsonCompatible(format!("float {f}")));
        }
        C::Float(f) if f64::from(*f as f32) == *f => {
            out.push_str(ryu::Buffer::new().format_finite(*f as f32));
        }
        C::Float(f) => out.push_str(ryu::Buffer::new().format_finite(*f)),
        C::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(item, out, depth + 1)?;
            }
            out.push(']');
        }
        C::Map(entries) => {
            out.push('{');
            for (i, (key, item)) in entries.iter().enumerate() {
                let C::Text(key) = key else {
                    return Err(DocumentError::NotJsonCompatible(format!("map key {key:?}")));
                };
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{}:", Value::String(key.clone()));
                write_json(item, out, depth + 1)?;
            }
            out.push('}');
        }
        other => out.push_str(&to_value(other, depth)?.to_string()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_cbor_read_alike() {
        let json = br#"{"embeddings":[[0.1,-2.5]],"tokens":3}"#;
        #[derive(serde::Serialize)]
        struct Out {
            embeddings: Vec<Vec<f32>>,
            tokens: u32,
        }
        let cbor = crate::cbor::to_vec(&Out {
            embeddings: vec![vec![0.1, -2.5]],
            tokens: 3,
        })
        .unwrap();
        assert_eq!(
            to_json_string(&cbor).unwrap(),
            r#"{"embeddings":[[0.1,-2.5]],"tokens":3}"#
        );
        assert_eq!(
            to_json_string(json).unwrap(),
            r#"{"embeddings":[[0.1,-2.5]],"tokens":3}"#
        );
        let a = parse(json).unwrap();
        let b = parse(&cbor).unwrap();
        assert_eq!(a["tokens"], b["tokens"]);
        assert!(
            (a["embeddings"][0][0].as_f64().unwrap() - b["embeddings"][0][0].as_f64().unwrap())
                .abs()
                < 1e-7
        );
        assert!(parse(b"\xff\xff").is_err());
        assert!(parse(b"{broken").is_err());
    }

    #[test]
    fn hostile_nesting_is_refused() {
        let mut deep = vec![0x81u8; 10_000];
        deep.push(0x00);
        assert!(parse(&deep).is_err());
    }
}
