//! `syncer log inspect` and `syncer log graph`: the forensic view of the log.
//!
//! `inspect` without `--node`/`--path` reads every segment with the log's
//! segment reader in forensic mode (`engine::forensics::inspect`):
//! damaged records are listed in place with what is wrong, never fatal. With `--node`/`--path` it reads
//! only that node's records, found through the history index; if the index
//! cannot be brought up to date (damage stops the strict reader) it falls
//! back to the full forensic read.

use engine::TreeRead;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use engine::event::{BlockChange, Change, Event};
use engine::forensics::{self, Filter, Inspected};
use engine::ids::{MachineId, NodeId};
use engine::Queries;
use serde_json::{json, Value};

/// What `log inspect` was asked for.
#[derive(Debug, Default)]
pub struct InspectArgs {
    /// `--node`.
    pub node: Option<String>,
    /// `--path`.
    pub path: Option<String>,
    /// `--at` (for `--path`).
    pub at: Option<String>,
    /// `--machine`.
    pub machine: Option<String>,
    /// `--since`.
    pub since: Option<String>,
    /// `--until`.
    pub until: Option<String>,
    /// `--kind` (repeatable, or comma separated).
    pub kinds: Vec<String>,
    /// `--json`.
    pub json: bool,
}

fn parse_node(s: &str) -> Result<NodeId> {
    if s == "root" || s == "/" {
        return Ok(NodeId::ROOT);
    }
    s.parse::<NodeId>().map_err(|e| anyhow::anyhow!("--node {s:?}: {}", e.0))
}

/// Builds the filter, resolving paths and WHENs.
fn filter(data_dir: &Path, a: &InspectArgs) -> Result<Filter> {
    let mut f = Filter::default();
    if let Some(n) = &a.node {
        f.nodes.push(parse_node(n)?);
    }
    if let Some(p) = &a.path {
        let at = a.at.as_deref().map(|w| crate::history_cmd::resolve(data_dir, w)).transpose()?;
        let view = crate::history_cmd::open_view(data_dir, at)?;
        let node = forensics::node_at_path(&view, p.as_bytes()).with_context(|| format!("--path {p}: not found"))?;
        f.nodes.push(node);
    }
    if let Some(m) = &a.machine {
        f.machine = Some(m.parse::<MachineId>().map_err(|e| anyhow::anyhow!("--machine {m:?}: {}", e.0))?);
    }
    f.since = a.since.as_deref().map(|w| crate::history_cmd::resolve(data_dir, w)).transpose()?;
    f.until = a.until.as_deref().map(|w| crate::history_cmd::resolve(data_dir, w)).transpose()?;
    for k in a.kinds.iter().flat_map(|k| k.split(',')).map(str::trim).filter(|k| !k.is_empty()) {
        if !forensics::KINDS.contains(&k) {
            bail!("--kind {k:?}: unknown kind (one of {})", forensics::KINDS.join(", "));
        }
        f.kinds.push(k.to_string());
    }
    Ok(f)
}

/// The records of the filter's nodes through the history index, in merge
/// order; `None` when the index cannot be used.
fn node_records(data_dir: &Path, nodes: &[NodeId]) -> Option<Vec<Inspected>> {
    let view = match engine::PastView::open(data_dir, crate::history_cmd::LATEST) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("syncer: note: history index unavailable ({e}); scanning the whole log");
            return None;
        }
    };
    let ix = view.index().ok()?;
    let mut positions = Vec::new();
    for n in nodes {
        positions.extend(ix.history(*n, crate::history_cmd::LATEST).ok()?);
    }
    positions.sort_by_key(|(pos, t)| (*t, pos.machine, pos.segment, pos.offset));
    positions.dedup();
    Some(
        positions
            .into_iter()
            .map(|(pos, _)| match forensics::event_at(&view, pos) {
                Ok(event) => Inspected { pos, event: Some(event), damage: None },
                Err(e) => Inspected { pos, event: None, damage: Some(e.to_string()) },
            })
            .collect(),
    )
}

/// The records `a` selects, in order.
pub fn select(data_dir: &Path, a: &InspectArgs) -> Result<Vec<Inspected>> {
    let mut out = Vec::new();
    each_selected(data_dir, a, &mut |r| {
        out.push(r);
        Ok(())
    })?;
    Ok(out)
}

/// Hands each record `a` selects to `g`, in order, without holding the
/// log: the whole log is read one segment at a time unless a node is asked
/// for (then only its records, found through the history index).
fn each_selected(data_dir: &Path, a: &InspectArgs, g: &mut dyn FnMut(Inspected) -> Result<()>) -> Result<()> {
    let f = filter(data_dir, a)?;
    let by_node = if f.nodes.is_empty() { None } else { node_records(data_dir, &f.nodes) };
    if let Some(records) = by_node {
        return records.into_iter().filter(|r| f.matches(r)).try_for_each(g);
    }
    // The engine's callback returns engine errors: the caller's own error
    // is kept aside and returned as it was.
    let mut failed = None;
    let read = forensics::inspect_each(data_dir, &mut |r| {
        if !f.matches(&r) {
            return Ok(());
        }
        g(r).map_err(|e| {
            failed = Some(e);
            engine::Error::Invalid("stopped by the caller".into())
        })
    });
    match (failed, read) {
        (Some(e), _) => Err(e),
        (None, r) => Ok(r?),
    }
}

