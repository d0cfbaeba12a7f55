//! Slots: facts about the visitor found in what they wrote — email (business or free mail),
//! company domain, company size, country, phone, timeline and seat count. Pattern-based and
//! conservative: a slot is returned only when the wording leaves little doubt.

use std::sync::LazyLock;

use regex::Regex;

#[derive(Debug, Clone, PartialEq)]
pub struct Slot {
    pub name: &'static str,
    pub value: String,
    /// For emails: "business" or "free_mail".
    pub detail: &'static str,
    pub span: (usize, usize),
}

/// Consumer mailbox providers: an address there says nothing about the visitor's company.
const FREE_MAIL: &[&str] = &[
    "gmail.com",
    "googlemail.com",
    "yahoo.com",
    "yahoo.co.uk",
    "yahoo.fr",
    "yahoo.de",
    "ymail.com",
    "hotmail.com",
    "hotmail.co.uk",
    "hotmail.fr",
    "outlook.com",
    "live.com",
    "msn.com",
    "aol.com",
    "icloud.com",
    "me.com",
    "mac.com",
    "proton.me",
    "protonmail.com",
    "pm.me",
    "gmx.com",
    "gmx.de",
    "gmx.net",
    "web.de",
    "mail.com",
    "yandex.com",
    "yandex.ru",
    "mail.ru",
    "zoho.com",
    "qq.com",
    "163.com",
    "126.com",
    "fastmail.com",
    "hey.com",
    "tutanota.com",
    "hushmail.com",
    "inbox.com",
    "rediffmail.com",
    "seznam.cz",
    "orange.fr",
    "free.fr",
    "laposte.net",
    "libero.it",
    "t-online.de",
    "btinternet.com",
    "comcast.net",
    "verizon.net",
    "att.net",
    "sbcglobal.net",
    "naver.com",
];

pub fn is_free_mail(domain: &str) -> bool {
    FREE_MAIL.contains(&domain.to_ascii_lowercase().as_str())
}

/// Country names and common short forms → ISO 3166-1 alpha-2.
const COUNTRIES: &[(&str, &str)] = &[
    ("united states of america", "US"),
    ("united states", "US"),
    ("usa", "US"),
    ("america", "US"),
    ("united kingdom", "GB"),
    ("great britain", "GB"),
    ("britain", "GB"),
    ("england", "GB"),
    ("scotland", "GB"),
    ("wales", "GB"),
    ("canada", "CA"),
    ("mexico", "MX"),
    ("brazil", "BR"),
    ("argentina", "AR"),
    ("chile", "CL"),
    ("colombia", "CO"),
    ("peru", "PE"),
    ("ireland", "IE"),
    ("france", "FR"),
    ("germany", "DE"),
    ("spain", "ES"),
    ("portugal", "PT"),
    ("italy", "IT"),
    ("netherlands", "NL"),
    ("holland", "NL"),
    ("belgium", "BE"),
    ("luxembourg", "LU"),
    ("switzerland", "CH"),
    ("austria", "AT"),
    ("denmark", "DK"),
    ("sweden", "SE"),
    ("norway", "NO"),
    ("finland", "FI"),
    ("iceland", "IS"),
    ("poland", "PL"),
    ("czech republic", "CZ"),
    ("czechia", "CZ"),
    ("slovakia", "SK"),
    ("hungary", "HU"),
    ("romania", "RO"),
    ("bulgaria", "BG"),
    ("greece", "GR"),
    ("turkey", "TR"),
    ("ukraine", "UA"),
    ("estonia", "EE"),
    ("latvia", "LV"),
    ("lithuania", "LT"),
    ("croatia", "HR"),
    ("serbia", "RS"),
    ("slovenia", "SI"),
    ("israel", "IL"),
    ("united arab emirates", "AE"),
    ("uae", "AE"),
    ("saudi arabia", "SA"),
    ("egypt", "EG"),
    ("south africa", "ZA"),
    ("nigeria", "NG"),
    ("kenya", "KE"),
    ("morocco", "MA"),
    ("india", "IN"),
    ("pakistan", "PK"),
    ("bangladesh", "BD"),
    ("singapore", "SG"),
    ("malaysia", "MY"),
    ("indonesia", "ID"),
    ("philippines", "PH"),
    ("thailand", "TH"),
    ("vietnam", "VN"),
    ("china", "CN"),
    ("hong kong", "HK"),
    ("taiwan", "TW"),
    ("japan", "JP"),
    ("south korea", "KR"),
    ("korea", "KR"),
    ("australia", "AU"),
    ("new zealand", "NZ"),
];

