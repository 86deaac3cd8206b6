//! TLS on the control plane: the coordinator's certificate (`serve --tls-cert/--tls-key`) and
//! how every caller (the CLI's client commands and the worker agent) reaches it (`https://`
//! with `--tls-ca`, or the system's roots). One home for both sides, so that the URL rules and
//! the explanation of a failed handshake are the same everywhere.
//!
//! The token is still sent, and checked, over TLS: TLS authenticates the coordinator to its
//! callers and hides the token; the token authenticates the callers.

use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// A TLS file or a coordinator URL that cannot be used, said before anything connects.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file cannot be read.
    #[error("{flag} {}: cannot read it: {source}", path.display())]
    Read {
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file holds no PEM object of the kind the flag needs.
    #[error("{flag} {}: no {what} in it (expected a PEM file: {hint})", path.display())]
    Pem {
        flag: &'static str,
        path: PathBuf,
        what: &'static str,
        hint: &'static str,
    },
    /// A certificate is PEM but not one that parses.
    #[error("{flag} {}: a certificate in it cannot be parsed: {message}", path.display())]
    Parse {
        flag: &'static str,
        path: PathBuf,
        message: String,
    },
    /// The certificate is X.509 version 1 or 2: rustls's callers refuse it.
    #[error(
        "--tls-cert {}: the certificate is X.509 version {version}; TLS clients accept only version 3 (issue it with subject alternative names, e.g. openssl's -addext subjectAltName=DNS:host)",
        path.display()
    )]
    Version { path: PathBuf, version: u32 },
    /// The certificate is outside its validity period.
    #[error(
        "--tls-cert {}: the certificate {when}; issue a new one (the coordinator's clients would refuse it)",
        path.display()
    )]
    Validity { path: PathBuf, when: String },
    /// The certificate and key do not make a usable server identity.
    #[error("--tls-cert {} with --tls-key {}: {message}", cert.display(), key.display())]
    Identity {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
    /// The URL and the TLS settings disagree, or the URL is not a coordinator URL.
    #[error("coordinator URL {url}: {message}")]
    Url { url: String, message: String },
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        flag,
        path: path.to_owned(),
        source,
    })
}

/// The certificates of a PEM file, at least one.
fn certificates(flag: &'static str, path: &Path, pem: &[u8]) -> Result<Vec<Vec<u8>>, TlsError> {
    let certs: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .map(|c| c.as_ref().to_vec())
        .collect();
    if certs.is_empty() {
        return Err(TlsError::Pem {
            flag,
            path: path.to_owned(),
            what: "certificate",
            hint: "-----BEGIN CERTIFICATE-----",
        });
    }
    Ok(certs)
}

/// The certificate `der` of the file `path` given with `flag`, parsed.
fn parse<'a>(
    flag: &'static str,
    path: &Path,
    der: &'a [u8],
) -> Result<x509_parser::certificate::X509Certificate<'a>, TlsError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(|e| TlsError::Parse {
            flag,
            path: path.to_owned(),
            message: e.to_string(),
        })
}

/// Refuses a leaf certificate that is not version 3, has expired or is not valid yet: the coordinator would start
/// and every caller would then fail its handshake.
fn check_validity(path: &Path, der: &[u8]) -> Result<(), TlsError> {
    let cert = parse("--tls-cert", path, der)?;
    if cert.version() != x509_parser::x509::X509Version::V3 {
        return Err(TlsError::Version {
            path: path.to_owned(),
            version: cert.version().0 + 1,
        });
    }
    let validity = cert.validity();
    let now = x509_parser::time::ASN1Time::now();
    let when = if now > validity.not_after {
        format!("expired on {}", validity.not_after)
    } else if now < validity.not_before {
        format!("is not valid before {}", validity.not_before)
    } else {
        return Ok(());
    };
    Err(TlsError::Validity {
        path: path.to_owned(),
        when,
    })
}

