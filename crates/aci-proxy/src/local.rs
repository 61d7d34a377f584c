//! The proxy embedded in your process: [`Proxy::spawn_local`] serves it on an ephemeral
//! loopback port, so an OpenAI SDK in the same program (async-openai, …) talks to it without a
//! second process.

use std::fmt;
use std::net::SocketAddr;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::Proxy;
use tower_aci::error::{Error, Result};

impl Proxy {
    /// Serve the proxy on `127.0.0.1`, on a port the OS picks, from a task of the current Tokio
    /// runtime. Returns the OpenAI base URL to give your SDK (`http://127.0.0.1:<port>/v1`) and
    /// the handle that keeps it running: the server stops when the handle is dropped or
    /// [`shut down`](LocalProxy::shutdown).
    ///
    /// ```no_run
    /// # async fn run() -> tower_aci::Result<()> {
    /// use aci_proxy::{Proxy, ProxyConfig};
    ///
    /// let proxy = Proxy::start(ProxyConfig::default().local_test_gateway(true)).await?;
    /// let (base_url, server) = proxy.spawn_local().await?;
    /// // async-openai: Client::with_config(OpenAIConfig::new().with_api_base(&base_url))
    /// # let _ = base_url;
    /// server.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn spawn_local(&self) -> Result<(String, LocalProxy)> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| Error::config("cannot bind a loopback port for the proxy").with_source(e))?;
        let addr =
            listener.local_addr().map_err(|e| Error::config("cannot read the proxy's address").with_source(e))?;
        let router = self.router();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                tracing::error!("the embedded proxy stopped: {e}");
            }
        });
        let url = format!("http://{addr}/v1");
        Ok((url.clone(), LocalProxy { addr, url, stop: Some(stop), task: Some(task) }))
    }
}

/// An embedded proxy served by [`Proxy::spawn_local`]. Dropping it stops the server (open
/// connections are cut); [`shutdown`](Self::shutdown) lets requests in flight finish first.
pub struct LocalProxy {
    addr: SocketAddr,
    url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for LocalProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalProxy").field("url", &self.url).finish_non_exhaustive()
    }
}

impl LocalProxy {
    /// The loopback address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The OpenAI base URL, `http://127.0.0.1:<port>/v1`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stop accepting connections, let the requests in flight finish, and wait for the server
    /// to end.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for LocalProxy {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
