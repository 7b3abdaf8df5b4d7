//! The I/O edge: run an action list with the real tools, and read the block tree.

use std::io::Write;
use std::path::Path;
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use metalcast_proto::layout::{BlockDevice, BlockTree};

use crate::commands::{Action, Command};
use crate::report::{self, LSBLK_COLUMNS, ReportError};

/// How long [`Action::WaitForDevice`] waits for a node before giving up.
pub const DEVICE_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("starting `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{path} did not appear within {}s", .waited.as_secs())]
    DeviceTimeout { path: String, waited: Duration },
    #[error("reading the output of {tool}")]
    Report {
        tool: &'static str,
        #[source]
        source: ReportError,
    },
}

/// What the progress callback learns after each action.
#[derive(Debug)]
pub struct Progress<'a> {
    /// 0-based position in the list.
    pub index: usize,
    pub total: usize,
    pub action: &'a Action,
    pub duration: Duration,
}

/// Run `actions` in order, calling `on_step` after each one that succeeded. Stops at the
/// first failure; the error carries the tool's stderr. Nothing after a failure runs.
pub fn run(actions: &[Action], mut on_step: impl FnMut(&Progress<'_>)) -> Result<(), ExecError> {
    for (index, action) in actions.iter().enumerate() {
        let started = Instant::now();
        match action {
            Action::Run(c) => {
                tracing::info!(command = %c, "running");
                let out = output(c)?;
                tracing::debug!(stdout = %out, "done");
            }
            Action::WaitForDevice(path) => wait_for(Path::new(path), DEVICE_TIMEOUT)?,
        }
        on_step(&Progress {
            index,
            total: actions.len(),
            action,
            duration: started.elapsed(),
        });
    }
    Ok(())
}

/// Run one command; its stdout when it exits 0.
fn output(c: &Command) -> Result<String, ExecError> {
    let spawn_err = |source| ExecError::Spawn {
        command: c.to_string(),
        source,
    };
    let mut child = Process::new(&c.program)
        .args(&c.args)
        // LVM complains on stderr about every inherited descriptor.
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .stdin(if c.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let (Some(input), Some(mut pipe)) = (&c.stdin, child.stdin.take()) {
        // A tool that exits early closes its end; its exit status then tells why.
        let _ = pipe.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(ExecError::Failed {
            command: c.to_string(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

fn wait_for(path: &Path, timeout: Duration) -> Result<(), ExecError> {
    let started = Instant::now();
    while !path.exists() {
        if started.elapsed() >= timeout {
            return Err(ExecError::DeviceTimeout {
                path: path.display().to_string(),
                waited: timeout,
            });
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}

fn tool(program: &str, args: &[&str]) -> Result<String, ExecError> {
    output(&Command::new(program, args.iter().copied()))
}

/// What the node's block devices hold now: lsblk completed by `blkid -p` (no udev database
/// in the initramfs, so lsblk alone sees no signatures), every MD array's
/// `mdadm --detail --export`, and LVM's JSON reports.
pub fn block_tree() -> Result<BlockTree, ExecError> {
    let json = tool("lsblk", &["--json", "-b", "-o", LSBLK_COLUMNS])?;
    let mut devices = report::parse_lsblk(&json).map_err(|source| ExecError::Report {
        tool: "lsblk",
        source,
    })?;
    for d in &mut devices {
        probe(d);
    }
    let mut md_paths: Vec<String> = devices
        .iter()
        .flat_map(|d| d.walk())
        .filter(|d| d.kind.starts_with("raid") || d.kind == "md")
        .map(|d| d.path.clone())
        .collect();
    md_paths.sort();
    md_paths.dedup();
    let mut md_arrays = Vec::new();
    for path in md_paths {
        let text = tool("mdadm", &["--detail", "--export", &path])?;
        md_arrays.push(report::parse_mdadm_export(&path, &text).map_err(|source| {
            ExecError::Report {
                tool: "mdadm",
                source,
            }
        })?);
    }
    let lvm = |program: &str, fields: &str| {
        tool(
            program,
            &[
                "--reportformat",
                "json",
                "--units",
                "b",
                "--nosuffix",
                "-o",
                fields,
            ],
        )
    };
    let physical_volumes =
        report::parse_pvs(&lvm("pvs", "pv_name,vg_name,pv_size")?).map_err(|source| {
            ExecError::Report {
                tool: "pvs",
                source,
            }
        })?;
    let volume_groups = report::parse_vgs(&lvm(
        "vgs",
        "vg_name,vg_uuid,vg_size,vg_free,vg_extent_size,vg_extent_count",
    )?)
    .map_err(|source| ExecError::Report {
        tool: "vgs",
        source,
    })?;
    let logical_volumes = report::parse_lvs(&lvm("lvs", "vg_name,lv_name,lv_path,lv_size")?)
        .map_err(|source| ExecError::Report {
            tool: "lvs",
            source,
        })?;
    Ok(BlockTree {
        devices,
        md_arrays,
        physical_volumes,
        volume_groups,
        logical_volumes,
    })
}

/// Fill signatures lsblk could not see. blkid exits 2 when it finds none; that and any
/// unreadable device (an empty CD drive) just leave the fields empty.
fn probe(d: &mut BlockDevice) {
    if d.fstype.is_none()
        && let Ok(text) = tool("blkid", &["-p", "-o", "export", &d.path])
    {
        report::fill_from_blkid(d, &report::parse_export(&text));
    }
    for child in &mut d.children {
        probe(child);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_in_order_reports_each_step_and_stops_at_the_first_failure() {
        let actions = vec![
            Action::Run(Command::new("true", Vec::<String>::new())),
            Action::Run(Command {
                program: "sh".into(),
                args: vec![
                    "-c".into(),
                    "read line; echo \"bad $line\" >&2; exit 3".into(),
                ],
                stdin: Some("input\n".into()),
            }),
            Action::Run(Command::new("true", Vec::<String>::new())),
        ];
        let mut seen = Vec::new();
        let err = run(&actions, |p| seen.push((p.index, p.total))).unwrap_err();
        assert_eq!(seen, [(0, 3)]);
        match err {
            ExecError::Failed { stderr, status, .. } => {
                assert_eq!(stderr, "bad input");
                assert!(status.contains('3'), "{status}");
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn questions_read_end_of_file_instead_of_hanging() {
        let ask = Action::Run(Command::new("sh", ["-c", "read answer || exit 7"]));
        assert!(matches!(
            run(&[ask], |_| {}),
            Err(ExecError::Failed { status, .. }) if status.contains('7')
        ));
    }

    #[test]
    fn a_missing_program_is_a_spawn_error() {
        let action = Action::Run(Command::new("/nonexistent/metalcast-tool", ["x"]));
        assert!(matches!(
            run(&[action], |_| {}),
            Err(ExecError::Spawn { .. })
        ));
    }

    #[test]
    fn waits_for_a_device_node_and_times_out() {
        let dir = std::env::temp_dir().join(format!("metalcast-wait-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let node = dir.join("vda1");
        let creator = {
            let node = node.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                std::fs::write(node, b"").unwrap();
            })
        };
        let mut durations = Vec::new();
        run(&[Action::WaitForDevice(node.display().to_string())], |p| {
            durations.push(p.duration)
        })
        .unwrap();
        creator.join().unwrap();
        assert!(durations[0] >= Duration::from_millis(100));
        let missing = dir.join("never");
        assert!(matches!(
            wait_for(&missing, Duration::from_millis(50)),
            Err(ExecError::DeviceTimeout { .. })
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
