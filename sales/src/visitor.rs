//! What is known of the visitor for the whole conversation (from the chat frontend's context).

/// The visitor's context, cleaned: trimmed, empty values dropped, the domain lower-cased and
/// taken from the e-mail when none is given, the time zone kept only when it is a valid IANA name.
#[derive(Debug, Clone, Default)]
pub struct Visitor {
    pub domain: Option<String>,
    pub email: Option<String>,
    pub page_url: Option<String>,
    /// A valid IANA time zone, for meeting times.
    pub timezone: Option<String>,
    /// Set when the tenant checks identity (`identity: optional | required`).
    pub identity: Option<Identity>,
}

/// How far a conversation's visitor is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// The team's server signed the e-mail.
    Verified,
    /// An e-mail or domain was given but not signed (or the signature failed).
    Claimed,
    Anonymous,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Verified => "verified",
            Level::Claimed => "claimed",
            Level::Anonymous => "anonymous",
        }
    }
}

/// The checked identity of a visitor of a tenant that verifies identity.
#[derive(Debug, Clone)]
pub struct Identity {
    pub level: Level,
    /// The domain of the e-mail the team's server signed.
    pub verified_domain: Option<String>,
}

impl Visitor {
    /// From the raw fields a frontend sent.
    pub fn new(
        company_domain: Option<&str>,
        email: Option<&str>,
        page_url: Option<&str>,
        timezone: Option<&str>,
    ) -> Self {
        let clean = |s: Option<&str>| s.map(|x| x.trim().to_string()).filter(|x| !x.is_empty());
        let email = clean(email);
        let domain = clean(company_domain)
            .or_else(|| {
                email
                    .as_ref()
                    .and_then(|e| e.rsplit_once('@').map(|(_, d)| d.to_string()))
            })
            .map(|d| {
                d.to_ascii_lowercase()
                    .trim_start_matches("www.")
                    .to_string()
            });
        Self {
            domain,
            email,
            page_url: clean(page_url),
            timezone: clean(timezone).filter(|t| jiff::tz::TimeZone::get(t).is_ok()),
            identity: None,
        }
    }

    /// The domain the visitor's account may be told and scored by: the given domain when the
    /// tenant does not check identity, else only a verified one.
    pub fn trusted_domain(&self) -> Option<&str> {
        match &self.identity {
            None => self.domain.as_deref(),
            Some(i) => i.verified_domain.as_deref(),
        }
    }

    /// The identity level for leads and events: `None` when the tenant does not check identity.
    pub fn level(&self) -> Option<Level> {
        self.identity.as_ref().map(|i| i.level)
    }

    /// The visitor's time zone, UTC when unknown.
    pub fn tz(&self) -> &str {
        self.timezone.as_deref().unwrap_or("UTC")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_is_cleaned_and_the_domain_comes_from_the_email() {
        let v = Visitor::new(
            None,
            Some(" kim@WWW.Initech.co.uk "),
            Some(""),
            Some("Mars/Base"),
        );
        assert_eq!(v.email.as_deref(), Some("kim@WWW.Initech.co.uk"));
        assert_eq!(v.domain.as_deref(), Some("initech.co.uk"));
        assert_eq!(v.page_url, None);
        assert_eq!(v.timezone, None);
        assert_eq!(v.tz(), "UTC");
        let v = Visitor::new(Some("Acme.com"), None, None, Some("Europe/London"));
        assert_eq!(v.domain.as_deref(), Some("acme.com"));
        assert_eq!(v.tz(), "Europe/London");
    }
}
