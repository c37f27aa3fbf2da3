//! [`SandboxLauncher`]: starts every child through the launcher (the broker binary re-exec'd as
//! `__launcher`, single-threaded, no async runtime) which confines it (sandbox crate,
//! ARCHITECTURE.md §4). The tokio side only spawns the launcher with a 1-syscall `pre_exec`
//! (fd 3 = control socket), speaks the launch protocol, writes the uid/gid maps, and owns the
//! result: dropping the handle kills the whole sandbox.

use std::collections::BTreeSet;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sandbox::cgroup::{CgroupBackend, CgroupLimits, SessionCgroup};
use sandbox::host::{LayerReport, LayerStatus};
use sandbox::ipc::{BrokerMessage, LauncherMessage, MAX_MESSAGE, encode_token};
use sandbox::plan::{
    Bind, IdMapping, LandlockOutcome, LandlockPlan, LaunchPlan, Rlimit, TokenPlan,
};
use sandbox::process::Pidfd;
use zeroize::Zeroizing;

use super::sandbox_config::{CGROUP_NAME, SandboxConfig};
use super::{ChildControl, ChildExit, ChildHandle, ChildLauncher, ChildSpec, LaunchError};
use crate::audit::{AuditEvent, SharedAudit};
use crate::secret::{ExposeSecret as _, SecretString};
use crate::supervisor::TokenDelivery;

/// How long the launch handshake may take before the launch is abandoned.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// Session cgroups older than this with no process left are removed at startup.
const STALE_CGROUP_AGE: Duration = Duration::from_secs(60);

/// Starts children confined by the sandbox.
#[derive(Clone)]
pub struct SandboxLauncher {
    inner: Arc<Inner>,
    /// Serves each child's egress listener (its only way out), injecting the user's token in
    /// `inject` mode. Without it a child can reach nothing at all.
    egress: Option<Arc<crate::egress::Egress>>,
}

struct Inner {
    config: SandboxConfig,
    profile: policies::Profile,
    launcher: PathBuf,
    cgroups: CgroupBackend,
    root: bool,
    host_ids: (u32, u32),
    leases: Mutex<BTreeSet<u32>>,
    /// Session cgroups whose processes had not been reaped yet when their handle went.
    cleanup: Mutex<Vec<SessionCgroup>>,
    audit: Option<SharedAudit>,
}

