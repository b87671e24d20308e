//! Property-based tier: generated ExternalAudience objects, mostly valid with targeted mutations
//! (edge lengths, Unicode whitespace, control characters, list sizes, bounds, enum spellings,
//! missing or conflicting parts), sent to the real apiserver with server-side dry-run.
//!
//! Properties, for every generated object:
//! 1. the apiserver answers (no transport error) and never with a 5xx;
//! 2. every refusal is `422 Invalid` and names the offending field (`spec.<path>`) in its message
//!    and in its causes (each cause in its `field` or, for some format checks, its message; the
//!    apiserver's field-less "some validation rules were not checked" note excepted);
//! 3. every spec the CRD accepts is one the operator can read back and the emulator (our model of
//!    AEP's create validation) accepts; the only refusal allowed is an identity namespace the org
//!    does not know (only AEP can know that), which the emulator names as `fields[i].identityNs`.
//!
//! `PROPTEST_CASES` overrides the number of cases (256). Failures are not persisted to files: the
//! minimal failing object is printed instead.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};

use aep_emulator::{Settings, validate};
use audience_operator::{api::ExternalAudience, controller::audience::spec as plan};
use kube::{
    Api, Resource,
    api::{ApiResource, DynamicObject, PostParams},
    core::Status,
};
use proptest::{
    prelude::*,
    sample::{Index, select},
    test_runner::TestCaseError,
};
use serde_json::{Map, Value, json};

/// Largest `dataFilterStartTime` / `dataFilterEndTime`: 9999-12-31T23:59:59Z.
const MAX_EPOCH: i64 = 253_402_300_799;

/// ASCII and Unicode whitespace (every `White_Space` class AEP-side trimming would see).
const WHITESPACE: &[char] = &[
    ' ', '\t', '\n', '\r', '\u{0B}', '\u{0C}', '\u{85}', '\u{A0}', '\u{1680}', '\u{2003}', '\u{2028}', '\u{202F}',
    '\u{205F}', '\u{3000}',
];
/// C0 and C1 control characters, and invisible format characters that are not whitespace.
const CONTROL: &[char] = &[
    '\u{0}', '\u{1}', '\u{7}', '\u{1B}', '\u{7F}', '\u{80}', '\u{9F}', '\u{200B}', '\u{FEFF}',
];
/// Non-ASCII letters (one to four UTF-8 bytes) and symbols.
const NON_ASCII: &[&str] = &["é", "ß", "Ж", "Ω", "名", "ü", "🎯", "—"];
const SLASHES: &[&str] = &["/", "../", "//", "\\", "a/b"];

// ----- what a case mutates ---------------------------------------------------------------------

/// A part of the spec a mutation can target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    SecretName,
    Sandbox,
    Name,
    Description,
    AudienceId,
    FieldList,
    FieldName,
    FieldType,
    IdentityNs,
    FieldLabels,
    Path,
    SourceKind,
    SourceType,
    Cloud,
    BaseConnectionId,
    Ttl,
    Labels,
    AudienceType,
    OriginName,
    Start,
    End,
    Differential,
    DeletionPolicy,
    UnknownKey,
}

impl Part {
    const ALL: [Part; 24] = [
        Part::SecretName,
        Part::Sandbox,
        Part::Name,
        Part::Description,
        Part::AudienceId,
        Part::FieldList,
        Part::FieldName,
        Part::FieldType,
        Part::IdentityNs,
        Part::FieldLabels,
        Part::Path,
        Part::SourceKind,
        Part::SourceType,
        Part::Cloud,
        Part::BaseConnectionId,
        Part::Ttl,
        Part::Labels,
        Part::AudienceType,
        Part::OriginName,
        Part::Start,
        Part::End,
        Part::Differential,
        Part::DeletionPolicy,
        Part::UnknownKey,
    ];

