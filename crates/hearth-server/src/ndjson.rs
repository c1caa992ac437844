//! Streaming of long operations as ndjson (see [`hearth_api`] for the line format).

use std::future::Future;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hearth_node::Progress;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::error::ApiError;
use hearth_api::{StreamLine, NDJSON};

/// Runs `op` in its own task and streams its progress, then its outcome.
///
/// The operation runs to completion even if the client goes away, so a disconnect never
/// leaves a half-made workspace behind.
pub fn stream<T, F, Fut>(op: F) -> Response
where
    T: Serialize + Send + 'static,
    F: FnOnce(Progress) -> Fut,
    Fut: Future<Output = Result<T, ApiError>> + Send + 'static,
{
    let (ptx, mut prx) = mpsc::unbounded_channel::<String>();
    let (otx, mut orx) = mpsc::channel::<Bytes>(32);
    let mut task = tokio::spawn(op(ptx));
    tokio::spawn(async move {
        let send = |line: Vec<u8>| {
            let otx = otx.clone();
            async move {
                // A closed receiver means the client left; keep going silently.
                let _ = otx.send(Bytes::from(line)).await;
            }
        };
        let outcome = loop {
            tokio::select! {
                biased;
                Some(p) = prx.recv() => send(StreamLine::<()>::Progress(p).encode()).await,
                res = &mut task => break res,
            }
        };
        while let Ok(p) = prx.try_recv() {
            send(StreamLine::<()>::Progress(p).encode()).await;
        }
        let last = match outcome {
            Ok(Ok(v)) => StreamLine::Result(v).encode(),
            Ok(Err(e)) => StreamLine::<()>::Error(e.info()).encode(),
            Err(join) => {
                tracing::error!(error = ?join.to_string(), "operation task failed");
                StreamLine::<()>::Error(
                    ApiError::internal(format!("operation failed: {join}")).info(),
                )
                .encode()
            }
        };
        send(last).await;
    });
    let body = futures_util::stream::poll_fn(move |cx| {
        orx.poll_recv(cx)
            .map(|o| o.map(Ok::<_, std::convert::Infallible>))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, NDJSON)],
        Body::from_stream(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_api::ErrorInfo;
    use http_body_util::BodyExt;

    async fn lines(resp: Response) -> Vec<StreamLine<serde_json::Value>> {
        assert_eq!(resp.headers()[header::CONTENT_TYPE], NDJSON);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(body.ends_with(b"\n"));
        body.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn progress_then_one_result() {
        let resp = stream(|p| async move {
            for i in 0..3 {
                p.send(format!("step {i}")).unwrap();
                tokio::task::yield_now().await;
            }
            Ok(serde_json::json!({"done": true}))
        });
        let got = lines(resp).await;
        assert_eq!(
            got,
            vec![
                StreamLine::Progress("step 0".into()),
                StreamLine::Progress("step 1".into()),
                StreamLine::Progress("step 2".into()),
                StreamLine::Result(serde_json::json!({"done": true})),
            ]
        );
    }

    #[tokio::test]
    async fn error_ends_the_stream() {
        let resp = stream(|p| async move {
            p.send("trying".into()).unwrap();
            Err::<(), _>(ApiError::conflict("taken"))
        });
        let got = lines(resp).await;
        assert_eq!(
            got,
            vec![
                StreamLine::Progress("trying".into()),
                StreamLine::Error(ErrorInfo {
                    code: "conflict".into(),
                    message: "taken".into()
                }),
            ]
        );
    }
}
