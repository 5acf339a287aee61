//! Pods whose container is a real process ([`crate::k8s::runtime`]), run by the node agent as
//! the kubelet runs them: the sandbox (a network namespace with the pod IP), the volumes
//! ([`crate::k8s::volumes`], refreshed every sync period), then the container: its readiness
//! probe decides ContainersReady, its liveness probe kills it (preStop, SIGTERM, SIGKILL at the
//! end of the grace period) for a restart; a process that exits on its own is restarted per
//! `restartPolicy` with the kubelet's back-off (at once, then 10 s doubling to 5 min, reset
//! after 10 min of running), `restartCount` and `lastState` reported. Deletion: the preStop
//! sleep within the grace period, SIGTERM, SIGKILL when it ends, the terminal phase, the final
//! delete. Status is Pending (`ContainerCreating`) until the container first starts.

use crate::k8s::node::{
    ContainerInfo, Containers, NodeCtx, Prober, StatusWriter, finish, grace_of, terminating,
    terminations,
};
use crate::k8s::runtime::{self, ConfigError, ContainerSpec, Image, Mount};
use crate::k8s::volumes::PodVolumes;
use crate::kubelet::PodPlan;
use crate::netns::{Sandbox, pod_ips};
use crate::str_at;
use crate::time::{now_time, uuid};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// The kubelet's crash-loop back-off, uncompressed: 10 s after the first restart, doubling up
/// to 5 min.
const BACKOFF_START: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A container that ran this long without exiting starts its back-off afresh (the kubelet's
/// 10 min).
const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// Aborts a task when dropped (the pod's volume refresher).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Removes the pod's entry from the agent's container table when the pod's task ends.
struct Registered(Arc<NodeCtx>, (String, String));

impl Drop for Registered {
    fn drop(&mut self) {
        self.0
            .containers
            .lock()
            .expect("containers lock")
            .remove(&self.1);
    }
}

/// Removes the pod's directory (its volumes, with their token and key, and image roots) when
/// the pod's task ends, as the kubelet cleans up after a deleted pod; its logs stay.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.0.display(), error = %e, "node agent: removing a pod's directory");
        }
    }
}

/// How one run of the container ended.
enum Ended {
    /// The pod was deleted and the container stopped (or was killed).
    Deleted,
    /// It exited on its own, or was killed for failing its liveness probe.
    Exited { ran: Duration },
    /// The pod object is gone (force-deleted, or the agent stops): nothing more to do.
    Gone,
}

/// Waits for the pod to change; false when the agent dropped it.
async fn changed(latest: &mut watch::Receiver<Value>, within: Duration) -> bool {
    match tokio::time::timeout(within, latest.changed()).await {
        Ok(r) => r.is_ok(),
        Err(_) => true,
    }
}

