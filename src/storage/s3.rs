//! S3 and S3-compatible servers (MinIO, s3s, moto) through `object_store`'s `AmazonS3`.
//!
//! Configuration is the standard environment: `AWS_ENDPOINT_URL`, `AWS_REGION`,
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_ALLOW_HTTP`,
//! `AWS_VIRTUAL_HOSTED_STYLE_REQUEST` (path style unless set), and on ECS the task role through
//! `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` (or `AWS_CONTAINER_CREDENTIALS_FULL_URI` with
//! `AWS_CONTAINER_AUTHORIZATION_TOKEN[_FILE]`). Requests are retried with exponential backoff on
//! throttling, 5xx and connection errors: `MLPIPE_STORAGE_RETRIES` times (default 10) within
//! `MLPIPE_STORAGE_RETRY_TIMEOUT` (default `3m`). Conditional puts use `If-None-Match` /
//! `If-Match`, which S3, MinIO and s3s honour.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder, AwsCredential};
use object_store::{BackoffConfig, CredentialProvider, RetryConfig};
use url::Url;

use crate::error::{Error, Result};

/// Where the ECS agent serves task credentials; `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` is a path
/// on it. `MLPIPE_CONTAINER_CREDENTIALS_HOST` replaces it (ECS emulators, tests).
const ECS_CREDENTIALS_HOST: &str = "http://169.254.170.2";
/// Credentials are renewed this long before they expire.
const RENEW_BEFORE: Duration = Duration::from_secs(5 * 60);

/// The store for an `s3://bucket/prefix` URL, configured from the environment.
pub fn open(url: &Url) -> Result<AmazonS3> {
    let mut b = AmazonS3Builder::from_env()
        .with_url(url.as_str())
        .with_retry(retry_config()?);
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
        if let Some(p) = ContainerCredentials::from_env()? {
            b = b.with_credentials(Arc::new(p));
        }
    }
    b.build().map_err(|e| {
        Error::Usage(format!(
            "cannot open {url}: {e}; S3 is configured by AWS_REGION, AWS_ENDPOINT_URL, \
             AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or a task role) and AWS_ALLOW_HTTP"
        ))
    })
}

/// Retries: `MLPIPE_STORAGE_RETRIES` (default 10) within `MLPIPE_STORAGE_RETRY_TIMEOUT` (default 3m).
pub fn retry_config() -> Result<RetryConfig> {
    let mut r = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(15),
            base: 2.0,
        },
        ..Default::default()
    };
    if let Ok(v) = std::env::var("MLPIPE_STORAGE_RETRIES") {
        r.max_retries = v.trim().parse().map_err(|_| {
            Error::Usage(format!(
                "MLPIPE_STORAGE_RETRIES must be a whole number of retries, got `{v}`"
            ))
        })?;
    }
    if let Ok(v) = std::env::var("MLPIPE_STORAGE_RETRY_TIMEOUT") {
        r.retry_timeout = crate::time::parse_duration(&v).ok_or_else(|| {
            Error::Usage(format!(
                "MLPIPE_STORAGE_RETRY_TIMEOUT must be a duration such as `30s` or `3m`, got `{v}`"
            ))
        })?;
    }
    Ok(r)
}

/// The ECS (and generic container) credentials provider, as the AWS SDKs implement it: a JSON
/// document `{AccessKeyId, SecretAccessKey, Token, Expiration}` fetched over HTTP, cached until
/// five minutes before it expires.
#[derive(Debug)]
pub struct ContainerCredentials {
    url: String,
    token: Option<TokenSource>,
    client: reqwest::Client,
    cache: tokio::sync::Mutex<Option<(Arc<AwsCredential>, Option<chrono::DateTime<chrono::Utc>>)>>,
}

