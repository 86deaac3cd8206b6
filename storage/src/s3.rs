//! `s3://bucket/prefix` locations: results, snapshots, staging and checkpoints on S3 or any
//! S3-protocol store (MinIO, Ceph, s3s).
//!
//! Configuration is AWS's own, so that what works with the `aws` CLI works here:
//! - the standard environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//!   `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL`, …), read by `object_store`;
//! - else the shared profile: `AWS_PROFILE` (default `default`) in `~/.aws/credentials` and
//!   `~/.aws/config` (or `AWS_SHARED_CREDENTIALS_FILE` / `AWS_CONFIG_FILE`): keys, `region`
//!   and `endpoint_url`.
//!
//! Requests are path-style (`endpoint/bucket/key`) unless `AWS_VIRTUAL_HOSTED_STYLE_REQUEST`
//! is set, which is what self-hosted stores expect; an `http://` endpoint is allowed without
//! TLS because naming one is explicit. Create-only writes are `If-None-Match: *` conditional
//! puts (`object_store`'s default for S3), so a second publisher of a key is refused by the
//! store itself, exactly as `O_EXCL` refuses it on a local disk.

use std::path::PathBuf;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ClientConfigKey, RetryConfig};

use crate::StorageError;

/// Builds the store of `location` (`s3://bucket/prefix`); no request is made yet. Returns it
/// with the endpoint it talks to (AWS's own when none is set).
pub fn open(location: &str) -> Result<(Arc<dyn ObjectStore>, String), String> {
    // reqwest is built without a default crypto provider; ring is the one the build has. A
    // second install (another location opened) is refused harmlessly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = url::Url::parse(location).map_err(|e| e.to_string())?;
    let bucket = url
        .host_str()
        .filter(|b| !b.is_empty())
        .ok_or("an S3 location names its bucket: s3://bucket/prefix")?;
    let prefix = url.path().trim_matches('/').to_owned();
    let mut b = AmazonS3Builder::new()
        // Short connection timeouts and a bounded retry: an unreachable endpoint is an error
        // in seconds (at open, by the probe), not after object_store's default three minutes.
        // A transfer itself may take long (snapshots are hundreds of MB).
        .with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
            "5s",
        )
        .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), "600s")
        .with_retry(RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: 3,
            retry_timeout: std::time::Duration::from_secs(30),
        });
    for (key, value) in profile_settings() {
        b = b.with_config(key, value);
    }
    // The environment wins over the profile, as with the AWS CLI.
    for (key, value) in std::env::vars() {
        if key.starts_with("AWS_")
            && let Ok(k) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>()
        {
            b = b.with_config(k, value);
        }
    }
    let plain = |k: AmazonS3ConfigKey| {
        b.get_config_value(&k)
            .is_some_and(|e| e.starts_with("http://"))
    };
    if plain(AmazonS3ConfigKey::Endpoint) || plain(AmazonS3ConfigKey::S3Endpoint) {
        b = b.with_allow_http(true);
    }
    let endpoint = [AmazonS3ConfigKey::Endpoint, AmazonS3ConfigKey::S3Endpoint]
        .into_iter()
        .find_map(|k| b.get_config_value(&k))
        .unwrap_or_else(|| {
            let region = b.get_config_value(&AmazonS3ConfigKey::Region);
            format!("aws:{}", region.as_deref().unwrap_or("us-east-1"))
        });
    let s3 = b
        .with_bucket_name(bucket)
        .build()
        .map_err(|e| e.to_string())?;
    let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
        Arc::new(s3)
    } else {
        Arc::new(PrefixStore::new(s3, prefix.as_str()))
    };
    Ok((store, endpoint))
}

/// What a failed probe most likely means, in front of the store's own message.
pub fn explain(e: &StorageError) -> String {
    let text = e.to_string();
    let hint = if text.contains("NoSuchBucket") {
        "the bucket does not exist"
    } else if text.contains("InvalidAccessKeyId")
        || text.contains("SignatureDoesNotMatch")
        || text.contains("AccessDenied")
        || text.contains("403")
    {
        "the credentials were refused (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the profile)"
    } else if text.contains("error sending request") || text.contains("connect") {
        "the endpoint cannot be reached (check AWS_ENDPOINT_URL and the network)"
    } else if text.contains("credential") {
        "no credentials were found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
    } else {
        return text;
    };
    format!("{hint}: {text}")
}

/// Keys, region and endpoint of the shared AWS profile, for whatever the environment leaves
/// unset. A missing or unreadable file is no profile.
fn profile_settings() -> Vec<(AmazonS3ConfigKey, String)> {
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let file = |var: &str, name: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws").join(name)))
    };
    let mut out = Vec::new();
    let read = |path: Option<PathBuf>, section: &str| {
        path.and_then(|p| ini::Ini::load_from_file(p).ok())
            .and_then(|ini| ini.section(Some(section)).cloned())
    };
    if let Some(creds) = read(file("AWS_SHARED_CREDENTIALS_FILE", "credentials"), &profile) {
        for (name, key) in [
            ("aws_access_key_id", AmazonS3ConfigKey::AccessKeyId),
            ("aws_secret_access_key", AmazonS3ConfigKey::SecretAccessKey),
            ("aws_session_token", AmazonS3ConfigKey::Token),
        ] {
            if let Some(v) = creds.get(name) {
                out.push((key, v.to_owned()));
            }
        }
    }
    // In `config`, profiles other than the default are `[profile NAME]`.
    let section = if profile == "default" {
        profile.clone()
    } else {
        format!("profile {profile}")
    };
    if let Some(cfg) = read(file("AWS_CONFIG_FILE", "config"), &section) {
        for (name, key) in [
            ("region", AmazonS3ConfigKey::Region),
            ("endpoint_url", AmazonS3ConfigKey::Endpoint),
        ] {
            if let Some(v) = cfg.get(name) {
                out.push((key, v.to_owned()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_need_a_bucket() {
        assert!(open("s3:///prefix").is_err());
        assert!(open("s3://bucket/some/prefix").is_ok());
    }

    #[test]
    fn hints_name_the_likely_cause() {
        let e = |m: &str| StorageError::Store {
            op: "creating",
            key: "k".into(),
            root: "s3://b".into(),
            message: m.into(),
        };
        assert!(explain(&e("<Code>NoSuchBucket</Code>")).starts_with("the bucket does not exist"));
        assert!(explain(&e("InvalidAccessKeyId")).starts_with("the credentials were refused"));
        assert_eq!(explain(&e("other")), "creating k in s3://b: other");
    }
}
