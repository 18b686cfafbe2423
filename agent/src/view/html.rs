//! The page: style and script inline (assets/view.css, assets/view.js), the data as
//! gzip-compressed JSON in base64, which the browser inflates with its own
//! `DecompressionStream`: no request leaves the page.

use std::io::Write;

use base64::Engine;
use flate2::{Compression, write::GzEncoder};

use super::data::View;

const CSS: &str = include_str!("assets/view.css");
const JS: &str = include_str!("assets/view.js");

/// The whole page for `view`. `live` is the URL the page polls for fresh data (served
/// by the agent), `None` for a file.
pub fn page(view: &View, live: Option<&str>) -> String {
    let json = serde_json::to_vec(view).expect("the view serializes");
    let mut gz = GzEncoder::new(Vec::new(), Compression::new(6));
    gz.write_all(&json).expect("writing to memory");
    let data = base64::engine::general_purpose::STANDARD
        .encode(gz.finish().expect("compressing in memory"));
    let title = escape(&format!("nodepulse: {} ({})", view.node, view.source));
    let live = live.map(escape).unwrap_or_default();
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title><style>{CSS}</style></head>\n\
         <body data-live=\"{live}\"><div id=\"app\"><p id=\"loading\">Loading…</p></div>\
         <pre id=\"errors\"></pre>\n\
         <script id=\"data\" type=\"application/octet-stream\">{data}</script>\n\
         <script>{JS}</script></body></html>\n"
    )
}

/// Text for HTML attributes and elements.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
