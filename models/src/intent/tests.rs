use super::head::{HeadConfig, LinearHead};
use super::nearest::Near;
use super::train::{calibrate_threshold, top2};
use super::*;
use crate::Embedder;

#[test]
fn clauses_split_questions_and_drop_conjunctions() {
    let t = "How much does each seat cost? Are you SOC II compliant? And who would be our rep?";
    let got: Vec<&str> = clauses(t).into_iter().map(|(s, e)| &t[s..e]).collect();
    assert_eq!(
        got,
        [
            "How much does each seat cost?",
            "Are you SOC II compliant?",
            "who would be our rep?"
        ]
    );
}

#[test]
fn clauses_never_panic_and_stay_inside_the_text() {
    // Every string of up to 4 pieces from an alphabet of boundaries, blanks, conjunctions
    // and multi-byte characters (found by the injection corpora: "?  \n" crossed).
    let pieces = [
        "?", "!", ".", ";", "\n", " ", "  \n", "and ", "Also, ", "é", "中", "ok", "\u{200b}",
    ];
    let n = pieces.len();
    for a in 0..n {
        for b in 0..n {
            for c in 0..n {
                for d in 0..n {
                    let t = [pieces[a], pieces[b], pieces[c], pieces[d]].concat();
                    for (s, e) in clauses(&t) {
                        assert!(s < e && e <= t.len(), "{t:?}: {s}..{e}");
                        assert!(t.is_char_boundary(s) && t.is_char_boundary(e), "{t:?}");
                    }
                }
            }
        }
    }
}

#[test]
fn clauses_keep_decimal_amounts_whole() {
    let t = "Is it $9.50 a month";
    assert_eq!(clauses(t), vec![(0, t.len())]);
}

