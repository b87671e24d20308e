//! `controller import`: bring audiences that already exist in AEP under Git.
//!
//! * **Import** lists the external audiences of a sandbox (filters: name contains, origin) and
//!   prints one `ExternalAudience` manifest per audience with `spec.audienceId` and every field
//!   AEP returns (name, description, labels; the ingestion settings of the latest run). What AEP
//!   does not return (fields, sourceSpec, ttlInDays) is left unset and named in a comment: an
//!   object with `spec.audienceId` needs none of it, and nothing unknown is ever sent to AEP.
//! * **Re-attach** (`--attach-to`, the rebuild path) reads the user's own manifests (a Git
//!   checkout) and prints them with `spec.audienceId` set to the one audience of the same name in
//!   the sandbox. Only when asked: the controller never adopts an audience by its name.
//!
//! The command only reads from AEP. Credentials come from the same Secret the objects use (read
//! with the caller's kubeconfig) or from a local env file with the Secret's keys; endpoints pass
//! the same allow-list as `controller run`.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};
use k8s_openapi::{ByteString, api::core::v1::Secret};
use serde_json::{Value, json};
use url::Url;

use crate::{
    aep::{AepClient, ClientConfig, Credentials, EndpointPolicy, Run, UpsAudience},
    controller::credentials::from_secret_data,
};

/// `managementPolicy` of the printed objects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum PolicyArg {
    /// Only observe (report drift; never change anything in AEP).
    #[default]
    Observe,
    /// Manage (PATCH what differs from the manifest, ingest on request, delete per deletionPolicy).
    Manage,
}

/// `deletionPolicy` of the printed objects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum DeletionArg {
    /// Leave the audience in AEP when the object is deleted.
    #[default]
    Orphan,
    /// Delete the audience in AEP when the object is deleted (managed objects only).
    Delete,
}

/// Settings of `controller import`.
#[derive(Parser, Clone, Debug)]
pub struct ImportConfig {
    /// The AEP sandbox to list (x-sandbox-name).
    #[arg(long)]
    pub sandbox: String,

    /// Read the credentials from this Secret in `--namespace` (keys clientId, clientSecret, orgId,
    /// optional scopes, imsUrl, platformUrl), with the caller's kubeconfig.
    #[arg(long, conflicts_with = "env_file", required_unless_present = "env_file")]
    pub secret: Option<String>,

    /// Read the credentials from a local file of KEY=VALUE lines with the Secret's keys (clientId,
    /// clientSecret, orgId, scopes, imsUrl, platformUrl; CLIENT_ID-style spellings work too).
    #[arg(long)]
    pub env_file: Option<PathBuf>,

    /// Kubeconfig for `--secret`; $KUBECONFIG or in-cluster config when unset.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,

    /// Namespace of the Secret and of the printed objects.
    #[arg(long, default_value = "default")]
    pub namespace: String,

    /// Only audiences whose name contains this text (case-insensitive).
    #[arg(long)]
    pub name_contains: Option<String>,

    /// Only audiences of this origin (`originName`); external audiences are `CUSTOM_UPLOAD`.
    #[arg(long, default_value = "CUSTOM_UPLOAD")]
    pub origin: String,

    /// `spec.managementPolicy` of the printed objects.
    #[arg(long, value_enum, default_value_t = PolicyArg::Observe)]
    pub management_policy: PolicyArg,

    /// `spec.deletionPolicy` of the printed objects.
    #[arg(long, value_enum, default_value_t = DeletionArg::Orphan)]
    pub deletion_policy: DeletionArg,

    /// The credentials Secret the printed objects name (default: `--secret`, else
    /// `aep-credentials`).
    #[arg(long)]
    pub credentials_secret_name: Option<String>,

    /// Write every manifest into this one file (default: standard output).
    #[arg(long, conflicts_with = "output_dir")]
    pub output: Option<PathBuf>,

    /// Write one file per audience (or, with `--attach-to`, per input file) into this folder.
    #[arg(long)]
    pub output_dir: Option<PathBuf>,

    /// The rebuild path: read the ExternalAudience manifests in this file or folder (`*.yaml`,
    /// `*.yml`) and print them with `spec.audienceId` set to the audience of the same name in the
    /// sandbox, where exactly one has it. Objects that already name one are left as they are.
    #[arg(long)]
    pub attach_to: Option<PathBuf>,

