//! The rig's container runtime, for the images it can run: `readygate` (any registry, tag or
//! digest) is the readygate binary of this build, laid out as the project's Dockerfile builds
//! the image (`/readygate`, ENTRYPOINT `["/readygate"]`, CMD `["serve"]`, USER 65532:65532).
//! A container is a process as a kubelet and its runtime start it: argv from the image and the
//! container's `command`/`args` (with `$(VAR)` expansion), the environment the kubelet builds
//! (`KUBERNETES_SERVICE_HOST`/`_PORT`, `env` with values and `valueFrom` field, Secret and
//! ConfigMap references), in the pod's network namespace ([`crate::netns::Sandbox`]), in a mount
//! namespace of its own whose root is the image (the binary, the host's read-only `/usr`,
//! `/lib*`, `/etc`, a few devices, `/proc`) with the pod's volumes bind-mounted at their
//! `mountPath`s, its own UTS namespace with the pod's name as host name, and the
//! securityContext's user, group, supplementary groups (fsGroup), `no_new_privs` and read-only
//! root. stdout and stderr go to a log file. Needs root (CAP_SYS_ADMIN for the namespaces and
//! mounts, CAP_SETUID for the user).

use crate::str_at;
use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client};
use serde_json::Value;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// An image the rig can run: its files and config.
#[derive(Debug, Clone)]
pub struct Image {
    pub reference: String,
    /// Files of the image: path inside → file on the host.
    pub files: Vec<(String, PathBuf)>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub user: (u32, u32),
    pub working_dir: String,
    pub env: Vec<(String, String)>,
}

/// The repository name of an image reference: `ghcr.io/x/readygate:v1@sha256:…` → `readygate`.
pub fn image_name(reference: &str) -> &str {
    let without_digest = reference.split('@').next().unwrap_or(reference);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split(':').next().unwrap_or(last)
}

/// The image `reference` stands for, if the rig runs it as a process: `Some(Err)` when it is
/// readygate's but no binary was built.
pub fn image(reference: &str, readygate_bin: Option<&Path>) -> Option<Result<Image, String>> {
    if image_name(reference) != "readygate" {
        return None;
    }
    Some(match readygate_bin {
        None => Err(format!(
            "image {reference:?} is the readygate binary of this build, and none was found: run \
             `cargo build --bin readygate` or set READYGATE_BIN"
        )),
        Some(bin) => Ok(Image {
            reference: reference.to_string(),
            files: vec![("/readygate".into(), bin.to_path_buf())],
            entrypoint: vec!["/readygate".into()],
            cmd: vec!["serve".into()],
            user: (65532, 65532),
            working_dir: "/".into(),
            // gcr.io/distroless/cc-debian12:nonroot's environment.
            env: vec![
                (
                    "PATH".into(),
                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                ),
                ("HOME".into(), "/home/nonroot".into()),
            ],
        }),
    })
}

