//! One merge step: how a single event, in merge order, changes a tree
//! store (the rules are in the parent module's docs).

use super::{order_key, Conflict, ConflictKind, Content, TreeStore, LATEST, MAX_DEPTH};
use crate::calendar::civil_date;
use crate::clock::Causality;
use crate::event::{BlockRef, Change, Event, NodeKind};
use crate::ids::{EventId, NodeId};
use crate::tree::{self, ContentHead, NodeRecord};

/// A refusal: the event changes nothing.
type Refused = &'static str;

/// Applies one event, in merge order, to `s`. An event that does not fit is
/// reported through [`TreeStore::ignored`] and changes nothing.
pub fn step<S: TreeStore>(s: &mut S, e: &Event, block_size: u64) -> Result<(), S::Error> {
    match apply_step(s, e, block_size)? {
        Ok(()) => Ok(()),
        Err(reason) => s.ignored(e, reason),
    }
}

fn node_or_root<S: TreeStore>(s: &S, id: NodeId) -> Result<Option<NodeRecord>, S::Error> {
    Ok(match s.node(id)? {
        Some(n) => Some(n),
        None if id == NodeId::ROOT => Some(NodeRecord::root()),
        None => None,
    })
}

fn apply_step<S: TreeStore>(s: &mut S, e: &Event, block_size: u64) -> Result<Result<(), Refused>, S::Error> {
    if e.node == NodeId::ROOT
        && matches!(e.change, Change::Create { .. } | Change::Move { .. } | Change::Remove | Change::Exchange { .. })
    {
        return Ok(Err("the root cannot be created, moved or removed"));
    }
    match &e.change {
        Change::Create { parent, name, .. } => {
            if s.node(e.node)?.is_some() {
                return Ok(Err("create of a node that exists"));
            }
            if *parent == e.node {
                return Ok(Err("create of a node inside itself"));
            }
            if !valid_name(name) {
                return Ok(Err("create with an invalid name"));
            }
            let mut record = tree::apply(None, e).node;
            // Not in the tree until `place` puts it there.
            record.removed = true;
            let is_file = record.kind == NodeKind::File;
            s.set_node(e.node, &record, e)?;
            if is_file {
                s.set_version(e, e.node, 0)?;
            }
            let parent = usable_parent(s, *parent, e)?;
            place(s, e.node, parent, name, e)?;
        }
        Change::Move { parent, name } => {
            let Some(node) = s.node(e.node)? else { return Ok(Err("move of a node never created")) };
            if !valid_name(name) {
                return Ok(Err("move to an invalid name"));
            }
            if node.removed && !revives(&node, e) {
                return Ok(Err("move of a node removed before it"));
            }
            if !node_or_root(s, *parent)?.is_some_and(|p| p.kind == NodeKind::Dir) {
                return Ok(Err("move into a node that is not a directory"));
            }
            if is_ancestor_or_self(s, e.node, *parent)? {
                return Ok(Err("move would make a node its own ancestor"));
            }
            record_concurrent(s, e.node, &node, e)?;
            unplace(s, e.node, e)?;
            let parent = usable_parent(s, *parent, e)?;
            place(s, e.node, parent, name, e)?;
            if let Some(mut n) = s.node(e.node)? {
                n.attrs.ctime = e.time;
                s.set_node(e.node, &n, e)?;
            }
        }
        Change::Exchange { with } => {
            let (Some(a), Some(b)) = (s.node(e.node)?, s.node(*with)?) else {
                return Ok(Err("exchange with a node never created"));
            };
            if a.removed || b.removed || *with == NodeId::ROOT {
                return Ok(Err("exchange with a node not in the tree"));
            }
            if is_ancestor_or_self(s, e.node, b.parent)? || is_ancestor_or_self(s, *with, a.parent)? {
                return Ok(Err("exchange would make a node its own ancestor"));
            }
            for (id, mut n, parent, name) in
                [(e.node, a.clone(), b.parent, b.name.clone()), (*with, b, a.parent, a.name)]
            {
                set_entry_counted(s, parent, &name, Some((id, n.kind)), e)?;
                n.parent = parent;
                n.name = name;
                n.attrs.ctime = e.time;
                n.clock = n.clock.join(&e.clock);
                s.set_node(id, &n, e)?;
                touch(s, parent, e)?;
            }
        }
        Change::Remove => {
            let Some(node) = s.node(e.node)? else { return Ok(Err("remove of a node never created")) };
            if node.removed {
                return Ok(Err("remove of a removed node"));
            }
            // Only directories hold entries (every placement goes through a
            // directory), and asking costs a table scan.
            if node.kind == NodeKind::Dir && s.has_entries(e.node)? {
                return Ok(Err("remove of a directory that gained entries concurrently"));
            }
            if node.head.is_some_and(|h| !h.seen_by(e)) {
                return Ok(Err("remove of a file whose content changed concurrently (the edit survives)"));
            }
            unplace(s, e.node, e)?;
            let fx = tree::apply(Some(&node), e);
            s.set_node(e.node, &fx.node, e)?;
        }
        _ => {
            let target = match (e.base, e.change.is_content()) {
                (Some(base), true) => match content_target(s, e, base)? {
                    Target::Node(t) => t,
                    Target::Copy { of, content } => return make_copy(s, e, of, content, block_size).map(Ok),
                },
                _ => e.node,
            };
            let Some(node) = node_or_root(s, target)? else { return Ok(Err("change to a node never created")) };
            if node.removed && revives(&node, e) {
                revive(s, target, e)?;
            }
            let Some(node) = node_or_root(s, target)? else { return Ok(Err("change to a node never created")) };
            let fx = tree::apply(Some(&node), e);
            // A content change on a known base is never merged field by
            // field: it is its writer's whole version (see above).
            if fx.ignored.is_none() && e.base.is_none() {
                record_concurrent(s, target, &node, e)?;
            }
            if let Some(reason) = fx.ignored {
                return Ok(Err(reason));
            }
            let mut record = fx.node;
            match &e.change {
                Change::Content { blocks, .. } => {
                    // Bytes past the end are never stored: a version that
                    // ends before the one it replaces drops the blocks past
                    // its end, which an extension would otherwise show.
                    if record.size < node.size {
                        cut_past(s, target, &mut record, block_size, e)?;
                    }
                    for b in blocks {
                        let old = s.set_block(target, b.index, b.block, e)?;
                        record.stored = restored(record.stored, old, b.block);
                    }
                }
                Change::Truncate { size, tail } => {
                    if *size < node.size {
                        cut_past(s, target, &mut record, block_size, e)?;
                    }
                    if let Some(t) = tail {
                        let old = s.set_block(target, t.index, t.block, e)?;
                        record.stored = restored(record.stored, old, t.block);
                    }
                }
                _ => {}
            }
            if e.change.is_content() {
                s.set_version(e, target, record.size)?;
            }
            s.set_node(target, &record, e)?;
        }
    }
    Ok(Ok(()))
}

