//! File writes under a root: parents created (and reported), contents replaced atomically.

use std::path::Path;

use super::ApplyError;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ApplyError + '_ {
    move |source| ApplyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates the missing parent directories of `rel`; returns those it created, parents first.
pub fn create_parents(root: &Path, rel: &str) -> Result<Vec<String>, ApplyError> {
    let mut missing = Vec::new();
    let mut dir = Path::new(rel).parent();
    while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
        if root.join(d).is_dir() {
            break;
        }
        missing.push(d.to_string_lossy().into_owned());
        dir = d.parent();
    }
    missing.reverse();
    for d in &missing {
        let path = root.join(d);
        std::fs::create_dir(&path).map_err(io_err(&path))?;
    }
    Ok(missing)
}

/// Replaces `rel` with `text` via a temporary file and rename.
pub fn write_atomic(root: &Path, rel: &str, text: &str) -> Result<(), ApplyError> {
    let path = root.join(rel);
    let tmp = path.with_extension("cue-tune-tmp");
    std::fs::write(&tmp, text).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err(&path))
}

/// Writes a kernel file in place (procfs files cannot be renamed over).
pub fn write_in_place(root: &Path, rel: &str, text: &str) -> Result<(), String> {
    std::fs::write(root.join(rel), text).map_err(|e| e.to_string())
}

/// Removes `rel`; a missing file is fine.
pub fn remove(root: &Path, rel: &str) -> Result<(), ApplyError> {
    let path = root.join(rel);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(&path)(e)),
        _ => Ok(()),
    }
}
