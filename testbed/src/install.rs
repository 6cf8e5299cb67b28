//! How the fleet's gateways are installed: release tarballs (the default),
//! Docker Compose services, or Debian packages. What an operator does by
//! hand before rollgate takes over (load the first image and `compose up`,
//! or `dpkg -i` the first package) is done here.
//!
//! Package hosts live in their own root: dpkg with `--instdir`/`--admindir`
//! per host, so each simulated host has its own files and its own dpkg
//! database, and nothing is installed into the machine's root. (A container
//! per host would need a base image with dpkg in it, and no registry is
//! reachable to pull one.)

use std::path::{Path, PathBuf};
use std::process::Command;

/// The install method of every host of a fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Install {
    #[default]
    Tarball,
    Compose,
    Deb,
}

impl Install {
    pub fn as_str(self) -> &'static str {
        match self {
            Install::Tarball => "tarball",
            Install::Compose => "compose",
            Install::Deb => "deb",
        }
    }
}

impl std::str::FromStr for Install {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tarball" => Ok(Install::Tarball),
            "compose" => Ok(Install::Compose),
            "deb" => Ok(Install::Deb),
            other => Err(format!(
                "unknown install method {other:?} (tarball, compose or deb)"
            )),
        }
    }
}

/// The image repository the reference gateway's images are tagged in.
pub const IMAGE: &str = "demo-gateway";
/// The package name of the reference gateway's .debs.
pub const PACKAGE: &str = "demo-gateway";
/// The variable of every compose env file that pins the gateway's tag.
pub const TAG_VARIABLE: &str = "GATEWAY_TAG";
/// An image no rollout touches, for the service of the CP's project that
/// must keep running untouched.
pub const UNRELATED_IMAGE: &str = "rollgate-testbed-unrelated:1";

