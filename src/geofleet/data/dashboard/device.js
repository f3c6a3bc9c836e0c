// The device page: where it is connected (/v1/presence/<device>), its home (/things/<device>),
// its classic shadow (/things/<device>/shadow) and its recent messages (this region's
// /v1/stream, filtered to topics naming the device).
import { follow, getJson, Unauthorized } from "./api.js";

const HOME_ATTRIBUTE = "geofleet:homeRegion";
const MAX_MESSAGES = 50;
const REFRESH_MS = 2000;
const THING_NAME = /^[a-zA-Z0-9:_-]{1,128}$/;  // AWS IoT's thing name rule (domain/names.py)

async function orNull(promise) {
  try { return await promise; } catch (error) { if (error instanceof Unauthorized) throw error; return null; }
}

export class DevicePage {
  constructor(layout) {
    this.layout = layout;
    this.abort = null;
    this.timer = null;
  }

  open(name, onError) {
    this.close();
    this.name = name;
    document.getElementById("device-name").textContent = name;
    document.getElementById("device-messages").replaceChildren();
    document.getElementById("device-shadow").textContent = "";
    document.getElementById("device-where").replaceChildren();
    if (!THING_NAME.test(name)) {  // the name comes from the URL: never let it into a topic filter
      document.getElementById("device-name").textContent = `${name}: not a thing name (1-128 of a-z A-Z 0-9 : _ -)`;
      return;
    }
    this.abort = new AbortController();
    const signal = this.abort.signal;
    const filters = [`$aws/things/${name}/#`, `${name}/#`, `+/${name}/#`, `+/+/${name}/#`];
    follow(filters, (line) => this.message(line), signal).catch((error) => { if (!signal.aborted) onError(error); });
    const tick = () => this.refresh().catch(onError);
    tick();
    this.timer = setInterval(tick, REFRESH_MS);
  }

  close() {
    if (this.abort) this.abort.abort();
    if (this.timer) clearInterval(this.timer);
    this.abort = null;
    this.timer = null;
  }

  async refresh() {
    const name = encodeURIComponent(this.name);
    const [where, thing, shadow] = await Promise.all([
      orNull(getJson(`/v1/presence/${name}`)), orNull(getJson(`/things/${name}`)),
      orNull(getJson(`/things/${name}/shadow`)),
    ]);
    const home = thing?.attributes?.[HOME_ATTRIBUTE] || this.layout.homeDefault;
    const facts = [
      ["Connected", where?.connected ? "yes" : "no"],
      ["Region", where?.region || "\u2014"],
      ["Home region", thing ? home : "(no such thing)"],
      ["Connected since", where?.connectedAt || "\u2014"],
      ["Last seen", where?.lastSeen ? `${where.lastSeen.region} ${where.lastSeen.disconnectedAt || "(connected)"}` : "never"],
    ];
    const list = document.getElementById("device-where");
    list.replaceChildren();
    for (const [term, value] of facts) {
      const dt = document.createElement("dt");
      dt.textContent = term;
      const dd = document.createElement("dd");
      dd.textContent = value;
      dd.dataset.fact = term.toLowerCase().replaceAll(" ", "-");
      list.append(dt, dd);
    }
    document.getElementById("device-shadow").textContent = shadow ? JSON.stringify(shadow, null, 2) : "(no shadow)";
  }

  message(line) {
    if (!line.topic) return;
    const item = document.createElement("li");
    const payload = line.payload ?? `(base64) ${line.payloadBase64}`;
    item.textContent = `${new Date(line.receivedMs).toLocaleTimeString()} [${line.region}] ${line.topic}  ${payload.slice(0, 500)}`;
    const list = document.getElementById("device-messages");
    list.prepend(item);
    while (list.children.length > MAX_MESSAGES) list.lastChild.remove();
  }
}
