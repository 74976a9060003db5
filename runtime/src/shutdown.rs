//! One shutdown signal shared by every task: SIGTERM or Ctrl-C cancels it.

use tokio_util::sync::CancellationToken;

/// A cloneable handle on the process-wide shutdown.
#[derive(Clone, Debug, Default)]
pub struct Shutdown(CancellationToken);

impl Shutdown {
    /// A handle that fires on SIGTERM or SIGINT.
    pub fn on_signals() -> Self {
        let this = Self::default();
        let token = this.0.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received");
            token.cancel();
        });
        this
    }

    /// Resolves once shutdown has begun.
    pub async fn wait(&self) {
        self.0.cancelled().await;
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Begin shutdown.
    pub fn trigger(&self) {
        self.0.cancel();
    }

    /// The underlying token, for APIs that take one.
    pub fn token(&self) -> CancellationToken {
        self.0.clone()
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the process");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
