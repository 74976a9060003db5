//! Backends for tests and benchmarks of the serving path (no model behind them).

use crate::backend::{Backend, ModelMetadata, TaskKind};
use crate::error::Result;
use crate::tensor::Tensor;

/// A [`TaskKind::Tensor`] backend that answers each request with its own
/// inputs: it measures the serving layer (decode, queue, batch, encode) alone.
#[derive(Debug, Clone)]
pub struct Identity {
    metadata: ModelMetadata,
}

impl Identity {
    /// An identity model that batches up to `max_batch_size` requests and
    /// accepts any inputs.
    pub fn new(max_batch_size: usize) -> Self {
        Self {
            metadata: ModelMetadata {
                platform: "identity".to_owned(),
                inputs: Vec::new(),
                outputs: Vec::new(),
                max_batch_size,
            },
        }
    }
}

impl Backend for Identity {
    fn metadata(&self) -> &ModelMetadata {
        &self.metadata
    }

    fn task(&self) -> TaskKind {
        TaskKind::Tensor
    }

    fn infer(&self, batch: &[Vec<Tensor>]) -> Result<Vec<Vec<Tensor>>> {
        Ok(batch.to_vec())
    }
}
