//! Request validation of the emulator (reference §3 and §7.2.5, §7.2.10, §7.2.11, and the flow
//! selectors of "aep-activation-api" §1.5): turns a raw JSON body into a canonical typed request,
//! or into a `detail` message that starts with the path of the offending field
//! (`fields[2].type: must be one of …`, `schedule.frequency: …`).
//!
//! Pure functions over `serde_json::Value`; no state, no HTTP.

use serde_json::{Map, Value};

use aep::flows::{
    DestinationKind, EXPORT_MODE_DAILY_FULL, EXPORT_MODE_FIRST_FULL_THEN_INCREMENTAL, FREQUENCIES_FULL,
    FREQUENCIES_INCREMENTAL, SELECTOR_TYPE_PLATFORM_SEGMENT, SegmentSelector, TRIGGER_AFTER_SEGMENT_EVAL,
    TRIGGER_SCHEDULED,
};
use aep::types::{
    AUDIENCE_TYPE_PEOPLE, CLOUD_TYPES, CLOUD_TYPES_NEEDING_CONNECTION, CreateAudienceRequest, Encryption, Field,
    FieldLabels, FieldType, MAX_FIELDS, ORIGIN_CUSTOM_UPLOAD, PatchAudienceRequest, SOURCE_TYPE_CLOUD_STORAGE,
    SourceParams, SourcePathType, SourceSpec, StartRunRequest, TTL_DEFAULT_DAYS, TTL_MAX_DAYS, TTL_MIN_DAYS,
    integer_from_value, one_of,
};

type Detail = String;

fn opt_string(obj: &Map<String, Value>, key: &str, path: &str) -> Result<Option<String>, Detail> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("{path}: must be a string")),
    }
}

fn required_string(obj: &Map<String, Value>, key: &str, path: &str) -> Result<String, Detail> {
    match opt_string(obj, key, path)? {
        Some(s) if !s.trim().is_empty() => Ok(s),
        _ => Err(format!("{path}: must be a non-empty string")),
    }
}

/// `<family>/<label>`, e.g. `core/C1`, `custom/deep`.
fn is_label(s: &str) -> bool {
    let ok = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    };
    matches!(s.split_once('/'), Some((family, label)) if ok(family) && ok(label))
}

fn labels(value: Option<&Value>, path: &str) -> Result<Vec<String>, Detail> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item.as_str() {
                Some(s) if is_label(s) => Ok(s.to_owned()),
                _ => Err(format!(
                    "{path}[{i}]: must be a label of the form <family>/<label>, e.g. core/C1"
                )),
            })
            .collect(),
        Some(_) => Err(format!("{path}: must be an array of labels")),
    }
}

fn ttl(value: Option<&Value>) -> Result<Option<u32>, Detail> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => integer_from_value(v)
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| (TTL_MIN_DAYS..=TTL_MAX_DAYS).contains(n))
            .map(Some)
            .ok_or_else(|| format!("ttlInDays: must be an integer between {TTL_MIN_DAYS} and {TTL_MAX_DAYS}")),
    }
}

/// Identity namespaces every org knows (AEP's standard namespaces).
pub const STANDARD_NAMESPACES: &[&str] = &[
    "Email",
    "ECID",
    "CRMID",
    "Phone",
    "GAID",
    "IDFA",
    "AAID",
    "Email_LC_SHA256",
    "Phone_SHA256",
];

/// Refuses identity namespaces the org does not know (compared case-insensitively), naming the
/// field: `fields[i].identityNs: unknown identity namespace "x"; known: …`. An empty `known`
/// list accepts any namespace.
pub fn known_identity_namespaces(req: &CreateAudienceRequest, known: &[String]) -> Result<(), Detail> {
    if known.is_empty() {
        return Ok(());
    }
    for (i, f) in req.fields.iter().enumerate() {
        if let Some(ns) = &f.identity_ns
            && !known.iter().any(|k| k.eq_ignore_ascii_case(ns))
        {
            return Err(format!(
                "fields[{i}].identityNs: unknown identity namespace {ns:?}; this org knows {}",
                known.join(", ")
            ));
        }
    }
    Ok(())
}