/// Where a content change with a known base goes (see *Content versions*).
enum Target {
    /// Applied to this node, on top of the content it shows.
    Node(NodeId),
    /// A conflict: a copy beside `of`, holding `content` (the base's) with
    /// the change applied.
    Copy { of: NodeId, content: Content },
}

fn content_target<S: TreeStore>(s: &S, e: &Event, base: EventId) -> Result<Target, S::Error> {
    let shows = |n: &NodeRecord| n.kind == NodeKind::File && n.head.map(|h| h.event) == Some(base);
    let Some(x) = s.node(e.node)? else { return Ok(Target::Node(e.node)) };
    if x.kind != NodeKind::File || shows(&x) {
        // Not a file: `tree::apply` refuses the change as it always has.
        return Ok(Target::Node(e.node));
    }
    let mut loc = s.version(base)?.filter(|l| l.key < order_key(e));
    if let Some(l) = loc {
        // A base of another file (a damaged or hostile peer) is no base.
        if l.node != e.node && family(s, l.node)? != family(s, e.node)? {
            loc = None;
        }
    }
    let Some(loc) = loc else {
        // The base is not known here (yet): a conflict made on what `X` shows.
        let content = Content { size: x.size, blocks: s.blocks_after(e.node, LATEST)? };
        return Ok(Target::Copy { of: e.node, content });
    };
    // The node the base was applied to, while it is a file.
    let (t, tn) = match s.node(loc.node)? {
        Some(n) if n.kind == NodeKind::File => (loc.node, n),
        _ => (e.node, x),
    };
    if shows(&tn) {
        return Ok(Target::Node(t));
    }
    let base_content = Content { size: loc.size, blocks: s.blocks_after(loc.node, loc.key)? };
    if tn.size == base_content.size && s.blocks_after(t, LATEST)? == base_content.blocks {
        return Ok(Target::Node(t));
    }
    Ok(Target::Copy { of: t, content: base_content })
}

