//! `/local/`: the page that classifies in the browser (see [`crate::browser`]), with the server's
//! models as ONNX and onnxruntime-web from the cache.
//!
//! The server downloads onnxruntime-web only when the page asks it to (a button, which sends
//! `POST /local/runtime`), never at start: a server may have no network, and a user who never
//! opens the page never waits for 35 MB. Each model is exported to ONNX on the first request for
//! the page's `model.json` and kept in memory.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::Bytes;
use axum::extract::{FromRef, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dexpression_model::onnx::{self, ExportOptions};

use super::api::ApiError;
use super::models::{ModelSet, ServedModel};
use crate::browser::model::{self, PageConfig, PageModel, RuntimeInfo, RuntimeState};
use crate::browser::runtime::{self, Access, Package, Runtime, RuntimeError};
use crate::browser::{self as page, MODEL_JSON, PAGE_FILES};

/// Where the page's runtime comes from.
#[derive(Debug, Clone)]
pub struct RuntimeSource {
    /// The release and its address.
    pub package: Package,
    /// The cache folder; `None` when there is none (no home folder and no `--cache`).
    pub cache: Option<PathBuf>,
}

impl RuntimeSource {
    /// The pinned release, cached in `cache` or the user's cache folder.
    pub fn new(cache: Option<PathBuf>) -> Self {
        RuntimeSource {
            package: Package::onnxruntime_web(),
            cache: cache.or_else(runtime::default_cache_dir),
        }
    }
}

/// The page's state, as the router's state hands it to the page's routes.
#[derive(Clone)]
pub struct Shared(pub Arc<LocalPage>);

/// The page's state on the server.
pub struct LocalPage {
    source: RuntimeSource,
    runtime: Mutex<Slot>,
    models: Arc<ModelSet>,
    /// Each model as ONNX with its description, or why it cannot be exported.
    exported: Vec<OnceLock<Result<(Bytes, PageModel), String>>>,
}

/// Where the runtime stands.
#[derive(Clone)]
enum Slot {
    /// The cache has not been looked at yet.
    Unchecked,
    /// Not in the cache; the page may ask for a download.
    Missing(String),
    /// A download is running.
    Fetching,
    /// Checked and unpacked.
    Ready(Arc<ServedRuntime>),
    /// Checking or downloading failed; the page may ask again.
    Failed(String),
}

/// The runtime's files, ready to send.
struct ServedRuntime {
    files: Vec<(String, Bytes)>,
}

impl LocalPage {
    /// The page for `models`, its runtime from `source`.
    pub fn new(models: Arc<ModelSet>, source: RuntimeSource) -> Self {
        let exported = models.models.iter().map(|_| OnceLock::new()).collect();
        LocalPage {
            source,
            runtime: Mutex::new(Slot::Unchecked),
            models,
            exported,
        }
    }

    fn slot(&self) -> Slot {
        self.runtime
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn set(&self, slot: Slot) {
        *self
            .runtime
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = slot;
    }

    /// Looks in the cache once (checking the tarball's checksum), unless that was done.
    fn check_cache(&self) {
        if !matches!(self.slot(), Slot::Unchecked) {
            return;
        }
        let slot = self.load(Access::CacheOnly);
        let mut current = self
            .runtime
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // A download started meanwhile wins.
        if matches!(*current, Slot::Unchecked) {
            *current = slot;
        }
    }

    fn load(&self, access: Access) -> Slot {
        let Some(cache) = &self.source.cache else {
            return Slot::Failed(
                "the server has no cache folder for onnxruntime-web (no home folder): start it with --cache DIR".into(),
            );
        };
        match runtime::obtain(&self.source.package, cache, access) {
            Ok(found) => {
                if found.downloaded {
                    eprintln!(
                        "onnxruntime-web {}: downloaded and checked, cached in {}",
                        found.package.version,
                        found.tarball.display()
                    );
                }
                Slot::Ready(Arc::new(served(found)))
            }
            Err(RuntimeError::NotCached { .. }) => Slot::Missing(format!(
                "The server has not downloaded {} {} yet (about 35 MB from {}, once; its checksum is checked).",
                self.source.package.name, self.source.package.version, self.source.package.url
            )),
            Err(err) => {
                eprintln!("the in-browser page's runtime: {err}");
                Slot::Failed(err.to_string())
            }
        }
    }

    fn runtime_info(&self) -> RuntimeInfo {
        let (state, message) = match self.slot() {
            Slot::Ready(_) => (RuntimeState::Ready, None),
            Slot::Unchecked => (RuntimeState::Missing, None),
            Slot::Missing(message) => (RuntimeState::Missing, Some(message)),
            Slot::Fetching => (
                RuntimeState::Fetching,
                Some("The server is downloading onnxruntime-web.".into()),
            ),
            Slot::Failed(message) => (RuntimeState::Failed, Some(message)),
        };
        RuntimeInfo::new(&self.source.package, state, message)
    }

    /// The model `id` as ONNX with its description, exported on first use.
    fn exported(&self, id: usize) -> Option<&Result<(Bytes, PageModel), String>> {
        let served = self.models.models.get(id)?;
        Some(self.exported.get(id)?.get_or_init(|| export(served, id)))
    }
}

fn served(found: Runtime) -> ServedRuntime {
    ServedRuntime {
        files: found
            .files
            .into_iter()
            .map(|file| (file.name, Bytes::from(file.bytes)))
            .collect(),
    }
}

/// A served model as ONNX, described from the bytes as `export --web` describes its file.
fn export(served: &ServedModel, id: usize) -> Result<(Bytes, PageModel), String> {
    let classifier = &served.classifier;
    let options = ExportOptions {
        opset: onnx::DEFAULT_OPSET,
        class_names: classifier.class_names().to_vec(),
        class_names_source: if classifier.names_recorded() {
            "recorded in the weights file's metadata".into()
        } else {
            "not recorded in the weights file: the port's names for this class count".into()
        },
        input_side_source: "the side the server loaded the weights at".into(),
        metadata: Default::default(),
    };
    let bytes = classifier
        .network()
        .to_onnx(&options)
        .map_err(|err| format!("this model cannot run in the browser: {err}"))?;
    let described = model::describe(&bytes, &served.info.name, &format!("models/{id}.onnx"))
        .map_err(|err| format!("this model cannot run in the browser: {err:#}"))?;
    Ok((Bytes::from(bytes), described))
}

/// The routes under `/local`, for a router whose state gives the page.
pub fn routes<S>() -> Router<S>
where
    Shared: FromRef<S>,
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/local", get(|| async { Redirect::permanent("/local/") }))
        .route(
            "/local/",
            get(|| async { file_response("index.html", page::INDEX_HTML) }),
        )
        .route("/local/{file}", get(page_file))
        .route("/local/models/{file}", get(model_file))
        .route("/local/ort/{file}", get(runtime_file))
        .route("/local/runtime", post(fetch_runtime))
}

fn file_response(name: &str, body: impl Into<Bytes>) -> Response {
    (
        [(header::CONTENT_TYPE, page::content_type(name))],
        body.into(),
    )
        .into_response()
}

fn not_found(what: &str) -> ApiError {
    ApiError::with_status(StatusCode::NOT_FOUND, format!("no such file: {what}"))
}

async fn page_file(
    State(Shared(local)): State<Shared>,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    if file == MODEL_JSON {
        let config = tokio::task::spawn_blocking(move || page_config(&local))
            .await
            .map_err(|_| ApiError::internal("describing the models failed"))?;
        return Ok(Json(config).into_response());
    }
    PAGE_FILES
        .iter()
        .find(|(name, _)| *name == file)
        .map(|(name, content)| file_response(name, *content))
        .ok_or_else(|| not_found(&file))
}

fn page_config(local: &LocalPage) -> PageConfig {
    local.check_cache();
    let models = local
        .models
        .models
        .iter()
        .enumerate()
        .map(|(id, served)| match local.exported(id) {
            Some(Ok((_, described))) => described.clone(),
            Some(Err(error)) => PageModel::unavailable(
                &served.info.name,
                served.info.input_side,
                &served.info.classes,
                error.clone(),
            ),
            None => PageModel::unavailable(
                &served.info.name,
                served.info.input_side,
                &served.info.classes,
                "not exported".into(),
            ),
        })
        .collect();
    PageConfig {
        generator: model::generator(),
        runtime: local.runtime_info(),
        models,
        served: true,
    }
}

async fn model_file(
    State(Shared(local)): State<Shared>,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    let id: usize = file
        .strip_suffix(".onnx")
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| not_found(&file))?;
    let exported = tokio::task::spawn_blocking(move || local.exported(id).cloned())
        .await
        .map_err(|_| ApiError::internal("exporting the model failed"))?;
    match exported {
        None => Err(not_found(&file)),
        Some(Err(error)) => Err(ApiError::with_status(StatusCode::CONFLICT, error)),
        Some(Ok((bytes, _))) => Ok(file_response(&file, bytes)),
    }
}