/// Canonical spelling of well-known identity namespaces; others are echoed as sent.
pub fn canonical_namespace(ns: &str) -> String {
    STANDARD_NAMESPACES
        .iter()
        .find(|k| k.eq_ignore_ascii_case(ns))
        .map(|k| (*k).to_owned())
        .unwrap_or_else(|| ns.to_owned())
}

fn field(value: &Value, i: usize) -> Result<Field, Detail> {
    let path = format!("fields[{i}]");
    let obj = value.as_object().ok_or_else(|| format!("{path}: must be an object"))?;
    let name = required_string(obj, "name", &format!("{path}.name"))?;
    let type_path = format!("{path}.type");
    let r#type = opt_string(obj, "type", &type_path)?
        .and_then(|t| t.parse::<FieldType>().ok())
        .ok_or_else(|| format!("{type_path}: must be one of {}", one_of(FieldType::ALL)))?;
    let identity_ns = match obj.get("identityNs") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.trim().is_empty() => Some(canonical_namespace(s.trim())),
        Some(_) => {
            return Err(format!(
                "{path}.identityNs: must be a non-empty identity namespace code"
            ));
        }
    };
    Ok(Field {
        name,
        r#type,
        identity_ns,
        labels: labels(obj.get("labels"), &format!("{path}.labels"))?,
    })
}

fn source_spec(value: Option<&Value>) -> Result<SourceSpec, Detail> {
    let obj = value
        .and_then(Value::as_object)
        .ok_or_else(|| "sourceSpec: must be an object with params".to_owned())?;
    let (params, prefix) = match obj.get("params") {
        Some(Value::Object(p)) => (p, "sourceSpec.params"),
        Some(_) => return Err("sourceSpec.params: must be an object".to_owned()),
        None => (obj, "sourceSpec"),
    };
    let path = required_string(params, "path", &format!("{prefix}.path"))?;
    if path.chars().any(char::is_whitespace) {
        return Err(format!("{prefix}.path: must not contain spaces or other whitespace"));
    }
    let type_path = format!("{prefix}.type");
    let r#type = opt_string(params, "type", &type_path)?
        .and_then(|t| t.parse::<SourcePathType>().ok())
        .ok_or_else(|| format!("{type_path}: must be one of {}", one_of(SourcePathType::ALL)))?;
    let source_type = match opt_string(params, "sourceType", &format!("{prefix}.sourceType"))? {
        None => None,
        Some(s) if s.eq_ignore_ascii_case(SOURCE_TYPE_CLOUD_STORAGE) => Some(SOURCE_TYPE_CLOUD_STORAGE.to_owned()),
        Some(_) => {
            return Err(format!("{prefix}.sourceType: must be {SOURCE_TYPE_CLOUD_STORAGE}"));
        }
    };
    let cloud_type = match opt_string(params, "cloudType", &format!("{prefix}.cloudType"))? {
        None => None,
        Some(c) => Some(
            CLOUD_TYPES
                .iter()
                .find(|k| k.eq_ignore_ascii_case(&c))
                .map(|k| (*k).to_owned())
                .ok_or_else(|| format!("{prefix}.cloudType: must be one of {}", CLOUD_TYPES.join(", ")))?,
        ),
    };
    let base_connection_id =
        opt_string(params, "baseConnectionId", &format!("{prefix}.baseConnectionId"))?.filter(|s| !s.trim().is_empty());
    if let Some(c) = &cloud_type
        && CLOUD_TYPES_NEEDING_CONNECTION.contains(&c.as_str())
        && base_connection_id.is_none()
    {
        return Err(format!(
            "{prefix}.baseConnectionId: required when cloudType is {}",
            CLOUD_TYPES_NEEDING_CONNECTION.join(", ")
        ));
    }
    let encryption = match params.get("encryption") {
        None | Some(Value::Null) => None,
        Some(Value::Object(e)) => {
            let epath = format!("{prefix}.encryption");
            Some(Encryption {
                public_key_id: required_string(e, "publicKeyId", &format!("{epath}.publicKeyId"))?,
                sign_verification_key_id: match opt_string(
                    e,
                    "signVerificationKeyId",
                    &format!("{epath}.signVerificationKeyId"),
                )? {
                    Some(s) => Some(s),
                    None => opt_string(e, "signVerificationId", &format!("{epath}.signVerificationId"))?,
                },
            })
        }
        Some(_) => return Err(format!("{prefix}.encryption: must be an object")),
    };
    Ok(SourceSpec {
        params: SourceParams {
            path,
            r#type,
            source_type,
            cloud_type,
            base_connection_id,
            encryption,
        },
    })
}

