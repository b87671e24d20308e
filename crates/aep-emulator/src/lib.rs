//! A faithful in-memory emulator of the AEP external-audience API, its `/ups/audiences` lookups,
//! the activation surface (Flow Service destination dataflows and runs, ad hoc activation,
//! segmentation jobs and schedules; [`flows`]) and the IMS token endpoint (reference §7.2) — the
//! project's Pebble. Tests start it in-process on
//! `127.0.0.1:0` with [`Emulator::builder`]; the `aep-emulator` binary runs it standalone.
//!
//! It reuses [`aep::types`] for every body, so client and emulator cannot drift. Lifecycles
//! (operations, runs) and the visibility of new audiences are evaluated lazily from deadlines and
//! poll counts; the behaviours the docs leave open (duplicate names, `customAudienceId`, lookup
//! visibility, the per-audience run window) are [`Settings`], and faults (errors, failed
//! lifecycles, lost answers) are [`Faults`]; both can change at runtime through `/_emulator/*`
//! ([`admin`]). State is in memory, optionally persisted
//! to a JSON file with atomic writes. With [`EmulatorBuilder::tls`] it serves HTTPS with a CA
//! generated at start ([`RunningEmulator::ca_pem`]). It must never be used as a production
//! dependency of the controller, and it never logs tokens or secrets.

pub mod admin;
pub mod config;
pub mod conn;
pub mod flows;
mod routes;
pub mod state;
mod tls;
pub mod validate;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use url::Url;

pub use admin::{
    AddSelector, AdminClient, AdminError, AudienceMutation, Clock, CredentialInfo, FlowCreated, FlowMutation, NewFlow,
};
pub use aep::flows::DestinationKind;
pub use config::{
    CredentialSpec, CustomAudienceIdModel, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEFAULT_ORG_ID, DuplicateNames,
    Entitlement, Faults, LookupVisibility, LostAnswer, LostAnswers, LostMode, PatchAnswer, RunWindow, SelectorIdModel,
    Settings, Visibility,
};
pub use flows::RunTrigger;
pub use state::{AudienceView, ExportRunView, FlowView, OperationView, RunView, StateView, Stats};

use conn::{ConnHandle, KillableListener};
use state::{Store, World};

/// State shared by every handler.
pub(crate) struct Shared {
    world: Mutex<World>,
    persist: Notify,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Signals that persisted state changed.
    pub(crate) fn changed(&self) {
        self.persist.notify_one();
    }
}

/// Entry point: `Emulator::builder()…spawn().await`.
#[derive(Debug)]
pub struct Emulator;

impl Emulator {
    /// A builder with the local defaults: listen on `127.0.0.1:0`, accept
    /// [`DEFAULT_CLIENT_ID`]/[`DEFAULT_CLIENT_SECRET`] for [`DEFAULT_ORG_ID`], zero latency.
    pub fn builder() -> EmulatorBuilder {
        EmulatorBuilder {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            credentials: Vec::new(),
            settings: Settings::default(),
            faults: Faults::default(),
            state_file: None,
            tls: false,
        }
    }
}

/// Configures and starts an emulator.
#[derive(Debug, Clone)]
pub struct EmulatorBuilder {
    listen: SocketAddr,
    credentials: Vec<CredentialSpec>,
    settings: Settings,
    faults: Faults,
    state_file: Option<PathBuf>,
    tls: bool,
}

impl EmulatorBuilder {
    /// Address to bind (port 0 picks a free port).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Accepts this credential (call repeatedly for several). Without any call, the default local
    /// credential is accepted.
    pub fn credential(mut self, spec: CredentialSpec) -> Self {
        self.credentials.push(spec);
        self
    }

