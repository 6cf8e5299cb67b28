//! A throwaway PostgreSQL cluster: `initdb` into a fresh temp dir, `pg_ctl start` on
//! a free loopback port, trust auth, no fsync. Dropping it stops the server
//! (`pg_ctl stop -m immediate`) and removes the dir, also when a test panics.
//!
//! PostgreSQL refuses to run as root, so when we are root the server-side binaries
//! run as the `postgres` user through `runuser`, and the temp dir is handed to it.
//! Clients (`psql`) run as whoever we are; they connect over TCP.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{debug, warn};

/// Where the image keeps PostgreSQL 15; `ROLLGATE_PG_BIN` overrides it.
pub const DEFAULT_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
/// The address the cluster listens on.
pub const HOST: &str = "127.0.0.1";
/// The superuser `initdb` creates; trust auth, no password.
pub const SUPERUSER: &str = "postgres";
/// Binding port 0 and then starting can race with another process taking the
/// port; a few attempts make that harmless.
const START_ATTEMPTS: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("PostgreSQL binaries not found: {0} (set ROLLGATE_PG_BIN to their directory)")]
    MissingBinaries(PathBuf),
    #[error("cannot prepare {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("PostgreSQL did not start after {attempts} attempts; last log:\n{log}")]
    Start { attempts: u32, log: String },
    #[error("user `{0}` not found in /etc/passwd (needed to run PostgreSQL as non-root)")]
    NoUser(String),
}

/// A running throwaway cluster. See the module docs.
#[derive(Debug)]
pub struct PgCluster {
    root: PathBuf,
    bin_dir: PathBuf,
    port: u16,
    /// `Some("postgres")` when we are root and must switch user for the server.
    run_as: Option<String>,
    running: bool,
}

impl PgCluster {
    /// Starts a cluster from `ROLLGATE_PG_BIN` or [`DEFAULT_BIN_DIR`].
    pub fn start() -> Result<PgCluster, PgError> {
        let bin_dir = std::env::var_os("ROLLGATE_PG_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BIN_DIR));
        PgCluster::start_with(&bin_dir)
    }

    pub fn start_with(bin_dir: &Path) -> Result<PgCluster, PgError> {
        for tool in ["initdb", "pg_ctl", "postgres", "psql"] {
            if !bin_dir.join(tool).is_file() {
                return Err(PgError::MissingBinaries(bin_dir.join(tool)));
            }
        }
        let run_as = running_as_root().then(|| SUPERUSER.to_owned());
        let root = make_temp_dir()?;
        // From here on, Drop cleans up whatever happens.
        let mut cluster = PgCluster {
            root,
            bin_dir: bin_dir.to_path_buf(),
            port: 0,
            run_as,
            running: false,
        };
        cluster.init()?;
        cluster.start_server()?;
        Ok(cluster)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The path of one of the cluster's PostgreSQL tools (`pg_dump`, ...).
    pub fn bin(&self, tool: &str) -> PathBuf {
        self.bin_dir.join(tool)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// A libpq-style `key=value` connection string for `dbname`, as tokio-postgres
    /// and the gateway's `database_url` take it.
    pub fn conninfo(&self, dbname: &str) -> String {
        format!(
            "host={HOST} port={} user={SUPERUSER} dbname={dbname}",
            self.port
        )
    }

    /// The same as a `postgresql://` URL (for psql and operators).
    pub fn url(&self, dbname: &str) -> String {
        format!("postgresql://{SUPERUSER}@{HOST}:{}/{dbname}", self.port)
    }

    pub fn createdb(&self, name: &str) -> Result<(), PgError> {
        let quoted = name.replace('"', "\"\"");
        self.psql("postgres", &format!("CREATE DATABASE \"{quoted}\""))
            .map(drop)
    }

    /// Runs `sql` with `psql` and returns its unaligned, tuples-only output
    /// (`|`-separated columns, one row a line). Stops at the first error.
    pub fn psql(&self, dbname: &str, sql: &str) -> Result<String, PgError> {
        let mut command = Command::new(self.bin("psql"));
        command
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", HOST, "-p", &self.port.to_string(), "-U", SUPERUSER])
            .args(["-d", dbname, "-c", sql])
            .env("PGCONNECT_TIMEOUT", "10");
        let output = run(&mut command)?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Stops the server now (`pg_ctl stop -m immediate`); Drop does it too.
    pub fn stop(&mut self) -> Result<(), PgError> {
        if !self.running {
            return Ok(());
        }
        self.running = false;
        let data = self.data_dir();
        let mut command = self.server_command("pg_ctl");
        command
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "-w", "-t", "30", "stop"]);
        run(&mut command).map(drop)
    }

    /// Starts a stopped server again on its port (a database that was down
    /// for a while and is back, its data kept).
    pub fn start_again(&mut self) -> Result<(), PgError> {
        if self.running {
            return Ok(());
        }
        run(&mut self.start_command(self.port))?;
        self.running = true;
        Ok(())
    }

    fn init(&self) -> Result<(), PgError> {
        let data = self.data_dir();
        let mut command = self.server_command("initdb");
        command
            .arg("-D")
            .arg(&data)
            .args(["-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--locale=C"])
            // Throwaway data: skip the fsyncs, they are most of initdb's time.
            .arg("--no-sync");
        run(&mut command)?;
        let socket_dir = self.root.join("sock");
        let conf = format!(
            "\n# rollgate testbed: a throwaway cluster\n\
             listen_addresses = '{HOST}'\n\
             unix_socket_directories = '{}'\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             shared_buffers = 32MB\n\
             max_connections = 50\n",
            socket_dir.display()
        );
        let conf_path = data.join("postgresql.conf");
        let io = |source| PgError::Io {
            path: conf_path.clone(),
            source,
        };
        let mut text = std::fs::read_to_string(&conf_path).map_err(io)?;
        text.push_str(&conf);
        std::fs::write(&conf_path, text).map_err(io)?;
        Ok(())
    }

    /// `pg_ctl start` on `port`, waiting until the server accepts.
    fn start_command(&self, port: u16) -> Command {
        let mut command = self.server_command("pg_ctl");
        command
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.root.join("postgres.log"))
            .args(["-w", "-t", "60", "-o", &format!("-p {port}"), "start"]);
        command
    }

    fn start_server(&mut self) -> Result<(), PgError> {
        let data = self.data_dir();
        let log = self.root.join("postgres.log");
        let mut last_log = String::new();
        for attempt in 1..=START_ATTEMPTS {
            let port = free_port().map_err(|source| PgError::Io {
                path: PathBuf::from(format!("{HOST}:0")),
                source,
            })?;
            match run(&mut self.start_command(port)) {
                Ok(_) => {
                    self.port = port;
                    self.running = true;
                    debug!(port, root = %self.root.display(), "PostgreSQL started");
                    return Ok(());
                }
                Err(e) => {
                    last_log = std::fs::read_to_string(&log).unwrap_or_default();
                    warn!(attempt, port, error = %e, "PostgreSQL did not start; retrying on another port");
                    // A postmaster that half-started must not linger.
                    let mut stop = self.server_command("pg_ctl");
                    stop.arg("-D").arg(&data).args(["-m", "immediate", "stop"]);
                    let _ = run(&mut stop);
                    if !last_log.contains("could not bind") && !last_log.contains("already in use")
                    {
                        break;
                    }
                }
            }
        }
        Err(PgError::Start {
            attempts: START_ATTEMPTS,
            log: last_log,
        })
    }

    /// Leaves the cluster running after this handle is gone (`rollgate demo
    /// --keep`); returns the shell command that stops it and removes its dir.
    pub fn detach(self) -> String {
        let pg_ctl = self.bin("pg_ctl");
        let stop = format!(
            "{} -D '{}' -m fast -w stop",
            pg_ctl.display(),
            self.data_dir().display()
        );
        let stop = match &self.run_as {
            Some(user) => format!("runuser -u {user} -- {stop}"),
            None => stop,
        };
        let cmd = format!("{stop}; rm -rf '{}'", self.root.display());
        // Skip Drop: it would stop the server and remove the data.
        std::mem::forget(self);
        cmd
    }

    /// A server-side tool, as the `postgres` user when we are root.
    fn server_command(&self, tool: &str) -> Command {
        let path = self.bin(tool);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(path);
                command
            }
            None => Command::new(path),
        };
        // The server must not inherit a test's cwd it may not be able to read.
        command.current_dir(&self.root);
        command
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            warn!(error = %e, "could not stop the throwaway PostgreSQL cluster");
        }
        if let Err(e) = std::fs::remove_dir_all(&self.root) {
            warn!(error = %e, root = %self.root.display(), "could not remove the cluster's dir");
        }
    }
}

