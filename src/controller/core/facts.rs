//! Facts every kind's decider reads the same way: the credentials a pass loaded.

/// The IMS org and AEP endpoint of the credentials a pass loaded.
#[derive(Clone, Copy, Debug)]
pub struct Endpoint<'a> {
    pub org_id: &'a str,
    pub platform_url: &'a str,
}

/// The credentials Secret, as the pass found it.
#[derive(Clone, Copy, Debug)]
pub enum Credentials<'a> {
    /// Read and valid: the org and endpoint they name.
    Ready(Endpoint<'a>),
    /// The Secret does not exist (the message names it).
    Missing(&'a str),
    /// The Secret is invalid (the message names the key and the rule).
    Invalid(&'a str),
    /// Not read (a decision that needs no credentials, or a unit test).
    NotRead,
}

/// The credentials as a pass found them (owned; [`Creds::facts`] lends them to a decider).
#[derive(Clone, Debug, Default)]
pub enum Creds {
    /// Read and valid: (org id, platform URL).
    Ready(String, String),
    Missing(String),
    Invalid(String),
    #[default]
    NotRead,
}

impl Creds {
    /// As the decider reads them.
    pub fn facts(&self) -> Credentials<'_> {
        match self {
            Creds::Ready(org_id, platform_url) => Credentials::Ready(Endpoint { org_id, platform_url }),
            Creds::Missing(m) => Credentials::Missing(m),
            Creds::Invalid(m) => Credentials::Invalid(m),
            Creds::NotRead => Credentials::NotRead,
        }
    }
}