    /// Free-text parts, where most edge cases live: targeted twice as often.
    fn weight(self) -> u32 {
        match self {
            Part::SecretName
            | Part::Sandbox
            | Part::Name
            | Part::FieldName
            | Part::IdentityNs
            | Part::Path
            | Part::BaseConnectionId
            | Part::AudienceId => 2,
            _ => 1,
        }
    }
}

/// Which parts a case mutates: none (a valid spec), exactly one (a targeted mutation, always
/// applied), or every part now and then (several mutations at once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mutate {
    Nothing,
    Only(Part),
    Anything,
}

/// How a part is generated in a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rate {
    Valid,
    Sometimes,
    Always,
}

impl Mutate {
    fn rate(self, part: Part) -> Rate {
        match self {
            Mutate::Only(p) if p == part => Rate::Always,
            Mutate::Anything => Rate::Sometimes,
            _ => Rate::Valid,
        }
    }

    /// Presence probability of an optional part: `p`, but always present when targeted.
    fn presence(self, part: Part, p: f64) -> f64 {
        if self.rate(part) == Rate::Always { 1.0 } else { p }
    }
}

/// `valid`, `mutations`, or, at `Rate::Sometimes`, one of them (`weight` to 1).
fn mix<T: std::fmt::Debug + 'static>(
    rate: Rate,
    weight: u32,
    valid: impl Strategy<Value = T> + 'static,
    mutations: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<T> {
    match rate {
        Rate::Valid => valid.boxed(),
        Rate::Always => mutations.boxed(),
        Rate::Sometimes => prop_oneof![weight => valid, 1 => mutations].boxed(),
    }
}

/// Present (`Some`) with probability `p` (always at 1, never at 0).
fn optional(p: f64, s: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Option<Value>> {
    if p >= 1.0 {
        s.prop_map(Some).boxed()
    } else if p <= 0.0 {
        Just(None).boxed()
    } else {
        proptest::option::weighted(p, s).boxed()
    }
}

// ----- string mutations -------------------------------------------------------------------------

/// Inserts `piece` into `s` at a char boundary chosen by `at`.
fn insert(s: &str, piece: &str, at: Index) -> String {
    let chars: Vec<char> = s.chars().collect();
    let pos = at.index(chars.len() + 1);
    let mut out: String = chars[..pos].iter().collect();
    out.push_str(piece);
    out.extend(&chars[pos..]);
    out
}

/// Edge cases of a string whose schema allows at most `max` characters, derived from `valid`:
/// empty, at and past the length limit (in characters, with multi-byte ones too), whitespace
/// only, inside or around, control and invisible characters, non-ASCII letters, slashes, case.
fn edge_string(valid: BoxedStrategy<String>, max: usize) -> BoxedStrategy<String> {
    prop_oneof![
        1 => Just(String::new()),
        1 => Just("a".repeat(max)),
        1 => Just("a".repeat(max + 1)),
        1 => Just("é".repeat(max)),
        1 => Just("名".repeat(max + 1)),
        3 => (select(WHITESPACE), 1..3usize).prop_map(|(c, n)| c.to_string().repeat(n)),
        2 => (valid.clone(), select(WHITESPACE), any::<Index>()).prop_map(|(s, c, at)| insert(&s, &c.to_string(), at)),
        1 => (valid.clone(), select(WHITESPACE), any::<bool>()).prop_map(|(s, c, front)| if front {
            format!("{c}{s}")
        } else {
            format!("{s}{c}")
        }),
        2 => (valid.clone(), select(CONTROL), any::<Index>()).prop_map(|(s, c, at)| insert(&s, &c.to_string(), at)),
        1 => (valid.clone(), select(NON_ASCII), any::<Index>()).prop_map(|(s, c, at)| insert(&s, c, at)),
        1 => (valid.clone(), select(SLASHES), any::<Index>()).prop_map(|(s, c, at)| insert(&s, c, at)),
        1 => valid.prop_map(|s| s.to_uppercase()),
    ]
    .boxed()
}

/// A string value: `valid`, or one of its edge cases.
fn string(rate: Rate, valid: impl Strategy<Value = String> + 'static, max: usize) -> BoxedStrategy<Value> {
    let valid = valid.boxed();
    mix(rate, 6, valid.clone(), edge_string(valid, max))
        .prop_map(Value::String)
        .boxed()
}

/// A value of the wrong JSON type.
fn wrong_type() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(json!(null)),
        Just(json!(7)),
        Just(json!(true)),
        Just(json!(["x"])),
        Just(json!({"x": 1})),
        Just(json!("x")),
    ]
    .boxed()
}