async fn runtime_file(
    State(Shared(local)): State<Shared>,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    if !local.source.package.files.contains(&file) {
        return Err(not_found(&file));
    }
    let ready = {
        let local = Arc::clone(&local);
        tokio::task::spawn_blocking(move || {
            local.check_cache();
            local.slot()
        })
        .await
        .map_err(|_| ApiError::internal("reading the runtime failed"))?
    };
    let Slot::Ready(runtime) = ready else {
        return Err(ApiError::with_status(
            StatusCode::SERVICE_UNAVAILABLE,
            local
                .runtime_info()
                .message
                .unwrap_or_else(|| "onnxruntime-web is not ready".into()),
        ));
    };
    runtime
        .files
        .iter()
        .find(|(name, _)| *name == file)
        .map(|(name, bytes)| file_response(name, bytes.clone()))
        .ok_or_else(|| not_found(&file))
}

/// Starts the download the page asked for (when the runtime is missing or failed) and answers
/// with where the runtime stands; the page polls `model.json` until it is ready.
async fn fetch_runtime(State(Shared(local)): State<Shared>) -> Json<RuntimeInfo> {
    let start = {
        let mut slot = local
            .runtime
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let start = matches!(*slot, Slot::Unchecked | Slot::Missing(_) | Slot::Failed(_));
        if start {
            *slot = Slot::Fetching;
        }
        start
    };
    if start {
        let fetching = Arc::clone(&local);
        // A thread of its own: a download may take longer than any request may.
        std::thread::spawn(move || {
            let slot = fetching.load(Access::Download);
            fetching.set(slot);
        });
    }
    Json(local.runtime_info())
}