    /// Base URL of AEP; the credentials' `platformUrl` overrides it.
    #[arg(long, env = "AEP_PLATFORM_URL", default_value = crate::aep::client::DEFAULT_PLATFORM_URL)]
    pub aep_platform_url: Url,

    /// Base URL of Adobe IMS; the credentials' `imsUrl` overrides it.
    #[arg(long, env = "AEP_IMS_URL", default_value = crate::aep::client::DEFAULT_IMS_URL)]
    pub aep_ims_url: Url,

    /// Further endpoints the credentials may choose (as for `controller run`).
    #[arg(long = "allowed-endpoint", env = "ALLOWED_ENDPOINTS", value_delimiter = ',')]
    pub allowed_endpoints: Vec<Url>,

    /// PEM file of the CA(s) to trust for AEP and IMS instead of the system's trust roots.
    #[arg(long, env = "AEP_CA_FILE")]
    pub aep_ca_file: Option<PathBuf>,

    /// Client-side limit of AEP requests per second.
    #[arg(long, default_value_t = 10)]
    pub aep_requests_per_second: u32,
}

/// Documents of one input file, each with what `--attach-to` did to it.
type AttachedFile = (PathBuf, Vec<(Value, Option<String>)>);

/// What AEP returned for one audience.
#[derive(Clone, Debug)]
pub struct Found {
    pub audience: UpsAudience,
    /// Its latest run, if any.
    pub latest_run: Option<Run>,
}

/// Runs the command.
pub async fn run(cfg: ImportConfig) -> anyhow::Result<()> {
    crate::aep::install_crypto_provider();
    let ca_pem = match &cfg.aep_ca_file {
        Some(path) => Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?),
        None => None,
    };
    let client = AepClient::new(ClientConfig {
        platform_url: cfg.aep_platform_url.clone(),
        ims_url: cfg.aep_ims_url.clone(),
        requests_per_second: cfg.aep_requests_per_second,
        allowed_endpoints: cfg.allowed_endpoints.clone(),
        ca_pem,
        ..ClientConfig::default()
    })?;
    let creds = credentials(&cfg, client.policy()).await?;
    let session = client.session(&creds, &cfg.sandbox);
    let listed = session
        .list_audiences(cfg.name_contains.as_deref())
        .await
        .context("listing the sandbox's audiences")?;
    let audiences: Vec<UpsAudience> = listed
        .into_iter()
        .filter(|a| {
            a.origin_name
                .as_deref()
                .is_some_and(|o| o.eq_ignore_ascii_case(&cfg.origin))
                && !a
                    .lifecycle_state
                    .as_deref()
                    .is_some_and(|s| s.eq_ignore_ascii_case("deleted"))
        })
        .collect();
    let secret_name = cfg
        .credentials_secret_name
        .clone()
        .or_else(|| cfg.secret.clone())
        .unwrap_or_else(|| "aep-credentials".to_owned());
    if let Some(path) = &cfg.attach_to {
        let inputs = read_manifests(path)?;
        let mut outputs = Vec::new();
        for (file, docs) in inputs {
            let mut out = Vec::new();
            for doc in docs {
                let (doc, note) = attach(doc, &audiences, &cfg.sandbox);
                if let Some(note) = &note {
                    eprintln!("{}: {note}", file.display());
                }
                out.push((doc, note));
            }
            outputs.push((file, out));
        }
        return write_attached(&cfg, path, outputs);
    }
    let mut found = Vec::new();
    for audience in audiences {
        let runs = session
            .list_runs(&audience.id)
            .await
            .with_context(|| format!("listing the runs of audience {}", audience.id))?;
        let latest_run = runs.into_iter().max_by_key(|r| r.created_at.unwrap_or_default());
        found.push(Found { audience, latest_run });
    }
    found.sort_by(|a, b| (&a.audience.name, &a.audience.id).cmp(&(&b.audience.name, &b.audience.id)));
    let settings = Settings {
        namespace: cfg.namespace.clone(),
        sandbox: cfg.sandbox.clone(),
        org_id: creds.org_id.clone(),
        secret_name,
        policy: cfg.management_policy,
        deletion: cfg.deletion_policy,
    };
    let manifests = manifests(&found, &settings);
    eprintln!(
        "controller import: {} audience(s) of sandbox {:?} written",
        manifests.len(),
        cfg.sandbox
    );
    write_manifests(&cfg, &manifests)
}