/// Kubernetes' `$(VAR)` expansion of command, args and env values: a defined variable is
/// replaced, an undefined reference kept as written, `$$` is a literal `$`.
pub fn expand(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('(')
            && let Some(end) = r.find(')')
        {
            let name = &r[..end];
            match vars.get(name) {
                Some(v) => out.push_str(v),
                None => out.push_str(&rest[i..i + 2 + end + 1]),
            }
            rest = &r[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A container the kubelet cannot start for its configuration (`CreateContainerConfigError`).
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The environment the kubelet gives container `c` of `pod`: the image's, then the
/// `kubernetes` Service's variables (at `api`: the rig has no kube-proxy, so they name the
/// Service's endpoint, the API server's advertise address, rather than its ClusterIP), then
/// `env` in order, each expanded against the ones before.
pub async fn environment(
    client: &Client,
    pod: &Value,
    c: &Value,
    image: &Image,
    pod_ip: &str,
    api: SocketAddr,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut env: Vec<(String, String)> = image.env.clone();
    env.push(("HOSTNAME".into(), str_at(pod, "/metadata/name")));
    let (host, port) = (api.ip().to_string(), api.port().to_string());
    let url = format!("tcp://{api}");
    let pfx = format!("KUBERNETES_PORT_{port}_TCP");
    env.extend([
        ("KUBERNETES_SERVICE_HOST".into(), host.clone()),
        ("KUBERNETES_SERVICE_PORT".into(), port.clone()),
        ("KUBERNETES_SERVICE_PORT_HTTPS".into(), port.clone()),
        ("KUBERNETES_PORT".into(), url.clone()),
        (pfx.clone(), url),
        (format!("{pfx}_PROTO"), "tcp".into()),
        (format!("{pfx}_PORT"), port),
        (format!("{pfx}_ADDR"), host),
    ]);
    let ns = str_at(pod, "/metadata/namespace");
    let mut secrets: BTreeMap<String, Option<Secret>> = BTreeMap::new();
    let mut maps: BTreeMap<String, Option<ConfigMap>> = BTreeMap::new();
    for e in c["env"].as_array().into_iter().flatten() {
        let name = str_at(e, "/name");
        let vars: BTreeMap<String, String> = env.iter().cloned().collect();
        let value = if let Some(v) = e.get("value").and_then(Value::as_str) {
            Some(expand(v, &vars))
        } else if let Some(from) = e.get("valueFrom") {
            let optional = |r: &Value| r["optional"].as_bool().unwrap_or(false);
            if let Some(f) = from.get("fieldRef") {
                Some(
                    crate::k8s::volumes::field(pod, &str_at(f, "/fieldPath"), pod_ip)
                        .map_err(ConfigError)?,
                )
            } else if let Some(r) = from.get("secretKeyRef") {
                let (sname, key) = (str_at(r, "/name"), str_at(r, "/key"));
                if !secrets.contains_key(&sname) {
                    let got = Api::<Secret>::namespaced(client.clone(), &ns)
                        .get_opt(&sname)
                        .await
                        .map_err(|e| ConfigError(format!("secret {sname:?}: {e}")))?;
                    secrets.insert(sname.clone(), got);
                }
                let v = secrets[&sname]
                    .as_ref()
                    .and_then(|s| s.data.as_ref()?.get(&key))
                    .map(|b| String::from_utf8_lossy(&b.0).to_string());
                match v {
                    Some(v) => Some(v),
                    None if optional(r) => None,
                    None => {
                        return Err(ConfigError(format!(
                            "couldn't find key {key} in Secret {ns}/{sname}"
                        )));
                    }
                }
            } else if let Some(r) = from.get("configMapKeyRef") {
                let (cname, key) = (str_at(r, "/name"), str_at(r, "/key"));
                if !maps.contains_key(&cname) {
                    let got = Api::<ConfigMap>::namespaced(client.clone(), &ns)
                        .get_opt(&cname)
                        .await
                        .map_err(|e| ConfigError(format!("configmap {cname:?}: {e}")))?;
                    maps.insert(cname.clone(), got);
                }
                let v = maps[&cname]
                    .as_ref()
                    .and_then(|m| m.data.as_ref()?.get(&key).cloned());
                match v {
                    Some(v) => Some(v),
                    None if optional(r) => None,
                    None => {
                        return Err(ConfigError(format!(
                            "couldn't find key {key} in ConfigMap {ns}/{cname}"
                        )));
                    }
                }
            } else {
                return Err(ConfigError(format!(
                    "env {name}: the rig supports valueFrom fieldRef, secretKeyRef and configMapKeyRef only"
                )));
            }
        } else {
            Some(String::new())
        };
        if let Some(v) = value {
            env.retain(|(k, _)| *k != name);
            env.push((name, v));
        }
    }
    Ok(env)
}

/// The argv of container `c` from `image`: `command` replaces the entrypoint, `args` the cmd.
pub fn argv(c: &Value, image: &Image, env: &[(String, String)]) -> Vec<String> {
    let vars: BTreeMap<String, String> = env.iter().cloned().collect();
    let list = |k: &str| -> Option<Vec<String>> {
        c.get(k).and_then(Value::as_array).map(|a| {
            a.iter()
                .map(|s| expand(s.as_str().unwrap_or_default(), &vars))
                .collect()
        })
    };
    match (list("command"), list("args")) {
        (Some(cmd), Some(args)) => cmd.into_iter().chain(args).collect(),
        (Some(cmd), None) => cmd,
        (None, Some(args)) => image.entrypoint.iter().cloned().chain(args).collect(),
        (None, None) => image.entrypoint.iter().chain(&image.cmd).cloned().collect(),
    }
}

/// A bind mount into the container.
#[derive(Debug, Clone)]
pub struct Mount {
    pub source: PathBuf,
    /// Absolute path inside the container.
    pub target: String,
    pub read_only: bool,
}

/// Everything the runtime needs to start one container.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub hostname: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the pod's fsGroup and supplementalGroups).
    pub groups: Vec<u32>,
    pub no_new_privs: bool,
    pub read_only_root: bool,
    /// The pod's volumes at their mount paths.
    pub mounts: Vec<Mount>,
    /// Where the image's root is assembled (a directory of the pod's own).
    pub rootfs: PathBuf,
    pub log: PathBuf,
}

/// The identity of container `c` of `pod` as its securityContext and the image give it:
/// (uid, gid, supplementary groups, no_new_privs, read-only root). Fails as the kubelet does for
/// `runAsNonRoot` with uid 0.
pub fn identity(
    pod: &Value,
    c: &Value,
    image: &Image,
) -> Result<(u32, u32, Vec<u32>, bool, bool), ConfigError> {
    let ctx = |k: &str| {
        c.pointer(&format!("/securityContext/{k}"))
            .or_else(|| pod.pointer(&format!("/spec/securityContext/{k}")))
            .cloned()
    };
    let uid = ctx("runAsUser")
        .and_then(|v| v.as_u64())
        .map(|u| u as u32)
        .unwrap_or(image.user.0);
    let gid = ctx("runAsGroup")
        .and_then(|v| v.as_u64())
        .map(|g| g as u32)
        .unwrap_or(image.user.1);
    if ctx("runAsNonRoot").and_then(|v| v.as_bool()) == Some(true) && uid == 0 {
        return Err(ConfigError(
            "container has runAsNonRoot and image will run as root".into(),
        ));
    }
    let mut groups: Vec<u32> = pod
        .pointer("/spec/securityContext/fsGroup")
        .and_then(Value::as_u64)
        .map(|g| g as u32)
        .into_iter()
        .collect();
    groups.extend(
        pod.pointer("/spec/securityContext/supplementalGroups")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
            .map(|g| g as u32),
    );
    groups.sort();
    groups.dedup();
    let no_new_privs =
        c.pointer("/securityContext/allowPrivilegeEscalation") == Some(&false.into());
    let ro = c.pointer("/securityContext/readOnlyRootFilesystem") == Some(&true.into());
    Ok((uid, gid, groups, no_new_privs, ro))
}

/// Host directories (or their symlinks, on a merged-/usr system) the image's root shares,
/// read-only: the dynamic loader, the C library, /etc.
const SYSTEM_DIRS: &[&str] = &[
    "usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc",
];
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom"];

fn cstr(p: &Path) -> anyhow::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).with_context(|| format!("a NUL in {}", p.display()))
}

