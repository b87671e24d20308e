//! A real local Kubernetes control plane (etcd + kube-apiserver + kube-controller-manager) for the
//! integration tests and the local demo, in the spirit of controller-runtime's envtest.
//!
//! The binaries are built from pinned Go modules by `hack/envtest/build.sh` into a version-keyed
//! cache directory; this module only starts and stops them. It generates its own PKI (serving CA,
//! serving cert with `IP:127.0.0.1`, ServiceAccount signing key), writes a static token file with
//! two identities and one kubeconfig per identity:
//!
//! * `admin`, in group `system:masters`;
//! * the operator, named exactly like its ServiceAccount
//!   (`system:serviceaccount:<ns>:<name>`, groups `system:serviceaccounts` and
//!   `system:serviceaccounts:<ns>`), so RoleBindings from `deploy/` apply to it unchanged.
//!
//! Two ways to run it:
//! * **attached** ([`ControlPlane::start`], [`ControlPlane::shared`]): every server runs under a
//!   small `sh` watchdog whose stdin is a pipe held by this process. When the owner drops the
//!   [`ControlPlane`], or the process dies for any reason (panic, SIGKILL), the pipe closes and the
//!   watchdogs stop the servers; a janitor removes the temp dir afterwards.
//! * **detached** ([`ControlPlane::start_detached`], the `envtest start` command): servers run in
//!   their own process groups with pidfiles, and [`stop_detached`] ends them.
//!
//! This module must not know about ExternalAudience: it is a plain control plane.

use std::{
    fs,
    io::Write,
    net::{IpAddr, Ipv4Addr, TcpListener},
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

/// Pinned Kubernetes version the harness is built for (see `hack/envtest/versions.env`).
pub const KUBE_VERSION: &str = "1.37.2";

/// Environment variable naming the directory that holds `etcd`, `kube-apiserver` and
/// `kube-controller-manager`. When unset, `hack/envtest/build.sh` is run to find (or build) it.
pub const BIN_DIR_ENV: &str = "ENVTEST_BIN_DIR";

/// Default identity of the operator: the ServiceAccount `deploy/` creates.
pub const DEFAULT_OPERATOR_NAMESPACE: &str = "audience-operator";
/// Default ServiceAccount name of the operator.
pub const DEFAULT_OPERATOR_SERVICE_ACCOUNT: &str = "audience-operator";

const WATCHDOG: &str = r#"exec 3<&0
"$@" </dev/null 3<&- &
child=$!
if [ -n "${WATCHDOG_PIDFILE:-}" ]; then echo "$child" > "$WATCHDOG_PIDFILE"; fi
(
  cat <&3 >/dev/null
  kill -TERM "$child" 2>/dev/null
  i=0
  while kill -0 "$child" 2>/dev/null && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i+1)); done
  kill -KILL "$child" 2>/dev/null
) &
exec 3<&- 0</dev/null
wait "$child"
"#;

const JANITOR: &str = r#"dir=$1; shift
cat >/dev/null
for pid in "$@"; do
  i=0
  while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 150 ]; do sleep 0.1; i=$((i+1)); done
done
rm -rf "$dir"
"#;

/// Errors of the harness. Messages carry the tail of the server logs where it helps.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("control-plane binaries not found: {0}")]
    Binaries(String),
    #[error("io error at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Certs(#[from] rcgen::Error),
    #[error("{what} did not become ready within {timeout:?}{logs}")]
    NotReady {
        what: &'static str,
        timeout: Duration,
        logs: String,
    },
    #[error("{what} exited during startup ({status}){logs}")]
    Exited {
        what: &'static str,
        status: String,
        logs: String,
    },
    #[error("kubeconfig error: {0}")]
    Kubeconfig(String),
}

fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}

