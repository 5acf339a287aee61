//! helm as the chart's tests run it: the binary `rig/helm/build` prints (`$HELM_BIN`), with its
//! cache and configuration under the temporary directory, so that no repositories or plugins of
//! the user running the tests take part.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `$HELM_BIN` when it names a file.
pub fn binary() -> Option<PathBuf> {
    std::env::var_os("HELM_BIN")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
}

/// A command running `bin` with its own cache and configuration directories.
pub fn command(bin: &Path) -> Command {
    let mut cmd = Command::new(bin);
    let tmp = std::env::temp_dir();
    cmd.env("HELM_CACHE_HOME", tmp.join("readygate-helm-cache"))
        .env("HELM_CONFIG_HOME", tmp.join("readygate-helm-config"));
    cmd
}
