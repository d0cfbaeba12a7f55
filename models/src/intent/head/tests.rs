use super::optimise::{fit_temperature, lbfgs, Problem};
use super::whiten::{lower_mul, packed_len, within_class_whitener};
use super::*;
use crate::rng::Rng;

fn dense(v: &[f32]) -> Features {
    Features {
        dense: v.to_vec(),
        sparse: vec![],
    }
}

#[test]
fn head_learns_a_separable_problem() {
    let x = vec![
        dense(&[1.0, 0.0]),
        dense(&[0.9, 0.1]),
        dense(&[0.0, 1.0]),
        dense(&[0.1, 0.9]),
    ];
    let y = vec![0, 0, 1, 1];
    let cfg = HeadConfig {
        ngrams: None,
        ..HeadConfig::default()
    };
    let h = LinearHead::train(
        &x,
        &y,
        vec!["a".into(), "b".into()],
        Featurizer::default(),
        &cfg,
        &mut |_, _| {},
    );
    assert!(h.predict(&dense(&[1.0, 0.0]))[0] > 0.9);
    assert!(h.predict(&dense(&[0.0, 1.0]))[1] > 0.9);
}

#[test]
fn embeddings_are_centred_on_the_training_mean_and_rescaled() {
    // Two intents whose vectors share one large common direction: raw cosines are 0.98,
    // centred ones -1.
    let e = |s: f32| vec![1.0, 0.2 * s];
    let texts = ["a", "b", "c", "d"];
    let cfg = HeadConfig {
        ngrams: None,
        ..HeadConfig::default()
    };
    let fit = |c: &HeadConfig| {
        let rows = vec![e(1.0), e(1.0), e(-1.0), e(-1.0)];
        LinearHead::fit_features(&texts, rows, &[0, 0, 1, 1], None, c)
    };
    let (f, x) = fit(&cfg);
    assert!((f.center[0] - 1.0).abs() < 1e-6 && f.center[1].abs() < 1e-6);
    assert!((x[0].dense[0]).abs() < 1e-6 && (x[0].dense[1] - 1.0).abs() < 1e-6);
    assert!((x[2].dense[1] + 1.0).abs() < 1e-6);
    let h = LinearHead::train(
        &x,
        &[0, 0, 1, 1],
        vec!["p".into(), "q".into()],
        f,
        &cfg,
        &mut |_, _| {},
    );
    // A new message is centred with the stored mean before the head reads it.
    let g = h.features(&["e"], vec![vec![1.0, 0.1]]);
    assert!((g[0].dense[1] - 1.0).abs() < 1e-6, "{:?}", g[0].dense);
    assert!(h.predict(&g[0])[0] > 0.9);
    // Off: embeddings are read as they are.
    let raw = HeadConfig {
        center: false,
        ..cfg
    };
    let (f, x) = fit(&raw);
    assert!(f.center.is_empty());
    assert_eq!(x[0].dense, e(1.0));
}

#[test]
fn sparse_features_alone_separate_words() {
    let texts = [
        "card arrival",
        "when will my card arrive",
        "exchange rate",
        "what rate do you use",
    ];
    let cfg = HeadConfig::default();
    let (ng, x) = LinearHead::fit_features(&texts, vec![vec![]; 4], &[0, 0, 1, 1], None, &cfg);
    let h = LinearHead::train(
        &x,
        &[0, 0, 1, 1],
        vec!["card".into(), "rate".into()],
        ng,
        &cfg,
        &mut |_, _| {},
    );
    let f = h.features(&["card arriving?"], vec![vec![]]);
    assert!(h.predict(&f[0])[0] > 0.7, "{:?}", h.predict(&f[0]));
}

#[test]
fn lbfgs_finds_the_minimum_of_a_badly_scaled_quadratic() {
    // f(x) = Σ a_i (x_i - c_i)², curvatures spanning three orders of magnitude.
    let a: Vec<f64> = (0..50).map(|i| 10f64.powf(i as f64 / 16.0)).collect();
    let c: Vec<f64> = (0..50).map(|i| (i as f64 * 0.7).sin()).collect();
    let mut f = |x: &[f32], g: &mut [f32]| {
        let mut v = 0.0;
        for i in 0..x.len() {
            let dx = f64::from(x[i]) - c[i];
            v += a[i] * dx * dx;
            g[i] = (2.0 * a[i] * dx) as f32;
        }
        v
    };
    let mut x = vec![0f32; 50];
    let mut calls = 0;
    let steps = lbfgs(&mut f, &mut x, 500, 1e-3, &mut |_| calls += 1);
    assert!(steps < 500, "converged early: {steps}");
    assert_eq!(calls, steps);
    for i in 0..50 {
        assert!((f64::from(x[i]) - c[i]).abs() < 1e-3, "x[{i}] = {}", x[i]);
    }
}

#[test]
fn the_objectives_gradient_matches_finite_differences() {
    let mut rng = Rng::new(3);
    let mut unit = || (rng.below(2001) as f32 - 1000.0) / 1000.0;
    let x: Vec<Features> = (0..7)
        .map(|i| Features {
            dense: (0..5).map(|_| unit()).collect(),
            sparse: vec![(i % 3, 0.5 + unit().abs()), (3 + i % 2, unit())],
        })
        .collect();
    let y = [0, 1, 2, 0, 1, 2, 2];
    let p = Problem {
        x: &x,
        y: &y,
        k: 3,
        d: 5,
        vocab: 5,
        penalty: 0.01,
    };
    let theta: Vec<f32> = (0..p.len()).map(|_| unit() * 0.5).collect();
    let mut g = vec![0f32; p.len()];
    p.loss_grad(&theta, &mut g);
    let mut scratch = vec![0f32; p.len()];
    for i in 0..p.len() {
        let h = 1e-2f32;
        let (mut up, mut down) = (theta.clone(), theta.clone());
        up[i] += h;
        down[i] -= h;
        let numeric = (p.loss_grad(&up, &mut scratch) - p.loss_grad(&down, &mut scratch))
            / f64::from(2.0 * h);
        assert!(
            (numeric - f64::from(g[i])).abs() < 1e-3,
            "component {i}: analytic {} numeric {numeric}",
            g[i]
        );
    }
}