pub(crate) async fn run(
    ctx: Arc<NodeCtx>,
    client: Client,
    mut latest: watch::Receiver<Value>,
    plan: PodPlan,
    image: Result<Image, String>,
) {
    let pod = latest.borrow_and_update().clone();
    let name = str_at(&pod, "/metadata/name");
    let namespace = str_at(&pod, "/metadata/namespace");
    let uid = str_at(&pod, "/metadata/uid");
    let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let ip = match pod_ips().reserve() {
        Ok(ip) => ip,
        Err(e) => {
            tracing::error!(pod = %name, error = %e, "no pod IP");
            return;
        }
    };
    let _cleanup = RemoveOnDrop(ctx.dir.join("pods").join(&uid));
    let sandbox = match Sandbox::create(ip) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(pod = %name, error = %format!("{e:#}"), "the pod's sandbox could not be made");
            return;
        }
    };
    let mut writer = StatusWriter::new(api, &name, &uid, &plan, ip);
    let mut c = Containers {
        running: false,
        waiting: Some(("ContainerCreating".into(), String::new())),
        container_id: String::new(),
        ..Containers::running_now()
    };
    let pod_dir = ctx.dir.join("pods").join(&uid);
    let log_dir = ctx
        .dir
        .join("logs")
        .join(format!("{namespace}_{name}_{uid}"))
        .join(&plan.container);
    let _registered = Registered(ctx.clone(), (namespace.clone(), name.clone()));

    let pending = |c: &mut Containers, reason: &str, message: String| {
        c.waiting = Some((reason.to_string(), message));
    };
    let image = match image {
        Ok(i) => i,
        Err(e) => {
            pending(&mut c, "ErrImagePull", e);
            wait_deleted(&mut writer, &mut latest, &mut c, "Pending").await;
            return;
        }
    };
    let spec_c = pod
        .pointer("/spec/containers/0")
        .cloned()
        .unwrap_or_default();
    // Volumes, retried until they can be set up (a Secret created later, the Node authorizer's
    // graph not yet knowing the pod).
    let mut volumes = match PodVolumes::new(
        client.clone(),
        &pod,
        pod_dir.join("volumes"),
        &ip.to_string(),
    ) {
        Ok(v) => v,
        Err(e) => {
            pending(&mut c, "ContainerCreating", format!("{e:#}"));
            wait_deleted(&mut writer, &mut latest, &mut c, "Pending").await;
            return;
        }
    };
    let mounts = match mounts_of(&spec_c, &volumes) {
        Ok(m) => m,
        Err(e) => {
            pending(&mut c, "CreateContainerConfigError", e);
            wait_deleted(&mut writer, &mut latest, &mut c, "Pending").await;
            return;
        }
    };
    let mut reported = false;
    loop {
        let pod = latest.borrow_and_update().clone();
        if terminating(&pod) {
            c.sandbox = false;
            finish(&mut writer, &pod, &c).await;
            return;
        }
        if !writer.write(&pod, &c, "Pending").await {
            return;
        }
        match volumes.sync().await {
            Ok(_) => break,
            Err(e) => {
                if !reported {
                    tracing::warn!(pod = %name, error = %format!("{e:#}"), "node agent: mounting volumes (retrying)");
                    reported = true;
                }
                if !changed(&mut latest, Duration::from_millis(250)).await {
                    return;
                }
            }
        }
    }
    let sync_period = ctx.opts.volume_sync;
    let pod_name = name.clone();
    let _refresher = AbortOnDrop(tokio::spawn(async move {
        loop {
            tokio::time::sleep(sync_period).await;
            match volumes.sync().await {
                Ok(w) if !w.is_empty() => {
                    tracing::info!(pod = %pod_name, volumes = ?w, "node agent: volumes updated")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(pod = %pod_name, error = %format!("{e:#}"), "node agent: refreshing volumes")
                }
            }
        }
    }));

    let mut backoff = Duration::ZERO;
    let mut phase = "Pending";
    loop {
        let pod = latest.borrow_and_update().clone();
        if terminating(&pod) {
            c.sandbox = false;
            c.waiting = None;
            finish(&mut writer, &pod, &c).await;
            return;
        }
        let spec = match container_spec(
            &client,
            &ctx,
            &pod,
            &spec_c,
            &image,
            &sandbox,
            &mounts,
            &pod_dir,
            &log_dir,
            c.restart_count,
        )
        .await
        {
            Ok(s) => s,
            Err(e) => {
                pending(&mut c, "CreateContainerConfigError", e.0);
                if !writer.write(&pod, &c, phase).await
                    || !changed(&mut latest, Duration::from_secs(1)).await
                {
                    return;
                }
                continue;
            }
        };
        let process = match runtime::start(&spec, &image, sandbox.fd()) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(pod = %name, error = %format!("{e:#}"), "node agent: the container did not start");
                c.exit_code = 128;
                c.last_state = Some(
                    json!({"terminated": {"exitCode": 128, "reason": "StartError",
                    "message": format!("{e:#}"), "startedAt": now_time(), "finishedAt": now_time()}}),
                );
                if !back_off(
                    &mut writer,
                    &mut latest,
                    &mut c,
                    &mut backoff,
                    &plan,
                    &name,
                    &namespace,
                    &uid,
                )
                .await
                {
                    return;
                }
                continue;
            }
        };
        c.running = true;
        c.ready = false;
        c.waiting = None;
        c.exit_code = 0;
        c.container_id = format!("rig://{}", uuid());
        c.started_at = now_time();
        phase = "Running";
        ctx.containers.lock().expect("containers lock").insert(
            (namespace.clone(), name.clone()),
            ContainerInfo {
                pid: process.pid,
                restart_count: c.restart_count,
                log: process.log.clone(),
                pod_ip: ip,
            },
        );
        match run_container(
            &mut writer,
            &mut latest,
            &mut c,
            &plan,
            process,
            &namespace,
            &name,
        )
        .await
        {
            Ended::Gone => return,
            Ended::Deleted => {
                c.sandbox = false;
                let pod = latest.borrow().clone();
                finish(&mut writer, &pod, &c).await;
                return;
            }
            Ended::Exited { ran } => {
                let restart = match plan.restart_policy.as_str() {
                    "Never" => false,
                    "OnFailure" => c.exit_code != 0,
                    _ => true,
                };
                if !restart {
                    let final_phase = if c.exit_code == 0 {
                        "Succeeded"
                    } else {
                        "Failed"
                    };
                    wait_deleted(&mut writer, &mut latest, &mut c, final_phase).await;
                    return;
                }
                if ran >= BACKOFF_RESET {
                    backoff = Duration::ZERO;
                }
                c.last_state = Some(c.terminated(&now_time()));
                if !back_off(
                    &mut writer,
                    &mut latest,
                    &mut c,
                    &mut backoff,
                    &plan,
                    &name,
                    &namespace,
                    &uid,
                )
                .await
                {
                    return;
                }
            }
        }
    }
}

