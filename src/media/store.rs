//! Where a fetched file is kept: one file per media id under `media.dir`,
//! written to a temporary name and renamed, so a reader never sees half a
//! file and a second fetch of the same id (a job claimed again after its
//! lease) replaces the first whole.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The file name of `media_id`: the id itself when it is plain (the Graph
/// API's are digits), else its hash — never a path a crafted id could steer.
pub fn file_name(media_id: &str) -> String {
    let plain = !media_id.is_empty()
        && media_id.len() <= 128
        && media_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain {
        media_id.to_string()
    } else {
        format!("h{}", hex::encode(Sha256::digest(media_id.as_bytes())))
    }
}

/// Keeps `bytes` as `media_id`'s file under `dir`; returns its path.
pub async fn keep(dir: &Path, media_id: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    tokio::fs::create_dir_all(dir).await?;
    let path = dir.join(file_name(media_id));
    let partial = dir.join(format!(".{}.{}.part", file_name(media_id), rand::random::<u32>()));
    tokio::fs::write(&partial, bytes).await?;
    if let Err(e) = tokio::fs::rename(&partial, &path).await {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(e);
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crafted_id_never_names_a_path() {
        assert_eq!(file_name("1234567890"), "1234567890");
        for id in ["../../etc/passwd", "a/b", "", ".", "x".repeat(200).as_str()] {
            let name = file_name(id);
            assert!(name.starts_with('h') && name.len() == 65, "{id:?} → {name}");
        }
    }
}