/// Runs `cmd`; its stdout, or an error with the command, status and output.
pub(crate) fn run(cmd: &mut Command) -> Result<String, String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{shown} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Why the Docker Engine cannot be used, if it cannot: the compose method
/// and its tests need a running engine and a compose tool.
pub fn docker_missing() -> Option<String> {
    match Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
    {
        Err(_) => return Some(
            "the Docker Engine and its CLI (Debian: apt-get install docker.io, then start it: service docker start)".into(),
        ),
        Ok(o) if !o.status.success() => {
            return Some(format!(
                "a running Docker Engine (`docker version` says: {}); start it: service docker start",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        Ok(_) => {}
    }
    if compose_argv().is_none() {
        return Some(
            "a Compose tool: `docker compose` (the plugin) or `docker-compose` (Debian: apt-get install docker-compose)".into(),
        );
    }
    None
}

/// The compose command this machine has: `$ROLLGATE_COMPOSE` (an argv, space
/// separated), else `docker compose`, else `docker-compose`.
pub fn compose_argv() -> Option<Vec<String>> {
    if let Ok(v) = std::env::var("ROLLGATE_COMPOSE")
        && !v.trim().is_empty()
    {
        return Some(v.split_whitespace().map(str::to_string).collect());
    }
    for argv in [vec!["docker", "compose"], vec!["docker-compose"]] {
        let ok = Command::new(argv[0])
            .args(&argv[1..])
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(argv.into_iter().map(str::to_string).collect());
        }
    }
    None
}

/// The ID of an image reference on the engine.
pub fn image_id(reference: &str) -> Option<String> {
    run(Command::new("docker").args(["image", "inspect", "--format", "{{.Id}}", reference]))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Makes the engine hold this build's images: a tag left by another build
/// (another ID) is removed, so staging does not refuse it; then the first
/// release is loaded and the unrelated image tagged from it.
pub fn prepare_engine(
    images: &[(String, String)],
    first: &Path,
    first_ref: &str,
) -> Result<(), String> {
    for (reference, id) in images {
        if let Some(have) = image_id(reference)
            && have != *id
        {
            // In use by a container of a fleet still running: left alone.
            let _ = run(Command::new("docker").args(["image", "rm", reference]));
        }
    }
    run(Command::new("docker").arg("load").arg("-i").arg(first))?;
    if image_id(first_ref).is_none() {
        return Err(format!(
            "docker load of {} gave no {first_ref}",
            first.display()
        ));
    }
    if image_id(UNRELATED_IMAGE).is_none() {
        run(Command::new("docker").args(["tag", first_ref, UNRELATED_IMAGE]))?;
    }
    Ok(())
}

/// One compose project of a host.
#[derive(Debug, Clone)]
pub struct Project {
    pub dir: PathBuf,
    pub name: String,
    /// The services rollgate upgrades (pinned by `TAG_VARIABLE`).
    pub services: Vec<String>,
}

/// A service of a compose file: name, image, the gateway's argv.
pub struct ServiceDef<'a> {
    pub name: &'a str,
    pub image: String,
    pub command: Vec<String>,
}

impl Project {
    /// Writes the project: `docker-compose.yml` (host networking: the
    /// gateway binds its host's loopback address; SIGQUIT and a grace
    /// period, as APISIX is stopped; the host dir mounted read-only for the
    /// gateway's config) and `.env` pinning `version`.
    pub fn write(
        dir: PathBuf,
        name: String,
        host_dir: &Path,
        version: &str,
        services: &[ServiceDef<'_>],
        upgraded: &[&str],
    ) -> Result<Project, String> {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut yml = String::from("version: \"2.4\"\nservices:\n");
        for s in services {
            let cmd = s
                .command
                .iter()
                .map(|a| format!("{a:?}"))
                .collect::<Vec<_>>()
                .join(", ");
            yml.push_str(&format!(
                "  {name}:\n    image: \"{image}\"\n    network_mode: host\n    stop_signal: SIGQUIT\n    stop_grace_period: 15s\n    command: [{cmd}]\n    volumes:\n      - \"{h}:{h}:ro\"\n",
                name = s.name,
                image = s.image,
                h = host_dir.display(),
            ));
        }
        std::fs::write(dir.join("docker-compose.yml"), yml)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        std::fs::write(
            dir.join(".env"),
            format!("# The gateway's release; rollgate rewrites this one line.\n{TAG_VARIABLE}={version}\n"),
        )
        .map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Project {
            dir,
            name,
            services: upgraded.iter().map(|s| s.to_string()).collect(),
        })
    }

    /// `compose … <args>` for this project.
    pub fn command(&self, compose: &[String], args: &[&str]) -> Command {
        let mut c = Command::new(&compose[0]);
        c.args(&compose[1..])
            .arg("--project-directory")
            .arg(&self.dir)
            .args(["-p", &self.name, "-f"])
            .arg(self.dir.join("docker-compose.yml"))
            .arg("--env-file")
            .arg(self.dir.join(".env"))
            .args(args);
        c
    }

    pub fn up(&self, compose: &[String]) -> Result<(), String> {
        run(&mut self.command(compose, &["up", "-d"])).map(|_| ())
    }

    pub fn down(&self, compose: &[String]) -> Result<(), String> {
        run(&mut self.command(compose, &["down", "--timeout", "5"])).map(|_| ())
    }

    /// (container id, started at) of every container of `service`.
    pub fn containers(&self, service: &str) -> Vec<(String, String)> {
        let Ok(ids) = run(Command::new("docker").args([
            "ps",
            "-a",
            "-q",
            "--no-trunc",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.name),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
        ])) else {
            return Vec::new();
        };
        ids.split_whitespace()
            .filter_map(|id| {
                let started = run(Command::new("docker").args([
                    "inspect",
                    "--format",
                    "{{.State.StartedAt}} {{.State.Running}} {{.Config.Image}}",
                    id,
                ]))
                .ok()?;
                Some((id.to_string(), started.trim().to_string()))
            })
            .collect()
    }
}

/// A compose project name unique to this fleet directory and host: tests
/// run in parallel against one engine.
pub fn project_name(fleet_dir: &Path, host: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    fleet_dir.hash(&mut h);
    format!("rg{:08x}{}", h.finish() as u32, host.replace('-', ""))
}

/// A package host's own root and dpkg database.
#[derive(Debug, Clone)]
pub struct DebRoot {
    pub root: PathBuf,
}

impl DebRoot {
    pub fn create(root: PathBuf) -> Result<DebRoot, String> {
        let admin = root.join("var/lib/dpkg");
        for d in [
            admin.join("info"),
            admin.join("updates"),
            root.join("var/log"),
        ] {
            std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        for f in ["status", "available"] {
            let p = admin.join(f);
            if !p.exists() {
                std::fs::write(&p, "").map_err(|e| format!("{}: {e}", p.display()))?;
            }
        }
        Ok(DebRoot { root })
    }

    pub fn admin_dir(&self) -> PathBuf {
        self.root.join("var/lib/dpkg")
    }

    /// dpkg for this root: its files under the root, its database, its log;
    /// maintainer scripts (the reference packages have none) run outside a
    /// chroot; no root privileges needed.
    pub fn dpkg(&self) -> Vec<String> {
        vec![
            "dpkg".into(),
            format!("--instdir={}", self.root.display()),
            format!("--admindir={}", self.admin_dir().display()),
            format!("--log={}", self.root.join("var/log/dpkg.log").display()),
            "--force-script-chrootless".into(),
            "--force-not-root".into(),
        ]
    }

    pub fn dpkg_query(&self) -> Vec<String> {
        vec![
            "dpkg-query".into(),
            format!("--admindir={}", self.admin_dir().display()),
        ]
    }

    pub fn install(&self, deb: &Path) -> Result<(), String> {
        let argv = self.dpkg();
        run(Command::new(&argv[0]).args(&argv[1..]).arg("-i").arg(deb)).map(|_| ())
    }

    /// The installed version of the package, as dpkg-query says.
    pub fn version(&self) -> Option<String> {
        let argv = self.dpkg_query();
        run(Command::new(&argv[0]).args(&argv[1..]).args([
            "-W",
            "-f=${Status} ${Version}",
            PACKAGE,
        ]))
        .ok()
        .map(|s| s.trim().to_string())
    }

    /// The gateway's program inside the root.
    pub fn program(&self) -> PathBuf {
        self.root.join("opt/demo-gateway/bin/demo-gateway")
    }
}
