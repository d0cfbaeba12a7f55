//! `closer.v1.Leads`: a lead, a page of leads, a rep's manual score, and form-to-chat.

#[allow(unused_imports)]
use super::common::prelude::*;

pub struct LeadsService {
    pub state: Arc<AppState>,
}

#[tonic::async_trait]
impl pb::leads_server::Leads for LeadsService {
    async fn get(&self, request: Request<pb::GetLeadRequest>) -> R<pb::Lead> {
        let engine = self.state.engine()?;
        let req = request.into_inner();
        check_tenant_field(&req.tenant)?;
        check_id("conversation_id", &req.conversation_id)?;
        engine.tenant(&req.tenant).api()?;
        let lead = blocking(move || engine.store.lead(&req.tenant, &req.conversation_id))
            .await?
            .ok_or_else(|| Error::not_found("no lead for that conversation"))?;
        Ok(Response::new(pb_lead(lead)))
    }

    async fn get_transcript(
        &self,
        request: Request<pb::GetTranscriptRequest>,
    ) -> R<pb::Transcript> {
        let engine = self.state.engine()?;
        let req = request.into_inner();
        check_tenant_field(&req.tenant)?;
        check_id("conversation_id", &req.conversation_id)?;
        engine.tenant(&req.tenant).api()?;
        let (tenant, id) = (req.tenant.clone(), req.conversation_id.clone());
        let lines =
            blocking(move || closer_sales::transcript::transcript(&*engine.store, &tenant, &id))
                .await?;
        Ok(Response::new(pb::Transcript {
            tenant: req.tenant,
            conversation_id: req.conversation_id,
            messages: lines.into_iter().map(pb_transcript_message).collect(),
        }))
    }

    async fn list(&self, request: Request<pb::ListLeadsRequest>) -> R<pb::ListLeadsResponse> {
        let engine = self.state.engine()?;
        let req = request.into_inner();
        check_tenant_field(&req.tenant)?;
        engine.tenant(&req.tenant).api()?;
        if req.page_size > 500 {
            return Err(Error::invalid("page_size", "must be 0 to 500").into());
        }
        let offset: usize = if req.page_token.is_empty() {
            0
        } else {
            req.page_token
                .parse()
                .map_err(|_| Error::invalid("page_token", "not a token from a previous response"))?
        };
        let limit = if req.page_size == 0 {
            100
        } else {
            req.page_size as usize
        };
        let f = LeadFilter {
            tenant: req.tenant,
            min_score: req.min_score,
            max_score: req.max_score,
            rep_id: req.rep_id,
            team: req.team,
            since_ms: req.since_ms,
            until_ms: req.until_ms,
            limit,
            offset,
        };
        let (leads, total) = blocking(move || engine.store.leads(&f)).await?;
        let next = offset + leads.len();
        Ok(Response::new(pb::ListLeadsResponse {
            next_page_token: if next < total {
                next.to_string()
            } else {
                String::new()
            },
            total: total as u32,
            leads: leads.into_iter().map(pb_lead).collect(),
        }))
    }

    async fn set_score(&self, request: Request<pb::SetScoreRequest>) -> R<pb::Lead> {
        let engine = self.state.engine()?;
        let req = request.into_inner();
        check_tenant_field(&req.tenant)?;
        check_id("conversation_id", &req.conversation_id)?;
        check_id("rep_id", &req.rep_id)?;
        let tenant = engine.tenant(&req.tenant).api()?;
        if tenant.kb.snapshot().rep(&req.rep_id).is_none() {
            return Err(Error::invalid("rep_id", format!("no rep {:?}", req.rep_id)).into());
        }
        if !req.clear && !matches!(req.score, -1 | 1..=3) {
            return Err(Error::invalid(
                "score",
                "-1 (disqualified) or 1 to 3 bolts; use clear to remove a manual score",
            )
            .into());
        }
        if req.note.chars().count() > 2000 {
            return Err(Error::invalid("note", "at most 2000 characters").into());
        }
        let manual = (!req.clear).then(|| ManualScore {
            score: req.score,
            rep_id: req.rep_id.clone(),
            note: req.note.clone(),
            at_ms: closer_store::now_ms(),
        });
        let e2 = engine.clone();
        let (lead, events) = blocking(move || {
            let before = e2
                .store
                .lead(&req.tenant, &req.conversation_id)?
                .map(|l| l.score)
                .unwrap_or(0);
            e2.store
                .set_manual_score(&req.tenant, &req.conversation_id, manual, &|lead| {
                    vec![closer_sales::turn::commit::cql_event(
                        &req.tenant,
                        &req.conversation_id,
                        lead,
                        before,
                    )]
                })
        })
        .await?;
        closer_store::bus::publish_events(&*engine.bus, &events);
        Ok(Response::new(pb_lead(lead)))
    }

    async fn qualify_form(
        &self,
        request: Request<pb::QualifyFormRequest>,
    ) -> R<pb::QualifyFormResponse> {
        let engine = self.state.engine()?;
        let req = request.into_inner();
        check_tenant_field(&req.tenant)?;
        check_id("idempotency_key", &req.idempotency_key)?;
        if req.fields.is_empty() || req.fields.len() > 100 {
            return Err(Error::invalid("fields", "1 to 100 fields").into());
        }
        for (k, v) in &req.fields {
            if k.is_empty() || k.len() > 64 || v.chars().count() > 4000 {
                return Err(Error::invalid(
                    &format!("fields[{k}]"),
                    "names of 1 to 64 bytes, values of at most 4000 characters",
                )
                .into());
            }
        }
        let tenant = engine.tenant(&req.tenant).api()?;
        crate::auth::check_origin(&tenant.id, &tenant.kb.profile.allowed_origins)?;
        let out = blocking(move || {
            closer_sales::qualify::qualify(&engine, &tenant, &req.idempotency_key, &req.fields)
        })
        .await?;
        Ok(Response::new(form_outcome(out)))
    }
}

fn form_outcome(o: closer_sales::qualify::FormOutcome) -> pb::QualifyFormResponse {
    use closer_sales::qualify::NextStep;
    pb::QualifyFormResponse {
        lead: o.lead.map(pb_lead),
        next_step: match o.next_step {
            NextStep::ChatNow => pb::NextStep::ChatNow,
            NextStep::OfferMeeting => pb::NextStep::OfferMeeting,
            NextStep::Nurture => pb::NextStep::Nurture,
            NextStep::Disqualified => pb::NextStep::Disqualified,
        } as i32,
        rep_id: o.rep_id,
        rep_name: o.rep_name,
        team: o.team,
        reps: o.reps,
        message: o.message,
    }
}
