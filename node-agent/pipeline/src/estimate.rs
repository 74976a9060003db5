//! Memory estimates for the VRAM ledger: the bytes of a model's stages before loading
//! (see [`crate::plan_load`]) and the per-request memory beyond the weights.

/// An estimate of the memory one request needs besides the weights:
/// `tokens × hidden × layers × bytes_per_value`.
///
/// It is an estimate, not a measurement: it stands for the KV cache (which for grouped
/// query attention is smaller, `2 × kv_heads × head_dim` per token and layer, and for an
/// encoder does not persist) plus the transient activations of one layer, which are of the
/// order of `tokens × hidden` and freed as the next layer runs. Attention scores
/// (`heads × tokens²`) are not counted; long prompts use more.
pub fn activation_bytes(
    tokens: usize,
    hidden: usize,
    layers: usize,
    bytes_per_value: usize,
) -> u64 {
    [tokens, hidden, layers, bytes_per_value]
        .into_iter()
        .fold(1u64, |acc, n| acc.saturating_mul(n as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_activation_estimate_is_the_product_of_its_factors() {
        assert_eq!(activation_bytes(100, 576, 30, 4), 100 * 576 * 30 * 4);
        assert_eq!(activation_bytes(usize::MAX, usize::MAX, 2, 4), u64::MAX);
    }
}
