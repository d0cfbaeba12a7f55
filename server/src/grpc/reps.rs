//! `closer.v1.Reps`: presence and capacity for round robin.

#[allow(unused_imports)]
use super::common::prelude::*;

pub struct RepsService {
    pub state: Arc<AppState>,
}

#[tonic::async_trait]
impl pb::reps_server::Reps for RepsService {
    async fn set_presence(
        &self,
        request: Request<pb::SetPresenceRequest>,
    ) -> R<pb::SetPresenceResponse> {
        let engine = self.state.engine()?;
        let req = request.into_inner();
        check_tenant_field(&req.tenant)?;
        check_id("rep_id", &req.rep_id)?;
        let tenant = engine.tenant(&req.tenant).api()?;
        if tenant.kb.snapshot().rep(&req.rep_id).is_none() {
            return Err(Error::invalid("rep_id", format!("no rep {:?}", req.rep_id)).into());
        }
        blocking(move || {
            engine.store.set_presence(
                &req.tenant,
                &Presence {
                    rep_id: req.rep_id,
                    online: req.online,
                    capacity: req.capacity,
                },
            )
        })
        .await?;
        Ok(Response::new(pb::SetPresenceResponse {}))
    }
}
