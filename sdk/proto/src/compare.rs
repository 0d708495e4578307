//! Comparison of two results of the same job, by the rule the workload declares.
//!
//! Re-execution on another device (and another inference backend) must accept honest results:
//! ONNX Runtime and OpenVINO legitimately differ in the last bits of floating point. So float
//! workloads declare a tolerance instead of demanding identical bytes.

use crate::ModelBinding;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How two outputs of one job are compared (mirrors `mesh:workload/types.comparison`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", content = "value", rename_all = "kebab-case")]
pub enum Comparison {
    /// Byte-for-byte identical.
    Exact,
    /// Documents (JSON or CBOR) of the same shape; every number within this absolute difference.
    FloatTolerance(f32),
    /// JSON of the same shape; every array of numbers has at least this cosine similarity with
    /// its counterpart, other numbers are equal.
    Cosine(f32),
    /// Generated text: a judge does not run the job again but re-scores the executor's
    /// tokens (the workload with the claimed output as `score`, see [`score_input`]) and
    /// answers a [`ScoreVerdict`]; tokens within this many logits of what the declared
    /// sampling draws are accepted. Two generations compare by their token ids.
    Generation(f32),
}

/// A judge's answer to a scoring run of a [`Comparison::Generation`] workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreVerdict {
    /// `consistent` when every claimed token (and how the text ended) is what the declared
    /// sampling draws, within the margin; `inconsistent` otherwise.
    pub verdict: ScoreOutcome,
    /// Tokens scored.
    #[serde(default)]
    pub checked_tokens: u64,
    /// The largest gap found between a claimed token and what the sampling draws, in logits.
    #[serde(default)]
    pub worst_gap: f64,
    /// Why it is inconsistent (empty when consistent).
    #[serde(default)]
    pub reason: String,
}

/// The verdict of a scoring run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoreOutcome {
    /// The claimed generation is what this engine's model draws.
    Consistent,
    /// It is not.
    Inconsistent,
}

/// The input of the scoring run that judges `output` as an answer to `input` (both JSON
/// documents): `input` with the claimed output under `score`. An output that is not a
/// document is scored as a string, which no generation workload accepts.
pub fn score_input(input: &[u8], output: &[u8]) -> Result<Vec<u8>, Mismatch> {
    let mut input = crate::document::parse(input).map_err(|e| Mismatch::NotJson(e.to_string()))?;
    let claimed = crate::document::parse(output)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(output).into()));
    let Some(fields) = input.as_object_mut() else {
        return Err(Mismatch::Structure { path: "$".into() });
    };
    fields.insert("score".into(), claimed);
    serde_json::to_vec(&input).map_err(|e| Mismatch::NotJson(e.to_string()))
}

impl ScoreVerdict {
    /// A judge's output read as a verdict (anything else is no verdict).
    pub fn parse(bytes: &[u8]) -> Option<ScoreVerdict> {
        serde_json::from_slice(bytes).ok()
    }
}

/// Why two outputs do not agree.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Mismatch {
    /// Exact comparison found different bytes.
    #[error("outputs differ (exact comparison)")]
    Bytes,
    /// An output is not a JSON or CBOR document although the rule needs one.
    #[error("output is not a JSON or CBOR document: {0}")]
    NotJson(String),
    /// The documents differ in structure or in a non-numeric value.
    #[error("outputs differ in structure at {path}")]
    Structure {
        /// JSON path of the first difference.
        path: String,
    },
    /// A number differs by more than the tolerance.
    #[error("number at {path} differs by {difference} (tolerance {tolerance})")]
    Number {
        /// JSON path of the number.
        path: String,
        /// Absolute difference.
        difference: f64,
        /// The declared tolerance.
        tolerance: f32,
    },
    /// A judge found a generation inconsistent with the model's own scores.
    #[error("the judge re-scored the generation: {0}")]
    Rescored(String),
    /// A judge's output is not a verdict.
    #[error("the judge answered no verdict")]
    NoVerdict,
    /// A vector's cosine similarity is below the declared minimum.
    #[error("vector at {path} has cosine {cosine} (minimum {minimum})")]
    Cosine {
        /// JSON path of the vector.
        path: String,
        /// Measured cosine similarity.
        cosine: f64,
        /// The declared minimum.
        minimum: f32,
    },
}

