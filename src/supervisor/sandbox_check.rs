//! `forgejo-mcp-broker sandbox check`: what this host enforces, per layer, confirmed by a trial
//! launch (the broker binary itself, `--version`, under the full sandbox).

use std::fmt::Write as _;
use std::time::Duration;

use sandbox::host::{LayerReport, LayerStatus};
use tokio::io::AsyncReadExt as _;

use super::sandbox_config::{SandboxConfig, check_requirements, host_report};
use super::sandboxed::SandboxLauncher;
use super::{ChildSpec, TokenDelivery};

pub struct CheckReport {
    pub layers: Vec<LayerReport>,
    /// Paths of the configured profile (and `extra_read_only`) that do not exist here.
    pub missing_paths: Vec<String>,
    pub cgroup_backend: String,
    /// `Ok(output)` of the trial child, or why it could not start.
    pub trial: Result<String, String>,
    pub requirements_met: bool,
    pub unmet: Option<String>,
}

impl CheckReport {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "sandbox layers on this host (cgroups: {}):",
            self.cgroup_backend
        );
        for report in &self.layers {
            let _ = writeln!(
                out,
                "  {:<18} {:<12} {}",
                report.layer,
                report.status.label(),
                report.status.reason().unwrap_or_default()
            );
        }
        if !self.missing_paths.is_empty() {
            let _ = writeln!(
                out,
                "profile paths not on this host (skipped): {}",
                self.missing_paths.join(", ")
            );
        }
        match &self.trial {
            Ok(output) => {
                let _ = writeln!(
                    out,
                    "trial child: started and ran under the sandbox ({})",
                    output.trim()
                );
            }
            Err(error) => {
                let _ = writeln!(out, "trial child: FAILED: {error}");
            }
        }
        if let Some(unmet) = &self.unmet {
            let _ = writeln!(out, "{unmet}");
        }
        out
    }
}

/// Detects the layers, then starts a trial child to confirm them. The check fails (non-zero
/// exit) when a required layer is not enforced or the trial child cannot start.
pub async fn run(config: &SandboxConfig) -> CheckReport {
    let (detected, backend) = host_report();
    let trial_config = SandboxConfig {
        profile: "native".to_owned(),
        ..config.clone()
    };
    let trial = trial(trial_config).await;
    let layers = match &trial {
        Ok((_, layers)) => layers.clone(),
        Err(error) => detected
            .into_iter()
            .map(|report| {
                if report.layer.ends_with("-namespace") || report.layer == "minimal-root" {
                    LayerReport {
                        layer: report.layer,
                        status: LayerStatus::Unavailable(format!("trial launch failed: {error}")),
                    }
                } else {
                    report
                }
            })
            .collect(),
    };
    let unmet = check_requirements(config, &layers)
        .err()
        .map(|e| e.to_string());
    // A host where no child can start at all fails the check even without requirements.
    let requirements_met = unmet.is_none() && trial.is_ok();
    let missing_paths = policies::profile(&config.profile)
        .map(|profile| profile.read_only)
        .unwrap_or_default()
        .into_iter()
        .map(std::path::PathBuf::from)
        .chain(config.extra_read_only.iter().cloned())
        .filter(|path| !path.exists())
        .map(|path| path.display().to_string())
        .collect();
    CheckReport {
        layers,
        missing_paths,
        cgroup_backend: backend.name().to_owned(),
        trial: trial.map(|(output, _)| output),
        requirements_met,
        unmet,
    }
}

async fn trial(config: SandboxConfig) -> Result<(String, Vec<LayerReport>), String> {
    let program = std::env::current_exe().map_err(|e| e.to_string())?;
    let launcher = SandboxLauncher::new(config, None, None).map_err(|e| e.to_string())?;
    let spec = ChildSpec {
        program,
        args: vec!["--version".to_owned()],
        env: Vec::new(),
        working_dir: None,
        credential: None,
        delivery: TokenDelivery::None,
        session_label: "sandbox-check".to_owned(),
        user_id: 0,
    };
    let mut child = launcher
        .launch_sandboxed(spec)
        .await
        .map_err(|e| e.to_string())?;
    let mut output = String::new();
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        child.handle.stdout.read_to_string(&mut output),
    )
    .await;
    let exit = child.handle.control.terminate(Duration::from_secs(1)).await;
    match read {
        Ok(Ok(_)) if !output.is_empty() => Ok((output, child.layers)),
        _ => Err(format!("the trial child printed nothing (exit: {exit:?})")),
    }
}
