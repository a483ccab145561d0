//! `cargo xtask serve`: a local web page and JSON API for prediction, with Grad-CAM heat maps.
//!
//! The web stack (axum on tokio) sits behind xtask's `serve` feature, so that `cargo xtask demo`
//! on a fresh clone builds without it. Without the feature, this command builds and runs xtask
//! once more with it, as `download` does (the first time takes a minute or two).
//!
//! See docs/serve.md for the API and the limits.

#[cfg(feature = "serve")]
mod api;
#[cfg(feature = "serve")]
mod guard;
#[cfg(feature = "serve")]
mod load;
#[cfg(feature = "serve")]
mod local;
#[cfg(feature = "serve")]
mod models;
#[cfg(feature = "serve")]
mod net;
#[cfg(feature = "serve")]
mod upload;
#[cfg(feature = "serve")]
mod worker;

#[cfg(feature = "serve")]
pub use app::{run, Args};

#[cfg(not(feature = "serve"))]
pub use relay::{run, Args};

#[cfg(feature = "serve")]
mod app {
    use std::net::{IpAddr, SocketAddr};
    use std::path::PathBuf;

    use anyhow::Context;

    use super::api::{self, Limits};
    use super::guard::{self, Access};
    use super::load::{self, LoadOptions};
    use super::models::ModelSet;

    /// Serve a trained model: a page for photos and the webcam, and a JSON API.
    #[derive(clap::Args)]
    pub struct Args {
        /// Safetensors weights to serve (instead of a run's folds).
        #[arg(long, conflicts_with = "run")]
        weights: Option<PathBuf>,
        /// A training output folder (or a folder of them): every fold's best weights can be
        /// chosen on the page. Default: results/demo (what `cargo xtask demo` writes), else
        /// results/.
        #[arg(long)]
        run: Option<PathBuf>,
        /// Address to listen on; anything but a loopback address exposes the server to the
        /// network, and then needs a token (see --token).
        #[arg(long, default_value = "127.0.0.1")]
        host: IpAddr,
        /// The secret every request must carry (the page gets it from the address the server
        /// prints). Default: the DEXPRESSION_TOKEN environment variable, else a random one off
        /// loopback, else none.
        #[arg(long)]
        token: Option<String>,
        /// A further name the server answers to in the Host header (repeatable; '*' for any):
        /// e.g. its DNS name, or the name a reverse proxy passes on. By default only its
        /// address (and localhost on loopback).
        #[arg(long = "allow-host", value_name = "NAME")]
        allow_hosts: Vec<String>,
        /// An origin (scheme://host[:port]) whose pages may call the API (CORS; repeatable, '*'
        /// for any). By default none: only the server's own page.
        #[arg(long = "allow-origin", value_name = "ORIGIN")]
        allow_origins: Vec<String>,
        /// PEM certificate chain to serve HTTPS with (with --tls-key).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key of --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Port to listen on (0: any free port, printed at start).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Where to run the network: auto, cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Inferences run at once; more requests wait in a queue of `--queue` places, beyond
        /// which the server answers 503.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
        workers: u16,
        /// Requests that may wait for an inference.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=4096))]
        queue: u16,
        /// Connections, and predictions in flight, one client address may hold at once.
        #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1024))]
        per_client: u16,
        /// Instead of serving, start the server on a free loopback port, send it the same
        /// photo from `--clients` clients for `--seconds`, and print latency, errors and memory.
        #[arg(long)]
        load_test: bool,
        /// Concurrent clients of the load test.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=256))]
        clients: u16,
        /// Length of the load test in seconds.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u16).range(1..=600))]
        seconds: u16,
        /// The photo of the load test (PNG or JPEG); default: a generated 640x480 photo with
        /// one face.
        #[arg(long)]
        image: Option<PathBuf>,
        /// The variant every served model must be (`port` or `paper`); without it, each as its
        /// weights record. Weights of the other variant are refused at start.
        #[arg(long, value_parser = crate::parse_variant)]
        variant: Option<dexpression_model::Variant>,
        /// Where the in-browser page (/local/) finds onnxruntime-web, which the server downloads
        /// into it when the page asks (default: dexpression in the user's cache folder, e.g.
        /// ~/.cache/dexpression).
        #[arg(long, value_name = "DIR")]
        cache: Option<PathBuf>,
    }

