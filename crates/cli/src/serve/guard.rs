//! Who may use the server: the `Host` a request names, the `Origin` of state-changing requests,
//! CORS for origins the user allowed, the token, and the security headers on every answer.
//!
//! Jupyter's server is the model: a page on another site must not be able to use the server
//! through the user's browser (by a cross-site form POST, or by rebinding its own name to
//! 127.0.0.1 and reading the answers as same-origin), and a server reachable from the network
//! must not answer anyone who lacks the token it printed at start.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::api::ApiError;

/// The environment variable that gives the token when `--token` does not.
pub const TOKEN_VARIABLE: &str = "DEXPRESSION_TOKEN";

/// The Content-Security-Policy of every answer, one directive a line. The page loads its script
/// and style sheet from the server only, draws uploads from `blob:` URLs and heat maps from
/// `data:` URLs, and talks to the API only; nothing inline, nothing from elsewhere, no framing.
///
/// `'wasm-unsafe-eval'` lets the in-browser page (`/local/`) compile ONNX Runtime Web's
/// WebAssembly, and nothing else: JavaScript `eval` stays refused. No `worker-src`: the page runs
/// the runtime single-threaded in the page itself (`numThreads = 1`, no proxy worker), so it
/// starts no worker, and `default-src 'none'` refuses any.
pub const CONTENT_SECURITY_POLICY: &[(&str, &str)] = &[
    ("default-src", "'none'"),
    ("script-src", "'self' 'wasm-unsafe-eval'"),
    ("style-src", "'self'"),
    ("img-src", "'self' data: blob:"),
    ("media-src", "'self' blob: mediastream:"),
    ("connect-src", "'self'"),
    ("base-uri", "'none'"),
    ("form-action", "'none'"),
    ("frame-ancestors", "'none'"),
];

/// The policy as one header value.
pub fn content_security_policy() -> String {
    CONTENT_SECURITY_POLICY
        .iter()
        .map(|(directive, sources)| format!("{directive} {sources}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Which hosts, origins and credentials the server accepts.
#[derive(Debug, Clone)]
pub struct Access {
    /// Names accepted in `Host` besides the listening address (lower case).
    hosts: Vec<String>,
    /// Any `Host` at all (`--allow-host '*'`).
    any_host: bool,
    /// The address the server listens on.
    bound: SocketAddr,
    /// Origins (`scheme://host[:port]`, lower case) allowed to call the API from their pages.
    origins: Vec<String>,
    /// Any origin (`--allow-origin '*'`).
    any_origin: bool,
    /// The token, when one is needed.
    token: Option<String>,
    /// Whether the server speaks TLS (the token cookie is then `Secure`).
    tls: bool,
}

impl Access {
    /// The access rules of a server listening on `bound`: `Host` must name that address (or
    /// `localhost` on a loopback address, or any address when it listens on all of them) or one
    /// of `allow_hosts` (`*` for any); cross-origin calls only from `allow_origins` (`*` for
    /// any); `token`, when given, in every request.
    pub fn new(
        bound: SocketAddr,
        allow_hosts: &[String],
        allow_origins: &[String],
        token: Option<String>,
        tls: bool,
    ) -> Self {
        let lower = |values: &[String]| -> Vec<String> {
            values
                .iter()
                .map(|value| value.trim().trim_end_matches('/').to_ascii_lowercase())
                .collect()
        };
        let hosts = lower(allow_hosts);
        let origins = lower(allow_origins);
        Access {
            any_host: hosts.iter().any(|host| host == "*"),
            any_origin: origins.iter().any(|origin| origin == "*"),
            hosts,
            origins,
            bound,
            token,
            tls,
        }
    }

    /// The rules of a loopback server without a token (the load test's).
    pub fn local(bound: SocketAddr) -> Self {
        Self::new(bound, &[], &[], None, false)
    }

    /// The name of the token cookie: one per port, since browsers share cookies between the
    /// ports of a host and two servers must not overwrite each other's.
    fn cookie_name(&self) -> String {
        format!("dexpression-token-{}", self.bound.port())
    }

    /// Whether `host` (a `Host` header's host, without port) names this server.
    fn host_allowed(&self, host: &str) -> bool {
        if self.any_host {
            return true;
        }
        let host = host.to_ascii_lowercase();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            // An address cannot be rebound: a page reaches it only by the address itself.
            return ip == self.bound.ip()
                || self.bound.ip().is_unspecified()
                || (self.bound.ip().is_loopback() && ip.is_loopback())
                || self.hosts.iter().any(|allowed| allowed == bare);
        }
        let local_name = host == "localhost" || host.ends_with(".localhost");
        (local_name && (self.bound.ip().is_loopback() || self.bound.ip().is_unspecified()))
            || self.hosts.contains(&host)
    }

    /// Whether `origin` may call the API from its pages (CORS).
    fn origin_allowed(&self, origin: &str) -> bool {
        self.any_origin || self.origins.iter().any(|allowed| allowed == origin)
    }

    /// Whether the request carries the token, as a bearer header or the cookie.
    fn has_token(&self, headers: &HeaderMap, token: &str) -> bool {
        let bearer = headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .filter_map(|value| value.strip_prefix("Bearer "))
            .any(|given| same_secret(given.trim(), token));
        let cookie_name = self.cookie_name();
        let cookie = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .any(|(name, value)| name == cookie_name && same_secret(value, token));
        bearer || cookie
    }
}

/// Compares a secret in time independent of where the two differ.
fn same_secret(given: &str, expected: &str) -> bool {
    given.as_bytes().ct_eq(expected.as_bytes()).into()
}

/// A new random token: 24 bytes from the operating system, in hex (48 characters).
pub fn generate_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes)
        .map_err(|err| anyhow::anyhow!("no random numbers for the token ({err}): pass --token"))?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// The token a server uses: `--token`, else the environment's, else (off loopback) a new one.
/// A token given on loopback is required too; none is made up there.
pub fn choose_token(given: Option<String>, host: IpAddr) -> anyhow::Result<Option<String>> {
    let given = given.or_else(|| std::env::var(TOKEN_VARIABLE).ok());
    match given {
        Some(token) if token.trim().is_empty() => anyhow::bail!(
            "the token is empty (--token or {TOKEN_VARIABLE}): give a secret, or leave both out to \
             get a generated one"
        ),
        Some(token)
            if !token
                .chars()
                .all(|c| c.is_ascii_graphic() && c != ';' && c != ',') =>
        {
            anyhow::bail!(
                "the token (--token or {TOKEN_VARIABLE}) must be printable ASCII without spaces, \
                 ';' or ',' (it travels in a header and a cookie)"
            )
        }
        Some(token) => Ok(Some(token)),
        None if host.is_loopback() => Ok(None),
        None => generate_token().map(Some),
    }
}

fn forbidden(message: String) -> Response {
    ApiError::with_status(StatusCode::FORBIDDEN, message).into_response()
}

/// The host part of a request's authority (its URI's, else its `Host` header's).
fn request_host(request: &Request) -> Option<String> {
    if let Some(authority) = request.uri().authority() {
        return Some(authority.as_str().to_string());
    }
    let value = request.headers().get(header::HOST)?.to_str().ok()?;
    Some(value.to_string())
}

/// `host[:port]` without the port.
fn without_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority
            .find(']')
            .map_or(authority, |end| &authority[..=end]);
    }
    authority.split(':').next().unwrap_or(authority)
}