    /// Replaces all settings.
    pub fn settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }

    /// Edits the settings in place.
    pub fn configure(mut self, edit: impl FnOnce(&mut Settings)) -> Self {
        edit(&mut self.settings);
        self
    }

    /// Initial faults.
    pub fn faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// `expires_in` of issued tokens.
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.settings.token_lifetime_secs = lifetime.as_secs();
        self
    }

    /// Operations finish after `delay` and after `processing_polls` polls answered `PROCESSING`.
    pub fn operation_timing(mut self, delay: Duration, processing_polls: u32) -> Self {
        self.settings.operation_delay_ms = delay.as_millis() as u64;
        self.settings.operation_polls = processing_polls;
        self
    }

    /// Runs finish after `delay` and after `processing_polls` polls answered `PROCESSING`.
    pub fn run_timing(mut self, delay: Duration, processing_polls: u32) -> Self {
        self.settings.run_delay_ms = delay.as_millis() as u64;
        self.settings.run_polls = processing_polls;
        self
    }

    /// Operations and runs finish on their first poll; streaming flows export a newly mapped
    /// audience at once and export runs (every kind) complete as they start.
    pub fn zero_latency(mut self) -> Self {
        self.settings.streaming_export_delay_ms = 0;
        self.settings.export_run_duration_ms = 0;
        self.operation_timing(Duration::ZERO, 0).run_timing(Duration::ZERO, 0)
    }

    /// Persists state to `path` (loaded at start when it exists).
    pub fn state_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.state_file = Some(path.into());
        self
    }

    /// Serves HTTPS instead of HTTP: at spawn a fresh CA is generated, and a server certificate it
    /// signs for `localhost` and `127.0.0.1`. Clients trust it through
    /// [`RunningEmulator::ca_pem`] ([`RunningEmulator::client_config`] and
    /// [`RunningEmulator::admin`] do so already).
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Binds the listener and starts serving; returns once connections are accepted.
    pub async fn spawn(self) -> io::Result<RunningEmulator> {
        let Persisted { store, stats } = match &self.state_file {
            Some(path) => load_state(path).await?,
            None => Persisted::default(),
        };
        let credentials = if self.credentials.is_empty() {
            vec![CredentialSpec::default()]
        } else {
            self.credentials
        };
        let shared = Arc::new(Shared {
            world: Mutex::new(World {
                store,
                tokens: HashMap::new(),
                credentials,
                settings: self.settings,
                faults: self.faults,
                stats,
                arrivals: HashMap::new(),
                scheme: if self.tls { "https" } else { "http" },
            }),
            persist: Notify::new(),
        });
        let listener = tokio::net::TcpListener::bind(self.listen).await?;
        let addr = listener.local_addr()?;
        let pki = if self.tls {
            Some(tls::generate(addr.ip())?)
        } else {
            None
        };
        let base_url = Url::parse(&format!("{}://{addr}/", if pki.is_some() { "https" } else { "http" }))
            .map_err(|e| io::Error::other(format!("the bound address {addr} makes no URL: {e}")))?;
        let ca_pem = pki.as_ref().map(|pki| pki.ca_pem.clone());
        let admin = AdminClient::with_trust(base_url.clone(), ca_pem.as_deref())
            .map_err(|e| io::Error::other(format!("building the admin client: {e}")))?;
        let listener = match pki {
            Some(pki) => KillableListener::with_tls(listener, pki.server_config),
            None => KillableListener::new(listener),
        };
        let app = routes::service_router(shared.clone())
            .merge(admin::router())
            .fallback(routes::unmatched)
            .with_state(shared.clone());
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let server = axum::serve(listener, app.into_make_service_with_connect_info::<ConnHandle>())
            .with_graceful_shutdown(async {
                let _ = shutdown_rx.await;
            });
        let server_task = tokio::spawn(async move { server.await });
        let persister = self.state_file.clone().map(|path| {
            let (stop, stopped) = oneshot::channel();
            Persister {
                stop,
                task: tokio::spawn(persist_loop(shared.clone(), path, stopped)),
            }
        });
        tracing::info!(%addr, tls = ca_pem.is_some(), "AEP emulator listening");
        Ok(RunningEmulator {
            addr,
            base_url,
            ca_pem,
            admin,
            shared,
            shutdown: Some(shutdown_tx),
            server: Some(server_task),
            persister,
            state_file: self.state_file,
        })
    }
}