/// One step of the container's set-up in the child, with its name for the log.
struct Bind {
    source: CString,
    target: CString,
    recursive: bool,
    read_only: bool,
}

/// What the child does between fork and exec, prepared by the parent (the child may only make
/// system calls).
struct Prepared {
    netns: i32,
    hostname: CString,
    rootfs: CString,
    binds: Vec<Bind>,
    read_only_root: bool,
    working_dir: CString,
    uid: u32,
    gid: u32,
    groups: Vec<libc::gid_t>,
    no_new_privs: bool,
}

/// Lays out the image's root under `spec.rootfs`: mount points for the image's files, the
/// system directories, devices, /proc and the volumes. Returns the binds, in order.
fn layout(spec: &ContainerSpec, image: &Image) -> anyhow::Result<Vec<Bind>> {
    let root = &spec.rootfs;
    std::fs::create_dir_all(root)?;
    let inside = |target: &str| root.join(target.trim_start_matches('/'));
    let mut binds = Vec::new();
    let mut bind = |source: &Path, target: &str, read_only: bool| -> anyhow::Result<()> {
        let meta = std::fs::metadata(source)
            .with_context(|| format!("mount source {}", source.display()))?;
        let at = inside(target);
        if let Some(parent) = at.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if meta.is_dir() {
            std::fs::create_dir_all(&at)?;
        } else if !at.exists() {
            std::fs::write(&at, b"")?;
        }
        binds.push(Bind {
            source: cstr(source)?,
            target: cstr(&at)?,
            recursive: meta.is_dir(),
            read_only,
        });
        Ok(())
    };
    for d in SYSTEM_DIRS {
        let host = Path::new("/").join(d);
        match std::fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => {
                let link = inside(d);
                if std::fs::symlink_metadata(&link).is_err() {
                    std::os::unix::fs::symlink(std::fs::read_link(&host)?, &link)?;
                }
            }
            Ok(m) if m.is_dir() => bind(&host, &format!("/{d}"), true)?,
            _ => {}
        }
    }
    for dev in DEVICES {
        bind(&Path::new("/dev").join(dev), &format!("/dev/{dev}"), false)?;
    }
    bind(Path::new("/proc"), "/proc", false)?;
    for (path, host) in &image.files {
        bind(host, path, true)?;
    }
    for m in &spec.mounts {
        bind(&m.source, &m.target, m.read_only)?;
    }
    Ok(binds)
}

