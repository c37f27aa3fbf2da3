//! `[sandbox]` configuration, the startup preflight (`sandbox.require`), and the per-host layer
//! report shared with `forgejo-mcp-broker sandbox check`.

use std::path::PathBuf;

use sandbox::cgroup::CgroupBackend;
use sandbox::host::{LAYERS, LayerReport};
use serde::Deserialize;

use crate::config::{ConfigErrors, Validate};

/// `[sandbox]` section (docs/sandbox.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    /// Confine every child (the default). `false` starts children as plain processes with the
    /// broker's privileges: for development only; the broker warns at every start.
    pub enabled: bool,
    /// Layers that must be enforced on this host, by name (see `sandbox check`); the broker
    /// refuses to start otherwise, saying which and why.
    pub require: Vec<String>,
    /// The child profile (`policies/profiles/profiles.toml`): `native`, `go`, `node`, `python`.
    pub profile: String,
    /// More read-only paths for the child (its package tree, an interpreter prefix).
    pub extra_read_only: Vec<PathBuf>,
    /// The launcher binary; default: this broker executable (re-exec'd as `__launcher`).
    pub launcher: Option<PathBuf>,
    pub memory_limit_mib: u64,
    pub pids_limit: u64,
    pub tmp_size_mib: u64,
    pub open_files_limit: u64,
    pub file_size_limit_mib: u64,
    /// When the broker runs as root, session `n` runs as host uid/gid `host_id_base + n`.
    /// Pick a range no real account uses.
    pub host_id_base: u32,
    pub host_id_count: u32,
    /// What a child may ask of Forgejo through the egress proxy (`policies/upstream/`):
    /// `"builtin"` (the reviewed policy, the default), the absolute path of an operator's own
    /// policy file in the same format, or `"unrestricted"` (every path; warned at start).
    pub upstream_policy: String,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            require: Vec::new(),
            profile: "go".to_owned(),
            extra_read_only: Vec::new(),
            launcher: None,
            memory_limit_mib: 512,
            pids_limit: 128,
            tmp_size_mib: 64,
            open_files_limit: 1024,
            file_size_limit_mib: 64,
            host_id_base: 1_500_000_000,
            host_id_count: 65_536,
            upstream_policy: "builtin".to_owned(),
        }
    }
}

impl Validate for SandboxConfig {
    fn validate(&self, errors: &mut ConfigErrors) {
        for layer in &self.require {
            if !LAYERS.contains(&layer.as_str()) {
                errors.push(
                    "sandbox.require",
                    format!("unknown layer {layer:?}; known: {}", LAYERS.join(", ")),
                );
            }
        }
        if let Err(error) = policies::profile(&self.profile) {
            errors.push("sandbox.profile", error);
        }
        for (key, value) in [
            ("sandbox.memory_limit_mib", self.memory_limit_mib),
            ("sandbox.pids_limit", self.pids_limit),
            ("sandbox.tmp_size_mib", self.tmp_size_mib),
            ("sandbox.open_files_limit", self.open_files_limit),
            ("sandbox.file_size_limit_mib", self.file_size_limit_mib),
            ("sandbox.host_id_count", u64::from(self.host_id_count)),
        ] {
            if value == 0 {
                errors.push(key, "must be positive");
            }
        }
        if self.host_id_base == 0 || self.host_id_base.checked_add(self.host_id_count).is_none() {
            errors.push(
                "sandbox.host_id_base",
                "the range host_id_base..host_id_base+host_id_count must be above 0 and fit in 32 bits",
            );
        }
        if let Err(error) = self.upstream_policy() {
            errors.push("sandbox.upstream_policy", error);
        }
        for path in &self.extra_read_only {
            if !path.is_absolute() {
                errors.push(
                    "sandbox.extra_read_only",
                    format!("{} is not absolute", path.display()),
                );
            }
        }
    }
}

impl SandboxConfig {
    /// The upstream API policy the egress proxy enforces; `None` when `unrestricted`.
    pub fn upstream_policy(&self) -> Result<Option<policies::UpstreamPolicy>, String> {
        match self.upstream_policy.as_str() {
            "builtin" => policies::UpstreamPolicy::builtin()
                .map(Some)
                .map_err(|error| error.to_string()),
            "unrestricted" => Ok(None),
            path if std::path::Path::new(path).is_absolute() => {
                let text = std::fs::read_to_string(path)
                    .map_err(|error| format!("cannot read {path}: {error}"))?;
                policies::UpstreamPolicy::from_toml(&text)
                    .map(Some)
                    .map_err(|error| format!("{path}: {error}"))
            }
            other => Err(format!(
                "{other:?} is neither \"builtin\", \"unrestricted\" nor an absolute path"
            )),
        }
    }
}