/// The file a family of conflict copies was made from (`id` itself for a
/// file that is no copy).
fn family<S: TreeStore>(s: &S, id: NodeId) -> Result<NodeId, S::Error> {
    let mut cur = id;
    for _ in 0..MAX_DEPTH {
        match s.node(cur)?.and_then(|n| n.copy_of) {
            Some(up) if up != cur => cur = up,
            _ => break,
        }
    }
    Ok(cur)
}

/// Makes `e`'s whole version a conflict copy beside `of` (see *Content
/// versions*, rule 3).
fn make_copy<S: TreeStore>(s: &mut S, e: &Event, of: NodeId, base: Content, block_size: u64) -> Result<(), S::Error> {
    let Some(t) = s.node(of)? else { return s.ignored(e, "content change to a node never created") };
    let id = NodeId::conflict_copy(e.id());
    if s.node(id)?.is_some() {
        return s.ignored(e, "a conflict copy of this event exists");
    }
    let content = base.with(&e.change, block_size);
    let mut record = t.clone();
    record.size = content.size;
    record.attrs.mtime = e.time;
    record.attrs.ctime = e.time;
    record.head = Some(ContentHead::of(e));
    record.clock = e.clock.clone();
    record.conflict_of = Some(of);
    record.copy_of = Some(of);
    record.stored = content.blocks.values().map(|b| u64::from(b.len)).sum();
    // Not in the tree until `place_named` puts it there.
    record.removed = true;
    record.removed_by = None;
    s.set_node(id, &record, e)?;
    for (index, block) in &content.blocks {
        s.set_block(id, *index, Some(*block), e)?;
    }
    s.set_version(e, id, content.size)?;
    let kept = t.head.map_or(e.id(), |h| h.event);
    let kept_time = s.version(kept)?.map_or(t.attrs.mtime, |l| l.key.0);
    let parent = usable_parent(s, t.parent, e)?;
    let name = free_conflict_name(s, parent, &t.name, e)?;
    place_named(s, id, parent, &name, e)?;
    if let Some(placed) = s.node(id)? {
        s.copy_made(id, &placed, e)?;
    }
    s.conflict(Conflict {
        kind: ConflictKind::Content { kept, kept_time },
        node: id,
        parent,
        wanted: t.name.clone(),
        given: name,
        winner: of,
        event: (e.machine, e.seq),
        time: e.time,
    })
}

/// Whether `name` can be a directory entry: 1..=255 bytes, no `/` or NUL,
/// not `.` or `..`. Local operations are refused such names; a peer's event
/// that carries one is ignored.
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= crate::limits::NAME_MAX
        && name != b"."
        && name != b".."
        && !name.iter().any(|&b| b == b'/' || b == 0)
}

/// Records that `e` changes `id` without having seen every change to it
/// (its clock is concurrent with the node's).
fn record_concurrent<S: TreeStore>(s: &mut S, id: NodeId, node: &NodeRecord, e: &Event) -> Result<(), S::Error> {
    if node.clock.compare(&e.clock) != Causality::Concurrent {
        return Ok(());
    }
    let others = node.clock.entries().iter().filter(|(m, n)| *n > e.clock.get(*m)).map(|(m, _)| *m).collect();
    s.conflict(Conflict {
        kind: ConflictKind::Concurrent { others },
        node: id,
        parent: node.parent,
        wanted: node.name.clone(),
        given: node.name.clone(),
        winner: id,
        event: (e.machine, e.seq),
        time: e.time,
    })
}

