//! `closer.v1.Playbooks`: upload (validate and swap in) and read the playbook in force.

#[allow(unused_imports)]
use super::common::prelude::*;

pub struct PlaybooksService {
    pub state: Arc<AppState>,
}

fn summary(
    tenant: &str,
    p: &closer_sales::playbook::Playbook,
    derived: bool,
) -> pb::PlaybookSummary {
    pb::PlaybookSummary {
        tenant: tenant.into(),
        yaml: serde_norway::to_string(p).unwrap_or_default(),
        derived,
        score_rules: p.score_rules.len() as u32,
        questions: p.questions.len() as u32,
        teams: p.teams.iter().map(|t| t.name.clone()).collect(),
        routing: p
            .routing
            .iter()
            .map(|m| {
                serde_json::to_value(m)
                    .ok()
                    .and_then(|v| v.get("mode").and_then(|m| m.as_str()).map(str::to_string))
                    .unwrap_or_default()
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl pb::playbooks_server::Playbooks for PlaybooksService {
    async fn upload(&self, request: Request<pb::UploadPlaybookRequest>) -> R<pb::PlaybookSummary> {
        let engine = self.state.engine()?;
        let req = request.into_inner();
        check_tenant_field(&req.tenant)?;
        if req.yaml.len() > 1 << 20 {
            return Err(Error::invalid("yaml", "at most 1 MiB").into());
        }
        let tenant = engine.tenant(&req.tenant).api()?;
        let (t2, e2) = (tenant.clone(), engine.clone());
        let p = blocking(move || {
            let yaml = closer_kb::visible(&req.yaml);
            let p = t2.set_playbook(&yaml)?;
            // The other replicas on a shared database swap it in too.
            closer_sales::shared::put_playbook(&e2, &t2.id, &yaml)?;
            Ok::<_, closer_sales::Error>(p)
        })
        .await?;
        Ok(Response::new(summary(&tenant.id, &p, false)))
    }

    async fn get(&self, request: Request<pb::GetPlaybookRequest>) -> R<pb::PlaybookSummary> {
        let engine = self.state.engine()?;
        let req = request.into_inner();
        check_tenant_field(&req.tenant)?;
        let tenant = engine.tenant(&req.tenant).api()?;
        let (p, derived) = tenant.playbook_source();
        Ok(Response::new(summary(&tenant.id, &p, derived)))
    }
}
