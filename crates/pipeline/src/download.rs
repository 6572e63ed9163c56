//! Official weights by name: a card's `url` (OnnxTR's release of docTR's models) is fetched once
//! into Kiln's cache, written through a temporary file and a rename so that an interrupted
//! download never leaves a truncated model behind, and checked against the card's sha256. Knows
//! models by name only; the cards call it.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// `$KILN_CACHE/models`, else `~/.cache/kiln/models`.
pub fn cache_dir() -> PathBuf {
    kiln_graph::cache_dir().join("models")
}

/// Where model `name`'s download lands.
pub fn cached_path(name: &str) -> PathBuf {
    cache_dir().join(format!("{name}.onnx"))
}

/// Fetches model `name` from `url` into the cache (unless already there), checks it against the
/// `sha256` prefix if one is given, and returns the file.
pub fn fetch(name: &str, url: &str, sha256: Option<&str>) -> Result<PathBuf> {
    let path = cached_path(name);
    if path.is_file() {
        return Ok(path);
    }
    let fail = |reason: String| Error::Download {
        card: name.to_string(),
        url: url.to_string(),
        reason,
        hint: format!(
            "without network, download it elsewhere and pass the file (e.g. --det FILE.onnx --det-card {0}), \
             or put it at {1}",
            name,
            path.display()
        ),
    };
    tracing::info!(card = name, url, "downloading");
    let mut response = ureq::get(url).call().map_err(|e| fail(e.to_string()))?;
    let mut body = response.body_mut().with_config().limit(2 << 30).reader();
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.into(), source })?;
    let tmp = path.with_extension(format!("onnx.{}.part", std::process::id()));
    let mut hasher = Sha256::new();
    let written = (|| -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = body.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n])?;
        }
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(e.to_string()));
    }
    let digest: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if let Some(want) = sha256
        && !digest.starts_with(&want.to_lowercase())
    {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(format!("sha256 {digest} does not match the card's {want}")));
    }
    std::fs::rename(&tmp, &path).map_err(|source| Error::Io { path: path.clone(), source })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Serves `body` over HTTP once per connection, `n` connections.
    fn serve(body: Vec<u8>, n: usize) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(n) {
                let mut s = stream.unwrap();
                let mut req = [0u8; 1024];
                let _ = s.read(&mut req);
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                s.write_all(head.as_bytes()).unwrap();
                s.write_all(&body).unwrap();
            }
        });
        format!("http://{addr}/model.onnx")
    }

    #[test]
    fn download_is_checked_and_atomic() {
        let body = b"not really onnx, but bytes with a digest".to_vec();
        let digest: String = Sha256::digest(&body).iter().map(|b| format!("{b:02x}")).collect();
        let url = serve(body.clone(), 2);
        let unique = format!("kiln-download-test-{}", std::process::id());

        // A wrong digest: refused, and nothing is left in the cache.
        let bad = format!("{unique}-bad");
        let e = fetch(&bad, &url, Some("00000000")).unwrap_err();
        assert!(matches!(e, Error::Download { .. }) && e.to_string().contains("sha256"), "{e}");
        assert!(!cached_path(&bad).exists());
        let leftovers = std::fs::read_dir(cache_dir()).unwrap().filter_map(|e| e.ok());
        assert!(leftovers.into_iter().all(|e| !e.file_name().to_string_lossy().starts_with(&format!("{unique}-bad"))));

        // The release file name's 8-digit prefix is enough.
        let path = fetch(&unique, &url, Some(&digest[..8])).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), body);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn offline_is_a_typed_error_that_says_how_to_pass_a_file() {
        // Nothing listens on the discard port of localhost.
        let name = format!("kiln-offline-test-{}", std::process::id());
        let e = fetch(&name, "http://127.0.0.1:9/m.onnx", Some("00")).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, Error::Download { .. }) && text.contains("--det-card") && text.contains("127.0.0.1:9"), "{text}");
    }
}