/// Two honest results of the same model at the same precision ([`ModelBinding::precision`])
/// agree at least this closely under a cosine rule, on any backend and in any batching. The
/// lowest such cosine measured over the reference corpus is 1 − 4.2·10⁻¹² (ONNX Runtime,
/// OpenVINO and tract; fp32 and int8; one batch, batches of 8, shuffled batches of 32: 15,453
/// comparisons in `host/tests/embeddings.rs`), against 0.9956 between fp32 and int8. So 1 −
/// 10⁻⁵ leaves honest variance a margin of a million (room for other CPUs' kernels) while an
/// int8 result passed off as fp32, or noise a cheater keeps above the declared 0.99, is
/// refused.
pub const SAME_PRECISION_MIN_COSINE: f32 = 0.99999;

impl Comparison {
    /// The rule for two results whose receipts name `a` and `b` as their models: a cosine rule
    /// is tightened to [`SAME_PRECISION_MIN_COSINE`] when both ran every model at the same
    /// precision; results of different (declared) precisions keep the workload's declared
    /// bound, which is what mixed precisions are measured to reach. Other rules are unchanged.
    pub fn calibrated(self, a: &[ModelBinding], b: &[ModelBinding]) -> Comparison {
        match self {
            Comparison::Cosine(declared) if same_precision(a, b) => {
                Comparison::Cosine(declared.max(SAME_PRECISION_MIN_COSINE))
            }
            rule => rule,
        }
    }

    /// Whether a judge's output says `original` stands. Under [`Comparison::Generation`]
    /// the judge's output is its [`ScoreVerdict`] on `original`; under every other rule it
    /// is the judge's own result, compared with `original`.
    pub fn judge_agrees(&self, original: &[u8], judged: &[u8]) -> Result<(), Mismatch> {
        match self {
            Comparison::Generation(_) => match ScoreVerdict::parse(judged) {
                Some(v) if v.verdict == ScoreOutcome::Consistent => Ok(()),
                Some(v) => Err(Mismatch::Rescored(v.reason)),
                None => Err(Mismatch::NoVerdict),
            },
            _ => self.compare(original, judged),
        }
    }

    /// Whether two judges' outputs agree: the same verdict under
    /// [`Comparison::Generation`], the same result (by the rule) otherwise.
    pub fn judges_agree(&self, a: &[u8], b: &[u8]) -> Result<(), Mismatch> {
        match self {
            Comparison::Generation(_) => match (ScoreVerdict::parse(a), ScoreVerdict::parse(b)) {
                (Some(x), Some(y)) if x.verdict == y.verdict => Ok(()),
                (Some(_), Some(y)) => Err(Mismatch::Rescored(y.reason)),
                _ => Err(Mismatch::NoVerdict),
            },
            _ => self.compare(a, b),
        }
    }

    /// Compare two outputs; `Ok(())` when they agree under this rule.
    pub fn compare(&self, a: &[u8], b: &[u8]) -> Result<(), Mismatch> {
        match self {
            Comparison::Exact => (a == b).then_some(()).ok_or(Mismatch::Bytes),
            Comparison::Generation(_) => {
                let tokens = |bytes: &[u8]| {
                    crate::document::parse(bytes)
                        .map(|doc| doc["tokens"].clone())
                        .map_err(|e| Mismatch::NotJson(e.to_string()))
                };
                let (x, y) = (tokens(a)?, tokens(b)?);
                (x.is_array() && x == y)
                    .then_some(())
                    .ok_or(Mismatch::Structure {
                        path: "$.tokens".into(),
                    })
            }
            Comparison::FloatTolerance(_) | Comparison::Cosine(_) => {
                let parse = |bytes: &[u8]| {
                    crate::document::parse(bytes).map_err(|e| Mismatch::NotJson(e.to_string()))
                };
                self.values(&parse(a)?, &parse(b)?, &mut String::from("$"))
            }
        }
    }

