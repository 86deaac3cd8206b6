//! TLS on the control plane, as real processes on loopback: `serve --tls-cert/--tls-key`, and
//! clients and workers on `https://` with `--tls-ca`. The certificates are made here with
//! rcgen: a CA, a server certificate it signs, an expired one, and a second, unrelated CA.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

const TOKEN: &str = "tls-token";
const LIMIT: Duration = Duration::from_secs(120);

/// The PEM files of one test's certificates.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    other_ca: PathBuf,
    expired_cert: PathBuf,
    expired_key: PathBuf,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A certificate for `localhost` and 127.0.0.1 signed by `ca`; `expired` puts its validity in
/// the past. Returns (certificate PEM, key PEM).
fn leaf(ca: &CertifiedIssuer<'static, KeyPair>, expired: bool) -> (String, String) {
    let mut params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "coordinator");
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn pki(dir: &Path) -> Pki {
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ca1 = ca("linesweep test CA");
    let (cert, key) = leaf(&ca1, false);
    let (expired_cert, expired_key) = leaf(&ca1, true);
    Pki {
        ca: write("ca.pem", &ca1.pem()),
        cert: write("server.pem", &cert),
        key: write("server.key", &key),
        other_ca: write("other-ca.pem", &ca("someone else's CA").pem()),
        expired_cert: write("expired.pem", &expired_cert),
        expired_key: write("expired.key", &expired_key),
    }
}

/// A 2-shard sweep of a tiny MLP (well under a second a shard).
fn spec(dir: &Path) -> PathBuf {
    let text = format!(
        r#"
name = "tls"

[grid]
seed = [0, 1]

[model]
hidden = [64]

[data]
max_train_examples = 1000

[train]
epochs = 1

[eval]
max_examples = 200

[storage]
results = "{}"
"#,
        dir.join("results").display()
    );
    let path = dir.join("tls.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `linesweep ARGS… --coordinator URL` plus `extra`; (exit ok, stdout, stderr).
fn client(args: &[&str], url: &str, extra: &[&str], cwd: &Path) -> (bool, String, String) {
    let mut all = args.to_vec();
    all.extend(["--coordinator", url]);
    all.extend(extra);
    let out = linesweep(&all, cwd, LIMIT);
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `serve` with the token and the PKI's server certificate, on any loopback port.
fn serve_tls(pki: &Pki, state: &Path) -> (Proc, String) {
    serve(
        &[
            "--listen",
            "127.0.0.1:0",
            "--token",
            TOKEN,
            "--tls-cert",
            path(&pki.cert),
            "--tls-key",
            path(&pki.key),
        ],
        state,
    )
}

#[test]
fn a_sweep_runs_over_tls_and_the_token_is_still_required() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pki = pki(dir);
    let (_server, url) = serve_tls(&pki, &dir.join("state.db"));
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let trusted = ["--token", TOKEN, "--tls-ca", path(&pki.ca)];
    let spec = spec(dir);
    let (ok, out, err) = client(&["submit", path(&spec)], &url, &trusted, dir);
    assert!(ok, "submit over TLS: {out}{err}");
    assert!(out.contains("2 added"), "{out}");

    // TLS does not replace the token.
    let (ok, _, err) = client(&["status", "tls"], &url, &["--tls-ca", path(&pki.ca)], dir);
    assert!(!ok && err.contains("Unauthenticated"), "{err}");

    let worker = [
        "worker",
        "--exit-when-idle",
        "--idle-poll",
        "0.2",
        "--max-backoff",
        "1",
    ];
    let (ok, out, err) = client(&worker, &url, &trusted, dir);
    assert!(ok, "worker over TLS: {out}{err}");
    let (ok, out, err) = client(&["status", "tls", "--json"], &url, &trusted, dir);
    assert!(ok, "{err}");
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["counts"]["committed"], 2, "{out}");

    // The same CA given through the environment, as the Kubernetes manifests do.
    let mut cmd = std::process::Command::new(bin());
    cmd.args(["status", "tls", "--coordinator", &url, "--token", TOKEN])
        .env("LINESWEEP_TLS_CA", &pki.ca)
        .current_dir(dir);
    let out = run_with_deadline(cmd, LIMIT);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn a_wrong_ca_or_a_plain_text_client_is_told_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pki = pki(dir);
    let (_tls, url) = serve_tls(&pki, &dir.join("tls.db"));
    let status = ["status", "any"];

    let wrong = ["--token", TOKEN, "--tls-ca", path(&pki.other_ca)];
    let (ok, _, err) = client(&status, &url, &wrong, dir);
    assert!(
        !ok && err.contains("not signed by a CA this client trusts"),
        "{err}"
    );
    // Without --tls-ca the system's roots are used, and they do not know the test CA either.
    let (ok, _, err) = client(&status, &url, &["--token", TOKEN], dir);
    assert!(!ok && err.contains("--tls-ca"), "{err}");
    // A worker stops at once, saying why, instead of retrying a certificate it will never trust.
    let worker = ["worker", "--max-backoff", "1"];
    let (ok, _, err) = client(&worker, &url, &wrong, dir);
    assert!(!ok && err.contains("cannot trust the coordinator"), "{err}");

    let plain = url.replace("https://", "http://");
    let (ok, _, err) = client(&status, &plain, &["--token", TOKEN], dir);
    assert!(!ok && err.contains("use an https:// URL"), "{err}");
    let (ok, _, err) = client(
        &status,
        &plain,
        &["--token", TOKEN, "--tls-ca", path(&pki.ca)],
        dir,
    );
    assert!(!ok && err.contains("use https://"), "{err}");

    // And the other way round: https:// to a plain-text coordinator.
    let (_plain_server, plain_url) = serve(
        &["--listen", "127.0.0.1:0", "--token", TOKEN],
        &dir.join("plain.db"),
    );
    let https = plain_url.replace("http://", "https://");
    let (ok, _, err) = client(
        &status,
        &https,
        &["--token", TOKEN, "--tls-ca", path(&pki.ca)],
        dir,
    );
    assert!(!ok && err.contains("does not speak TLS"), "{err}");
}

#[test]
fn serve_refuses_an_expired_certificate_or_a_key_that_is_not_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pki = pki(dir);
    let start = |cert: &Path, key: &Path| {
        let out = linesweep(
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--state",
                path(&dir.join("s.db")),
                "--tls-cert",
                path(cert),
                "--tls-key",
                path(key),
            ],
            dir,
            LIMIT,
        );
        assert!(
            !out.status.success(),
            "serve started with {cert:?} and {key:?}"
        );
        text(&out.stderr)
    };
    let err = start(&pki.expired_cert, &pki.expired_key);
    assert!(
        err.contains("expired on") && err.contains("expired.pem"),
        "{err}"
    );
    let err = start(&pki.cert, &pki.expired_key);
    assert!(
        err.contains("--tls-key") && err.contains("expired.key"),
        "{err}"
    );
    let err = start(&pki.key, &pki.key);
    assert!(err.contains("no certificate in it"), "{err}");
    // One flag without the other is a usage error.
    let out = linesweep(
        &["serve", "--state", "s.db", "--tls-cert", path(&pki.cert)],
        dir,
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}
