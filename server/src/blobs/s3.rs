//! Blobs in an S3 bucket (AWS or any S3-compatible server), via `aws-sdk-s3`.
//!
//! A blob is the S3 object `<prefix>blobs/<id>`. Bodies are streamed: up to one part
//! (`part_size`, default 8 MiB) is buffered; a body that fits is one `PutObject`, a larger
//! one a multipart upload (aborted on any failure, so an interrupted upload never becomes
//! an object). The sweeper also aborts multipart uploads a crash left behind.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use super::{Blobs, ByteStream, Error, Stored, valid_id};
use crate::config::S3Config;

pub struct S3Blobs {
    client: Client,
    bucket: String,
    prefix: String,
    part_size: usize,
    presign_downloads: bool,
}

fn s3_error(e: impl std::fmt::Display) -> Error {
    Error::Io(format!("S3: {e}"))
}

impl S3Blobs {
    /// A client for `config`, with credentials from the standard AWS variables.
    pub fn new(config: &S3Config) -> anyhow::Result<S3Blobs> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let (Some(key), Some(secret)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY"))
        else {
            anyhow::bail!("S3 storage needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY");
        };
        let credentials =
            Credentials::new(key, secret, var("AWS_SESSION_TOKEN"), None, "environment");
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .credentials_provider(credentials)
            .force_path_style(config.path_style)
            .http_client(http);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        Ok(S3Blobs {
            client: Client::from_conf(builder.build()),
            bucket: config.bucket.clone(),
            prefix: config.prefix.clone(),
            part_size: config.part_size,
            presign_downloads: config.presign_downloads,
        })
    }

    fn key(&self, id: &str) -> Result<String, Error> {
        if !valid_id(id) {
            return Err(Error::Io("BUG: invalid blob id".into()));
        }
        Ok(format!("{}blobs/{id}", self.prefix))
    }

    /// Checks the bucket is reachable (at start).
    pub async fn check(&self) -> anyhow::Result<()> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "S3 bucket `{}` is not reachable: {}",
                    self.bucket,
                    aws_sdk_s3::error::DisplayErrorContext(e)
                )
            })?;
        Ok(())
    }

    async fn multipart(
        &self,
        key: &str,
        first: Bytes,
        body: &mut ByteStream<'_>,
        limit: u64,
        hasher: &mut Sha256,
        size: &mut u64,
    ) -> Result<(), Error> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| s3_error(aws_sdk_s3::error::DisplayErrorContext(e)))?;
        let upload_id = created.upload_id().unwrap_or_default().to_owned();
        let result = async {
            let mut parts = Vec::new();
            let mut pending = Some(first);
            let mut buffer = BytesMut::with_capacity(self.part_size);
            let mut ended = false;
            while let Some(part) = pending.take() {
                let number = i32::try_from(parts.len() + 1).unwrap_or(i32::MAX);
                let done = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .body(S3Body::from(part))
                    .send()
                    .await
                    .map_err(|e| s3_error(aws_sdk_s3::error::DisplayErrorContext(e)))?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(done.e_tag().map(str::to_owned))
                        .build(),
                );
                if ended {
                    break;
                }
                ended = fill(body, &mut buffer, self.part_size, limit, hasher, size).await?;
                if !buffer.is_empty() {
                    pending = Some(buffer.split().freeze());
                }
            }
            self.client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| s3_error(aws_sdk_s3::error::DisplayErrorContext(e)))?;
            Ok(())
        }
        .await;
        if result.is_err() {
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }
}

/// Reads `body` into `buffer` until it holds `part_size` bytes or the body ends (true),
/// counting and hashing; past `limit` bytes in all, `TooLarge`.
async fn fill(
    body: &mut ByteStream<'_>,
    buffer: &mut BytesMut,
    part_size: usize,
    limit: u64,
    hasher: &mut Sha256,
    size: &mut u64,
) -> Result<bool, Error> {
    while buffer.len() < part_size {
        let Some(chunk) = body.next().await else {
            return Ok(true);
        };
        let chunk = chunk.map_err(|e| Error::Body(e.to_string()))?;
        *size += chunk.len() as u64;
        if *size > limit {
            return Err(Error::TooLarge { limit });
        }
        hasher.update(&chunk);
        buffer.extend_from_slice(&chunk);
    }
    Ok(false)
}

