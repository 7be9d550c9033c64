//! Starting and watching real `syncnode` processes on loopback: used by
//! `syncnode demo` and by the integration tests under `tests/`.
//!
//! Every process gets its own data folder, control socket and log file under
//! the cluster's root; a [`Proc`] kills its process when dropped, so a failing
//! test or demo never leaves daemons behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use merkle::ed25519_dalek::SigningKey;

use crate::control::{self, Status, VersionStatus};

/// A running syncnode process.
#[derive(Debug)]
pub struct Proc {
    /// Its name in logs and tables.
    pub name: String,
    /// Its data folder.
    pub data_dir: PathBuf,
    /// Its control socket.
    pub socket: PathBuf,
    /// Its log file (stdout and stderr).
    pub log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// Asks the process for its status.
    pub fn status(&self) -> anyhow::Result<Status> {
        control::query_blocking(&self.socket, Duration::from_secs(5))
    }

    /// Waits until the control socket answers.
    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<Status> {
        let start = Instant::now();
        loop {
            if let Ok(s) = self.status()
                && !s.listen_addrs.is_empty()
            {
                return Ok(s);
            }
            if let Some(c) = self.child.as_mut()
                && let Some(code) = c.try_wait()?
            {
                bail!(
                    "{} exited with {code} before it was ready; log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            if start.elapsed() > timeout {
                bail!(
                    "{} not ready after {timeout:?}; log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A loopback multiaddr this process listens on.
    pub fn addr(&self) -> anyhow::Result<String> {
        let s = self.status()?;
        s.listen_addrs
            .into_iter()
            .find(|a| a.starts_with("/ip4/127."))
            .context("no loopback listen address")
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the process with SIGKILL (no cleanup on its side) and waits.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let start = Instant::now();
        let c = self.child.as_mut().context("not running")?;
        loop {
            if let Some(code) = c.try_wait()? {
                self.child = None;
                return Ok(code);
            }
            if start.elapsed() > timeout {
                bail!("{} still running after {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A set of processes sharing a root folder and a publisher key.
#[derive(Debug)]
pub struct Cluster {
    /// The `syncnode` binary.
    pub bin: PathBuf,
    /// Root folder for data, configs and logs.
    pub root: PathBuf,
    /// The publisher's secret key file.
    pub key_file: PathBuf,
    /// The publisher's public key (hex).
    pub publisher: String,
    /// Extra environment for every process (e.g. `RUST_LOG`).
    pub env: Vec<(String, String)>,
}

/// Writes a new publisher key (hex secret, mode 0600); returns the public key in hex.
pub fn keygen(path: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut secret = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
    let key = SigningKey::from_bytes(&secret);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| {
            format!(
                "cannot create key file {} (does it exist already?)",
                path.display()
            )
        })?;
    std::io::Write::write_all(&mut f, format!("{}\n", hex::encode(secret)).as_bytes())?;
    Ok(hex::encode(key.verifying_key().as_bytes()))
}

/// Reads a publisher key written by [`keygen`].
pub fn read_key(path: &Path) -> anyhow::Result<SigningKey> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read publisher key {} (create one with `syncnode keygen --out {}`)",
            path.display(),
            path.display()
        )
    })?;
    let bytes =
        hex::decode(text.trim()).with_context(|| format!("{} is not a hex key", path.display()))?;
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("{} must hold 64 hex digits", path.display()))?;
    Ok(SigningKey::from_bytes(&arr))
}

impl Cluster {
    /// A cluster rooted at `root` (created), with a fresh publisher key.
    pub fn new(bin: PathBuf, root: PathBuf) -> anyhow::Result<Cluster> {
        std::fs::create_dir_all(&root)?;
        let key_file = root.join("publisher.key");
        let publisher = keygen(&key_file)?;
        Ok(Cluster {
            bin,
            root,
            key_file,
            publisher,
            env: Vec::new(),
        })
    }

    fn spawn(&self, name: &str, args: &[String], env: &[(&str, &str)]) -> anyhow::Result<Proc> {
        self.spawn_wrapped(name, &[], args, env)
    }

    /// Starts `syncnode ARGS` as process `name`, run through `wrapper` (for
    /// example `["ip", "netns", "exec", "ns1"]`, which execs in place so the
    /// child is the daemon itself and [`Proc::kill`] kills the daemon).
    pub fn spawn_wrapped(
        &self,
        name: &str,
        wrapper: &[&str],
        args: &[String],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Proc> {
        let data_dir = self.root.join(name);
        std::fs::create_dir_all(&data_dir)?;
        let log = self.root.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        Ok(Proc {
            name: name.to_owned(),
            socket: data_dir.join(".syncnode/control.sock"),
            data_dir,
            log,
            child: Some(child),
        })
    }

    /// Starts `syncnode seed` publishing `src` as `channel`/`version`.
    pub fn seed(
        &self,
        name: &str,
        src: &Path,
        channel: &str,
        version: &str,
        bootstrap: &[String],
        extra: &[&str],
    ) -> anyhow::Result<Proc> {
        self.seed_env(name, src, channel, version, bootstrap, extra, &[])
    }

    /// [`Cluster::seed`] with extra environment variables (fault switches).
    #[allow(clippy::too_many_arguments)]
    pub fn seed_env(
        &self,
        name: &str,
        src: &Path,
        channel: &str,
        version: &str,
        bootstrap: &[String],
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Proc> {
        let data_dir = self.root.join(name);
        let mut args: Vec<String> = vec![
            "seed".into(),
            src.display().to_string(),
            "--channel".into(),
            channel.into(),
            "--version".into(),
            version.into(),
            "--key".into(),
            self.key_file.display().to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--listen".into(),
            "/ip4/127.0.0.1/tcp/0".into(),
            "--metrics-listen".into(),
            "none".into(),
        ];
        for b in bootstrap {
            args.push("--bootstrap".into());
            args.push(b.clone());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        self.spawn(name, &args, env)
    }

    /// Writes a node config and starts `syncnode run`.
    pub fn node(
        &self,
        name: &str,
        channel: &str,
        bootstrap: &[String],
        trusted: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Proc> {
        let data_dir = self.root.join(name);
        std::fs::create_dir_all(&data_dir)?;
        let list = |v: &[String]| {
            v.iter()
                .map(|s| format!("  - \"{s}\"\n"))
                .collect::<String>()
        };
        let trusted: Vec<String> = trusted.iter().map(|s| s.to_string()).collect();
        let config = format!(
            "data_dir: \"{}\"\nlisten:\n  - /ip4/127.0.0.1/tcp/0\nbootstrap:\n{}channels: [\"{channel}\"]\n\
             trusted_publishers:\n{}metrics_listen: \"127.0.0.1:0\"\nrequest_timeout_secs: 5\n",
            data_dir.display(),
            if bootstrap.is_empty() {
                "  []\n".to_owned()
            } else {
                list(bootstrap)
            },
            list(&trusted),
        );
        let config = config.replace("bootstrap:\n  []\n", "bootstrap: []\n");
        let path = self.root.join(format!("{name}.yaml"));
        std::fs::write(&path, config)?;
        self.spawn(
            name,
            &["run".into(), "--config".into(), path.display().to_string()],
            env,
        )
    }

    /// Restarts a node from its existing config.
    pub fn restart_node(&self, name: &str, env: &[(&str, &str)]) -> anyhow::Result<Proc> {
        let path = self.root.join(format!("{name}.yaml"));
        self.spawn(
            name,
            &["run".into(), "--config".into(), path.display().to_string()],
            env,
        )
    }
}

/// The status of `channel` on `p`'s latest version, if any.
pub fn latest(p: &Proc, channel: &str) -> Option<VersionStatus> {
    p.status()
        .ok()?
        .channels
        .into_iter()
        .find(|c| c.channel == channel)?
        .latest
}

/// Waits until every process reports `version` of `channel` complete and
/// current; returns their final version status in order.
pub fn wait_complete(
    procs: &[&Proc],
    channel: &str,
    version: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<VersionStatus>> {
    let start = Instant::now();
    loop {
        let mut done = Vec::new();
        for p in procs {
            let Ok(s) = p.status() else { break };
            let ch = s.channels.into_iter().find(|c| c.channel == channel);
            match ch {
                Some(c)
                    if c.current.as_deref() == Some(version)
                        && c.latest
                            .as_ref()
                            .is_some_and(|l| l.version == version && l.state == "complete") =>
                {
                    done.push(c.latest.expect("checked"))
                }
                _ => break,
            }
        }
        if done.len() == procs.len() {
            return Ok(done);
        }
        if start.elapsed() > timeout {
            let mut msg = format!("not every node has {channel}/{version} after {timeout:?}:\n");
            for p in procs {
                msg.push_str(&format!(
                    "--- {} status: {:?}\n--- log tail:\n{}\n",
                    p.name,
                    p.status().ok().map(|s| s.channels),
                    tail(&p.log_text(), 40)
                ));
            }
            bail!(msg);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
