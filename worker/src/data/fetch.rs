//! `linesweep data fetch`: downloads the public datasets and verifies their published MD5
//! checksums before anything lands under its final name.
//!
//! A file is written to `<name>.partial`, hashed while it streams, and renamed only when its
//! checksum matches; a mismatch deletes the partial file and is an error naming the URL and
//! both checksums. Files already present with the right checksum are not downloaded again.
//! ImageNet cannot be downloaded (its licence requires a sign-in); asking for it explains
//! where to place it.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use md5::{Digest, Md5};

/// Where the MNIST files are served (the mirror torchvision uses; the original site is gone).
pub const MNIST_BASE: &str = "https://ossci-datasets.s3.amazonaws.com/mnist/";
/// Where the CIFAR-10 binary archive is served (the dataset authors' page).
pub const CIFAR10_BASE: &str = "https://www.cs.toronto.edu/~kriz/";

/// One file to download: its name under the base URL and its published MD5.
#[derive(Debug, Clone, Copy)]
pub struct Resource {
    /// File name, appended to the base URL.
    pub file: &'static str,
    /// Published MD5, lower-case hex.
    pub md5: &'static str,
}

/// MNIST's four gzip files (checksums as published with torchvision).
pub const MNIST: [Resource; 4] = [
    Resource {
        file: "train-images-idx3-ubyte.gz",
        md5: "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    },
    Resource {
        file: "train-labels-idx1-ubyte.gz",
        md5: "d53e105ee54ea40749a09fcbcd1e9432",
    },
    Resource {
        file: "t10k-images-idx3-ubyte.gz",
        md5: "9fb629c4189551a2d022fa330f9573f3",
    },
    Resource {
        file: "t10k-labels-idx1-ubyte.gz",
        md5: "ec29112dd5afa0611ce80d1b7f02629c",
    },
];

/// CIFAR-10's binary archive (checksum as published on the dataset page).
pub const CIFAR10: Resource = Resource {
    file: "cifar-10-binary.tar.gz",
    md5: "c32a1d4ab5d03f1284b67883e8d87530",
};

/// A download failed or did not verify.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The dataset name is not one that can be fetched.
    #[error("{0}")]
    Unsupported(String),
    /// The server could not be reached or answered with an error.
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    /// The downloaded bytes do not have the published checksum; nothing was kept.
    #[error(
        "{url}: checksum mismatch: expected MD5 {expected}, got {actual}; the download was discarded"
    )]
    Checksum {
        url: String,
        expected: String,
        actual: String,
    },
    /// A local file could not be written or read.
    #[error("{path}: {message}")]
    Io { path: String, message: String },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> FetchError + '_ {
    move |e| FetchError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// What a fetch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FetchReport {
    /// Files downloaded and verified.
    pub downloaded: Vec<String>,
    /// Files already present with the right checksum.
    pub present: Vec<String>,
    /// Bytes downloaded.
    pub bytes: u64,
}

/// Progress of one download: `(file, bytes so far, total if known)`.
pub type OnProgress<'a> = &'a dyn Fn(&str, u64, Option<u64>);

fn md5_of_file(path: &Path) -> Result<String, FetchError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Downloads `base + r.file` into `dir`, verifying its checksum; true when it was downloaded,
/// false when a verified copy was already there.
fn download(
    base: &str,
    r: &Resource,
    dir: &Path,
    report: &mut FetchReport,
    progress: OnProgress<'_>,
) -> Result<PathBuf, FetchError> {
    let dest = dir.join(r.file);
    if dest.is_file() && md5_of_file(&dest)? == r.md5 {
        report.present.push(r.file.to_owned());
        return Ok(dest);
    }
    let url = format!("{}/{}", base.trim_end_matches('/'), r.file);
    let http = |message: String| FetchError::Http {
        url: url.clone(),
        message,
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_body(Some(Duration::from_secs(120)))
        .build()
        .into();
    let mut resp = agent.get(&url).call().map_err(|e| http(e.to_string()))?;
    let total = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let partial = dir.join(format!("{}.partial", r.file));
    let mut out = std::fs::File::create(&partial).map_err(io(&partial))?;
    let mut reader = resp.body_mut().as_reader();
    let mut h = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut done = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(http(format!(
                    "the download broke off after {done} bytes: {e}"
                )));
            }
        };
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io(&partial))?;
        done += n as u64;
        progress(r.file, done, total);
    }
    out.sync_all().map_err(io(&partial))?;
    drop(out);
    let actual = hex(&h.finalize());
    if actual != r.md5 {
        let _ = std::fs::remove_file(&partial);
        return Err(FetchError::Checksum {
            url,
            expected: r.md5.to_owned(),
            actual,
        });
    }
    std::fs::rename(&partial, &dest).map_err(io(&dest))?;
    report.downloaded.push(r.file.to_owned());
    report.bytes += done;
    Ok(dest)
}

/// Extracts the six `.bin` batch files of the CIFAR-10 archive into `dir` (and nothing else:
/// member names are never used as paths).
fn extract_cifar(archive: &Path, dir: &Path) -> Result<(), FetchError> {
    let f = std::fs::File::open(archive).map_err(io(archive))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let wanted: Vec<&str> = super::cifar::TRAIN_FILES
        .iter()
        .copied()
        .chain([super::cifar::TEST_FILE])
        .collect();
    let mut found = 0;
    for entry in tar.entries().map_err(io(archive))? {
        let mut entry = entry.map_err(io(archive))?;
        let name = entry
            .path()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
        let Some(name) = name.filter(|n| wanted.contains(&n.as_str())) else {
            continue;
        };
        let dest = dir.join(&name);
        let mut out = std::fs::File::create(&dest).map_err(io(&dest))?;
        std::io::copy(&mut entry, &mut out).map_err(io(&dest))?;
        found += 1;
    }
    if found != wanted.len() {
        return Err(FetchError::Io {
            path: archive.display().to_string(),
            message: format!(
                "the archive holds {found} of the {} batch files",
                wanted.len()
            ),
        });
    }
    Ok(())
}

/// Downloads dataset `name` (`mnist` or `cifar10`) into `dir` from `mirror` (default: the
/// public sources).
pub fn fetch(
    name: &str,
    dir: &Path,
    mirror: Option<&str>,
    progress: OnProgress<'_>,
) -> Result<FetchReport, FetchError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut report = FetchReport::default();
    match name {
        "mnist" => {
            for r in &MNIST {
                download(mirror.unwrap_or(MNIST_BASE), r, dir, &mut report, progress)?;
            }
        }
        "cifar10" => {
            let archive = download(
                mirror.unwrap_or(CIFAR10_BASE),
                &CIFAR10,
                dir,
                &mut report,
                progress,
            )?;
            extract_cifar(&archive, dir)?;
        }
        "imagenet" => {
            return Err(FetchError::Unsupported(format!(
                "ImageNet cannot be downloaded automatically: its licence requires a sign-in at \
                 https://image-net.org. Place it as {0}/train/<wnid>/*.JPEG and \
                 {0}/val/<wnid>/*.JPEG (validation images sorted into class folders) and set \
                 `data.dir = \"{0}\"`",
                dir.display()
            )));
        }
        other => {
            return Err(FetchError::Unsupported(format!(
                "`{other}` cannot be fetched; choose mnist or cifar10"
            )));
        }
    }
    Ok(report)
}
