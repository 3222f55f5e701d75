//! Sets MILLILAG_GIT_COMMIT for `millilag_build_info`: the variable of that name at build time
//! if set (packaging and image builds pass it), else, in release builds, the repository's HEAD.
//! Debug builds say "unknown" and never look at git, so a commit does not rebuild every crate
//! depending on this one while developing.

use std::path::Path;
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=MILLILAG_GIT_COMMIT");
    let given = std::env::var("MILLILAG_GIT_COMMIT")
        .ok()
        .filter(|s| !s.trim().is_empty());
    let from_git = || {
        if std::env::var("PROFILE").as_deref() != Ok("release") {
            return None;
        }
        let dir = std::env::var_os("CARGO_MANIFEST_DIR")?;
        let dir = Path::new(&dir);
        let commit = git(dir, &["rev-parse", "--short=12", "HEAD"])?;
        // Rebuild when HEAD moves: HEAD itself, the branch it points to, packed refs.
        let mut watch = vec![git(dir, &["rev-parse", "--git-path", "HEAD"])];
        if let Some(r) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
            watch.push(git(dir, &["rev-parse", "--git-path", &r]));
        }
        watch.push(git(dir, &["rev-parse", "--git-path", "packed-refs"]));
        for p in watch.into_iter().flatten() {
            let p = dir.join(p);
            if p.exists() {
                println!("cargo:rerun-if-changed={}", p.display());
            }
        }
        Some(commit)
    };
    let commit = given.or_else(from_git).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=MILLILAG_GIT_COMMIT={}", commit.trim());
}
