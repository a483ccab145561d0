//! The HTTP side: routes, the page's embedded assets, the limits, and JSON errors.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRef, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use super::guard::{self, Access};
use super::local::{self, LocalPage, RuntimeSource};
use super::models::{ModelInfo, ModelSet};
use super::net::PerClient;
use super::upload::{self, UploadRate};
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
    /// Uploads being read at once, in all (each up to `max_upload` bytes).
    pub max_uploads: usize,
    /// How fast an upload must arrive.
    pub upload_rate: UploadRate,
    /// Open connections, in all.
    pub max_connections: usize,
    /// Open connections, and predictions in flight, of one client address.
    pub per_client: usize,
    /// Longest a client may take to send a request's header (or to finish a TLS handshake).
    pub header_timeout: Duration,
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
            max_uploads: 64,
            upload_rate: UploadRate::default(),
            max_connections: 256,
            per_client: 32,
            header_timeout: Duration::from_secs(10),
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
    /// Any status, with its message.
    pub fn with_status(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

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

    /// 503: every upload place is taken (by clients still sending).
    pub fn uploads_busy() -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "the server is busy: it is reading as many uploads as it takes at once; try again shortly"
                .into(),
        }
    }

    /// 429: one client address has as many predictions in flight as it may.
    pub fn too_many(limit: usize) -> Self {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!(
                "your address has {limit} predictions in flight, as many as the server takes from one client; wait for their answers"
            ),
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
        if matches!(
            self.status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.status == StatusCode::REQUEST_TIMEOUT {
            // The rest of a body that came too slowly is not worth waiting for.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

struct AppState {
    models: Arc<ModelSet>,
    queue: Queue,
    /// Uploads being read: taken before the body is read, so that memory for uploads is
    /// bounded, and given back once it is.
    uploads: Semaphore,
    /// Requests with a read image: the workers' and the queue's places. Taken only once the
    /// image is read and its header checked, so that slow uploads cannot hold them.
    admitted: Semaphore,
    /// Predictions in flight per client address.
    clients: Arc<PerClient>,
    limits: Limits,
    /// The page that classifies in the browser (`/local/`).
    local: Arc<LocalPage>,
}

impl FromRef<Arc<AppState>> for local::Shared {
    fn from_ref(state: &Arc<AppState>) -> Self {
        local::Shared(Arc::clone(&state.local))
    }
}

/// Serves until Ctrl-C, over TLS when `tls` is given.
pub async fn serve(
    listener: tokio::net::TcpListener,
    models: ModelSet,
    limits: Limits,
    access: Access,
    tls: Option<tokio_rustls::TlsAcceptor>,
    runtime: RuntimeSource,
) -> anyhow::Result<()> {
    let app = router(models, limits.clone(), access, runtime)?;
    super::net::serve(listener, app, &limits, tls, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}

/// The routes with their limits and access rules; the in-browser page's runtime from `runtime`.
pub fn router(
    models: ModelSet,
    limits: Limits,
    access: Access,
    runtime: RuntimeSource,
) -> std::io::Result<Router> {
    let models = Arc::new(models);
    let state = Arc::new(AppState {
        local: Arc::new(LocalPage::new(Arc::clone(&models), runtime)),
        queue: Queue::start(Arc::clone(&models), &limits)?,
        uploads: Semaphore::new(limits.max_uploads),
        admitted: Semaphore::new(limits.workers + limits.queue),
        clients: Arc::default(),
        models,
        limits: limits.clone(),
    });
    let timeout = limits.timeout;
    let access = Arc::new(access);
    let policy = Arc::new(
        HeaderValue::from_str(&guard::content_security_policy())
            .map_err(|err| std::io::Error::other(format!("the content security policy: {err}")))?,
    );
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
        .merge(local::routes())
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
        .layer(axum::middleware::from_fn(
            move |request: Request, next: Next| guard::check(Arc::clone(&access), request, next),
        ))
        .layer(axum::middleware::from_fn(
            move |request: Request, next: Next| {
                guard::security_headers(Arc::clone(&policy), request, next)
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
    let limits = &state.limits;
    // Without a client address (a router served without `net::serve`), only the global limits.
    let _client = match request.extensions().get::<ConnectInfo<SocketAddr>>() {
        Some(ConnectInfo(peer)) => Some(
            state
                .clients
                .try_take(peer.ip(), limits.per_client)
                .ok_or_else(|| ApiError::too_many(limits.per_client))?,
        ),
        None => None,
    };
    let bytes = {
        let _uploading = state
            .uploads
            .try_acquire()
            .map_err(|_| ApiError::uploads_busy())?;
        upload::read_image(request, limits).await?
    };
    let _admitted = state.admitted.try_acquire().map_err(|_| ApiError::busy())?;
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