/// Reports the container as waiting in CrashLoopBackOff for the current back-off (none the
/// first time), then counts the restart. False when the pod was deleted or is gone meanwhile
/// (then it has been finished).
#[allow(clippy::too_many_arguments)]
async fn back_off(
    writer: &mut StatusWriter,
    latest: &mut watch::Receiver<Value>,
    c: &mut Containers,
    backoff: &mut Duration,
    plan: &PodPlan,
    name: &str,
    namespace: &str,
    uid: &str,
) -> bool {
    c.running = false;
    c.ready = false;
    let wait = *backoff;
    *backoff = (*backoff * 2).clamp(BACKOFF_START, BACKOFF_MAX);
    if !wait.is_zero() {
        c.waiting = Some((
            "CrashLoopBackOff".into(),
            format!(
                "back-off {}s restarting failed container={} pod={name}_{namespace}({uid})",
                wait.as_secs(),
                plan.container
            ),
        ));
    }
    let until = Instant::now() + wait;
    loop {
        let pod = latest.borrow_and_update().clone();
        if terminating(&pod) {
            c.sandbox = false;
            c.waiting = None;
            finish(writer, &pod, c).await;
            return false;
        }
        if !writer.write(&pod, c, "Running").await {
            return false;
        }
        let now = Instant::now();
        if now >= until {
            break;
        }
        if !changed(latest, until - now).await {
            return false;
        }
    }
    c.restart_count += 1;
    true
}

/// Keeps reporting the pod (with `phase`) until it is deleted, then finishes it.
async fn wait_deleted(
    writer: &mut StatusWriter,
    latest: &mut watch::Receiver<Value>,
    c: &mut Containers,
    phase: &str,
) {
    // Bounded by the pod's own life: the agent drops the task when the pod goes.
    loop {
        let pod = latest.borrow_and_update().clone();
        if terminating(&pod) {
            c.sandbox = false;
            finish(writer, &pod, c).await;
            return;
        }
        if !writer.write(&pod, c, phase).await {
            return;
        }
        if latest.changed().await.is_err() {
            return;
        }
    }
}

