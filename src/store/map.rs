//! What the store keeps of a spawned map (`POST .../map/spawn`): the map
//! is a call (its row in `calls`, with the number of its inputs), and each
//! input is a row of its own, keyed by (call id, index), with its state,
//! attempt and outcome. Inputs are claimed in batches and read back in
//! pages, so no part of the gateway holds a whole map in memory.

use super::{CallState, Outcome};

/// One input of a map, as stored when the map is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapInput {
    /// An input whose arguments were read: it runs.
    Arguments { args: String, kwargs: String },
    /// An input refused as it was read (bad JSON, a schema failure): it is
    /// stored as already failed with its problem+json object.
    Refused(Vec<u8>),
}

/// An input taken to run: its index, arguments and the attempt this run is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedInput {
    pub index: u64,
    pub args: String,
    pub kwargs: String,
    pub attempt: u32,
}

/// How far a map has got: its inputs by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MapProgress {
    pub inputs: u64,
    /// Not yet taken to run.
    pub pending: u64,
    pub running: u64,
    pub succeeded: u64,
    /// Failed or timed out, refused inputs included.
    pub failed: u64,
    pub cancelled: u64,
}

impl MapProgress {
    /// Inputs that have not ended.
    pub fn open(&self) -> u64 {
        self.pending + self.running
    }
}

/// An input as read back, in index order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredInput {
    pub index: u64,
    pub state: CallState,
    /// How its run ended (none for an input refused when read, or one
    /// that has not ended).
    pub outcome: Option<Outcome>,
    /// The problem+json object of an input refused when it was read.
    pub problem: Option<Vec<u8>>,
}

/// The answer to recording an input's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputEnded {
    /// False when the input was no longer running (its map was cancelled).
    pub recorded: bool,
    /// This was the map's last open input: the map has ended with it.
    pub map_ended: bool,
}

/// A map that had open inputs when the store was opened: it runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenMap {
    pub id: String,
    pub app: String,
    pub function: String,
}
