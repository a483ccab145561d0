//! Reading an upload before it may wait for an inference: the body under its own bounds (size,
//! and a minimum rate after a short grace, so that a client trickling bytes is cut off within
//! seconds), the image out of a multipart form, and its header checked (a PNG or JPEG within the
//! side limit), so that only a readable image takes a place in the inference queue.

use std::io::Cursor;
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{header, StatusCode};

use super::api::{ApiError, Limits};

/// How fast an upload must arrive, after a grace for the first bytes.
#[derive(Debug, Clone, Copy)]
pub struct UploadRate {
    /// Bytes a second, on average since the upload began, once the grace is over.
    pub min_bytes_per_second: u64,
    /// Time an upload has before the rate counts.
    pub grace: Duration,
}

impl Default for UploadRate {
    fn default() -> Self {
        UploadRate {
            // 64 KiB/s: a 10 MiB upload over a slow link, not a byte a second.
            min_bytes_per_second: 64 * 1024,
            grace: Duration::from_secs(2),
        }
    }
}

fn too_large(max_upload: usize) -> ApiError {
    ApiError::too_large(format!(
        "the upload is larger than {} MiB",
        max_upload / (1024 * 1024)
    ))
}

/// The image of a request (the first file of a multipart form, else the whole body), read under
/// the size and rate limits and with its header checked.
pub async fn read_image(request: Request, limits: &Limits) -> Result<Bytes, ApiError> {
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limits.max_upload as u64) {
        return Err(too_large(limits.max_upload));
    }
    let body = read_body(body, limits.max_upload, limits.upload_rate).await?;
    let is_multipart = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("multipart/form-data"));
    let image = if is_multipart {
        from_form(
            Request::from_parts(parts, Body::from(body)),
            limits.max_upload,
        )
        .await?
    } else {
        body
    };
    check_header(&image, limits)?;
    Ok(image)
}

/// The whole body, as long as it keeps to the size and the rate.
async fn read_body(mut body: Body, max_upload: usize, rate: UploadRate) -> Result<Bytes, ApiError> {
    let started = tokio::time::Instant::now();
    // Grown as bytes arrive, never from the client's claimed length.
    let mut received: Vec<u8> = Vec::new();
    loop {
        // The moment the average rate would fall below the minimum if nothing more came.
        let allowed = Duration::from_secs_f64(
            received.len() as f64 / rate.min_bytes_per_second.max(1) as f64,
        );
        let deadline = started + rate.grace + allowed;
        let frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx));
        let frame = match tokio::time::timeout_at(deadline, frame).await {
            Ok(frame) => frame,
            Err(_) => {
                return Err(ApiError::with_status(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the upload is too slow: {} bytes in {:.1} s, under {} KiB/s",
                        received.len(),
                        started.elapsed().as_secs_f64(),
                        rate.min_bytes_per_second / 1024
                    ),
                ))
            }
        };
        match frame {
            None => break,
            Some(Err(err)) => {
                return Err(ApiError::bad_request(format!(
                    "the upload broke off: {err}"
                )))
            }
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if received.len() + data.len() > max_upload {
                        return Err(too_large(max_upload));
                    }
                    received.extend_from_slice(&data);
                }
            }
        }
    }
    Ok(Bytes::from(received))
}

/// The first file field (or field named `image`) of a form already read.
async fn from_form(request: Request, max_upload: usize) -> Result<Bytes, ApiError> {
    let mut form = Multipart::from_request(request, &())
        .await
        .map_err(|err| ApiError::bad_request(err.body_text()))?;
    let multipart_error = |err: axum::extract::multipart::MultipartError| {
        if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large(max_upload)
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
    Err(ApiError::bad_request(
        "the form has no file field: send the image as a file (e.g. curl -F image=@face.jpg)",
    ))
}

/// The image's format and size from its header, before it may take a place in the queue (the
/// worker decodes it under the same limits).
fn check_header(bytes: &[u8], limits: &Limits) -> Result<(), ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "the upload is empty: send a PNG or JPEG image",
        ));
    }
    let reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|_| ApiError::bad_request("cannot read the upload"))?;
    if reader.format().is_none() {
        return Err(ApiError::unsupported());
    }
    let (width, height) = reader.into_dimensions().map_err(|err| match err {
        image::ImageError::Unsupported(_) => ApiError::unsupported(),
        other => ApiError::bad_request(format!("cannot decode the image: {other}")),
    })?;
    if width.max(height) > limits.max_side {
        return Err(ApiError::too_large(format!(
            "the image is larger than the server accepts ({} pixels a side at most)",
            limits.max_side
        )));
    }
    Ok(())
}
