//! The `file` backend: one JSON document, replaced atomically.
//!
//! A write goes to a temporary file in the same folder, is fsynced, renamed over the
//! old file, and the folder is fsynced, so after a crash the file holds either the
//! old state or the new one, never a mix. A file that exists but cannot be read or
//! parsed is an error and is never overwritten by start-up.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use super::{StateError, StateStore};
use crate::model::{State, STATE_FORMAT};

pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    pub fn new(path: PathBuf) -> Self {
        FileStore { path }
    }
}

fn read(path: &Path) -> Result<Option<State>, StateError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(StateError::Read {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
        }
    };
    let state: State = serde_json::from_str(&text).map_err(|e| StateError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if state.format != STATE_FORMAT {
        return Err(StateError::Corrupt {
            path: path.to_path_buf(),
            reason: format!(
                "format {} is not the format {STATE_FORMAT} this slotd reads",
                state.format
            ),
        });
    }
    super::check_stored(&state).map_err(|reason| StateError::Corrupt {
        path: path.to_path_buf(),
        reason,
    })?;
    Ok(Some(state))
}

fn write(path: &Path, state: &State) -> Result<(), StateError> {
    let fail = |what: &str, e: std::io::Error| StateError::Write {
        path: path.to_path_buf(),
        reason: format!("{what}: {e}"),
    };
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&folder).map_err(|e| fail("cannot create its folder", e))?;
    let mut body = serde_json::to_vec_pretty(state).map_err(|e| StateError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    body.push(b'\n');
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".into());
    // A name of its own per write, so that no two writes ever share a temporary file.
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let tmp = folder.join(format!(
        ".{file_name}.tmp-{}-{}",
        std::process::id(),
        WRITES.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| fail("cannot create a temporary file", e))?;
        f.write_all(&body).map_err(|e| fail("write failed", e))?;
        f.sync_all().map_err(|e| fail("fsync failed", e))?;
        drop(f);
        fs::rename(&tmp, path).map_err(|e| fail("rename failed", e))?;
        // Once renamed, the new state is the file's content, whatever follows: an
        // error now cannot undo the change, so it is reported, not returned.
        if let Err(e) = File::open(&folder).and_then(|d| d.sync_all()) {
            tracing::error!(
                path = %path.display(),
                error = %e,
                "state written, but the fsync of its folder failed: the change may not survive a power loss"
            );
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[async_trait]
impl StateStore for FileStore {
    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }

    async fn load(&self) -> Result<Option<State>, StateError> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || read(&path))
            .await
            .unwrap_or_else(|e| {
                Err(StateError::Read {
                    path: self.path.clone(),
                    reason: format!("reader task failed: {e}"),
                })
            })
    }

    async fn save(&self, state: &State, _changed_app: &str) -> Result<(), StateError> {
        let path = self.path.clone();
        let state = state.clone();
        tokio::task::spawn_blocking(move || write(&path, &state))
            .await
            .unwrap_or_else(|e| {
                Err(StateError::Write {
                    path: self.path.clone(),
                    reason: format!("writer task failed: {e}"),
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_round_trips_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        let mut state = State {
            format: STATE_FORMAT,
            ..State::default()
        };
        state.apps.insert("shop".into(), Default::default());
        write(&path, &state).unwrap();
        assert_eq!(read(&path).unwrap(), Some(state));
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn a_missing_file_is_no_state_and_a_corrupt_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert_eq!(read(&path).unwrap(), None);
        fs::write(&path, "{not json").unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("state.json is not valid slotd state"), "{err}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "{not json");
    }

    #[test]
    fn hand_edited_states_that_would_break_ids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let deployment = |id: &str, instances: &[&str]| crate::model::Deployment {
            id: id.into(),
            version: "v1".into(),
            instances: instances.iter().map(|s| s.to_string()).collect(),
            settings: Default::default(),
            created_at: "2026-01-01T00:00:00.000Z".into(),
        };
        type Edit<'a> = &'a dyn Fn(&mut crate::model::AppState);
        let with = |edit: Edit| {
            let mut app = crate::model::AppState {
                next_deployment: 1,
                ..Default::default()
            };
            app.slots.insert(
                "production".into(),
                Some(deployment("d1", &["127.0.0.1:9001"])),
            );
            edit(&mut app);
            let mut state = State {
                format: STATE_FORMAT,
                ..State::default()
            };
            state.apps.insert("shop".into(), app);
            fs::write(&path, serde_json::to_string(&state).unwrap()).unwrap();
            read(&path).map(|_| ()).map_err(|e| e.to_string())
        };
        assert_eq!(with(&|_| {}), Ok(()));
        let cases: [(Edit, &str); 5] = [
            (
                &|a| a.next_swap = u64::MAX,
                "next_swap is 18446744073709551615",
            ),
            (&|a| a.pin_generation = u64::MAX, "pin_generation"),
            (
                &|a| {
                    a.history.push(crate::model::SwapRecord {
                        id: "s18446744073709551615".into(),
                        app: "shop".into(),
                        source: "staging".into(),
                        target: "production".into(),
                        state: crate::model::SwapState::Completed,
                        trigger: crate::model::SwapTrigger::Api,
                        rollback_of: None,
                        started_at: String::new(),
                        finished_at: None,
                        phases: Vec::new(),
                        error: None,
                        source_deployment: None,
                        target_deployment: None,
                    })
                },
                "swap id `s18446744073709551615`",
            ),
            (
                &|a| {
                    a.slots
                        .insert("production".into(), Some(deployment("d1", &[])));
                },
                "deployment d1 has no instances",
            ),
            (
                &|a| {
                    a.slots.insert(
                        "staging".into(),
                        Some(deployment("d7", &["127.0.0.1:9002"])),
                    );
                },
                "deployment id `d7` is not one of d1..d1",
            ),
        ];
        for (edit, expected) in cases {
            let err = with(edit).unwrap_err();
            assert!(
                err.contains("is not valid slotd state") && err.contains(expected),
                "{err}"
            );
        }
    }
}
