//! The status controller's work per pass with 10,000 pending gates: what one pod event, one ELB
//! answer and one binding change cost, against a pass that plans every pod (what every pass did
//! before passes followed what changed), measured side by side in one run.
//!
//!     cargo run --release --example bench_passes [-- --pods 10000 --groups 100 --rounds 400]
//!
//! Two decision cores (`controller::Controller`) over two identical caches: one as readygate
//! runs it, one told to plan every pod on every pass (`Controller::always_full`). Both read the
//! groups' settings and a first answer (every target `initial`, so every gate stays pending).
//! Then, in blocks of 10, each core gets the same change before each timed pass (the cores
//! alternate block by block, each block's kind of change in turn):
//! - pod event: one pending pod's condition message changes, as a status write by another
//!   writer would (the watch delivers the pod; the journal names it);
//! - ELB answer: one group's DescribeTargetHealth answer (every member still `initial`, one
//!   reason changed, so the gates of that group are decided again);
//! - nothing: a pass that nothing asked for (a wake-up by a timer of another group);
//! - binding change: one TargetGroupBinding's ARN changes and changes back (every pod of its
//!   namespace may be concerned, and here every pod is in that one namespace: both cores plan
//!   every pod).
//!
//! Pure CPU: no network, no clock but the one the cores are given.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use readygate::cache::Cache;
use readygate::cli::{Cli, Command};
use readygate::condition::Health;
use readygate::controller::{Controller, Reply};
use readygate::domain::{
    Binding, Condition, ConditionStatus, ContainerPort, Pod, PortRef, Service, ServicePort,
    TargetType,
};
use readygate::elbv2::GroupSettings;
use readygate::index::{Index, Kind};
use readygate::metrics::Metrics;
use readygate::target::Target;

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number, got {v}"))
        })
        .unwrap_or(default)
}

fn ip(p: usize) -> std::net::IpAddr {
    std::net::Ipv4Addr::new(
        127,
        10 + (p / 65_536) as u8,
        (p / 256 % 256) as u8,
        (p % 256) as u8,
    )
    .into()
}

fn binding(g: usize, arn: &str) -> Binding {
    Binding {
        name: format!("tgb-{g}"),
        target_group_arn: arn.into(),
        target_type: TargetType::Ip,
        service_name: format!("svc-{g}"),
        service_port: PortRef::Number(80),
        ip_family: Default::default(),
        aws_controller: false,
    }
}

fn arn(g: usize) -> String {
    format!("arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/tg-{g}/{g:016x}")
}

fn pod(p: usize, groups: usize, now_s: i64, message: &str) -> Pod {
    let g = p % groups;
    Pod {
        uid: format!("uid-{p}"),
        labels: vec![("app".into(), format!("app-{g}"))],
        created: Some(now_s - 60),
        finished: false,
        ips: vec![ip(p)],
        container_ports: vec![ContainerPort {
            name: "http".into(),
            port: 8080,
        }],
        gates: vec![format!("tgb-{g}")],
        conditions: vec![(
            format!("tgb-{g}"),
            Condition {
                status: ConditionStatus::False,
                reason: "Elb.InitialHealthChecking".into(),
                message: message.into(),
                last_transition_time: None,
            },
        )],
        containers_ready_since: Some(now_s - 50),
    }
}

fn index(pods: usize, groups: usize, now_s: i64) -> Index {
    let mut ix = Index::default();
    for g in 0..groups {
        ix.apply_service(
            "shop",
            &format!("svc-{g}"),
            Service {
                selector: [("app".to_string(), format!("app-{g}"))].into(),
                ports: vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    target_port: Some(PortRef::Name("http".into())),
                }],
            },
        );
        ix.apply_binding("shop", binding(g, &arn(g)));
    }
    for p in 0..pods {
        ix.apply_pod(
            "shop",
            &format!("pod-{p}"),
            pod(p, groups, now_s, "waiting"),
        );
    }
    for kind in [Kind::Binding, Kind::Service, Kind::Pod, Kind::Namespace] {
        ix.mark_synced(kind);
    }
    ix
}

