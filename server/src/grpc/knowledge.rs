//! `closer.v1.Knowledge`: search, ingest, list, delete and export a tenant's facts.

#[allow(unused_imports)]
use super::common::prelude::*;

pub struct KnowledgeService {
    pub state: Arc<AppState>,
}

#[tonic::async_trait]
impl pb::knowledge_server::Knowledge for KnowledgeService {
    async fn search(
        &self,
        request: Request<pb::SearchRequest>,
    ) -> std::result::Result<Response<pb::SearchResponse>, Status> {
        let engine = self.state.engine()?;
        let req = request.into_inner();
        check_tenant_field(&req.tenant)?;
        check_text(self.state.config.max_message_chars, "query", &req.query)?;
        if req.limit > 50 {
            return Err(Error::invalid("limit", "must be 0 to 50").into());
        }
        let limit = if req.limit == 0 {
            5
        } else {
            req.limit as usize
        };
        let tenant = engine.tenant(&req.tenant).api()?;
        let hits =
            blocking(move || tenant.kb.search(&req.query, limit, req.intent.as_deref())).await?;
        let facts = hits
            .into_iter()
            .map(|h| pb::ScoredFact {
                fact: Some(pb_fact(h.fact)),
                score: h.score,
                bm25: h.bm25,
                dense: h.dense,
            })
            .collect();
        Ok(Response::new(pb::SearchResponse { facts }))
    }

