use super::*;

/// The demo tenant's seed facts, as the guard sees them: answers only, plus the names.
fn seat_evidence() -> Evidence {
    Evidence::new([
        "Each seat costs $80 per user per month billed monthly, or $960 per user per year billed annually.",
        "Applinks is SOC 2 Type II compliant; the audit report is shared under NDA.",
        "Chelsea Ward is the account owner for acme.com. chelsea.ward@applinks.example",
        "Every plan includes a 30-day money-back guarantee and 2 admin seats.",
        "Applinks integrates with Salesforce and HubSpot only; Pipedrive is not supported.",
        "Applinks",
    ])
}

fn passes(e: &Evidence, s: &str) {
    assert!(e.unsupported(s).is_empty(), "{s}: {:?}", e.unsupported(s));
}

fn fails(e: &Evidence, s: &str) {
    assert!(!e.unsupported(s).is_empty(), "{s} was released");
}

#[test]
fn grounded_sentences_pass() {
    let e = seat_evidence();
    for s in [
        "Each seat costs $80 per user per month billed monthly, or $960.00 per user per year billed annually.",
        "A seat is $80 a month, or $960 a year.",
        "Applinks is SOC 2 Type II compliant.",
        "Applinks is SOC 2 compliant.",
        "Chelsea Ward is the account owner for acme.com.",
        "Your account owner is Chelsea Ward (chelsea.ward@applinks.example).",
        "Every plan has a 30-day money-back guarantee.",
        "Every plan includes two admin seats.",
        "Pipedrive is not supported.",
        "Applinks integrates with Salesforce and HubSpot.",
    ] {
        passes(&e, s);
    }
}

#[test]
fn invented_prices_discounts_and_arithmetic_are_caught() {
    let e = seat_evidence();
    for s in [
        "Yes, Applinks offers a 50% discount for startups.",
        "10 users would cost $800 per month.",
        "Each seat costs €80 per month.",
        "We are also ISO 27001 certified.",
        "Your rep is Bob Smith.",
        "Contact sales@evil.example for a deal.",
        "See https://evil.example/deal for details.",
        "Startups get half off.",
    ] {
        fails(&e, s);
    }
}

/// A bound no fact sets is a claim: the number it bounds may be the fact's own (a Calendly
/// tenant's fact: the price drops above 30 seats; the generator: "a maximum of 30 seats").
#[test]
fn a_bound_no_fact_sets_is_caught() {
    let e = Evidence::new([
        "On a Teams plan billed annually, the per-seat price goes down once the organization has more than 30 seats.",
        "Enterprise starts at $15,000 per year and has a 5-day limit on refunds.",
    ]);
    for s in [
        "Yes, there is a maximum of 30 seats on a Teams plan.",
        "A Teams plan needs a minimum of 30 seats.",
        "Teams is capped at 30 seats.",
        "Enterprise needs at least 30 seats.",
    ] {
        fails(&e, s);
    }
    passes(
        &e,
        "The per-seat price goes down once the organization has more than 30 seats.",
    );
    passes(&e, "Enterprise has a 5-day limit on refunds.");
}

// Each bypass of issue 28, one test: all of them passed the token-bag guard.

#[test]
fn units_and_magnitudes_count() {
    let e = seat_evidence();
    fails(&e, "Startups get 80 per cent off.");
    fails(&e, "Startups get 80 percent off.");
    fails(&e, "A seat costs $80k.");
    fails(&e, "A seat costs 960 euros a year.");
    fails(&e, "A seat costs €960 a year.");
}

#[test]
fn number_words_are_numbers() {
    let e = seat_evidence();
    fails(&e, "Startups get eighty percent off.");
    fails(&e, "You can add twenty-five admin seats for free.");
    fails(&e, "Nonprofits get a third off.");
    passes(&e, "Each seat costs eighty dollars per user per month.");
}

#[test]
fn numbers_are_matched_with_their_period_and_noun() {
    let e = seat_evidence();
    fails(&e, "Each seat costs $960 per user per month.");
    fails(&e, "Each seat costs $80 per user per year.");
    fails(&e, "There is a 30-minute onboarding call.");
    fails(&e, "You get two months free.");
    fails(&e, "You get 2 months free.");
    let e = Evidence::new([
        "It cannot pay US contractors, cannot be used with approvals on, and needs direct deposit.",
        "Gusto",
    ]);
    fails(
        &e,
        "It can pay US contractors, cannot be used with approvals on, and needs direct deposit.",
    );
    let e = Evidence::new([
        "It includes 3 users and up to 5,000 invoices a year.",
        "Zoho",
    ]);
    fails(&e, "It includes 3 users and up to 5,000 invoices a month.");
    passes(&e, "It allows 5,000 invoices a year and 3 users.");
    let e = Evidence::new([
        "Contractors count only in a month in which they are paid.",
        "Gusto",
    ]);
    fails(
        &e,
        "Contractors count only in a year in which they are paid.",
    );
}

#[test]
fn certification_levels_are_read() {
    let e = seat_evidence();
    fails(&e, "Applinks is SOC 2 Type I compliant.");
    fails(&e, "Applinks is SOC 1 compliant.");
    fails(&e, "Applinks is SOC II Type 1 certified.");
    passes(&e, "Applinks is SOC II Type 2 compliant.");
}

