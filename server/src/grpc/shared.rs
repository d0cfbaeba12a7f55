#[allow(unused_imports)]
use super::prelude::*;

pub type R<T> = std::result::Result<Response<T>, Status>;

pub fn pb_lead(l: Lead) -> pb::Lead {
    pb::Lead {
        tenant: l.tenant,
        conversation_id: l.conversation_id,
        domain: l.domain,
        email: l.email,
        score: l.score,
        bot_score: l.bot_score,
        reasons: l
            .reasons
            .into_iter()
            .map(|r| pb::ScoreReason {
                rule: r.rule,
                turn: r.turn,
                detail: r.detail,
                points: r.points,
            })
            .collect(),
        manual: l.manual.map(|m| pb::ManualScore {
            score: m.score,
            rep_id: m.rep_id,
            note: m.note,
            at_ms: m.at_ms,
        }),
        rep_id: l.rep_id,
        team: l.team,
        slots: l.slots.into_iter().collect(),
        turns: l.turns,
        created_ms: l.created_ms,
        updated_ms: l.updated_ms,
    }
}

pub fn check_id(field: &str, v: &str) -> Result<()> {
    if v.trim().is_empty() || v.chars().count() > 128 {
        return Err(Error::invalid(field, "must be 1 to 128 characters"));
    }
    Ok(())
}