/// Validates a create body (reference §3 rules 1–11) into its canonical form: enums in canonical
/// case, `ttlInDays` an integer (default 30), well-known namespaces canonicalised.
pub fn create_request(body: &Value) -> Result<CreateAudienceRequest, Detail> {
    let obj = body
        .as_object()
        .ok_or_else(|| "request body: must be a JSON object".to_owned())?;
    let name = required_string(obj, "name", "name")?;
    let description = opt_string(obj, "description", "description")?;
    let fields = match obj.get("fields") {
        Some(Value::Array(items)) if (1..=MAX_FIELDS).contains(&items.len()) => items
            .iter()
            .enumerate()
            .map(|(i, f)| field(f, i))
            .collect::<Result<Vec<_>, _>>()?,
        _ => {
            return Err(format!("fields: must be an array of 1 to {MAX_FIELDS} field objects"));
        }
    };
    for (i, f) in fields.iter().enumerate() {
        if fields[..i].iter().any(|g| g.name == f.name) {
            return Err(format!("fields[{i}].name: duplicate field name {:?}", f.name));
        }
    }
    if !fields.iter().any(|f| f.identity_ns.is_some()) {
        return Err("fields: at least one field must carry identityNs (the identity column)".to_owned());
    }
    let labels = labels(obj.get("labels"), "labels")?;
    let source_spec = source_spec(obj.get("sourceSpec"))?;
    let ttl_in_days = Some(ttl(obj.get("ttlInDays"))?.unwrap_or(TTL_DEFAULT_DAYS));
    let audience_type = match opt_string(obj, "audienceType", "audienceType")? {
        None => None,
        Some(t) if t.eq_ignore_ascii_case(AUDIENCE_TYPE_PEOPLE) => Some(AUDIENCE_TYPE_PEOPLE.to_owned()),
        Some(_) => return Err(format!("audienceType: must be {AUDIENCE_TYPE_PEOPLE}")),
    };
    let origin_name = match opt_string(obj, "originName", "originName")? {
        Some(o) if o.eq_ignore_ascii_case(ORIGIN_CUSTOM_UPLOAD) => ORIGIN_CUSTOM_UPLOAD.to_owned(),
        _ => return Err(format!("originName: required and must be {ORIGIN_CUSTOM_UPLOAD}")),
    };
    let namespace = match opt_string(obj, "namespace", "namespace")? {
        Some(n) if n.trim().is_empty() => {
            return Err("namespace: must be a non-empty string".to_owned());
        }
        other => other,
    };
    let tags = match obj.get("tags") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, t)| match t.as_str() {
                Some(s) if !s.is_empty() && !s.chars().any(char::is_whitespace) => Ok(s.to_owned()),
                _ => Err(format!("tags[{i}]: must be a tag ID")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("tags: must be an array of tag IDs".to_owned()),
    };
    let custom_audience_id = match opt_string(obj, "customAudienceId", "customAudienceId")? {
        Some(c) if c.trim().is_empty() => {
            return Err("customAudienceId: must be a non-empty string".to_owned());
        }
        other => other,
    };
    Ok(CreateAudienceRequest {
        name,
        description,
        fields,
        source_spec,
        ttl_in_days,
        labels,
        audience_type,
        origin_name,
        namespace,
        tags,
        custom_audience_id,
    })
}