/// A valid enum spelling, or a near miss, an unknown string or another JSON type.
fn enumeration(rate: Rate, valid: &'static [&'static str], invalid: &'static [&'static str]) -> BoxedStrategy<Value> {
    mix(
        rate,
        6,
        select(valid).prop_map(|s| json!(s)),
        prop_oneof![4 => select(invalid).prop_map(|s| json!(s)), 1 => wrong_type()],
    )
}

/// An integer in `[min, max]` (the bounds often), or one past them, an extreme, or not an
/// integer.
fn integer(rate: Rate, min: i64, max: i64) -> BoxedStrategy<Value> {
    let valid = prop_oneof![4 => min..=max, 1 => select(vec![min, max])].prop_map(|n| json!(n));
    let invalid = prop_oneof![
        4 => select(vec![min - 1, max + 1, -1, i64::from(i32::MAX) + 1, i64::MIN, i64::MAX]).prop_map(|n| json!(n)),
        1 => Just(json!(u64::MAX)),
        2 => select(vec![json!(1.5), json!(40.0), json!("40"), json!(1e300), json!(null)]),
    ];
    mix(rate, 4, valid, invalid)
}

// ----- spec parts -------------------------------------------------------------------------------

fn label(rate: Rate) -> BoxedStrategy<String> {
    let valid = prop_oneof![
        8 => "(core|custom|contract|identity)/[A-Za-z0-9_.-]{1,12}",
        1 => Just(format!("core/{}", "C".repeat(123))),
    ];
    let invalid = prop_oneof![
        1 => Just(format!("core/{}", "C".repeat(124))),
        8 => select(vec![
            "core", "/C1", "core/", "core/C1/x", "core C1", "cöre/C1", "core//C1", "core/C1\n", "core/C\u{A0}1", "",
        ])
        .prop_map(str::to_owned),
    ];
    mix(rate, 8, valid, invalid)
}

/// A list of labels: a few, or exactly at (64) the limit; mutated: past it (65), duplicated, not
/// a list, or with malformed labels.
fn labels(rate: Rate) -> BoxedStrategy<Value> {
    let valid = prop_oneof![
        12 => prop::collection::vec(label(Rate::Valid), 0..4).prop_map(|v| json!(v)),
        1 => Just(json!((0..64).map(|i| format!("core/C{i}")).collect::<Vec<_>>())),
    ];
    let invalid = prop_oneof![
        4 => (prop::collection::vec(label(Rate::Valid), 0..3), label(Rate::Always), any::<Index>()).prop_map(
            |(mut v, bad, at)| {
                let pos = at.index(v.len() + 1);
                v.insert(pos, bad);
                json!(v)
            }
        ),
        1 => Just(json!((0..65).map(|i| format!("core/C{i}")).collect::<Vec<_>>())),
        1 => Just(json!(["core/C1", "core/C1"])),
        1 => wrong_type(),
    ];
    mix(rate, 8, valid, invalid)
}

fn identity_ns(rate: Rate) -> BoxedStrategy<Value> {
    let known = select(vec!["email", "Email", "ECID", "crmid", "Phone_SHA256", "IDFA"]).prop_map(str::to_owned);
    // Well-formed codes the org may not know (only AEP can tell).
    let unknown = prop_oneof![4 => "[A-Za-z0-9_.-]{1,20}", 1 => Just("n".repeat(128))];
    string(rate, prop_oneof![3 => known, 1 => unknown], 128)
}