    pub fn run(args: Args) -> anyhow::Result<()> {
        let device = crate::open_device(&args.device)?;
        let models = ModelSet::discover(args.weights.as_deref(), args.run.as_deref(), device)?;
        if let Some(variant) = args.variant {
            for model in &models.models {
                let found = model.classifier.network().config().variant;
                if found != variant {
                    anyhow::bail!(
                        "{}: the {found} variant's weights, not the {variant} variant's; pass `--variant {found}` or serve other weights",
                        model.info.name
                    );
                }
            }
        }
        let limits = Limits {
            workers: usize::from(args.workers),
            queue: usize::from(args.queue),
            per_client: usize::from(args.per_client),
            ..Limits::default()
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            // Two threads suffice for the network side of a local server; the inferences run on
            // their own worker threads and rayon's.
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        if args.load_test {
            let options = LoadOptions {
                clients: usize::from(args.clients),
                seconds: u64::from(args.seconds),
                image: args.image,
            };
            return runtime.block_on(load::run(models, limits, options));
        }
        let token = guard::choose_token(args.token, args.host)?;
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(super::net::tls_acceptor(cert, key)?),
            _ => None,
        };
        let address = SocketAddr::new(args.host, args.port);
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| {
                    format!("listening on {address} (is another server on that port? try --port)")
                })?;
            let bound = listener.local_addr()?;
            for line in models.describe() {
                println!("{line}");
            }
            let scheme = if tls.is_some() { "https" } else { "http" };
            if !bound.ip().is_loopback() {
                eprintln!(
                    "warning: listening on {bound}, reachable from other machines{}",
                    if tls.is_some() {
                        ""
                    } else {
                        " without TLS: the token and the photos cross the network readable (see --tls-cert)"
                    }
                );
            }
            // Tests and scripts read this line for the port.
            println!("listening on {scheme}://{bound}/");
            for line in super::startup_lines(scheme, bound, token.as_deref()) {
                println!("{line}");
            }
            let access = Access::new(bound, &args.allow_hosts, &args.allow_origins, token, tls.is_some());
            let runtime = super::local::RuntimeSource::new(args.cache);
            api::serve(listener, models, limits, access, tls, runtime).await
        })
    }
}

/// How to reach the server, Jupyter-style: the address to open (with the token, which the page
/// then keeps in a cookie) and the header for scripts.
#[cfg(feature = "serve")]
fn startup_lines(scheme: &str, bound: std::net::SocketAddr, token: Option<&str>) -> Vec<String> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    // Listening on every address: the local one opens here, and the note says what else.
    let shown = match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let base = format!(
        "{scheme}://{}/",
        std::net::SocketAddr::new(shown, bound.port())
    );
    let mut lines = match token {
        None => vec![format!("open {base} in a browser")],
        Some(token) => vec![
            format!(
                "open {base}?token={token} in a browser (the page keeps the token in a cookie)"
            ),
            format!("scripts send the header 'Authorization: Bearer {token}'"),
        ],
    };
    let token_query = token.map_or(String::new(), |token| format!("?token={token}"));
    lines.push(format!(
        "{base}local/{token_query} classifies in the browser: photos and webcam frames are never uploaded"
    ));
    if bound.ip().is_unspecified() {
        lines.push(format!(
            "from other machines: this machine's address instead of {shown} (a name needs --allow-host NAME)"
        ));
    }
    lines
}

#[cfg(all(test, feature = "serve"))]
mod tests {
    #[test]
    fn the_start_up_lines_name_the_in_browser_page_with_the_token() {
        let bound = "127.0.0.1:8080".parse().expect("address");
        let lines = super::startup_lines("http", bound, Some("s3cret"));
        assert!(
            lines
                .iter()
                .any(|line| line.starts_with("http://127.0.0.1:8080/local/?token=s3cret ")),
            "{lines:?}"
        );
        let lines = super::startup_lines("http", bound, None);
        assert!(
            lines
                .iter()
                .any(|line| line.starts_with("http://127.0.0.1:8080/local/ ")),
            "{lines:?}"
        );
    }
}

#[cfg(not(feature = "serve"))]
mod relay {
    pub use crate::relay::Args;

    pub fn run(args: Args) -> anyhow::Result<()> {
        crate::relay::run_with_feature("serve", "serve", "a minute or two", args)
    }
}