/// The credentials: from the Secret (with the caller's kubeconfig) or the env file; validated like
/// a Secret the controller reads.
async fn credentials(cfg: &ImportConfig, policy: &EndpointPolicy) -> anyhow::Result<Credentials> {
    let data: BTreeMap<String, ByteString> = match (&cfg.secret, &cfg.env_file) {
        (Some(name), _) => {
            let kube_config = match &cfg.kubeconfig {
                Some(path) => {
                    let kc = kube::config::Kubeconfig::read_from(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await?
                }
                None => kube::Config::infer().await?,
            };
            let client = kube::Client::try_from(kube_config)?;
            let secret = kube::Api::<Secret>::namespaced(client, &cfg.namespace)
                .get(name)
                .await
                .with_context(|| format!("reading Secret {}/{name}", cfg.namespace))?;
            secret.data.unwrap_or_default()
        }
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            env_file(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        (None, None) => bail!("give --secret or --env-file"),
    };
    from_secret_data(&data, policy).map_err(|problem| anyhow::anyhow!("the credentials are invalid: {problem}"))
}

/// Parses KEY=VALUE lines (comments with `#`, optional `export `, optional quotes) into the
/// Secret's keys. Unknown keys are refused, naming the line.
pub fn env_file(text: &str) -> Result<BTreeMap<String, ByteString>, String> {
    const MAX: usize = 64 * 1024;
    if text.len() > MAX {
        return Err(format!("longer than {MAX} bytes"));
    }
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {}: expected KEY=VALUE", n + 1));
        };
        let key = match key.trim() {
            "clientId" | "CLIENT_ID" | "AEP_CLIENT_ID" => "clientId",
            "clientSecret" | "CLIENT_SECRET" | "AEP_CLIENT_SECRET" => "clientSecret",
            "orgId" | "ORG_ID" | "AEP_ORG_ID" | "IMS_ORG_ID" => "orgId",
            "scopes" | "SCOPES" | "AEP_SCOPES" => "scopes",
            "imsUrl" | "IMS_URL" | "AEP_IMS_URL" => "imsUrl",
            "platformUrl" | "PLATFORM_URL" | "AEP_PLATFORM_URL" => "platformUrl",
            other => {
                return Err(format!(
                    "line {}: unknown key {other:?} (clientId, clientSecret, orgId, scopes, imsUrl, platformUrl)",
                    n + 1
                ));
            }
        };
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        out.insert(key.to_owned(), ByteString(value.as_bytes().to_vec()));
    }
    Ok(out)
}

/// What the printed objects say besides what AEP returned.
#[derive(Clone, Debug)]
pub struct Settings {
    pub namespace: String,
    pub sandbox: String,
    pub org_id: String,
    pub secret_name: String,
    pub policy: PolicyArg,
    pub deletion: DeletionArg,
}

/// A DNS-1123 name for an audience named `name`, unique among `taken` (the audience id breaks a
/// tie).
pub fn object_name(name: &str, id: &str, taken: &mut BTreeSet<String>) -> String {
    let mut out = String::new();
    for c in name.to_lowercase().chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let mut base: String = out.trim_matches('-').chars().take(50).collect();
    base = base.trim_end_matches('-').to_owned();
    if base.is_empty() {
        base = "audience".to_owned();
    }
    let mut candidate = base.clone();
    if taken.contains(&candidate) {
        let suffix: String = id
            .to_lowercase()
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(8)
            .collect();
        candidate = format!("{base}-{suffix}");
        let mut n = 2;
        while taken.contains(&candidate) {
            candidate = format!("{base}-{suffix}-{n}");
            n += 1;
        }
    }
    taken.insert(candidate.clone());
    candidate
}

/// One printed manifest: a file stem and its text (comment lines, then the YAML).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub name: String,
    pub text: String,
}