fn field_name(rate: Rate) -> BoxedStrategy<Value> {
    string(
        rate,
        prop_oneof![
            12 => "[a-z][a-z0-9_]{0,15}",
            2 => "[A-Za-z][A-Za-z0-9 .:-]{0,20}",
            2 => select(vec!["prénom", "名前", "Größe", "e-mail address", " padded ", "a\u{A0}b"]).prop_map(str::to_owned),
            1 => Just("é".repeat(256)),
        ],
        256,
    )
}

fn field_type(rate: Rate) -> BoxedStrategy<Value> {
    enumeration(
        rate,
        &["string", "number", "long", "integer", "date", "datetime", "boolean"],
        &["String", "text", "", "int", "timestamp", " string"],
    )
}

/// One field; an identity field with probability `identity`.
fn field(m: Mutate, identity: f64) -> BoxedStrategy<Value> {
    (
        field_name(m.rate(Part::FieldName)),
        field_type(m.rate(Part::FieldType)),
        optional(identity, identity_ns(m.rate(Part::IdentityNs))),
        optional(m.presence(Part::FieldLabels, 0.3), labels(m.rate(Part::FieldLabels))),
    )
        .prop_map(|(name, ty, ns, labels)| {
            let mut f = Map::new();
            f.insert("name".into(), name);
            f.insert("type".into(), ty);
            if let Some(ns) = ns {
                f.insert("identityNs".into(), ns);
            }
            if let Some(labels) = labels {
                f.insert("labels".into(), labels);
            }
            Value::Object(f)
        })
        .boxed()
}

/// Field names made unique: a duplicate gets its index appended.
fn unique_names(mut fields: Vec<Value>) -> Vec<Value> {
    let mut seen = Vec::new();
    for (i, f) in fields.iter_mut().enumerate() {
        if let Some(Value::String(name)) = f.get_mut("name") {
            if seen.contains(name) {
                name.push_str(&i.to_string());
            }
            seen.push(name.clone());
        }
    }
    fields
}

/// 1 + `rest` fields, the first an identity field, with unique names.
fn sized_fields(m: Mutate, rest: std::ops::Range<usize>) -> BoxedStrategy<Value> {
    (field(m, 1.0), prop::collection::vec(field(m, 0.2), rest))
        .prop_map(|(first, rest)| {
            let mut all = vec![first];
            all.extend(rest);
            json!(unique_names(all))
        })
        .boxed()
}

/// 1 to 41 fields (the first an identity field); mutated: 0 or 42 fields, a duplicate name, no
/// identity field, not a list.
fn fields(m: Mutate) -> BoxedStrategy<Value> {
    let valid = prop_oneof![12 => sized_fields(m, 0..4), 1 => sized_fields(m, 40..41)];
    let duplicate = (field(m, 1.0), field_type(Rate::Valid)).prop_map(|(first, ty)| {
        let second = json!({"name": first["name"].clone(), "type": ty});
        json!([first, second])
    });
    let no_identity = prop::collection::vec(field(m, 0.0), 1..3).prop_map(|v| json!(unique_names(v)));
    let invalid = prop_oneof![
        sized_fields(m, 41..42),
        Just(json!([])),
        duplicate,
        no_identity,
        wrong_type(),
    ];
    mix(m.rate(Part::FieldList), 8, valid, invalid)
}

fn path(rate: Rate) -> BoxedStrategy<Value> {
    string(
        rate,
        prop_oneof![
            12 => "[a-z0-9_.-]{1,12}(/[a-z0-9_.-]{1,12}){0,3}\\.csv",
            1 => Just("données/été/名前.csv".to_owned()),
            1 => Just(format!("{}.csv", "p".repeat(1020))),
        ],
        1024,
    )
}

