//! `closer.v1.Intents`: upload (validate, train, swap in) and read a tenant's intent set.

#[allow(unused_imports)]
use super::common::prelude::*;

/// Largest intent set accepted by `Intents.Upload`.
pub const MAX_INTENT_SET_BYTES: usize = 4 << 20;

pub struct IntentsService {
    pub state: Arc<AppState>,
}

type ProgressStream =
    Pin<Box<dyn Stream<Item = std::result::Result<pb::TrainingProgress, Status>> + Send>>;

fn done_of(r: &closer_models::intent::TrainReport) -> pb::TrainingDone {
    pb::TrainingDone {
        version: r.version.clone(),
        training_ms: r.training_ms.min(u64::from(u32::MAX)) as u32,
        holdout_accuracy: if r.holdout_accuracy.is_nan() {
            0.0
        } else {
            r.holdout_accuracy
        },
        oos_threshold: r.oos_threshold,
        nearest_threshold: r.nearest_threshold,
        temperature: r.temperature,
    }
}

#[tonic::async_trait]
impl pb::intents_server::Intents for IntentsService {
    type UploadStream = ProgressStream;

    async fn upload(
        &self,
        request: Request<pb::UploadIntentsRequest>,
    ) -> std::result::Result<Response<Self::UploadStream>, Status> {
        use closer_models::intent::{IntentSet, TrainProgress};
        use pb::training_progress::Event;
        let engine = self.state.engine()?;
        let req = request.into_inner();
        check_tenant_field(&req.tenant)?;
        if req.content.len() > MAX_INTENT_SET_BYTES {
            return Err(Error::invalid(
                "content",
                format!(
                    "{} bytes, more than the limit of {MAX_INTENT_SET_BYTES}",
                    req.content.len()
                ),
            )
            .into());
        }
        let tenant = engine.tenant(&req.tenant).api()?;
        let parsed = match pb::IntentFormat::try_from(req.format) {
            Ok(pb::IntentFormat::Unspecified | pb::IntentFormat::Yaml) => {
                IntentSet::from_yaml(&closer_kb::visible(&req.content))
            }
            Ok(pb::IntentFormat::Jsonl) => IntentSet::from_jsonl(&closer_kb::visible(&req.content)),
            Err(_) => {
                return Err(
                    Error::invalid("format", format!("unknown value {}", req.format)).into(),
                )
            }
        };
        // A bad file fails the call before anything changes.
        let set = parsed.map_err(|e| {
            Error::invalid(
                "content",
                e.to_string()
                    .trim_start_matches("invalid intent set: ")
                    .to_string(),
            )
        })?;
        let (tx, rx) = mpsc::channel(64);
        let validated = pb::Validated {
            intents: set.intents.len() as u32,
            examples: set.intents.iter().map(|d| d.examples.len() as u32).sum(),
        };
        let _ = tx
            .send(Ok(pb::TrainingProgress {
                event: Some(Event::Validated(validated)),
            }))
            .await;
        tracing::info!(tenant = %req.tenant, intents = set.intents.len(), "intent set uploaded; retraining");
        let embedder = engine.models.intents();
        let cfg = engine.classifier_config.clone();
        let tenant_id = tenant.id.clone();
        tokio::task::spawn_blocking(move || {
            let mut last = (0u8, 0usize);
            let result = tenant.retrain(set, embedder, &cfg, &mut |p| {
                // Progress events: every embedding chunk, and about 20 training steps in all.
                let ev = match p {
                    TrainProgress::Embedding { done, total } => Some(Event::Embedding(pb::Step {
                        done: done as u32,
                        total: total as u32,
                    })),
                    TrainProgress::Training { step, steps } => {
                        let bucket = step * 20 / steps.max(1);
                        if last == (1, bucket) && step != steps {
                            None
                        } else {
                            last = (1, bucket);
                            Some(Event::Training(pb::Step {
                                done: step as u32,
                                total: steps as u32,
                            }))
                        }
                    }
                };
                if let Some(ev) = ev {
                    // A client that went away does not stop training: the upload was accepted.
                    let _ = tx.blocking_send(Ok(pb::TrainingProgress { event: Some(ev) }));
                }
            });
            // The other replicas on a shared database take the model as trained here.
            let result = result.and_then(|report| {
                closer_sales::shared::put_intents(&engine, &tenant_id)?;
                Ok(report)
            });
            let last_event = match result {
                Ok(report) => Ok(pb::TrainingProgress {
                    event: Some(Event::Done(done_of(&report))),
                }),
                Err(e) => {
                    tracing::error!(error = %e, "retraining failed; the previous intent model keeps serving");
                    Err(Status::from(Error::from(e)))
                }
            };
            let _ = tx.blocking_send(last_event);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get(
        &self,
        request: Request<pb::GetIntentsRequest>,
    ) -> std::result::Result<Response<pb::GetIntentsResponse>, Status> {
        let engine = self.state.engine()?;
        let req = request.into_inner();
        check_tenant_field(&req.tenant)?;
        let model = engine.tenant(&req.tenant).api()?.intents();
        let intents = model
            .set
            .intents
            .iter()
            .map(|d| pb::IntentSummary {
                name: d.name.clone(),
                description: d.description.clone(),
                flags: d
                    .flags
                    .iter()
                    .map(|f| {
                        serde_json::to_value(f)
                            .ok()
                            .and_then(|v| v.as_str().map(String::from))
                            .unwrap_or_default()
                    })
                    .collect(),
                examples: d.examples.len() as u32,
            })
            .collect();
        Ok(Response::new(pb::GetIntentsResponse {
            content: model.set.to_yaml(),
            intents,
            model: Some(done_of(&model.classifier.trained().report)),
        }))
    }
}