/// The manifests for the audiences found.
pub fn manifests(found: &[Found], s: &Settings) -> Vec<Manifest> {
    let mut taken = BTreeSet::new();
    found
        .iter()
        .map(|f| {
            let a = &f.audience;
            let name = object_name(&a.name, &a.id, &mut taken);
            let mut spec = serde_json::Map::new();
            spec.insert(
                "managementPolicy".into(),
                json!(match s.policy {
                    PolicyArg::Observe => "Observe",
                    PolicyArg::Manage => "Manage",
                }),
            );
            spec.insert("audienceId".into(), json!(a.id));
            spec.insert("credentialsSecretRef".into(), json!({"name": s.secret_name}));
            spec.insert("sandbox".into(), json!(s.sandbox));
            spec.insert("name".into(), json!(a.name));
            if let Some(d) = a.description.as_deref().filter(|d| !d.is_empty()) {
                spec.insert("description".into(), json!(d));
            }
            if !a.labels.is_empty() {
                spec.insert("labels".into(), json!(a.labels));
            }
            let mut missing = vec!["spec.fields", "spec.sourceSpec", "spec.ttlInDays"];
            match &f.latest_run {
                Some(run) => {
                    let mut ingestion = serde_json::Map::new();
                    ingestion.insert(
                        "dataFilterStartTime".into(),
                        json!(run.data_filter_start_time.unwrap_or(0)),
                    );
                    if let Some(end) = run.data_filter_end_time {
                        ingestion.insert("dataFilterEndTime".into(), json!(end));
                    }
                    if let Some(diff) = run.differential_ingestion {
                        ingestion.insert("differentialIngestion".into(), json!(diff));
                    }
                    spec.insert("ingestion".into(), Value::Object(ingestion));
                }
                None => missing.push("spec.ingestion (the audience has no runs)"),
            }
            spec.insert(
                "deletionPolicy".into(),
                json!(match s.deletion {
                    DeletionArg::Orphan => "Orphan",
                    DeletionArg::Delete => "Delete",
                }),
            );
            let doc = json!({
                "apiVersion": "aep.audience-operator.dev/v1alpha1",
                "kind": "ExternalAudience",
                "metadata": {"name": name, "namespace": s.namespace},
                "spec": Value::Object(spec),
            });
            let yaml = serde_yaml_ng::to_string(&doc).unwrap_or_default();
            let text = format!(
                "# Imported by `controller import` from AEP: audience {} ({:?}) in sandbox {:?} of org {}.\n\
                 # AEP does not return these, so they are not set: {}.\n\
                 # An object with spec.audienceId needs none of them; set them only to know them (spec.ttlInDays\n\
                 # is sent to AEP by a managed object).\n{yaml}",
                a.id,
                a.name,
                s.sandbox,
                s.org_id,
                missing.join(", "),
            );
            Manifest { name, text }
        })
        .collect()
}

/// Sets `spec.audienceId` of an ExternalAudience manifest to the one audience of its name, if
/// exactly one has it; returns the document and what was done (for the report and a comment).
pub fn attach(mut doc: Value, audiences: &[UpsAudience], sandbox: &str) -> (Value, Option<String>) {
    if doc.get("kind").and_then(Value::as_str) != Some("ExternalAudience") {
        return (doc, None);
    }
    let object = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let Some(spec) = doc.get_mut("spec").and_then(Value::as_object_mut) else {
        return (doc, Some(format!("{object}: no spec; left as it is")));
    };
    if spec.contains_key("audienceId") {
        return (
            doc,
            Some(format!("{object}: already names spec.audienceId; left as it is")),
        );
    }
    if spec.get("sandbox").and_then(Value::as_str) != Some(sandbox) {
        return (
            doc,
            Some(format!("{object}: not in sandbox {sandbox:?}; left as it is")),
        );
    }
    let name = spec
        .get("name")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| object.clone());
    let matches: Vec<&UpsAudience> = audiences.iter().filter(|a| a.name == name).collect();
    match matches.as_slice() {
        [one] => {
            spec.insert("audienceId".into(), json!(one.id));
            let note = format!(
                "{object}: spec.audienceId set to {} (the one audience named {name:?})",
                one.id
            );
            (doc, Some(note))
        }
        [] => (
            doc,
            Some(format!(
                "{object}: no audience named {name:?} in the sandbox; left as it is"
            )),
        ),
        many => {
            let ids: Vec<&str> = many.iter().map(|a| a.id.as_str()).collect();
            (
                doc,
                Some(format!(
                    "{object}: {} audiences are named {name:?} ({}); left as it is: set spec.audienceId by hand",
                    many.len(),
                    ids.join(", ")
                )),
            )
        }
    }
}

