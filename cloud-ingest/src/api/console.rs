//! The web console's assets, embedded in the binary and served at `/` on the API's own
//! address: plain HTML, CSS and an ES module (`cloud-ingest/console/`), no build step. Every
//! answer carries a strict Content-Security-Policy (scripts and styles from this origin only,
//! no inline script, no framing) and `nosniff`.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("../../console/index.html");
const ASSETS: [(&str, &str, &str); 2] = [
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../console/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../console/style.css"),
    ),
];

/// The policy: this origin's scripts, styles and API, nothing inline, never in a frame.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn page(content_type: &'static str, body: &'static str, cache: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    r
}

/// `/`: the console's page (signing in happens in the page, with a token).
pub async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX, "no-cache")
}

/// `/console/{file}`: a script or a stylesheet.
pub async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => page(content_type, body, "public, max-age=300"),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}
