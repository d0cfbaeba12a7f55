//! Several sentence encoders read side by side: a text's vector is its unit vectors from each
//! encoder, concatenated and scaled by `1/√n` so the whole stays unit-length (cosine = mean of
//! the encoders' cosines). Two encoders trained differently make different mistakes; a linear
//! head over both reads more than either alone.

use std::sync::Arc;

use crate::{Embedder, Error, Result};

pub struct ConcatEmbedder {
    parts: Vec<Arc<dyn Embedder>>,
    dim: usize,
    name: String,
}

impl ConcatEmbedder {
    pub fn new(parts: Vec<Arc<dyn Embedder>>) -> Result<Self> {
        if parts.is_empty() {
            return Err(Error::Other(
                "a concatenated encoder needs at least one part".into(),
            ));
        }
        let dim = parts.iter().map(|p| p.dim()).sum();
        let name = parts
            .iter()
            .map(|p| p.name().to_string())
            .collect::<Vec<_>>()
            .join("+");
        Ok(Self { parts, dim, name })
    }
}

impl Embedder for ConcatEmbedder {
    fn dim(&self) -> usize {
        self.dim
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let scale = 1.0 / (self.parts.len() as f32).sqrt();
        let mut out: Vec<Vec<f32>> = texts.iter().map(|_| Vec::with_capacity(self.dim)).collect();
        for part in &self.parts {
            let vs = part.embed(texts)?;
            if vs.len() != texts.len() {
                return Err(Error::Other(format!(
                    "encoder {} returned {} vectors for {} texts",
                    part.name(),
                    vs.len(),
                    texts.len()
                )));
            }
            for (o, v) in out.iter_mut().zip(vs) {
                o.extend(v.into_iter().map(|x| x * scale));
            }
        }
        Ok(out)
    }

    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::HashEmbedder;

    struct Short;
    impl Embedder for Short {
        fn dim(&self) -> usize {
            2
        }
        fn embed(&self, _texts: &[&str]) -> Result<Vec<Vec<f32>>> {
            Ok(vec![vec![1.0, 0.0]])
        }
        fn name(&self) -> &str {
            "short"
        }
    }

    #[test]
    fn parts_side_by_side_stay_unit_length_and_keep_each_cosine() {
        let (a, b) = (
            Arc::new(HashEmbedder::new(16)),
            Arc::new(HashEmbedder::new(24)),
        );
        let both = ConcatEmbedder::new(vec![a.clone(), b.clone()]).unwrap();
        assert_eq!(both.dim(), 40);
        assert_eq!(both.name(), format!("{}+{}", a.name(), b.name()));
        let texts = ["how much is a seat", "are you SOC 2 compliant"];
        let v = both.embed(&texts).unwrap();
        let (va, vb) = (a.embed(&texts).unwrap(), b.embed(&texts).unwrap());
        let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>();
        for (i, row) in v.iter().enumerate() {
            assert_eq!(row.len(), 40);
            assert!((dot(row, row) - 1.0).abs() < 1e-5);
            // The first part's vector, scaled, then the second's.
            let s = 1.0 / 2f32.sqrt();
            assert!((row[3] - va[i][3] * s).abs() < 1e-6);
            assert!((row[16 + 5] - vb[i][5] * s).abs() < 1e-6);
        }
        // The cosine of two texts is the mean of the parts' cosines.
        let mean = (dot(&va[0], &va[1]) + dot(&vb[0], &vb[1])) / 2.0;
        assert!((dot(&v[0], &v[1]) - mean).abs() < 1e-5);
        assert!(ConcatEmbedder::new(vec![]).is_err());
        let bad = ConcatEmbedder::new(vec![a, Arc::new(Short)]).unwrap();
        let err = bad.embed(&texts).unwrap_err().to_string();
        assert!(
            err.contains("short") && err.contains("1 vectors for 2 texts"),
            "{err}"
        );
    }
}