#[async_trait]
impl Blobs for S3Blobs {
    async fn put(&self, id: &str, mut body: ByteStream<'_>, limit: u64) -> Result<Stored, Error> {
        let key = self.key(id)?;
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        let mut buffer = BytesMut::with_capacity(self.part_size.min(1 << 20));
        let ended = fill(
            &mut body,
            &mut buffer,
            self.part_size,
            limit,
            &mut hasher,
            &mut size,
        )
        .await?;
        if ended {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&key)
                .body(S3Body::from(buffer.freeze()))
                .send()
                .await
                .map_err(|e| s3_error(aws_sdk_s3::error::DisplayErrorContext(e)))?;
        } else {
            self.multipart(
                &key,
                buffer.freeze(),
                &mut body,
                limit,
                &mut hasher,
                &mut size,
            )
            .await?;
        }
        Ok(Stored {
            size,
            sha256: hex::encode(hasher.finalize()),
        })
    }

    async fn get(&self, id: &str, start: u64, len: u64) -> Result<ByteStream<'static>, Error> {
        if len == 0 {
            return Ok(Box::pin(futures_util::stream::empty()));
        }
        let output = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(id)?)
            .range(format!("bytes={start}-{}", start + len - 1))
            .send()
            .await
            .map_err(|e| {
                if e.as_service_error().is_some_and(|s| s.is_no_such_key()) {
                    Error::NotFound
                } else {
                    s3_error(aws_sdk_s3::error::DisplayErrorContext(e))
                }
            })?;
        let reader = output.body.into_async_read();
        Ok(Box::pin(tokio_util::io::ReaderStream::with_capacity(
            reader,
            64 * 1024,
        )))
    }

    async fn delete(&self, id: &str) -> Result<(), Error> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.key(id)?)
            .send()
            .await
            .map_err(|e| s3_error(aws_sdk_s3::error::DisplayErrorContext(e)))?;
        Ok(())
    }

    async fn list(&self) -> Result<Vec<(String, SystemTime)>, Error> {
        let prefix = format!("{}blobs/", self.prefix);
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| s3_error(aws_sdk_s3::error::DisplayErrorContext(e)))?;
            for object in page.contents() {
                let Some(id) = object.key().and_then(|k| k.strip_prefix(&prefix)) else {
                    continue;
                };
                let written = object
                    .last_modified()
                    .and_then(|t| SystemTime::try_from(*t).ok())
                    .unwrap_or(SystemTime::now());
                if valid_id(id) {
                    out.push((id.to_owned(), written));
                }
            }
        }
        Ok(out)
    }

    async fn sweep_temp(&self, before: SystemTime) -> Result<u64, Error> {
        let uploads = self
            .client
            .list_multipart_uploads()
            .bucket(&self.bucket)
            .prefix(format!("{}blobs/", self.prefix))
            .send()
            .await;
        let uploads = match uploads {
            Ok(u) => u,
            // Some S3-compatible servers do not list uploads; their own expiry applies.
            Err(e) if e.code() == Some("NotImplemented") => return Ok(0),
            Err(e) => return Err(s3_error(aws_sdk_s3::error::DisplayErrorContext(e))),
        };
        let mut aborted = 0;
        for upload in uploads.uploads() {
            let started = upload
                .initiated()
                .and_then(|t| SystemTime::try_from(*t).ok())
                .unwrap_or(SystemTime::now());
            if started < before
                && let (Some(key), Some(id)) = (upload.key(), upload.upload_id())
            {
                let _ = self
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(id)
                    .send()
                    .await;
                aborted += 1;
            }
        }
        Ok(aborted)
    }

    async fn presign_get(
        &self,
        id: &str,
        ttl: Duration,
        content_type: &str,
        disposition: &str,
    ) -> Result<Option<String>, Error> {
        if !self.presign_downloads {
            return Ok(None);
        }
        let config = aws_sdk_s3::presigning::PresigningConfig::expires_in(ttl).map_err(s3_error)?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(id)?)
            .response_content_type(content_type)
            .response_content_disposition(disposition)
            .presigned(config)
            .await
            .map_err(|e| s3_error(aws_sdk_s3::error::DisplayErrorContext(e)))?;
        Ok(Some(request.uri().to_owned()))
    }
}
