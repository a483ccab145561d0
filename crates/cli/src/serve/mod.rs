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
mod load;
#[cfg(feature = "serve")]
mod models;
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
        /// network.
        #[arg(long, default_value = "127.0.0.1")]
        host: IpAddr,
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
    }

    pub fn run(args: Args) -> anyhow::Result<()> {
        let device = dexpression_model::parse_device(&args.device)?;
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
            if !bound.ip().is_loopback() {
                eprintln!("warning: listening on {bound}, reachable from other machines");
            }
            // Tests and scripts read this line for the port.
            println!("listening on http://{bound}/");
            api::serve(listener, models, limits).await
        })
    }
}

#[cfg(not(feature = "serve"))]
mod relay {
    pub use crate::relay::Args;

    pub fn run(args: Args) -> anyhow::Result<()> {
        crate::relay::run_with_feature("serve", "serve", "a minute or two", args)
    }
}