/// A launched sandbox with what the broker may use besides stdio.
pub struct SandboxedChild {
    pub handle: ChildHandle,
    /// The listener created inside the child's network namespace (its only reachable
    /// endpoint, `127.0.0.1:<port>` from inside): the egress proxy of `inject` mode accepts on
    /// it. Dropping it makes every connection attempt of the child fail.
    pub egress: Option<std::net::TcpListener>,
    pub egress_port: Option<u16>,
    /// Every layer and how it was applied.
    pub layers: Vec<LayerReport>,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxSetupError {
    #[error("sandbox profile: {0}")]
    Profile(#[from] policies::PolicyError),
    #[error("cannot find the launcher binary: {0}")]
    Launcher(std::io::Error),
}

impl SandboxLauncher {
    /// `launcher` overrides `config.launcher` (tests point it at the broker binary cargo built).
    pub fn new(
        config: SandboxConfig,
        launcher: Option<PathBuf>,
        audit: Option<SharedAudit>,
    ) -> Result<Self, SandboxSetupError> {
        let profile = policies::profile(&config.profile)?;
        let launcher = match launcher.or_else(|| config.launcher.clone()) {
            Some(path) => path,
            None => std::env::current_exe().map_err(SandboxSetupError::Launcher)?,
        };
        let host_ids = sandbox::process::effective_ids();
        let cgroups = CgroupBackend::detect(CGROUP_NAME);
        cgroups.sweep_stale(STALE_CGROUP_AGE);
        Ok(Self {
            inner: Arc::new(Inner {
                profile,
                launcher,
                cgroups,
                root: host_ids.0 == 0,
                host_ids,
                leases: Mutex::new(BTreeSet::new()),
                cleanup: Mutex::new(Vec::new()),
                audit,
                config,
            }),
            egress: None,
        })
    }

    /// Serve every child's egress listener with `egress` (the broker's proxy to Forgejo).
    pub fn with_egress(mut self, egress: Arc<crate::egress::Egress>) -> Self {
        self.egress = Some(egress);
        self
    }

    /// The cgroup backend in use (`cgroup v2`, `cgroup v1`, `none`).
    pub fn cgroup_backend(&self) -> &CgroupBackend {
        &self.inner.cgroups
    }

    /// Starts `spec` confined; see [`SandboxedChild`].
    pub async fn launch_sandboxed(&self, spec: ChildSpec) -> Result<SandboxedChild, LaunchError> {
        self.inner.retry_cleanup();
        // Found in the broker's own PATH: the child's is only seen inside the sandbox. Bound
        // into the sandbox, and started, where it really is.
        let program =
            super::trusted_program(&spec, &std::env::var_os("PATH").unwrap_or_default(), None)?;
        // The launcher starts with the broker's privileges: as safe as the program, at least.
        super::trusted::check(&self.inner.launcher)?;
        let program = std::fs::canonicalize(&program).map_err(|source| LaunchError::Spawn {
            program: program.clone(),
            source,
        })?;
        let ChildSpec {
            program: _,
            args,
            env,
            working_dir,
            credential,
            delivery,
            session_label,
            user_id,
        } = spec;
        let sandbox_error = |stage: &str, message: String| LaunchError::Sandbox {
            stage: stage.to_owned(),
            message,
        };

        // The token: into a zeroizing frame for the launcher; the spec's copy is dropped (and
        // zeroized by `SecretString`) right here.
        let (token_plan, token_frame) = match (delivery, credential) {
            (TokenDelivery::None, _) | (_, None) => (None, None),
            (_, Some((var, secret))) => {
                let frame = encode_token(secret.expose_secret().as_bytes());
                drop(secret);
                let plan = match self.inner.profile.token {
                    policies::TokenVia::File => TokenPlan::File {
                        file_var: format!("{var}_FILE"),
                    },
                    policies::TokenVia::Env => TokenPlan::Env { var },
                };
                (Some(plan), Some(frame))
            }
        };

        let lease = IdLease::acquire(&self.inner).ok_or_else(|| {
            sandbox_error(
                "id-maps",
                "every host uid of sandbox.host_id_base..+count is in use".into(),
            )
        })?;
        let session_dir = format!(
            "{}-{}",
            session_label
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .take(32)
                .collect::<String>(),
            crate::secret::random_id(6).map_err(|e| sandbox_error("join-cgroup", e.to_string()))?
        );
        // The session's cgroups are created, and the launcher placed in them, by the broker
        // while the launcher starts up (see `Inner::start`).
        let cgroup_request = match &self.inner.cgroups {
            CgroupBackend::Unavailable { .. } => None,
            _ => Some((
                session_dir,
                CgroupLimits {
                    memory_bytes: self.inner.config.memory_limit_mib << 20,
                    pids: self.inner.config.pids_limit,
                },
            )),
        };
        let plan = self.inner.plan(
            &program,
            &args,
            &env,
            working_dir.as_deref(),
            token_plan,
            lease.mapping(&self.inner),
            cgroup_request.is_some(),
        )?;

        let mut started = self.inner.start(plan, token_frame, cgroup_request).await?;
        let cgroup = started.cgroup.take();

        let layers = self.inner.layers(started.landlock, lease.distinct);
        let enforced: Vec<String> = layers
            .iter()
            .filter(|l| l.status == LayerStatus::Enforced)
            .map(|l| l.layer.to_owned())
            .collect();
        let degraded: Vec<String> = layers
            .iter()
            .filter_map(|l| {
                l.status
                    .reason()
                    .map(|reason| format!("{} {}: {reason}", l.layer, l.status.label()))
            })
            .collect();
        if let Some(audit) = &self.inner.audit {
            audit.record(AuditEvent::ChildSpawned {
                session: session_label.clone(),
                user_id,
                layers: enforced.clone(),
                degraded,
            });
        }
        let mut launcher = started.launcher;
        let (Some(stdin), Some(stdout), Some(stderr)) = (
            launcher.stdin.take(),
            launcher.stdout.take(),
            launcher.stderr.take(),
        ) else {
            return Err(sandbox_error(
                "exec",
                "the launcher's stdio is missing".into(),
            ));
        };
        let control = SandboxControl {
            launcher: tokio::sync::Mutex::new(launcher),
            exit: Mutex::new(None),
            pid: started.pid,
            pidfd: started.pidfd,
            layers: enforced,
            _control: started.control,
            cgroup: Mutex::new(cgroup),
            _lease: lease,
            inner: Arc::clone(&self.inner),
        };
        Ok(SandboxedChild {
            handle: ChildHandle {
                stdin: Box::pin(stdin),
                stdout: Box::pin(stdout),
                stderr: Box::pin(stderr),
                control: Box::new(control),
            },
            egress: started.egress,
            egress_port: started.egress_port,
            layers,
        })
    }
}

#[async_trait]
impl ChildLauncher for SandboxLauncher {
    /// The launcher replaces the placeholder with `127.0.0.1:<port>` of the listener it
    /// created inside the child's network namespace.
    fn child_forgejo_url(&self, _forgejo: &str) -> String {
        format!("http://{}", sandbox::plan::EGRESS_PLACEHOLDER)
    }

    async fn launch(&self, mut spec: ChildSpec) -> Result<ChildHandle, LaunchError> {
        use crate::egress::{EgressSession, SessionCredential};
        // `inject`: the child gets a random per-session placeholder; the real token stays in
        // the broker and is added by the egress proxy on the way out.
        let credential = match spec.delivery {
            TokenDelivery::Inject => {
                let placeholder =
                    crate::secret::random_token(32).map_err(|error| LaunchError::Sandbox {
                        stage: "credential".to_owned(),
                        message: error.to_string(),
                    })?;
                let variable = spec.credential.take().map(|(variable, _real)| variable);
                spec.credential = variable.map(|variable| {
                    (
                        variable,
                        SecretString::from(placeholder.expose_secret().to_owned()),
                    )
                });
                SessionCredential::Placeholder(placeholder)
            }
            _ => SessionCredential::PassThrough,
        };
        let session = EgressSession {
            user_id: spec.user_id,
            session_label: spec.session_label.clone(),
            credential,
        };
        let child = self.launch_sandboxed(spec).await?;
        let (Some(egress), Some(listener)) = (&self.egress, child.egress) else {
            return Ok(child.handle);
        };
        let cancel = tokio_util::sync::CancellationToken::new();
        egress
            .serve(listener, session, cancel.clone())
            .map_err(|error| LaunchError::Sandbox {
                stage: "egress-proxy".to_owned(),
                message: error.to_string(),
            })?;
        let ChildHandle {
            stdin,
            stdout,
            stderr,
            control,
        } = child.handle;
        Ok(ChildHandle {
            stdin,
            stdout,
            stderr,
            control: Box::new(EgressBound {
                control,
                _proxy: cancel.drop_guard(),
            }),
        })
    }
}

/// A child whose egress proxy stops when the child's owner lets go of it.
struct EgressBound {
    control: Box<dyn ChildControl>,
    _proxy: tokio_util::sync::DropGuard,
}

#[async_trait]
impl ChildControl for EgressBound {
    fn pid(&self) -> Option<u32> {
        self.control.pid()
    }

    fn layers(&self) -> Vec<String> {
        self.control.layers()
    }

    async fn wait(&self) -> ChildExit {
        self.control.wait().await
    }

    async fn terminate(&self, grace: std::time::Duration) -> ChildExit {
        self.control.terminate(grace).await
    }
}

struct Started {
    launcher: tokio::process::Child,
    control: OwnedFd,
    cgroup: Option<SessionCgroup>,
    pid: i32,
    pidfd: Option<Pidfd>,
    landlock: LandlockOutcome,
    egress: Option<std::net::TcpListener>,
    egress_port: Option<u16>,
}

struct Handshake {
    pid: i32,
    pidfd: Option<Pidfd>,
    landlock: LandlockOutcome,
    egress: Option<std::net::TcpListener>,
    egress_port: Option<u16>,
}

impl Inner {
    // The plan is assembled from the spec's parts plus what the launcher decided (ids, cgroup);
    // a struct for them would only be this argument list again.
    #[allow(clippy::too_many_arguments)]
    fn plan(
        &self,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        working_dir: Option<&Path>,
        token: Option<TokenPlan>,
        ids: IdMapping,
        with_cgroup: bool,
    ) -> Result<LaunchPlan, LaunchError> {
        let program = program.to_path_buf();
        for path in &self.config.extra_read_only {
            // As safe as the program; one missing here (it is skipped) must not be creatable
            // by others before it is bound.
            super::trusted::check_present_or_creatable(path)?;
        }
        let mut wanted: Vec<PathBuf> = self.profile.read_only.iter().map(PathBuf::from).collect();
        wanted.extend(self.config.extra_read_only.iter().cloned());
        wanted.push(program.clone());
        wanted.extend(working_dir.map(Path::to_path_buf));
        let (binds, missing) = sandbox::binds::resolve_binds(&wanted);
        if !missing.is_empty() {
            // Profiles list paths for several distributions; `sandbox check` shows these too.
            tracing::debug!(?missing, "sandbox profile paths not present on this host");
        }
        let mut read_only: Vec<String> = binds
            .iter()
            .filter(|b| !matches!(b, Bind::Symlink { .. }))
            .map(|b| b.path().to_owned())
            .collect();
        read_only.extend(["/proc".to_owned(), "/dev/urandom".to_owned()]);

        let mut full_env: Vec<(String, String)> = self.profile.env.clone();
        for (key, value) in env {
            full_env.retain(|(existing, _)| existing != key);
            full_env.push((key.clone(), value.clone()));
        }
        if !full_env.iter().any(|(key, _)| key == "PATH") {
            full_env.push(("PATH".to_owned(), "/usr/bin:/bin".to_owned()));
        }
        let mut argv = vec![program.display().to_string()];
        argv.extend(args.iter().cloned());

        let mib = 1u64 << 20;
        let mut rlimits = vec![
            limit(libc::RLIMIT_NOFILE, self.config.open_files_limit),
            // 1, not 0: with a piped `core_pattern` (systemd-coredump, apport) the kernel
            // ignores the limit and runs the host's root helper on the crashed child, unless
            // the limit is exactly 1 (core(5)). A file dump of at most one byte is none.
            limit(libc::RLIMIT_CORE, 1),
            limit(libc::RLIMIT_FSIZE, self.config.file_size_limit_mib * mib),
            limit(libc::RLIMIT_MEMLOCK, 64 * 1024),
        ];
        if !with_cgroup {
            // Without a pids cgroup, RLIMIT_NPROC is the only fork-bomb brake (per uid, so
            // shared between sessions of an unprivileged broker).
            rlimits.push(limit(libc::RLIMIT_NPROC, self.config.pids_limit));
        }
        Ok(LaunchPlan {
            program: program.display().to_string(),
            argv,
            env: full_env,
            cwd: working_dir.map_or("/tmp".to_owned(), |d| d.display().to_string()),
            binds,
            tmp_size_bytes: self.config.tmp_size_mib * mib,
            hostname: "sandbox".to_owned(),
            rlimits,
            // The broker places the launcher in its cgroups itself (see `start`).
            cgroup_procs: Vec::new(),
            landlock: LandlockPlan {
                read_only,
                read_write: vec!["/tmp".into(), "/dev/null".into(), "/dev/zero".into()],
                connect_tcp: Vec::new(),
            },
            token,
            egress_listener: true,
            ids,
        })
    }

    /// Spawns the launcher, places it in the session's cgroups, and runs the handshake.
    ///
    /// The cgroup work (creating the directories, writing `cgroup.procs` — slow on cgroup v1,
    /// see docs/sandbox.md) overlaps with the launcher's own exec and start-up. The launcher
    /// is placed before it gets its plan, so before it unshares or forks anything: its cgroup
    /// namespace is rooted at the session's cgroup and the child is born in it.
    async fn start(
        &self,
        plan: LaunchPlan,
        token: Option<Zeroizing<Vec<u8>>>,
        cgroup_request: Option<(String, CgroupLimits)>,
    ) -> Result<Started, LaunchError> {
        let (broker_end, launcher_end) =
            sandbox::ipc::control_pair().map_err(|source| LaunchError::Spawn {
                program: self.launcher.clone(),
                source,
            })?;
        let mut command = tokio::process::Command::new(&self.launcher);
        command
            .arg("__launcher")
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        sandbox::process::map_control_fd(command.as_std_mut(), launcher_end.as_raw_fd());
        let mut launcher = command.spawn().map_err(|source| LaunchError::Spawn {
            program: self.launcher.clone(),
            source,
        })?;
        drop(launcher_end);
        let Some(launcher_pid) = launcher.id() else {
            return Err(LaunchError::Sandbox {
                stage: "sanitize".into(),
                message: "the launcher exited at once".into(),
            });
        };
        let ids = plan.ids;
        let backend = self.cgroups.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let cgroup = match cgroup_request {
                Some((dir, limits)) => {
                    match place_in_cgroup(&backend, &dir, limits, launcher_pid) {
                        Ok(cgroup) => Some(cgroup),
                        Err((cgroup, error)) => return (broker_end, cgroup, Err(error)),
                    }
                }
                None => None,
            };
            let result = handshake(&broker_end, &plan, token, launcher_pid, ids);
            (broker_end, cgroup, result)
        })
        .await;
        let (control, cgroup, handshake) = match outcome {
            Ok((control, cgroup, Ok(handshake))) => (control, cgroup, handshake),
            Ok((_, cgroup, Err(error))) => {
                let _ = launcher.start_kill();
                let _ = launcher.wait().await;
                if let Some(cgroup) = cgroup {
                    self.remove_later(cgroup);
                }
                return Err(error);
            }
            Err(join) => {
                let _ = launcher.start_kill();
                return Err(LaunchError::Sandbox {
                    stage: "handshake".into(),
                    message: join.to_string(),
                });
            }
        };
        // Kernels without pidfd: open one by pid (the child may already be gone, then there is
        // nothing left to signal).
        let pidfd = handshake.pidfd.or_else(|| Pidfd::open(handshake.pid).ok());
        Ok(Started {
            launcher,
            control,
            cgroup,
            pid: handshake.pid,
            pidfd,
            landlock: handshake.landlock,
            egress: handshake.egress,
            egress_port: handshake.egress_port,
        })
    }

