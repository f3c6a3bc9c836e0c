// Recent lifecycle events (AWS's $aws/events topics, from this region's /v1/stream) and the
// failovers the fleet view notices: newest first, the last MAX_EVENTS kept.
import { follow } from "./api.js";

const MAX_EVENTS = 100;
const RETRY_MS = 2000;

export class EventList {
  constructor(element) {
    this.element = element;
  }

  add(kind, text, atMs = Date.now()) {
    const item = document.createElement("li");
    item.className = kind;
    item.textContent = `${new Date(atMs).toLocaleTimeString()}  ${text}`;
    this.element.prepend(item);
    while (this.element.children.length > MAX_EVENTS) this.element.lastChild.remove();
  }

  /** Follow the stream until `signal` aborts, reconnecting when the region cuts it off. */
  async run(signal, onError) {
    while (!signal.aborted) {
      try {
        await follow(["$aws/events/#"], (line) => this.line(line), signal);
        this.element.dataset.stream = "closed";
      } catch (error) {
        if (signal.aborted) return;
        onError(error);
      }
      await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
    }
  }

  line(line) {
    if (line.stream) {  // the stream's open/overflow markers: once "open", the region's tap is on
      this.element.dataset.stream = line.stream;
      return;
    }
    if (!line.topic) return;
    let body = {};
    try { body = JSON.parse(line.payload ?? "{}"); } catch { /* not JSON: topic only */ }
    const parts = line.topic.split("/");
    let text = line.topic;
    if (parts[2] === "presence") text = `${parts[4]} ${parts[3]}${body.disconnectReason ? ` (${body.disconnectReason})` : ""}`;
    else if (parts[2] === "thing") text = `thing ${parts[3]} ${parts[4]}`;
    else if (parts[2] === "certificates") text = `certificate ${parts[3]} (${body.certificateId ?? "?"})`;
    this.add("event", `[${line.region}] ${text}`, line.receivedMs);
  }
}