#[test]
fn bad_intent_files_name_the_field() {
    let err = IntentSet::from_yaml(
        "intents:\n  - name: Pricing!\n    examples: [a, b]\n  - name: x\n    examples: [a, b]\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("intents[0].name"), "{err}");
    let err = IntentSet::from_yaml(
        "intents:\n  - name: a\n    examples: [a]\n  - name: b\n    examples: [a, b]\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("intents[0] (a).examples"), "{err}");
    let err = IntentSet::from_yaml("intents:\n  - name: a\n    exmples: [a]\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 3"), "{err}");
}

#[test]
fn jsonl_sets_parse_rows_and_declarations() {
    let text = "{\"intent\": \"pricing\", \"flags\": [\"knowledge\"], \"description\": \"Prices\"}\n{\"text\": \"how much\", \"intent\": \"pricing\"}\n{\"text\": \"cost?\", \"intent\": \"pricing\"}\n\n{\"text\": \"hi\", \"intent\": \"greeting\"}\n{\"text\": \"hello\", \"intent\": \"greeting\"}\n";
    let set = IntentSet::from_jsonl(text).unwrap();
    assert_eq!(set.intents.len(), 2);
    assert_eq!(set.intents[0].flags, vec![IntentFlag::Knowledge]);
    assert_eq!(set.intents[0].examples, vec!["how much", "cost?"]);
    let back = IntentSet::from_yaml(&set.to_yaml()).unwrap();
    assert_eq!(back.intents[1].examples, vec!["hi", "hello"]);
    let err = IntentSet::from_jsonl("{\"text\": \"a\", \"intent\": \"x\"}\n{\"text\": \"a\"}\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 2") && err.contains("`intent`"), "{err}");
    let err = IntentSet::from_jsonl(
        "{\"text\": \"a\", \"intent\": \"x\"}\n{\"txt\": \"a\", \"intent\": \"x\"}\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("line 2") && err.contains("txt"), "{err}");
}

#[test]
fn split_is_stratified_and_seeded() {
    let y: Vec<usize> = (0..40).map(|i| i % 4).collect();
    let (tr, held) = stratified_split(&y, 4, 0.2, 1);
    assert_eq!(held.len(), 8);
    assert_eq!(tr.len() + held.len(), 40);
    for c in 0..4 {
        assert_eq!(held.iter().filter(|&&i| y[i] == c).count(), 2);
    }
    assert_eq!(stratified_split(&y, 4, 0.2, 1), (tr, held));
}

#[test]
fn intent_names_read_as_words_train_and_are_never_held_out() {
    assert_eq!(name_as_words("card_arrival"), "card arrival");
    assert_eq!(name_as_words("BookDemo"), "book demo");
    assert_eq!(name_as_words("talk-to_human "), "talk to human");
    assert_eq!(name_as_words("soc2"), "soc2");
    let set = IntentSet::from_yaml(
        "intents:\n  - name: book_demo\n    examples: [can I see a demo, show me the product, set up a call, a walkthrough please, demo next week]\n  - name: out_of_scope\n    examples: [weather, football, a poem, recipes, jokes]\n",
    )
    .unwrap();
    let data = TrainingData::from_set(&set, true);
    assert_eq!(data.examples, 10);
    assert_eq!(data.text_refs()[10..], ["book demo"]);
    assert_eq!(data.y[10], 0);
    assert_eq!(TrainingData::from_set(&set, false).texts.len(), 10);
    let emb = crate::fake::HashEmbedder::new(64);
    let x = emb.embed(&data.text_refs()).unwrap();
    let cfg = ClassifierConfig {
        holdout: 0.4,
        ..Default::default()
    };
    let t = TrainedHead::train(&data, x, "hash", &cfg, &mut |_| {});
    // 40 % of each intent's 5 examples; the name row is not among them.
    assert_eq!(t.report.holdout_examples, 4);
    assert_eq!(t.report.examples, 10);
}

#[test]
fn only_intents_with_few_examples_are_whitened() {
    let set = IntentSet::from_yaml(
        "intents:\n  - name: book_demo\n    examples: [can I see a demo, show me the product, set up a call, a walkthrough please, demo next week]\n  - name: pricing\n    examples: [how much is it, price per seat, any discounts, annual plan cost, what does it cost]\n  - name: out_of_scope\n    examples: [weather, football, a poem, recipes, jokes, tell me a story, who won, sing]\n",
    )
    .unwrap();
    let data = TrainingData::from_set(&set, true);
    let emb = crate::fake::HashEmbedder::new(16);
    let train = |below: usize| {
        let cfg = ClassifierConfig {
            whiten_below: below,
            ..Default::default()
        };
        let x = emb.embed(&data.text_refs()).unwrap();
        TrainedHead::train(&data, x, "hash", &cfg, &mut |_| {})
    };
    // 5 examples per in-scope intent (the 8 out-of-scope ones do not count).
    let few = train(6);
    assert!(few.report.whitened);
    assert_eq!(few.head.featurizer.whiten.len(), 16 * 17 / 2);
    let many = train(5);
    assert!(!many.report.whitened);
    assert!(many.head.featurizer.whiten.is_empty());
    // What is served reads a message through the transform it was trained with.
    let probe = emb.embed(&["price per seat"]).unwrap();
    let f = few.head.features(&["price per seat"], probe);
    assert!((f[0].dense.iter().map(|v| v * v).sum::<f32>() - 1.0).abs() < 1e-4);
    assert_eq!(
        few.head.labels[top2(&few.head.predict(&f[0])).0 .0],
        "pricing"
    );
}

#[test]
fn the_penalty_is_chosen_on_the_held_out_share_only_when_it_is_large_enough() {
    // Three intents of 60, 20 and 20 examples near three axes: a heavy penalty leaves the
    // weights near zero and the unpenalised bias sends every row to the largest intent.
    let sizes = [60usize, 20, 20];
    let (mut texts, mut y, mut x) = (vec![], vec![], vec![]);
    let mut seed = 1u64;
    for (c, &n) in sizes.iter().enumerate() {
        for i in 0..n {
            texts.push(format!("row {c} {i}"));
            y.push(c);
            let mut v = vec![0f32; 8];
            v[c] = 1.0;
            for e in &mut v {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                *e += ((seed >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 0.4;
            }
            x.push(v);
        }
    }
    let labels: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    let data = TrainingData::new(texts.iter().map(String::as_str).collect(), y, labels, false);
    let cfg = |l2: f32, choice: f32, min_rows: usize| ClassifierConfig {
        head: HeadConfig {
            l2,
            ngrams: None,
            center: false,
            ..Default::default()
        },
        holdout: 0.25,
        l2_choices: vec![choice],
        l2_choice_min_rows: min_rows,
        ..Default::default()
    };
    let train = |c: &ClassifierConfig| TrainedHead::train(&data, x.clone(), "test", c, &mut |_| {});
    // 25 held-out rows, 8 per intent on average.
    let chosen = train(&cfg(100.0, 1e-4, 8));
    assert_eq!(chosen.report.holdout_examples, 25);
    assert_eq!(chosen.report.l2, 1e-4);
    assert!(chosen.report.holdout_accuracy > 0.9, "{:?}", chosen.report);
    let kept = train(&cfg(1e-4, 100.0, 8));
    assert_eq!(kept.report.l2, 1e-4);
    assert_eq!(kept.report.holdout_accuracy, chosen.report.holdout_accuracy);
    // Too few held-out rows per intent to choose by: the configured penalty stays.
    let fixed = train(&cfg(100.0, 1e-4, 9));
    assert_eq!(fixed.report.l2, 100.0);
    assert!(fixed.report.holdout_accuracy < 0.7, "{:?}", fixed.report);
    // The final head is trained with the chosen penalty: the trained row of the large
    // intent is classified right either way, the small ones only with the light penalty.
    let probe = |t: &TrainedHead, c: usize| {
        let mut v = vec![0f32; 8];
        v[c] = 1.0;
        let f = t.head.features(&["probe"], vec![v]);
        top2(&t.head.predict(&f[0])).0 .0
    };
    assert_eq!(
        (probe(&chosen, 0), probe(&chosen, 1), probe(&chosen, 2)),
        (0, 1, 2)
    );
    assert_eq!(
        (probe(&fixed, 0), probe(&fixed, 1), probe(&fixed, 2)),
        (0, 0, 0)
    );
}

#[test]
fn threshold_calibration_costs_at_most_the_in_scope_loss() {
    // Labels 0–4, 5 = out_of_scope. 200 in-scope rows (gold 0) with top probabilities
    // 0.200, 0.202, ... 0.598: those at 0.200–0.218 are wrong (top 1), the rest right.
    let row = |top: usize, p: f32| -> Vec<f32> {
        let mut v = vec![(1.0 - p) / 5.0; 6];
        v[top] = p;
        v
    };
    let probs: Vec<Vec<f32>> = (0..200)
        .map(|i| row(usize::from(i < 10), 0.2 + i as f32 * 0.002))
        .collect();
    let gold = vec![0; 200];
    let cfg = ClassifierConfig::default();
    // Defaults: 3 % of 200 rows may be rejected (the threshold is the 7th score, 0.212);
    // 0.5 % = 1 right row may go (the 2nd right score, 0.222). The lower, 0.212, holds:
    // six rows go, all wrong.
    let t = calibrate_threshold(&probs, &gold, Some(5), &cfg);
    assert!((t - 0.212).abs() < 1e-6, "{t}");
    // With a 20 % reject cap (up to the 41st score, 0.280), the accuracy cap decides:
    // 1 % = 2 right rows (0.220, 0.222) go, the threshold is the third, 0.224, and the
    // 10 wrong rows below it go too.
    let loose = ClassifierConfig {
        in_scope_reject_rate: 0.2,
        in_scope_loss: 0.01,
        ..cfg.clone()
    };
    let t = calibrate_threshold(&probs, &gold, Some(5), &loose);
    assert!((t - 0.224).abs() < 1e-6, "{t}");
    // Held-out out_of_scope rows do not move it.
    let mut with_oos = probs.clone();
    with_oos.extend((0..30).map(|_| row(0, 0.5)));
    let mut gold_oos = gold.clone();
    gold_oos.extend([5; 30]);
    assert_eq!(
        calibrate_threshold(&with_oos, &gold_oos, Some(5), &loose),
        t
    );
    // 5 %: 10 right rows go, up to 0.240.
    let looser = ClassifierConfig {
        in_scope_loss: 0.05,
        ..loose.clone()
    };
    let t = calibrate_threshold(&probs, &gold, Some(5), &looser);
    assert!((t - 0.240).abs() < 1e-6, "{t}");
    // Clamped to the bounds: all right rows above the ceiling, or below the floor.
    let high: Vec<Vec<f32>> = (0..50).map(|i| row(0, 0.9 + i as f32 * 0.001)).collect();
    let t = calibrate_threshold(&high, &[0; 50], Some(5), &cfg);
    assert!((t - 0.6).abs() < 1e-6, "{t} (clamped to the 0.6 ceiling)");
    let low: Vec<Vec<f32>> = (0..50)
        .map(|_| vec![0.02, 0.01, 0.01, 0.0, 0.0, 0.0])
        .collect();
    let t = calibrate_threshold(&low, &[0; 50], Some(5), &cfg);
    assert!((t - 0.05).abs() < 1e-6, "{t} (raised to the 0.05 floor)");
}

#[test]
fn decisions_report_ambiguity_and_out_of_scope() {
    let head = LinearHead {
        labels: vec!["a".into(), "b".into(), OUT_OF_SCOPE.into()],
        dim: 0,
        weights: vec![],
        sparse_weights: vec![],
        bias: vec![0.0; 3],
        temperature: 1.0,
        featurizer: super::head::Featurizer::default(),
    };
    let report = TrainReport {
        version: String::new(),
        examples: 0,
        intents: 3,
        holdout_examples: 0,
        holdout_accuracy: 1.0,
        l2: 1e-5,
        whitened: false,
        temperature: 1.0,
        oos_threshold: 0.3,
        nearest_threshold: -1.0,
        training_ms: 0,
    };
    let t = TrainedHead {
        head,
        threshold: 0.3,
        examples: Default::default(),
        nearest_threshold: -1.0,
        intent_cuts: vec![],
        report,
        config: ClassifierConfig::default(),
    };
    assert_eq!(
        t.decide(&[0.8, 0.15, 0.05], &Near::open()),
        Decision::Intent {
            index: 0,
            confidence: 0.8,
            alternative: None
        }
    );
    assert_eq!(
        t.decide(&[0.5, 0.4, 0.1], &Near::open()),
        Decision::Intent {
            index: 0,
            confidence: 0.5,
            alternative: Some((1, 0.4))
        }
    );
    assert!(matches!(
        t.decide(&[0.25, 0.24, 0.51], &Near::open()),
        Decision::OutOfScope { .. }
    ));
    let mut t = t;
    t.threshold = 0.4;
    assert!(
        matches!(
            t.decide(&[0.38, 0.33, 0.29], &Near::open()),
            Decision::OutOfScope { .. }
        ),
        "below the threshold"
    );

    // The threshold reads the head's own probabilities, not the sharpened ones.
    t.head.temperature = 0.5;
    let z = [0.6f32, 0.2, 0.0];
    let soft = |scale: f32| {
        let mut p: Vec<f32> = z.iter().map(|v| v * scale).collect();
        super::head::softmax_in_place(&mut p);
        p
    };
    let (calibrated, raw) = (soft(2.0), soft(1.0));
    assert!((t.oos_score(&calibrated) - raw[0]).abs() < 1e-5);
    t.threshold = 0.5;
    assert!(
        calibrated[0] > 0.5 && raw[0] < 0.5,
        "{calibrated:?} {raw:?}"
    );
    assert!(matches!(
        t.decide(&calibrated, &Near::open()),
        Decision::OutOfScope { .. }
    ));
    t.head.temperature = 1.0;
    assert_eq!(t.oos_score(&raw), raw[0]);
}

/// A head trained on the YAML intent set `yaml` over the hash embedder of `dim` dimensions.
fn hash_trained(yaml: &str, dim: usize, cfg: &ClassifierConfig) -> TrainedHead {
    let set = IntentSet::from_yaml(yaml).unwrap();
    let data = TrainingData::from_set(&set, true);
    let x = crate::fake::HashEmbedder::new(dim)
        .embed(&data.text_refs())
        .unwrap();
    TrainedHead::train(&data, x, "hash", cfg, &mut |_| {})
}

#[test]
fn the_distance_gate_sends_a_clause_unlike_every_example_out_of_scope_however_sure_the_softmax() {
    let yaml = "intents:\n  - name: book_demo\n    examples: [can I see a demo, show me a demo please, set up a demo call, a demo walkthrough please, demo next week]\n  - name: pricing\n    examples: [how much is the price, price per seat, the price with discounts, annual plan price, what price is it]\n";
    let emb = crate::fake::HashEmbedder::new(64);
    let t = hash_trained(yaml, 64, &ClassifierConfig::default());
    assert!(
        t.nearest_threshold > -1.0,
        "the examples' readings in other folds calibrate a cut"
    );
    // Every example but the names (5 + 5 + 2 names) is kept.
    assert_eq!(t.examples.len(), 12);
    let read = |text: &str| {
        let f = t.head.features(&[text], emb.embed(&[text]).unwrap());
        t.nearest(&f[0])
    };
    assert!(
        t.intent_cuts.len() == 2 && t.intent_cuts.iter().all(|&c| c > -1.0),
        "{:?}",
        t.intent_cuts
    );
    let sure = [0.03, 0.97];
    let near = read("price per seat");
    assert!(near.any > 0.99, "an example is its own nearest: {near:?}");
    assert!(matches!(
        t.decide(&sure, &near),
        Decision::Intent { index: 1, .. }
    ));
    // Close to the demo examples, far from every pricing one: not served as pricing, however
    // sure the softmax.
    let demo = read("can I see a demo");
    assert!(
        demo.any > 0.99 && demo.to_intent(1) < t.intent_cuts[1],
        "{demo:?}"
    );
    assert!(matches!(
        t.decide(&sure, &demo),
        Decision::OutOfScope { .. }
    ));
    assert!(matches!(
        t.decide(&[0.97, 0.03], &demo),
        Decision::Intent { index: 0, .. }
    ));
    let far = read("zebra yodel quark");
    assert!(
        far.any < t.nearest_threshold,
        "{far:?} vs {}",
        t.nearest_threshold
    );
    match t.decide(&sure, &far) {
        Decision::OutOfScope { confidence } => {
            assert!(confidence >= 1.0 - NEAREST_REJECT_RATE, "{confidence}")
        }
        d => panic!("{d:?}"),
    }
    // Turned off, nothing is gated.
    let cfg = ClassifierConfig {
        nearest_reject_rate: 0.0,
        ..Default::default()
    };
    let off = hash_trained(yaml, 64, &cfg);
    assert_eq!(off.nearest_threshold, -1.0);
    assert!(off.examples.is_empty() && off.intent_cuts.is_empty());
    let f = off.head.features(
        &["zebra yodel quark"],
        emb.embed(&["zebra yodel quark"]).unwrap(),
    );
    assert_eq!(off.nearest(&f[0]), Near::open());
}

#[test]
fn a_stored_classifier_reads_back_the_same_and_a_damaged_or_old_file_is_refused() {
    let t = hash_trained(
        "intents:\n  - name: book_demo\n    examples: [can I see a demo, show me the product, set up a call, a walkthrough please, demo next week]\n  - name: pricing\n    examples: [how much is it, price per seat, any discounts, annual plan cost, what does it cost]\n  - name: out_of_scope\n    examples: [weather, football, a poem, recipes, jokes]\n",
        16,
        &ClassifierConfig::default(),
    );
    let emb = crate::fake::HashEmbedder::new(16);
    assert!(!t.head.featurizer.whiten.is_empty() && t.head.featurizer.ngrams.is_some());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("intent-model.bin");
    t.save(&path).unwrap();
    // A safetensors file any reader can open: 8-byte header length, then JSON naming the arrays.
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    assert_eq!(header["weights"]["shape"], serde_json::json!([3, 16]));
    assert_eq!(header["__metadata__"]["format"], "closer-intent-head/1");
    let back = TrainedHead::load(&path).unwrap();
    assert_eq!(back.head.weights, t.head.weights);
    assert_eq!(back.head.sparse_weights, t.head.sparse_weights);
    assert_eq!(back.head.featurizer.whiten, t.head.featurizer.whiten);
    assert_eq!(back.head.featurizer.center, t.head.featurizer.center);
    assert_eq!(back.threshold, t.threshold);
    assert!(!t.examples.is_empty() && t.nearest_threshold > -1.0);
    assert_eq!(back.examples, t.examples);
    assert_eq!(back.nearest_threshold, t.nearest_threshold);
    assert_eq!(back.intent_cuts, t.intent_cuts);
    assert_eq!(back.report, t.report);
    assert_eq!(back.config, t.config);
    let texts = ["price per seat?"];
    let e = emb.embed(&texts).unwrap();
    let (a, b) = (
        t.head.features(&texts, e.clone()),
        back.head.features(&texts, e),
    );
    assert_eq!(t.head.predict(&a[0]), back.head.predict(&b[0]));
    // One flipped bit in the arrays is caught by the checksum.
    let mut bad = bytes.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    std::fs::write(&path, &bad).unwrap();
    let err = TrainedHead::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("checksum") && err.contains("intent-model.bin"),
        "{err}"
    );
    // The previous binary format names itself and says it is retrained.
    std::fs::write(&path, b"CLOSERIM\x10\0\0\0\0\0\0\0{}").unwrap();
    let err = TrainedHead::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("older Closer") && err.contains("retrained"),
        "{err}"
    );
}