    async fn ingest(
        &self,
        request: Request<Streaming<pb::IngestChunk>>,
    ) -> std::result::Result<Response<pb::IngestSummary>, Status> {
        let started = std::time::Instant::now();
        let engine = self.state.engine()?;
        let mut inbound = request.into_inner();
        let mut tenant_id = String::new();
        // Files in arrival order, chunks concatenated.
        let mut files: Vec<(String, Vec<u8>)> = vec![];
        let mut total = 0usize;
        while let Some(chunk) = inbound.message().await? {
            if tenant_id.is_empty() {
                check_tenant_field(&chunk.tenant)?;
                tenant_id = chunk.tenant;
            } else if !chunk.tenant.is_empty() && chunk.tenant != tenant_id {
                return Err(Error::invalid("tenant", "changed within one ingest stream").into());
            }
            if chunk.file_name.trim().is_empty() || chunk.file_name.len() > 256 {
                return Err(Error::invalid("file_name", "must be 1 to 256 characters").into());
            }
            total += chunk.data.len();
            if total > MAX_INGEST_BYTES {
                return Err(Error::Overloaded(format!(
                    "more than {MAX_INGEST_BYTES} bytes in one ingest"
                ))
                .into());
            }
            match files.iter_mut().find(|(n, _)| *n == chunk.file_name) {
                Some((_, data)) => data.extend_from_slice(&chunk.data),
                None => files.push((chunk.file_name, chunk.data)),
            }
        }
        if tenant_id.is_empty() {
            return Err(Error::invalid("tenant", "no chunks were sent").into());
        }
        let tenant = engine.tenant(&tenant_id).api()?;
        let summary = blocking(move || -> Result<(closer_kb::BatchSummary, usize)> {
            let mut parsed = closer_kb::load::Files::default();
            for (name, data) in &files {
                parsed.add(name, data)?;
            }
            let n = parsed.files;
            let batch = closer_kb::Batch {
                facts: parsed.facts,
                accounts: parsed.accounts,
                reps: parsed.reps,
                ..Default::default()
            };
            // On a shared database the other replicas follow.
            Ok((closer_sales::shared::ingest(&engine, &tenant, batch)?, n))
        })
        .await?;
        let (s, files) = summary;
        tracing::info!(tenant = %tenant_id, files, facts = s.facts_upserted, accounts = s.accounts_upserted, reps = s.reps_upserted, "ingested");
        Ok(Response::new(pb::IngestSummary {
            files: files as u32,
            facts_upserted: s.facts_upserted as u32,
            accounts_upserted: s.accounts_upserted as u32,
            reps_upserted: s.reps_upserted as u32,
            facts_embedded: s.facts_embedded as u32,
            facts_pending_vectors: s.facts_pending as u32,
            took_ms: started.elapsed().as_millis() as u32,
        }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> std::result::Result<Response<pb::DeleteResponse>, Status> {
        let engine = self.state.engine()?;
        let req = request.into_inner();
        check_tenant_field(&req.tenant)?;
        if req.fact_ids.is_empty() || req.fact_ids.len() > 10_000 {
            return Err(Error::invalid("fact_ids", "give 1 to 10000 ids").into());
        }
        let tenant = engine.tenant(&req.tenant).api()?;
        let s = blocking(move || {
            let batch = closer_kb::Batch {
                delete_fact_ids: req.fact_ids,
                ..Default::default()
            };
            closer_sales::shared::ingest(&engine, &tenant, batch)
        })
        .await?;
        Ok(Response::new(pb::DeleteResponse {
            deleted: s.facts_deleted as u32,
        }))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> std::result::Result<Response<pb::ListResponse>, Status> {
        let engine = self.state.engine()?;
        let req = request.into_inner();
        check_tenant_field(&req.tenant)?;
        let kb = engine.tenant(&req.tenant).api()?.kb.snapshot();
        let mut out = pb::ListResponse::default();
        match pb::ListWhat::try_from(req.what) {
            Ok(pb::ListWhat::Unspecified | pb::ListWhat::Facts) => {
                let (a, b, next) = page(&req.page_token, req.page_size, kb.facts().len())?;
                out.facts = kb.facts()[a..b].iter().cloned().map(pb_fact).collect();
                out.total = kb.facts().len() as u32;
                out.next_page_token = next;
            }
            Ok(pb::ListWhat::Accounts) => {
                let all = kb.accounts();
                let (a, b, next) = page(&req.page_token, req.page_size, all.len())?;
                out.accounts = all[a..b]
                    .iter()
                    .map(|x| pb::Account {
                        domain: x.domain.clone(),
                        name: x.name.clone(),
                        owner_rep_id: x.owner_rep_id.clone(),
                        segment: x.segment.clone(),
                        employees: x.employees,
                        industry: x.industry.clone(),
                        country: x.country.clone(),
                        target: x.target,
                        open_opportunity: x.open_opportunity,
                    })
                    .collect();
                out.total = all.len() as u32;
                out.next_page_token = next;
            }
            Ok(pb::ListWhat::Reps) => {
                let all = kb.reps();
                let (a, b, next) = page(&req.page_token, req.page_size, all.len())?;
                out.reps = all[a..b]
                    .iter()
                    .map(|r| pb::Rep {
                        id: r.id.clone(),
                        name: r.name.clone(),
                        email: r.email.clone(),
                        team: r.team.clone(),
                        region: r.region.clone(),
                        languages: r.languages.clone(),
                        timezone: r.timezone.clone(),
                        working_hours: r.working_hours.clone(),
                        meeting_link: r.meeting_link.clone(),
                    })
                    .collect();
                out.total = all.len() as u32;
                out.next_page_token = next;
            }
            Err(_) => {
                return Err(Error::invalid("what", format!("unknown value {}", req.what)).into())
            }
        }
        Ok(Response::new(out))
    }

    async fn export(
        &self,
        request: Request<pb::ExportRequest>,
    ) -> std::result::Result<Response<pb::ExportResponse>, Status> {
        let engine = self.state.engine()?;
        let req = request.into_inner();
        check_tenant_field(&req.tenant)?;
        let kb = engine.tenant(&req.tenant).api()?.kb.snapshot();
        let facts = kb.facts();
        let content = match pb::ExportFormat::try_from(req.format) {
            Ok(pb::ExportFormat::Unspecified | pb::ExportFormat::Csv) => {
                closer_kb::formats::facts_to_csv(facts).map_err(Error::from)?
            }
            Ok(pb::ExportFormat::Jsonl) => closer_kb::formats::facts_to_jsonl(facts),
            Err(_) => {
                return Err(
                    Error::invalid("format", format!("unknown value {}", req.format)).into(),
                )
            }
        };
        Ok(Response::new(pb::ExportResponse {
            content,
            facts: facts.len() as u32,
        }))
    }
}

/// Largest total upload accepted by one `Knowledge.Ingest` call.
pub const MAX_INGEST_BYTES: usize = 256 << 20;