/// The checks of every request, in order: `Host`, then `Origin` (with CORS), then the token.
pub async fn check(access: Arc<Access>, request: Request, next: Next) -> Response {
    let Some(authority) = request_host(&request) else {
        return forbidden(
            "the request has no Host header; send one naming the server's address".into(),
        );
    };
    if !access.host_allowed(without_port(&authority)) {
        return forbidden(format!(
            "this server does not answer to the host name '{}': use its address, or start it \
             with --allow-host {}",
            without_port(&authority),
            without_port(&authority)
        ));
    }
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|value| value.to_str().ok())
        .map(|value| value.trim_end_matches('/').to_ascii_lowercase());
    // Same origin: the page's origin names the host the request went to. The scheme is not
    // compared, so that a proxy in front that speaks TLS does not make the page foreign.
    let same_origin = origin.as_deref().is_some_and(|origin| {
        origin
            .split_once("://")
            .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(&authority))
    });
    let cross_origin = origin
        .as_deref()
        .filter(|_| !same_origin)
        .map(|origin| (origin, access.origin_allowed(origin)));
    if request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        return match cross_origin {
            Some((origin, true)) => preflight(origin),
            _ => forbidden(
                "cross-origin requests are refused: start the server with --allow-origin \
                 ORIGIN to allow a site's pages to call it"
                    .into(),
            ),
        };
    }
    let reads_only = matches!(*request.method(), Method::GET | Method::HEAD);
    if let Some((origin, false)) = cross_origin {
        if !reads_only {
            return forbidden(format!(
                "requests from pages of {origin} are refused: start the server with \
                 --allow-origin {origin} to allow them"
            ));
        }
    }
    let allowed_origin = match cross_origin {
        Some((origin, true)) => HeaderValue::from_str(origin).ok(),
        _ => None,
    };
    let mut response = match &access.token {
        None => next.run(request).await,
        Some(token) => {
            if access.has_token(request.headers(), token) {
                next.run(request).await
            } else if let Some(response) = token_from_address(&access, &request, token) {
                response
            } else {
                ApiError::with_status(
                    StatusCode::UNAUTHORIZED,
                    "this server needs its token: open the address with ?token= that it printed \
                     at start, or send the header 'Authorization: Bearer TOKEN'",
                )
                .into_response()
            }
        }
    };
    if let Some(origin) = allowed_origin {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}

