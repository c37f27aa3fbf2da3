//! Stage-order tests through the recording fake: no root, no kernel features.

use crate::confine::{Role, confine};
use crate::fake::Recorder;
use crate::ipc::StatusRecord;
use crate::plan::{
    Bind, IdMapping, LandlockPlan, LaunchPlan, Rlimit, Stage, StageError, TokenPlan,
};

fn plan() -> LaunchPlan {
    LaunchPlan {
        program: "/usr/bin/server".to_owned(),
        argv: vec!["server".to_owned(), "--url=http://{egress}".to_owned()],
        env: vec![("PATH".to_owned(), "/usr/bin".to_owned())],
        cwd: "/tmp".to_owned(),
        binds: vec![
            Bind::Dir("/usr".to_owned()),
            Bind::Symlink {
                path: "/lib".to_owned(),
                target: "usr/lib".to_owned(),
            },
            Bind::File("/opt/app/server.js".to_owned()),
        ],
        tmp_size_bytes: 1 << 20,
        hostname: "sandbox".to_owned(),
        rlimits: vec![Rlimit {
            resource: libc::RLIMIT_NOFILE,
            soft: 256,
            hard: 256,
        }],
        cgroup_procs: vec!["/sys/fs/cgroup/memory/s1/cgroup.procs".to_owned()],
        landlock: LandlockPlan::default(),
        token: Some(TokenPlan::File {
            file_var: "TOKEN_FILE".to_owned(),
        }),
        egress_listener: true,
        ids: IdMapping::Distinct {
            host_uid: 100_000,
            host_gid: 100_000,
        },
    }
}

fn run_child(plan: &LaunchPlan, fail_on: Option<&str>) -> (Recorder, Result<Role, StageError>) {
    let mut sys = Recorder::new(true);
    sys.fail_on = fail_on.map(str::to_owned);
    let programs = vec![policies::guard_program(policies::Arch::X86_64)];
    let result = confine(&mut sys, plan, Some(b"tok-123"), &programs);
    (sys, result)
}

fn index(sys: &Recorder, prefix: &str) -> usize {
    sys.position(prefix)
        .unwrap_or_else(|| panic!("no call {prefix:?} in {:#?}", sys.calls))
}

#[test]
fn stages_run_in_the_documented_order() {
    let (sys, result) = run_child(&plan(), None);
    assert!(matches!(
        result,
        Ok(Role::ChildFinished(StageError {
            stage: Stage::Exec,
            ..
        }))
    ));
    let order = [
        "close_from 4",
        "write_file /sys/fs/cgroup/memory/s1/cgroup.procs 4242",
        "unshare user",
        "control_send \"Ready\"",
        "control_recv",
        "unshare mount,net,ipc,uts,cgroup,pid",
        "loopback_up",
        "listen_loopback",
        "fork",
        "set_parent_death_signal 9",
        "open_path /usr",
        "clear_groups",
        "become_mapped_root",
        "mount - / - 0x44000",
        "pivot_root . oldroot",
        "mount /oldroot/proc/self/fd/",
        "mount proc /newroot/proc proc",
        "umount_detach /oldroot",
        "pivot_root . .",
        "umount_detach .",
        "sethostname sandbox",
        "setrlimit",
        "dup2 19 3",
        "set_securebits",
        "drop_bounding_capability 0",
        "drop_bounding_capability 40",
        "clear_ambient_capabilities",
        "clear_capabilities",
        "set_no_new_privs",
        "landlock",
        "close_from 5",
        "seccomp",
        "execve",
        "exit 127",
    ];
    let positions: Vec<usize> = order.iter().map(|call| index(&sys, call)).collect();
    for (pair, names) in positions.windows(2).zip(order.windows(2)) {
        assert!(
            pair[0] < pair[1],
            "{} must come before {}",
            names[0],
            names[1]
        );
    }
    // Seccomp is the last thing before execve.
    let exec = index(&sys, "execve");
    assert!(
        sys.calls[exec - 1].starts_with("seccomp"),
        "{:?}",
        sys.calls[exec - 1]
    );
}

