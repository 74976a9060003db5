//! A declared GPU inventory (`2x24Gi`, `24Gi,16Gi`) standing in for NVML where no
//! GPU exists. The agent marks its GpuNode simulated; budgets and placement then
//! run on these numbers.

use anyhow::{Context as _, bail};
use gogrid_crds::gpu_node::GpuInfo;
use gogrid_crds::quantity;

use super::Inventory;

/// Devices of declared sizes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Declared {
    gpus: Vec<GpuInfo>,
}

impl Declared {
    /// Parse `NxSIZE` or a comma-separated list of sizes.
    pub fn parse(spec: &str) -> anyhow::Result<Self> {
        let mut sizes = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (count, size) = match part.split_once('x') {
                Some((n, size)) => (
                    n.parse::<u32>()
                        .with_context(|| format!("GPU count {n:?} in {part:?}"))?,
                    size,
                ),
                None => (1, part),
            };
            let bytes =
                quantity::bytes(size).map_err(|e| anyhow::anyhow!("GPU size in {part:?}: {e}"))?;
            if bytes == 0 {
                bail!("GPU size in {part:?} must be above zero");
            }
            sizes.extend(std::iter::repeat_n(bytes, count as usize));
        }
        if sizes.is_empty() {
            bail!(
                "declared GPU inventory {spec:?} names no GPU (expected e.g. 2x24Gi or 24Gi,16Gi)"
            );
        }
        let gpus = sizes
            .into_iter()
            .enumerate()
            .map(|(i, bytes)| GpuInfo {
                index: i as u32,
                uuid: format!("GPU-simulated-{i:04}"),
                name: format!("Simulated GPU {}", quantity::human(bytes)),
                memory_total_bytes: bytes,
                ..Default::default()
            })
            .collect();
        Ok(Self { gpus })
    }
}

impl Inventory for Declared {
    fn read(&self) -> anyhow::Result<Vec<GpuInfo>> {
        Ok(self.gpus.clone())
    }

    fn simulated(&self) -> bool {
        true
    }

    fn device(&self) -> &'static str {
        "cpu"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_lists_declare_devices_in_order() {
        let d = Declared::parse("2x24Gi").expect("parse");
        let sizes: Vec<_> = d
            .read()
            .expect("read")
            .iter()
            .map(|g| (g.index, g.memory_total_bytes))
            .collect();
        assert_eq!(sizes, [(0, 24 << 30), (1, 24 << 30)]);
        let d = Declared::parse("24Gi, 16Gi").expect("parse");
        let sizes: Vec<_> = d
            .read()
            .expect("read")
            .iter()
            .map(|g| g.memory_total_bytes)
            .collect();
        assert_eq!(sizes, [24 << 30, 16 << 30]);
        assert!(d.simulated());
    }

    #[test]
    fn nonsense_is_refused_with_the_part_named() {
        assert!(Declared::parse("").is_err());
        let e = Declared::parse("2x24GB").expect_err("unit").to_string();
        assert!(e.contains("2x24GB"), "{e}");
        assert!(Declared::parse("0Gi").is_err());
    }
}
