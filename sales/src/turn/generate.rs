//! The generate phase: the local LLM writes the reply from the cited facts only, and each
//! sentence is released only after the guard found every claim in it backed; a failing sentence
//! gives way to the closest fact's authored answer. Facts the model left out are appended in the
//! team's own words.

use std::ops::ControlFlow;

use closer_kb::Account;
use closer_models::GenerationRequest;

use super::control::{TurnControl, TurnSettings};
use super::events::TurnEvent;
use super::plan::Cited;
use crate::engine::{Engine, Tenant};
use crate::error::{Error, Result};
use crate::guard::{claims, Claim, Evidence, SentenceSplitter};

/// The reply as released so far.
#[derive(Debug, Default)]
pub struct Reply {
    /// Released sentences, in order.
    sentences: Vec<String>,
    /// Whether the guard dropped or replaced anything.
    pub guard_replaced: bool,
    /// Each released sentence's words, lowercase, one space apart and padded with one at each
    /// end (what a repeat is looked for in).
    said: Vec<String>,
}

/// A sentence's words, lowercase, one space apart: spacing, case and punctuation aside.
fn words(x: &str) -> String {
    x.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

impl Reply {
    pub fn text(&self) -> String {
        self.sentences.join(" ")
    }

    /// Releases a sentence to the visitor. `Break`: the client is gone.
    pub fn send(
        &mut self,
        s: &str,
        turn: u32,
        emit: &mut dyn FnMut(TurnEvent) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        // The model sometimes repeats a sentence; a fact may be appended that it already said.
        // Compared by their words, so a repeat that differs in spacing, case or punctuation
        // is dropped too; so is a sentence whose words all stand, in order, inside one said.
        let key = format!(" {} ", words(s));
        // A list's bare number ("2.") or a lone symbol is no sentence.
        let wordless = !s
            .split(|c: char| !c.is_alphabetic())
            .any(|w| w.chars().count() >= 2);
        if wordless || self.said.iter().any(|x| x.contains(&key)) {
            return ControlFlow::Continue(());
        }
        let text = if self.sentences.is_empty() {
            s.to_string()
        } else {
            format!(" {s}")
        };
        self.sentences.push(s.to_string());
        self.said.push(key);
        emit(TurnEvent::Delta { turn, text })
    }

    /// Releases an authored text sentence by sentence, so none of its sentences is said twice.
    pub fn send_all(
        &mut self,
        text: &str,
        turn: u32,
        emit: &mut dyn FnMut(TurnEvent) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        let mut split = SentenceSplitter::default();
        let mut parts = split.push(text);
        parts.extend(split.finish());
        for part in parts {
            self.send(&part, turn, emit)?;
        }
        ControlFlow::Continue(())
    }
}

/// The guard over one generated reply.
struct Guarded<'a> {
    cited: &'a [Cited],
    evidence: Evidence,
    instructions: &'a str,
    tenant: &'a str,
    /// Facts already used in place of a failing sentence.
    replaced_with: Vec<String>,
}

impl Guarded<'_> {
    /// Checks one generated sentence and releases it, its replacement, or nothing.
    fn handle(
        &mut self,
        sentence: String,
        reply: &mut Reply,
        turn: u32,
        emit: &mut dyn FnMut(TurnEvent) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        if leaks_prompt(&sentence, self.instructions) {
            reply.guard_replaced = true;
            tracing::info!(tenant = %self.tenant, "guard dropped a sentence that recites the prompt");
            return ControlFlow::Continue(());
        }
        let bad = self.evidence.unsupported(&sentence);
        if bad.is_empty() {
            return reply.send(&sentence, turn, emit);
        }
        reply.guard_replaced = true;
        tracing::info!(tenant = %self.tenant, unsupported = ?bad.iter().map(ToString::to_string).collect::<Vec<_>>(), "guard replaced a sentence");
        // The authored answer closest to what the sentence tried to say, once.
        let best = self
            .cited
            .iter()
            .filter(|c| !self.replaced_with.contains(&c.id))
            .max_by_key(|c| overlap(&sentence, &c.answer));
        match best {
            Some(c) if overlap(&sentence, &c.answer) > 0 => {
                self.replaced_with.push(c.id.clone());
                reply.send_all(&without_yes_no(&c.answer), turn, emit)
            }
            _ => ControlFlow::Continue(()),
        }
    }
}