/// Writes `msg` to the child's stderr (the container log): which set-up step failed.
fn child_say(msg: &[u8]) {
    // SAFETY: write(2) on the child's stderr, async-signal-safe.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
    }
}

fn check(ret: libc::c_long, step: &[u8]) -> std::io::Result<()> {
    if ret < 0 {
        let err = std::io::Error::last_os_error();
        child_say(b"rig container runtime: ");
        child_say(step);
        child_say(
            b" failed (the rig runs containers as root: it needs CAP_SYS_ADMIN and CAP_SETUID)\n",
        );
        return Err(err);
    }
    Ok(())
}

/// The child's side: join the pod's network namespace, make its own mount and UTS namespaces,
/// bind the image's root and the volumes, pivot into it, take the container's user. Only
/// system calls, on data the parent prepared.
fn enter(p: &Prepared) -> std::io::Result<()> {
    use libc::{
        CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWUTS, MNT_DETACH, MS_BIND, MS_RDONLY, MS_REC,
        MS_REMOUNT, MS_SLAVE,
    };
    let null = std::ptr::null::<libc::c_char>();
    // SAFETY: each call is a plain system call on NUL-terminated strings the parent made and
    // keeps alive; this runs in the forked child only.
    unsafe {
        check(
            libc::setns(p.netns, CLONE_NEWNET) as _,
            b"setns(pod network)",
        )?;
        check(
            libc::unshare(CLONE_NEWNS | CLONE_NEWUTS) as _,
            b"unshare(mount, uts)",
        )?;
        check(
            libc::sethostname(p.hostname.as_ptr(), p.hostname.as_bytes().len()) as _,
            b"sethostname",
        )?;
        // Nothing mounted here propagates back to the host.
        check(
            libc::mount(
                null,
                c"/".as_ptr(),
                null,
                MS_REC | MS_SLAVE,
                std::ptr::null(),
            ) as _,
            b"mount / rslave",
        )?;
        check(
            libc::mount(
                p.rootfs.as_ptr(),
                p.rootfs.as_ptr(),
                null,
                MS_BIND,
                std::ptr::null(),
            ) as _,
            b"bind the root",
        )?;
        for b in &p.binds {
            let rec = if b.recursive { MS_REC } else { 0 };
            check(
                libc::mount(
                    b.source.as_ptr(),
                    b.target.as_ptr(),
                    null,
                    MS_BIND | rec,
                    std::ptr::null(),
                ) as _,
                b"bind mount",
            )?;
            if b.read_only {
                check(
                    libc::mount(
                        null,
                        b.target.as_ptr(),
                        null,
                        MS_BIND | MS_REMOUNT | MS_RDONLY,
                        std::ptr::null(),
                    ) as _,
                    b"remount read-only",
                )?;
            }
        }
        if p.read_only_root {
            check(
                libc::mount(
                    null,
                    p.rootfs.as_ptr(),
                    null,
                    MS_BIND | MS_REMOUNT | MS_RDONLY,
                    std::ptr::null(),
                ) as _,
                b"read-only root",
            )?;
        }
        check(libc::chdir(p.rootfs.as_ptr()) as _, b"chdir(root)")?;
        check(
            libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()),
            b"pivot_root",
        )?;
        check(
            libc::umount2(c".".as_ptr(), MNT_DETACH) as _,
            b"detach the host root",
        )?;
        check(
            libc::chdir(p.working_dir.as_ptr()) as _,
            b"chdir(workingDir)",
        )?;
        check(
            libc::setgroups(p.groups.len(), p.groups.as_ptr()) as _,
            b"setgroups",
        )?;
        check(libc::setgid(p.gid) as _, b"setgid")?;
        check(libc::setuid(p.uid) as _, b"setuid")?;
        if p.no_new_privs {
            check(
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) as _,
                b"no_new_privs",
            )?;
        }
        // After setuid, which clears it: the container dies with the rig's thread that
        // started it (a worker of the runtime the node agent runs on).
        check(
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) as _,
            b"PR_SET_PDEATHSIG",
        )?;
    }
    Ok(())
}