fn base_connection_id(rate: Rate) -> BoxedStrategy<Value> {
    string(
        rate,
        prop_oneof![
            4 => "[A-Za-z0-9][A-Za-z0-9_-]{0,40}",
            4 => "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
            1 => Just("c".repeat(128)),
        ],
        128,
    )
}

fn source_spec(m: Mutate) -> BoxedStrategy<Value> {
    let needs = || select(vec!["S3", "GCS", "SFTP"]).prop_map(|c| Some(json!(c)));
    let connection = || base_connection_id(m.rate(Part::BaseConnectionId));
    let connection_presence = m.presence(Part::BaseConnectionId, 0.5);
    let valid = prop_oneof![
        // No cloud type: the connection is optional.
        (Just(None), optional(connection_presence, connection())),
        // Types that need a connection, with one.
        (needs(), connection().prop_map(Some)),
        // Types that do not need one.
        (
            select(vec!["DLZ", "Azure"]).prop_map(|c| Some(json!(c))),
            optional(connection_presence, connection())
        ),
    ];
    let invalid = prop_oneof![
        // S3 / GCS / SFTP without a connection.
        2 => (needs(), Just(None)),
        1 => (
            prop_oneof![select(vec!["s3", "AZURE", "Blob", ""]).prop_map(|c| json!(c)), wrong_type()].prop_map(Some),
            optional(connection_presence, connection())
        ),
    ];
    (
        path(m.rate(Part::Path)),
        enumeration(m.rate(Part::SourceKind), &["file", "folder"], &["FILE", "dir", ""]),
        optional(
            m.presence(Part::SourceType, 0.5),
            enumeration(
                m.rate(Part::SourceType),
                &["Cloud Storage"],
                &["cloud storage", "S3", "Cloud  Storage"],
            ),
        ),
        mix(m.rate(Part::Cloud), 6, valid, invalid),
    )
        .prop_map(|(path, ty, source_type, (cloud, connection))| {
            let mut s = Map::new();
            s.insert("path".into(), path);
            s.insert("type".into(), ty);
            if let Some(v) = source_type {
                s.insert("sourceType".into(), v);
            }
            if let Some(v) = cloud {
                s.insert("cloudType".into(), v);
            }
            if let Some(v) = connection {
                s.insert("baseConnectionId".into(), v);
            }
            Value::Object(s)
        })
        .boxed()
}

/// Where `dataFilterEndTime` lies relative to `dataFilterStartTime`.
#[derive(Clone, Copy, Debug)]
enum End {
    Absent,
    AtStart,
    AfterStart,
    BeforeStart,
    At(i64),
}

fn ingestion(m: Mutate) -> BoxedStrategy<Value> {
    let start = mix(
        m.rate(Part::Start),
        6,
        integer(Rate::Valid, 0, MAX_EPOCH),
        prop_oneof![
            3 => integer(Rate::Always, 0, MAX_EPOCH),
            1 => Just(json!("764245635")),
        ],
    );
    let end = mix(
        m.rate(Part::End),
        6,
        prop_oneof![
            6 => Just(End::Absent),
            2 => Just(End::AtStart),
            2 => Just(End::AfterStart),
            1 => Just(End::At(MAX_EPOCH)),
        ],
        select(vec![End::BeforeStart, End::At(MAX_EPOCH + 1), End::At(-1)]),
    );
    let differential = optional(
        m.presence(Part::Differential, 0.5),
        mix(
            m.rate(Part::Differential),
            8,
            any::<bool>().prop_map(|b| json!(b)),
            select(vec![json!("true"), json!(1), json!("yes")]),
        ),
    );
    (start, end, differential)
        .prop_map(|(start, end, differential)| {
            let mut i = Map::new();
            let from = start.as_i64().unwrap_or(0);
            let end = match end {
                End::Absent => None,
                End::AtStart => Some(from),
                End::AfterStart => Some(from.saturating_add(1)),
                End::BeforeStart => Some(from.saturating_sub(1)),
                End::At(n) => Some(n),
            };
            if let Some(end) = end {
                i.insert("dataFilterEndTime".into(), json!(end));
            }
            if !start.is_null() {
                i.insert("dataFilterStartTime".into(), start);
            }
            if let Some(d) = differential {
                i.insert("differentialIngestion".into(), d);
            }
            Value::Object(i)
        })
        .boxed()
}

