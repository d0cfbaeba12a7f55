//! The gRPC edge: one file per `closer.v1` service, each handler thin (authorise, validate,
//! call `closer-sales` or the store, convert), sharing `common` (request checks, the prelude).

pub mod assistant;
pub(crate) mod common;
pub mod conversations;
pub mod convert;
pub mod events;
pub mod intents;
pub mod knowledge;
pub mod leads;
pub mod playbooks;
pub mod reports;
pub mod reps;
pub mod webhooks;

pub use assistant::AssistantService;
pub use conversations::ConversationsService;
pub use events::EventsService;
pub use intents::IntentsService;
pub use knowledge::KnowledgeService;
pub use leads::LeadsService;
pub use playbooks::PlaybooksService;
pub use reports::ReportsService;
pub use reps::RepsService;
pub use webhooks::WebhooksService;

pub use common::{check_start, check_text, code_name};