/// Short forms that are ordinary words in lower case ("us"), matched only as written here.
const COUNTRY_CODES: &[(&str, &str)] = &[
    ("US", "US"),
    ("U.S.", "US"),
    ("UK", "GB"),
    ("U.K.", "GB"),
    ("EU", "EU"),
];

/// An ISO 3166-1 alpha-2 code for a country as a form field holds it: a code (`GB`, `uk`) or a
/// name (`United Kingdom`).
pub fn country_code(field: &str) -> Option<&'static str> {
    let t = field.trim();
    let lower = t.to_lowercase();
    if let Some((_, c)) = COUNTRIES.iter().find(|(n, _)| *n == lower) {
        return Some(c);
    }
    let upper = t.to_uppercase();
    if let Some((_, c)) = COUNTRY_CODES.iter().find(|(n, _)| *n == upper) {
        return Some(c);
    }
    COUNTRIES.iter().map(|(_, c)| *c).find(|c| *c == upper)
}

static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b[a-z0-9._%+-]+@([a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,24})\b")
        .expect("email regex")
});
static DOMAIN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(?:https?://)?(?:www\.)?((?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+(?:com|io|co|net|org|ai|dev|app|tech|cloud|biz|info|us|uk|de|fr|es|it|nl|be|ch|at|se|no|dk|fi|ie|pl|pt|ca|au|nz|in|sg|jp|br|mx|eu))\b")
        .expect("domain regex")
});
static SIZE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(?:team|company|staff|headcount|org(?:anization|anisation)?) of (?:about |around |roughly |over |~)?(\d[\d,]*)\b|\b(\d[\d,]*)\+?(?:-| )?(?:person|people|employee|employees|staff|headcount|strong)\b")
        .expect("size regex")
});
static SEATS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(\d[\d,]*)\s*(?:seats?|users?|licen[cs]es?|logins?|user accounts)\b|\bfor (\d[\d,]*) (?:people|persons|users|agents|reps|members)\b")
        .expect("seats regex")
});
static PHONE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]?\d{2,4}){2,4}")
        .expect("phone regex")
});
static TIMELINE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(?:this|next|the next|within the next) (?:quarter|month|week|year|couple of weeks|few weeks|few months)\b|\b(?:by|before) (?:the )?end of (?:the |this |next )?(?:year|quarter|month|week)\b|\b(?:within|in) (?:\d+|a|one|two|three|four|six|a few|a couple of) (?:days?|weeks?|months?)\b|\b(?:by|in|before) (?:q[1-4]|january|february|march|april|may|june|july|august|september|october|november|december)\b|\basap\b|\bas soon as possible\b|\bright away\b|\bimmediately\b|\bno rush\b|\bnot (?:any ?time|until) soon\b")
        .expect("timeline regex")
});

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