/// Validates a PATCH body against the stored definition (reference §7.2.10).
pub fn patch_request(body: &Value, current: &CreateAudienceRequest) -> Result<PatchAudienceRequest, Detail> {
    let obj = body
        .as_object()
        .ok_or_else(|| "request body: must be a JSON object".to_owned())?;
    if obj.is_empty() {
        return Err("request body: must name at least one of description, labels, fields, ttlInDays".to_owned());
    }
    let current_value = serde_json::to_value(current).unwrap_or(Value::Null);
    let mut patch = PatchAudienceRequest::default();
    for (key, value) in obj {
        match key.as_str() {
            "description" => {
                patch.description = Some(match value {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    _ => return Err("description: must be a string".to_owned()),
                })
            }
            "labels" => patch.labels = Some(labels(Some(value), "labels")?),
            "ttlInDays" => {
                patch.ttl_in_days = Some(ttl(Some(value))?.ok_or_else(|| {
                    format!("ttlInDays: must be an integer between {TTL_MIN_DAYS} and {TTL_MAX_DAYS}")
                })?)
            }
            "fields" => {
                let items = value
                    .as_array()
                    .ok_or_else(|| "fields: must be an array of {name, labels}".to_owned())?;
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let f = item
                        .as_object()
                        .ok_or_else(|| format!("fields[{i}]: must be an object"))?;
                    let name = required_string(f, "name", &format!("fields[{i}].name"))?;
                    let Some(stored) = current.fields.iter().find(|s| s.name == name) else {
                        return Err(format!("fields[{i}].name: the audience has no field {name:?}"));
                    };
                    for (k, v) in f {
                        let unchanged = match k.as_str() {
                            "name" | "labels" => true,
                            "type" => v
                                .as_str()
                                .and_then(|t| t.parse::<FieldType>().ok())
                                .is_some_and(|t| t == stored.r#type),
                            "identityNs" => v.as_str().map(canonical_namespace) == stored.identity_ns,
                            _ => false,
                        };
                        if !unchanged {
                            return Err(format!("fields[{i}].{k}: cannot be changed; only labels are updatable"));
                        }
                    }
                    out.push(FieldLabels {
                        name,
                        labels: labels(f.get("labels"), &format!("fields[{i}].labels"))?,
                    });
                }
                patch.fields = Some(out);
            }
            other => {
                let same = current_value.get(other).is_some_and(|stored| {
                    stored == value
                        || (other == "sourceSpec"
                            && source_spec(Some(value)).ok().as_ref() == Some(&current.source_spec))
                });
                if !same {
                    return Err(format!(
                        "{other}: cannot be changed; updatable properties are description, labels, fields[].labels, ttlInDays"
                    ));
                }
            }
        }
    }
    Ok(patch)
}

/// Validates a start-run body (reference §7.2.11).
pub fn start_run_request(body: &Value) -> Result<StartRunRequest, Detail> {
    let obj = match body {
        Value::Object(o) => o.clone(),
        Value::Null => Map::new(),
        _ => return Err("request body: must be a JSON object".to_owned()),
    };
    let start = obj
        .get("dataFilterStartTime")
        .and_then(integer_from_value)
        .filter(|n| *n >= 0)
        .ok_or_else(|| "dataFilterStartTime: required epoch timestamp (seconds)".to_owned())?;
    let end = match obj.get("dataFilterEndTime") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            integer_from_value(v)
                .ok_or_else(|| "dataFilterEndTime: must be an epoch timestamp (seconds)".to_owned())?,
        ),
    };
    if let Some(end) = end
        && end < start
    {
        return Err("dataFilterEndTime: must not be before dataFilterStartTime".to_owned());
    }
    let differential = match obj.get("differentialIngestion") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err("differentialIngestion: must be a boolean".to_owned()),
    };
    Ok(StartRunRequest {
        data_filter_start_time: start,
        data_filter_end_time: end,
        differential_ingestion: differential,
    })
}

// ---------------------------------------------------------------------------------------------
// Flow selectors (reference "aep-activation-api" §1.5)
// ---------------------------------------------------------------------------------------------

/// The hour of a `startTime` of the form `HH:00` (UTC, minutes must be `00`).
pub(crate) fn start_hour(s: &str) -> Option<u32> {
    let (hour, minutes) = s.split_once(':')?;
    if hour.len() != 2 || minutes != "00" || !hour.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    hour.parse().ok().filter(|h| *h < 24)
}

/// The UTC day (days since the epoch) of a `YYYY-MM-DD` date.
pub(crate) fn date_day(s: &str) -> Option<i64> {
    let bytes = s.as_bytes();
    let shape = bytes.len() == 10
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes
            .iter()
            .enumerate()
            .all(|(i, b)| i == 4 || i == 7 || b.is_ascii_digit());
    if !shape {
        return None;
    }
    let date: jiff::civil::Date = s.parse().ok()?;
    let epoch = jiff::civil::date(1970, 1, 1);
    Some(i64::from(date.since(epoch).ok()?.get_days()))
}

