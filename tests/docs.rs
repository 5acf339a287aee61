//! The documentation cannot drift from the code: `docs/configuration.md`'s flag table lists every
//! flag of `readygate serve` — with its environment variable and default, as `--help` prints
//! them — and nothing else; every relative link in README.md and docs/ points at a file that
//! exists; its "Chart values" table lists every value of `charts/readygate` with its default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::CommandFactory;
use readygate::cli::Cli;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

/// The text between backticks in a table cell.
fn code_spans(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// One row of the flag table: its flags, env vars and default cell.
struct Row {
    flags: Vec<String>,
    envs: Vec<String>,
    default: String,
}

/// The rows of the table under `heading` in a markdown file.
fn table(md: &str, heading: &str) -> Vec<Row> {
    let section = md
        .split_once(heading)
        .unwrap_or_else(|| panic!("no heading {heading:?}"))
        .1;
    section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2) // header and separator
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            Row {
                flags: code_spans(cells[1]),
                envs: code_spans(cells[2]),
                default: cells[3].to_string(),
            }
        })
        .collect()
}

struct Flag {
    env: Option<String>,
    defaults: Vec<String>,
}

/// `readygate serve`'s flags as clap declares them (the global `--log-format` included, as
/// `serve --help` shows it).
fn serve_flags() -> BTreeMap<String, Flag> {
    let mut cli = Cli::command();
    cli.build();
    let serve = cli
        .find_subcommand("serve")
        .expect("a serve subcommand")
        .clone();
    serve
        .get_arguments()
        .filter_map(|a| {
            let long = a.get_long()?;
            if long == "help" || long == "version" {
                return None;
            }
            Some((
                format!("--{long}"),
                Flag {
                    env: a.get_env().map(|e| e.to_string_lossy().into_owned()),
                    defaults: a
                        .get_default_values()
                        .iter()
                        .map(|d| d.to_string_lossy().into_owned())
                        .collect(),
                },
            ))
        })
        .collect()
}

