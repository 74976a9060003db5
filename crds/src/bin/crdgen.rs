//! Writes the CRD templates of charts/gogrid from the Rust types.
//!
//! `crdgen` writes them under the repository root (found from the current
//! directory); `crdgen --stdout` prints plain CRD YAML instead.

use std::io::Write;
use std::{env, fs, path::PathBuf, process::ExitCode};

use gogrid_crds::crdgen::{CHART_CRD_DIR, chart_templates, crds};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crdgen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    if env::args().any(|a| a == "--stdout") {
        let mut out = std::io::stdout().lock();
        for crd in crds() {
            write!(out, "---\n{}", serde_yaml::to_string(&crd)?)?;
        }
        return Ok(());
    }
    let root = repo_root()?;
    let dir = root.join(CHART_CRD_DIR);
    fs::create_dir_all(&dir)?;
    for (file, text) in chart_templates()? {
        fs::write(dir.join(&file), text)?;
        eprintln!("crdgen: wrote {CHART_CRD_DIR}/{file}");
    }
    Ok(())
}

fn repo_root() -> Result<PathBuf, String> {
    let mut dir = env::current_dir().map_err(|e| e.to_string())?;
    loop {
        if dir.join("charts/gogrid/Chart.yaml").exists()
            || dir.join("Cargo.lock").exists() && dir.join("crds").is_dir()
        {
            return Ok(dir);
        }
        if !dir.pop() {
            return Err("run crdgen inside the GoGrid repository".into());
        }
    }
}