/// The YAML documents of a file, or of every `*.yaml`/`*.yml` file under a folder.
fn read_manifests(path: &Path) -> anyhow::Result<Vec<(PathBuf, Vec<Value>)>> {
    let mut files = Vec::new();
    if path.is_dir() {
        let mut stack = vec![path.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
                let p = entry?.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                    files.push(p);
                }
            }
        }
        files.sort();
    } else {
        files.push(path.to_path_buf());
    }
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        let mut docs = Vec::new();
        for de in serde_yaml_ng::Deserializer::from_str(&text) {
            let value: Value =
                serde::Deserialize::deserialize(de).with_context(|| format!("parsing {}", file.display()))?;
            if !value.is_null() {
                docs.push(value);
            }
        }
        let rel = file
            .strip_prefix(path)
            .map(Path::to_path_buf)
            .unwrap_or_else(|_| file.file_name().map(PathBuf::from).unwrap_or_else(|| file.clone()));
        out.push((if rel.as_os_str().is_empty() { file.clone() } else { rel }, docs));
    }
    Ok(out)
}

fn yaml_docs(docs: &[(Value, Option<String>)]) -> String {
    docs.iter()
        .map(|(doc, note)| {
            let yaml = serde_yaml_ng::to_string(doc).unwrap_or_default();
            match note {
                Some(n) => format!("# controller import --attach-to: {n}\n{yaml}"),
                None => yaml,
            }
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

fn write_attached(cfg: &ImportConfig, input: &Path, outputs: Vec<AttachedFile>) -> anyhow::Result<()> {
    match (&cfg.output_dir, &cfg.output) {
        (Some(dir), _) => {
            for (rel, docs) in &outputs {
                let rel = if input.is_dir() {
                    rel.clone()
                } else {
                    PathBuf::from(rel.file_name().unwrap_or_default())
                };
                let target = dir.join(rel);
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
                }
                std::fs::write(&target, yaml_docs(docs)).with_context(|| format!("writing {}", target.display()))?;
            }
            Ok(())
        }
        (None, out) => {
            let text = outputs
                .iter()
                .map(|(_, docs)| yaml_docs(docs))
                .collect::<Vec<_>>()
                .join("---\n");
            emit(out.as_deref(), &text)
        }
    }
}

fn write_manifests(cfg: &ImportConfig, manifests: &[Manifest]) -> anyhow::Result<()> {
    match (&cfg.output_dir, &cfg.output) {
        (Some(dir), _) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            for m in manifests {
                let target = dir.join(format!("{}.yaml", m.name));
                std::fs::write(&target, &m.text).with_context(|| format!("writing {}", target.display()))?;
            }
            Ok(())
        }
        (None, out) => {
            let text = manifests
                .iter()
                .map(|m| m.text.clone())
                .collect::<Vec<_>>()
                .join("---\n");
            emit(out.as_deref(), &text)
        }
    }
}

fn emit(path: Option<&Path>, text: &str) -> anyhow::Result<()> {
    match path {
        Some(p) => std::fs::write(p, text).with_context(|| format!("writing {}", p.display())),
        None => {
            use std::io::Write;
            std::io::stdout().write_all(text.as_bytes())?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ExternalAudience;

    fn audience(id: &str, name: &str) -> UpsAudience {
        UpsAudience {
            id: id.into(),
            audience_id: Some(id.into()),
            name: name.into(),
            description: Some("from the CRM".into()),
            labels: vec!["core/C1".into()],
            origin_name: Some("CUSTOM_UPLOAD".into()),
            ..Default::default()
        }
    }

    fn settings(policy: PolicyArg) -> Settings {
        Settings {
            namespace: "marketing".into(),
            sandbox: "prod".into(),
            org_id: "ORG@AdobeOrg".into(),
            secret_name: "aep-credentials".into(),
            policy,
            deletion: DeletionArg::Orphan,
        }
    }

    #[test]
    fn names_are_dns_labels_and_unique() {
        let mut taken = BTreeSet::new();
        assert_eq!(object_name("Churn risk — Q3!", "a1", &mut taken), "churn-risk-q3");
        assert_eq!(object_name("churn risk q3", "B2-c3", &mut taken), "churn-risk-q3-b2c3");
        assert_eq!(object_name("***", "x", &mut taken), "audience");
        assert!(object_name(&"x".repeat(300), "y", &mut taken).len() <= 63);
    }

    #[test]
    fn printed_manifests_parse_as_objects_with_every_returned_field_and_name_the_rest() {
        let run = Run {
            run_id: "r".into(),
            audience_id: "a1".into(),
            audience_name: None,
            status: Default::default(),
            details: Vec::new(),
            differential_ingestion: Some(false),
            data_filter_start_time: Some(764245635),
            data_filter_end_time: None,
            created_at: Some(1),
            created_by: None,
            message: None,
        };
        let found = vec![
            Found {
                audience: audience("a1", "Loyalty members"),
                latest_run: Some(run),
            },
            Found {
                audience: audience("a2", "Never ingested"),
                latest_run: None,
            },
        ];
        for policy in [PolicyArg::Observe, PolicyArg::Manage] {
            let out = manifests(&found, &settings(policy));
            assert_eq!(out.len(), 2);
            let obj: ExternalAudience = serde_yaml_ng::from_str(&out[0].text).expect("an ExternalAudience");
            assert_eq!(obj.spec.audience_id.as_deref(), Some("a1"));
            assert_eq!(obj.spec.name.as_deref(), Some("Loyalty members"));
            assert_eq!(obj.spec.description.as_deref(), Some("from the CRM"));
            assert_eq!(obj.spec.labels, vec!["core/C1".to_owned()]);
            assert_eq!(obj.spec.observes(), policy == PolicyArg::Observe);
            let ingestion = obj.spec.ingestion.expect("from the latest run");
            assert_eq!(ingestion.data_filter_start_time, 764245635);
            assert!(!ingestion.differential_ingestion);
            assert!(obj.spec.ttl_in_days.is_none() && obj.spec.source_spec.is_none() && obj.spec.fields.is_empty());
            assert!(out[0].text.contains(
                "AEP does not return these, so they are not set: spec.fields, spec.sourceSpec, spec.ttlInDays."
            ));
            assert!(out[1].text.contains("spec.ingestion (the audience has no runs)"));
        }
    }

    #[test]
    fn attach_sets_the_audience_id_only_for_exactly_one_match() {
        let audiences = vec![
            audience("a1", "Loyalty members"),
            audience("d1", "Twice"),
            audience("d2", "Twice"),
        ];
        let doc = |name: &str| {
            json!({"apiVersion": "aep.audience-operator.dev/v1alpha1", "kind": "ExternalAudience",
                   "metadata": {"name": "x"}, "spec": {"sandbox": "prod", "name": name}})
        };
        let (one, note) = attach(doc("Loyalty members"), &audiences, "prod");
        assert_eq!(one.pointer("/spec/audienceId"), Some(&json!("a1")));
        assert!(note.expect("note").contains("set to a1"));
        let (twice, note) = attach(doc("Twice"), &audiences, "prod");
        assert!(twice.pointer("/spec/audienceId").is_none());
        assert!(note.expect("note").contains("2 audiences"));
        let (none, _) = attach(doc("Nobody"), &audiences, "prod");
        assert!(none.pointer("/spec/audienceId").is_none());
        let (other, _) = attach(doc("Loyalty members"), &audiences, "dev");
        assert!(other.pointer("/spec/audienceId").is_none(), "another sandbox");
        let cm = json!({"kind": "ConfigMap", "metadata": {"name": "c"}});
        assert_eq!(attach(cm.clone(), &audiences, "prod"), (cm, None));
    }

    #[test]
    fn env_files_take_the_secret_keys_and_refuse_others() {
        let data =
            env_file("# creds\nexport CLIENT_ID=abc\nclientSecret='s3'\nAEP_ORG_ID=\"O@AdobeOrg\"\n").expect("parsed");
        assert_eq!(data["clientId"].0, b"abc");
        assert_eq!(data["clientSecret"].0, b"s3");
        assert_eq!(data["orgId"].0, b"O@AdobeOrg");
        let err = env_file("TOKEN=x").expect_err("unknown");
        assert!(err.contains("line 1") && err.contains("TOKEN"), "{err}");
        assert!(
            !env_file("clientSecret=s3cr3t\nnope")
                .expect_err("bad")
                .contains("s3cr3t")
        );
    }
}
