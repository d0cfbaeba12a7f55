//! `closer chat`: a terminal client for `Assistant.Converse`, printing the reply as it streams.

use std::io::{BufRead, Write};

use closer_proto::v1 as pb;
use pb::converse_response::Event;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Options of `closer chat`.
#[derive(Debug, Clone, clap::Args)]
pub struct ChatArgs {
    /// Server address.
    #[arg(long, env = "CLOSER_URL", default_value = "http://127.0.0.1:50051")]
    pub url: String,
    /// Tenant to talk to.
    #[arg(long, default_value = "applinks")]
    pub tenant: String,
    /// The visitor's company domain.
    #[arg(long)]
    pub domain: Option<String>,
    /// The visitor's email.
    #[arg(long)]
    pub email: Option<String>,
    /// Send these messages and exit, instead of reading from the terminal.
    #[arg(long = "message", short = 'm')]
    pub messages: Vec<String>,
    /// Continue the conversation this resume token was issued for (printed when a chat opens).
    #[arg(long)]
    pub resume: Option<String>,
    /// A publishable API key of the tenant, when the server requires keys.
    #[arg(long, env = "CLOSER_API_KEY")]
    pub api_key: Option<String>,
}

pub async fn run(args: ChatArgs) -> anyhow::Result<()> {
    let mut client = pb::assistant_client::AssistantClient::connect(args.url.clone()).await?;
    let (tx, rx) = mpsc::channel(8);
    tx.send(pb::ConverseRequest {
        event: Some(pb::converse_request::Event::Start(pb::Start {
            tenant: args.tenant.clone(),
            conversation_id: String::new(),
            resume_token: args.resume.clone(),
            visitor: Some(pb::VisitorContext {
                timezone: None,
                email: args.email.clone(),
                company_domain: args.domain.clone(),
                page_url: None,
                user_hash: None,
                identity_token: None,
            }),
        })),
    })
    .await?;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    closer_server::auth::authorize(&mut request, args.api_key.as_deref())?;
    let mut inbound = client.converse(request).await?.into_inner();
    let interactive = args.messages.is_empty();
    let mut scripted = args.messages.clone().into_iter();
    let stdin = std::io::stdin();
    loop {
        let line = if interactive {
            print!("you> ");
            std::io::stdout().flush()?;
            let mut l = String::new();
            if stdin.lock().read_line(&mut l)? == 0 {
                break;
            }
            l.trim().to_string()
        } else {
            match scripted.next() {
                Some(m) => {
                    println!("you> {m}");
                    m
                }
                None => break,
            }
        };
        if line.is_empty() {
            continue;
        }
        if line == "/quit" || line == "/exit" {
            break;
        }
        tx.send(pb::ConverseRequest {
            event: Some(pb::converse_request::Event::Message(pb::VisitorMessage {
                text: line,
            })),
        })
        .await?;
        let mut started_reply = false;
        while let Some(resp) = inbound.message().await? {
            match resp.event {
                Some(Event::Intents(i)) => {
                    let list: Vec<String> = i
                        .intents
                        .iter()
                        .map(|x| {
                            let alt = x
                                .ambiguous_with
                                .as_ref()
                                .map(|a| format!(" (or {} {:.2}?)", a.name, a.confidence));
                            format!(
                                "{} {:.2} \"{}\"{}",
                                x.name,
                                x.confidence,
                                x.span_text,
                                alt.unwrap_or_default()
                            )
                        })
                        .collect();
                    println!("  [intents] {}", list.join(" | "));
                }
                Some(Event::MeetingProposed(m)) => {
                    let list: Vec<String> = m
                        .slots
                        .iter()
                        .map(|x| format!("{}) {} with {}", x.id, x.label, x.rep_name))
                        .collect();
                    println!("  [meeting] {} ({})", list.join(" | "), m.timezone);
                }
                Some(Event::MeetingBooked(m)) => {
                    if let Some(x) = m.slot {
                        println!("  [booked] {} with {}", x.label, x.rep_name);
                    }
                }
                Some(Event::Opened(o)) => println!(
                    "  [conversation {}{}] continue it later with --resume {}",
                    o.conversation_id,
                    if o.resumed { ", resumed" } else { "" },
                    o.resume_token
                ),
                Some(Event::RepJoined(r)) => println!("  [rep joined] {}", r.text),
                Some(Event::RepMessage(r)) => println!("{}: {}", r.rep_name, r.text),
                Some(Event::RepLeft(_)) => println!("  [rep left: the assistant is back]"),
                Some(Event::Slots(s)) => {
                    let list: Vec<String> = s
                        .slots
                        .iter()
                        .map(|x| {
                            if x.detail.is_empty() {
                                format!("{}={}", x.name, x.value)
                            } else {
                                format!("{}={} ({})", x.name, x.value, x.detail)
                            }
                        })
                        .collect();
                    println!("  [slots] {}", list.join(" | "));
                }
                Some(Event::Handoff(h)) => println!("  [hand-off] {}", h.message),
                Some(Event::Delta(d)) => {
                    if !started_reply {
                        print!("bot> ");
                        started_reply = true;
                    }
                    print!("{}", d.text);
                    std::io::stdout().flush()?;
                }
                Some(Event::Final(f)) => {
                    println!();
                    println!(
                        "  [final] facts: {} | guard replaced: {} | unanswered: {} | {} ms",
                        f.fact_ids.join(", "),
                        f.guard_replaced,
                        f.unanswered,
                        f.latency_ms
                    );
                    break;
                }
                Some(Event::Error(e)) => {
                    println!("  [error] {}: {}", e.code, e.message);
                    break;
                }
                None => {}
            }
        }
    }
    Ok(())
}
