//! indicatif progress bars for the engine's [`Progress`] events.

use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};
use linesweep_worker::engine::{Phase, Progress};

/// One bar per phase, drawn on stderr (hidden when stderr is not a terminal).
#[derive(Default)]
pub struct Bars {
    current: Mutex<Option<ProgressBar>>,
}

impl Progress for Bars {
    fn start(&self, phase: Phase, total: u64) {
        let (label, unit) = match phase {
            Phase::Training => ("train", "steps"),
            Phase::Line => ("line ", "α points"),
        };
        let style = ProgressStyle::with_template(&format!(
            "{label} [{{bar:30.cyan/blue}}] {{pos}}/{{len}} {unit} {{per_sec}} eta {{eta}} {{msg}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        let bar = ProgressBar::new(total).with_style(style);
        if let Ok(mut cur) = self.current.lock() {
            *cur = Some(bar);
        }
    }

    fn advance(&self, n: u64, loss: Option<f64>) {
        if let Ok(cur) = self.current.lock()
            && let Some(bar) = cur.as_ref()
        {
            bar.inc(n);
            if let Some(l) = loss {
                bar.set_message(format!("loss {l:.4}"));
            }
        }
    }

    fn finish(&self) {
        if let Ok(mut cur) = self.current.lock()
            && let Some(bar) = cur.take()
        {
            bar.finish();
        }
    }
}