/// A running container process.
pub struct Process {
    pub child: tokio::process::Child,
    pub pid: u32,
    pub log: PathBuf,
}

/// Starts `spec` from `image` in the network namespace `netns`.
pub fn start(spec: &ContainerSpec, image: &Image, netns: i32) -> anyhow::Result<Process> {
    let Some(program) = spec.argv.first() else {
        bail!("the container has no command (the image has no entrypoint)");
    };
    if !program.starts_with('/') {
        bail!("exec: {program:?}: executable file not found in $PATH");
    }
    if !image.files.iter().any(|(p, _)| p == program) {
        bail!(
            "exec: {program:?}: no such file or directory (image {} holds {:?})",
            image.reference,
            image.files.iter().map(|(p, _)| p).collect::<Vec<_>>()
        );
    }
    let binds = layout(spec, image)?;
    let prepared = Prepared {
        netns,
        hostname: CString::new(spec.hostname.clone())?,
        rootfs: cstr(&spec.rootfs)?,
        binds,
        read_only_root: spec.read_only_root,
        working_dir: CString::new(spec.working_dir.clone())?,
        uid: spec.uid,
        gid: spec.gid,
        groups: spec.groups.clone(),
        no_new_privs: spec.no_new_privs,
    };
    if let Some(parent) = spec.log.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .with_context(|| format!("opening the container log {}", spec.log.display()))?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&spec.argv[1..])
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    // SAFETY: `enter` makes system calls only, on data prepared above and moved into the
    // closure.
    unsafe {
        cmd.pre_exec(move || enter(&prepared));
    }
    let child = cmd.spawn().with_context(|| {
        format!(
            "starting the container ({}); its log: {}",
            spec.argv.join(" "),
            spec.log.display()
        )
    })?;
    let pid = child.id().context("the container has no PID")?;
    Ok(Process {
        child,
        pid,
        log: spec.log.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn image_names_with_registry_tag_and_digest() {
        assert_eq!(image_name("readygate:latest"), "readygate");
        assert_eq!(image_name("ghcr.io/x/readygate:v1"), "readygate");
        assert_eq!(image_name("localhost:5000/readygate"), "readygate");
        assert_eq!(
            image_name("123.dkr.ecr.eu-west-1.amazonaws.com/readygate@sha256:abc"),
            "readygate"
        );
        assert_eq!(image_name("rig/web:1"), "web");
        assert!(image("rig/web:1", None).is_none());
        assert!(image("readygate", None).unwrap().is_err());
    }

    #[test]
    fn dollar_expansion_as_kubernetes_does_it() {
        let vars: BTreeMap<String, String> =
            [("POD_IP".to_string(), "10.244.1.1".to_string())].into();
        assert_eq!(
            expand("--addr=$(POD_IP):9443", &vars),
            "--addr=10.244.1.1:9443"
        );
        assert_eq!(
            expand("$(MISSING)-$$(POD_IP)", &vars),
            "$(MISSING)-$(POD_IP)"
        );
        assert_eq!(expand("a$b", &vars), "a$b");
    }

    #[test]
    fn argv_from_the_image_and_the_container() {
        let img = image("readygate:latest", Some(Path::new("/bin/true")))
            .unwrap()
            .unwrap();
        let env = vec![("X".to_string(), "1".to_string())];
        assert_eq!(argv(&json!({}), &img, &env), ["/readygate", "serve"]);
        assert_eq!(
            argv(&json!({"args": ["serve", "--v=$(X)"]}), &img, &env),
            ["/readygate", "serve", "--v=1"]
        );
        assert_eq!(
            argv(
                &json!({"command": ["/readygate"], "args": ["certs"]}),
                &img,
                &env
            ),
            ["/readygate", "certs"]
        );
    }

    #[test]
    fn run_as_non_root_with_uid_0_is_a_config_error() {
        let img = image("readygate", Some(Path::new("/bin/true")))
            .unwrap()
            .unwrap();
        let pod = json!({"spec": {"securityContext": {"runAsNonRoot": true, "fsGroup": 65532,
            "supplementalGroups": [7]}}});
        let (uid, gid, groups, _, _) = identity(&pod, &json!({}), &img).unwrap();
        assert_eq!((uid, gid, groups), (65532, 65532, vec![7, 65532]));
        let root = json!({"securityContext": {"runAsUser": 0}});
        assert!(identity(&pod, &root, &img).is_err());
    }
}