/// A started emulator. Dropping it stops the server (without a final state write; use
/// [`RunningEmulator::shutdown`] for that).
pub struct RunningEmulator {
    addr: SocketAddr,
    base_url: Url,
    ca_pem: Option<String>,
    admin: AdminClient,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<io::Result<()>>>,
    persister: Option<Persister>,
    state_file: Option<PathBuf>,
}

impl std::fmt::Debug for RunningEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningEmulator")
            .field("addr", &self.addr)
            .field("tls", &self.ca_pem.is_some())
            .field("state_file", &self.state_file)
            .finish_non_exhaustive()
    }
}

impl RunningEmulator {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>/`, or `https://<addr>/` with TLS: use it as both the AEP platform URL and
    /// the IMS URL.
    pub fn base_url(&self) -> Url {
        self.base_url.clone()
    }

    /// PEM of the CA that signed the server certificate, when serving TLS.
    pub fn ca_pem(&self) -> Option<String> {
        self.ca_pem.clone()
    }

    /// A typed admin client for this emulator (trusting its CA when serving TLS).
    pub fn admin(&self) -> AdminClient {
        self.admin.clone()
    }

    /// Client credentials for the first accepted credential, with both URLs pointing here.
    pub fn credentials(&self) -> aep::Credentials {
        let spec = self.shared.lock().credentials.first().cloned().unwrap_or_default();
        let mut creds = aep::Credentials::new(spec.client_id, spec.client_secret, spec.org_id);
        creds.ims_url = Some(self.base_url());
        creds.platform_url = Some(self.base_url());
        creds
    }

    /// A client configuration pointing at this emulator, trusting its CA when serving TLS (other
    /// values default).
    pub fn client_config(&self) -> aep::ClientConfig {
        aep::ClientConfig {
            platform_url: self.base_url(),
            ims_url: self.base_url(),
            ca_pem: self.ca_pem.clone().map(String::into_bytes),
            ..aep::ClientConfig::default()
        }
    }

    /// Counters, read in-process.
    pub fn stats(&self) -> Stats {
        self.shared.lock().stats.clone()
    }

    /// State view, read in-process.
    pub fn state(&self) -> StateView {
        self.shared.lock().view()
    }

    /// Edits the faults in place.
    pub fn update_faults(&self, edit: impl FnOnce(&mut Faults)) {
        edit(&mut self.shared.lock().faults);
    }

    /// Moves the emulated service's clock forward by `by` (see [`Clock`]).
    pub fn advance_clock(&self, by: Duration) {
        {
            let mut world = self.shared.lock();
            let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
            world.store.clock_offset_ms = world.store.clock_offset_ms.saturating_add(ms);
        }
        self.shared.changed();
    }

    /// The emulated service's "now".
    pub fn now(&self) -> jiff::Timestamp {
        jiff::Timestamp::from_millisecond(self.shared.lock().now_ms()).unwrap_or(jiff::Timestamp::MAX)
    }

    /// Edits the settings in place.
    pub fn update_settings(&self, edit: impl FnOnce(&mut Settings)) {
        edit(&mut self.shared.lock().settings);
    }

    /// Creates a destination dataflow, as its administrator would in the UI (see
    /// [`AdminClient::create_flow`]); returns its id.
    pub fn create_flow(&self, flow: &NewFlow) -> String {
        let created = admin::create_flow_in(&mut self.shared.lock(), flow);
        self.shared.changed();
        created.id
    }

    /// Maps an audience into a flow as the AEP UI would (see [`AdminClient::add_selector`]);
    /// returns the flow's new etag, `None` when there is no such flow.
    pub fn add_selector(&self, flow_id: &str, audience_id: &str) -> Option<String> {
        let etag = admin::add_selector_in(&mut self.shared.lock(), flow_id, &AddSelector::new(audience_id));
        self.shared.changed();
        etag
    }

