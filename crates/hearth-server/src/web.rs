//! The web dashboard: static assets built from `web/` (TypeScript, bundled by esbuild in
//! `scripts/build.sh`) and embedded into the binary, so one `hearth` file serves the API
//! and the dashboard. Without a build, a page saying how to build it takes its place.
//!
//! Every answer carries a strict Content-Security-Policy: scripts, styles, fonts and
//! connections only from this origin (nothing from a CDN), no framing, no plugins.
//! Assets are immutable under their content-hashed names; `index.html` is revalidated
//! (ETag) so a new binary's dashboard is picked up at the next load.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use rust_embed::Embed;

use crate::error::ApiError;

#[derive(Embed)]
#[folder = "$HEARTH_WEB_DIR"]
struct Assets;

/// Whether this binary embeds the built dashboard (not the placeholder).
pub const BUILT: bool = matches!(env!("HEARTH_WEB_BUILT").as_bytes(), b"1");

/// `style-src 'unsafe-inline'`: the terminal (xterm.js) writes its theme and cell
/// metrics into `<style>` elements it creates at run time. Scripts stay `'self'` only.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    img-src 'self' data:; font-src 'self'; connect-src 'self'; manifest-src 'self'; \
    base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/assets/{*file}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers, "no-cache")
}

async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    serve(
        &format!("assets/{file}"),
        &headers,
        "public, max-age=31536000, immutable",
    )
}

fn serve(path: &str, headers: &HeaderMap, cache: &'static str) -> Response {
    // Only names the build put in the binary exist: nothing here reads the filesystem.
    let Some(file) = Assets::get(path) else {
        return ApiError::not_found(format!("no dashboard asset {path}")).into_response();
    };
    let etag = format!("\"{}\"", hex::encode(file.metadata.sha256_hash()));
    let mut out = HeaderMap::new();
    let mime = file.metadata.mimetype();
    // Our text assets are UTF-8 (esbuild writes UTF-8): say so rather than have it sniffed.
    let mime = if mime.starts_with("text/") || mime.ends_with("javascript") {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_string()
    };
    if let Ok(v) = HeaderValue::from_str(&mime) {
        out.insert(header::CONTENT_TYPE, v);
    }
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    out.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    out.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    out.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    out.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if let Ok(v) = HeaderValue::from_str(&etag) {
        out.insert(header::ETAG, v);
    }
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if fresh {
        return (StatusCode::NOT_MODIFIED, out).into_response();
    }
    (out, file.data.into_owned()).into_response()
}
