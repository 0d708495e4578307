//! The web console: the files under `control-plane/console/`, embedded in the binary when it
//! is built (no Node, no build step, nothing fetched from another host), served under
//! `/console/` with a Content-Security-Policy that allows only this origin's own scripts and
//! styles and no string-to-HTML sink at all. The console is a client of the REST API like
//! the CLI: it holds its bearer token in the tab and sends it in the `Authorization` header,
//! so it has no authority of its own and a cross-site request carries none.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use std::sync::OnceLock;

/// The policy every console response carries.
///
/// - `default-src 'none'`: nothing loads unless a directive below allows it;
/// - `script-src 'self'`, `style-src 'self'`: only the embedded files, no inline code or
///   styles, no `eval`;
/// - `connect-src 'self'`: the page talks to this control plane alone;
/// - `require-trusted-types-for 'script'` with `trusted-types 'none'`: the browser refuses
///   every assignment of a string to an HTML sink (`innerHTML` and the like), so an
///   untrusted name can only ever become text;
/// - `frame-ancestors 'none'`, `base-uri 'none'`, `form-action 'none'`: no framing for
///   clickjacking, no base-tag or form redirection.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; font-src 'none'; object-src 'none'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'; \
     require-trusted-types-for 'script'; trusted-types 'none'";

/// One embedded file.
struct Asset {
    /// Its path under `console/`.
    path: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $content_type:literal) => {
        Asset {
            path: $path,
            content_type: $content_type,
            bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/console/", $path)),
        }
    };
}

/// Every file of the console (a test checks this list against the directory).
const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("api.js", "text/javascript; charset=utf-8"),
    asset!("dom.js", "text/javascript; charset=utf-8"),
    asset!("pages/sign-in.js", "text/javascript; charset=utf-8"),
    asset!("pages/overview.js", "text/javascript; charset=utf-8"),
    asset!("pages/devices.js", "text/javascript; charset=utf-8"),
    asset!("pages/people.js", "text/javascript; charset=utf-8"),
    asset!("pages/workloads.js", "text/javascript; charset=utf-8"),
    asset!("pages/jobs.js", "text/javascript; charset=utf-8"),
    asset!("pages/credits.js", "text/javascript; charset=utf-8"),
    asset!("pages/audit.js", "text/javascript; charset=utf-8"),
    asset!("pages/playground.js", "text/javascript; charset=utf-8"),
];

/// Each asset's entity tag: its BLAKE3, so a browser revalidates and never runs a stale file
/// after an upgrade.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| format!("\"{}\"", &blake3::hash(a.bytes).to_hex()[..32]))
            .collect()
    })
}

/// The console's routes: `/` and `/console` lead to `/console/`, which serves the page.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console/") }))
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route("/console/", get(|headers: HeaderMap| async move { serve("index.html", &headers) }))
        .route(
            "/console/{*path}",
            get(|Path(path): Path<String>, headers: HeaderMap| async move { serve(&path, &headers) }),
        )
}

fn serve(path: &str, request: &HeaderMap) -> Response {
    let Some(index) = ASSETS.iter().position(|a| a.path == path) else {
        return with_policy((StatusCode::NOT_FOUND, "no such console file\n").into_response());
    };
    let asset = &ASSETS[index];
    let etag = &etags()[index];
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.bytes).into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, HeaderValue::from_str(etag).expect("hex etag"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    with_policy(response)
}

/// Add the console's security headers to `response`.
fn with_policy(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file under `console/` is embedded, and every embedded file exists: a new page
    /// cannot be forgotten in the list.
    #[test]
    fn every_console_file_is_embedded() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("console");
        let mut on_disk = Vec::new();
        let mut dirs = vec![root.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    let relative = path.strip_prefix(&root).unwrap();
                    on_disk.push(relative.to_string_lossy().replace('\\', "/"));
                }
            }
        }
        on_disk.sort();
        let mut listed: Vec<String> = ASSETS.iter().map(|a| a.path.to_string()).collect();
        listed.sort();
        assert_eq!(on_disk, listed);
    }

    /// No console file carries inline script, inline handlers or an HTML-parsing sink, which
    /// the policy would block anyway: this finds them before a browser does.
    #[test]
    fn no_inline_script_or_html_sinks() {
        for asset in ASSETS {
            let text = std::str::from_utf8(asset.bytes).unwrap();
            for banned in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
                "new Function",
                " onclick=\"",
                " onerror=",
                " style=\"",
            ] {
                assert!(!text.contains(banned), "{} contains {banned}", asset.path);
            }
            if asset.path.ends_with(".html") {
                for script in text.match_indices("<script") {
                    let tag = &text[script.0..text[script.0..].find('>').unwrap() + script.0];
                    assert!(tag.contains(" src="), "{}: an inline script", asset.path);
                }
            }
        }
    }
}
