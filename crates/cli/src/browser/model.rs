//! `model.json`: what the page needs to know of its models and runtime. Each model's input side,
//! class names and preprocessing are read from the exported ONNX model's own `metadata_props`
//! (`dexpression_model::onnx::keys`), so that the page reads what any other runtime reads.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use dexpression_model::onnx::{self, keys};
use onnx_protobuf::{Message, ModelProto};
use serde::Serialize;

use super::runtime::{Package, MODULE_FILE};
use super::RUNTIME_FOLDER;

/// The content of `model.json`.
#[derive(Debug, Clone, Serialize)]
pub struct PageConfig {
    /// What wrote it (`dexpression <version>`); `export --web` replaces only folders it wrote.
    pub generator: String,
    /// The runtime the page loads.
    pub runtime: RuntimeInfo,
    /// The models, the first shown first.
    pub models: Vec<PageModel>,
    /// Whether `serve` serves the page (it then links to the server's page and may download the
    /// runtime on request).
    pub served: bool,
}

/// The runtime as the page sees it.
#[derive(Debug, Clone, Serialize)]
pub struct RuntimeInfo {
    /// The npm package.
    pub package: String,
    /// Its release.
    pub version: String,
    /// Its tarball's npm integrity (sha512).
    pub integrity: String,
    /// The module the page imports, relative to the page.
    pub module: String,
    /// Whether its files are there.
    pub state: RuntimeState,
    /// Why not, or what is happening, for people.
    pub message: Option<String>,
}

/// Whether the runtime's files can be loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeState {
    /// They are there.
    Ready,
    /// Not downloaded yet (a server asks before it downloads).
    Missing,
    /// Being downloaded.
    Fetching,
    /// Downloading or checking them failed.
    Failed,
}

impl RuntimeInfo {
    /// The runtime of `package`, in `state`.
    pub fn new(package: &Package, state: RuntimeState, message: Option<String>) -> Self {
        RuntimeInfo {
            package: package.name.clone(),
            version: package.version.clone(),
            integrity: package.integrity.clone(),
            module: format!("{RUNTIME_FOLDER}/{MODULE_FILE}"),
            state,
            message,
        }
    }
}

/// One model as the page sees it.
#[derive(Debug, Clone, Serialize)]
pub struct PageModel {
    /// For people.
    pub name: String,
    /// The ONNX file, relative to the page; `None` when the model cannot run in the browser.
    pub onnx: Option<String>,
    /// The graph's input.
    pub input: String,
    /// The graph's output of class probabilities.
    pub output: String,
    /// The side of the square input, from the metadata.
    pub input_side: usize,
    /// The class names in output order, from the metadata.
    pub class_names: Vec<String>,
    /// How an image becomes the input, from the metadata (`dexpression_model::onnx::Preprocessing`).
    pub preprocessing: serde_json::Value,
    /// Why the model cannot run in the browser, when it cannot.
    pub error: Option<String>,
}

impl PageModel {
    /// A model the page lists but cannot run, with the reason.
    pub fn unavailable(
        name: &str,
        input_side: usize,
        class_names: &[String],
        error: String,
    ) -> Self {
        PageModel {
            name: name.to_string(),
            onnx: None,
            input: onnx::INPUT.to_string(),
            output: onnx::PROBABILITIES.to_string(),
            input_side,
            class_names: class_names.to_vec(),
            preprocessing: serde_json::Value::Null,
            error: Some(error),
        }
    }
}