fn running_as_root() -> bool {
    // `/proc/self` is owned by the effective uid; no libc call needed.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// uid and gid of `user`, from /etc/passwd.
fn user_ids(user: &str) -> Result<(u32, u32), PgError> {
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|source| PgError::Io {
        path: PathBuf::from("/etc/passwd"),
        source,
    })?;
    passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.len() > 3 && fields[0] == user)
        .and_then(|fields| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
        .ok_or_else(|| PgError::NoUser(user.to_owned()))
}

/// A fresh, unique dir under the system temp dir, owned by the server's user.
fn make_temp_dir() -> Result<PathBuf, PgError> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let root = std::env::temp_dir().join(format!(
        "rollgate-pg-{}-{n}-{nanos:08x}",
        std::process::id()
    ));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PgError::Io { path, source }
    };
    std::fs::create_dir(&root).map_err(io(&root))?;
    let socket_dir = root.join("sock");
    std::fs::create_dir(&socket_dir).map_err(io(&socket_dir))?;
    if running_as_root() {
        let (uid, gid) = user_ids(SUPERUSER)?;
        for dir in [&root, &socket_dir] {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(io(dir))?;
        }
    }
    Ok(root)
}

fn free_port() -> std::io::Result<u16> {
    crate::net::free_port(std::net::Ipv4Addr::LOCALHOST).map_err(std::io::Error::other)
}

fn run(command: &mut Command) -> Result<Output, PgError> {
    let shown = format!("{command:?}");
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|source| PgError::Spawn {
            command: shown.clone(),
            source,
        })?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(PgError::Command {
            command: shown,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_answers_and_cleans_up() {
        let cluster = PgCluster::start().expect("start a throwaway cluster");
        let root = cluster.root.clone();
        cluster.createdb("gateway").unwrap();
        let out = cluster
            .psql(
                "gateway",
                "CREATE TABLE t (x int); INSERT INTO t VALUES (41), (1); SELECT sum(x) FROM t",
            )
            .unwrap();
        assert_eq!(out.trim(), "42");
        assert!(
            cluster
                .conninfo("gateway")
                .contains(&format!("port={}", cluster.port()))
        );
        let err = cluster
            .psql("gateway", "SELECT * FROM missing")
            .unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        drop(cluster);
        assert!(!root.exists(), "the cluster's dir is removed on drop");
    }
}
