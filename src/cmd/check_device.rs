//! `linesweep check-device`: does a GPU backend compute what the CPU computes?

use linesweep_worker::config::Precision;
use linesweep_worker::device;
use linesweep_worker::engine::parity::{self, Report, Side};

use crate::cli::CheckDeviceArgs;

pub(super) fn precision(name: &str) -> anyhow::Result<Precision> {
    super::config_name(name, &format!("precision `{name}` (f32 or bf16)"))
}

pub fn run(args: CheckDeviceArgs) -> anyhow::Result<()> {
    let precision = precision(&args.precision)?;
    let reference_precision = match &args.reference_precision {
        Some(p) => self::precision(p)?,
        None => precision,
    };
    let tolerance = args
        .tolerance
        .unwrap_or_else(|| parity::default_tolerance(precision));
    anyhow::ensure!(
        tolerance.is_finite() && tolerance >= 0.0,
        "--tolerance must be a finite number ≥ 0, not {tolerance}"
    );
    let reference = device::parse(&args.reference)?;
    let target = device::parse(&args.device)?;
    tracing::info!(
        device = target.name,
        reference = reference.name,
        "checking the device"
    );
    anyhow::ensure!(args.steps >= 1, "--steps must be at least 1");
    let mut cases = parity::default_cases();
    if let Some(unknown) = args
        .cases
        .iter()
        .find(|c| !cases.iter().any(|k| k.name == c.as_str()))
    {
        let known: Vec<&str> = cases.iter().map(|c| c.name).collect();
        anyhow::bail!(
            "--cases: no case `{unknown}`; the cases are {}",
            known.join(", ")
        );
    }
    cases.retain(|c| args.cases.iter().any(|n| n == c.name));
    for case in &mut cases {
        case.steps = args.steps;
    }
    let report = parity::check(
        &cases,
        Side {
            device: &reference,
            precision: reference_precision,
        },
        Side {
            device: &target,
            precision,
        },
        tolerance,
    )?;
    if args.json {
        crate::render::emit(&format!("{}\n", serde_json::to_string(&report)?))?;
    } else {
        crate::render::emit(&summary(&report))?;
    }
    let failures = report.failures();
    if let Some(first) = failures.first() {
        anyhow::bail!(
            "the device {} disagrees with {}: {} of {} checks beyond the tolerance {} (first: \
             {} {}, difference {:.3e}); results computed on it cannot be trusted",
            report.device,
            report.reference,
            failures.len(),
            report.checks.len(),
            report.tolerance,
            first.case,
            first.what,
            first.difference
        );
    }
    Ok(())
}

/// One line per case (checks, worst difference and what it was), then every failed check.
fn summary(r: &Report) -> String {
    let mut out = format!(
        "{} ({}) against {} ({}), tolerance {}\n",
        r.device, r.precision, r.reference, r.reference_precision, r.tolerance
    );
    let mut cases: Vec<&str> = r.checks.iter().map(|c| c.case.as_str()).collect();
    cases.dedup();
    for case in cases {
        let of: Vec<_> = r.checks.iter().filter(|c| c.case == case).collect();
        let bad = of.iter().filter(|c| !c.ok).count();
        if let Some(w) = of
            .iter()
            .max_by(|a, b| a.difference.total_cmp(&b.difference))
        {
            out += &format!(
                "  {case:<10} {} checks, {} beyond tolerance; largest difference {:.3e} ({})\n",
                of.len(),
                bad,
                w.difference,
                w.what
            );
        }
    }
    for c in r.failures() {
        out += &format!(
            "  FAIL {} {}: difference {:.3e} (reference {:.6})\n",
            c.case, c.what, c.difference, c.reference
        );
    }
    out
}