fn overlaps(a: (usize, usize), b: (usize, usize)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// Every slot found in `text`, in text order.
pub fn extract(text: &str) -> Vec<Slot> {
    let mut out: Vec<Slot> = vec![];
    emails_and_domains(text, &mut out);
    counts_and_timeline(text, &mut out);
    phones(text, &mut out);
    countries(text, &mut out);
    out.sort_by_key(|s| s.span.0);
    out
}

/// Adds `s` unless an earlier slot covers part of its text.
fn push(out: &mut Vec<Slot>, s: Slot) {
    if !out.iter().any(|o| overlaps(o.span, s.span)) {
        out.push(s);
    }
}

/// E-mails, company domains, and the company domain of a business e-mail when none is written.
fn emails_and_domains(text: &str, out: &mut Vec<Slot>) {
    let mut company_from_email = None;
    for c in EMAIL.captures_iter(text) {
        let (Some(m), Some(d)) = (c.get(0), c.get(1)) else {
            continue;
        };
        let domain = d.as_str().to_ascii_lowercase();
        let free = is_free_mail(&domain);
        if !free && company_from_email.is_none() {
            company_from_email = Some((domain.clone(), (d.start(), d.end())));
        }
        push(
            out,
            Slot {
                name: "email",
                value: m.as_str().to_ascii_lowercase(),
                detail: if free { "free_mail" } else { "business" },
                span: (m.start(), m.end()),
            },
        );
    }
    for c in DOMAIN.captures_iter(text) {
        let (Some(m), Some(d)) = (c.get(0), c.get(1)) else {
            continue;
        };
        let domain = d.as_str().to_ascii_lowercase();
        // Part of an email (already captured), a free-mail host, or a decimal like "1.5.de"? skip.
        if out.iter().any(|o| overlaps(o.span, (m.start(), m.end()))) || is_free_mail(&domain) {
            continue;
        }
        if text[..m.start()].ends_with('@') {
            continue;
        }
        push(
            out,
            Slot {
                name: "company_domain",
                value: domain,
                detail: "",
                span: (m.start(), m.end()),
            },
        );
    }
    if !out.iter().any(|s| s.name == "company_domain") {
        if let Some((domain, span)) = company_from_email {
            // Reported with the email's domain part as its span.
            out.push(Slot {
                name: "company_domain",
                value: domain,
                detail: "",
                span,
            });
        }
    }
}

/// Seat counts, company sizes and buying timelines.
fn counts_and_timeline(text: &str, out: &mut Vec<Slot>) {
    // Seats before sizes: "for 25 people" is a seat count, not a headcount.
    for (re, name) in [(&*SEATS, "seats"), (&*SIZE, "company_size")] {
        for c in re.captures_iter(text) {
            let Some(m) = c.get(0) else { continue };
            let n = c
                .get(1)
                .or(c.get(2))
                .map(|g| digits(g.as_str()))
                .unwrap_or_default();
            if !n.is_empty() {
                push(
                    out,
                    Slot {
                        name,
                        value: n,
                        detail: "",
                        span: (m.start(), m.end()),
                    },
                );
            }
        }
    }
    for m in TIMELINE.find_iter(text) {
        push(
            out,
            Slot {
                name: "timeline",
                value: m.as_str().to_lowercase(),
                detail: "",
                span: (m.start(), m.end()),
            },
        );
    }
}

/// Phone numbers (7 to 15 digits, not amounts).
fn phones(text: &str, out: &mut Vec<Slot>) {
    for m in PHONE.find_iter(text) {
        let d = digits(m.as_str());
        // 7 to 15 digits (E.164), and not an amount or a plain number in prose.
        let before = text[..m.start()].chars().next_back();
        if !(7..=15).contains(&d.len()) || matches!(before, Some('$' | '€' | '£' | '.' | ',')) {
            continue;
        }
        if !m.as_str().contains([' ', '-', '.', '(', '+']) && d.len() < 9 {
            continue;
        }
        let value = if m.as_str().trim_start().starts_with('+') {
            format!("+{d}")
        } else {
            d
        };
        push(
            out,
            Slot {
                name: "phone",
                value,
                detail: "",
                span: (m.start(), m.end()),
            },
        );
    }
}

/// Countries by name or code.
fn countries(text: &str, out: &mut Vec<Slot>) {
    let lower = text.to_lowercase();
    // Names are matched on the lowercased text; byte offsets agree for ASCII names, and
    // non-ASCII text before a match is skipped by checking the original text's slice.
    for (name, code) in COUNTRIES {
        if let Some(at) = find_word(&lower, name) {
            if text
                .get(at..at + name.len())
                .is_some_and(|s| s.eq_ignore_ascii_case(name))
            {
                push(
                    out,
                    Slot {
                        name: "country",
                        value: (*code).into(),
                        detail: "",
                        span: (at, at + name.len()),
                    },
                );
            }
        }
    }
    for (form, code) in COUNTRY_CODES {
        if let Some(at) = find_word(text, form) {
            push(
                out,
                Slot {
                    name: "country",
                    value: (*code).into(),
                    detail: "",
                    span: (at, at + form.len()),
                },
            );
        }
    }
}

/// Byte offset of `word` in `hay` at word boundaries.
fn find_word(hay: &str, word: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = hay[from..].find(word) {
        let at = from + i;
        let before = hay[..at].chars().next_back();
        let after = hay[at + word.len()..].chars().next();
        let boundary = |c: Option<char>| c.is_none_or(|c| !c.is_alphanumeric());
        if boundary(before) && boundary(after) {
            return Some(at);
        }
        from = at + word.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(slots: &'a [Slot], name: &str) -> Option<&'a Slot> {
        slots.iter().find(|s| s.name == name)
    }

    #[test]
    fn business_email_gives_the_company_domain() {
        let t =
            "I'm jane@Acme.com, we have 250 employees in the UK and want to start this quarter.";
        let s = extract(t);
        assert_eq!(
            get(&s, "email").map(|x| (x.value.as_str(), x.detail)),
            Some(("jane@acme.com", "business"))
        );
        assert_eq!(
            get(&s, "company_domain").map(|x| x.value.as_str()),
            Some("acme.com")
        );
        assert_eq!(
            get(&s, "company_size").map(|x| x.value.as_str()),
            Some("250")
        );
        assert_eq!(get(&s, "country").map(|x| x.value.as_str()), Some("GB"));
        assert_eq!(
            get(&s, "timeline").map(|x| x.value.as_str()),
            Some("this quarter")
        );
        let e = get(&s, "email").unwrap();
        assert_eq!(&t[e.span.0..e.span.1], "jane@Acme.com");
    }

    #[test]
    fn free_mail_is_told_apart_and_gives_no_domain() {
        let s = extract("reach me at bob.smith@gmail.com");
        assert_eq!(get(&s, "email").map(|x| x.detail), Some("free_mail"));
        assert!(get(&s, "company_domain").is_none());
    }

    #[test]
    fn seats_phone_and_domains() {
        let s = extract("We'd need 40 seats. Call +44 20 7946 0958. Our site is www.globex.io");
        assert_eq!(get(&s, "seats").map(|x| x.value.as_str()), Some("40"));
        assert_eq!(
            get(&s, "phone").map(|x| x.value.as_str()),
            Some("+442079460958")
        );
        assert_eq!(
            get(&s, "company_domain").map(|x| x.value.as_str()),
            Some("globex.io")
        );
        let s = extract("pricing for 25 users, we're a 60-person team");
        assert_eq!(get(&s, "seats").map(|x| x.value.as_str()), Some("25"));
        assert_eq!(
            get(&s, "company_size").map(|x| x.value.as_str()),
            Some("60")
        );
    }

    #[test]
    fn ordinary_text_has_no_slots() {
        for t in [
            "Can you send us the pricing?",
            "Is it $960 per year for 1 seat?",
            "We use it in 2024 and it costs 80 dollars",
            "Are you SOC 2 Type II compliant?",
            "tell us more about the product",
        ] {
            let s = extract(t);
            assert!(s.iter().all(|x| x.name == "seats"), "{t}: {s:?}");
        }
    }

    #[test]
    fn timelines() {
        for (t, want) in [
            ("we want to roll out within 2 weeks", "within 2 weeks"),
            ("budget is approved for next quarter", "next quarter"),
            ("need it asap", "asap"),
            ("by end of the year hopefully", "by end of the year"),
        ] {
            assert_eq!(
                get(&extract(t), "timeline").map(|x| x.value.as_str()),
                Some(want),
                "{t}"
            );
        }
    }
}