/// Whether `e` did not see the removal of `node` (so it brings it back).
fn revives(node: &NodeRecord, e: &Event) -> bool {
    match &node.removed_by {
        Some(rc) => !matches!(rc.compare(&e.clock), Causality::Before | Causality::Equal),
        None => false,
    }
}

/// Brings a removed node back at its last place, and its parents with it.
fn revive<S: TreeStore>(s: &mut S, id: NodeId, e: &Event) -> Result<(), S::Error> {
    let mut chain = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut cur = id;
    for _ in 0..MAX_DEPTH {
        match s.node(cur)? {
            // A node met twice would be a cycle of removed nodes: stop there.
            Some(n) if cur != NodeId::ROOT && n.removed && seen.insert(cur) => {
                chain.push((cur, n.parent, n.name));
                cur = chain.last().map_or(NodeId::ROOT, |c| c.1);
            }
            _ => break,
        }
    }
    for (node, parent, name) in chain.into_iter().rev() {
        let parent = usable_parent(s, parent, e)?;
        place(s, node, parent, &name, e)?;
    }
    Ok(())
}

/// `parent` if it can hold entries (brought back if removed), else the
/// root: a node is never lost.
fn usable_parent<S: TreeStore>(s: &mut S, parent: NodeId, e: &Event) -> Result<NodeId, S::Error> {
    match node_or_root(s, parent)? {
        Some(p) if p.kind == NodeKind::Dir => {
            if p.removed {
                revive(s, parent, e)?;
            }
            Ok(parent)
        }
        _ => Ok(NodeId::ROOT),
    }
}

/// Whether `a` is `b` or one of its ancestors.
fn is_ancestor_or_self<S: TreeStore>(s: &S, a: NodeId, b: NodeId) -> Result<bool, S::Error> {
    let mut cur = b;
    for _ in 0..MAX_DEPTH {
        if cur == a {
            return Ok(true);
        }
        if cur == NodeId::ROOT {
            return Ok(false);
        }
        match s.node(cur)? {
            Some(n) => cur = n.parent,
            None => return Ok(false),
        }
    }
    // Deeper than any real tree: refuse the move rather than risk a cycle.
    Ok(true)
}

/// Takes `id` out of its directory's listing (if it is there).
fn unplace<S: TreeStore>(s: &mut S, id: NodeId, e: &Event) -> Result<(), S::Error> {
    let Some(n) = s.node(id)? else { return Ok(()) };
    if n.removed || s.entry(n.parent, &n.name)? != Some(id) {
        return Ok(());
    }
    set_entry_counted(s, n.parent, &n.name, None, e)?;
    touch(s, n.parent, e)
}

/// Puts `id` at `parent/name`, a name known to be free.
fn place_named<S: TreeStore>(s: &mut S, id: NodeId, parent: NodeId, name: &[u8], e: &Event) -> Result<(), S::Error> {
    let Some(mut n) = s.node(id)? else { return Ok(()) };
    set_entry_counted(s, parent, name, Some((id, n.kind)), e)?;
    n.parent = parent;
    n.name = name.to_vec();
    n.removed = false;
    n.removed_by = None;
    s.set_node(id, &n, e)?;
    touch(s, parent, e)
}