#[test]
fn the_flag_table_lists_every_serve_flag_with_its_env_and_default() {
    let md = read("docs/configuration.md");
    let rows = table(&md, "## `readygate serve` flags");
    assert!(rows.len() > 10, "the flag table was not found");
    let flags = serve_flags();
    let help = Command::new(env!("CARGO_BIN_EXE_readygate"))
        .args(["serve", "--help"])
        .output()
        .expect("running readygate serve --help");
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).unwrap();

    let mut problems = Vec::new();
    let mut documented = BTreeMap::new();
    for row in &rows {
        for flag in &row.flags {
            documented.insert(flag.clone(), row);
        }
    }
    for (name, flag) in &flags {
        if !help.contains(name.as_str()) {
            problems.push(format!(
                "{name} is declared but `serve --help` does not show it"
            ));
        }
        let Some(row) = documented.get(name) else {
            problems.push(format!("{name} is missing from docs/configuration.md"));
            continue;
        };
        if let Some(env) = &flag.env
            && !row.envs.contains(env)
        {
            problems.push(format!(
                "{name}: its environment variable is {env}, the table says {:?}",
                row.envs
            ));
        }
        for d in &flag.defaults {
            if !row.default.contains(&format!("`{d}`")) {
                problems.push(format!(
                    "{name}: its default is `{d}`, the table says {:?}",
                    row.default
                ));
            }
        }
        if flag.defaults.is_empty() && row.default.is_empty() {
            problems.push(format!("{name}: the table says nothing of its default"));
        }
    }
    for name in documented.keys() {
        if !flags.contains_key(name) {
            problems.push(format!(
                "docs/configuration.md documents {name}, which `readygate serve` does not have"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Relative markdown links `](path)` of a file, without their `#anchor`.
fn links(md: &str) -> Vec<String> {
    md.split("](")
        .skip(1)
        .filter_map(|rest| rest.split_once(')').map(|(l, _)| l))
        .filter(|l| !l.contains("://") && !l.starts_with('#') && !l.starts_with("mailto:"))
        .map(|l| l.split('#').next().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn every_relative_link_in_the_docs_points_at_a_file() {
    let mut files: Vec<PathBuf> = vec![root().join("README.md")];
    for e in std::fs::read_dir(root().join("docs")).expect("docs/") {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            files.push(p);
        }
    }
    let mut broken = Vec::new();
    for f in &files {
        let md = std::fs::read_to_string(f).unwrap();
        let dir = f.parent().unwrap_or(Path::new("."));
        for l in links(&md) {
            if !dir.join(&l).exists() {
                broken.push(format!("{}: {l}", f.display()));
            }
        }
    }
    assert!(files.len() >= 7, "README.md and the six docs/ pages");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn readme_is_a_front_page() {
    let readme = read("README.md");
    let lines = readme.lines().count();
    assert!(
        lines <= 160,
        "README.md has {lines} lines: move detail to docs/"
    );
    for cmd in ["scripts/demo", "scripts/test"] {
        assert!(readme.contains(cmd), "README.md must give {cmd}");
    }
}

/// The chart's documented keys: every property of `values.schema.json`, descending into the
/// closed objects (`additionalProperties: false`) that are groups of values rather than values
/// themselves (a label selector is one value), with its default from `values.yaml`.
fn chart_leaves(
    schema: &serde_json::Value,
    values: &serde_json::Value,
    prefix: &str,
    out: &mut BTreeMap<String, serde_json::Value>,
) {
    let props = schema["properties"].as_object().expect("properties");
    for (k, sub) in props {
        if prefix.is_empty() && k == "global" {
            continue;
        }
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        let group = sub["type"] == "object"
            && sub["additionalProperties"] == false
            && sub["properties"].get("matchLabels").is_none();
        if group {
            chart_leaves(sub, &values[k], &path, out);
        } else {
            let value = values.get(k).cloned().unwrap_or_else(|| {
                panic!("charts/readygate/values.yaml has no {path}: give every value its default")
            });
            out.insert(path, value);
        }
    }
}

/// A default as the table writes it: in backticks; strings bare (`""` when empty), anything
/// else as compact JSON.
fn default_cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) if s.is_empty() => "`\"\"`".into(),
        serde_json::Value::String(s) => format!("`{s}`"),
        other => format!("`{other}`"),
    }
}

/// Whether a table cell states this default (JSON compared as values: key order is free).
fn default_matches(cell: &str, v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(_) => cell == default_cell(v),
        _ => code_spans(cell)
            .first()
            .and_then(|c| serde_json::from_str::<serde_json::Value>(c).ok())
            .is_some_and(|c| c == *v),
    }
}

#[test]
fn the_chart_values_table_lists_every_value_with_its_default() {
    let schema: serde_json::Value =
        serde_json::from_str(&read("charts/readygate/values.schema.json")).unwrap();
    let values: serde_json::Value =
        serde_yaml::from_str(&read("charts/readygate/values.yaml")).unwrap();
    let mut leaves = BTreeMap::new();
    chart_leaves(&schema, &values, "", &mut leaves);
    assert!(leaves.len() > 30, "the chart's values were not found");

    let md = read("docs/configuration.md");
    let section = md
        .split_once("## Chart values")
        .expect("docs/configuration.md has no \"## Chart values\"")
        .1;
    let rows: BTreeMap<String, (String, String)> = section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let key = code_spans(cells[1]).into_iter().next().unwrap_or_default();
            (key, (cells[2].to_string(), cells[3].to_string()))
        })
        .collect();

    let mut problems = Vec::new();
    for (key, value) in &leaves {
        match rows.get(key) {
            None => problems.push(format!("{key} is missing from docs/configuration.md")),
            Some((default, meaning)) => {
                if !default_matches(default, value) {
                    problems.push(format!(
                        "{key}: values.yaml's default is {}, the table says {default}",
                        default_cell(value)
                    ));
                }
                if let Some(flag) = key.strip_prefix("serve.") {
                    let flag: String = flag
                        .chars()
                        .flat_map(|c| {
                            if c.is_ascii_uppercase() {
                                vec!['-', c.to_ascii_lowercase()]
                            } else {
                                vec![c]
                            }
                        })
                        .collect();
                    if !meaning.contains(&format!("`--{flag}`")) {
                        problems.push(format!("{key}: the table does not name `--{flag}`"));
                    }
                }
            }
        }
    }
    for key in rows.keys().filter(|k| !leaves.contains_key(*k)) {
        problems.push(format!(
            "docs/configuration.md documents {key}, which the chart does not have"
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
