//! `linesweep data fetch`.

use indicatif::{ProgressBar, ProgressStyle};
use linesweep_worker::data::fetch;

use crate::cli::{DataArgs, DataWhat};

pub fn run(args: DataArgs) -> anyhow::Result<()> {
    let DataWhat::Fetch(f) = args.what;
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