    /// One flow of the state view (selectors and export runs), read in-process.
    pub fn flow(&self, flow_id: &str) -> Option<FlowView> {
        self.state().flows.into_iter().find(|f| f.flow_id == flow_id)
    }

    /// Stops accepting, finishes in-flight requests, writes the state file one last time.
    pub async fn shutdown(mut self) -> io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.finish().await
    }

    /// Serves until the server stops (it only stops on error or after [`Self::shutdown`] from
    /// elsewhere); for the binary, which races this against a signal.
    pub async fn wait(&mut self) -> io::Result<()> {
        match self.server.as_mut() {
            Some(task) => {
                let result = task.await.map_err(io::Error::other)?;
                self.server = None;
                result
            }
            None => Ok(()),
        }
    }

    async fn finish(&mut self) -> io::Result<()> {
        if let Some(task) = self.server.take() {
            task.await.map_err(io::Error::other)??;
        }
        if let Some(persister) = self.persister.take() {
            // Let a write in progress finish: its file operations would race the final one.
            let _ = persister.stop.send(());
            let _ = persister.task.await;
        }
        if let Some(path) = &self.state_file {
            let snapshot = snapshot(&self.shared)?;
            write_atomic(path, &snapshot).await?;
        }
        Ok(())
    }
}

impl Drop for RunningEmulator {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(persister) = self.persister.take() {
            persister.task.abort();
        }
    }
}

/// What the state file holds: the AEP state and the counters, so a restarted emulator goes on
/// counting what its clients sent (`/_emulator/stats`) across restarts. Files written before the
/// counters were kept load with zero counters.
#[derive(Debug, Default)]
struct Persisted {
    store: Store,
    stats: Stats,
}

impl Persisted {
    /// The counters sit beside the store's own keys. (Not `#[serde(flatten)]`: it cannot read the
    /// store's integer map keys back.)
    fn from_json(bytes: &[u8]) -> serde_json::Result<Persisted> {
        let mut value: serde_json::Value = serde_json::from_slice(bytes)?;
        let stats = match value.as_object_mut().and_then(|m| m.remove("stats")) {
            Some(stats) => serde_json::from_value(stats)?,
            None => Stats::default(),
        };
        Ok(Persisted {
            store: serde_json::from_value(value)?,
            stats,
        })
    }
}

#[derive(serde::Serialize)]
struct PersistedRef<'a> {
    #[serde(flatten)]
    store: &'a Store,
    stats: &'a Stats,
}

fn snapshot(shared: &Shared) -> io::Result<Vec<u8>> {
    let world = shared.lock();
    serde_json::to_vec_pretty(&PersistedRef {
        store: &world.store,
        stats: &world.stats,
    })
    .map_err(io::Error::other)
}

async fn load_state(path: &Path) -> io::Result<Persisted> {
    match tokio::fs::read(path).await {
        Ok(bytes) => Persisted::from_json(&bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("state file {} is not valid: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Persisted::default()),
        Err(e) => Err(e),
    }
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, then renames it over `path`.
async fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let file = tokio::fs::File::create(&tmp).await?;
    let mut file = file;
    tokio::io::AsyncWriteExt::write_all(&mut file, bytes).await?;
    file.sync_all().await?;
    drop(file);
    tokio::fs::rename(&tmp, path).await
}

/// The task writing the state file on changes, and its stop signal.
struct Persister {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Writes the state file after each change until `stop` fires; a write once begun is completed.
async fn persist_loop(shared: Arc<Shared>, path: PathBuf, mut stop: oneshot::Receiver<()>) {
    loop {
        tokio::select! {
            () = shared.persist.notified() => {}
            _ = &mut stop => return,
        }
        let result = match snapshot(&shared) {
            Ok(bytes) => write_atomic(&path, &bytes).await,
            Err(e) => Err(e),
        };
        if let Err(error) = result {
            tracing::warn!(path = %path.display(), %error, "Could not write the state file");
        }
    }
}
