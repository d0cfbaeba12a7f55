// Closer's chat widget: one <script> tag opens a chat bubble that talks to a Closer server over
// gRPC-Web (Connect's client, messages generated from ../../proto at build time).
//
//   <script src="https://closer.example.com/widget.js" data-tenant="applinks"
//           data-key="closer_pub_…" async></script>
//
// Optional attributes: data-server (default: the script's origin), data-title, data-email,
// data-company-domain, data-user-hash / data-identity-token (verified identity, signed by the
// team's own server). The conversation's resume token is kept in localStorage, so a reload
// continues the same chat.

import { createClient, ConnectError, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import type { MessageInitShape } from "@bufbuild/protobuf";
import {
  Assistant,
  type ConverseResponse,
  type MeetingSlot,
  type StartSchema,
} from "../gen/closer/v1/assistant_pb";

type Config = {
  server: string;
  tenant: string;
  key?: string;
  title: string;
  email?: string;
  companyDomain?: string;
  userHash?: string;
  identityToken?: string;
};

function readConfig(script: HTMLScriptElement): Config {
  const d = script.dataset;
  if (!d.tenant) throw new Error("closer widget: the script tag needs data-tenant");
  return {
    server: d.server ?? new URL(script.src, location.href).origin,
    tenant: d.tenant,
    key: d.key,
    title: d.title ?? "Chat with us",
    email: d.email,
    companyDomain: d.companyDomain,
    userHash: d.userHash,
    identityToken: d.identityToken,
  };
}

const STYLE = `
:host { all: initial; font-family: system-ui, sans-serif; font-size: 15px; color: #1c1c1c; }
button { font: inherit; cursor: pointer; }
.bubble { position: fixed; right: 20px; bottom: 20px; border: 0; border-radius: 28px;
  padding: 14px 20px; background: #2457d6; color: #fff; box-shadow: 0 4px 14px #0004; }
.bubble:focus-visible, .panel button:focus-visible, .panel input:focus-visible {
  outline: 3px solid #f0a500; outline-offset: 2px; }
.panel { position: fixed; right: 20px; bottom: 84px; width: 360px; max-width: calc(100vw - 40px);
  height: 520px; max-height: calc(100vh - 120px); display: flex; flex-direction: column;
  background: #fff; border-radius: 12px; box-shadow: 0 8px 30px #0005; overflow: hidden; }
.panel[hidden] { display: none; }
header { display: flex; justify-content: space-between; align-items: center; padding: 12px 14px;
  background: #2457d6; color: #fff; font-weight: 600; }
header button { background: none; border: 0; color: #fff; font-size: 20px; line-height: 1; }
.log { flex: 1; overflow-y: auto; padding: 12px; display: flex; flex-direction: column; gap: 8px; }
.msg { max-width: 85%; padding: 8px 11px; border-radius: 10px; white-space: pre-wrap;
  overflow-wrap: anywhere; }
.visitor { align-self: flex-end; background: #2457d6; color: #fff; }
.bot { align-self: flex-start; background: #eef1f6; }
.rep { align-self: flex-start; background: #e6f4ea; }
.note { align-self: center; font-size: 13px; color: #555; }
.error { align-self: stretch; background: #fde8e8; color: #8a1c1c; }
.slots { display: flex; flex-wrap: wrap; gap: 6px; align-self: flex-start; }
.slots button { border: 1px solid #2457d6; background: #fff; color: #2457d6; border-radius: 16px;
  padding: 6px 10px; }
.slots button:disabled { opacity: .5; cursor: default; }
form { display: flex; gap: 8px; padding: 10px; border-top: 1px solid #e3e3e3; }
input { flex: 1; font: inherit; padding: 8px 10px; border: 1px solid #bbb; border-radius: 8px; }
form button { border: 0; border-radius: 8px; padding: 8px 14px; background: #2457d6; color: #fff; }
form button:disabled { opacity: .6; }
`;

class Widget {
  private client: Client<typeof Assistant>;
  private token: string | null;
  private watching = false;
  private busy = false;
  private pendingSlots: MeetingSlot[] | null = null;
  private log!: HTMLElement;
  private input!: HTMLInputElement;
  private sendButton!: HTMLButtonElement;
  private panel!: HTMLElement;
  private bubble!: HTMLButtonElement;

  constructor(private cfg: Config) {
    const auth: Interceptor = (next) => async (req) => {
      if (cfg.key) req.header.set("authorization", `Bearer ${cfg.key}`);
      return next(req);
    };
    const transport = createGrpcWebTransport({ baseUrl: cfg.server, interceptors: [auth] });
    this.client = createClient(Assistant, transport);
    this.token = localStorage.getItem(this.storageKey());
  }

  private storageKey() {
    return `closer:${this.cfg.tenant}:resume`;
  }

  mount() {
    const host = document.createElement("div");
    host.id = "closer-widget";
    const root = host.attachShadow({ mode: "open" });
    root.innerHTML = `<style>${STYLE}</style>
      <button class="bubble" type="button" aria-haspopup="dialog" aria-expanded="false"
        aria-controls="closer-panel">${escapeHtml(this.cfg.title)}</button>
      <section class="panel" id="closer-panel" role="dialog" aria-label="${escapeHtml(this.cfg.title)}" hidden>
        <header><span>${escapeHtml(this.cfg.title)}</span>
          <button type="button" class="close" aria-label="Close chat">×</button></header>
        <div class="log" role="log" aria-live="polite" aria-label="Conversation"></div>
        <form><input type="text" name="text" autocomplete="off" maxlength="2000"
          aria-label="Your message" placeholder="Ask a question…" required>
          <button type="submit">Send</button></form>
      </section>`;
    document.body.appendChild(host);
    this.bubble = root.querySelector(".bubble")!;
    this.panel = root.querySelector(".panel")!;
    this.log = root.querySelector(".log")!;
    this.input = root.querySelector("input")!;
    this.sendButton = root.querySelector("form button")!;
    this.bubble.addEventListener("click", () => this.toggle(this.panel.hidden));
    root.querySelector(".close")!.addEventListener("click", () => this.toggle(false));
    this.panel.addEventListener("keydown", (e) => {
      if ((e as KeyboardEvent).key === "Escape") this.toggle(false);
    });
    root.querySelector("form")!.addEventListener("submit", (e) => {
      e.preventDefault();
      const text = this.input.value.trim();
      if (text && !this.busy) {
        this.input.value = "";
        void this.turn({ case: "message", value: { text } }, text);
      }
    });
    if (this.token) this.watch();
  }

  private toggle(open: boolean) {
    this.panel.hidden = !open;
    this.bubble.setAttribute("aria-expanded", String(open));
    if (open) this.input.focus();
    else this.bubble.focus();
  }

  private add(cls: string, text: string): HTMLElement {
    const el = document.createElement("div");
    el.className = `msg ${cls}`;
    el.textContent = text;
    this.log.appendChild(el);
    this.log.scrollTop = this.log.scrollHeight;
    return el;
  }

  private start(): MessageInitShape<typeof StartSchema> {
    return {
      tenant: this.cfg.tenant,
      conversationId: "",
      resumeToken: this.token ?? undefined,
      visitor: {
        email: this.cfg.email,
        companyDomain: this.cfg.companyDomain,
        pageUrl: location.href,
        timezone: Intl.DateTimeFormat().resolvedOptions().timeZone,
        userHash: this.cfg.userHash,
        identityToken: this.cfg.identityToken,
      },
    };
  }

  private setBusy(b: boolean) {
    this.busy = b;
    this.sendButton.disabled = b;
    this.log.setAttribute("aria-busy", String(b));
  }

  /** One turn: the visitor's words (or slot pick) out, the reply streamed in. */
  private async turn(
    event: { case: "message"; value: { text: string } } | { case: "chooseSlot"; value: { slotId: string } },
    shown: string,
  ) {
    this.add("visitor", shown);
    this.setBusy(true);
    let reply: HTMLElement | null = null;
    this.pendingSlots = null;
    try {
      for await (const res of this.client.send({ start: this.start(), event })) {
        reply = this.render(res, reply);
      }
      // Meeting times come before the reply on the stream; they read best after it.
      if (this.pendingSlots) this.slots(this.pendingSlots);
    } catch (e) {
      const err = ConnectError.from(e);
      if (this.token && err.code === 7 /* permission denied: the token was revoked */) {
        this.forget();
      }
      this.add("error", `Sorry, the chat could not answer: ${err.rawMessage}`).setAttribute("role", "alert");
    } finally {
      this.setBusy(false);
    }
  }

  private forget() {
    this.token = null;
    localStorage.removeItem(this.storageKey());
  }

  /** Shows one server event; returns the bubble the reply is being written into. */
  private render(res: ConverseResponse, reply: HTMLElement | null): HTMLElement | null {
    const ev = res.event;
    switch (ev.case) {
      case "opened":
        this.token = ev.value.resumeToken;
        localStorage.setItem(this.storageKey(), this.token);
        this.watch();
        return reply;
      case "delta":
        reply ??= this.add("bot", "");
        reply.textContent += ev.value.text;
        this.log.scrollTop = this.log.scrollHeight;
        return reply;
      case "final":
        if (ev.value.text) {
          reply ??= this.add("bot", "");
          reply.textContent = ev.value.text;
        }
        return null;
      case "meetingProposed":
        this.pendingSlots = ev.value.slots;
        return reply;
      case "meetingBooked":
        this.add("note", `Booked: ${ev.value.slot?.label ?? ""} with ${ev.value.slot?.repName ?? ""}`);
        return reply;
      case "error":
        this.add("error", `Sorry: ${ev.value.message}`).setAttribute("role", "alert");
        return reply;
      case "repJoined":
        this.add("note", ev.value.text);
        return reply;
      case "repLeft":
        this.add("note", "The assistant is back.");
        return reply;
      case "repMessage":
        this.add("rep", `${ev.value.repName}: ${ev.value.text}`);
        return reply;
      default:
        return reply;
    }
  }

  private slots(slots: MeetingSlot[]) {
    const box = document.createElement("div");
    box.className = "slots";
    box.setAttribute("role", "group");
    box.setAttribute("aria-label", "Meeting times");
    for (const s of slots) {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = `${s.label} with ${s.repName}`;
      b.addEventListener("click", () => {
        box.querySelectorAll("button").forEach((x) => ((x as HTMLButtonElement).disabled = true));
        void this.turn({ case: "chooseSlot", value: { slotId: s.id } }, b.textContent ?? s.id);
      });
      box.appendChild(b);
    }
    this.log.appendChild(box);
  }

  /** What a rep does in this conversation, streamed beside the turns; reconnects after errors. */
  private watch() {
    if (this.watching || !this.token) return;
    this.watching = true;
    const run = async () => {
      while (this.token) {
        try {
          for await (const res of this.client.watch({ tenant: this.cfg.tenant, resumeToken: this.token })) {
            if (res.event.case !== "opened") this.render(res, null);
          }
        } catch (e) {
          if (ConnectError.from(e).code === 7) {
            this.forget();
            break;
          }
        }
        await new Promise((r) => setTimeout(r, 3000));
      }
      this.watching = false;
    };
    void run();
  }
}

function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

const script = document.currentScript as HTMLScriptElement | null;
if (script) {
  const widget = new Widget(readConfig(script));
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", () => widget.mount());
  } else {
    widget.mount();
  }
}