    fn layers(&self, landlock: LandlockOutcome, distinct: bool) -> Vec<LayerReport> {
        sandbox::host::LAYERS
            .into_iter()
            .map(|layer| {
                let status = match layer {
                    "distinct-uid" => sandbox::host::distinct_uid(distinct),
                    "cgroup-memory" => sandbox::host::cgroup_memory_status(&self.cgroups),
                    "cgroup-pids" => sandbox::host::cgroup_status(&self.cgroups),
                    "landlock-fs" | "landlock-net" | "landlock-scope" => {
                        let [fs, net, scope] = sandbox::host::landlock_layers(landlock);
                        [fs, net, scope]
                            .into_iter()
                            .find(|r| r.layer == layer)
                            .map_or(LayerStatus::Enforced, |r| r.status)
                    }
                    _ => LayerStatus::Enforced,
                };
                LayerReport { layer, status }
            })
            .collect()
    }

    fn remove_later(&self, cgroup: SessionCgroup) {
        if !cgroup.remove()
            && let Ok(mut pending) = self.cleanup.lock()
        {
            pending.push(cgroup);
        }
    }

    fn retry_cleanup(&self) {
        if let Ok(mut pending) = self.cleanup.lock() {
            pending.retain(|cgroup| !cgroup.remove());
        }
    }
}