/// What to start and how.
#[derive(Clone, Debug)]
pub struct Config {
    /// Directory holding the three binaries.
    pub bin_dir: PathBuf,
    /// Namespace of the operator's ServiceAccount identity.
    pub operator_namespace: String,
    /// Name of the operator's ServiceAccount identity.
    pub operator_service_account: String,
    /// Start kube-controller-manager (namespace deletion + garbage collection).
    pub controller_manager: bool,
    /// Deadline for each server to become ready.
    pub startup_timeout: Duration,
}

impl Config {
    /// Defaults, with the binaries found through [`find_bin_dir`].
    pub fn from_env() -> Result<Self, Error> {
        Ok(Self {
            bin_dir: find_bin_dir()?,
            operator_namespace: DEFAULT_OPERATOR_NAMESPACE.to_owned(),
            operator_service_account: DEFAULT_OPERATOR_SERVICE_ACCOUNT.to_owned(),
            controller_manager: true,
            startup_timeout: Duration::from_secs(90),
        })
    }

    /// The Kubernetes username of the operator identity.
    pub fn operator_username(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.operator_namespace, self.operator_service_account
        )
    }
}

/// Finds the directory with the control-plane binaries: `$ENVTEST_BIN_DIR`, else the output of
/// `hack/envtest/build.sh` (which builds them on first use and is a no-op afterwards).
pub fn find_bin_dir() -> Result<PathBuf, Error> {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        let dir = PathBuf::from(dir);
        check_binaries(&dir)?;
        return Ok(dir);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("hack/envtest/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .map_err(io_err(&script))?;
    if !out.status.success() {
        return Err(Error::Binaries(format!(
            "{} failed ({}); set {BIN_DIR_ENV} to a directory with etcd, kube-apiserver and kube-controller-manager",
            script.display(),
            out.status
        )));
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    check_binaries(&dir)?;
    Ok(dir)
}

fn check_binaries(dir: &Path) -> Result<(), Error> {
    for b in ["etcd", "kube-apiserver", "kube-controller-manager"] {
        if !dir.join(b).is_file() {
            return Err(Error::Binaries(format!("{} is missing in {}", b, dir.display())));
        }
    }
    Ok(())
}

/// One server process (attached: under a watchdog; detached: in its own process group).
struct Server {
    name: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    log: PathBuf,
    /// Program and arguments, to start it again ([`ControlPlane::restart`]).
    command: Option<(PathBuf, Vec<String>)>,
}

impl Server {
    fn stop(&mut self) {
        // Attached: closing the pipe tells the watchdog to stop the server.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() > deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }
}

/// A running control plane. Dropping it stops every process and removes its directory.
pub struct ControlPlane {
    dir: PathBuf,
    server: String,
    admin_kubeconfig: PathBuf,
    operator_kubeconfig: PathBuf,
    operator_username: String,
    servers: Vec<Server>,
    janitor: Option<(Child, ChildStdin)>,
    detached: bool,
    /// Detached and fully started: the processes outlive this value.
    handed_off: bool,
    /// Token of the `admin` identity (readiness probes after a restart).
    admin_token: String,
    etcd_url: String,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("dir", &self.dir)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();

impl ControlPlane {
    /// The control plane shared by all tests of one test binary, started on first use.
    ///
    /// It is never dropped (statics aren't), so its cleanup relies on the watchdog pipes closing
    /// when the test process exits. Panics with the startup error, which is what a test wants.
    pub fn shared() -> &'static ControlPlane {
        let res = SHARED.get_or_init(|| {
            // Start on a plain thread: callers may be inside a tokio runtime.
            std::thread::spawn(|| {
                Config::from_env()
                    .and_then(|cfg| ControlPlane::start(&cfg))
                    .map_err(|e| e.to_string())
            })
            .join()
            .unwrap_or_else(|_| Err("control-plane startup thread panicked".to_owned()))
        });
        match res {
            Ok(cp) => cp,
            Err(e) => panic!("local control plane failed to start: {e}"),
        }
    }

    /// Starts an attached control plane in a fresh temp dir. Retries with new ports when a
    /// picked port was taken in the meantime.
    pub fn start(cfg: &Config) -> Result<Self, Error> {
        Self::start_with(cfg, None)
    }

    /// Starts a detached control plane in `dir` (created, must not exist or be empty).
    /// The processes outlive this process; use [`stop_detached`] to end them.
    pub fn start_detached(cfg: &Config, dir: &Path) -> Result<Self, Error> {
        Self::start_with(cfg, Some(dir))
    }

    fn start_with(cfg: &Config, dir: Option<&Path>) -> Result<Self, Error> {
        let mut last = None;
        for _ in 0..5 {
            let run_dir = match dir {
                Some(d) => {
                    if d.exists() {
                        fs::remove_dir_all(d).map_err(io_err(d))?;
                    }
                    fs::create_dir_all(d).map_err(io_err(d))?;
                    d.to_path_buf()
                }
                None => make_temp_dir()?,
            };
            match Self::try_start(cfg, run_dir.clone(), dir.is_some()) {
                Ok(cp) => return Ok(cp),
                Err(e) if is_port_clash(&e) => {
                    let _ = fs::remove_dir_all(&run_dir);
                    last = Some(e);
                }
                Err(e) => {
                    if dir.is_none() {
                        let _ = fs::remove_dir_all(&run_dir);
                    }
                    return Err(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::Binaries("could not start the control plane".into())))
    }
}

impl ControlPlane {
    fn try_start(cfg: &Config, dir: PathBuf, detached: bool) -> Result<Self, Error> {
        install_crypto_provider();
        let pki = write_pki(&dir)?;
        let admin_token = uuid::Uuid::new_v4().simple().to_string();
        let operator_token = uuid::Uuid::new_v4().simple().to_string();
        let operator_username = cfg.operator_username();
        let tokens = dir.join("tokens.csv");
        write_file(
            &tokens,
            &format!(
                "{admin_token},admin,admin-uid,system:masters\n\
                 {operator_token},{operator_username},operator-uid,\"system:serviceaccounts,system:serviceaccounts:{ns}\"\n",
                ns = cfg.operator_namespace
            ),
        )?;

        let [etcd_port, peer_port, api_port, kcm_port] = free_ports()?;
        let mut cp = ControlPlane {
            server: format!("https://127.0.0.1:{api_port}"),
            admin_kubeconfig: dir.join("admin.kubeconfig"),
            operator_kubeconfig: dir.join("operator.kubeconfig"),
            operator_username,
            servers: Vec::new(),
            janitor: None,
            detached,
            handed_off: false,
            admin_token: admin_token.clone(),
            etcd_url: format!("http://127.0.0.1:{etcd_port}"),
            dir,
        };
        let dir = cp.dir.clone();
        let etcd_data = dir.join("etcd");
        fs::create_dir_all(&etcd_data).map_err(io_err(&etcd_data))?;
        fs::set_permissions(&etcd_data, fs::Permissions::from_mode(0o700)).map_err(io_err(&etcd_data))?;

        let etcd_url = cp.etcd_url.clone();
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        cp.spawn(
            "etcd",
            &cfg.bin_dir.join("etcd"),
            &[
                format!("--data-dir={}", etcd_data.display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=default={peer_url}"),
                "--unsafe-no-fsync=true".into(),
                "--log-level=warn".into(),
            ],
        )?;
        let plain = http_client(None)?;
        cp.wait_ready(
            "etcd",
            cfg.startup_timeout,
            &plain,
            &[format!("{etcd_url}/health")],
            None,
        )?;

        cp.spawn(
            "kube-apiserver",
            &cfg.bin_dir.join("kube-apiserver"),
            &[
                format!("--etcd-servers={etcd_url}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={api_port}"),
                format!("--cert-dir={}", pki.display()),
                format!("--tls-cert-file={}", pki.join("apiserver.crt").display()),
                format!("--tls-private-key-file={}", pki.join("apiserver.key").display()),
                "--service-cluster-ip-range=10.0.0.0/24".into(),
                format!("--service-account-issuer=https://127.0.0.1:{api_port}"),
                format!("--service-account-key-file={}", pki.join("sa.pub").display()),
                format!("--service-account-signing-key-file={}", pki.join("sa.key").display()),
                "--authorization-mode=RBAC".into(),
                "--allow-privileged=true".into(),
                "--disable-admission-plugins=ServiceAccount".into(),
                "--endpoint-reconciler-type=none".into(),
                format!("--token-auth-file={}", tokens.display()),
            ],
        )?;
        let http_ca = fs::read(pki.join("ca.crt")).map_err(io_err(pki.join("ca.crt")))?;
        let apiserver = [
            format!("{}/readyz", cp.server),
            format!("{}/api/v1/namespaces/default", cp.server),
        ];
        cp.wait_ready(
            "kube-apiserver",
            cfg.startup_timeout,
            &http_client(Some(&http_ca))?,
            &apiserver,
            Some(&admin_token),
        )?;

        write_kubeconfig(
            &cp.admin_kubeconfig,
            &cp.server,
            &pki.join("ca.crt"),
            "admin",
            &admin_token,
        )?;
        write_kubeconfig(
            &cp.operator_kubeconfig,
            &cp.server,
            &pki.join("ca.crt"),
            &cp.operator_username,
            &operator_token,
        )?;

        if cfg.controller_manager {
            let kubeconfig = cp.admin_kubeconfig.display().to_string();
            cp.spawn(
                "kube-controller-manager",
                &cfg.bin_dir.join("kube-controller-manager"),
                &[
                    format!("--kubeconfig={kubeconfig}"),
                    format!("--authentication-kubeconfig={kubeconfig}"),
                    format!("--authorization-kubeconfig={kubeconfig}"),
                    "--controllers=namespace,garbagecollector".into(),
                    "--leader-elect=false".into(),
                    "--bind-address=127.0.0.1".into(),
                    format!("--secure-port={kcm_port}"),
                    format!("--cert-dir={}", dir.join("kcm").display()),
                    "--use-service-account-credentials=false".into(),
                ],
            )?;
            // kube-controller-manager serves a self-signed cert of its own; only its health is read.
            let healthz = [format!("https://127.0.0.1:{kcm_port}/healthz")];
            cp.wait_ready(
                "kube-controller-manager",
                cfg.startup_timeout,
                &insecure_http_client()?,
                &healthz,
                None,
            )?;
        }

        if detached {
            let env = cp.shell_env();
            write_file(&dir.join("env"), &env)?;
            cp.handed_off = true;
        } else {
            cp.spawn_janitor()?;
        }
        Ok(cp)
    }

    fn spawn(&mut self, name: &'static str, bin: &Path, args: &[String]) -> Result<(), Error> {
        let log = self.dir.join(format!("{name}.log"));
        let out = fs::File::create(&log).map_err(io_err(&log))?;
        let err = out.try_clone().map_err(io_err(&log))?;
        let mut cmd = if self.detached {
            let mut c = Command::new(bin);
            c.args(args).stdin(Stdio::null()).process_group(0);
            c
        } else {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(WATCHDOG)
                .arg(name)
                .arg(bin)
                .args(args)
                .stdin(Stdio::piped());
            c
        };
        let mut child = cmd
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(io_err(bin))?;
        if self.detached {
            let pidfile = self.dir.join(format!("{name}.pid"));
            write_file(&pidfile, &child.id().to_string())?;
        }
        let stdin = child.stdin.take();
        self.servers.push(Server {
            name,
            child,
            stdin,
            log,
            command: Some((bin.to_path_buf(), args.to_vec())),
        });
        Ok(())
    }

    /// Stops one server (`etcd`, `kube-apiserver` or `kube-controller-manager`) with SIGTERM and
    /// starts it again with the same arguments, ports and data, then waits until it is ready:
    /// what an upgrade or a crash-looping node does to a real control plane. Attached planes only.
    pub fn restart(&mut self, name: &str, timeout: Duration) -> Result<(), Error> {
        if self.detached {
            return Err(Error::Binaries("restart needs an attached control plane".into()));
        }
        let pos = self
            .servers
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| Error::Binaries(format!("no server named {name}")))?;
        let mut old = self.servers.remove(pos);
        old.stop();
        let (bin, args) = old
            .command
            .take()
            .ok_or_else(|| Error::Binaries(format!("{name} has no recorded command")))?;
        // Keep the previous log: rename it aside, the new process writes a fresh one.
        let previous = old.log.with_extension(format!("log.{}", uuid::Uuid::new_v4().simple()));
        let _ = fs::rename(&old.log, previous);
        self.spawn(old.name, &bin, &args)?;
        // `spawn` appended it; put it back in start order.
        let new = self.servers.pop().expect("just spawned");
        self.servers.insert(pos, new);
        match old.name {
            "etcd" => {
                let urls = [format!("{}/health", self.etcd_url)];
                self.wait_ready("etcd", timeout, &http_client(None)?, &urls, None)
            }
            "kube-apiserver" => {
                let ca_path = self.dir.join("pki").join("ca.crt");
                let ca = fs::read(&ca_path).map_err(io_err(&ca_path))?;
                let urls = [
                    format!("{}/readyz", self.server),
                    format!("{}/api/v1/namespaces/default", self.server),
                ];
                let token = self.admin_token.clone();
                self.wait_ready("kube-apiserver", timeout, &http_client(Some(&ca))?, &urls, Some(&token))
            }
            _ => Ok(()),
        }
    }

    fn spawn_janitor(&mut self) -> Result<(), Error> {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(JANITOR).arg("janitor").arg(&self.dir);
        for s in &self.servers {
            cmd.arg(s.child.id().to_string());
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io_err("sh"))?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| Error::Binaries("janitor has no stdin".into()))?;
        self.janitor = Some((child, stdin));
        Ok(())
    }

    /// Polls until every URL answers 2xx, failing fast (with log tails) when a server exits.
    fn wait_ready(
        &mut self,
        what: &'static str,
        timeout: Duration,
        http: &reqwest::Client,
        urls: &[String],
        token: Option<&str>,
    ) -> Result<(), Error> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io_err("tokio runtime"))?;
        let probe = || async {
            for url in urls {
                let mut req = http.get(url);
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                if !req.send().await.is_ok_and(|r| r.status().is_success()) {
                    return false;
                }
            }
            true
        };
        let deadline = Instant::now() + timeout;
        loop {
            // Callers may be inside another runtime: run this one on a scoped thread.
            let ready = std::thread::scope(|s| s.spawn(|| rt.block_on(probe())).join().unwrap_or(false));
            if ready {
                return Ok(());
            }
            if let Some(pos) = self.servers.iter_mut().position(|s| s.exited().is_some()) {
                let status = self.servers[pos].exited().unwrap_or_default();
                let name = self.servers[pos].name;
                return Err(Error::Exited {
                    what: name,
                    status,
                    logs: self.log_tails(),
                });
            }
            if Instant::now() > deadline {
                return Err(Error::NotReady {
                    what,
                    timeout,
                    logs: self.log_tails(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_tails(&self) -> String {
        let mut out = String::new();
        for s in &self.servers {
            let text = fs::read_to_string(&s.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(25)..];
            out.push_str(&format!(
                "\n--- last lines of {} ({}) ---\n{}",
                s.name,
                s.log.display(),
                tail.join("\n")
            ));
        }
        out
    }

    /// The apiserver URL.
    pub fn server(&self) -> &str {
        &self.server
    }
    /// The directory holding PKI, logs and kubeconfigs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// Kubeconfig of the `system:masters` admin.
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }
    /// Kubeconfig of the operator's ServiceAccount identity.
    pub fn operator_kubeconfig(&self) -> &Path {
        &self.operator_kubeconfig
    }
    /// `system:serviceaccount:<ns>:<name>` of the operator identity.
    pub fn operator_username(&self) -> &str {
        &self.operator_username
    }

    /// A client authenticated as the admin.
    pub async fn admin_client(&self) -> Result<kube::Client, Error> {
        client_from(&self.admin_kubeconfig).await
    }
    /// A client authenticated as the operator's ServiceAccount.
    pub async fn operator_client(&self) -> Result<kube::Client, Error> {
        client_from(&self.operator_kubeconfig).await
    }

    /// Shell lines to export for using this control plane with kubectl.
    pub fn shell_env(&self) -> String {
        format!(
            "export KUBECONFIG={}\nexport OPERATOR_KUBECONFIG={}\nexport ENVTEST_DIR={}\n",
            self.admin_kubeconfig.display(),
            self.operator_kubeconfig.display(),
            self.dir.display()
        )
    }

    /// Stops every process (apiserver and controller-manager first, then etcd) and removes the
    /// directory. Dropping does the same.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if self.handed_off {
            return;
        }
        if self.detached {
            // A detached start that failed half-way: end what it started.
            let _ = stop_detached(&self.dir);
            return;
        }
        // Reverse start order: controller-manager, apiserver, etcd.
        while let Some(mut s) = self.servers.pop() {
            s.stop();
        }
        if let Some((mut child, stdin)) = self.janitor.take() {
            drop(stdin);
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A process (the operator, the emulator) that stops when this value is dropped or when the
/// current process dies, through the same stdin-pipe watchdog as the control plane.
pub struct Watched {
    server: Server,
    pidfile: PathBuf,
}

impl Watched {
    /// Starts `program` with `args` and extra `envs`, output appended to `log`.
    pub fn spawn(program: &Path, args: &[String], envs: &[(String, String)], log: &Path) -> Result<Self, Error> {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io_err(log))?;
        let err = out.try_clone().map_err(io_err(log))?;
        let pidfile = log.with_extension(format!("pid-{}", uuid::Uuid::new_v4().simple()));
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("watched")
            .arg(program)
            .args(args)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .env("WATCHDOG_PIDFILE", &pidfile)
            .stdin(Stdio::piped())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(io_err(program))?;
        let stdin = child.stdin.take();
        Ok(Watched {
            server: Server {
                name: "watched",
                child,
                stdin,
                log: log.to_path_buf(),
                command: None,
            },
            pidfile,
        })
    }

    /// PID of the program (not of its watchdog), once it is running.
    pub fn pid(&self) -> Option<u32> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(pid) = fs::read_to_string(&self.pidfile)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                return Some(pid);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the program has exited.
    pub fn exited(&mut self) -> bool {
        self.server.exited().is_some()
    }

    /// Whether the program (not its watchdog) is alive now.
    pub fn is_running(&mut self) -> bool {
        !self.exited() && self.pid().is_some_and(|pid| alive(&pid.to_string()))
    }

    /// SIGKILLs the program at once (a crash), then reaps its watchdog. Returns whether the signal
    /// landed on a running program (false when it had already exited).
    pub fn kill(mut self) -> bool {
        let landed = match self.pid() {
            Some(pid) if alive(&pid.to_string()) => Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
            _ => false,
        };
        self.server.stop();
        landed
    }

    /// SIGTERM, then SIGKILL after a grace period.
    pub fn stop(mut self) {
        self.server.stop();
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.server.stop();
        let _ = fs::remove_file(&self.pidfile);
    }
}

/// Stops a detached control plane started in `dir`: SIGTERM to each process group (apiserver
/// first), SIGKILL after a grace period, then removes the directory. Idempotent.
pub fn stop_detached(dir: &Path) -> Result<(), Error> {
    for name in ["kube-controller-manager", "kube-apiserver", "etcd"] {
        let pidfile = dir.join(format!("{name}.pid"));
        let Ok(pid) = fs::read_to_string(&pidfile) else {
            continue;
        };
        let pid = pid.trim().to_owned();
        if pid.parse::<u32>().is_err() {
            continue;
        }
        let group = format!("-{pid}");
        let _ = Command::new("kill")
            .args(["-TERM", "--", &group])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while alive(&pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_file(&pidfile);
    }
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(io_err(dir))?;
    }
    Ok(())
}

fn alive(pid: &str) -> bool {
    Command::new("kill")
        .args(["-0", pid])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

async fn client_from(path: &Path) -> Result<kube::Client, Error> {
    let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| Error::Kubeconfig(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| Error::Kubeconfig(e.to_string()))?;
    kube::Client::try_from(config).map_err(|e| Error::Kubeconfig(e.to_string()))
}

/// An HTTP client for health probes, trusting only `ca_pem` when given.
fn http_client(ca_pem: Option<&[u8]>) -> Result<reqwest::Client, Error> {
    install_crypto_provider();
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(2));
    if let Some(pem) = ca_pem {
        let ca = reqwest::Certificate::from_pem(pem).map_err(|e| Error::Binaries(format!("serving CA: {e}")))?;
        builder = builder.tls_certs_only([ca]);
    }
    builder
        .build()
        .map_err(|e| Error::Binaries(format!("http client: {e}")))
}

/// A health-probe client that accepts any certificate (for kube-controller-manager's self-signed one).
fn insecure_http_client() -> Result<reqwest::Client, Error> {
    install_crypto_provider();
    reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| Error::Binaries(format!("http client: {e}")))
}

/// Installs the process-wide rustls crypto provider (ring); a provider already installed stays.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn is_port_clash(e: &Error) -> bool {
    matches!(e, Error::Exited { logs, .. } if logs.contains("address already in use"))
}

fn make_temp_dir() -> Result<PathBuf, Error> {
    let base = std::env::temp_dir();
    let dir = base.join(format!("audience-operator-envtest-{}", uuid::Uuid::new_v4().simple()));
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    Ok(dir)
}

fn free_ports<const N: usize>() -> Result<[u16; N], Error> {
    // Hold all listeners at once so the ports are distinct, then release them.
    let listeners = (0..N)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io_err("127.0.0.1:0")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut ports = [0u16; N];
    for (p, l) in ports.iter_mut().zip(&listeners) {
        *p = l.local_addr().map_err(io_err("127.0.0.1:0"))?.port();
    }
    Ok(ports)
}

fn write_file(path: &Path, content: &str) -> Result<(), Error> {
    let mut f = fs::File::create(path).map_err(io_err(path))?;
    f.write_all(content.as_bytes()).map_err(io_err(path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io_err(path))
}

/// Serving CA, serving cert for 127.0.0.1/localhost and the ServiceAccount signing key.
fn write_pki(dir: &Path) -> Result<PathBuf, Error> {
    let pki = dir.join("pki");
    fs::create_dir_all(&pki).map_err(io_err(&pki))?;

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "audience-operator-envtest-ca");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut serving = CertificateParams::new(vec!["localhost".to_owned()])?;
    serving
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    serving.distinguished_name.push(DnType::CommonName, "kube-apiserver");
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_key = KeyPair::generate()?;
    let serving_cert = serving.signed_by(&serving_key, &issuer)?;

    let sa_key = KeyPair::generate()?;

    write_file(&pki.join("ca.crt"), &ca_cert.pem())?;
    write_file(&pki.join("apiserver.crt"), &serving_cert.pem())?;
    write_file(&pki.join("apiserver.key"), &serving_key.serialize_pem())?;
    write_file(&pki.join("sa.key"), &sa_key.serialize_pem())?;
    write_file(&pki.join("sa.pub"), &sa_key.public_key_pem())?;
    Ok(pki)
}

fn write_kubeconfig(path: &Path, server: &str, ca: &Path, user: &str, token: &str) -> Result<(), Error> {
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "envtest", "cluster": {"server": server, "certificate-authority": ca}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "envtest", "context": {"cluster": "envtest", "user": user, "namespace": "default"}}],
        "current-context": "envtest",
    });
    // JSON is YAML: kubectl and kube-rs read it as a kubeconfig.
    let yaml = serde_json::to_string_pretty(&doc).map_err(|e| Error::Kubeconfig(e.to_string()))?;
    write_file(path, &yaml)
}