/// The coordinator's TLS settings from a certificate chain and its private key (PEM), checked
/// now: the files parse, the leaf is within its validity period, the key matches.
pub fn server_config(cert: &Path, key: &Path) -> Result<ServerTlsConfig, TlsError> {
    let cert_pem = read("--tls-cert", cert)?;
    let key_pem = read("--tls-key", key)?;
    let chain = certificates("--tls-cert", cert, &cert_pem)?;
    if PrivateKeyDer::from_pem_slice(&key_pem).is_err() {
        return Err(TlsError::Pem {
            flag: "--tls-key",
            path: key.to_owned(),
            what: "private key",
            hint: "-----BEGIN PRIVATE KEY-----, RSA or EC",
        });
    }
    check_validity(cert, &chain[0])?;
    let config = ServerTlsConfig::new().identity(Identity::from_pem(cert_pem, key_pem));
    // Building the acceptor is where rustls checks that the key belongs to the certificate.
    tonic::transport::Server::builder()
        .tls_config(config.clone())
        .map_err(|e| TlsError::Identity {
            cert: cert.to_owned(),
            key: key.to_owned(),
            message: chain_text(&e),
        })?;
    Ok(config)
}

/// How a caller trusts the coordinator's certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// The CA certificate(s) (PEM) that signed the coordinator's certificate; `None`: the
    /// system's roots.
    pub ca: Option<PathBuf>,
}

/// How long any caller waits for the coordinator to accept a connection and, over `https://`,
/// to finish the TLS handshake: one bound for every client, so that an endpoint that accepts
/// and never answers cannot hang a command or a worker.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The endpoint of the coordinator at `url`: `http://` in plain text, `https://` with TLS
/// (trusting `tls.ca`, or the system's roots). A CA with an `http://` URL is refused rather
/// than silently ignored. Connecting and the TLS handshake are each bounded by
/// `connect_timeout` (tonic's connect timeout covers only the TCP connection).
pub fn endpoint(
    url: &str,
    tls: &ClientTls,
    connect_timeout: Duration,
) -> Result<Endpoint, TlsError> {
    let bad = |message: String| TlsError::Url {
        url: url.to_owned(),
        message,
    };
    let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|e| bad(e.to_string()))?;
    let endpoint = endpoint.connect_timeout(connect_timeout);
    let uri = endpoint.uri().clone();
    match (uri.scheme_str(), &tls.ca) {
        (Some("http"), None) => Ok(endpoint),
        (Some("http"), Some(_)) => Err(bad(
            "--tls-ca is given but the URL is http:// (plain text); use https://".into(),
        )),
        (Some("https"), ca) => {
            let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
            let mut config = ClientTlsConfig::new()
                .domain_name(host)
                .timeout(connect_timeout);
            config = match ca {
                Some(path) => {
                    let pem = read("--tls-ca", path)?;
                    // A CA that does not parse would be dropped from the trust store silently,
                    // and every handshake then fail as "unknown issuer".
                    for der in certificates("--tls-ca", path, &pem)? {
                        parse("--tls-ca", path, &der)?;
                    }
                    config.ca_certificate(Certificate::from_pem(pem))
                }
                None => config.with_native_roots(),
            };
            endpoint.tls_config(config).map_err(|e| bad(chain_text(&e)))
        }
        _ => Err(bad("expected http://host:port or https://host:port".into())),
    }
}