/// Generates the answer to `clauses` from `cited` (non-empty) under the guard, then states in
/// the team's words whatever the model left out. `Ok(None)`: the client went away.
#[allow(clippy::too_many_arguments)]
pub fn generate_answer(
    engine: &Engine,
    tenant: &Tenant,
    settings: &TurnSettings,
    ctl: &TurnControl<'_>,
    cited: &[Cited],
    clauses: &[String],
    account: Option<&Account>,
    turn: u32,
    emit: &mut dyn FnMut(TurnEvent) -> ControlFlow<()>,
) -> Result<Option<Reply>> {
    let mut evidence = Evidence::new(cited.iter().map(|c| c.evidence.as_str()));
    evidence.add(&tenant.kb.profile.company);
    for n in &tenant.kb.profile.names {
        evidence.add(n);
    }
    for c in clauses {
        evidence.asked(c);
    }
    let owner_cited = cited.iter().any(Cited::is_account);
    let instructions = instructions(&tenant.kb.profile.company, account.filter(|_| owner_cited));
    let request = GenerationRequest {
        system: system_prompt(&instructions, cited),
        user: clauses.join(" "),
        max_tokens: settings.max_new_tokens,
        share: tenant.id.clone(),
        background: ctl.background,
    };
    let mut guard = Guarded {
        cited,
        evidence,
        instructions: &instructions,
        tenant: &tenant.kb.profile.id,
        replaced_with: vec![],
    };
    let mut reply = Reply::default();
    let mut splitter = SentenceSplitter::default();
    let (mut stopped, mut gone) = (None, false);
    let slot = ctl
        .gate
        .acquire(&tenant.id, ctl.stop)
        .map_err(Error::Stopped)?;
    let result = engine.models.generator.generate(&request, &mut |piece| {
        if let Some(why) = (ctl.stop)() {
            stopped = Some(why);
            return ControlFlow::Break(());
        }
        for s in splitter.push(piece) {
            if guard.handle(s, &mut reply, turn, emit).is_break() {
                gone = true;
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    })?;
    drop(slot);
    if let Some(why) = stopped {
        return Err(Error::Stopped(why));
    }
    if gone {
        return Ok(None);
    }
    // What is left unfinished when generation stopped (the token limit, mid-sentence) is cut
    // off: it is dropped, and a fact it began is stated below in the team's words.
    if let Some(s) = splitter
        .finish()
        .filter(|s| s.ends_with(['.', '!', '?', ')']))
    {
        if guard.handle(s, &mut reply, turn, emit).is_break() {
            return Ok(None);
        }
    }
    tracing::debug!(
        prompt_tokens = result.prompt_tokens,
        reused_prompt_tokens = result.reused_prompt_tokens,
        generated = result.generated_tokens,
        ttft_ms = result.time_to_first_token_ms,
        "generated"
    );
    // Whatever the model left out is stated in the team's own words.
    let said: Vec<Claim> = reply.sentences.iter().flat_map(|s| claims(s)).collect();
    // Stated on its own, a fact's "Yes." or "No." answers the fact's question, not
    // necessarily the visitor's: it goes (the generated part carries yes/no under the guard).
    for c in cited {
        let own = without_yes_no(&c.answer);
        if reply.sentences.contains(&own) || is_stated(c, &reply.text(), &said) {
            continue;
        }
        // Sentence by sentence, so a sentence the model already said is not said twice.
        if reply.send_all(&own, turn, emit).is_break() {
            return Ok(None);
        }
    }
    Ok(Some(reply))
}

/// A fact's answer without its opening "Yes." / "No," (the answer to the fact's own question):
/// the rest of a short first sentence goes too ("Yes, if you use Stripe."), and the text starts
/// with a capital.
pub fn without_yes_no(answer: &str) -> String {
    let t = answer.trim_start();
    let rest = ["Yes", "No"].iter().find_map(|opener| {
        t.strip_prefix(opener)
            .and_then(|r| r.strip_prefix(['.', ',', '!', ';']))
            .map(str::trim_start)
            .filter(|r| !r.is_empty())
    });
    let Some(mut rest) = rest else {
        return t.to_string();
    };
    if let Some((first, after)) = rest.split_once(". ") {
        if first.split_whitespace().count() < 5 && !after.trim().is_empty() {
            rest = after.trim_start();
        }
    }
    let mut c = rest.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// True when the reply already states this fact: all its amounts and names, and at least half of
/// its other checkable details (or, for a fact with none, three in five of its content words).
fn is_stated(fact: &Cited, reply: &str, reply_claims: &[Claim]) -> bool {
    let fact_claims = claims(&fact.answer);
    if fact_claims.is_empty() {
        // Nothing typed to compare: stated when most of its content words were said.
        let said = crate::coverage::content_terms(reply);
        let own = crate::coverage::content_terms(&fact.answer);
        let found = own.iter().filter(|w| said.contains(w)).count();
        return !own.is_empty() && found * 5 >= own.len() * 3;
    }
    let mut others = 0;
    let mut others_found = 0;
    for c in &fact_claims {
        let found = reply_claims.contains(c);
        match c {
            Claim::Money { .. } | Claim::Percent(_) | Claim::Name(_) if !found => return false,
            Claim::Money { .. } | Claim::Percent(_) | Claim::Name(_) => {}
            _ => {
                others += 1;
                others_found += usize::from(found);
            }
        }
    }
    others == 0 || others_found * 2 >= others
}

fn overlap(a: &str, b: &str) -> usize {
    let words = |s: &str| crate::coverage::content_terms(s);
    let bw = words(b);
    words(a).iter().filter(|w| bw.contains(w)).count()
}

/// The instructions part of the system prompt (facts follow it).
pub fn instructions(company: &str, account: Option<&Account>) -> String {
    let mut s = format!(
        "You are the website chat assistant of {company}. Answer the visitor in one to three short \
         sentences using only these facts:\n"
    );
    if let Some(a) = account {
        s = format!("{s}(The visitor works at {} ({}).)\n", a.name, a.domain);
    }
    s
}

/// The system prompt: the instructions, then one line per cited fact.
pub fn system_prompt(instructions: &str, cited: &[Cited]) -> String {
    let mut s = instructions.to_string();
    for c in cited {
        s.push_str(&format!("- {}\n", c.answer));
    }
    s
}

/// True when a sentence repeats five or more consecutive words of the instructions: the model is
/// reciting its prompt rather than answering.
fn leaks_prompt(sentence: &str, instructions: &str) -> bool {
    let words = |t: &str| -> Vec<String> {
        t.to_lowercase()
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect()
    };
    let (s, i) = (words(sentence), words(instructions));
    s.windows(5).any(|w| i.windows(5).any(|x| x == w))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seat() -> Cited {
        Cited {
            id: "pricing-seat".into(),
            answer: "Each seat costs $80 per user per month billed monthly, or $960 per user per year billed annually.".into(),
            evidence: String::new(),
            closest: false,
        }
    }

    /// The deltas a reply sends for `parts`: (text, whether as one authored answer).
    fn deltas(parts: &[(&str, bool)]) -> Vec<String> {
        let mut reply = Reply::default();
        let mut sent = vec![];
        let mut emit = |e: TurnEvent| {
            if let TurnEvent::Delta { text, .. } = e {
                sent.push(text);
            }
            ControlFlow::Continue(())
        };
        for &(text, authored) in parts {
            let _ = if authored {
                reply.send_all(text, 1, &mut emit)
            } else {
                reply.send(text, 1, &mut emit)
            };
        }
        sent
    }

    #[test]
    fn a_repeated_sentence_is_sent_once_whatever_its_spacing_or_case() {
        let sent = deltas(&[
            ("You can move to a paid plan at any time.", false),
            ("you can move to a paid plan  at any time", false),
            ("A trial lasts 14 days.", false),
        ]);
        assert_eq!(
            sent,
            [
                "You can move to a paid plan at any time.",
                " A trial lasts 14 days."
            ]
        );
    }

    #[test]
    fn an_authored_answer_goes_sentence_by_sentence_and_no_part_of_it_is_said_again() {
        let sent = deltas(&[
            (
                "Fees are billed in U.S. dollars. Sales tax is charged by state law.",
                true,
            ),
            ("Sales tax is charged by state law.", false),
            ("billed in U.S. dollars", false),
            ("Refunds are not given.", false),
            ("2.", false),
        ]);
        assert_eq!(
            sent,
            [
                "Fees are billed in U.S. dollars.",
                " Sales tax is charged by state law.",
                " Refunds are not given."
            ]
        );
    }

    #[test]
    fn a_fact_counts_as_stated_only_with_all_its_amounts() {
        let f = seat();
        let r = "A seat is $80 a month, or $960 a year.";
        assert!(is_stated(&f, r, &claims(r)));
        let r = "A seat is $80 a month.";
        assert!(!is_stated(&f, r, &claims(r)));
        let plain = Cited {
            answer: "You can cancel a yearly plan part-way and get a pro-rata refund.".into(),
            ..seat()
        };
        let r = "If you cancel a yearly plan part-way, you get a pro-rata refund.";
        assert!(is_stated(&plain, r, &claims(r)));
        assert!(!is_stated(&plain, "Cards are accepted.", &[]));
    }

    #[test]
    fn the_prompt_lists_the_facts_and_a_recited_prompt_is_caught() {
        let i = instructions("Applinks", None);
        let p = system_prompt(&i, &[seat()]);
        assert!(p.starts_with("You are the website chat assistant of Applinks."));
        assert!(p.ends_with("billed annually.\n"));
        assert!(leaks_prompt(
            "Answer the visitor in one to three short sentences.",
            &i
        ));
        assert!(!leaks_prompt("Each seat costs $80 per user per month.", &i));
    }

    #[test]
    fn a_closest_answer_loses_its_own_yes_or_no() {
        assert_eq!(
            without_yes_no("Yes. The Vendor Portal lets vendors upload documents."),
            "The Vendor Portal lets vendors upload documents."
        );
        assert_eq!(
            without_yes_no("No, API access starts at Standard."),
            "API access starts at Standard."
        );
        assert_eq!(
            without_yes_no("Nobody is charged twice."),
            "Nobody is charged twice."
        );
    }

    #[test]
    fn a_reply_separates_its_sentences_with_one_space() {
        let mut r = Reply::default();
        let mut seen = vec![];
        let mut emit = |e: TurnEvent| {
            if let TurnEvent::Delta { text, .. } = e {
                seen.push(text);
            }
            ControlFlow::Continue(())
        };
        let _ = r.send("One.", 1, &mut emit);
        let _ = r.send("Two.", 1, &mut emit);
        let _ = r.send("Two.", 1, &mut emit);
        assert_eq!(seen, vec!["One.".to_string(), " Two.".to_string()]);
        assert_eq!(r.text(), "One. Two.");
    }
}
