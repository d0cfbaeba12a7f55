//! `closer.v1.Reports`: summary counts and the live leaderboard.

#[allow(unused_imports)]
use super::common::prelude::*;

/// `Reports`: summary counts and the live leaderboard.
pub struct ReportsService {
    pub state: Arc<AppState>,
}

#[tonic::async_trait]
impl pb::reports_server::Reports for ReportsService {
    async fn summary(&self, request: Request<pb::SummaryRequest>) -> R<pb::SummaryResponse> {
        let engine = self.state.engine()?;
        let req = request.into_inner();
        check_tenant_field(&req.tenant)?;
        let out = blocking(move || crate::reports::summary_request(&engine, &req)).await?;
        Ok(Response::new(out))
    }

    type LeaderboardStream =
        Pin<Box<dyn Stream<Item = std::result::Result<pb::LeaderboardUpdate, Status>> + Send>>;

    async fn leaderboard(
        &self,
        request: Request<pb::LeaderboardRequest>,
    ) -> R<Self::LeaderboardStream> {
        let engine = self.state.engine()?;
        let req = request.into_inner();
        let board = crate::reports::BoardRequest::check(
            &engine,
            &req.tenant,
            &req.period,
            &req.timezone,
            req.team.clone(),
        )?;
        let rx = crate::reports::watch(engine, board);
        let stream =
            tokio_stream::StreamExt::map(ReceiverStream::new(rx), |r| r.map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }
}
