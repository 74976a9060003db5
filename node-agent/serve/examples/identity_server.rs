//! Serves the identity model over REST and gRPC on loopback, for trying stock
//! clients (tritonclient, KServe's) by hand: `cargo run -p gogrid-serve --example
//! identity_server -- 127.0.0.1:8000 127.0.0.1:8001`; Ctrl-C stops it gracefully.

use std::net::SocketAddr;
use std::sync::Arc;

use gogrid_serve::testing::Identity;
use gogrid_serve::{
    AdmitAll, BatchPolicy, Limits, Metrics, Registry, ServeState, serve_grpc, serve_http,
};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let http: SocketAddr = args.next().as_deref().unwrap_or("127.0.0.1:8000").parse()?;
    let grpc: SocketAddr = args.next().as_deref().unwrap_or("127.0.0.1:8001").parse()?;
    let (_, policy) = tokio::sync::watch::channel(BatchPolicy::default());
    let registry = Arc::new(Registry::new(
        policy,
        Arc::new(AdmitAll),
        Metrics::unregistered(),
    ));
    registry.add("identity", "1", Arc::new(Identity::new(8)))?;
    registry.set_ready("identity", "1", true)?;
    let state = ServeState::new(registry, Limits::default());
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut http_stop = stop_rx.clone();
    let mut grpc_stop = stop_rx;
    let http_server = serve_http(TcpListener::bind(http).await?, state.clone(), async move {
        let _ = http_stop.wait_for(|stop| *stop).await;
    });
    let grpc_server = serve_grpc(TcpListener::bind(grpc).await?, state, async move {
        let _ = grpc_stop.wait_for(|stop| *stop).await;
    });
    let signal = async move {
        stop.await;
        let _ = stop_tx.send(true);
        Ok::<(), Box<dyn std::error::Error>>(())
    };
    let (http_result, grpc_result, _) = tokio::join!(http_server, grpc_server, signal);
    http_result?;
    grpc_result?;
    Ok(())
}