fn limit(resource: libc::__rlimit_resource_t, value: u64) -> Rlimit {
    Rlimit {
        resource,
        soft: value,
        hard: value,
    }
}

/// Creates the session's cgroups and moves the launcher into them. On failure, returns what
/// was created so the caller can remove it.
fn place_in_cgroup(
    backend: &CgroupBackend,
    dir: &str,
    limits: CgroupLimits,
    launcher_pid: u32,
) -> Result<SessionCgroup, (Option<SessionCgroup>, LaunchError)> {
    let failed = |message: String| LaunchError::Sandbox {
        stage: "join-cgroup".into(),
        message,
    };
    let cgroup = backend.create_session(dir, limits).map_err(|e| {
        (
            None,
            failed(format!("cannot create the session cgroup: {e}")),
        )
    })?;
    for procs in &cgroup.procs {
        if let Err(error) = std::fs::write(procs, launcher_pid.to_string()) {
            let error = failed(format!("cannot move the launcher into {procs}: {error}"));
            return Err((Some(cgroup), error));
        }
    }
    Ok(cgroup)
}

/// The broker side of the launch protocol (sandbox::ipc); blocking, bounded by a timeout.
fn handshake(
    socket: &OwnedFd,
    plan: &LaunchPlan,
    token: Option<Zeroizing<Vec<u8>>>,
    launcher_pid: u32,
    ids: IdMapping,
) -> Result<Handshake, LaunchError> {
    let protocol = |message: String| LaunchError::Sandbox {
        stage: "handshake".into(),
        message,
    };
    let fd = socket.as_raw_fd();
    sandbox::ipc::set_receive_timeout(socket, HANDSHAKE_TIMEOUT)
        .map_err(|e| protocol(e.to_string()))?;
    let plan_bytes = BrokerMessage::Plan(Box::new(plan.clone()))
        .encode()
        .map_err(|e| protocol(e.to_string()))?;
    sandbox::ipc::send_message(fd, &plan_bytes, None).map_err(|e| protocol(e.to_string()))?;
    if let Some(frame) = token {
        sandbox::ipc::send_message(fd, &frame, None).map_err(|e| protocol(e.to_string()))?;
    }
    let mut buffer = vec![0u8; MAX_MESSAGE];
    let mut egress = None;
    let mut egress_port = None;
    loop {
        let (length, passed) = sandbox::ipc::receive_message(fd, &mut buffer)
            .map_err(|e| protocol(format!("no answer from the launcher: {e}")))?;
        if length == 0 {
            return Err(protocol("the launcher exited during setup".into()));
        }
        let message = LauncherMessage::decode(buffer.get(..length).unwrap_or_default())
            .map_err(|e| protocol(e.to_string()))?;
        match message {
            LauncherMessage::Ready => {
                sandbox::process::write_id_maps(launcher_pid, ids).map_err(|e| {
                    LaunchError::Sandbox {
                        stage: "id-maps".into(),
                        message: format!("cannot write the uid/gid maps: {e}"),
                    }
                })?;
                let done = BrokerMessage::MapsWritten
                    .encode()
                    .map_err(|e| protocol(e.to_string()))?;
                sandbox::ipc::send_message(fd, &done, None).map_err(|e| protocol(e.to_string()))?;
            }
            LauncherMessage::EgressListener { port } => {
                egress = passed.map(std::net::TcpListener::from);
                egress_port = Some(port);
            }
            LauncherMessage::Started { pid, landlock } => {
                return Ok(Handshake {
                    pid,
                    pidfd: passed.map(Pidfd::from),
                    landlock,
                    egress,
                    egress_port,
                });
            }
            LauncherMessage::Failed { error } => {
                return Err(LaunchError::Sandbox {
                    stage: error.stage.name().to_owned(),
                    message: error.to_string(),
                });
            }
        }
    }
}

