//! Pod volumes as the kubelet makes them, for the containers the node agent runs
//! ([`crate::k8s::runtime`]): Secret, ConfigMap, downward API and projected volumes (the
//! ServiceAccount admission plugin's `kube-api-access-*`: a bound token from the TokenRequest
//! API, `ca.crt` from the `kube-root-ca.crt` ConfigMap, the namespace), and emptyDir. Each lives
//! in a directory of the pod's own (`volumes/kubernetes.io~secret/NAME`, as under
//! `/var/lib/kubelet/pods/UID/`), written by the kubelet's atomic writer: the files in a
//! timestamped directory, a `..data` symlink to it and a symlink per top-level path through
//! `..data`; an update writes a new timestamped directory and renames a new `..data` over the
//! old one, so a reader sees either version, never a mix. With an fsGroup every file and
//! directory is group-owned by it and group-readable (directories setgid), as the kubelet's
//! `SetVolumeOwnership` leaves a read-only volume. [`PodVolumes::sync`] runs again every sync
//! period and rewrites a volume whose Secret, ConfigMap or token changed.

use crate::str_at;
use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The files of one volume, by path relative to its directory.
pub type Payload = BTreeMap<String, File>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub data: Vec<u8>,
    pub mode: u32,
}

/// The symlink to the current timestamped directory.
pub const DATA_DIR: &str = "..data";
const DATA_DIR_TMP: &str = "..data_tmp";
/// The kubelet's default mode for Secret, ConfigMap, downward API and projected files (0644).
const DEFAULT_MODE: u32 = 0o644;

/// Writes `payload` into `dir` as the kubelet's AtomicWriter does; false when `dir` already
/// holds exactly this payload. With `fs_group`, then sets the ownership of a read-only volume.
pub fn write_atomic(dir: &Path, payload: &Payload, fs_group: Option<u32>) -> io::Result<bool> {
    std::fs::create_dir_all(dir)?;
    let data = dir.join(DATA_DIR);
    let old = std::fs::read_link(&data).ok();
    // Contents only, as the kubelet compares them (the ownership pass changes modes).
    let wanted: BTreeMap<String, Vec<u8>> = payload
        .iter()
        .map(|(p, f)| (p.clone(), f.data.clone()))
        .collect();
    if old.is_some() && current(dir)? == wanted {
        return Ok(false);
    }
    // `..2006_01_02_15_04_05.` plus a random suffix, as os.MkdirTemp names it.
    let name = format!(
        "..{}{}",
        jiff::Timestamp::now().strftime("%Y_%m_%d_%H_%M_%S."),
        rand::random::<u32>()
    );
    let ts = dir.join(&name);
    std::fs::create_dir(&ts)?;
    std::fs::set_permissions(&ts, std::fs::Permissions::from_mode(0o755))?;
    for (path, file) in payload {
        let p = ts.join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, &file.data)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(file.mode))?;
    }
    // One user-visible symlink per top-level path, through ..data.
    let top: std::collections::BTreeSet<&str> = payload
        .keys()
        .map(|p| p.split('/').next().unwrap_or(p))
        .collect();
    for t in &top {
        let link = dir.join(t);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new(DATA_DIR).join(t), &link)?;
        }
    }
    let tmp = dir.join(DATA_DIR_TMP);
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&name, &tmp)?;
    std::fs::rename(&tmp, &data)?;
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old))?;
    }
    // Paths the new payload no longer has.
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let n = entry.file_name().to_string_lossy().to_string();
        if !n.starts_with("..") && !top.contains(n.as_str()) {
            std::fs::remove_file(entry.path())?;
        }
    }
    if let Some(gid) = fs_group {
        set_ownership(dir, gid)?;
    }
    Ok(true)
}

