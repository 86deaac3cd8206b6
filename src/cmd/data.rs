//! `linesweep data fetch`.

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use linesweep_worker::data::{cifar, fetch, imagenet};

use crate::cli::{DataArgs, DataWhat, SynthArgs};

fn synth(s: SynthArgs) -> anyhow::Result<()> {
    let write = |path: std::path::PathBuf, bytes: Vec<u8>| {
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
    };
    std::fs::create_dir_all(&s.dir).with_context(|| format!("creating {}", s.dir.display()))?;
    match s.dataset.as_str() {
        "cifar10" => {
            let per_file = s.examples.div_ceil(cifar::TRAIN_FILES.len()).max(1);
            for (i, name) in cifar::TRAIN_FILES.iter().enumerate() {
                write(
                    s.dir.join(name),
                    cifar::synthetic_records(per_file, i as u8),
                )?;
            }
            write(
                s.dir.join(cifar::TEST_FILE),
                cifar::synthetic_records((s.examples / 5).max(1), 77),
            )?;
        }
        "imagenet" => {
            let per_class = s.examples.div_ceil(2).max(1);
            imagenet::write_synthetic(&s.dir, 2, per_class, (per_class / 5).max(1), 256)
                .with_context(|| format!("writing JPEGs under {}", s.dir.display()))?;
        }
        other => anyhow::bail!("`{other}`: synthetic data exists for cifar10 and imagenet"),
    }
    crate::render::emit(&format!(
        "wrote synthetic {} to {}: not real images, for dry runs only\n",
        s.dataset,
        s.dir.display()
    ))?;
    Ok(())
}

pub fn run(args: DataArgs) -> anyhow::Result<()> {
    let f = match args.what {
        DataWhat::Fetch(f) => f,
        DataWhat::Synth(s) => return synth(s),
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg:32} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let on_progress = |file: &str, done: u64, total: Option<u64>| {
        if bar.message() != file {
            bar.set_message(file.to_owned());
        }
        if let Some(t) = total {
            bar.set_length(t);
        }
        bar.set_position(done);
    };
    let report = fetch::fetch(&f.dataset, &f.dir, f.mirror.as_deref(), &on_progress);
    bar.finish_and_clear();
    let report = report?;
    tracing::info!(
        downloaded = report.downloaded.len(),
        already_present = report.present.len(),
        bytes = report.bytes,
        "fetched"
    );
    crate::render::emit(&format!(
        "{}: {} downloaded and verified, {} already present, in {}\nset `data.dir = \"{}\"` and `data.dataset = \"{}\"` in a shard config\n",
        f.dataset,
        report.downloaded.len(),
        report.present.len(),
        f.dir.display(),
        f.dir.display(),
        f.dataset
    ))?;
    Ok(())
}