/// A session's host uid (when the broker is root), returned to the pool on drop.
struct IdLease {
    inner: Arc<Inner>,
    slot: Option<u32>,
    distinct: bool,
}

impl IdLease {
    fn acquire(inner: &Arc<Inner>) -> Option<Self> {
        if !inner.root {
            return Some(Self {
                inner: Arc::clone(inner),
                slot: None,
                distinct: false,
            });
        }
        let count = inner.config.host_id_count;
        let mut leases = inner.leases.lock().ok()?;
        // Start at a random slot so concurrent brokers (or test processes) rarely collide.
        let start = crate::secret::random_id(4)
            .ok()
            .map(|id| {
                id.bytes().fold(0u32, |acc, b| {
                    acc.wrapping_mul(31).wrapping_add(u32::from(b))
                })
            })
            .unwrap_or(0)
            % count;
        let slot = (0..count)
            .map(|offset| (start + offset) % count)
            .find(|slot| !leases.contains(slot))?;
        leases.insert(slot);
        Some(Self {
            inner: Arc::clone(inner),
            slot: Some(slot),
            distinct: true,
        })
    }

    fn mapping(&self, inner: &Inner) -> IdMapping {
        match self.slot {
            Some(slot) => {
                let id = inner.config.host_id_base + slot;
                IdMapping::Distinct {
                    host_uid: id,
                    host_gid: id,
                }
            }
            None => IdMapping::OwnIds {
                host_uid: inner.host_ids.0,
                host_gid: inner.host_ids.1,
            },
        }
    }
}

