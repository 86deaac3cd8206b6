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

/// The files of each dataset and their checksums.
#[derive(Debug, Clone, Copy)]
pub struct Catalog {
    /// MNIST's four files.
    pub mnist: [Resource; 4],
    /// CIFAR-10's archive.
    pub cifar10: Resource,
}

/// The published files and checksums.
pub const PUBLIC: Catalog = Catalog {
    mnist: MNIST,
    cifar10: CIFAR10,
};

/// Downloads dataset `name` (`mnist` or `cifar10`) into `dir` from `mirror` (default: the
/// public sources), verifying the published checksums.
pub fn fetch(
    name: &str,
    dir: &Path,
    mirror: Option<&str>,
    progress: OnProgress<'_>,
) -> Result<FetchReport, FetchError> {
    fetch_from(&PUBLIC, name, dir, mirror, progress)
}

/// [`fetch`] against another catalog (tests serve fixture files with their own checksums).
pub fn fetch_from(
    catalog: &Catalog,
    name: &str,
    dir: &Path,
    mirror: Option<&str>,
    progress: OnProgress<'_>,
) -> Result<FetchReport, FetchError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut report = FetchReport::default();
    match name {
        "mnist" => {
            for r in &catalog.mnist {
                download(mirror.unwrap_or(MNIST_BASE), r, dir, &mut report, progress)?;
            }
        }
        "cifar10" => {
            let archive = download(
                mirror.unwrap_or(CIFAR10_BASE),
                &catalog.cifar10,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::BufRead;
    use std::net::TcpListener;

    /// Serves `files` over HTTP/1.1 on a loopback port until the test ends; every connection
    /// is answered once and closed.
    fn serve(files: HashMap<String, Vec<u8>>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(64) {
                let Ok(mut stream) = stream else { continue };
                stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
                // Drain the headers.
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).map_or(true, |n| n == 0) || h == "\r\n" {
                        break;
                    }
                }
                let name = path
                    .trim_start_matches('/')
                    .rsplit('/')
                    .next()
                    .unwrap_or("");
                let (status, body) = match files.get(name) {
                    Some(b) => ("200 OK", b.clone()),
                    None => ("404 Not Found", b"no such file".to_vec()),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
            }
        });
        format!("http://{addr}/data")
    }

    fn md5(bytes: &[u8]) -> &'static str {
        Box::leak(hex(&Md5::digest(bytes)).into_boxed_str())
    }

    fn cifar_archive() -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        let mut add = |name: &str, bytes: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            tar.append_data(&mut h, name, bytes).unwrap();
        };
        for (i, f) in super::super::cifar::TRAIN_FILES.iter().enumerate() {
            add(
                &format!("cifar-10-batches-bin/{f}"),
                &super::super::cifar::synthetic_records(3, i as u8),
            );
        }
        add(
            "cifar-10-batches-bin/test_batch.bin",
            &super::super::cifar::synthetic_records(2, 7),
        );
        add("cifar-10-batches-bin/readme.html", b"<html/>");
        let raw = tar.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&raw).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn fetch_verifies_extracts_skips_present_files_and_refuses_mismatches() {
        let archive = cifar_archive();
        let mnist: Vec<Vec<u8>> = (0..4).map(|i| vec![i as u8; 100 + i]).collect();
        let mut files: HashMap<String, Vec<u8>> = HashMap::new();
        files.insert(CIFAR10.file.into(), archive.clone());
        for (r, b) in MNIST.iter().zip(&mnist) {
            files.insert(r.file.into(), b.clone());
        }
        let base = serve(files);
        let catalog = Catalog {
            mnist: std::array::from_fn(|i| Resource {
                file: MNIST[i].file,
                md5: md5(&mnist[i]),
            }),
            cifar10: Resource {
                file: CIFAR10.file,
                md5: md5(&archive),
            },
        };
        let tmp = tempfile::tempdir().unwrap();
        let seen = std::sync::Mutex::new(0u64);
        let progress = |_: &str, done: u64, _: Option<u64>| *seen.lock().unwrap() = done;
        let r = fetch_from(&catalog, "cifar10", tmp.path(), Some(&base), &progress).unwrap();
        assert_eq!(r.downloaded, vec![CIFAR10.file.to_string()]);
        assert_eq!(r.bytes, archive.len() as u64);
        assert_eq!(*seen.lock().unwrap(), archive.len() as u64);
        let d = super::super::cifar::load_dir(tmp.path()).unwrap();
        assert_eq!((d.train.len(), d.test.len()), (15, 2));
        assert!(!tmp.path().join("readme.html").exists());
        // Again: nothing is downloaded.
        let r = fetch_from(&catalog, "cifar10", tmp.path(), Some(&base), &progress).unwrap();
        assert_eq!((r.downloaded.len(), r.present.len()), (0, 1));

        let r = fetch_from(&catalog, "mnist", tmp.path(), Some(&base), &progress).unwrap();
        assert_eq!(r.downloaded.len(), 4);

        // The published checksums do not match these fixture bytes: refused, nothing kept.
        let other = tempfile::tempdir().unwrap();
        let err = fetch("mnist", other.path(), Some(&base), &progress)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("checksum mismatch") && err.contains(MNIST[0].md5),
            "{err}"
        );
        assert_eq!(
            std::fs::read_dir(other.path()).unwrap().count(),
            0,
            "nothing is kept"
        );

        let err = fetch("imagenet", other.path(), None, &progress)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot be downloaded automatically"), "{err}");
        let err = fetch("svhn", other.path(), None, &progress)
            .unwrap_err()
            .to_string();
        assert!(err.contains("choose mnist or cifar10"), "{err}");
    }

    #[test]
    fn a_missing_file_is_an_http_error_naming_the_url() {
        let base = serve(HashMap::new());
        let tmp = tempfile::tempdir().unwrap();
        let err = fetch("cifar10", tmp.path(), Some(&base), &|_, _, _| {})
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/data/cifar-10-binary.tar.gz") && err.contains("404"),
            "{err}"
        );
    }
}