fn one_of_list(values: &[&str]) -> String {
    match values {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// Validates the `value` of an `add` or `replace` of a flow's selectors, for a flow of `kind`,
/// into a selector with the canonical `type`. Messages start with the offending field:
/// `exportMode: …`, `schedule.frequency: …`. Batch (file-based) flows need `exportMode` and a
/// `schedule` whose `frequency` fits the mode, a `triggerType` with `DAILY_FULL_EXPORT`, a
/// `startTime` (`HH:00`) with `SCHEDULED`, and dates as `YYYY-MM-DD`; streaming flows refuse
/// export settings.
pub fn segment_selector(kind: DestinationKind, value: &Value) -> Result<SegmentSelector, Detail> {
    let obj = value
        .as_object()
        .ok_or_else(|| "value: must be a selector {\"type\":\"PLATFORM_SEGMENT\",\"value\":{\"id\":…}}".to_owned())?;
    match obj.get("type") {
        Some(Value::String(t)) if t.eq_ignore_ascii_case(SELECTOR_TYPE_PLATFORM_SEGMENT) => {}
        _ => return Err(format!("type: must be {SELECTOR_TYPE_PLATFORM_SEGMENT}")),
    }
    let inner = match obj.get("value") {
        Some(Value::Object(inner)) => inner,
        _ => return Err("value: must be an object naming the audience in id".to_owned()),
    };
    required_string(inner, "id", "id")?;
    for key in ["name", "description", "systemSegmentId", "namespace", "exportMode"] {
        opt_string(inner, key, key)?;
    }
    for key in ["filenameTemplate", "fileNameTemplate"] {
        if let Some(t) = opt_string(inner, key, key)?
            && t.trim().is_empty()
        {
            return Err(format!("{key}: must be a non-empty template"));
        }
    }
    let mut selector: SegmentSelector =
        serde_json::from_value(value.clone()).map_err(|e| format!("value: not a valid selector ({e})"))?;
    selector.r#type = SELECTOR_TYPE_PLATFORM_SEGMENT.to_owned();
    let v = &selector.value;
    match kind {
        DestinationKind::Streaming => {
            let present = [
                ("exportMode", v.export_mode.is_some()),
                ("schedule", inner.get("schedule").is_some_and(|s| !s.is_null())),
                ("filenameTemplate", v.filename_template.is_some()),
            ];
            if let Some((field, _)) = present.iter().find(|(_, present)| *present) {
                return Err(format!(
                    "{field}: export settings (exportMode, schedule, filenameTemplate) apply to batch (file-based) \
                     destinations only; this dataflow streams"
                ));
            }
        }
        DestinationKind::Batch => {
            let modes = [EXPORT_MODE_DAILY_FULL, EXPORT_MODE_FIRST_FULL_THEN_INCREMENTAL];
            let mode = match v.export_mode.as_deref() {
                None => {
                    return Err(format!(
                        "exportMode: required for a batch (file-based) destination: {}",
                        one_of_list(&modes)
                    ));
                }
                Some(m) if modes.contains(&m) => m,
                Some(_) => return Err(format!("exportMode: must be {}", one_of_list(&modes))),
            };
            let schedule = match inner.get("schedule") {
                Some(Value::Object(_)) => v.schedule.clone().unwrap_or_default(),
                None | Some(Value::Null) => {
                    return Err("schedule: required for a batch (file-based) destination".to_owned());
                }
                Some(_) => return Err("schedule: must be an object".to_owned()),
            };
            let full = mode == EXPORT_MODE_DAILY_FULL;
            let allowed = if full {
                FREQUENCIES_FULL
            } else {
                FREQUENCIES_INCREMENTAL
            };
            match schedule.frequency.as_deref() {
                None => {
                    return Err(format!(
                        "schedule.frequency: required: {} with {mode}",
                        one_of_list(allowed)
                    ));
                }
                Some(f) if allowed.contains(&f) => {}
                Some(f) => {
                    return Err(format!(
                        "schedule.frequency: {f} is not allowed with {mode}; use {}",
                        one_of_list(allowed)
                    ));
                }
            }
            let triggers = [TRIGGER_AFTER_SEGMENT_EVAL, TRIGGER_SCHEDULED];
            match schedule.trigger_type.as_deref() {
                None if full => {
                    return Err(format!(
                        "schedule.triggerType: required with {EXPORT_MODE_DAILY_FULL}: {}",
                        one_of_list(&triggers)
                    ));
                }
                Some(t) if !triggers.contains(&t) => {
                    return Err(format!("schedule.triggerType: must be {}", one_of_list(&triggers)));
                }
                _ => {}
            }
            match schedule.start_time.as_deref() {
                Some(t) if start_hour(t).is_none() => {
                    return Err("schedule.startTime: must be HH:00 (UTC; minutes must be 00)".to_owned());
                }
                None if schedule.trigger_type.as_deref() == Some(TRIGGER_SCHEDULED) => {
                    return Err(format!(
                        "schedule.startTime: required with triggerType {TRIGGER_SCHEDULED} (HH:00, UTC)"
                    ));
                }
                _ => {}
            }
            let start = match schedule.start_date.as_deref() {
                Some(d) => Some(date_day(d).ok_or("schedule.startDate: must be a date YYYY-MM-DD")?),
                None => None,
            };
            let end = match schedule.end_date.as_deref() {
                Some(d) => Some(date_day(d).ok_or("schedule.endDate: must be a date YYYY-MM-DD")?),
                None => None,
            };
            if let (Some(start), Some(end)) = (start, end)
                && end < start
            {
                return Err("schedule.endDate: must not be before schedule.startDate".to_owned());
            }
        }
    }
    Ok(selector)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selector_export_settings_follow_the_documented_rules() {
        let batch = |value: Value| {
            segment_selector(
                DestinationKind::Batch,
                &json!({"type": "PLATFORM_SEGMENT", "value": value}),
            )
        };
        let ok = json!({"id": "a", "exportMode": "DAILY_FULL_EXPORT",
            "schedule": {"frequency": "ONCE", "triggerType": "SCHEDULED", "startTime": "13:00",
                "startDate": "2025-02-28", "endDate": "2025-03-01"}});
        assert_eq!(batch(ok).unwrap().value.id.as_deref(), Some("a"));
        let cases = [
            (json!({"id": "a"}), "exportMode:"),
            (json!({"id": "a", "exportMode": "WEEKLY"}), "exportMode:"),
            (json!({"id": "a", "exportMode": "DAILY_FULL_EXPORT"}), "schedule:"),
            (
                json!({"id": "a", "exportMode": "DAILY_FULL_EXPORT", "schedule": {"triggerType": "AFTER_SEGMENT_EVAL"}}),
                "schedule.frequency:",
            ),
            (
                json!({"id": "a", "exportMode": "DAILY_FULL_EXPORT", "schedule": {"frequency": "EVERY_3_HOURS", "triggerType": "AFTER_SEGMENT_EVAL"}}),
                "schedule.frequency:",
            ),
            (
                json!({"id": "a", "exportMode": "FIRST_FULL_THEN_INCREMENTAL", "schedule": {"frequency": "ONCE"}}),
                "schedule.frequency:",
            ),
            (
                json!({"id": "a", "exportMode": "DAILY_FULL_EXPORT", "schedule": {"frequency": "DAILY"}}),
                "schedule.triggerType:",
            ),
            (
                json!({"id": "a", "exportMode": "DAILY_FULL_EXPORT", "schedule": {"frequency": "DAILY", "triggerType": "CHAINED"}}),
                "schedule.triggerType:",
            ),
            (
                json!({"id": "a", "exportMode": "DAILY_FULL_EXPORT", "schedule": {"frequency": "DAILY", "triggerType": "SCHEDULED"}}),
                "schedule.startTime:",
            ),
            (
                json!({"id": "a", "exportMode": "DAILY_FULL_EXPORT", "schedule": {"frequency": "DAILY", "triggerType": "SCHEDULED", "startTime": "13:30"}}),
                "schedule.startTime:",
            ),
            (
                json!({"id": "a", "exportMode": "DAILY_FULL_EXPORT", "schedule": {"frequency": "DAILY", "triggerType": "AFTER_SEGMENT_EVAL", "startDate": "2025-02-30"}}),
                "schedule.startDate:",
            ),
            (
                json!({"id": "a", "exportMode": "DAILY_FULL_EXPORT", "schedule": {"frequency": "DAILY", "triggerType": "AFTER_SEGMENT_EVAL", "startDate": "2025-03-02", "endDate": "2025-03-01"}}),
                "schedule.endDate:",
            ),
            (
                json!({"id": "a", "exportMode": "DAILY_FULL_EXPORT", "schedule": {"frequency": "DAILY", "triggerType": "AFTER_SEGMENT_EVAL"}, "filenameTemplate": ""}),
                "filenameTemplate:",
            ),
            (json!({"name": "no id"}), "id:"),
        ];
        for (value, field) in cases {
            let err = batch(value.clone()).unwrap_err();
            assert!(err.starts_with(field), "{value}: {err}");
        }
        let incremental =
            json!({"id": "a", "exportMode": "FIRST_FULL_THEN_INCREMENTAL", "schedule": {"frequency": "EVERY_6_HOURS"}});
        assert!(
            batch(incremental).is_ok(),
            "triggerType is optional with FIRST_FULL_THEN_INCREMENTAL"
        );
        let streaming = |value: Value| {
            segment_selector(
                DestinationKind::Streaming,
                &json!({"type": "platform_segment", "value": value}),
            )
        };
        assert_eq!(
            streaming(json!({"id": "a", "name": "n"})).unwrap().r#type,
            "PLATFORM_SEGMENT"
        );
        assert!(
            streaming(json!({"id": "a", "exportMode": "DAILY_FULL_EXPORT"}))
                .unwrap_err()
                .starts_with("exportMode:")
        );
        assert!(
            streaming(json!({"id": "a", "schedule": {}}))
                .unwrap_err()
                .starts_with("schedule:")
        );
        assert!(
            segment_selector(
                DestinationKind::Streaming,
                &json!({"type": "JSON_PATH", "value": {"id": "a"}})
            )
            .unwrap_err()
            .starts_with("type:")
        );
        assert_eq!(
            (
                start_hour("00:00"),
                start_hour("23:00"),
                start_hour("24:00"),
                start_hour("7:00")
            ),
            (Some(0), Some(23), None, None)
        );
        assert_eq!(date_day("1970-01-02"), Some(1));
        assert_eq!(date_day("2025-1-01"), None);
    }

    fn seed() -> Value {
        json!({
            "name": "Churn", "description": "d",
            "fields": [
                {"name": "email", "type": "string", "identityNs": "email"},
                {"name": "score", "type": "number", "labels": ["core/C2"]}
            ],
            "sourceSpec": {"params": {"path": "a/b.csv", "type": "file",
                "sourceType": "Cloud Storage", "baseConnectionId": "c"}},
            "ttlInDays": "40", "labels": ["core/C1"], "audienceType": "people",
            "originName": "CUSTOM_UPLOAD", "profileIngestion": true
        })
    }

    #[test]
    fn seed_body_is_canonicalised() {
        let req = create_request(&seed()).unwrap();
        assert_eq!(req.ttl_in_days, Some(40));
        assert_eq!(req.fields[0].identity_ns.as_deref(), Some("Email"));
        let mut flat = seed();
        flat["sourceSpec"] = json!({"path": "a/b.csv", "type": "FILE"});
        flat["originName"] = json!("custom_upload");
        let req = create_request(&flat).unwrap();
        assert_eq!(req.source_spec.params.r#type, SourcePathType::File);
        assert_eq!(req.origin_name, "CUSTOM_UPLOAD");
    }

    #[test]
    fn patch_refuses_immutable_changes_but_accepts_echoes() {
        let current = create_request(&seed()).unwrap();
        assert!(patch_request(&json!({"name": "Churn", "ttlInDays": 60}), &current).is_ok());
        let err = patch_request(&json!({"name": "Other"}), &current).unwrap_err();
        assert!(err.starts_with("name:"), "{err}");
        let err = patch_request(&json!({"fields": [{"name": "nope", "labels": []}]}), &current).unwrap_err();
        assert!(err.starts_with("fields[0].name:"), "{err}");
        assert!(patch_request(&json!({}), &current).is_err());
    }

    #[test]
    fn run_window_must_be_ordered() {
        assert!(start_run_request(&json!({"dataFilterStartTime": "764245635"})).is_ok());
        let err = start_run_request(&json!({"dataFilterStartTime": 10, "dataFilterEndTime": 5})).unwrap_err();
        assert!(err.starts_with("dataFilterEndTime:"));
        assert!(
            start_run_request(&json!({}))
                .unwrap_err()
                .starts_with("dataFilterStartTime:")
        );
    }
}