/// What `dir`'s `..data` holds now: contents by path.
fn current(dir: &Path) -> io::Result<BTreeMap<String, Vec<u8>>> {
    fn walk(base: &Path, rel: &str, out: &mut BTreeMap<String, Vec<u8>>) -> io::Result<()> {
        for entry in std::fs::read_dir(base.join(rel))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().to_string();
            let path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let meta = entry.metadata()?;
            if meta.is_dir() {
                walk(base, &path, out)?;
            } else {
                out.insert(path, std::fs::read(entry.path())?);
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(&dir.join(DATA_DIR), "", &mut out)?;
    Ok(out)
}

/// The kubelet's `SetVolumeOwnership` for a read-only volume: group `gid` on everything,
/// files `| 0440`, directories `| 0550` and setgid.
fn set_ownership(dir: &Path, gid: u32) -> io::Result<()> {
    fn walk(p: &Path, gid: u32) -> io::Result<()> {
        let meta = std::fs::symlink_metadata(p)?;
        std::os::unix::fs::lchown(p, None, Some(gid))?;
        if meta.file_type().is_symlink() {
            return Ok(());
        }
        let mode = meta.permissions().mode() & 0o7777;
        let mode = if meta.is_dir() {
            mode | 0o440 | 0o110 | 0o2000
        } else {
            mode | 0o440
        };
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(p)? {
                walk(&entry?.path(), gid)?;
            }
        }
        Ok(())
    }
    walk(dir, gid)
}

/// The value of a downward API `fieldPath` for `pod` (whose IP may not be in its status yet).
pub fn field(pod: &Value, path: &str, pod_ip: &str) -> Result<String, String> {
    let map = |pointer: &str| -> String {
        let mut lines: Vec<String> = pod
            .pointer(pointer)
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", json!(v.as_str().unwrap_or_default())))
            .collect();
        lines.sort();
        lines.join("\n")
    };
    let keyed = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_prefix("['"))
            .and_then(|r| r.strip_suffix("']"))
    };
    Ok(match path {
        "metadata.name" => str_at(pod, "/metadata/name"),
        "metadata.namespace" => str_at(pod, "/metadata/namespace"),
        "metadata.uid" => str_at(pod, "/metadata/uid"),
        "metadata.labels" => map("/metadata/labels"),
        "metadata.annotations" => map("/metadata/annotations"),
        "spec.nodeName" => str_at(pod, "/spec/nodeName"),
        "spec.serviceAccountName" => str_at(pod, "/spec/serviceAccountName"),
        "status.hostIP" | "status.hostIPs" => crate::netns::NODE_IP.to_string(),
        "status.podIP" | "status.podIPs" => pod_ip.to_string(),
        _ => {
            if let Some(k) = keyed("metadata.labels") {
                return Ok(pod["metadata"]["labels"][k]
                    .as_str()
                    .unwrap_or_default()
                    .to_string());
            }
            if let Some(k) = keyed("metadata.annotations") {
                return Ok(pod["metadata"]["annotations"][k]
                    .as_str()
                    .unwrap_or_default()
                    .to_string());
            }
            return Err(format!("the rig does not support fieldPath {path:?}"));
        }
    })
}

/// A bound ServiceAccount token the node agent holds for one projection.
struct Token {
    token: String,
    got: Instant,
    ttl: Duration,
}

/// One pod's volumes: what its spec says, where they live, the tokens requested for them.
pub struct PodVolumes {
    client: Client,
    pod: Value,
    root: PathBuf,
    fs_group: Option<u32>,
    pod_ip: String,
    tokens: HashMap<String, Token>,
}

/// The volume plugins the rig mounts, by the kubelet's directory names.
fn plugin(volume: &Value) -> Option<&'static str> {
    [
        ("secret", "kubernetes.io~secret"),
        ("configMap", "kubernetes.io~configmap"),
        ("projected", "kubernetes.io~projected"),
        ("downwardAPI", "kubernetes.io~downward-api"),
        ("emptyDir", "kubernetes.io~empty-dir"),
    ]
    .into_iter()
    .find(|(k, _)| volume.get(*k).is_some())
    .map(|(_, dir)| dir)
}

fn mode_of(v: &Value, default: u32) -> u32 {
    v.as_u64().map(|m| m as u32).unwrap_or(default)
}

