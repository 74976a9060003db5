//! The Kubernetes client both binaries use: the usual kubeconfig / in-cluster
//! inference, with every read bounded.

use std::time::Duration;

/// The longest a response may stay silent. Longer than every watch's
/// server-side timeout (30 s, so a healthy idle watch ends before it), short
/// enough that a request stuck on a connection that died without a close (an
/// API server restarting mid request) fails and is retried within a minute,
/// instead of hanging for good.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A client from the kubeconfig or the in-cluster service account, with
/// [`READ_TIMEOUT`] counted from each request sent.
pub async fn client() -> anyhow::Result<kube::Client> {
    let mut config = kube::Config::infer().await?;
    config.read_timeout = Some(READ_TIMEOUT);
    config.reset_reader_on_write = true;
    Ok(kube::Client::try_from(config)?)
}
