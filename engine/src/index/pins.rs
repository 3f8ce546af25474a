//! The queries eviction and pinning ask of the index (see `evict`): the
//! pinned nodes, and the nodes whose current blocks hold a block. Each
//! costs a range of one small table (`pins`, `block_nodes`), never a walk
//! of the tree.

use redb::{ReadableTable, ReadableTableMetadata};

use super::error::ix;
use super::read::Tables;
use super::schema::{BLOCK_NODES, PINS};
use crate::error::Result;
use crate::ids::{BlockHash, NodeId};

/// Pin and block-owner queries, for every side that reads the index.
pub trait PinQueries: Tables + Sized {
    /// Every live node that carries a pin, by id.
    fn pinned_nodes(&self) -> Result<Vec<NodeId>> {
        let op = "list `pins`";
        let found = self.with_table(PINS, op, |t| {
            let err = |e| ix(self.path(), op, e);
            let mut out = Vec::new();
            for item in t.iter().map_err(err)? {
                out.push(NodeId(item.map_err(err)?.0.value()));
            }
            Ok(out)
        })?;
        Ok(found.unwrap_or_default())
    }

    /// Whether any node carries a pin.
    fn has_pins(&self) -> Result<bool> {
        let op = "count `pins`";
        let found = self.with_table(PINS, op, |t| Ok(!t.is_empty().map_err(|e| ix(self.path(), op, e))?))?;
        Ok(found.unwrap_or(false))
    }

    /// The nodes whose current blocks hold `hash` (removed nodes included).
    fn nodes_of_block(&self, hash: &BlockHash) -> Result<Vec<NodeId>> {
        let op = "read `block_nodes`";
        let found = self.with_table(BLOCK_NODES, op, |t| {
            let err = |e| ix(self.path(), op, e);
            let k = hash.as_bytes();
            let mut out = Vec::new();
            for item in t.range((k, 0u128)..=(k, u128::MAX)).map_err(err)? {
                out.push(NodeId(item.map_err(err)?.0.value().1));
            }
            Ok(out)
        })?;
        Ok(found.unwrap_or_default())
    }
}

impl<T: Tables> PinQueries for T {}
