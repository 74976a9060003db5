//! The model's source file: existence, checksum (sha256) and format checks before any
//! weight is loaded.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::Format;
use crate::error::LoadError;

/// The first four bytes of every GGUF file.
const GGUF_MAGIC: &[u8; 4] = b"GGUF";

/// Checks that `value` is a sha256 digest written as 64 lowercase hexadecimal digits.
pub fn parse_sha256(value: &str) -> Result<&str, LoadError> {
    let valid = value.len() == 64
        && value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if valid {
        Ok(value)
    } else {
        Err(LoadError::InvalidChecksum {
            value: value.to_string(),
        })
    }
}

/// The sha256 of a file, as 64 lowercase hexadecimal digits, read in a streaming way.
pub fn sha256_file(path: &Path) -> Result<String, LoadError> {
    let mut file = std::fs::File::open(path).map_err(|e| LoadError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| LoadError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(to_hex(&hasher.finalize()))
}

/// Verifies that `path` exists and, when `expected` is given, that its sha256 is that one.
pub fn verify(path: &Path, expected: Option<&str>) -> Result<(), LoadError> {
    let expected = expected.map(parse_sha256).transpose()?;
    let meta = std::fs::metadata(path).map_err(|e| LoadError::io(path, e))?;
    if !meta.is_file() {
        return Err(LoadError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other("it is not a regular file"),
        });
    }
    if let Some(expected) = expected {
        let actual = sha256_file(path)?;
        if actual != expected {
            return Err(LoadError::ChecksumMismatch {
                path: path.to_path_buf(),
                expected: expected.to_string(),
                actual,
            });
        }
    }
    Ok(())
}

/// Checks that the file's contents look like the declared format (GGUF magic, or a
/// safetensors header length that fits the file).
pub fn check_format(path: &Path, format: Format) -> Result<(), LoadError> {
    let mut head = [0u8; 8];
    let len = std::fs::metadata(path)
        .map_err(|e| LoadError::io(path, e))?
        .len();
    let invalid = |reason: String| LoadError::InvalidFormat {
        path: path.to_path_buf(),
        format,
        reason,
    };
    if len < head.len() as u64 {
        return Err(invalid(format!("the file is only {len} bytes long")));
    }
    let mut file = std::fs::File::open(path).map_err(|e| LoadError::io(path, e))?;
    file.read_exact(&mut head)
        .map_err(|e| LoadError::io(path, e))?;
    match format {
        Format::Gguf if &head[..4] != GGUF_MAGIC => Err(invalid(format!(
            "it starts with {:02x?} instead of the GGUF magic",
            &head[..4]
        ))),
        Format::Safetensors => {
            let header = u64::from_le_bytes(head);
            if header == 0 || header > len - 8 {
                Err(invalid(format!(
                    "its header length {header} does not fit a {len}-byte file"
                )))
            } else {
                Ok(())
            }
        }
        Format::Gguf => Ok(()),
    }
}

/// A file expected beside the weights (config.json, tokenizer.json), or `NotFound`.
pub fn companion(weights: &Path, name: &str) -> Result<PathBuf, LoadError> {
    let path = weights.with_file_name(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(LoadError::NotFound { path })
    }
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checksum_must_be_64_lowercase_hex_digits() {
        let good = "a".repeat(64);
        assert!(parse_sha256(&good).is_ok());
        for bad in [
            "A".repeat(64),
            "a".repeat(63),
            "g".repeat(64),
            String::new(),
        ] {
            let err = parse_sha256(&bad).expect_err("accepted a malformed digest");
            assert!(err.to_string().contains("64 lowercase hexadecimal digits"));
        }
    }

    #[test]
    fn the_digest_of_a_known_content_is_the_published_one() {
        let dir = std::env::temp_dir().join(format!("gogrid-sha-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("abc");
        std::fs::write(&file, b"abc").expect("write");
        assert_eq!(
            sha256_file(&file).expect("hash"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
