//! The agent's identity, kept in `<data-dir>/agent.json` (mode 0600, replaced whole): the id it
//! made at its first start, the secret the server calls it with, and — once joined — its host
//! id and credential, for the server it joined.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Made at the first start and kept: joining again with it makes the agent the same host.
    pub agent_id: String,
    /// What the server must present when it calls the agent.
    pub agent_secret: String,
    /// Beside the rest, not nested: the server's `--local-agent` reads `credential` at the top
    /// to know whether its agent joined.
    #[serde(flatten)]
    pub joined: Option<Joined>,
}

/// What joining gave, and for which server: a different one means joining anew.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Joined {
    pub server: String,
    pub host_id: String,
    pub credential: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not the agent's state: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the system's random number generator failed: {0}")]
    Random(String),
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("agent.json")
}

fn secret() -> Result<String, StateError> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| StateError::Random(e.to_string()))?;
    Ok(hex::encode(raw))
}

impl State {
    /// The stored state, or a new identity (stored at once) at the first start.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, StateError> {
        let file = path(data_dir);
        match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| StateError::Corrupt { path: file, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let state = State {
                    agent_id: uuid::Uuid::new_v4().to_string(),
                    agent_secret: secret()?,
                    joined: None,
                };
                state.save(data_dir)?;
                Ok(state)
            }
            Err(source) => Err(StateError::Io { path: file, source }),
        }
    }

    /// The credential, if the agent joined `server` (a different server means joining anew).
    pub fn credential_for(&self, server: &str) -> Option<&Joined> {
        self.joined.as_ref().filter(|j| j.server == server)
    }

    /// Writes the state to a temporary file beside it, then renames it over the old one.
    pub fn save(&self, data_dir: &Path) -> Result<(), StateError> {
        let file = path(data_dir);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| StateError::Io { path, source }
        };
        crate::config::create_data_dir(data_dir).map_err(io(data_dir))?;
        let tmp = data_dir.join(".agent.json.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        let text = serde_json::to_vec_pretty(self).map_err(|source| StateError::Corrupt {
            path: file.clone(),
            source,
        })?;
        out.write_all(&text).map_err(io(&tmp))?;
        out.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &file).map_err(io(&file))?;
        Ok(())
    }
}

/// Heartbeat sequence numbers: microseconds since the epoch, and always past the last one,
/// whatever the clock does.
#[derive(Debug, Default)]
pub struct Sequence {
    last: u64,
}

impl Sequence {
    pub fn next_seq(&mut self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        self.last = now.max(self.last.saturating_add(1));
        self.last
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_identity_is_made_once_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("agent");
        let first = State::load_or_create(&data).unwrap();
        assert_eq!(first.agent_secret.len(), 64);
        let mode = std::fs::metadata(path(&data)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let mut again = State::load_or_create(&data).unwrap();
        assert_eq!(again, first);
        again.joined = Some(Joined {
            server: "http://a".into(),
            host_id: "h".into(),
            credential: "c".into(),
        });
        again.save(&data).unwrap();
        let back = State::load_or_create(&data).unwrap();
        assert!(back.credential_for("http://a").is_some());
        let file: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path(&data)).unwrap()).unwrap();
        assert_eq!(
            file["credential"], "c",
            "at the top, where the server looks"
        );
        let dir_mode = std::fs::metadata(&data).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        assert!(back.credential_for("http://b").is_none());
        assert!(!data.join(".agent.json.tmp").exists());
    }

    #[test]
    fn a_damaged_state_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(path(dir.path()), "{").unwrap();
        let err = State::load_or_create(dir.path()).unwrap_err();
        assert!(err.to_string().contains("agent.json"), "{err}");
    }

    #[test]
    fn sequence_numbers_always_grow() {
        let mut s = Sequence::default();
        let a = s.next_seq();
        let b = s.next_seq();
        assert!(b > a);
        s.last = u64::MAX - 1;
        assert_eq!(s.next_seq(), u64::MAX);
    }
}
