//! `linesweep check-device`: agreement is reported and exits 0; disagreement names what
//! differs and exits non-zero.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn the_cpu_passes_its_own_check() {
    let tmp = tempfile::tempdir().unwrap();
    let o = linesweep(
        &["check-device", "--device", "cpu"],
        tmp.path(),
        Duration::from_secs(300),
    );
    let out = text(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", text(&o.stderr));
    for case in ["mlp", "resnet20"] {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(case))
            .unwrap_or_else(|| panic!("no line for {case}:\n{out}"));
        assert!(line.contains(" 0 beyond tolerance"), "{line}");
    }
}

#[test]
fn a_disagreeing_device_fails_loudly() {
    // bf16 forward passes against an f32 reference, held to a tolerance no bf16 run can meet:
    // a real disagreement, as a wrong GPU kernel would give (only larger).
    let tmp = tempfile::tempdir().unwrap();
    let o = linesweep(
        &[
            "check-device",
            "--device",
            "cpu",
            "--precision",
            "bf16",
            "--reference-precision",
            "f32",
            "--tolerance",
            "1e-6",
            "--json",
        ],
        tmp.path(),
        Duration::from_secs(300),
    );
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("the device cpu disagrees with cpu") && err.contains("cannot be trusted"),
        "{err}"
    );
    let report: serde_json::Value = serde_json::from_str(text(&o.stdout).trim()).unwrap();
    let checks = report["checks"].as_array().unwrap();
    assert!(checks.iter().any(|c| c["ok"] == false));
    assert!(checks.iter().all(|c| c["difference"].as_f64().is_some()));
    assert_eq!(report["precision"], "bf16");
}

#[test]
fn a_bad_tolerance_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let o = linesweep(
        &["check-device", "--device", "cpu", "--tolerance=-1"],
        tmp.path(),
        Duration::from_secs(60),
    );
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("--tolerance"),
        "{}",
        text(&o.stderr)
    );
}