/// A whole spec, its parts mutated as `m` says. Valid parts still vary: optional parts present
/// or absent, lengths and list sizes at their limits, Unicode text, unknown identity namespaces.
fn spec_with(m: Mutate) -> BoxedStrategy<Value> {
    let identity = (
        string(
            m.rate(Part::SecretName),
            prop_oneof![
                3 => Just("aep-credentials".to_owned()),
                1 => "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\\.[a-z0-9]{1,8})?",
            ],
            253,
        ),
        string(
            m.rate(Part::Sandbox),
            prop_oneof![3 => Just("prod".to_owned()), 1 => "[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?"],
            128,
        ),
        optional(
            m.presence(Part::Name, 0.7),
            string(
                m.rate(Part::Name),
                prop_oneof![
                    8 => "[A-Za-z0-9][A-Za-z0-9 _.,:()-]{0,40}",
                    2 => select(vec!["Churn risk — Q3", "Fidélité 名前", "Ωmega 🎯", " padded ", "a\u{3000}b"])
                        .prop_map(str::to_owned),
                    1 => Just("🎯".repeat(256)),
                ],
                256,
            ),
        ),
        optional(
            m.presence(Part::Description, 0.5),
            mix(
                m.rate(Part::Description),
                6,
                prop_oneof![
                    8 => "[A-Za-z0-9 .,;:!?'-]{0,80}".prop_map(Value::String),
                    // A description has no rules: any Unicode text, controls included.
                    2 => any::<String>().prop_map(Value::String),
                    1 => Just(json!("d".repeat(4096))),
                ],
                prop_oneof![
                    Just(json!("d".repeat(4097))),
                    Just(json!("名".repeat(4097))),
                    wrong_type()
                ],
            ),
        ),
        optional(
            m.presence(Part::AudienceId, 0.2),
            string(m.rate(Part::AudienceId), "[A-Za-z0-9][A-Za-z0-9_.:-]{0,40}", 128),
        ),
    );
    let audience = (
        fields(m),
        source_spec(m),
        optional(m.presence(Part::Ttl, 0.7), integer(m.rate(Part::Ttl), 1, 90)),
        optional(m.presence(Part::Labels, 0.4), labels(m.rate(Part::Labels))),
        optional(
            m.presence(Part::AudienceType, 0.3),
            enumeration(m.rate(Part::AudienceType), &["people"], &["People", "accounts", ""]),
        ),
        optional(
            m.presence(Part::OriginName, 0.3),
            enumeration(
                m.rate(Part::OriginName),
                &["CUSTOM_UPLOAD"],
                &["custom_upload", "UPLOAD"],
            ),
        ),
        ingestion(m),
        optional(
            m.presence(Part::DeletionPolicy, 0.3),
            enumeration(
                m.rate(Part::DeletionPolicy),
                &["Delete", "Orphan"],
                &["delete", "Retain", "Keep"],
            ),
        ),
        // An unknown key, which the apiserver prunes.
        mix(m.rate(Part::UnknownKey), 20, Just(false), Just(true)),
    );
    (identity, audience)
        .prop_map(
            |(
                (secret, sandbox, name, description, audience_id),
                (fields, source, ttl, labels, audience_type, origin, ingestion, deletion, unknown_key),
            )| {
                let mut s = Map::new();
                s.insert("credentialsSecretRef".into(), json!({"name": secret}));
                s.insert("sandbox".into(), sandbox);
                s.insert("fields".into(), fields);
                s.insert("sourceSpec".into(), source);
                s.insert("ingestion".into(), ingestion);
                for (key, value) in [
                    ("name", name),
                    ("description", description),
                    ("audienceId", audience_id),
                    ("ttlInDays", ttl),
                    ("labels", labels),
                    ("audienceType", audience_type),
                    ("originName", origin),
                    ("deletionPolicy", deletion),
                ] {
                    if let Some(v) = value {
                        s.insert(key.into(), v);
                    }
                }
                if unknown_key {
                    s.insert("retentionDays".into(), json!(7));
                }
                Value::Object(s)
            },
        )
        .boxed()
}