/// The mounts of container `c`: each volumeMount at its mountPath.
fn mounts_of(c: &Value, volumes: &PodVolumes) -> Result<Vec<Mount>, String> {
    let mut out = Vec::new();
    for m in c["volumeMounts"].as_array().into_iter().flatten() {
        let name = str_at(m, "/name");
        if m.get("subPath").is_some() || m.get("subPathExpr").is_some() {
            return Err(format!(
                "volumeMount {name:?}: the rig does not mount subPaths"
            ));
        }
        let source = volumes
            .dir(&name)
            .ok_or_else(|| format!("volumeMount {name:?} names no volume of the pod"))?;
        out.push(Mount {
            source,
            target: str_at(m, "/mountPath"),
            read_only: m["readOnly"].as_bool().unwrap_or(false),
        });
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
async fn container_spec(
    client: &Client,
    ctx: &NodeCtx,
    pod: &Value,
    c: &Value,
    image: &Image,
    sandbox: &Sandbox,
    mounts: &[Mount],
    pod_dir: &std::path::Path,
    log_dir: &std::path::Path,
    restarts: u32,
) -> Result<ContainerSpec, ConfigError> {
    let ip = sandbox.ip.to_string();
    let env = runtime::environment(client, pod, c, image, &ip, ctx.opts.api_endpoint).await?;
    let argv = runtime::argv(c, image, &env);
    let (uid, gid, groups, no_new_privs, read_only_root) = runtime::identity(pod, c, image)?;
    let working_dir = c["workingDir"]
        .as_str()
        .unwrap_or(&image.working_dir)
        .to_string();
    Ok(ContainerSpec {
        hostname: str_at(pod, "/metadata/name"),
        argv,
        env,
        working_dir,
        uid,
        gid,
        groups,
        no_new_privs,
        read_only_root,
        mounts: mounts.to_vec(),
        rootfs: pod_dir
            .join("containers")
            .join(str_at(c, "/name"))
            .join("rootfs"),
        log: log_dir.join(format!("{restarts}.log")),
    })
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: signalling our own child by PID.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// Runs one start of the container until it exits, probing it and stopping it as the pod's
/// deletion or its liveness probe requires.
async fn run_container(
    writer: &mut StatusWriter,
    latest: &mut watch::Receiver<Value>,
    c: &mut Containers,
    plan: &PodPlan,
    mut process: runtime::Process,
    namespace: &str,
    name: &str,
) -> Ended {
    let started = Instant::now();
    let mut readiness = Prober::new(plan, writer.ip);
    let mut liveness = plan
        .liveness
        .clone()
        .map(|p| Prober::of(Some(p), plan, writer.ip));
    let mut alive = true;
    let mut deleted = false;
    let mut deadline: Option<Instant> = None;
    let mut sigterm_at: Option<Instant> = None;
    let mut stopped = false;
    let mut killed = false;
    loop {
        let pod = latest.borrow_and_update().clone();
        let now = Instant::now();
        if terminating(&pod) && !deleted {
            deleted = true;
            terminations()
                .lock()
                .expect("terminations lock")
                .entry((namespace.to_string(), name.to_string()))
                .or_insert_with(std::time::Instant::now);
            // A stop already under way (liveness) keeps its deadline if that is sooner.
            let grace = now + grace_of(&pod, plan);
            deadline = Some(deadline.map_or(grace, |d| d.min(grace)));
            if sigterm_at.is_none() {
                sigterm_at = Some(grace.min(now + plan.pre_stop));
            }
        }
        if !alive && deadline.is_none() {
            tracing::warn!(pod = %name, "node agent: liveness probe failed; the container will be restarted");
            let grace = now + plan.grace;
            deadline = Some(grace);
            sigterm_at = Some(grace.min(now + plan.pre_stop));
        }
        if let Some(at) = sigterm_at
            && now >= at
            && !stopped
        {
            stopped = true;
            signal(process.pid, libc::SIGTERM);
        }
        if let Some(d) = deadline
            && now >= d
            && !killed
        {
            killed = true;
            tracing::warn!(pod = %name, "the container did not stop within the grace period; killed");
            signal(process.pid, libc::SIGKILL);
        }
        if readiness.due() {
            c.ready = readiness.probe(c.ready).await;
        }
        if let Some(l) = liveness.as_mut()
            && l.due()
            && deadline.is_none()
        {
            alive = l.probe(alive).await;
        }
        if !writer.write(&pod, c, "Running").await {
            let _ = process.child.start_kill();
            return Ended::Gone;
        }
        let mut wake = readiness.next();
        if let Some(l) = &liveness {
            wake = wake.min(l.next());
        }
        for at in [sigterm_at, deadline].into_iter().flatten() {
            if at > Instant::now() {
                wake = wake.min(at);
            }
        }
        if !alive && deadline.is_none() {
            wake = Instant::now();
        }
        tokio::select! {
            status = process.child.wait() => {
                use std::os::unix::process::ExitStatusExt;
                let code = match status {
                    Ok(s) => s.code().or(s.signal().map(|sig| 128 + sig)).unwrap_or(255),
                    Err(_) => 255,
                };
                c.exit_code = code;
                c.running = false;
                c.ready = false;
                tracing::info!(pod = %name, code, log = %process.log.display(), "node agent: container exited");
                return if deleted {
                    Ended::Deleted
                } else {
                    Ended::Exited { ran: started.elapsed() }
                };
            }
            _ = tokio::time::sleep_until(wake) => {}
            r = latest.changed() => if r.is_err() {
                let _ = process.child.start_kill();
                return Ended::Gone;
            },
        }
    }
}
