//! Connections: the accept loop with its limits (connections in all and per client address, a
//! deadline for a request's header and for a TLS handshake), TLS through rustls, and the count
//! of what each client address holds.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::extract::ConnectInfo;
use axum::{Extension, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

use super::api::Limits;

/// Counts what each client address holds (connections, or requests in flight) against a limit
/// per address.
#[derive(Debug, Default)]
pub struct PerClient {
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// One unit held by a client address, given back when dropped.
#[derive(Debug)]
pub struct ClientSlot {
    owner: Arc<PerClient>,
    client: IpAddr,
}

impl PerClient {
    /// Takes one unit for the client at `ip`, unless it holds `limit` already.
    pub fn try_take(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<ClientSlot> {
        let client = client_key(ip);
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = held.entry(client).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            owner: Arc::clone(self),
            client,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut held = self
            .owner
            .held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = held.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.client);
            }
        }
    }
}

/// The address that counts as one client: IPv4 addresses as they are, IPv6 by their /64 (one
/// host usually has a whole /64 to pick from).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

/// The TLS side of `--tls-cert`/`--tls-key`: a certificate chain and its private key, PEM.
pub fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| {
            format!(
                "reading the certificate chain {} (--tls-cert wants PEM)",
                cert.display()
            )
        })?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{} holds no PEM certificate (--tls-cert wants the chain, server certificate first)",
        cert.display()
    );
    let private_key = PrivateKeyDer::from_pem_file(key).with_context(|| {
        format!(
            "reading the private key {} (--tls-key wants a PEM key: PKCS#8, PKCS#1 or SEC1)",
            key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("setting up TLS")?
        .with_no_client_auth()
        .with_single_cert(certs, private_key)
        .with_context(|| {
            format!(
                "{} and {} do not make a certificate and its key",
                cert.display(),
                key.display()
            )
        })?;
    // The server speaks HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `app` on `listener` until `shutdown` completes, within the connection limits of
/// `limits`; over TLS when `tls` is given. Connections over a limit are closed at once.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &Limits,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let per_client = Arc::new(PerClient::default());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = std::future::poll_fn(|cx| {
            if shutdown.as_mut().poll(cx).is_ready() {
                return std::task::Poll::Ready(None);
            }
            listener.poll_accept(cx).map(Some)
        })
        .await;
        let (stream, peer) = match accepted {
            None => return Ok(()),
            Some(Ok(accepted)) => accepted,
            // Out of file descriptors, or a connection reset before it was accepted: wait a
            // little rather than spin.
            Some(Err(_)) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Ok(connection) = Arc::clone(&connections).try_acquire_owned() else {
            continue;
        };
        let Some(client) = per_client.try_take(peer.ip(), limits.per_client) else {
            continue;
        };
        let app = app.clone();
        let tls = tls.clone();
        let header_timeout = limits.header_timeout;
        tokio::spawn(async move {
            let _held = (connection, client);
            connection_task(stream, peer, app, tls, header_timeout).await;
        });
    }
}

async fn connection_task(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    tls: Option<TlsAcceptor>,
    header_timeout: Duration,
) {
    let _ = stream.set_nodelay(true);
    // The handlers read the client's address as axum's `ConnectInfo`.
    let service = TowerToHyperService::new(app.layer(Extension(ConnectInfo(peer))));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    match tls {
        None => {
            let _ = http.serve_connection(TokioIo::new(stream), service).await;
        }
        Some(acceptor) => {
            let Ok(Ok(stream)) =
                // A handshake has as long as a request's header.
                tokio::time::timeout(header_timeout, acceptor.accept(stream)).await
            else {
                return;
            };
            let _ = http.serve_connection(TokioIo::new(stream), service).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_hold_at_most_their_limit_and_give_back() {
        let clients = Arc::new(PerClient::default());
        let a: IpAddr = "127.0.0.2".parse().expect("ip");
        let b: IpAddr = "127.0.0.3".parse().expect("ip");
        let first = clients.try_take(a, 2).expect("one");
        let second = clients.try_take(a, 2).expect("two");
        assert!(clients.try_take(a, 2).is_none(), "a third over the limit");
        assert!(clients.try_take(b, 2).is_some(), "another address");
        drop(first);
        assert!(clients.try_take(a, 2).is_some(), "a place given back");
        drop(second);
    }

    #[test]
    fn an_ipv6_client_is_its_64() {
        let one: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let other: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("ip");
        assert_eq!(client_key(one), client_key(other));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        assert_eq!(
            client_key(mapped),
            "10.0.0.1".parse::<IpAddr>().expect("ip")
        );
    }
}
