//! One rollout scenario at a time on this machine, across test processes: timing-sensitive
//! scenarios (the rig's e2e, readygate's tests that start the rig) hold an exclusive lock on a
//! file shared by every process, so a runner that runs tests in parallel processes
//! (cargo-nextest) does not skew their timings.

/// The lock; released when dropped.
pub struct Exclusive(#[allow(dead_code)] std::fs::File);

/// Waits for the lock.
pub async fn exclusive() -> Exclusive {
    let path = std::env::temp_dir().join("readygate-rig-rollouts.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .expect("opening the rollouts lock file");
    let file = tokio::task::spawn_blocking(move || {
        file.lock().expect("locking the rollouts lock file");
        file
    })
    .await
    .expect("waiting for the rollouts lock");
    Exclusive(file)
}
