//! The HTTP side: routes, the page's embedded assets, the limits, and JSON errors.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use super::models::{ModelInfo, ModelSet};
use super::worker::{Job, Queue};

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// What the server accepts and how much work it takes on at once.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest upload in bytes.
    pub max_upload: usize,
    /// Largest image side in pixels.
    pub max_side: u32,
    /// Most bytes the decoder may allocate for one image.
    pub max_decoded_bytes: u64,
    /// Most faces classified in one image (the best detections).
    pub max_faces: usize,
    /// Shorter side of the copy of an image the face detector searches (see
    /// `detect_face_inputs`): faces under a fifth of the image's shorter side are not found.
    pub detection_side: u32,
    /// Longest a request may take, upload included.
    pub timeout: Duration,
    /// Inferences at once.
    pub workers: usize,
    /// Requests waiting for an inference.
    pub queue: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_upload: 10 * 1024 * 1024,
            max_side: 4096,
            max_decoded_bytes: 4096 * 4096 * 4,
            max_faces: 16,
            detection_side: 240,
            timeout: Duration::from_secs(10),
            workers: 1,
            queue: 64,
        }
    }
}

/// An error answered as `{"error": "..."}` with a status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    /// 413: the upload or image is too large.
    pub fn too_large(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: message.into(),
        }
    }

    /// 415: not an image format the server reads.
    pub fn unsupported() -> Self {
        ApiError {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            message: "not a PNG or JPEG image".into(),
        }
    }

    /// 503: every place in the queue is taken.
    pub fn busy() -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message:
                "the server is busy: every place in the inference queue is taken; try again shortly"
                    .into(),
        }
    }

    /// 500: our fault.
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
        }
    }

    /// 500 from the network.
    pub fn inference(err: dexpression_model::Error) -> Self {
        Self::internal(format!("inference failed: {err}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

struct AppState {
    models: Arc<ModelSet>,
    queue: Queue,
    /// Requests past the door of `/api/predict`: the workers' and the queue's places. Taken
    /// before the body is read, so that memory for uploads is bounded too.
    admitted: Semaphore,
    max_upload: usize,
}

/// Serves until Ctrl-C.
pub async fn serve(
    listener: tokio::net::TcpListener,
    models: ModelSet,
    limits: Limits,
) -> anyhow::Result<()> {
    axum::serve(listener, router(models, limits)?)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// The routes with their limits.
pub fn router(models: ModelSet, limits: Limits) -> std::io::Result<Router> {
    let models = Arc::new(models);
    let state = Arc::new(AppState {
        queue: Queue::start(Arc::clone(&models), &limits)?,
        admitted: Semaphore::new(limits.workers + limits.queue),
        models,
        max_upload: limits.max_upload,
    });
    let timeout = limits.timeout;
    let router = Router::new()
        .route("/", get(|| async { Html(INDEX_HTML) }))
        .route(
            "/app.js",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    APP_JS,
                )
            }),
        )
        .route(
            "/style.css",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
                    STYLE_CSS,
                )
            }),
        )
        .route("/api/model", get(model_info))
        .route("/api/predict", post(predict))
        .fallback(|| async {
            ApiError {
                status: StatusCode::NOT_FOUND,
                message: "no such page".into(),
            }
        })
        .layer(DefaultBodyLimit::max(limits.max_upload))
        .layer(axum::middleware::from_fn(
            move |request: Request, next: Next| async move {
                match tokio::time::timeout(timeout, next.run(request)).await {
                    Ok(response) => response,
                    Err(_) => ApiError {
                        status: StatusCode::REQUEST_TIMEOUT,
                        message: format!("the request took longer than {} s", timeout.as_secs()),
                    }
                    .into_response(),
                }
            },
        ))
        .with_state(state);
    Ok(router)
}

#[derive(Deserialize)]
struct ModelQuery {
    model: Option<usize>,
}

#[derive(Serialize)]
struct ModelAnswer<'a> {
    #[serde(flatten)]
    selected: &'a ModelInfo,
    /// Every model the server offers.
    models: Vec<&'a ModelInfo>,
}

async fn model_info(
    State(state): State<Arc<AppState>>,
    query: Result<Query<ModelQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(query) = query.map_err(|err| ApiError::bad_request(err.body_text()))?;
    let selected = pick_model(&state.models, query.model)?;
    let answer = ModelAnswer {
        selected,
        models: state
            .models
            .models
            .iter()
            .map(|model| &model.info)
            .collect(),
    };
    serde_json::to_value(answer)
        .map(Json)
        .map_err(|err| ApiError::internal(err.to_string()))
}

fn pick_model(models: &ModelSet, id: Option<usize>) -> Result<&ModelInfo, ApiError> {
    let id = id.unwrap_or(0);
    models
        .models
        .get(id)
        .map(|model| &model.info)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "no model {id}: the server has {} (see GET /api/model)",
                models.models.len()
            ))
        })
}

#[derive(Deserialize)]
struct PredictQuery {
    model: Option<usize>,
    #[serde(default)]
    heatmap: bool,
    #[serde(default)]
    whole_image: bool,
}

async fn predict(
    State(state): State<Arc<AppState>>,
    query: Result<Query<PredictQuery>, axum::extract::rejection::QueryRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|err| ApiError::bad_request(err.body_text()))?;
    let model = pick_model(&state.models, query.model)?.id;
    let _admitted = state.admitted.try_acquire().map_err(|_| ApiError::busy())?;
    let bytes = upload_bytes(request, state.max_upload).await?;
    let (reply, answer) = tokio::sync::oneshot::channel();
    state.queue.submit(Job {
        bytes,
        model,
        heatmap: query.heatmap,
        whole_image: query.whole_image,
        reply,
    })?;
    let prediction = answer
        .await
        .map_err(|_| ApiError::internal("the inference worker stopped"))??;
    Ok(Json(prediction).into_response())
}

/// The image of a request: the first file of a multipart form, else the whole body.
async fn upload_bytes(request: Request, max_upload: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::too_large(format!(
            "the upload is larger than {} MiB",
            max_upload / (1024 * 1024)
        ))
    };
    let is_multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("multipart/form-data"));
    if is_multipart {
        let mut form = Multipart::from_request(request, &())
            .await
            .map_err(|err| ApiError::bad_request(err.body_text()))?;
        let multipart_error = |err: axum::extract::multipart::MultipartError| {
            if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large()
            } else {
                ApiError::bad_request(format!("malformed multipart form: {}", err.body_text()))
            }
        };
        while let Some(field) = form.next_field().await.map_err(multipart_error)? {
            let is_image = field.file_name().is_some() || field.name() == Some("image");
            if is_image {
                // The file name is never used: nothing a client sends reaches the file system.
                return field.bytes().await.map_err(multipart_error);
            }
        }
        return Err(ApiError::bad_request(
            "the form has no file field: send the image as a file (e.g. curl -F image=@face.jpg)",
        ));
    }
    Bytes::from_request(request, &()).await.map_err(|err| {
        if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            ApiError::bad_request(err.body_text())
        }
    })
}