    fn values(&self, a: &Value, b: &Value, path: &mut String) -> Result<(), Mismatch> {
        let structure = |path: &String| Mismatch::Structure { path: path.clone() };
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => {
                let (x, y) = (
                    x.as_f64().unwrap_or(f64::NAN),
                    y.as_f64().unwrap_or(f64::NAN),
                );
                let tolerance = match self {
                    Comparison::FloatTolerance(t) => *t,
                    _ => 0.0,
                };
                let difference = (x - y).abs();
                if difference <= f64::from(tolerance) {
                    Ok(())
                } else {
                    Err(Mismatch::Number {
                        path: path.clone(),
                        difference,
                        tolerance,
                    })
                }
            }
            (Value::Array(xs), Value::Array(ys)) => {
                if xs.len() != ys.len() {
                    return Err(structure(path));
                }
                if let (Comparison::Cosine(minimum), Some(xv), Some(yv)) =
                    (self, numbers(xs), numbers(ys))
                {
                    let cosine = cosine(&xv, &yv);
                    return if cosine >= f64::from(*minimum) {
                        Ok(())
                    } else {
                        Err(Mismatch::Cosine {
                            path: path.clone(),
                            cosine,
                            minimum: *minimum,
                        })
                    };
                }
                for (i, (x, y)) in xs.iter().zip(ys).enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    self.values(x, y, path)?;
                    path.truncate(len);
                }
                Ok(())
            }
            (Value::Object(xs), Value::Object(ys)) => {
                if xs.len() != ys.len() {
                    return Err(structure(path));
                }
                for (key, x) in xs {
                    let y = ys.get(key).ok_or_else(|| structure(path))?;
                    let len = path.len();
                    path.push('.');
                    path.push_str(key);
                    self.values(x, y, path)?;
                    path.truncate(len);
                }
                Ok(())
            }
            (x, y) if x == y => Ok(()),
            _ => Err(structure(path)),
        }
    }
}

/// Whether `a` and `b` bind the same model names, each at one known precision on both sides.
fn same_precision(a: &[ModelBinding], b: &[ModelBinding]) -> bool {
    !a.is_empty()
        && a.len() == b.len()
        && a.iter().all(|x| {
            x.precision().is_some()
                && b.iter()
                    .any(|y| y.name == x.name && y.precision() == x.precision())
        })
}

/// The array as numbers, if it is a non-empty array of numbers only.
fn numbers(values: &[Value]) -> Option<Vec<f64>> {
    if values.is_empty() {
        return None;
    }
    values.iter().map(Value::as_f64).collect()
}

