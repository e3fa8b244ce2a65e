//! Records the commit the binaries are built from as `CUE_COMMIT`, for `--version` and the
//! `cue_*_build_info` metric: the `CUE_COMMIT` environment variable when set (a build from a
//! source tarball), else `git rev-parse` of the checkout, else `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=CUE_COMMIT");
    let commit = match std::env::var("CUE_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => {
            // Build again when HEAD moves: HEAD itself (a checkout) and the branch it names
            // (a commit), loose or packed.
            if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
                println!("cargo:rerun-if-changed={dir}/HEAD");
                println!("cargo:rerun-if-changed={dir}/packed-refs");
                if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
                    println!("cargo:rerun-if-changed={dir}/{r}");
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into())
        }
    };
    let ok = commit
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '+' | '_'));
    let commit = if ok && commit.len() <= 64 {
        commit
    } else {
        "unknown".into()
    };
    println!("cargo:rustc-env=CUE_COMMIT={commit}");
}