impl Drop for IdLease {
    fn drop(&mut self) {
        if let (Some(slot), Ok(mut leases)) = (self.slot, self.inner.leases.lock()) {
            leases.remove(&slot);
        }
    }
}

/// Owns one sandbox. Dropping it SIGKILLs the sandbox's PID 1 (which takes the whole pid
/// namespace), the launcher (`kill_on_drop`), and closes the control socket.
struct SandboxControl {
    launcher: tokio::sync::Mutex<tokio::process::Child>,
    exit: Mutex<Option<ChildExit>>,
    pid: i32,
    pidfd: Option<Pidfd>,
    layers: Vec<String>,
    _control: OwnedFd,
    cgroup: Mutex<Option<SessionCgroup>>,
    _lease: IdLease,
    inner: Arc<Inner>,
}

impl SandboxControl {
    fn signal(&self, signal: i32) {
        if let Some(pidfd) = &self.pidfd {
            let _ = pidfd.signal(signal);
        }
    }

    fn cached_exit(&self) -> Option<ChildExit> {
        self.exit.lock().ok().and_then(|exit| exit.clone())
    }

    fn release_cgroup(&self) {
        if let Some(cgroup) = self.cgroup.lock().ok().and_then(|mut c| c.take()) {
            self.inner.remove_later(cgroup);
        }
    }
}