/// Cosine similarity; two zero vectors are identical (1.0), one zero vector is orthogonal.
fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    match (na == 0.0, nb == 0.0) {
        (true, true) => 1.0,
        (true, false) | (false, true) => 0.0,
        _ => dot / (na * nb),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_compares_bytes() {
        assert_eq!(Comparison::Exact.compare(b"abc", b"abc"), Ok(()));
        assert_eq!(
            Comparison::Exact.compare(b"abc", b"abd"),
            Err(Mismatch::Bytes)
        );
    }

    #[test]
    fn the_same_precision_is_held_to_honest_variance() {
        let binding = |name: &str, variant: &str| ModelBinding {
            name: name.into(),
            hash: crate::Blake3Hash::of(variant.as_bytes()),
            variant: variant.into(),
        };
        let declared = Comparison::Cosine(0.99);
        let tight = Comparison::Cosine(SAME_PRECISION_MIN_COSINE);
        let fp32 = [binding("m", "fp32")];
        let fp32_ort = [binding("m", "fp32-ort")];
        let int8 = [binding("m", "int8")];
        let unknown = [binding("m", "")];
        assert_eq!(declared.calibrated(&fp32, &fp32_ort), tight);
        assert_eq!(declared.calibrated(&int8, &int8), tight);
        assert_eq!(declared.calibrated(&fp32, &int8), declared);
        assert_eq!(declared.calibrated(&fp32, &unknown), declared);
        assert_eq!(declared.calibrated(&unknown, &unknown), declared);
        assert_eq!(declared.calibrated(&[], &[]), declared);
        assert_eq!(
            declared.calibrated(&fp32, &[binding("other", "fp32")]),
            declared
        );
        // A declared bound tighter than the calibrated one stays.
        let strict = Comparison::Cosine(0.999999);
        assert_eq!(strict.calibrated(&fp32, &fp32), strict);
        // Other rules are what they were.
        assert_eq!(
            Comparison::Exact.calibrated(&fp32, &fp32),
            Comparison::Exact
        );
        assert_eq!(
            Comparison::FloatTolerance(0.1).calibrated(&fp32, &fp32),
            Comparison::FloatTolerance(0.1)
        );
    }

    #[test]
    fn cosine_accepts_backend_noise_and_rejects_wrong_vectors() {
        let rule = Comparison::Cosine(0.99);
        let a = br#"{"embeddings":[[0.6,0.8,0.0]],"tokens":3}"#;
        let noisy = br#"{"embeddings":[[0.6007,0.7993,0.001]],"tokens":3}"#;
        let wrong = br#"{"embeddings":[[0.8,-0.6,0.0]],"tokens":3}"#;
        let zero = br#"{"embeddings":[[0,0,0]],"tokens":3}"#;
        assert_eq!(rule.compare(a, noisy), Ok(()));
        assert!(matches!(
            rule.compare(a, wrong),
            Err(Mismatch::Cosine { .. })
        ));
        assert!(matches!(
            rule.compare(a, zero),
            Err(Mismatch::Cosine { .. })
        ));
        let other_tokens = br#"{"embeddings":[[0.6,0.8,0.0]],"tokens":4}"#;
        assert!(matches!(
            rule.compare(a, other_tokens),
            Err(Mismatch::Number { .. })
        ));
        let fewer = br#"{"embeddings":[],"tokens":3}"#;
        assert!(matches!(
            rule.compare(a, fewer),
            Err(Mismatch::Structure { .. })
        ));
        assert!(matches!(
            rule.compare(a, b"not json"),
            Err(Mismatch::NotJson(_))
        ));
    }

    #[test]
    fn cbor_outputs_compare_like_json() {
        #[derive(serde::Serialize)]
        struct Out {
            embeddings: Vec<Vec<f32>>,
        }
        let cbor = |v: Vec<f32>| {
            crate::cbor::to_vec(&Out {
                embeddings: vec![v],
            })
            .unwrap()
        };
        let rule = Comparison::Cosine(0.99);
        assert_eq!(
            rule.compare(&cbor(vec![0.6, 0.8]), &cbor(vec![0.601, 0.799])),
            Ok(())
        );
        assert_eq!(
            rule.compare(&cbor(vec![0.6, 0.8]), br#"{"embeddings":[[0.6,0.8]]}"#),
            Ok(())
        );
        assert!(
            rule.compare(&cbor(vec![0.6, 0.8]), &cbor(vec![0.8, -0.6]))
                .is_err()
        );
    }

    #[test]
    fn float_tolerance_is_element_wise() {
        let rule = Comparison::FloatTolerance(0.01);
        assert_eq!(rule.compare(b"[1.0, 2.0]", b"[1.005, 1.995]"), Ok(()));
        let err = rule.compare(b"[1.0, 2.0]", b"[1.0, 2.1]").unwrap_err();
        assert!(
            matches!(err, Mismatch::Number { ref path, .. } if path == "$[1]"),
            "{err}"
        );
    }
}