#[test]
fn the_launcher_side_returns_monitor_and_the_child_never_runs_there() {
    let mut sys = Recorder::new(false);
    let result = confine(&mut sys, &plan(), Some(b"tok-123"), &[]);
    assert!(matches!(
        result,
        Ok(Role::Monitor {
            child: 4343,
            egress_port: Some(40_000),
            ..
        })
    ));
    assert!(sys.position("mount").is_none());
    assert!(sys.position("execve").is_none());
    // The listener went to the broker with its descriptor.
    let sent = index(&sys, "control_send {\"EgressListener\"");
    assert!(sys.calls[sent].contains("fd=Some("), "{}", sys.calls[sent]);
}

#[test]
fn the_egress_port_replaces_the_placeholder_and_is_the_only_landlock_port() {
    let (sys, _) = run_child(&plan(), None);
    let exec = &sys.calls[index(&sys, "execve")];
    assert!(exec.contains("--url=http://127.0.0.1:40000"), "{exec}");
    assert!(sys.calls[index(&sys, "landlock")].contains("connect=[40000]"));
}

#[test]
fn the_token_goes_into_a_pipe_and_never_into_argv_or_env() {
    let (sys, _) = run_child(&plan(), None);
    let exec = &sys.calls[index(&sys, "execve")];
    assert!(!exec.contains("tok-123"), "{exec}");
    assert!(exec.contains("TOKEN_FILE=/dev/fd/3"), "{exec}");
    assert!(sys.written.iter().any(|(_, data)| data == b"tok-123"));
}

#[test]
fn env_mode_puts_the_token_only_in_the_childs_exec_environment() {
    let mut plan = plan();
    plan.token = Some(TokenPlan::Env {
        var: "GITEA_TOKEN".to_owned(),
    });
    let (sys, _) = run_child(&plan, None);
    let exec = &sys.calls[index(&sys, "execve")];
    assert!(exec.contains("GITEA_TOKEN=tok-123"), "{exec}");
    assert!(
        !exec.split(']').next().unwrap().contains("tok-123"),
        "not in argv: {exec}"
    );
    // The control socket at fd 3 is closed instead of being replaced by the token pipe.
    assert!(sys.position("close 3").is_some());
}

#[test]
fn each_failure_names_its_stage_and_stops_there() {
    for (call, stage) in [
        ("write_file", Stage::JoinCgroup),
        ("unshare user", Stage::UserNamespace),
        ("unshare mount", Stage::Namespaces),
        ("loopback_up", Stage::Loopback),
        ("listen_loopback", Stage::EgressListener),
        ("fork", Stage::Fork),
        ("mount proc", Stage::MountProc),
        ("pivot_root . .", Stage::PivotRoot),
        ("become_mapped_root", Stage::Identity),
        ("clear_capabilities", Stage::Capabilities),
        ("set_no_new_privs", Stage::NoNewPrivs),
        ("landlock", Stage::Landlock),
        ("seccomp", Stage::Seccomp),
    ] {
        let (sys, result) = run_child(&plan(), Some(call));
        let failed_stage = match result {
            Err(error) => error.stage,
            Ok(Role::ChildFinished(error)) => {
                // In the child the failure is reported on the status pipe, then exit(127).
                let record = StatusRecord::Failed(error).encode();
                assert!(sys.written.iter().any(|(_, data)| data == &record));
                assert_eq!(sys.calls.last().unwrap(), "exit 127");
                error.stage
            }
            Ok(other) => panic!("{call}: {other:?}"),
        };
        assert_eq!(failed_stage, stage, "failing {call}");
        assert!(
            sys.position("execve").is_none(),
            "{call}: no exec after a failure"
        );
    }
}

#[test]
fn an_unprivileged_broker_keeps_supplementary_groups_untouched() {
    let mut plan = plan();
    plan.ids = IdMapping::OwnIds {
        host_uid: 1000,
        host_gid: 1000,
    };
    let (sys, _) = run_child(&plan, None);
    // setgroups is denied in that mode (the broker wrote "deny"); calling it would fail.
    assert!(sys.position("clear_groups").is_none());
    assert!(sys.position("become_mapped_root").is_some());
}
