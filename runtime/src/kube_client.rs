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
/// [`READ_TIMEOUT`] counted from each request sent, that names itself in
/// its User-Agent as `<program>/<version> (<identity>)`: the API server's
/// audit log then tells which replica or which node's agent sent a request.
pub async fn client(program: &str, identity: &str) -> anyhow::Result<kube::Client> {
    let mut config = kube::Config::infer().await?;
    config.read_timeout = Some(READ_TIMEOUT);
    config.reset_reader_on_write = true;
    let agent = format!("{program}/{} ({identity})", env!("CARGO_PKG_VERSION"));
    if let Ok(value) = http::HeaderValue::from_str(&agent) {
        config.headers.push((http::header::USER_AGENT, value));
    }
    Ok(kube::Client::try_from(config)?)
}

/// How a failed watch waits before it watches again: 250 ms doubling to 5 s
/// with jitter, back to 250 ms after two minutes without a failure. kube's
/// default goes up to 30 s, so after a long API outage a watch could sit out
/// half a minute after the API server was back.
pub fn watch_backoff() -> impl kube::runtime::utils::Backoff {
    kube::runtime::utils::ResetTimerBackoff::new(
        kube::runtime::watcher::ExponentialBackoff::from(
            backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(250))
                .with_max_delay(Duration::from_secs(5))
                .with_factor(2.0)
                .with_jitter()
                .without_max_times(),
        ),
        Duration::from_secs(120),
    )
}

/// What a cache of either binary keeps of a watched object: all of it but its
/// `managedFields`, the API server's record of which manager set which field.
/// Neither binary reads them, and on an object that the operator and the
/// agents write with server-side apply they were a large share of its size:
/// every agent holds every InferenceDeployment, so that share was paid once
/// per node.
pub fn without_managed_fields<K: kube::Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}
