//! The rig's private network namespace: the control plane, readygate, the load balancer and the
//! pods all live in one network namespace that the run makes for itself, so no packet leaves it.
//! Pods get addresses from a private pod CIDR on a veth pair inside it (the API server rejects
//! loopback addresses in EndpointSlices and Endpoints).

use anyhow::{Context, bail};
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// The node's end of the veth pair, carrying the node address (the API server's advertise
/// address and the Node's InternalIP).
pub const NODE_IF: &str = "rig-node";
/// The pods' end of the veth pair: every pod IP is a /32 on it.
pub const PODS_IF: &str = "rig-pods";
/// The node address.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// Pod IPs: 10.244.1.1 to 10.244.254.254, never reused in one run.
pub const POD_CIDR: &str = "10.244.0.0/16";
const POD_IPS: u32 = 254 * 254;

/// The namespace this process made, as a file descriptor other threads can join.
static NETNS: OnceLock<Result<i32, String>> = OnceLock::new();

fn inode(path: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Puts the calling thread into the run's private network namespace, making it (with its
/// loopback and veth interfaces) on the first call. Threads and processes started afterwards by
/// this thread inherit it, so call it before building the tokio runtime. Needs CAP_SYS_ADMIN
/// (root, or a process started under `unshare -r -n`, which is already private: then it only
/// brings the interfaces up).
pub fn enter() -> anyhow::Result<()> {
    let made = NETNS.get_or_init(|| make().map_err(|e| format!("{e:#}")));
    let fd = match made {
        Ok(fd) => *fd,
        Err(e) => bail!("{e}"),
    };
    if inode("/proc/thread-self/ns/net") == fd_inode(fd) {
        return Ok(());
    }
    // SAFETY: setns on a namespace file descriptor this process keeps open.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
        bail!(
            "joining the rig's network namespace: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn fd_inode(fd: i32) -> Option<u64> {
    inode(&format!("/proc/self/fd/{fd}"))
}

/// Runs `ip ARGS` from the calling thread (so in its network namespace).
fn run_ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (Debian's iproute2 is needed for the rig's network)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn make() -> anyhow::Result<i32> {
    let private = std::env::var_os("RIG_NETNS_PRIVATE").is_some();
    if !private {
        // SAFETY: unshare of the calling thread's network namespace only.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            let err = std::io::Error::last_os_error();
            bail!(
                "the rig runs in a private network namespace of its own and could not make one \
                 (unshare(CLONE_NEWNET): {err}). Run it as root, or where unprivileged user \
                 namespaces are allowed under `unshare -r -n env RIG_NETNS_PRIVATE=1 …`"
            );
        }
    }
    run_ip(&["link", "set", "lo", "up"])?;
    run_ip(&[
        "link", "add", NODE_IF, "type", "veth", "peer", "name", PODS_IF,
    ])?;
    run_ip(&["link", "set", NODE_IF, "up"])?;
    run_ip(&["link", "set", PODS_IF, "up"])?;
    run_ip(&["addr", "add", &format!("{NODE_IP}/16"), "dev", NODE_IF])?;
    let path = std::ffi::CString::new("/proc/thread-self/ns/net").expect("no NUL");
    // SAFETY: open(2) of a path we own the string of.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        bail!(
            "opening the rig's network namespace: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(fd)
}

/// The pod IPs of this process (every node agent of the run takes its pods' addresses here).
pub fn pod_ips() -> &'static PodIps {
    static IPS: PodIps = PodIps {
        next: AtomicU32::new(0),
    };
    &IPS
}

/// Pod IPs from [`POD_CIDR`], each added to [`PODS_IF`] when it is handed out. Addresses are
/// never reused in a run, so a late health check or request never reaches a newer pod.
pub struct PodIps {
    next: AtomicU32,
}

