//! A conversation's full transcript: every visitor, bot and rep message in order, each visitor
//! message with the intents detected in it.

use closer_store::{Author, Store};

use crate::error::{Error, Result};

/// One message of a transcript.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub turn: u32,
    pub author: Author,
    pub text: String,
    pub at_ms: i64,
    /// Visitor messages: the intents detected in them, in order (empty for bot and rep
    /// messages, and for turns recorded before intents were kept per turn).
    pub intents: Vec<String>,
}

/// The transcript of `conversation_id`; `NotFound` when the conversation has no message.
pub fn transcript(store: &dyn Store, tenant: &str, conversation_id: &str) -> Result<Vec<Line>> {
    let messages = store.transcript(tenant, conversation_id)?;
    if messages.is_empty() {
        return Err(Error::NotFound(format!(
            "no conversation {conversation_id:?} with messages"
        )));
    }
    let mut intents = store.turn_intents(tenant, conversation_id)?;
    Ok(messages
        .into_iter()
        .map(|m| Line {
            intents: match m.author {
                Author::Visitor => intents.remove(&m.turn).unwrap_or_default(),
                Author::Bot | Author::Rep => vec![],
            },
            turn: m.turn,
            author: m.author,
            text: m.text,
            at_ms: m.at_ms,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use closer_store::sqlite::SqliteStore;
    use closer_store::{Message, TurnWrite};

    use super::*;

    fn said(turn: u32, author: Author, text: &str) -> Message {
        Message {
            turn,
            author,
            text: text.into(),
            at_ms: 1000,
        }
    }

    #[test]
    fn every_message_in_order_with_each_visitor_turns_intents() {
        let s = SqliteStore::in_memory().unwrap();
        for (turn, q, a, detected) in [
            (
                1,
                "price? soc2?",
                "It is $80 a seat.",
                vec!["pricing", "security"],
            ),
            (2, "thanks", "You're welcome.", vec!["out_of_scope"]),
        ] {
            let w = TurnWrite {
                tenant: "t".into(),
                conversation_id: "c".into(),
                messages: vec![said(turn, Author::Visitor, q), said(turn, Author::Bot, a)],
                detected: detected.into_iter().map(String::from).collect(),
                ..Default::default()
            };
            s.record_turn(&w, &|_| vec![]).unwrap();
        }
        s.append_messages("t", "c", &[said(0, Author::Rep, "Hi, Chelsea here.")], &[])
            .unwrap();
        let lines = transcript(&s, "t", "c").unwrap();
        let got: Vec<(u32, Author, &str, Vec<&str>)> = lines
            .iter()
            .map(|l| {
                let i = l.intents.iter().map(String::as_str).collect();
                (l.turn, l.author, l.text.as_str(), i)
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    1,
                    Author::Visitor,
                    "price? soc2?",
                    vec!["pricing", "security"]
                ),
                (1, Author::Bot, "It is $80 a seat.", vec![]),
                (2, Author::Visitor, "thanks", vec!["out_of_scope"]),
                (2, Author::Bot, "You're welcome.", vec![]),
                (2, Author::Rep, "Hi, Chelsea here.", vec![]),
            ]
        );
        let missing = transcript(&s, "t", "nope").unwrap_err();
        assert!(matches!(missing, Error::NotFound(_)), "{missing}");
        assert!(
            transcript(&s, "other", "c").is_err(),
            "another tenant sees nothing"
        );
    }
}
