//! A TCP listener whose connections a handler can cut: the mechanism behind commit-then-drop.
//!
//! Each accepted stream carries a kill switch that is also handed to the handler as connect info
//! ([`ConnHandle`]). Once a handler flips it, the stream refuses every further read and write, so
//! hyper abandons the connection and the client sees it close without any response bytes. Nothing
//! else about the connection is changed.
//!
//! With TLS ([`KillableListener::with_tls`]) the switch sits above the TLS session: once it is
//! flipped no plaintext reaches rustls, so no response record is ever encrypted or sent. TLS
//! handshakes run in their own tasks, so a slow or failing client never holds up the others; a
//! connection is handed to the server only once its handshake has succeeded.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

type Handshake = (SocketAddr, io::Result<TlsStream<TcpStream>>);

/// Listener wrapper producing [`KillableStream`]s, over plain TCP or TLS.
#[derive(Debug)]
pub struct KillableListener {
    inner: TcpListener,
    tls: Option<TlsAccept>,
}

/// TLS configuration and the handshakes in progress.
#[derive(Debug)]
struct TlsAccept {
    config: Arc<rustls::ServerConfig>,
    handshakes: JoinSet<Handshake>,
}

impl KillableListener {
    /// Wraps a bound listener (plain TCP).
    pub fn new(inner: TcpListener) -> Self {
        KillableListener { inner, tls: None }
    }

    /// Wraps a bound listener and serves TLS with `config` on it.
    pub fn with_tls(inner: TcpListener, config: Arc<rustls::ServerConfig>) -> Self {
        KillableListener {
            inner,
            tls: Some(TlsAccept {
                config,
                handshakes: JoinSet::new(),
            }),
        }
    }
}

impl Listener for KillableListener {
    type Io = KillableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let KillableListener { inner, tls } = self;
        let Some(tls) = tls else {
            let (stream, addr) = Listener::accept(inner).await;
            let _ = stream.set_nodelay(true);
            return (KillableStream::new(Transport::Plain(stream)), addr);
        };
        // Both branches are cancel-safe: a dropped accept loses no connection and no handshake.
        loop {
            tokio::select! {
                (stream, addr) = Listener::accept(inner) => {
                    let _ = stream.set_nodelay(true);
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
                    tls.handshakes.spawn(async move {
                        let result = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(result) => result,
                            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")),
                        };
                        (addr, result)
                    });
                }
                Some(joined) = tls.handshakes.join_next(), if !tls.handshakes.is_empty() => match joined {
                    Ok((addr, Ok(stream))) => {
                        return (KillableStream::new(Transport::Tls(Box::new(stream))), addr);
                    }
                    Ok((peer, Err(error))) => {
                        tracing::debug!(%peer, %error, "TLS handshake failed");
                    }
                    Err(error) => {
                        tracing::debug!(%error, "TLS handshake task ended abnormally");
                    }
                },
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// The byte stream under a [`KillableStream`].
#[derive(Debug)]
enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// A TCP (or TLS over TCP) stream that fails all I/O once killed.
#[derive(Debug)]
pub struct KillableStream {
    inner: Transport,
    killed: Arc<AtomicBool>,
}

impl KillableStream {
    fn new(inner: Transport) -> Self {
        KillableStream {
            inner,
            killed: Arc::new(AtomicBool::new(false)),
        }
    }
}

fn killed_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "connection dropped on purpose")
}

impl AsyncRead for KillableStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.killed.load(Ordering::SeqCst) {
            return Poll::Ready(Err(killed_error()));
        }
        match &mut self.inner {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.killed.load(Ordering::SeqCst) {
            return Poll::Ready(Err(killed_error()));
        }
        match &mut self.inner {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.killed.load(Ordering::SeqCst) {
            return Poll::Ready(Err(killed_error()));
        }
        match &mut self.inner {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let killed = self.killed.load(Ordering::SeqCst);
        match &mut self.inner {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            // A killed TLS connection is cut below the session: no close_notify, like a drop.
            Transport::Tls(s) if killed => Pin::new(&mut s.get_mut().0).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Connect info of a request: the peer and the kill switch of its connection.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    /// Peer address.
    pub peer: SocketAddr,
    killed: Arc<AtomicBool>,
}

impl ConnHandle {
    /// Makes the connection fail: no response bytes will reach the client.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
    }
}

impl Connected<IncomingStream<'_, KillableListener>> for ConnHandle {
    fn connect_info(stream: IncomingStream<'_, KillableListener>) -> Self {
        ConnHandle {
            peer: *stream.remote_addr(),
            killed: stream.io().killed.clone(),
        }
    }
}