#[derive(Debug)]
enum TokenSource {
    Value(String),
    File(String),
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CredentialsDoc {
    access_key_id: String,
    secret_access_key: String,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    expiration: Option<String>,
}

impl ContainerCredentials {
    /// From `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` or `..._FULL_URI`; `None` when neither is set.
    pub fn from_env() -> Result<Option<Self>> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let url = if let Some(rel) = var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") {
            let host = var("MLPIPE_CONTAINER_CREDENTIALS_HOST")
                .unwrap_or_else(|| ECS_CREDENTIALS_HOST.into());
            format!(
                "{}/{}",
                host.trim_end_matches('/'),
                rel.trim_start_matches('/')
            )
        } else if let Some(full) = var("AWS_CONTAINER_CREDENTIALS_FULL_URI") {
            let u = Url::parse(&full).map_err(|e| {
                Error::Usage(format!(
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI is not a URL ({e}): `{full}`"
                ))
            })?;
            // The SDKs' rule: plain HTTP only to the container agent or this machine.
            let local = match u.host() {
                Some(url::Host::Ipv4(ip)) => ip.is_loopback() || ip.octets()[..2] == [169, 254],
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                Some(url::Host::Domain(d)) => d == "localhost",
                None => false,
            };
            if u.scheme() != "https" && !local {
                return Err(Error::Usage(format!(
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI must use https unless it points at a loopback or link-local address, got `{full}`"
                )));
            }
            full
        } else {
            return Ok(None);
        };
        let token = var("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
            .map(TokenSource::File)
            .or_else(|| var("AWS_CONTAINER_AUTHORIZATION_TOKEN").map(TokenSource::Value));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| Error::Infra(format!("HTTP client for container credentials: {e}")))?;
        Ok(Some(Self {
            url,
            token,
            client,
            cache: Default::default(),
        }))
    }

    async fn fetch(&self) -> Result<(AwsCredential, Option<chrono::DateTime<chrono::Utc>>)> {
        let fail = |why: String| {
            Error::storage(format!(
                "cannot get container credentials from {}: {why}; on ECS, check the task role (taskRoleArn) of the task definition",
                self.url
            ))
        };
        let mut req = self.client.get(&self.url);
        match &self.token {
            Some(TokenSource::Value(t)) => req = req.header("Authorization", t.trim()),
            Some(TokenSource::File(f)) => {
                let t = std::fs::read_to_string(f)
                    .map_err(|e| fail(format!("cannot read the token file {f}: {e}")))?;
                req = req.header("Authorization", t.trim());
            }
            None => {}
        }
        let mut last = String::new();
        for attempt in 0..3u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            let res = match req.try_clone().expect("GET has no body").send().await {
                Ok(r) => r,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            let status = res.status();
            let body = res.bytes().await.map_err(|e| fail(e.to_string()))?;
            if status.is_server_error() {
                last = format!("HTTP {status}");
                continue;
            }
            if !status.is_success() {
                return Err(fail(format!("HTTP {status}")));
            }
            let doc: CredentialsDoc = serde_json::from_slice(&body)
                .map_err(|e| fail(format!("not a credentials document: {e}")))?;
            let expires = match &doc.expiration {
                Some(t) => Some(
                    chrono::DateTime::parse_from_rfc3339(t)
                        .map_err(|e| fail(format!("bad Expiration `{t}`: {e}")))?
                        .to_utc(),
                ),
                None => None,
            };
            return Ok((
                AwsCredential {
                    key_id: doc.access_key_id,
                    secret_key: doc.secret_access_key,
                    token: doc.token,
                },
                expires,
            ));
        }
        Err(fail(format!("{last} (3 attempts)")))
    }
}

#[async_trait::async_trait]
impl CredentialProvider for ContainerCredentials {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        let mut cache = self.cache.lock().await;
        if let Some((c, exp)) = cache.as_ref() {
            let fresh = exp.is_none_or(|e| {
                e - chrono::Utc::now() > chrono::Duration::from_std(RENEW_BEFORE).unwrap()
            });
            if fresh {
                return Ok(c.clone());
            }
        }
        let (c, exp) = self
            .fetch()
            .await
            .map_err(|e| object_store::Error::Generic {
                store: "S3",
                source: e.to_string().into(),
            })?;
        let c = Arc::new(c);
        *cache = Some((c.clone(), exp));
        Ok(c)
    }
}
