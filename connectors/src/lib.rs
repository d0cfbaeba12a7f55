//! CRM connectors of the event outbox. Each is a [`closer_webhooks::connector::Connector`]: the
//! webhook worker scans the outbox for it, keeps one delivery row per event (attempts, the
//! retry schedule, dead letters, the last answer) and calls it to apply an event; a 2xx answer
//! means the CRM acknowledged every write of that event. Configured per tenant by the file
//! given to `closer serve --connectors` ([`config`]).
//!
//! [`hubspot`]: contacts, companies and one transcript note per conversation, all upserts
//! (replaying an event is harmless), within a request [`budget`] per account.
//! [`salesforce`]: the Lead (or the Contact it was converted to) and one transcript Task per
//! conversation, upserted by external ids in one composite call per event.
//! [`marketo`]: the lead pushed (`createOrUpdate` by e-mail) with its CQL fields, within
//! Marketo's call rate and concurrency.

pub mod budget;
pub mod config;
pub mod http;
pub mod hubspot;
pub mod lead;
pub mod marketo;
pub mod salesforce;

use std::sync::Arc;

pub use lead::RepEmails;

/// The connectors a configuration asks for, ready for the worker.
pub fn build(
    config: &config::Connectors,
    store: Arc<dyn closer_store::Store>,
    reps: RepEmails,
) -> Result<Vec<Arc<dyn closer_webhooks::connector::Connector>>, config::ConfigError> {
    let mut out: Vec<Arc<dyn closer_webhooks::connector::Connector>> = vec![];
    for h in &config.hubspot {
        out.push(Arc::new(hubspot::HubSpot::new(
            h.clone(),
            store.clone(),
            reps.clone(),
        )?));
    }
    for s in &config.salesforce {
        out.push(Arc::new(salesforce::Salesforce::new(
            s.clone(),
            store.clone(),
            reps.clone(),
        )?));
    }
    for m in &config.marketo {
        out.push(Arc::new(marketo::Marketo::new(
            m.clone(),
            store.clone(),
            reps.clone(),
        )?));
    }
    Ok(out)
}