impl PodIps {
    /// The next pod IP, not yet assigned to any interface (a [`Sandbox`] takes it).
    pub fn reserve(&self) -> anyhow::Result<Ipv4Addr> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        if n >= POD_IPS {
            bail!("the rig's pod CIDR {POD_CIDR} has no address left");
        }
        Ok(Ipv4Addr::new(
            10,
            244,
            (n / 254 + 1) as u8,
            (n % 254 + 1) as u8,
        ))
    }

    /// The next pod IP, added to [`PODS_IF`] in the rig's own namespace (for servers the rig
    /// runs in-process and processes it starts itself).
    pub fn allocate(&self) -> anyhow::Result<Ipv4Addr> {
        let addr = self.reserve()?;
        let out = Command::new("ip")
            .args(["addr", "add", &format!("{addr}/32"), "dev", PODS_IF])
            .output()
            .context("running `ip addr add` for a pod IP")?;
        if !out.status.success() {
            bail!(
                "adding pod IP {addr} to {PODS_IF}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(addr)
    }
}

/// A pod's network namespace, as a container runtime's sandbox (the "pause" container) holds
/// it: its own loopback, and `eth0` with the pod IP, one end of a veth pair whose other end
/// (`rgpN`) stays in the rig's namespace with a /32 route to the pod. The pod reaches the node
/// address (the API server, the ELBv2 endpoint) through it; the API server, the probes and the
/// load balancer reach the pod IP. Processes join it with `setns` ([`Sandbox::fd`]); it goes
/// when dropped.
pub struct Sandbox {
    fd: std::os::fd::OwnedFd,
    host_if: String,
    pub ip: Ipv4Addr,
}

static SANDBOXES: AtomicU32 = AtomicU32::new(0);

impl Sandbox {
    /// Makes the namespace for pod IP `ip` (from [`PodIps::reserve`]). Call it from a thread in
    /// the rig's namespace.
    pub fn create(ip: Ipv4Addr) -> anyhow::Result<Self> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        // unshare(CLONE_NEWNET) moves only the calling thread: a thread of its own makes the
        // namespace, keeps it open as a file descriptor and brings its loopback up.
        let fd = std::thread::spawn(|| -> anyhow::Result<OwnedFd> {
            // SAFETY: unshare of this short-lived thread's network namespace only.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                bail!(
                    "a pod's network namespace (unshare(CLONE_NEWNET): {}): the rig needs \
                     CAP_SYS_ADMIN (root) to run containers",
                    std::io::Error::last_os_error()
                );
            }
            let path = std::ffi::CString::new("/proc/thread-self/ns/net").expect("no NUL");
            // SAFETY: open(2) of a path we own the string of.
            let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
            if fd < 0 {
                bail!(
                    "opening a pod's network namespace: {}",
                    std::io::Error::last_os_error()
                );
            }
            // SAFETY: a descriptor we just opened and own.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            run_ip(&["link", "set", "lo", "up"])?;
            Ok(fd)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread making a pod's network namespace panicked"))??;
        let n = SANDBOXES.fetch_add(1, Ordering::Relaxed);
        let sandbox = Self {
            fd,
            host_if: format!("rgp{n}"),
            ip,
        };
        let ns_path = format!("/proc/{}/fd/{}", std::process::id(), sandbox.fd.as_raw_fd());
        let (host_if, addr, node) = (
            sandbox.host_if.as_str(),
            format!("{ip}/32"),
            NODE_IP.to_string(),
        );
        run_ip(&[
            "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns_path,
        ])?;
        run_ip(&["link", "set", host_if, "up"])?;
        run_ip(&["route", "add", &addr, "dev", host_if, "src", &node])?;
        sandbox.run_inside(|| {
            run_ip(&["addr", "add", &addr, "dev", "eth0"])?;
            run_ip(&["link", "set", "eth0", "up"])?;
            run_ip(&["route", "add", &node, "dev", "eth0", "scope", "link"])?;
            run_ip(&["route", "add", "default", "via", &node, "dev", "eth0"])
        })?;
        Ok(sandbox)
    }

    /// The namespace's file descriptor (for `setns` in a container's `pre_exec`).
    pub fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.fd.as_raw_fd()
    }

    /// Runs `f` on a thread inside the pod's network namespace.
    pub fn run_inside<T: Send>(
        &self,
        f: impl FnOnce() -> anyhow::Result<T> + Send,
    ) -> anyhow::Result<T> {
        let fd = self.fd();
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns of this scoped thread into a namespace whose descriptor we hold.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    bail!(
                        "joining a pod's network namespace: {}",
                        std::io::Error::last_os_error()
                    );
                }
                f()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("a thread inside a pod's network namespace panicked"))?
        })
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Deleting our end deletes the pod's eth0 and the route; the namespace itself goes with
        // its last descriptor and process.
        let _ = run_ip(&["link", "del", &self.host_if]);
    }
}