impl PodVolumes {
    /// The volumes of `pod`, under `root`; an error names a volume type the rig cannot mount.
    pub fn new(client: Client, pod: &Value, root: PathBuf, pod_ip: &str) -> anyhow::Result<Self> {
        for v in pod
            .pointer("/spec/volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if plugin(v).is_none() {
                bail!(
                    "volume {:?}: the rig mounts secret, configMap, projected, downwardAPI and emptyDir volumes only",
                    str_at(v, "/name")
                );
            }
        }
        Ok(Self {
            client,
            pod: pod.clone(),
            root,
            fs_group: pod
                .pointer("/spec/securityContext/fsGroup")
                .and_then(Value::as_u64)
                .map(|g| g as u32),
            pod_ip: pod_ip.to_string(),
            tokens: HashMap::new(),
        })
    }

    fn volumes(&self) -> Vec<Value> {
        self.pod
            .pointer("/spec/volumes")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }

    /// The directory of volume `name`.
    pub fn dir(&self, name: &str) -> Option<PathBuf> {
        let v = self.volumes().into_iter().find(|v| v["name"] == name)?;
        Some(self.root.join(plugin(&v)?).join(name))
    }

    /// Writes every volume that is missing or whose content changed (a Secret or ConfigMap
    /// updated, a token due for refresh). Returns the names of the volumes it wrote.
    pub async fn sync(&mut self) -> anyhow::Result<Vec<String>> {
        let mut written = Vec::new();
        for v in self.volumes() {
            let name = str_at(&v, "/name");
            let dir = self.dir(&name).context("a volume without a plugin")?;
            if v.get("emptyDir").is_some() {
                if !dir.exists() {
                    std::fs::create_dir_all(&dir)?;
                    // World-writable, as the kubelet makes an emptyDir.
                    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))?;
                    written.push(name);
                }
                continue;
            }
            let payload = self
                .payload(&v)
                .await
                .with_context(|| format!("MountVolume.SetUp failed for volume {name:?}"))?;
            if write_atomic(&dir, &payload, self.fs_group)
                .with_context(|| format!("writing volume {name:?} in {}", dir.display()))?
            {
                written.push(name);
            }
        }
        Ok(written)
    }

    async fn payload(&mut self, v: &Value) -> anyhow::Result<Payload> {
        let mut out = Payload::new();
        if let Some(s) = v.get("secret") {
            let mode = mode_of(&s["defaultMode"], DEFAULT_MODE);
            self.secret(&str_at(s, "/secretName"), s, mode, &mut out)
                .await?;
        } else if let Some(c) = v.get("configMap") {
            let mode = mode_of(&c["defaultMode"], DEFAULT_MODE);
            self.config_map(&str_at(c, "/name"), c, mode, &mut out)
                .await?;
        } else if let Some(d) = v.get("downwardAPI") {
            let mode = mode_of(&d["defaultMode"], DEFAULT_MODE);
            self.downward(d, mode, &mut out)?;
        } else if let Some(p) = v.get("projected") {
            let mode = mode_of(&p["defaultMode"], DEFAULT_MODE);
            for source in p["sources"].as_array().into_iter().flatten() {
                if let Some(s) = source.get("secret") {
                    self.secret(&str_at(s, "/name"), s, mode, &mut out).await?;
                } else if let Some(c) = source.get("configMap") {
                    self.config_map(&str_at(c, "/name"), c, mode, &mut out)
                        .await?;
                } else if let Some(d) = source.get("downwardAPI") {
                    self.downward(d, mode, &mut out)?;
                } else if let Some(t) = source.get("serviceAccountToken") {
                    let token = self.token(t).await?;
                    out.insert(
                        str_at(t, "/path"),
                        File {
                            data: token.into_bytes(),
                            mode,
                        },
                    );
                } else {
                    bail!("the rig does not project {source}");
                }
            }
        }
        Ok(out)
    }

    /// `items` (key → path, mode) of `data`, or every key when there are none.
    fn items(
        data: BTreeMap<String, Vec<u8>>,
        spec: &Value,
        mode: u32,
        what: &str,
        out: &mut Payload,
    ) -> anyhow::Result<()> {
        let optional = spec["optional"].as_bool().unwrap_or(false);
        match spec["items"].as_array() {
            Some(items) => {
                for item in items {
                    let key = str_at(item, "/key");
                    match data.get(&key) {
                        Some(d) => {
                            out.insert(
                                str_at(item, "/path"),
                                File {
                                    data: d.clone(),
                                    mode: mode_of(&item["mode"], mode),
                                },
                            );
                        }
                        None if optional => {}
                        None => bail!("{what} has no key {key:?}"),
                    }
                }
            }
            None => {
                for (k, d) in data {
                    out.insert(k, File { data: d, mode });
                }
            }
        }
        Ok(())
    }

    fn namespace(&self) -> String {
        str_at(&self.pod, "/metadata/namespace")
    }

    async fn secret(
        &self,
        name: &str,
        spec: &Value,
        mode: u32,
        out: &mut Payload,
    ) -> anyhow::Result<()> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace());
        let what = format!("secret {name:?}");
        let data = match api.get_opt(name).await.with_context(|| what.clone())? {
            Some(s) => s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect(),
            None if spec["optional"].as_bool() == Some(true) => BTreeMap::new(),
            None => bail!("{what} not found"),
        };
        Self::items(data, spec, mode, &what, out)
    }

    async fn config_map(
        &self,
        name: &str,
        spec: &Value,
        mode: u32,
        out: &mut Payload,
    ) -> anyhow::Result<()> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace());
        let what = format!("configmap {name:?}");
        let data = match api.get_opt(name).await.with_context(|| what.clone())? {
            Some(c) => {
                let mut d: BTreeMap<String, Vec<u8>> = c
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .collect();
                d.extend(
                    c.binary_data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0)),
                );
                d
            }
            None if spec["optional"].as_bool() == Some(true) => BTreeMap::new(),
            None => bail!("{what} not found"),
        };
        Self::items(data, spec, mode, &what, out)
    }

    fn downward(&self, spec: &Value, mode: u32, out: &mut Payload) -> anyhow::Result<()> {
        for item in spec["items"].as_array().into_iter().flatten() {
            let path = str_at(item, "/fieldRef/fieldPath");
            if path.is_empty() {
                bail!("the rig supports downward API fieldRef items only: {item}");
            }
            let value = field(&self.pod, &path, &self.pod_ip).map_err(anyhow::Error::msg)?;
            out.insert(
                str_at(item, "/path"),
                File {
                    data: value.into_bytes(),
                    mode: mode_of(&item["mode"], mode),
                },
            );
        }
        Ok(())
    }

    /// A token bound to this pod, requested again (as the kubelet does) once 80% of its
    /// lifetime has passed, or after 24 h.
    async fn token(&mut self, spec: &Value) -> anyhow::Result<String> {
        let audience = str_at(spec, "/audience");
        let secs = spec["expirationSeconds"].as_i64().unwrap_or(3600);
        let key = format!("{audience}/{secs}");
        if let Some(t) = self.tokens.get(&key) {
            let refresh = (t.ttl.mul_f64(0.8)).min(Duration::from_secs(86_400));
            if t.got.elapsed() < refresh {
                return Ok(t.token.clone());
            }
        }
        let sa = match str_at(&self.pod, "/spec/serviceAccountName") {
            s if s.is_empty() => "default".to_string(),
            s => s,
        };
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &self.namespace());
        let audiences: Vec<String> = if audience.is_empty() {
            vec![]
        } else {
            vec![audience]
        };
        let req = serde_json::from_value(json!({"spec": {
            "audiences": audiences, "expirationSeconds": secs,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
                "name": str_at(&self.pod, "/metadata/name"), "uid": str_at(&self.pod, "/metadata/uid")}}}))?;
        let got = Instant::now();
        let t = api
            .create_token_request(&sa, &PostParams::default(), &req)
            .await
            .with_context(|| {
                format!(
                    "TokenRequest for serviceaccount {}/{sa} bound to pod {}",
                    self.namespace(),
                    str_at(&self.pod, "/metadata/name")
                )
            })?;
        let token = t.status.context("a TokenRequest without status")?.token;
        let ttl = Duration::from_secs(t.spec.expiration_seconds.unwrap_or(secs).max(1) as u64);
        self.tokens.insert(
            key,
            Token {
                token: token.clone(),
                got,
                ttl,
            },
        );
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn payload(files: &[(&str, &str, u32)]) -> Payload {
        files
            .iter()
            .map(|(p, d, m)| {
                (
                    p.to_string(),
                    File {
                        data: d.as_bytes().to_vec(),
                        mode: *m,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn the_atomic_writer_swaps_data_and_keeps_user_visible_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tls");
        let first = payload(&[("tls.crt", "cert-1", 0o440), ("tls.key", "key-1", 0o440)]);
        assert!(write_atomic(&dir, &first, None).unwrap());
        let data1 = std::fs::read_link(dir.join(DATA_DIR)).unwrap();
        assert!(data1.to_string_lossy().starts_with(".."), "{data1:?}");
        assert_eq!(
            std::fs::read_link(dir.join("tls.crt")).unwrap(),
            Path::new("..data/tls.crt")
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("tls.key")).unwrap(),
            "key-1"
        );
        let meta = std::fs::metadata(dir.join("tls.key")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o440);
        // The same payload again: nothing written.
        assert!(!write_atomic(&dir, &first, None).unwrap());
        assert_eq!(std::fs::read_link(dir.join(DATA_DIR)).unwrap(), data1);

        // An update: a new timestamped directory behind ..data, the old one gone, a key that
        // left the payload gone, the symlinks unchanged.
        let second = payload(&[("tls.crt", "cert-2", 0o440), ("ca.crt", "ca", 0o440)]);
        assert!(write_atomic(&dir, &second, None).unwrap());
        let data2 = std::fs::read_link(dir.join(DATA_DIR)).unwrap();
        assert_ne!(data1, data2);
        assert!(!dir.join(&data1).exists());
        assert_eq!(
            std::fs::read_to_string(dir.join("tls.crt")).unwrap(),
            "cert-2"
        );
        assert_eq!(std::fs::read_to_string(dir.join("ca.crt")).unwrap(), "ca");
        assert!(std::fs::symlink_metadata(dir.join("tls.key")).is_err());
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| !n.starts_with("..2"))
            .collect();
        names.sort();
        assert_eq!(names, ["..data", "ca.crt", "tls.crt"]);
    }

    #[test]
    fn an_fs_group_owns_the_volume_and_can_read_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("v");
        let p = payload(&[("key", "secret", 0o400), ("sub/dir/file", "x", 0o600)]);
        write_atomic(&dir, &p, Some(4242)).unwrap();
        let key = std::fs::metadata(dir.join("key")).unwrap();
        assert_eq!(key.gid(), 4242);
        assert_eq!(key.permissions().mode() & 0o777, 0o440, "0400 | 0440");
        let sub = std::fs::metadata(dir.join("sub/dir")).unwrap();
        assert_eq!(sub.gid(), 4242);
        assert_eq!(sub.permissions().mode() & 0o2000, 0o2000, "setgid");
        assert_eq!(sub.permissions().mode() & 0o050, 0o050, "group r-x");
        let root = std::fs::metadata(&dir).unwrap();
        assert_eq!(root.gid(), 4242);
        // The group bits the ownership pass added do not make the payload look changed.
        assert!(!write_atomic(&dir, &p, Some(4242)).unwrap());
    }

    #[test]
    fn downward_api_fields() {
        let pod = json!({"metadata": {"name": "rg-1", "namespace": "ns", "uid": "u",
            "labels": {"b": "2", "a": "1"}}, "spec": {"nodeName": "rig-node"}});
        assert_eq!(field(&pod, "metadata.name", "").unwrap(), "rg-1");
        assert_eq!(field(&pod, "metadata.namespace", "").unwrap(), "ns");
        assert_eq!(
            field(&pod, "status.podIP", "10.244.1.2").unwrap(),
            "10.244.1.2"
        );
        assert_eq!(
            field(&pod, "metadata.labels", "").unwrap(),
            "a=\"1\"\nb=\"2\""
        );
        assert_eq!(field(&pod, "metadata.labels['b']", "").unwrap(), "2");
        assert!(field(&pod, "spec.bogus", "").is_err());
    }
}
