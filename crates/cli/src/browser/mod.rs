//! The page that classifies in the browser, with no upload: photos and webcam frames are read,
//! preprocessed (in JavaScript, as the Rust pipeline does it) and classified by ONNX Runtime Web
//! inside the page; no request carries an image.
//!
//! The same page is written as a static folder by `cargo xtask export --web DIR` ([`folder`]) and
//! served under `/local/` by `cargo xtask serve`. It needs the model as ONNX, a `model.json`
//! describing it ([`model`], read from the model's own metadata) and onnxruntime-web, a pinned
//! release from the npm registry, checked against its checksum and cached ([`runtime`]).
//!
//! No face detector runs in the page: it classifies the whole image or a square the user drags
//! on it (the server's page keeps its detector). This module does no HTTP serving itself
//! (`serve::local` does) and never downloads anything unless asked to.

pub mod folder;
pub mod model;
pub mod runtime;

/// The page's HTML.
pub const INDEX_HTML: &str = include_str!("assets/index.html");
/// The page's script (an ES module).
pub const PAGE_JS: &str = include_str!("assets/page.js");
/// The preprocessing, mirroring the Rust pipeline (an ES module the page imports).
pub const PREPROCESS_JS: &str = include_str!("assets/preprocess.js");
/// The style sheet, shared with the server's page.
pub const STYLE_CSS: &str = include_str!("../serve/assets/style.css");

/// The page's description of its models and runtime, beside `index.html`.
pub const MODEL_JSON: &str = "model.json";
/// The folder, beside `index.html`, that holds the runtime's files.
pub const RUNTIME_FOLDER: &str = "ort";

/// The page's own files: name beside `index.html` and content.
pub const PAGE_FILES: [(&str, &str); 4] = [
    ("index.html", INDEX_HTML),
    ("page.js", PAGE_JS),
    ("preprocess.js", PREPROCESS_JS),
    ("style.css", STYLE_CSS),
];

/// The `Content-Type` of a file of the page, by its extension: `.wasm` must be
/// `application/wasm` for the browser to compile it while it downloads, and scripts must be
/// JavaScript for a module to load at all.
pub fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, extension)| extension) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("wasm") => "application/wasm",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_and_webassembly_get_the_types_browsers_require() {
        assert_eq!(
            content_type("ort.wasm.bundle.min.mjs"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(content_type("page.js"), "text/javascript; charset=utf-8");
        assert_eq!(
            content_type("ort-wasm-simd-threaded.wasm"),
            "application/wasm"
        );
        assert_eq!(content_type("model.onnx"), "application/octet-stream");
    }

    #[test]
    fn the_page_loads_only_its_own_files_and_the_runtime_module() {
        // Every script, style sheet and module the page names is one of its own files or the
        // runtime module, so that a static folder with these files is complete.
        let names: Vec<&str> = PAGE_FILES.iter().map(|(name, _)| *name).collect();
        for reference in ["src=\"page.js\"", "href=\"style.css\""] {
            assert!(INDEX_HTML.contains(reference), "{reference}");
        }
        assert!(PAGE_JS.contains("from \"./preprocess.js\""));
        assert!(names.contains(&"preprocess.js"));
        // The page carries its own policy, for static hosts that send none.
        assert!(INDEX_HTML.contains("http-equiv=\"Content-Security-Policy\""));
        assert!(INDEX_HTML.contains("'wasm-unsafe-eval'"));
    }
}