/// Valid specs (2 in 7), specs with one targeted mutation (4 in 7), specs with several (1 in 7).
fn audience_spec() -> BoxedStrategy<Value> {
    let targeted = proptest::strategy::Union::new_weighted(
        Part::ALL
            .iter()
            .map(|&part| (part.weight(), spec_with(Mutate::Only(part))))
            .collect(),
    );
    prop_oneof![
        2 => spec_with(Mutate::Nothing),
        4 => targeted,
        1 => spec_with(Mutate::Anything),
    ]
    .boxed()
}

// ----- checks -----------------------------------------------------------------------------------

/// Whether `text` names a spec field: `spec.` followed by a field name.
fn names_spec_field(text: &str) -> bool {
    text.match_indices("spec.")
        .any(|(i, m)| text[i + m.len()..].starts_with(|c: char| c.is_ascii_alphabetic()))
}

/// Property 2: a refusal is `422 Invalid` and names the field, in the message and every cause.
fn check_refusal(status: &Status, spec: &Value) -> Result<(), TestCaseError> {
    prop_assert!(
        status.code < 500,
        "the apiserver answered {}: {status:?}\nspec: {spec:#}",
        status.code
    );
    prop_assert!(
        status.code == 422 && status.reason == "Invalid",
        "refusal is not 422 Invalid: {status:?}\nspec: {spec:#}"
    );
    prop_assert!(
        names_spec_field(&status.message),
        "refusal names no spec field: {status:?}\nspec: {spec:#}"
    );
    let causes = status.details.as_ref().map(|d| d.causes.as_slice()).unwrap_or_default();
    prop_assert!(
        causes
            .iter()
            .any(|c| c.field.starts_with("spec.") && names_spec_field(&c.field)),
        "no cause names a spec field: {status:?}\nspec: {spec:#}"
    );
    for cause in causes {
        // A cause names its field in `field` or, for some format checks (`field: "<nil>"`), in
        // its message. Besides, the apiserver adds one field-less note when it skipped the CEL
        // rules of an object that already failed its schema.
        let skipped_rules_note =
            cause.field == "<nil>" && cause.message.contains("some validation rules were not checked");
        prop_assert!(
            skipped_rules_note
                || (cause.field.starts_with("spec.") && names_spec_field(&cause.field))
                || names_spec_field(&cause.message),
            "a cause names no spec field: {cause:?}\nstatus: {status:?}\nspec: {spec:#}"
        );
    }
    Ok(())
}

/// What the emulator said about an accepted spec.
enum Verdict {
    Accepted,
    UnknownNamespace,
}