fn answer(pods: usize, groups: usize, g: usize, reason: &str) -> HashMap<Target, Health> {
    (g..pods)
        .step_by(groups)
        .map(|p| {
            (
                Target {
                    ip: ip(p),
                    port: 8080,
                },
                Health {
                    state: "initial".into(),
                    reason: Some(reason.into()),
                    description: None,
                },
            )
        })
        .collect()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[derive(Clone, Copy, PartialEq)]
enum Change {
    Pod,
    Answer,
    Nothing,
    Binding,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let pods = arg(&args, "--pods", 10_000);
    let groups = arg(&args, "--groups", 100);
    let rounds = arg(&args, "--rounds", 400);
    let cli = Cli::parse_from(["readygate", "serve"]);
    let Command::Serve(serve) = cli.command else {
        unreachable!()
    };
    let now_s = jiff::Timestamp::now().as_second();
    let mut now = now_s * 1000;
    let make = |full: bool| {
        let cache = Arc::new(Cache::default());
        *cache.write() = index(pods, groups, now_s);
        let c = Controller::new(cache.clone(), Arc::new(Metrics::new()), &serve.controller);
        (if full { c.always_full() } else { c }, cache)
    };
    let mut cores = [make(false), make(true)];
    let settings = GroupSettings {
        interval_seconds: 10,
        healthy_threshold: 3,
        attached: true,
    };
    for (c, _) in &mut cores {
        c.pass(now);
        let all: Vec<String> = (0..groups).map(arn).collect();
        for batch in all.chunks(20) {
            let found = batch.iter().map(|a| (a.clone(), settings)).collect();
            c.reply(Reply::Settings(batch.to_vec(), Ok(found)), now);
        }
        c.pass(now);
        for g in 0..groups {
            c.reply(
                Reply::Health(
                    arn(g),
                    Ok(answer(pods, groups, g, "Elb.InitialHealthChecking")),
                    now,
                ),
                now,
            );
        }
        c.pass(now);
    }
    let pending = cores[0].0.view(now, true).gates.len();
    let start = cores[0].0.passes();

    let kinds = [
        Change::Pod,
        Change::Answer,
        Change::Nothing,
        Change::Binding,
    ];
    let mut times: [[Vec<f64>; 4]; 2] = Default::default();
    let mut planned: [Vec<u64>; 4] = Default::default();
    // Blocks of passes of one kind on one core, the cores alternating block by block: a full
    // pass frees and touches megabytes, which a pass of the other core right after it would
    // pay for (cold caches, the allocator consolidating), and readygate runs one core alone.
    const BLOCK: usize = 10;
    for round in 0..rounds.div_ceil(BLOCK) {
        let kind = kinds[round % kinds.len()];
        let k = round % kinds.len();
        let order = if (round / kinds.len()).is_multiple_of(2) {
            [0, 1]
        } else {
            [1, 0]
        };
        for i in order {
            let (c, cache) = &mut cores[i];
            for n in 0..BLOCK {
                now += 1;
                let step = round * BLOCK + n;
                let g = step * 7 % groups;
                match kind {
                    Change::Pod => {
                        let p = step * 7919 % pods;
                        let message = format!("step {step}");
                        cache.write().apply_pod(
                            "shop",
                            &format!("pod-{p}"),
                            pod(p, groups, now_s, &message),
                        );
                    }
                    Change::Answer => {
                        let reason = if step.is_multiple_of(2) {
                            "Elb.RegistrationInProgress"
                        } else {
                            "Elb.InitialHealthChecking"
                        };
                        c.reply(
                            Reply::Health(arn(g), Ok(answer(pods, groups, g, reason)), now),
                            now,
                        );
                    }
                    Change::Nothing => {}
                    Change::Binding => {
                        let mut ix = cache.write();
                        ix.apply_binding("shop", binding(g, "arn:moved"));
                        ix.apply_binding("shop", binding(g, &arn(g)));
                    }
                }
                let before = c.passes().pods_planned;
                let t = Instant::now();
                let actions = c.pass(now);
                let took = t.elapsed().as_secs_f64() * 1e6;
                std::hint::black_box(actions);
                times[i][k].push(took);
                if i == 0 {
                    planned[k].push(c.passes().pods_planned - before);
                }
            }
        }
    }
    let end = cores[0].0.passes();
    println!(
        "controller passes with {pending} pending gates ({pods} pods, {groups} groups of {} pods; {} build), median of {} passes each:",
        pods / groups,
        if cfg!(debug_assertions) {
            "dev"
        } else {
            "release"
        },
        times[0][0].len()
    );
    println!(
        "  {:<42} {:>14} {:>16} {:>8} {:>14}",
        "change before the pass", "incremental", "every pod", "ratio", "pods planned"
    );
    let names = [
        "one pod event",
        "one ELB answer (one group)",
        "nothing (a timer of another group)",
        "one binding change (its namespace: all)",
    ];
    for k in 0..kinds.len() {
        let inc = median(&mut times[0][k]);
        let full = median(&mut times[1][k]);
        let mut p = planned[k].clone();
        p.sort();
        println!(
            "  {:<42} {:>11.1} µs {:>13.1} µs {:>7.4}× {:>14}",
            names[k],
            inc,
            full,
            inc / full,
            p[p.len() / 2]
        );
    }
    println!(
        "  passes of the incremental core after the start: {} planned every pod, {} only what changed",
        end.full - start.full,
        end.incremental - start.incremental
    );
}
