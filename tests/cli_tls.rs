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

    // A CA file whose certificate block holds junk is named, not taken for an empty trust
    // store (every handshake would then fail as "unknown issuer").
    let junk = dir.join("junk-ca.pem");
    std::fs::write(
        &junk,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let (ok, _, err) = client(
        &status,
        &url,
        &["--token", TOKEN, "--tls-ca", path(&junk)],
        dir,
    );
    assert!(
        !ok && err.contains("junk-ca.pem") && err.contains("cannot be parsed"),
        "{err}"
    );
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
    // An X.509 version 1 certificate (openssl x509 -req without extensions makes one).
    let (v1, v1_key) = (dir.join("v1.pem"), dir.join("v1.key"));
    let sh = format!(
        "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
         -keyout {k} 2>/dev/null | openssl x509 -req -signkey {k} -days 30 -out {c} 2>/dev/null",
        k = v1_key.display(),
        c = v1.display()
    );
    let made = std::process::Command::new("bash")
        .args(["-c", &sh])
        .status();
    assert!(made.unwrap().success(), "openssl made no v1 certificate");
    let err = start(&v1, &v1_key);
    assert!(
        err.contains("X.509 version 1") && err.contains("v1.pem"),
        "{err}"
    );
    // One flag without the other is a usage error.
    let out = linesweep(
        &["serve", "--state", "s.db", "--tls-cert", path(&pki.cert)],
        dir,
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

/// `serve` started by bash with its open-file limit (soft and hard) at `nofile`; returns it and
/// its URL from the first stdout line.
fn serve_limited(nofile: u32, args: &[&str], state: &Path) -> (Proc, String) {
    use std::io::BufRead;
    let mut child = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("ulimit -n {nofile} && exec \"$0\" -q serve \"$@\""))
        .arg(bin())
        .args(args)
        .arg("--state")
        .arg(state)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let proc = Proc(child);
    let line = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    let url = line
        .trim()
        .strip_prefix("coordinator on ")
        .unwrap()
        .to_owned();
    (proc, url)
}

/// Whether `p` exits within `limit`.
fn exits_within(p: &mut Proc, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if p.0.try_wait().unwrap().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Whether the server closed `conn` (end of file or a reset) within `limit`.
fn closed_by_server(conn: &mut std::net::TcpStream, limit: Duration) -> bool {
    use std::io::Read;
    conn.set_read_timeout(Some(limit)).unwrap();
    let mut byte = [0u8; 1];
    match conn.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// Hundreds of connections that never start a TLS handshake, against a coordinator allowed
/// 256 open files: the ones over the cap are closed at once, the rest after the handshake
/// timeout, and a worker still completes the sweep. (1,100 of them against 1,024 descriptors
/// used to stall a sweep for minutes: the coordinator could not open staged files.)
#[test]
fn connections_that_never_handshake_do_not_stall_a_worker() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pki = pki(dir);
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--token",
        TOKEN,
        "--tls-cert",
        path(&pki.cert),
        "--tls-key",
        path(&pki.key),
    ];
    let (_server, url) = serve_limited(256, &args, &dir.join("state.db"));
    let trusted = ["--token", TOKEN, "--tls-ca", path(&pki.ca)];
    let (ok, out, err) = client(&["submit", path(&spec(dir))], &url, &trusted, dir);
    assert!(ok, "{out}{err}");

    let addr = url.trim_start_matches("https://").to_owned();
    let mut idle: Vec<std::net::TcpStream> = (0..300)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    let worker = [
        "worker",
        "--exit-when-idle",
        "--idle-poll",
        "0.2",
        "--max-backoff",
        "1",
    ];
    let (ok, out, err) = client(&worker, &url, &trusted, dir);
    assert!(ok, "worker: {out}{err}");
    let (ok, out, err) = client(&["status", "tls", "--json"], &url, &trusted, dir);
    assert!(ok, "{err}");
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["counts"]["committed"], 2, "{out}");
    // Every idle connection was closed by the coordinator, none is still held.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut open = 0;
    for c in &mut idle {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if !closed_by_server(c, left.max(Duration::from_millis(10))) {
            open += 1;
        }
    }
    assert_eq!(open, 0, "connections the coordinator still holds");
    let out = linesweep(&["serve", "--help"], dir, LIMIT);
    assert!(text(&out.stdout).contains("--max-connections"));
}

/// An endpoint that accepts connections and never answers (`nc -l`, a hung proxy): every
/// client gives up within its connect bound, and a worker waiting on it stops at SIGTERM.
#[test]
fn clients_and_workers_do_not_hang_on_an_endpoint_that_never_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, accepted) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
            if tx.send(()).is_err() {
                return;
            }
        }
    });
    for scheme in ["https", "http"] {
        let url = format!("{scheme}://{addr}");
        // Connecting is bounded by 20 s in all; past 30 s the command counts as hung (before
        // the bound, https waited well over a minute).
        let out = linesweep(
            &["status", "x", "--coordinator", &url, "--token", TOKEN],
            dir,
            Duration::from_secs(30),
        );
        let err = text(&out.stderr);
        assert!(
            !out.status.success() && err.contains("cannot reach the coordinator"),
            "{err}"
        );
    }
    while accepted.try_recv().is_ok() {}
    let worker = std::process::Command::new(bin())
        .args(["-q", "worker", "--max-backoff", "1", "--token", TOKEN])
        .args(["--coordinator", &format!("https://{addr}")])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut worker = Proc(worker);
    accepted
        .recv_timeout(Duration::from_secs(60))
        .expect("the worker connected");
    std::thread::sleep(Duration::from_millis(500));
    worker.signal(libc::SIGTERM);
    assert!(
        exits_within(&mut worker, Duration::from_secs(5)),
        "the worker ignored SIGTERM while connecting"
    );
}

/// SIGTERM stops the coordinator within its grace period although a `watch` client and a
/// connection that never sent a byte are open.
#[test]
fn serve_stops_at_sigterm_with_a_watch_client_and_an_idle_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut server, url) = serve(
        &["--listen", "127.0.0.1:0", "--token", TOKEN],
        &dir.join("state.db"),
    );
    let (ok, out, err) = client(
        &["submit", path(&spec(dir))],
        &url,
        &["--token", TOKEN],
        dir,
    );
    assert!(ok, "{out}{err}");
    let watch = std::process::Command::new(bin())
        .args([
            "-q",
            "watch",
            "tls",
            "--coordinator",
            &url,
            "--token",
            TOKEN,
        ])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _watch = Proc(watch);
    let _idle = std::net::TcpStream::connect(url.trim_start_matches("http://")).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    server.signal(libc::SIGTERM);
    assert!(
        exits_within(&mut server, Duration::from_secs(15)),
        "serve still running 15 s after SIGTERM"
    );
}
