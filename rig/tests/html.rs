//! The demo's HTML picture, rendered by headless Chromium: it draws one row per pod of every
//! rollout and the failed requests, from the page alone (no external asset).

use rig::demo::{Mode, ModeReport, RolloutResult};
use rig::deploy::Rollout;
use rig::load::Sample;
use rig::timeline::{Milestone, PodTimeline};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn pod(name: &str, revision: &str, ip: &str, t0: Instant, at: &[(Milestone, f64)]) -> PodTimeline {
    PodTimeline {
        namespace: "readygate".into(),
        name: name.into(),
        revision: revision.into(),
        ip: ip.into(),
        gates: vec!["target-health.elbv2.k8s.aws/web".into()],
        at: at
            .iter()
            .map(|(m, s)| (*m, t0 + Duration::from_secs_f64(*s)))
            .collect(),
    }
}

/// A rollout of one old and one new pod; 3 s of requests every 20 ms, those between 2.0 and
/// 2.3 s failing on the old pod while it terminates.
fn rollout(revision: &str, previous: &str) -> RolloutResult {
    let t0 = Instant::now();
    use Milestone::*;
    let old = pod(
        &format!("web-{previous}-a"),
        previous,
        "127.0.9.1",
        t0,
        &[
            (Ready, 0.0),
            (Terminating, 2.0),
            (Deregistered, 2.5),
            (Removed, 3.0),
        ],
    );
    let new = pod(
        &format!("web-{revision}-a"),
        revision,
        "127.0.9.2",
        t0,
        &[
            (Created, 0.5),
            (ContainersReady, 0.8),
            (Registered, 0.8),
            (ElbHealthy, 1.8),
            (GateTrue, 1.9),
            (Ready, 1.9),
        ],
    );
    let samples = (0..150)
        .map(|i| {
            let at = t0 + Duration::from_millis(i * 20);
            let failing = (2000..2300).contains(&(i * 20));
            Sample {
                at,
                latency: Duration::from_millis(1),
                outcome: Ok(if failing { 502 } else { 200 }),
                pod: (!failing).then(|| "web".to_string()),
                target: Some(
                    if failing {
                        "127.0.9.1:8080"
                    } else {
                        "127.0.9.2:8080"
                    }
                    .into(),
                ),
            }
        })
        .collect();
    RolloutResult {
        revision: revision.into(),
        rollout: Rollout {
            revision: revision.into(),
            started: t0 + Duration::from_millis(400),
            finished: Some(t0 + Duration::from_secs(2)),
            created: vec![],
            deleted: vec![],
            new_pods: 1,
            new_ready: 1,
            old_pods: 0,
        },
        samples,
        pods: vec![old, new],
        elb_calls: Default::default(),
        lbc_calls: Default::default(),
        load_started: t0,
        drained: Some(t0 + Duration::from_secs(3)),
        physical_minimum: Duration::from_secs(2),
    }
}

/// Chromium, installed from Debian's package when it is missing (as root); None when it cannot
/// be had here.
fn chromium() -> Option<PathBuf> {
    let find = || {
        ["chromium", "chromium-browser"].iter().find_map(|b| {
            Command::new("sh")
                .args(["-c", &format!("command -v {b}")])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        })
    };
    if let Some(p) = find() {
        return Some(p);
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if root {
        let _ = Command::new("sh")
            .args([
                "-c",
                "apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || \
                 (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1)",
            ])
            .status();
    }
    find()
}

#[test]
fn chromium_draws_a_row_per_pod_and_the_failed_requests() {
    let Some(browser) = chromium() else {
        // scripts/test installs it; under CI a missing browser is a failure, not a skip.
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is required under CI (scripts/test installs Debian's package)"
        );
        println!("SKIPPED: Debian's chromium package could not be installed on this machine");
        return;
    };
    let modes = vec![
        ModeReport {
            mode: Mode::GatesOnly,
            namespace: "gates-only".into(),
            rollouts: vec![rollout("v2", "v1"), rollout("v3", "v2")],
        },
        ModeReport {
            mode: Mode::Readygate,
            namespace: "readygate".into(),
            rollouts: vec![rollout("v2", "v1")],
        },
    ];
    let html = rig::html::render(&modes);
    // The SVG namespace is a name, not something fetched.
    let fetchable = html.replace("\"http://www.w3.org/2000/svg\"", "");
    for needle in ["http:", "https:", "src=", "href=", "url(", "@import"] {
        assert!(!fetchable.contains(needle), "no external asset: {needle}");
    }
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("demo.html");
    std::fs::write(&page, &html).unwrap();
    let mut child = Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=5000",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Bounded: a hung browser is killed by PID after 60 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let dom = String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap();
    // The side-by-side table opens the page, before any rollout's bars.
    let table = dom.find("<pre id=\"table\">").expect("the table is drawn");
    let first_bars = dom.find("class=\"rollout\"").expect("the bars are drawn");
    assert!(table < first_bars, "the table comes first");
    let text = &dom[table..first_bars];
    assert!(text.contains("requests failed"), "{text}");
    assert!(
        text.contains("gates only") && text.contains("readygate"),
        "{text}"
    );
    let rows = dom.matches("class=\"pod-row\"").count();
    assert_eq!(rows, 6, "two pods in each of three rollouts");
    assert!(
        dom.contains("data-drawn=\"6\""),
        "the script ran to its end"
    );
    assert!(dom.contains("data-pod=\"web-v3-a\""));
    // 15 failed requests per rollout in 100 ms buckets: 2.0–2.3 s → three red bars each.
    assert_eq!(dom.matches("class=\"failed\"").count(), 9);
    assert_eq!(dom.matches("class=\"rollout\"").count(), 3);
}