#[async_trait]
impl ChildControl for SandboxControl {
    fn pid(&self) -> Option<u32> {
        u32::try_from(self.pid).ok()
    }

    fn layers(&self) -> Vec<String> {
        self.layers.clone()
    }

    async fn wait(&self) -> ChildExit {
        if let Some(exit) = self.cached_exit() {
            return exit;
        }
        let mut launcher = self.launcher.lock().await;
        let exit = match launcher.wait().await {
            Ok(status) => match (status.code(), status.signal()) {
                (Some(code), _) => ChildExit::Exited(code),
                (None, Some(signal)) => ChildExit::Signaled(signal),
                (None, None) => ChildExit::Unknown,
            },
            Err(_) => ChildExit::Unknown,
        };
        if let Ok(mut cached) = self.exit.lock() {
            *cached = Some(exit.clone());
        }
        self.release_cgroup();
        exit
    }

    async fn terminate(&self, grace: Duration) -> ChildExit {
        // PID 1 of a pid namespace ignores SIGTERM unless it installed a handler; SIGKILL
        // after the grace period always works.
        self.signal(libc::SIGTERM);
        match tokio::time::timeout(grace, self.wait()).await {
            Ok(exit) => exit,
            Err(_) => {
                self.signal(libc::SIGKILL);
                self.wait().await
            }
        }
    }
}

impl Drop for SandboxControl {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
        if let Ok(mut launcher) = self.launcher.try_lock() {
            let _ = launcher.start_kill();
        }
        self.release_cgroup();
    }
}