/// The name of the cgroup directory session cgroups are created under.
pub const CGROUP_NAME: &str = "forgejo-mcp-broker";

/// What this host can enforce, detected without starting a child.
pub fn host_report() -> (Vec<LayerReport>, CgroupBackend) {
    let (uid, _) = sandbox::process::effective_ids();
    let cgroups = CgroupBackend::detect(CGROUP_NAME);
    (sandbox::host::detect(uid == 0, &cgroups), cgroups)
}

#[derive(Debug, thiserror::Error)]
#[error("sandbox layers required by sandbox.require are not enforced on this host:\n{}", .missing.join("\n"))]
pub struct RequirementError {
    pub missing: Vec<String>,
}

/// Refuses to start when a required layer is not enforced (ARCHITECTURE.md §4: never silently
/// run a weaker sandbox).
pub fn check_requirements(
    config: &SandboxConfig,
    report: &[LayerReport],
) -> Result<(), RequirementError> {
    let missing: Vec<String> = config
        .require
        .iter()
        .filter_map(|required| {
            let layer = report.iter().find(|r| r.layer == required.as_str());
            match layer {
                Some(layer) if layer.status.label() == "enforced" => None,
                Some(layer) => Some(format!(
                    "  - {}: {} ({})",
                    layer.layer,
                    layer.status.label(),
                    layer.status.reason().unwrap_or_default()
                )),
                None => Some(format!("  - {required}: unknown layer")),
            }
        })
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(RequirementError { missing })
    }
}

/// The startup preflight `app::start` runs.
pub fn preflight(config: &SandboxConfig) -> Result<(), RequirementError> {
    if config.require.is_empty() {
        return Ok(());
    }
    let (report, _) = host_report();
    check_requirements(config, &report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandbox::host::LayerStatus;

    #[test]
    fn unknown_layers_and_profiles_are_config_errors() {
        let config = SandboxConfig {
            require: vec!["seccomp".into(), "tin-foil".into()],
            profile: "cobol".into(),
            ..SandboxConfig::default()
        };
        let mut errors = ConfigErrors::default();
        config.validate(&mut errors);
        let text = errors.to_string();
        assert!(text.contains("tin-foil"), "{text}");
        assert!(text.contains("cobol"), "{text}");
        assert!(!text.contains("\"seccomp\""), "{text}");
    }

    #[test]
    fn the_upstream_policy_is_the_builtin_an_operators_file_or_unrestricted() {
        let with = |policy: &str| SandboxConfig {
            upstream_policy: policy.to_owned(),
            ..SandboxConfig::default()
        };
        let builtin = SandboxConfig::default().upstream_policy().unwrap().unwrap();
        assert_eq!(
            builtin.decide("GET", "/api/v1/admin/users"),
            policies::Verdict::Refused("site administration".to_owned())
        );
        assert!(with("unrestricted").upstream_policy().unwrap().is_none());
        let dir = tempfile::tempdir().unwrap();
        let own = dir.path().join("policy.toml");
        std::fs::write(
            &own,
            "[[rule]]\nallow = \"/api/v1/version\"\nmethods = [\"GET\"]\nwhy = \"probe\"\n",
        )
        .unwrap();
        let own_policy = with(own.to_str().unwrap())
            .upstream_policy()
            .unwrap()
            .unwrap();
        assert_eq!(
            own_policy.decide("GET", "/api/v1/version"),
            policies::Verdict::Allowed
        );
        assert_ne!(
            own_policy.decide("GET", "/api/v1/user"),
            policies::Verdict::Allowed
        );
        std::fs::write(&own, "[[rule]]\nallow = \"nope\"\n").unwrap();
        for (value, expected) in [
            ("relative/policy.toml", "neither"),
            ("/nonexistent/policy.toml", "cannot read"),
            (own.to_str().unwrap(), "policy.toml"),
        ] {
            let mut errors = ConfigErrors::default();
            with(value).validate(&mut errors);
            let text = errors.to_string();
            assert!(
                text.contains("sandbox.upstream_policy") && text.contains(expected),
                "{value}: {text}"
            );
        }
    }

    #[test]
    fn a_required_layer_that_is_not_enforced_is_named_with_its_reason() {
        let config = SandboxConfig {
            require: vec!["seccomp".into(), "cgroup-memory".into()],
            ..SandboxConfig::default()
        };
        let report = vec![
            LayerReport {
                layer: "seccomp",
                status: LayerStatus::Enforced,
            },
            LayerReport {
                layer: "cgroup-memory",
                status: LayerStatus::Unavailable("no memory controller delegated".into()),
            },
        ];
        let error = check_requirements(&config, &report).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("cgroup-memory: unavailable"), "{text}");
        assert!(text.contains("no memory controller delegated"), "{text}");
        assert!(!text.contains("seccomp:"), "{text}");
    }
}
