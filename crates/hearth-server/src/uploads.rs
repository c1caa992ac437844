//! Image archives sent in a request body: streamed to a temporary file under the data dir,
//! never held in memory, capped in size, deleted once loaded or refused.

use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::error::ApiError;

/// Default largest upload.
pub const DEFAULT_UPLOAD_MAX: u64 = 16 << 30;

#[derive(Debug, Clone)]
pub struct Uploads {
    /// Where uploads are written while they arrive (`<data-dir>/uploads`).
    pub dir: PathBuf,
    pub max: u64,
}

/// Most of a refused upload read and thrown away before the refusal is sent.
const DRAIN_MAX: u64 = 64 << 20;
/// How long a refused upload may take to arrive before the refusal goes out anyway.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// Answers a refusal decided before the upload was read, after reading the rest of it
/// (up to [`DRAIN_MAX`] bytes or [`DRAIN_TIME`]). HTTP/1 clients such as the CLI send the
/// whole body before they read any answer; closing on them mid-body makes them report a
/// broken pipe instead of the reason (a wrong image name, a missing permission).
pub async fn refuse(body: axum::body::Body, declared: Option<u64>, err: ApiError) -> ApiError {
    if declared.is_some_and(|n| n > DRAIN_MAX) {
        return err;
    }
    let mut stream = body.into_data_stream();
    let drain = async {
        let mut total = 0u64;
        while let Some(Ok(chunk)) = stream.next().await {
            total = total.saturating_add(chunk.len() as u64);
            if total > DRAIN_MAX {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
    err
}

/// The request's declared `Content-Length`, if it has a valid one.
pub fn declared_length(headers: &axum::http::HeaderMap) -> Option<u64> {
    headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Writes `body` to a new file in `dir`; the file is deleted when the returned path drops.
pub async fn receive(
    dir: &Path,
    body: axum::body::Body,
    max: u64,
    too_large: impl Fn() -> ApiError,
) -> Result<tempfile::TempPath, ApiError> {
    let internal = |what: &str, e: std::io::Error| {
        tracing::error!(dir = %dir.display(), error = %e, "{what}");
        ApiError::internal(format!("cannot store the upload: {what}: {e}"))
    };
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| internal("create the uploads dir", e))?;
    }
    let tmp = tempfile::Builder::new()
        .prefix("upload-")
        .tempfile_in(dir)
        .map_err(|e| internal("create a temporary file", e))?;
    let (file, path) = tmp.into_parts();
    let mut file = tokio::fs::File::from_std(file);
    let mut stream = body.into_data_stream();
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::invalid(format!(
                "the upload ended early ({e}): send the whole archive"
            ))
        })?;
        total = total.saturating_add(chunk.len() as u64);
        if total > max {
            return Err(too_large());
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| internal("write", e))?;
    }
    file.flush().await.map_err(|e| internal("write", e))?;
    if total == 0 {
        return Err(ApiError::invalid(
            "empty upload: send an oci-archive or docker-archive as the request body",
        ));
    }
    Ok(path)
}