#[test]
fn training_stops_at_the_tolerance_and_leaves_the_bias_unpenalised() {
    // Two classes, the first three times as common, and features that say nothing: the
    // optimum puts every weight at zero and the bias at the log prior odds.
    let x: Vec<Features> = (0..8).map(|_| dense(&[1.0, 1.0])).collect();
    let y = [0, 0, 0, 1, 0, 0, 0, 1];
    let h = LinearHead::train(
        &x,
        &y,
        vec!["a".into(), "b".into()],
        Featurizer::default(),
        &HeadConfig {
            l2: 1.0,
            ngrams: None,
            ..HeadConfig::default()
        },
        &mut |_, _| {},
    );
    assert!(h.weights.iter().all(|w| w.abs() < 1e-3), "{:?}", h.weights);
    let odds = h.bias[0] - h.bias[1];
    assert!((odds - 3f32.ln()).abs() < 1e-3, "{odds}");
}

#[test]
fn temperature_fit_softens_overconfident_logits() {
    // Confident logits (10 vs 0) but right only half the time: T must grow well above 1.
    let logits = vec![
        vec![10.0, 0.0],
        vec![10.0, 0.0],
        vec![0.0, 10.0],
        vec![0.0, 10.0],
    ];
    let t = fit_temperature(&logits, &[0, 1, 1, 0]);
    assert!(t > 5.0, "{t}");
    // Always right: a sharper temperature is no worse.
    let t = fit_temperature(&logits, &[0, 0, 1, 1]);
    assert!(t < 1.0, "{t}");
}

#[test]
fn within_class_whitening_undoes_the_shrunk_scatter() {
    // Three classes in 4 dimensions; their rows vary most along the first axis.
    let mut rng = Rng::new(3);
    let mut r = || (rng.next_u64() % 1000) as f32 / 1000.0 - 0.5;
    let mut rows = vec![];
    let mut y = vec![];
    for c in 0..3 {
        for _ in 0..6 {
            rows.push(vec![4.0 * r() + c as f32, r(), 0.5 * r(), r() - c as f32]);
            y.push(c);
        }
    }
    // Out-of-scope rows far from everything and each other: left out when skipped.
    rows.push(vec![9.0, -9.0, 9.0, -9.0]);
    rows.push(vec![-9.0, 9.0, -9.0, 9.0]);
    y.extend([3, 3]);
    let refs: Vec<&[f32]> = rows.iter().map(Vec::as_slice).collect();
    let shrink = 0.5;
    let t = within_class_whitener(&refs, &y, Some(3), shrink);
    assert_eq!(t.len(), 10);
    // The reference scatter, naively in f64, without the skipped row.
    let d = 4;
    let mut m = vec![vec![0f64; d]; d];
    for c in 0..3 {
        let idx: Vec<usize> = (0..y.len()).filter(|&i| y[i] == c).collect();
        let mean: Vec<f64> = (0..d)
            .map(|a| idx.iter().map(|&i| f64::from(rows[i][a])).sum::<f64>() / 6.0)
            .collect();
        for &i in &idx {
            for a in 0..d {
                for b in 0..d {
                    m[a][b] +=
                        (f64::from(rows[i][a]) - mean[a]) * (f64::from(rows[i][b]) - mean[b]);
                }
            }
        }
    }
    let tr: f64 = (0..d).map(|a| m[a][a]).sum();
    for (a, row) in m.iter_mut().enumerate() {
        for (b, v) in row.iter_mut().enumerate() {
            *v = *v * d as f64 / tr + if a == b { f64::from(shrink) } else { 0.0 };
        }
    }
    // T·M·Tᵀ = I, T lower-triangular.
    let at = |a: usize, b: usize| {
        if b <= a {
            f64::from(t[packed_len(a) + b])
        } else {
            0.0
        }
    };
    for a in 0..d {
        for b in 0..d {
            let v: f64 = (0..d)
                .flat_map(|i| (0..d).map(move |j| (i, j)))
                .map(|(i, j)| at(a, i) * m[i][j] * at(b, j))
                .sum();
            let want = if a == b { 1.0 } else { 0.0 };
            assert!((v - want).abs() < 1e-4, "({a},{b}) {v}");
        }
    }
    // Including the far rows changes the transform.
    assert_ne!(within_class_whitener(&refs, &y, None, shrink), t);
    // Nothing to whiten: no dense part, off, or rows equal to their class means.
    assert!(within_class_whitener(&[&[], &[]], &[0, 1], None, shrink).is_empty());
    assert!(within_class_whitener(&refs, &y, Some(3), 0.0).is_empty());
    let same: Vec<&[f32]> = vec![&[1.0, 0.0], &[1.0, 0.0], &[0.0, 1.0]];
    assert!(within_class_whitener(&same, &[0, 0, 1], None, shrink).is_empty());
    // A unit vector along the first axis comes out as T's first column.
    assert_eq!(
        lower_mul(&t, &[1.0, 0.0, 0.0, 0.0]),
        [t[0], t[1], t[3], t[6]]
    );
}
