//! Running the servers: REST (axum) and gRPC (tonic), each with graceful shutdown.

use std::future::Future;

use axum::serve::ListenerExt as _;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::grpc::grpc_service;
use crate::rest::router;
use crate::state::ServeState;

/// Serves REST on `listener` until `shutdown` completes, then stops accepting
/// and waits for in-flight requests (streams included) to finish.
///
/// The caller binds the listener (the agent decides the address; tests use
/// `127.0.0.1:0`).
pub async fn serve_http<F>(
    listener: TcpListener,
    state: ServeState,
    shutdown: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    tracing::info!(addr = ?listener.local_addr().ok(), "serving REST");
    // Responses are small writes: without TCP_NODELAY the kernel holds the
    // last segment until the client's delayed ACK (up to 40 ms).
    let listener = listener.tap_io(|stream| {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set on a REST connection");
        }
    });
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serves gRPC on `listener` until `shutdown` completes, then stops accepting
/// and waits for in-flight calls to finish. Message size limits come from
/// [`crate::Limits::max_grpc_message_bytes`].
pub async fn serve_grpc<F>(
    listener: TcpListener,
    state: ServeState,
    shutdown: F,
) -> Result<(), tonic::transport::Error>
where
    F: Future<Output = ()> + Send,
{
    tracing::info!(addr = ?listener.local_addr().ok(), "serving gRPC");
    tonic::transport::Server::builder()
        .add_service(grpc_service(state))
        .serve_with_incoming_shutdown(
            // A response is headers, data and trailers in separate writes:
            // without TCP_NODELAY the trailers wait for the client's delayed
            // ACK (40 ms on Linux).
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
}