/// An error and its causes on one line.
fn chain_text(e: &(dyn StdError + 'static)) -> String {
    // A Status's Display is its debug dump (code, message, source); its message says it.
    let mut text = match e.downcast_ref::<tonic::Status>() {
        Some(s) => s.message().to_owned(),
        None => e.to_string(),
    };
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// What a failure to reach the coordinator at `url` most likely means, with what to do: the
/// causes of a failed TLS handshake read as rustls's enum names otherwise.
pub fn explain(url: &str, e: &(dyn StdError + 'static)) -> String {
    let text = chain_text(e);
    let https = url.starts_with("https://");
    let hint = if let Some(r) = find_rustls(e) {
        rustls_hint(r)
    } else if https && (text.contains("InvalidContentType") || text.contains("corrupt message")) {
        Some(
            "the coordinator does not speak TLS: use an http:// URL, or start it with --tls-cert and --tls-key",
        )
    } else if !https && looks_closed(&text) {
        Some("if the coordinator serves TLS (serve --tls-cert), use an https:// URL and --tls-ca")
    } else {
        None
    };
    match hint {
        Some(h) => format!("{text} ({h})"),
        None => text,
    }
}

/// Whether `e` is a refused certificate (untrusted, expired, for another name): not transient,
/// so a worker stops retrying and says why.
pub fn is_certificate_error(e: &(dyn StdError + 'static)) -> bool {
    matches!(find_rustls(e), Some(rustls::Error::InvalidCertificate(_)))
}

fn find_rustls<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut source: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        // tokio-rustls reports handshake failures as an io::Error wrapping rustls's.
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return Some(r);
        }
        source = s.source();
    }
    None
}

fn rustls_hint(e: &rustls::Error) -> Option<&'static str> {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => Some(match c {
            C::UnknownIssuer | C::BadSignature => {
                "the coordinator's certificate is not signed by a CA this client trusts: pass the CA that signed it with --tls-ca (or LINESWEEP_TLS_CA)"
            }
            C::Expired | C::ExpiredContext { .. } => {
                "the coordinator's certificate has expired: issue a new one and restart serve"
            }
            C::NotValidYet | C::NotValidYetContext { .. } => {
                "the coordinator's certificate is not valid yet: check the clocks"
            }
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                "the coordinator's certificate does not name the host in the URL: use a host name its certificate lists"
            }
            C::Other(e) if e.to_string().contains("UnsupportedCertVersion") => {
                "the coordinator's certificate is X.509 version 1; TLS clients accept only version 3: issue it again as version 3 with subject alternative names"
            }
            _ => "the coordinator's certificate was refused",
        }),
        rustls::Error::InvalidMessage(_) => Some(
            "the coordinator does not speak TLS: use an http:// URL, or start it with --tls-cert and --tls-key",
        ),
        _ => None,
    }
}

/// A plain-text HTTP/2 client talking to a TLS server sees the connection dropped, not an error
/// that names TLS.
fn looks_closed(text: &str) -> bool {
    [
        "connection closed",
        "Connection reset",
        "broken pipe",
        "unexpected end of file",
        "frame with invalid size",
        "h2 protocol error",
    ]
    .iter()
    .any(|m| text.contains(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_with_a_plain_text_url_is_refused() {
        let tls = ClientTls {
            ca: Some("/nonexistent/ca.pem".into()),
        };
        let e = endpoint("http://127.0.0.1:1", &tls, Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("use https://"), "{e}");
        let e = endpoint("https://127.0.0.1:1", &tls, Duration::from_secs(1)).unwrap_err();
        assert!(
            e.to_string()
                .contains("--tls-ca /nonexistent/ca.pem: cannot read"),
            "{e}"
        );
        let e = endpoint("ftp://x:1", &ClientTls::default(), Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("expected http://"), "{e}");
        assert!(
            endpoint(
                "http://127.0.0.1:1",
                &ClientTls::default(),
                Duration::from_secs(1)
            )
            .is_ok()
        );
    }

    #[test]
    fn a_file_without_pem_is_named() {
        let dir = std::env::temp_dir().join(format!("linesweep-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let e = server_config(&junk, &junk).unwrap_err();
        assert!(e.to_string().contains("no certificate in it"), "{e}");
        let tls = ClientTls {
            ca: Some(junk.clone()),
        };
        let e = endpoint("https://localhost:1", &tls, Duration::from_secs(1)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("--tls-ca {}", junk.display())),
            "{e}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn handshake_failures_are_explained() {
        let e = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        assert!(explain("https://h:1", &io).contains("--tls-ca"));
        let e = rustls::Error::InvalidCertificate(rustls::CertificateError::Expired);
        assert!(explain("https://h:1", &e).contains("has expired"));
        let closed = std::io::Error::other("connection closed before message completed");
        assert!(explain("http://h:1", &closed).contains("use an https:// URL"));
        assert!(!explain("https://h:1", &closed).contains("use an https:// URL"));
    }
}