/// The page's address with `?token=`: when right, a cookie that carries it from now on, and a
/// redirect to the same page without it, so that the token leaves the address bar (and the
/// history) at once.
fn token_from_address(access: &Access, request: &Request, token: &str) -> Option<Response> {
    if request.method() != Method::GET {
        return None;
    }
    let given = request
        .uri()
        .query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))?;
    if !same_secret(given, token) {
        return None;
    }
    let secure = if access.tls { "; Secure" } else { "" };
    // Lax, not Strict: a Strict cookie set on a redirect that a link on another site started is
    // not sent on the redirected request. State-changing requests are guarded by `Origin` anyway.
    let cookie = format!(
        "{}={token}; Path=/; HttpOnly; SameSite=Lax{secure}",
        access.cookie_name()
    );
    let mut response = (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, request.uri().path().to_string())],
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).ok()?);
    Some(response)
}

fn preflight(origin: &str) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    if let Ok(origin) = HeaderValue::from_str(origin) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    }
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type"),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    response
}

/// The headers of every answer: the content security policy, no sniffing, no framing, no
/// referrer, and no caching (answers are predictions of private photos).
///
/// An error answer to an HTTP/1 request that carried a body also says `Connection: close`: a
/// refusal (401, 403, 413, ...) is sent without reading the upload, after which the connection
/// cannot carry another request, and a client told nothing would send its next request on it
/// and see the connection drop.
pub async fn security_headers(policy: Arc<HeaderValue>, request: Request, next: Next) -> Response {
    let carries_body = request.version() < axum::http::Version::HTTP_2
        && (request.headers().contains_key(header::TRANSFER_ENCODING)
            || request
                .headers()
                .get(header::CONTENT_LENGTH)
                .is_some_and(|length| length.as_bytes() != b"0"));
    let mut response = next.run(request).await;
    let status = response.status();
    let headers = response.headers_mut();
    if carries_body && (status.is_client_error() || status.is_server_error()) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let fixed: [(HeaderName, HeaderValue); 5] = [
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::clone(&policy)),
    ];
    for (name, value) in fixed {
        headers.insert(name, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(bound: &str, hosts: &[&str]) -> Access {
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        Access::new(bound.parse().expect("address"), &hosts, &[], None, false)
    }

    #[test]
    fn hosts_are_the_listening_address_or_allowed_names() {
        let local = access("127.0.0.1:8080", &[]);
        for host in ["127.0.0.1", "localhost", "LOCALHOST", "[::1]", "127.0.0.2"] {
            assert!(local.host_allowed(host), "{host}");
        }
        for host in ["evil.example", "localhost.evil.example", "10.0.0.1", ""] {
            assert!(!local.host_allowed(host), "{host}");
        }
        let lan = access("192.168.1.5:8080", &["Faces.Example.org"]);
        assert!(lan.host_allowed("192.168.1.5"));
        assert!(lan.host_allowed("faces.example.org"));
        assert!(!lan.host_allowed("localhost"));
        assert!(!lan.host_allowed("192.168.1.6"));
        let everywhere = access("0.0.0.0:8080", &[]);
        assert!(everywhere.host_allowed("10.1.2.3"));
        assert!(!everywhere.host_allowed("rebound.example"));
        assert!(access("0.0.0.0:8080", &["*"]).host_allowed("rebound.example"));
    }

    #[test]
    fn ports_are_cut_from_hosts() {
        assert_eq!(without_port("127.0.0.1:8080"), "127.0.0.1");
        assert_eq!(without_port("[::1]:8080"), "[::1]");
        assert_eq!(without_port("localhost"), "localhost");
    }

    #[test]
    fn tokens_are_long_random_and_needed_off_loopback() {
        let (a, b) = (
            generate_token().expect("token"),
            generate_token().expect("token"),
        );
        assert_eq!(a.len(), 48);
        assert_ne!(a, b);
        let loopback: IpAddr = "127.0.0.1".parse().expect("ip");
        let network: IpAddr = "0.0.0.0".parse().expect("ip");
        if std::env::var_os(TOKEN_VARIABLE).is_none() {
            assert_eq!(choose_token(None, loopback).expect("none"), None);
            assert!(choose_token(None, network).expect("made").is_some());
        }
        assert_eq!(
            choose_token(Some("s3cret".into()), loopback).expect("given"),
            Some("s3cret".into())
        );
        assert!(choose_token(Some(" ".into()), network).is_err());
        assert!(choose_token(Some("a;b".into()), network).is_err());
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abd", "abc"));
        assert!(!same_secret("ab", "abc"));
        assert!(!same_secret("", "abc"));
    }
}
