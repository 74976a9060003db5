//! The model's source file: existence, format checks, and the one read that hashes the
//! bytes it returns, so nothing is loaded that was not verified.

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
    hash_reading(path, |_| {})
}

/// Reads `path` through in 1 MiB chunks, handing each to `chunk` as it is
/// hashed; the digest, as 64 lowercase hexadecimal digits.
fn hash_reading(path: &Path, mut chunk: impl FnMut(&[u8])) -> Result<String, LoadError> {
    let mut file = std::fs::File::open(path).map_err(|e| LoadError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| LoadError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        chunk(&buf[..n]);
    }
    Ok(to_hex(&hasher.finalize()))
}

/// Reads the whole of `path`, hashing the bytes as they are read, and returns them only
/// when, with `expected` given, their sha256 is that one: what is then parsed and loaded
/// is exactly what was verified (no second read a changed or truncated file could slip
/// into). `path` must be a regular file.
pub fn read_verified(path: &Path, expected: Option<&str>) -> Result<Vec<u8>, LoadError> {
    let expected = expected.map(parse_sha256).transpose()?;
    let meta = std::fs::metadata(path).map_err(|e| LoadError::io(path, e))?;
    if !meta.is_file() {
        return Err(LoadError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other("it is not a regular file"),
        });
    }
    let mut data = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    let actual = hash_reading(path, |chunk| data.extend_from_slice(chunk))?;
    if let Some(expected) = expected
        && actual != expected
    {
        return Err(LoadError::ChecksumMismatch {
            path: path.to_path_buf(),
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(data)
}

/// Checks that the file's contents look like the declared format (GGUF magic, or a
/// safetensors header length that fits the file), reading only its first bytes.
pub fn check_format(path: &Path, format: Format) -> Result<(), LoadError> {
    let len = std::fs::metadata(path)
        .map_err(|e| LoadError::io(path, e))?
        .len();
    let mut head = Vec::with_capacity(8);
    std::fs::File::open(path)
        .map_err(|e| LoadError::io(path, e))?
        .take(8)
        .read_to_end(&mut head)
        .map_err(|e| LoadError::io(path, e))?;
    check_head(path, &head, len, format)
}

/// [`check_format`] on bytes already read (the whole file).
pub fn check_bytes(path: &Path, data: &[u8], format: Format) -> Result<(), LoadError> {
    check_head(path, &data[..data.len().min(8)], data.len() as u64, format)
}

/// Checks the first (up to) eight bytes of a `len`-byte file against `format`.
fn check_head(path: &Path, head: &[u8], len: u64, format: Format) -> Result<(), LoadError> {
    let invalid = |reason: String| LoadError::InvalidFormat {
        path: path.to_path_buf(),
        format,
        reason,
    };
    let Ok(head) = <[u8; 8]>::try_from(head) else {
        return Err(invalid(format!("the file is only {len} bytes long")));
    };
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

    #[test]
    fn the_bytes_read_are_the_bytes_verified_and_a_truncated_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("gogrid-verified-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("model.gguf");
        let content: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&file, &content).expect("write");
        let digest = sha256_file(&file).expect("hash");

        let read = read_verified(&file, Some(&digest)).expect("verified");
        assert_eq!(
            read, content,
            "the bytes returned are the file's, all of them"
        );
        assert_eq!(read_verified(&file, None).expect("unverified"), content);

        std::fs::write(&file, &content[..content.len() - 1]).expect("truncate");
        match read_verified(&file, Some(&digest)) {
            Err(LoadError::ChecksumMismatch {
                expected, actual, ..
            }) => {
                assert_eq!(expected, digest);
                assert_ne!(actual, digest);
            }
            other => panic!("a truncated file was not refused: {other:?}"),
        }
        let err = read_verified(&dir, None).expect_err("a directory was read");
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let err = check_bytes(&file, b"GGU", Format::Gguf).expect_err("3 bytes passed");
        assert!(err.to_string().contains("only 3 bytes"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