/// Puts `id` at `parent/name`, renaming it if a different live node has it.
fn place<S: TreeStore>(s: &mut S, id: NodeId, parent: NodeId, name: &[u8], e: &Event) -> Result<(), S::Error> {
    let Some(mut n) = s.node(id)? else { return Ok(()) };
    let mut given = name.to_vec();
    if let Some(winner) = s.entry(parent, name)? {
        if winner != id {
            given = free_conflict_name(s, parent, name, e)?;
            s.conflict(Conflict {
                kind: ConflictKind::Name,
                node: id,
                parent,
                wanted: name.to_vec(),
                given: given.clone(),
                winner,
                event: (e.machine, e.seq),
                time: e.time,
            })?;
        }
    }
    set_entry_counted(s, parent, &given, Some((id, n.kind)), e)?;
    n.parent = parent;
    n.name = given;
    n.removed = false;
    n.removed_by = None;
    n.clock = n.clock.join(&e.clock);
    s.set_node(id, &n, e)?;
    touch(s, parent, e)
}

/// [`TreeStore::set_entry`], keeping `dir`'s count of subdirectories
/// ([`NodeRecord::subdirs`]): every entry the merge makes or takes away goes
/// through here, so the count is that of the live directories listed.
fn set_entry_counted<S: TreeStore>(
    s: &mut S,
    dir: NodeId,
    name: &[u8],
    child: Option<(NodeId, NodeKind)>,
    e: &Event,
) -> Result<(), S::Error> {
    let was_dir = match s.entry(dir, name)? {
        Some(old) => s.node(old)?.is_some_and(|n| n.kind == NodeKind::Dir),
        None => false,
    };
    let is_dir = child.is_some_and(|(_, k)| k == NodeKind::Dir);
    s.set_entry(dir, name, child, e)?;
    if was_dir != is_dir {
        if let Some(mut d) = node_or_root(s, dir)? {
            d.subdirs = if is_dir { d.subdirs.saturating_add(1) } else { d.subdirs.saturating_sub(1) };
            s.set_node(dir, &d, e)?;
        }
    }
    Ok(())
}

/// Drops the blocks of `node` past the end of `record` (its new size),
/// and their bytes from its `stored` count.
fn cut_past<S: TreeStore>(
    s: &mut S,
    node: NodeId,
    record: &mut NodeRecord,
    block_size: u64,
    e: &Event,
) -> Result<(), S::Error> {
    let gone = s.clear_blocks_from(node, tree::block_count(record.size, block_size), e)?;
    record.stored = record.stored.saturating_sub(gone);
    Ok(())
}

/// `stored` bytes after a block `old` was replaced by `new`.
fn restored(stored: u64, old: Option<BlockRef>, new: Option<BlockRef>) -> u64 {
    let len = |b: Option<BlockRef>| b.map_or(0, |b| u64::from(b.len));
    stored.saturating_sub(len(old)).saturating_add(len(new))
}

/// A directory's mtime and ctime follow changes to its listing.
fn touch<S: TreeStore>(s: &mut S, dir: NodeId, e: &Event) -> Result<(), S::Error> {
    if let Some(mut n) = node_or_root(s, dir)? {
        if n.kind == NodeKind::Dir {
            tree::touch_dir(&mut n, e.time);
            s.set_node(dir, &n, e)?;
        }
    }
    Ok(())
}

/// `stem (conflict from <machine> <yyyy-mm-dd>).ext`, with ` 2`, ` 3`, ...
/// inside the parentheses if that is taken too.
fn free_conflict_name<S: TreeStore>(s: &S, parent: NodeId, name: &[u8], e: &Event) -> Result<Vec<u8>, S::Error> {
    let (stem, ext) = match name.iter().rposition(|&b| b == b'.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, &b""[..]),
    };
    let (y, mo, d) = civil_date(e.time);
    let mut n = 1u64;
    loop {
        let tag = if n == 1 { String::new() } else { format!(" {n}") };
        let suffix = format!(" (conflict from {} {y:04}-{mo:02}-{d:02}{tag})", e.machine);
        // Names are at most 255 bytes: keep the suffix, shorten the stem.
        let room = crate::limits::NAME_MAX.saturating_sub(suffix.len() + ext.len());
        let mut out = stem[..stem.len().min(room)].to_vec();
        out.extend_from_slice(suffix.as_bytes());
        out.extend_from_slice(ext);
        if s.entry(parent, &out)?.is_none() {
            return Ok(out);
        }
        n += 1;
    }
}