/// One row of the text table of `log inspect`.
fn inspect_row(r: &Inspected) -> [String; 8] {
    match &r.event {
        Some(e) => [
            r.pos.to_string(),
            forensics::event_name(e),
            forensics::format_time(e.time),
            e.node.to_string(),
            e.change.kind_name().to_string(),
            "ok".to_string(),
            forensics::clock_text(e),
            match e.base {
                Some(b) => format!("{} (on {b})", forensics::describe(&e.change)),
                None => forensics::describe(&e.change),
            },
        ],
        None => [
            r.pos.to_string(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "DAMAGED".into(),
            "-".into(),
            r.damage.clone().unwrap_or_default(),
        ],
    }
}

fn block_json(c: &BlockChange) -> Value {
    match &c.block {
        Some(b) => json!({"index": c.index, "hash": b.hash.to_hex(), "len": b.len}),
        None => json!({"index": c.index, "hole": true}),
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The decoded change as JSON.
fn change_json(c: &Change) -> Value {
    match c {
        Change::Create { parent, name, kind, attrs, target } => json!({
            "parent": parent.to_string(), "name": lossy(name), "node_kind": format!("{kind:?}"),
            "mode": attrs.mode, "uid": attrs.uid, "gid": attrs.gid, "target": lossy(target),
        }),
        Change::SetAttrs(a) => json!({"attrs": format!("{a:?}")}),
        Change::Content { size, blocks } => {
            json!({"size": size, "blocks": blocks.iter().map(block_json).collect::<Vec<_>>()})
        }
        Change::Truncate { size, tail } => json!({"size": size, "tail": tail.as_ref().map(block_json)}),
        Change::Move { parent, name } => json!({"parent": parent.to_string(), "name": lossy(name)}),
        Change::Remove => json!({}),
        Change::SetXattr { name, value } => json!({"name": lossy(name), "value_len": value.len()}),
        Change::RemoveXattr { name } => json!({"name": lossy(name)}),
        Change::SetTarget { target } => json!({"target": lossy(target)}),
        Change::SetVolname { name } => json!({"name": lossy(name)}),
        Change::SetPinned { pinned } => json!({"pinned": pinned}),
        Change::Exchange { with } => json!({"with": with.to_string()}),
        Change::Resolve => json!({}),
    }
}

/// One record as a JSON object.
pub fn record_json(r: &Inspected) -> Value {
    match &r.event {
        Some(e) => event_json(r, e),
        None => json!({
            "position": r.pos.to_string(), "machine": r.pos.machine.to_string(),
            "checksum": "damaged", "damage": r.damage,
        }),
    }
}

fn event_json(r: &Inspected, e: &Event) -> Value {
    let clock: serde_json::Map<String, Value> =
        e.clock.entries().iter().map(|(m, c)| (m.to_string(), json!(c))).collect();
    json!({
        "position": r.pos.to_string(),
        "event": forensics::event_name(e),
        "machine": e.machine.to_string(),
        "seq": e.seq,
        "time": forensics::format_time(e.time),
        "time_ns": e.time.0,
        "node": e.node.to_string(),
        "kind": e.change.kind_name(),
        "change": change_json(&e.change),
        "summary": forensics::describe(&e.change),
        "clock": clock,
        "base": e.base.map(|b| b.to_string()),
        "checksum": "ok",
    })
}

/// `syncer log inspect`. The log is read as it is printed, never held: a
/// text table is measured in a first pass and printed in a second (a log
/// that grows meanwhile shows its new records, perhaps less well aligned).
pub fn inspect(data_dir: &Path, a: &InspectArgs) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if a.json {
        return each_selected(data_dir, a, &mut |r| Ok(writeln!(out, "{}", record_json(&r))?));
    }
    let header = ["POSITION", "EVENT", "TIME", "NODE", "KIND", "CHECKSUM", "CLOCK", "CHANGE"].map(String::from);
    let mut widths = crate::table::Widths::of(&header);
    each_selected(data_dir, a, &mut |r| {
        widths.fit(&inspect_row(&r));
        Ok(())
    })?;
    widths.print(&mut out, &header)?;
    let mut damaged = 0;
    each_selected(data_dir, a, &mut |r| {
        damaged += usize::from(r.event.is_none());
        widths.print(&mut out, &inspect_row(&r))
    })?;
    if damaged > 0 {
        writeln!(out, "{damaged} damaged record(s) shown in place")?;
    }
    Ok(())
}

/// `syncer log graph --node ID`: Graphviz DOT on stdout.
pub fn graph(data_dir: &Path, node: &str) -> Result<()> {
    let id = parse_node(node)?;
    let a = InspectArgs { node: Some(node.to_string()), ..InspectArgs::default() };
    let events: Vec<Event> = select(data_dir, &a)?.into_iter().filter_map(|r| r.event).collect();
    if events.is_empty() {
        bail!("node {id}: no events in the log of {}", data_dir.display());
    }
    print!("{}", forensics::causal_dot(id, &events));
    Ok(())
}
