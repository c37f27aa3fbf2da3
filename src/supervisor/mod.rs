//! Child processes: the [`ChildLauncher`] seam between the MCP edge (which needs a stdio
//! JSON-RPC peer per session) and how that peer is started (a plain spawn, or the sandbox
//! launcher of issue #6).
//!
//! A launched child is owned by one [`ChildHandle`] (STYLE.md habit 10): dropping it kills the
//! child's whole process group (or sandbox); [`ChildControl::terminate`] does it gracefully.

pub mod plain;
pub mod sandbox_check;
pub mod sandbox_config;
pub mod sandboxed;
pub mod trusted;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::auth::UserId;
use crate::secret::SecretString;

/// How the child gets the user's Forgejo credentials (ARCHITECTURE.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenDelivery {
    /// The child never sees the real token; the egress proxy injects it.
    Inject,
    /// The real token, handed over a pipe (a `/dev/fd/N` file or the child's own environment
    /// inside the sandbox).
    Pipe,
    /// A plain environment variable, for debugging only.
    Env,
    /// The child gets no credentials at all.
    None,
}

/// What to start, for which session. Built by the MCP edge from the child profile.
pub struct ChildSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The complete environment of the child (an allowlist; nothing is inherited).
    pub env: Vec<(String, String)>,
    pub working_dir: Option<PathBuf>,
    /// The secret to hand over and under which variable name the child expects it.
    pub credential: Option<(String, SecretString)>,
    pub delivery: TokenDelivery,
    /// Identifiers for logs and the audit log (never secrets).
    pub session_label: String,
    pub user_id: UserId,
}

impl std::fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildSpec")
            .field("program", &self.program)
            .field("args", &self.args)
            .field(
                "env",
                &self
                    .env
                    .iter()
                    .map(|(key, _)| key.as_str())
                    .collect::<Vec<_>>(),
            )
            .field(
                "credential",
                &self.credential.as_ref().map(|(name, _)| name),
            )
            .field("delivery", &self.delivery)
            .field("session_label", &self.session_label)
            .finish_non_exhaustive()
    }
}

pub type BoxedWrite = Pin<Box<dyn AsyncWrite + Send>>;
pub type BoxedRead = Pin<Box<dyn AsyncRead + Send>>;

/// Why a child is no longer running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChildExit {
    /// Exited by itself with this code.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
    /// Its status could not be collected.
    Unknown,
}

/// Owns a running child. Dropping it kills the child and everything it started.
#[async_trait]
pub trait ChildControl: Send + Sync {
    /// The child's pid as seen from the broker (for logs, tests and the audit log).
    fn pid(&self) -> Option<u32>;
    /// Sandbox layers applied (empty for a plain spawn).
    fn layers(&self) -> Vec<String> {
        Vec::new()
    }
    /// Waits for the child to exit by itself.
    async fn wait(&self) -> ChildExit;
    /// Close stdin has already happened; SIGTERM, wait up to `grace`, then SIGKILL the group.
    async fn terminate(&self, grace: Duration) -> ChildExit;
}

/// A started child: its stdio and its owner.
pub struct ChildHandle {
    pub stdin: BoxedWrite,
    pub stdout: BoxedRead,
    pub stderr: BoxedRead,
    pub control: Box<dyn ChildControl>,
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("sandbox setup failed at stage {stage}: {message}")]
    Sandbox { stage: String, message: String },
    #[error("too many children running")]
    Capacity,
    /// The program or a path the child is given could be changed by another local user.
    #[error("refusing to start the child: {0}")]
    Untrusted(#[from] trusted::Untrusted),
}

/// Where a bare program name is looked up when the child gets no `PATH`: the C library's
/// default (`confstr(_CS_PATH)`), as `execvp` does.
pub const DEFAULT_SEARCH_PATH: &str = "/bin:/usr/bin";

/// Where a plain child's bare program name is looked up: the `PATH` of its environment
/// `env`, or [`DEFAULT_SEARCH_PATH`] when it gets none.
pub fn search_path(env: &[(String, String)]) -> &OsStr {
    let path = env
        .iter()
        .rev()
        .find(|(name, _)| name == "PATH")
        .map_or(DEFAULT_SEARCH_PATH, |(_, value)| value.as_str());
    OsStr::new(path)
}

/// The absolute path `program` names, symlinks kept: with a slash, as given (relative to
/// `base`, else the current directory); a bare name, the first executable file of that name
/// in `search` (a `PATH` value). Relative `PATH` entries are skipped: they would name a
/// different file depending on where the child starts.
pub fn resolve_program(
    program: &Path,
    search: &OsStr,
    base: Option<&Path>,
) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    if program.is_absolute() || program.components().count() > 1 {
        return match base {
            Some(base) => std::path::absolute(base.join(program)),
            None => std::path::absolute(program),
        };
    }
    std::env::split_paths(search)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
}

/// The program to start for `spec`, resolved (see [`resolve_program`]) and, with its working
/// directory, checked to be out of other local users' reach ([`trusted`]).
pub fn trusted_program(
    spec: &ChildSpec,
    search: &OsStr,
    base: Option<&Path>,
) -> Result<PathBuf, LaunchError> {
    let program =
        resolve_program(&spec.program, search, base).map_err(|source| LaunchError::Spawn {
            program: spec.program.clone(),
            source,
        })?;
    trusted::check(&program)?;
    if let Some(dir) = &spec.working_dir {
        trusted::check(dir)?;
    }
    Ok(program)
}

#[async_trait]
pub trait ChildLauncher: Send + Sync + 'static {
    async fn launch(&self, spec: ChildSpec) -> Result<ChildHandle, LaunchError>;

    /// The Forgejo base URL a child of this launcher must use. A plain child reaches Forgejo
    /// itself; a sandboxed one only reaches its egress proxy inside its own namespace.
    fn child_forgejo_url(&self, forgejo: &str) -> String {
        forgejo.to_owned()
    }
}
