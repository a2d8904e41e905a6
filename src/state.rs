//! The persisted state file: weights, states and generations of every slot, so a
//! restarted proxy comes back on the slot that was active. Written atomically
//! (temporary file, fsync, rename) off the request path.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::table::{SlotState, Table};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PersistedState {
    pub version: u32,
    pub slots: BTreeMap<String, SlotRecord>,
    #[serde(default)]
    pub previous_active: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct SlotRecord {
    pub weight: u32,
    pub state: SlotState,
    pub generation: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state file {path} is corrupt: {reason}; fix or delete it, or start with `mcpflip run --ignore-state` to start from the config")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot read state file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl PersistedState {
    pub fn of(table: &Table, previous_active: Option<String>) -> Self {
        let slots = table
            .slots
            .iter()
            .map(|s| {
                (
                    s.name.to_string(),
                    SlotRecord {
                        weight: s.weight,
                        state: s.state,
                        generation: s.generation,
                    },
                )
            })
            .collect();
        Self {
            version: 1,
            slots,
            previous_active,
        }
    }

    /// Reads the state file; `Ok(None)` when there is none yet.
    pub fn load(path: &Path) -> Result<Option<Self>, StateError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| StateError::Corrupt {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
    }

    /// Writes atomically: temporary file in the same directory, fsync, rename.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(
            ".{}.tmp",
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("state.json")
        ));
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}