/// Property 3: the operator reads the accepted object back, and the create request it builds
/// passes the emulator's validation (an unknown identity namespace excepted, named by field).
fn check_accepted(object: &DynamicObject, spec: &Value, known: &[String]) -> Result<Verdict, TestCaseError> {
    let stored = serde_json::to_value(object).map_err(|e| TestCaseError::fail(format!("serialise: {e}")))?;
    let audience: ExternalAudience = serde_json::from_value(stored.clone()).map_err(|e| {
        TestCaseError::fail(format!(
            "the CRD accepted an object the operator cannot read: {e}\nstored: {stored:#}"
        ))
    })?;
    // An object that adopts (`audienceId`) or observes its audience never sends a create: the
    // CRD lets its fields, sourceSpec and ingestion go, so there is no create request to check.
    if audience.spec.audience_id.is_some()
        || audience.spec.management_policy == audience_operator::api::ManagementPolicy::Observe
    {
        return Ok(Verdict::Accepted);
    }
    let metadata_name = audience.metadata.name.clone().unwrap_or_default();
    let request = plan::create_request(
        &audience.spec,
        audience.spec.audience_name(&metadata_name),
        Some("k8s-test"),
    )
    .ok_or_else(|| TestCaseError::fail("an accepted object that creates its audience has a sourceSpec"))?;
    let body = serde_json::to_value(&request).map_err(|e| TestCaseError::fail(format!("serialise request: {e}")))?;
    let parsed = validate::create_request(&body).map_err(|detail| {
        TestCaseError::fail(format!(
            "the CRD accepted a spec the emulator refuses: {detail}\nspec: {spec:#}\nrequest: {body:#}"
        ))
    })?;
    match validate::known_identity_namespaces(&parsed, known) {
        Ok(()) => Ok(Verdict::Accepted),
        Err(detail) => {
            prop_assert!(
                detail.starts_with("fields[") && detail.contains("identityNs"),
                "the emulator refused an accepted spec without naming the field: {detail}\nspec: {spec:#}"
            );
            Ok(Verdict::UnknownNamespace)
        }
    }
}

#[test]
fn generated_specs_are_refused_by_field_or_accepted_by_the_emulator() {
    support::operator::install_crd_and_rbac();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let client = rt.block_on(support::admin());
    let ns = rt.block_on(support::namespace(&client, "proptest"));
    let resource = ApiResource::erase::<ExternalAudience>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client, &ns, &resource);
    let dry_run = PostParams {
        dry_run: true,
        field_manager: None,
    };
    let known = Settings::default().identity_namespaces;
    let case = AtomicUsize::new(0);
    let accepted = AtomicUsize::new(0);
    let unknown_namespace = AtomicUsize::new(0);
    let refused = AtomicUsize::new(0);
    let started = std::time::Instant::now();

    let config = ProptestConfig {
        cases: 256,
        failure_persistence: None,
        max_shrink_iters: 2048,
        ..ProptestConfig::default()
    };
    proptest!(config, |(spec in audience_spec())| {
        let name = format!("case-{}", case.fetch_add(1, Ordering::Relaxed));
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": ExternalAudience::api_version(&()),
            "kind": ExternalAudience::kind(&()),
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        }))
        .expect("object json");
        match rt.block_on(api.create(&dry_run, &object)) {
            Ok(created) => match check_accepted(&created, &spec, &known)? {
                Verdict::Accepted => accepted.fetch_add(1, Ordering::Relaxed),
                Verdict::UnknownNamespace => unknown_namespace.fetch_add(1, Ordering::Relaxed),
            },
            Err(kube::Error::Api(status)) => {
                check_refusal(&status, &spec)?;
                refused.fetch_add(1, Ordering::Relaxed)
            }
            Err(other) => {
                return Err(TestCaseError::fail(format!(
                    "the apiserver call failed without an API status (transport or decoding): {other}\nspec: {spec:#}"
                )));
            }
        };
    });

    let (accepted, unknown_namespace, refused) = (
        accepted.into_inner(),
        unknown_namespace.into_inner(),
        refused.into_inner(),
    );
    eprintln!(
        "crd_proptest: {} cases in {:.1?}: {} accepted ({} of them with an identity namespace the org does not \
         know), {} refused",
        accepted + unknown_namespace + refused,
        started.elapsed(),
        accepted + unknown_namespace,
        unknown_namespace,
        refused
    );
    assert!(
        accepted + unknown_namespace > 0,
        "the generator produced no spec the CRD accepts"
    );
    assert!(refused > 0, "the generator produced no spec the CRD refuses");
}