/// The page's description of an exported model (the bytes of an ONNX file), found at `url`
/// relative to the page. Fails when the model lacks what the page needs: the input and output it
/// runs, and the class names, input side and preprocessing in its metadata.
pub fn describe(onnx_bytes: &[u8], name: &str, url: &str) -> anyhow::Result<PageModel> {
    let model = ModelProto::parse_from_bytes(onnx_bytes).context("not an ONNX model")?;
    let metadata: BTreeMap<&str, &str> = model
        .metadata_props
        .iter()
        .map(|entry| (entry.key.as_str(), entry.value.as_str()))
        .collect();
    let entry = |key: &str| {
        metadata.get(key).copied().with_context(|| {
            format!("the model's metadata has no `{key}` (export it with `cargo xtask export`)")
        })
    };
    let class_names: Vec<String> = serde_json::from_str(entry(keys::CLASS_NAMES)?)
        .with_context(|| format!("`{}` is not a JSON list of names", keys::CLASS_NAMES))?;
    let input_side: usize = entry(keys::INPUT_SIDE)?
        .trim()
        .parse()
        .with_context(|| format!("`{}` is not a number", keys::INPUT_SIDE))?;
    let preprocessing: onnx::Preprocessing = serde_json::from_str(entry(keys::PREPROCESSING)?)
        .with_context(|| format!("`{}` is not the preprocessing object", keys::PREPROCESSING))?;
    if preprocessing.side != input_side {
        bail!(
            "the metadata's input side ({input_side}) and preprocessing side ({}) differ",
            preprocessing.side
        );
    }
    let graph = model.graph.as_ref().context("the model has no graph")?;
    if !graph.input.iter().any(|input| input.name == onnx::INPUT) {
        bail!("the model has no input `{}`", onnx::INPUT);
    }
    if !graph
        .output
        .iter()
        .any(|output| output.name == onnx::PROBABILITIES)
    {
        bail!("the model has no output `{}`", onnx::PROBABILITIES);
    }
    Ok(PageModel {
        name: name.to_string(),
        onnx: Some(url.to_string()),
        input: onnx::INPUT.to_string(),
        output: onnx::PROBABILITIES.to_string(),
        input_side,
        class_names,
        preprocessing: serde_json::to_value(&preprocessing)?,
        error: None,
    })
}

/// `dexpression <version>`, what [`PageConfig::generator`] holds.
pub fn generator() -> String {
    format!("dexpression {}", env!("CARGO_PKG_VERSION"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dexpression_model::candle_core::Device;
    use dexpression_model::{Dexpression, DexpressionConfig};

    fn exported(side: usize) -> Vec<u8> {
        let network =
            Dexpression::new(DexpressionConfig::with(3, side), 5, &Device::Cpu).expect("network");
        network
            .to_onnx(&onnx::ExportOptions {
                opset: onnx::DEFAULT_OPSET,
                class_names: vec!["pain".into(), "no_pain".into(), "other".into()],
                class_names_source: "test".into(),
                input_side_source: "test".into(),
                metadata: BTreeMap::new(),
            })
            .expect("onnx")
    }

    #[test]
    fn the_description_comes_from_the_models_metadata() {
        let described = describe(&exported(48), "small", "model.onnx").expect("described");
        assert_eq!(described.input_side, 48);
        assert_eq!(described.class_names, ["pain", "no_pain", "other"]);
        assert_eq!(described.onnx.as_deref(), Some("model.onnx"));
        assert_eq!(described.input, "input");
        assert_eq!(described.output, "probabilities");
        assert_eq!(described.preprocessing["side"], 48);
        assert_eq!(described.preprocessing["divide_by"], 255.0);
        assert!(described.preprocessing["resize"]
            .as_str()
            .is_some_and(|resize| resize.starts_with("Catmull-Rom")));
    }

    #[test]
    fn a_model_without_our_metadata_is_refused_by_name() {
        let mut model = ModelProto::parse_from_bytes(&exported(48)).expect("parsed");
        model
            .metadata_props
            .retain(|entry| entry.key != keys::CLASS_NAMES);
        let bytes = model.write_to_bytes().expect("encoded");
        let error = describe(&bytes, "small", "model.onnx").expect_err("refused");
        assert!(error.to_string().contains(keys::CLASS_NAMES), "{error}");
        assert!(describe(b"not a model", "x", "x.onnx").is_err());
    }
}