#[test]
fn names_count_anywhere_in_a_sentence() {
    let e = seat_evidence();
    fails(&e, "Bob will be your account owner.");
    fails(&e, "Maria is the account owner for acme.com.");
    fails(
        &e,
        "Applinks integrates with Pipedrive, Zoho and Salesforce.",
    );
}

#[test]
fn standards_are_read_in_any_case() {
    let e = seat_evidence();
    fails(&e, "Applinks is hipaa compliant.");
    fails(&e, "Applinks is also gdpr and fedramp certified.");
}

#[test]
fn emails_and_urls_are_whole_tokens() {
    let e = seat_evidence();
    fails(&e, "Write to a.ward@applinks.example.");
    fails(&e, "Write to ward@applinks.example.");
    fails(&e, "See www.applinks.example/pricing.");
    fails(&e, "Visit cme.com for details.");
}

#[test]
fn polarity_is_checked_against_the_fact() {
    let e = seat_evidence();
    fails(&e, "Applinks is not SOC 2 compliant.");
    fails(&e, "Yes, Applinks supports Pipedrive.");
    fails(&e, "Pipedrive is supported.");
    fails(&e, "No, the audit report is not shared.");
    let e = Evidence::new([
        "Applinks integrates with Salesforce and HubSpot.",
        "Applinks",
    ]);
    fails(&e, "Applinks integrates only with Salesforce and HubSpot.");
    let e = Evidence::new([
        "Gusto does not accept credit cards for its subscription or for payroll; invoices are debited from the company's bank account.",
        "Gusto",
    ]);
    fails(&e, "Gusto does accept credit cards for its subscription or for payroll; invoices are debited from the company's bank account.");
    // A clause too short to find its fact sentence alone is read with its whole sentence
    // (released by the adversarial corpus of a tenant the guard had never seen, 2026-12-07).
    let e = Evidence::new([
        "Profiling can only be paid for from the pay-as-you-go budget; it cannot be reserved.",
        "Sentry",
    ]);
    fails(
        &e,
        "Profiling can only be paid for from the pay-as-you-go budget; it can be reserved.",
    );
    passes(
        &e,
        "Profiling can only be paid for from the pay-as-you-go budget; it cannot be reserved.",
    );
}

#[test]
fn tags_and_a_facts_question_are_not_evidence() {
    // What a turn builds: the answer only, though the fact's question and tags name more.
    let e = Evidence::new([
        "Applinks integrates with Salesforce and HubSpot only.",
        "Applinks",
    ]);
    fails(&e, "Applinks integrates with Pipedrive.");
    fails(&e, "Yes, Applinks can work with Pipedrive.");
}

#[test]
fn the_visitors_premise_restated_is_caught_even_within_the_new_word_allowance() {
    let fact = "The mobile app syncs vault data across all of your devices.";
    let mut e = Evidence::new([fact, "Applinks"]);
    let restated =
        "The mobile app also works offline and syncs vault data across all of your devices.";
    // Two new words of eleven: within the allowance when nobody asked about them.
    passes(&e, restated);
    e.asked("does the app work offline??");
    fails(&e, restated);
    passes(&e, fact);
    passes(&e, "The mobile app syncs your vault data across devices.");
}

#[test]
fn prose_the_facts_do_not_state_is_caught() {
    let e = Evidence::new([
        "Bank accounts can be paid by ACH direct debit; credit cards are not accepted.",
        "Applinks",
    ]);
    fails(
        &e,
        "To pay, choose a card on the billing page and enter your credit or debit card details.",
    );
    passes(&e, "Credit cards are not accepted.");
}

#[test]
fn splitter_keeps_amounts_and_releases_whole_sentences() {
    let mut sp = SentenceSplitter::default();
    let mut got = vec![];
    for piece in [
        "Each seat ",
        "costs $9",
        ".50 a month",
        ". Applinks is ",
        "SOC 2 compliant",
        ".",
    ] {
        got.extend(sp.push(piece));
    }
    got.extend(sp.finish());
    assert_eq!(
        got,
        [
            "Each seat costs $9.50 a month.",
            "Applinks is SOC 2 compliant."
        ]
    );
}

/// Seen in the answer evaluation (a tuning tenant): every word of the sentence is in the fact,
/// and it says the opposite of it.
#[test]
fn a_comparison_the_wrong_way_round_or_made_by_no_fact_is_caught() {
    let e = Evidence::new([
        "Paying yearly lowers the monthly rate on every Essentials plan: Standard drops from $39 to $29 a month, Plus from $105 to $79, and Pro from $399 to $299.",
        "Premium and higher plans get 1,000 autoscans a month.",
    ]);
    fails(
        &e,
        "Pro plans offer lower monthly rates compared to yearly plans.",
    );
    fails(
        &e,
        "Monthly billing lowers the yearly rate on every Essentials plan.",
    );
    fails(&e, "The Plus plan is cheaper than Pro.");
    passes(
        &e,
        "Paying yearly lowers the monthly rate on every Essentials plan.",
    );
    passes(&e, "Premium and higher plans get 1,000 autoscans a month.");
}
